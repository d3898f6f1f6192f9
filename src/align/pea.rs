//! Propagated element-level alignment L_e (paper 3.3, spec/mica.md): per sample and head
//! select the top-τ attention entries (padding excluded), OR the selections across the
//! layers of the same block, and pull the selected query/key pairs together.

pub use crate::kernels::pea::keep_count;
use anyhow::{ensure, Result};
use candle_core::{Tensor, D};

/// Shape of one block's attention maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapDims {
    /// Batch.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Target (query) length.
    pub tq: usize,
    /// Source (key) length.
    pub tk: usize,
}

impl MapDims {
    /// Entries per (sample, head).
    pub fn per_map(&self) -> usize {
        self.tq * self.tk
    }
    /// All entries.
    pub fn total(&self) -> usize {
        self.b * self.h * self.per_map()
    }
}

/// The top-τ mask `W` (as bools, `[B, h, T_q, T_k]`) of probabilities `probs` (same
/// layout). Per sample and head the threshold γ is the `keep_count`-th largest eligible
/// probability; every eligible entry `>= γ` is selected (ties at γ all kept). Rows and
/// columns flagged invalid (padding) are never selected.
pub fn top_tau_mask(
    probs: &[f32],
    dims: MapDims,
    valid_q: &[bool],
    valid_k: &[bool],
    tau: f64,
) -> Result<Vec<bool>> {
    ensure!(
        probs.len() == dims.total(),
        "PEA: {} probabilities for maps {:?}",
        probs.len(),
        dims
    );
    ensure!(
        valid_q.len() == dims.b * dims.tq && valid_k.len() == dims.b * dims.tk,
        "PEA: padding flags do not fit the maps"
    );
    let mut mask = vec![false; dims.total()];
    let mut scratch = Vec::with_capacity(dims.per_map());
    for b in 0..dims.b {
        let vq = &valid_q[b * dims.tq..(b + 1) * dims.tq];
        let vk = &valid_k[b * dims.tk..(b + 1) * dims.tk];
        let (nq, nk) = (
            vq.iter().filter(|x| **x).count(),
            vk.iter().filter(|x| **x).count(),
        );
        for h in 0..dims.h {
            let base = (b * dims.h + h) * dims.per_map();
            let map = &probs[base..base + dims.per_map()];
            let eligible = |i: usize, j: usize| vq[i] && vk[j] && map[i * dims.tk + j] > 0.0;
            scratch.clear();
            for i in 0..dims.tq {
                for j in 0..dims.tk {
                    if eligible(i, j) {
                        scratch.push(map[i * dims.tk + j]);
                    }
                }
            }
            let k = keep_count(tau, nq, nk, scratch.len());
            if k == 0 {
                continue;
            }
            // k-th largest = element at index len-k in ascending order.
            let idx = scratch.len() - k;
            let (_, gamma, _) = scratch.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
            let gamma = *gamma;
            for i in 0..dims.tq {
                for j in 0..dims.tk {
                    if eligible(i, j) && map[i * dims.tk + j] >= gamma {
                        mask[base + i * dims.tk + j] = true;
                    }
                }
            }
        }
    }
    Ok(mask)
}

