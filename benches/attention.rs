//! `cargo bench --bench attention`: the fused attention kernel alone, forward and
//! backward, in each SIMD build the CPU supports, against the plain composed-ops path,
//! at the largest crossmodal map of the bench shape (B = 24, 8 heads, T_q = 500,
//! T_k = 375, head width 5) with MulT's causal-offset mask. Prints the median of 5 runs
//! and the achieved GFLOP/s (counting 4·hd flops per score entry in the forward —
//! `q·k` and `p·v` — and 8·hd in the backward, exp and mask not counted).
//!
//! Options through the environment: `MICA_BENCH_THREADS` (default 1), `MICA_BENCH_HD`
//! (head width, default 5), `MICA_BENCH_PLAIN=1` to include the plain path (materialises
//! 1.4 GB of maps at this shape).

mod common;

use candle_core::{Device, Tensor, Var};
use mica::kernels::simd::{best, with_simd, Simd};
use mica::model::attention::{attend, AttentionKernel, AttnCall};
use mica::model::ctx::Ctx;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let threads = common::setup();
    // MulT's crossmodal heads are 5 wide; its self-attention (memory) heads are 10.
    let hd = common::env_usize("MICA_BENCH_HD", 5);
    let (b, h, tq, tk) = (24, 8, 500, 375);
    let dev = Device::Cpu;
    let q = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (b, h, tq, hd), &dev)? * 0.45)?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, tk, hd), &dev)?)?;
    let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, tk, hd), &dev)?)?;
    let w = Tensor::randn(0f32, 1.0, (b, h, tq, hd), &dev)?;
    // Entries the causal-offset mask leaves (j ≤ i + |T_k − T_q|).
    let off = tq.abs_diff(tk);
    let entries: usize = (0..tq).map(|i| (i + off + 1).min(tk)).sum::<usize>() * b * h;
    let fwd_flops = entries as f64 * 4.0 * hd as f64;
    let bwd_flops = entries as f64 * 8.0 * hd as f64;
    println!(
        "fused attention, B {b}, heads {h}, T_q {tq}, T_k {tk}, hd {hd}, causal, threads {threads}, {:.0} M score entries",
        entries as f64 / 1e6
    );
    let mut kernels: Vec<(String, AttentionKernel, Simd)> =
        [Simd::Portable, Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|&l| l <= best())
            .map(|l| (format!("fused/{}", l.name()), AttentionKernel::Fused, l))
            .collect();
    if std::env::var("MICA_BENCH_PLAIN").is_ok_and(|v| v == "1") {
        kernels.push(("plain".into(), AttentionKernel::Plain, best()));
    }
    for dropout in [0.0f32, 0.2] {
        for (name, kernel, level) in &kernels {
            let (mut tf, mut tb) = (Vec::new(), Vec::new());
            for rep in 0..6 {
                let (f, bw) = with_simd(*level, || -> anyhow::Result<(f64, f64)> {
                    let ctx = Ctx::train(rep);
                    let t0 = Instant::now();
                    let r = attend(
                        &ctx,
                        *kernel,
                        AttnCall {
                            q: q.as_tensor(),
                            k: k.as_tensor(),
                            v: v.as_tensor(),
                            causal_offset: true,
                            dropout,
                            want_probs: false,
                            want_lse: false,
                        },
                    )?;
                    let f = t0.elapsed().as_secs_f64();
                    let loss = (r.out * &w)?.sum_all()?;
                    let t1 = Instant::now();
                    let g = loss.backward()?;
                    let _ = g.get(q.as_tensor());
                    Ok((f, t1.elapsed().as_secs_f64()))
                })?;
                if rep > 0 {
                    tf.push(f);
                    tb.push(bw);
                }
            }
            let (f, bw) = (common::median(tf), common::median(tb));
            println!(
                "dropout {dropout:.1} {name:<16} forward {:8.1} ms ({:5.1} GFLOP/s)   backward {:8.1} ms ({:5.1} GFLOP/s)",
                f * 1e3,
                fwd_flops / f / 1e9,
                bw * 1e3,
                bwd_flops / bw / 1e9
            );
        }
    }
    Ok(())
}
