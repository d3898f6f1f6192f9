//! `cargo bench --bench pea`: PEA on one block alone (threshold, masks, distance and its
//! gradient; [`mica::kernels::pea::pea_block`]) at the largest crossmodal map of the
//! bench shape (B = 24, 8 heads, T_q = 500, T_k = 375, head width 5, causal-offset mask,
//! τ = 0.25), without and with a propagated mask from a previous layer, in each SIMD
//! build the CPU supports. Prints the median of 5 runs and the time per map entry.
//!
//! Options through the environment: `MICA_BENCH_THREADS` (default 1).

mod common;

use candle_core::{Device, Tensor};
use mica::kernels::pea::{pea_block, PeaParams};
use mica::kernels::simd::{best, with_simd, Simd};
use mica::model::attention::{attend, AttentionKernel, AttnCall};
use mica::model::ctx::Ctx;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let threads = common::setup();
    let (b, h, tq, tk, hd) = (24, 8, 500, 375, 5);
    let dev = Device::Cpu;
    let qh = (Tensor::randn(0f32, 1.0, (b, h, tq, hd), &dev)? * 0.45)?;
    let kh = Tensor::randn(0f32, 1.0, (b, h, tk, hd), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (b, h, tk, hd), &dev)?;
    let lse = attend(
        &Ctx::eval(),
        AttentionKernel::Fused,
        AttnCall {
            q: &qh,
            k: &kh,
            v: &v,
            causal_offset: true,
            dropout: 0.0,
            want_probs: false,
            want_lse: true,
        },
    )?
    .lse
    .expect("asked for the log-sum-exp");
    // A few padded keys and queries, as in a real batch.
    let valid_q: Vec<bool> = (0..b * tq).map(|x| x % tq < tq - (x / tq) % 7).collect();
    let valid_k: Vec<bool> = (0..b * tk).map(|x| x % tk < tk - (x / tk) % 5).collect();
    let entries = (b * h * tq * tk) as f64;
    println!(
        "PEA block, B {b}, heads {h}, T_q {tq}, T_k {tk}, hd {hd}, causal, tau 0.25, threads {threads}"
    );
    let levels: Vec<Simd> = [Simd::Portable, Simd::Avx2, Simd::Avx512]
        .into_iter()
        .filter(|&l| l <= best())
        .collect();
    for level in levels {
        with_simd(level, || -> anyhow::Result<()> {
            let params = |prev| PeaParams {
                causal: true,
                valid_q: &valid_q,
                valid_k: &valid_k,
                tau: 0.25,
                prev,
            };
            let first = pea_block(&qh, &kh, &lse, params(None))?;
            for propagated in [false, true] {
                let mut times = Vec::new();
                let mut selected = 0;
                for _ in 0..6 {
                    let prev = propagated.then_some(&first.mask);
                    let t0 = Instant::now();
                    let r = pea_block(&qh, &kh, &lse, params(prev))?;
                    times.push(t0.elapsed().as_secs_f64());
                    selected = r.selected;
                }
                times.remove(0);
                let t = common::median(times);
                println!(
                    "{:<9} propagated {:<5}  {:7.1} ms  ({:.2} ns per entry, {selected} selected)",
                    level.name(),
                    propagated,
                    t * 1e3,
                    t * 1e9 / entries
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}
