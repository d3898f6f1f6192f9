use super::*;

#[test]
fn pea_block_is_the_same_in_every_simd_build() {
    // The bench's width on a large map; odd, time-biased (+2) and wide widths (past the
    // last chunk-major build too) on smaller ones.
    for (hd, tq, tk) in [
        (5, 300, 250),
        (1, 40, 70),
        (3, 40, 70),
        (7, 70, 40),
        (12, 40, 70),
        (18, 40, 70),
        (33, 70, 40),
        (35, 40, 70),
    ] {
        pea_block_agrees_across_builds(hd, tq, tk);
    }
}

fn pea_block_agrees_across_builds(hd: usize, tq: usize, tk: usize) {
    use crate::kernels::pea::{pea_block, PeaParams};
    use crate::kernels::simd::with_simd;
    use crate::model::attention::{attend, AttentionKernel, AttnCall};
    use crate::model::ctx::Ctx;
    use candle_core::{Device, Tensor};
    let (b, h) = (2, 2);
    let dev = Device::Cpu;
    let qh = (Tensor::randn(0f32, 1.0, (b, h, tq, hd), &dev).unwrap() * 0.5).unwrap();
    let kh = Tensor::randn(0f32, 1.0, (b, h, tk, hd), &dev).unwrap();
    let lse = attend(
        &Ctx::eval(),
        AttentionKernel::Fused,
        AttnCall {
            q: &qh,
            k: &kh,
            v: &kh,
            causal_offset: true,
            dropout: 0.0,
            want_probs: false,
            want_lse: true,
        },
    )
    .unwrap()
    .lse
    .unwrap();
    let valid_q: Vec<bool> = (0..b * tq).map(|x| x % tq < tq - 4 * (x / tq)).collect();
    let valid_k: Vec<bool> = (0..b * tk).map(|x| x % tk < tk - 9 * (x / tk)).collect();
    let run = |level, prev| {
        with_simd(level, || {
            let p = PeaParams {
                causal: true,
                valid_q: &valid_q,
                valid_k: &valid_k,
                tau: 0.25,
                prev,
            };
            pea_block(&qh, &kh, &lse, p).unwrap()
        })
    };
    let first = run(Simd::Avx2, None);
    for prev in [None, Some(&first.mask)] {
        let want = run(Simd::Portable, prev);
        for level in [Simd::Avx2, Simd::Avx512] {
            if !crate::kernels::simd::supported(level) {
                continue;
            }
            let got = run(level, prev);
            assert_eq!(got.mask, want.mask, "hd {hd} {level:?}");
            assert_eq!(got.selected, want.selected);
            let close = |a: &[f32], b: &[f32]| {
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * scale)
            };
            assert!(
                (got.distance - want.distance).abs() <= 1e-6 * want.distance,
                "hd {hd} {level:?}: {} vs {}",
                got.distance,
                want.distance
            );
            assert!(
                close(&got.dq, &want.dq) && close(&got.dk, &want.dk),
                "hd {hd} {level:?}"
            );
        }
    }
}

#[test]
fn threshold_matches_the_histogram_threshold_on_large_maps() {
    if !crate::kernels::simd::supported(Simd::Avx512) {
        return;
    }
    let mut state = 11u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    for (tq, tk, causal) in [
        (500, 375, true),
        (375, 500, false),
        (50, 375, true),
        (300, 77, false),
    ] {
        let dims = Dims {
            b: 1,
            h: 1,
            tq,
            tk,
            hd: 1,
        };
        // Softmax-like rows: exp of scores, zero past the causal end.
        let mut probs = vec![0f32; tq * tk];
        for i in 0..tq {
            let end = dims.key_end(i, causal);
            for j in 0..end {
                probs[i * tk + j] = (6.0 * next() - 3.0).exp() / end as f32;
            }
        }
        let vq: Vec<bool> = (0..tq).map(|i| i < tq - 3).collect();
        let vk: Vec<bool> = (0..tk).map(|j| j % 31 != 5).collect();
        let vkb = key_bits(&vk);
        for tau in [0.01, 0.1, 0.25, 0.5, 0.9, 1.0] {
            let t = TaskIn::for_threshold(dims, causal, &vq, &vk, tau);
            let want = super::super::threshold(&t, &probs);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            // SAFETY: checked above.
            let got = unsafe { threshold(&t, &probs, &vkb, &mut a, &mut b) };
            assert_eq!(got, want, "{tq}x{tk} causal {causal} tau {tau}");
        }
    }
}

#[test]
fn kth_largest_is_exact_on_long_lists_with_ties() {
    if !crate::kernels::simd::supported(Simd::Avx512) {
        return;
    }
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for (n, pool) in [(5000, 0), (20000, 0), (30000, 13), (9000, 2), (100_000, 0)] {
        let list: Vec<f32> = (0..n)
            .map(|_| {
                let x = next();
                if pool > 0 {
                    (x % pool) as f32 * 0.1
                } else {
                    x as f32 / u32::MAX as f32
                }
            })
            .collect();
        let mut sorted = list.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for k in [1, 2, n / 7, n / 4, n / 2, n - 1, n] {
            let mut l = list.clone();
            let mut spare = Vec::new();
            // SAFETY: checked above.
            let got = unsafe { kth_largest(&mut l, k, &mut spare) };
            assert_eq!(got, sorted[k - 1], "n {n} pool {pool} k {k}");
        }
    }
}
