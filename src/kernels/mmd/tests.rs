use super::*;
use crate::align::mmd::{mmd_biased_composed, pairwise_sq_dists};
use candle_core::{Device, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_t(rng: &mut ChaCha8Rng, n: usize, d: usize, shift: f32) -> Var {
    let v: Vec<f32> = (0..n * d)
        .map(|_| rng.gen_range(-1.0f32..1.0) + shift)
        .collect();
    Var::from_vec(v, (n, d), &Device::Cpu).unwrap()
}

#[test]
fn every_simd_build_computes_the_same_estimate() {
    use crate::kernels::simd::{best, with_simd, Simd};
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = rand_t(&mut rng, 45, 40, 0.0);
    let y = rand_t(&mut rng, 33, 40, 0.3);
    let run = |level| {
        with_simd(level, || {
            let l = mmd_fused(x.as_tensor(), y.as_tensor(), None).unwrap();
            let g = l.backward().unwrap();
            let gx: Vec<f32> = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (l.to_scalar::<f32>().unwrap(), gx)
        })
    };
    let (v0, g0) = run(Simd::Portable);
    let scale = g0.iter().fold(0f32, |s, x| s.max(x.abs()));
    for level in [Simd::Avx2, Simd::Avx512]
        .into_iter()
        .filter(|&l| l <= best())
    {
        let (v, g) = run(level);
        assert!((v - v0).abs() < 1e-6, "{level:?}: {v} vs {v0}");
        for (a, b) in g.iter().zip(&g0) {
            assert!((a - b).abs() <= 1e-5 * scale, "{level:?}: {a} vs {b}");
        }
    }
}

#[test]
fn closed_form_bandwidth_is_the_mean_off_diagonal_distance() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let z = rand_t(&mut rng, 37, 6, 0.3);
    let d = pairwise_sq_dists(z.as_tensor(), z.as_tensor()).unwrap();
    let want = d.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64 / (37.0 * 36.0);
    let v: Vec<f32> = z.flatten_all().unwrap().to_vec1().unwrap();
    let got = closed_form_bandwidth(&v, 37, 6);
    assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    assert_eq!(closed_form_bandwidth(&[2.0; 12], 4, 3), 1.0);
}

#[test]
fn fused_matches_composed_value_and_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // Odd sizes (tails of the 16-lane loops), unequal sides, a duplicate row (a
    // clamped zero distance across the two sides).
    for (n, m, d, shift, bw) in [
        (37, 21, 5, 0.4, None),
        (16, 16, 40, 0.0, None),
        (3, 50, 7, 1.0, Some(2.5)),
    ] {
        let x = rand_t(&mut rng, n, d, 0.0);
        let y = rand_t(&mut rng, m, d, shift);
        if n == 3 {
            let mut yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            yv[..d].copy_from_slice(&xv[..d]);
            y.set(&Tensor::from_vec(yv, (m, d), &Device::Cpu).unwrap())
                .unwrap();
        }
        let got = mmd_fused(x.as_tensor(), y.as_tensor(), bw).unwrap();
        let want = mmd_biased_composed(x.as_tensor(), y.as_tensor(), bw).unwrap();
        let (g, w) = (
            got.to_scalar::<f32>().unwrap(),
            want.to_scalar::<f32>().unwrap(),
        );
        // The value is a difference of means of O(1) kernels: compare absolutely.
        assert!((g - w).abs() < 2e-6, "n {n} m {m}: {g} vs {w}");
        let (gg, gw) = (got.backward().unwrap(), want.backward().unwrap());
        for v in [&x, &y] {
            let a: Vec<f32> = gg
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let b: Vec<f32> = gw
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let scale = b.iter().fold(0f32, |s, x| s.max(x.abs()));
            assert!(scale > 0.0);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-4 * scale, "n {n} m {m}: {p} vs {q}");
            }
        }
    }
}
