//! `cargo bench --bench gemm`: mica's GEMM ([`mica::kernels::gemm`]) in each SIMD build the
//! CPU supports against candle's CPU matmul, on the linear layers' products at the bench
//! shape (B·T = 24 · 500 = 12000 rows; widths 40, 80, 160): the forward `x Wᵀ`, the input
//! gradient `dy W` and the weight gradient `dyᵀ x`. Prints the median time of 7 runs and
//! GFLOP/s (`2·m·n·k`).
//!
//! Options through the environment: `MICA_BENCH_THREADS` (default 1).

mod common;

use candle_core::{Device, Tensor};
use mica::kernels::gemm;
use mica::kernels::simd::{best, Simd};
use std::time::Instant;

/// Median seconds of one call of `f`, over 7 timed runs of enough calls for ~20 ms each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-6);
    let reps = ((0.02 / once) as usize).clamp(1, 1000);
    let runs = (0..7)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..reps {
                f();
            }
            t0.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    common::median(runs)
}

fn rand(n: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The three products of a linear layer `[rows, din] → [rows, dout]`.
fn bench_linear(rows: usize, din: usize, dout: usize, levels: &[Simd]) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let (xv, wv, gv) = (rand(rows * din), rand(dout * din), rand(rows * dout));
    let x = Tensor::from_vec(xv.clone(), (rows, din), &dev)?;
    let w = Tensor::from_vec(wv.clone(), (dout, din), &dev)?;
    let g = Tensor::from_vec(gv.clone(), (rows, dout), &dev)?;
    let flops = 2.0 * (rows * din * dout) as f64;
    let report = |what: &str, name: &str, s: f64| {
        println!(
            "{rows:>6} x {din:>3} -> {dout:>3}  {what:<12} {name:<10} {:8.3} ms  {:6.1} GFLOP/s",
            s * 1e3,
            flops / s / 1e9
        )
    };
    // Forward `x Wᵀ`.
    report(
        "fwd x·Wt",
        "candle",
        time(|| drop(x.matmul(&w.t().unwrap()).unwrap())),
    );
    for &l in levels {
        let s = time(|| drop(gemm::matmul_bt(l, &xv, &wv, rows, din, dout)));
        report("fwd x·Wt", l.name(), s);
    }
    // Input gradient `dy W`.
    report("dx dy·W", "candle", time(|| drop(g.matmul(&w).unwrap())));
    for &l in levels {
        let s = time(|| drop(gemm::matmul(l, &gv, &wv, rows, dout, din)));
        report("dx dy·W", l.name(), s);
    }
    // Weight gradient `dyᵀ x` (candle: `(xᵀ dy)ᵀ`, as its matmul backward forms it).
    report(
        "dW dyt·x",
        "candle",
        time(|| drop(x.t().unwrap().matmul(&g).unwrap().t().unwrap())),
    );
    for &l in levels {
        let s = time(|| drop(gemm::matmul_at(l, &gv, &xv, rows, dout, din)));
        report("dW dyt·x", l.name(), s);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let threads = common::setup();
    let levels: Vec<Simd> = [Simd::Portable, Simd::Avx2, Simd::Avx512]
        .into_iter()
        .filter(|&l| l <= best())
        .collect();
    println!("linear-layer products, threads {threads}");
    for (rows, din, dout) in [
        (12000, 40, 40),
        (12000, 40, 160),
        (12000, 160, 40),
        (12000, 80, 80),
        (12000, 40, 120),
        (1200, 40, 40),
    ] {
        bench_linear(rows, din, dout, &levels)?;
    }
    Ok(())
}
