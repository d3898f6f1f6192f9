use super::*;
use crate::align::pea::{top_tau_mask, MapDims};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn histogram_threshold_selects_exactly_what_full_selection_does() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (tq, tk) = (9, 13);
    for trial in 0..40 {
        // Values spread over many binades, with ties (a small pool of values) in
        // half of the trials, and zeros (masked entries) in some.
        let pool: Vec<f32> = (0..7).map(|_| rng.gen_range(1e-6f32..1.0)).collect();
        let probs: Vec<f32> = (0..tq * tk)
            .map(|_| match trial % 4 {
                0 => pool[rng.gen_range(0..pool.len())],
                1 => 10f32.powf(rng.gen_range(-9.0..0.0)),
                2 if rng.gen_bool(0.2) => 0.0,
                _ => rng.gen_range(0.0f32..1.0),
            })
            .collect();
        let vq: Vec<bool> = (0..tq).map(|_| rng.gen_bool(0.8)).collect();
        let vk: Vec<bool> = (0..tk).map(|_| rng.gen_bool(0.8)).collect();
        for tau in [0.01, 0.25, 0.3, 0.77, 1.0] {
            let dims = Dims {
                b: 1,
                h: 1,
                tq,
                tk,
                hd: 1,
            };
            let t = TaskIn::for_threshold(dims, false, &vq, &vk, tau);
            let gamma = threshold(&t, &probs);
            let got: Vec<bool> = (0..tq * tk)
                .map(|x| {
                    let (i, j) = (x / tk, x % tk);
                    vq[i] && vk[j] && probs[x] > 0.0 && probs[x] >= gamma
                })
                .collect();
            let dims = MapDims { b: 1, h: 1, tq, tk };
            let want = top_tau_mask(&probs, dims, &vq, &vk, tau).unwrap();
            assert_eq!(got, want, "trial {trial} tau {tau}");
        }
    }
}

#[test]
fn mask_bits_round_trip() {
    let dims = Dims {
        b: 1,
        h: 2,
        tq: 3,
        tk: 70,
        hd: 1,
    };
    let mut m = MaskBits::empty(dims);
    assert_eq!(m.words, 2);
    m.bits[(3 + 2) * 2 + 1] |= 1 << 5; // task 1, row 2, column 69
    let b = m.to_bools();
    assert_eq!(b.iter().filter(|x| **x).count(), 1);
    assert!(b[(3 + 2) * 70 + 69] && m.get(1, 2, 69) && m.count() == 1);
}