/// `Σ_{n,m} V[n,m] ||q_n - k_m||²` per head, summed over samples and heads, computed as
/// `Σ c_n |q_n|² + Σ r_m |k_m|² - 2 Σ q_n · (V k)_n` (never `[T_q, T_k, hd]` differences).
/// `q` `[B, T_q, E]`, `k` `[B, T_k, E]` (unscaled projections), `mask` `[B, h, T_q, T_k]`
/// f32 0/1 without gradient.
pub fn masked_sq_distance(q: &Tensor, k: &Tensor, mask: &Tensor, heads: usize) -> Result<Tensor> {
    let split = |x: &Tensor| -> Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        Ok(x.reshape((b, t, heads, e / heads))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let (qh, kh) = (split(q)?, split(k)?); // [B, h, T, hd]
    let c = mask.sum(D::Minus1)?; // [B, h, Tq]
    let r = mask.sum(D::Minus2)?; // [B, h, Tk]
    let qn = qh.sqr()?.sum(D::Minus1)?; // [B, h, Tq]
    let kn = kh.sqr()?.sum(D::Minus1)?; // [B, h, Tk]
    let vk = mask.matmul(&kh)?; // [B, h, Tq, hd]
    let cross = (qh * vk)?.sum_all()?;
    let d = ((c * qn)?.sum_all()? + (r * kn)?.sum_all()?)?;
    Ok((d - (cross * 2.0)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rand_maps(dims: MapDims, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..dims.total())
            .map(|_| rng.gen_range(0.001f32..1.0))
            .collect()
    }

    #[test]
    fn mask_holds_exactly_ceil_tau_entries_on_tie_free_maps() {
        let dims = MapDims {
            b: 2,
            h: 3,
            tq: 5,
            tk: 7,
        };
        let p = rand_maps(dims, 1);
        let all_q = vec![true; 10];
        let all_k = vec![true; 14];
        for tau in [0.01, 0.25, 0.3, 1.0] {
            let m = top_tau_mask(&p, dims, &all_q, &all_k, tau).unwrap();
            let want = (tau * 35.0).ceil() as usize;
            for map in m.chunks(35) {
                assert_eq!(map.iter().filter(|x| **x).count(), want, "tau {tau}");
            }
        }
    }

    #[test]
    fn padding_is_never_selected_and_count_uses_valid_lengths() {
        let dims = MapDims {
            b: 1,
            h: 2,
            tq: 4,
            tk: 6,
        };
        let mut p = rand_maps(dims, 2);
        // Make padding entries the largest, so a wrong implementation would pick them.
        let vq = vec![false, true, true, true];
        let vk = vec![false, false, true, true, true, true];
        for h in 0..2 {
            for i in 0..4 {
                for j in 0..6 {
                    if !vq[i] || !vk[j] {
                        p[h * 24 + i * 6 + j] = 5.0;
                    }
                }
            }
        }
        let m = top_tau_mask(&p, dims, &vq, &vk, 0.5).unwrap();
        for h in 0..2 {
            let map = &m[h * 24..(h + 1) * 24];
            assert_eq!(map.iter().filter(|x| **x).count(), 6); // ceil(0.5 * 3 * 4)
            for i in 0..4 {
                for j in 0..6 {
                    if !vq[i] || !vk[j] {
                        assert!(!map[i * 6 + j]);
                    }
                }
            }
        }
    }

    #[test]
    fn distance_matches_brute_force_and_its_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (b, tq, tk, e, h) = (2, 3, 4, 6, 2);
        let qv: Vec<f32> = (0..b * tq * e).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let kv: Vec<f32> = (0..b * tk * e).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mv: Vec<f32> = (0..b * h * tq * tk)
            .map(|_| if rng.gen_bool(0.4) { 1.0 } else { 0.0 })
            .collect();
        let q = Var::from_vec(qv.clone(), (b, tq, e), &dev).unwrap();
        let k = Tensor::from_vec(kv.clone(), (b, tk, e), &dev).unwrap();
        let mask = Tensor::from_vec(mv.clone(), (b, h, tq, tk), &dev).unwrap();
        let d = masked_sq_distance(q.as_tensor(), &k, &mask, h).unwrap();
        let hd = e / h;
        let brute = |qv: &[f32]| -> f64 {
            let mut s = 0f64;
            for bi in 0..b {
                for hi in 0..h {
                    for n in 0..tq {
                        for m in 0..tk {
                            if mv[((bi * h + hi) * tq + n) * tk + m] == 1.0 {
                                for c in 0..hd {
                                    let a = qv[(bi * tq + n) * e + hi * hd + c] as f64;
                                    let bb = kv[(bi * tk + m) * e + hi * hd + c] as f64;
                                    s += (a - bb) * (a - bb);
                                }
                            }
                        }
                    }
                }
            }
            s
        };
        let got = d.to_scalar::<f32>().unwrap() as f64;
        assert!((got - brute(&qv)).abs() < 1e-4 * brute(&qv).max(1.0));
        let g: Vec<f32> = d
            .backward()
            .unwrap()
            .get(q.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for idx in [0, 5, 13, 20, 35] {
            let eps = 1e-3;
            let mut plus = qv.clone();
            plus[idx] += eps;
            let mut minus = qv.clone();
            minus[idx] -= eps;
            let fd = (brute(&plus) - brute(&minus)) / (2.0 * eps as f64);
            assert!(
                (g[idx] as f64 - fd).abs() < 1e-2 * fd.abs().max(1.0),
                "idx {idx}: {} vs {fd}",
                g[idx]
            );
        }
    }
}
