use super::*;
use crate::kernels::rng::keep;
use crate::kernels::simd::exp_approx;
use crate::model::attention::{attend, AttentionKernel, AttnCall};
use crate::model::ctx::Ctx;
use candle_core::{Device, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(n: usize, scale: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let (mut e, mut s) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        assert!(x.is_finite(), "non-finite value {x}");
        e = e.max((*x as f64 - *y as f64).abs());
        s = s.max((*y as f64).abs());
    }
    e / s.max(1e-30)
}

#[derive(Debug, Clone, Copy)]
struct Case {
    dims: Dims,
    causal: bool,
    dropout: f32,
    scale: f32,
}

/// Runs `attend` with `kernel` on seeded inputs; returns out, probs and the gradients of
/// `Σ out ⊙ W` w.r.t. q, k, v.
fn run(case: Case, kernel: AttentionKernel, seed: u64) -> [Tensor; 5] {
    let Dims { b, h, tq, tk, hd } = case.dims;
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mk = |t: usize, rng: &mut ChaCha8Rng| {
        Var::from_vec(
            rand_vec(b * h * t * hd, case.scale, rng),
            (b, h, t, hd),
            &dev,
        )
        .unwrap()
    };
    let (q, k, v) = (mk(tq, &mut rng), mk(tk, &mut rng), mk(tk, &mut rng));
    let w = Tensor::from_vec(
        rand_vec(b * h * tq * hd, 1.0, &mut rng),
        (b, h, tq, hd),
        &dev,
    )
    .unwrap();
    let ctx = Ctx::train(seed ^ 0xABCD);
    // Consume a stream first so the attention draws from a non-zero stream id.
    ctx.next_stream();
    let res = attend(
        &ctx,
        kernel,
        AttnCall {
            q: q.as_tensor(),
            k: k.as_tensor(),
            v: v.as_tensor(),
            causal_offset: case.causal,
            dropout: case.dropout,
            want_probs: true,
            want_lse: false,
        },
    )
    .unwrap();
    let loss = (&res.out * &w).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    [
        res.out.clone(),
        res.probs.unwrap(),
        g.get(q.as_tensor()).unwrap().clone(),
        g.get(k.as_tensor()).unwrap().clone(),
        g.get(v.as_tensor()).unwrap().clone(),
    ]
}

/// Worst relative error of fused vs plain over out, probs, dq, dk, dv.
fn compare(case: Case) -> f64 {
    let plain = run(case, AttentionKernel::Plain, 42);
    let fused = run(case, AttentionKernel::Fused, 42);
    let names = ["out", "probs", "dq", "dk", "dv"];
    let mut worst = 0f64;
    for ((p, f), name) in plain.iter().zip(&fused).zip(names) {
        let e = rel_err(f, p);
        assert!(e < 1e-5, "{case:?}: {name} relative error {e:.3e}");
        worst = worst.max(e);
    }
    worst
}

fn dims(b: usize, h: usize, tq: usize, tk: usize, hd: usize) -> Dims {
    Dims { b, h, tq, tk, hd }
}

#[test]
fn exp_approx_matches_std_exp() {
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x <= 10.0 {
        let (a, b) = (exp_approx(x) as f64, x.exp() as f64);
        worst = worst.max((a - b).abs() / b);
        x += 0.001_37;
    }
    assert!(worst < 3e-7, "exp_approx relative error {worst:.3e}");
    let mut worst_fma = 0f64;
    let mut x = -87.0f32;
    while x <= 10.0 {
        let (a, b) = (exp_generic::<true>(x) as f64, x.exp() as f64);
        worst_fma = worst_fma.max((a - b).abs() / b);
        x += 0.001_37;
    }
    assert!(worst_fma < 3e-7, "FMA exp relative error {worst_fma:.3e}");
    assert_eq!(exp_approx(0.0), 1.0);
    assert!(exp_approx(-200.0) < 1.5e-38);
}

#[test]
fn dropout_bits_match_ctx_keep() {
    for &p in &[0.0f32, 0.1, 0.25, 0.3, 0.5, 0.999, 1.0] {
        for (seed, stream) in [(0u64, 0u64), (7, 3), (u64::MAX, 12345)] {
            let d = FusedDropout::new(seed, stream, p);
            for idx in (0..20_000u64).chain([u64::MAX - 1, 1 << 40]) {
                assert_eq!(
                    d.keep(idx),
                    keep(seed, stream, idx, p),
                    "p {p} seed {seed} stream {stream} idx {idx}"
                );
            }
        }
    }
    assert_eq!(FusedDropout::new(1, 1, 1.0).scale, 0.0);
}

#[test]
fn multipliers_match_keep_in_every_build() {
    use crate::kernels::simd::{best, with_simd, Simd};
    let d = FusedDropout::new(11, 3, 0.3);
    for level in [Simd::Portable, Simd::Avx2, Simd::Avx512]
        .into_iter()
        .filter(|&l| l <= best())
    {
        for (idx0, n) in [
            (0u64, 0usize),
            (0, 1),
            (5, 15),
            (7, 16),
            (1 << 33, 17),
            (3, 300),
        ] {
            let mut got = vec![f32::NAN; n + 1];
            with_simd(level, || d.multipliers(idx0, &mut got[..n]));
            for (i, g) in (idx0..).zip(&got[..n]) {
                let want = if d.keep(i) { d.scale } else { 0.0 };
                assert_eq!(g.to_bits(), want.to_bits(), "{level:?} index {i}");
            }
            assert!(got[n].is_nan(), "{level:?} wrote past the slice");
        }
    }
}

#[test]
fn matches_plain_without_dropout() {
    let mut worst = 0f64;
    for causal in [false, true] {
        for d in [
            dims(1, 1, 1, 1, 1),
            dims(2, 3, 7, 5, 4),
            dims(2, 2, 5, 9, 10),
            dims(1, 2, 13, 13, 6),
            dims(3, 1, 17, 33, 5),
            dims(1, 1, 33, 17, 3),
        ] {
            worst = worst.max(compare(Case {
                dims: d,
                causal,
                dropout: 0.0,
                scale: 1.0,
            }));
        }
    }
    println!("no dropout: worst relative error {worst:.3e}");
}

#[test]
fn every_simd_build_computes_the_same_attention() {
    use crate::kernels::simd::{best, with_simd, Simd};
    let case = Case {
        dims: dims(2, 3, 37, 300, 5),
        causal: true,
        dropout: 0.2,
        scale: 1.5,
    };
    let reference = with_simd(Simd::Portable, || run(case, AttentionKernel::Fused, 7));
    for level in [Simd::Avx2, Simd::Avx512]
        .into_iter()
        .filter(|&l| l <= best())
    {
        let got = with_simd(level, || run(case, AttentionKernel::Fused, 7));
        for (g, r) in got.iter().zip(&reference) {
            let e = rel_err(g, r);
            assert!(e < 1e-5, "{level:?}: relative error {e:.3e}");
        }
    }
}

#[test]
fn matches_plain_for_every_head_width() {
    // Every chunk-major width, and wider ones (the generic kernels), values and
    // gradients, with and without the causal offset and dropout.
    for hd in (1..=MAX_FAST_HD).chain([MAX_FAST_HD + 1, 40]) {
        for (causal, dropout) in [(false, 0.0), (true, 0.0), (true, 0.3), (false, 0.2)] {
            compare(Case {
                dims: dims(1, 2, 6, 19, hd),
                causal,
                dropout,
                scale: 1.0,
            });
        }
    }
}

#[test]
fn every_simd_build_agrees_at_odd_and_wide_head_widths() {
    use crate::kernels::simd::{best, with_simd, Simd};
    for hd in [1, 3, 6, 7, 12, 13, 18, 33, 34, 40] {
        let case = Case {
            dims: dims(2, 1, 21, 37, hd),
            causal: true,
            dropout: 0.2,
            scale: 1.0,
        };
        let reference = with_simd(Simd::Portable, || run(case, AttentionKernel::Fused, 5));
        for level in [Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|&l| l <= best())
        {
            let got = with_simd(level, || run(case, AttentionKernel::Fused, 5));
            for (g, r) in got.iter().zip(&reference) {
                let e = rel_err(g, r);
                assert!(e < 1e-5, "hd {hd} {level:?}: relative error {e:.3e}");
            }
        }
    }
}

#[test]
fn matches_plain_with_dropout() {
    let mut worst = 0f64;
    for causal in [false, true] {
        for (d, p) in [
            (dims(2, 3, 7, 5, 4), 0.1),
            (dims(2, 2, 9, 23, 10), 0.3),
            (dims(1, 2, 19, 6, 5), 0.5),
        ] {
            worst = worst.max(compare(Case {
                dims: d,
                causal,
                dropout: p,
                scale: 1.0,
            }));
        }
    }
    println!("dropout: worst relative error {worst:.3e}");
}

#[test]
fn matches_plain_across_key_blocks() {
    // T_k > 2·KEY_BLOCK (the AVX-512 forward's block) and large scores: the running
    // max grows across blocks, so the online rescaling is exercised in every build.
    let tk = 2 * KEY_BLOCK + 45;
    for causal in [false, true] {
        for (tq, p) in [(3, 0.0), (tk + 2, 0.2)] {
            compare(Case {
                dims: dims(1, 2, tq, tk, 5),
                causal,
                dropout: p,
                scale: 3.0,
            });
        }
    }
}

#[test]
fn dropout_changes_the_output_and_eval_ignores_it() {
    let case = Case {
        dims: dims(1, 2, 8, 8, 4),
        causal: true,
        dropout: 0.5,
        scale: 1.0,
    };
    let with = run(case, AttentionKernel::Fused, 3);
    let without = run(
        Case {
            dropout: 0.0,
            ..case
        },
        AttentionKernel::Fused,
        3,
    );
    assert!(rel_err(&with[0], &without[0]) > 1e-2);
    // Probabilities are before dropout: identical.
    assert!(rel_err(&with[1], &without[1]) < 1e-7);
    // Eval mode: no dropout, no stream drawn.
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut mk = || Tensor::from_vec(rand_vec(64, 1.0, &mut rng), (1, 2, 8, 4), &dev).unwrap();
    let (q, k, v) = (mk(), mk(), mk());
    let eval = |p: f32| {
        let ctx = Ctx::eval();
        let call = AttnCall {
            q: &q,
            k: &k,
            v: &v,
            causal_offset: true,
            dropout: p,
            want_probs: false,
            want_lse: false,
        };
        let out = attend(&ctx, AttentionKernel::Fused, call).unwrap().out;
        (out, ctx.next_stream())
    };
    let ((a, sa), (b, sb)) = (eval(0.5), eval(0.0));
    assert_eq!(rel_err(&a, &b), 0.0);
    assert_eq!((sa, sb), (0, 0));
}

#[test]
fn mask_zeroes_future_keys_and_rows_sum_to_one() {
    let case = Case {
        dims: dims(1, 1, 4, 6, 3),
        causal: true,
        dropout: 0.0,
        scale: 1.0,
    };
    let p: Vec<f32> = run(case, AttentionKernel::Fused, 5)[1]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for i in 0..4 {
        let row = &p[i * 6..(i + 1) * 6];
        for (j, &x) in row.iter().enumerate() {
            // off = 2: query i sees keys j <= i + 2.
            assert_eq!(x == 0.0, j > i + 2, "row {i} key {j}: {x}");
        }
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-6, "row {i} sums to {s}");
    }
}

#[test]
fn threads_give_identical_results() {
    let d = dims(3, 2, 9, 14, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let q = rand_vec(d.tasks() * d.tq * d.hd, 1.0, &mut rng);
    let k = rand_vec(d.tasks() * d.tk * d.hd, 1.0, &mut rng);
    let v = rand_vec(d.tasks() * d.tk * d.hd, 1.0, &mut rng);
    let g = rand_vec(d.tasks() * d.tq * (d.hd + 1), 1.0, &mut rng);
    let drop = Some(FusedDropout::new(1, 2, 0.2));
    let o1 = forward_all(1, d, true, drop, &q, &k, &v);
    let o3 = forward_all(3, d, true, drop, &q, &k, &v);
    assert_eq!(o1, o3);
    let b1 = backward_all(1, d, true, drop, &q, &k, &v, &o1, &g);
    let b4 = backward_all(4, d, true, drop, &q, &k, &v, &o1, &g);
    assert_eq!(b1, b4);
}
