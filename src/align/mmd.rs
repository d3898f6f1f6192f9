//! Marginal alignment L_m: multi-kernel Gaussian MMD between the keys and the queries of
//! a crossmodal block (spec/mica.md). Cost is bounded: at most `max_samples` elements per
//! side are drawn (seeded), or the linear-time estimator is used.

use anyhow::{ensure, Result};
use candle_core::{Tensor, D};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Number of Gaussian kernels; bandwidths `bw * 2^(j-2)`, j = 0..4 (DAN's choice).
pub const N_KERNELS: i32 = 5;

/// Squared Euclidean distances between the rows of `a` `[n, d]` and `b` `[m, d]` as
/// `|a|² + |b|² - 2 a·b`, clamped at 0.
pub fn pairwise_sq_dists(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let an = a.sqr()?.sum_keepdim(D::Minus1)?; // [n, 1]
    let bn = b.sqr()?.sum_keepdim(D::Minus1)?.t()?; // [1, m]
    let ab = a.matmul(&b.t()?)?;
    // `an + bn` as a bias add over rows: the same values and gradients as a broadcast
    // add, without candle's slow column reduction in the backward (kernels::bias).
    let (n, m) = (a.dim(0)?, b.dim(0)?);
    let abn = crate::kernels::bias::add_bias(&an.broadcast_as((n, m))?, &bn.squeeze(0)?)?;
    let d = abn.broadcast_sub(&(ab * 2.0)?)?;
    crate::model::layers::relu(&d)
}

/// Sum of the five Gaussian kernels `exp(-D / (bw 2^(j-2)))` on a distance matrix.
///
/// On the CPU this is one op ([`MultiKernel`]) that keeps only its output: the composed
/// form holds 15 `[N, N]` intermediates per block for the backward (~240 MB per block at
/// 2048 pooled samples). The forward values are bit-identical to the composed ops; the
/// backward recomputes the five exponentials.
fn multi_kernel(d: &Tensor, bw: f64) -> Result<Tensor> {
    let muls: [f64; N_KERNELS as usize] =
        std::array::from_fn(|j| -1.0 / (bw * 2f64.powi(j as i32 - 2)));
    if d.device().is_cpu() && d.dtype() == candle_core::DType::F32 {
        return Ok(d.contiguous()?.apply_op1(MultiKernel {
            muls: muls.map(|m| m as f32),
        })?);
    }
    multi_kernel_composed(d, &muls)
}

/// [`multi_kernel`] with composed candle ops (any device; the reference of the tests).
fn multi_kernel_composed(d: &Tensor, muls: &[f64]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for &m in muls {
        let k = (d * m)?.exp()?;
        acc = Some(match acc {
            None => k,
            Some(a) => (a + k)?,
        });
    }
    Ok(acc.expect("at least one kernel"))
}

/// `Σ_j exp(m_j D)` elementwise, as one op (forward in the composed ops' order:
/// `((k_0 + k_1) + k_2) + ...` with `k_j = exp(D · m_j + 0)`); backward
/// `dD = g · Σ_j m_j exp(m_j D)`.
struct MultiKernel {
    muls: [f32; N_KERNELS as usize],
}

impl MultiKernel {
    #[inline]
    fn value(&self, d: f32) -> f32 {
        let mut acc = (d * self.muls[0] + 0.0).exp();
        for &m in &self.muls[1..] {
            acc += (d * m + 0.0).exp();
        }
        acc
    }
}

impl candle_core::CustomOp1 for MultiKernel {
    fn name(&self) -> &'static str {
        "mica-mmd-multi-kernel"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("multi-kernel: contiguous f32 input expected")
        };
        let out: Vec<f32> = v[a..b].iter().map(|&d| self.value(d)).collect();
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, d: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dv: Vec<f32> = d.flatten_all()?.to_vec1()?;
        let gv: Vec<f32> = grad.flatten_all()?.to_vec1()?;
        let out: Vec<f32> = dv
            .iter()
            .zip(&gv)
            .map(|(&d, &g)| {
                let s: f32 = self.muls.iter().map(|&m| m * (d * m + 0.0).exp()).sum();
                g * s
            })
            .collect();
        Ok(Some(Tensor::from_vec(out, d.shape(), d.device())?))
    }
}

/// Bandwidth: mean pairwise squared distance of the pooled sample (off-diagonal),
/// without gradient. A degenerate (all-equal) sample gets bandwidth 1.
pub fn bandwidth(dzz: &Tensor, n: usize) -> Result<f64> {
    let total = dzz.detach().sum_all()?.to_scalar::<f32>()? as f64;
    let pairs = (n * n - n).max(1) as f64;
    let bw = total / pairs;
    Ok(if bw > 0.0 && bw.is_finite() { bw } else { 1.0 })
}

/// Biased (V-statistic) multi-kernel MMD² between the rows of `x` `[n, d]` and `y` `[m, d]`,
/// bandwidth from the pooled sample (no gradient through it).
pub fn mmd_biased(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    mmd_biased_bw(x, y, None)
}

/// [`mmd_biased`] with an optional fixed bandwidth (`None`: the pooled mean squared
/// distance). Exposed so gradients can be checked against finite differences.
///
/// f32 tensors on the CPU take the fused sweep of [`crate::kernels::mmd`] (no `[N, N]`
/// tensor; value and gradient in one pass); others the composed ops of
/// [`mmd_biased_composed`], its reference.
pub fn mmd_biased_bw(x: &Tensor, y: &Tensor, bw: Option<f64>) -> Result<Tensor> {
    let fused = [x, y]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32);
    if fused {
        crate::kernels::mmd::mmd_fused(x, y, bw)
    } else {
        mmd_biased_composed(x, y, bw)
    }
}

/// [`mmd_biased_bw`] with composed candle ops (any device): `[N, N]` distance and
/// kernel matrices, bandwidth as the mean of the off-diagonal distances.
pub fn mmd_biased_composed(x: &Tensor, y: &Tensor, bw: Option<f64>) -> Result<Tensor> {
    let (n, m) = (x.dim(0)?, y.dim(0)?);
    ensure!(n > 0 && m > 0, "MMD needs at least one element per side");
    let z = Tensor::cat(&[x, y], 0)?;
    let dzz = pairwise_sq_dists(&z, &z)?;
    let bw = match bw {
        Some(b) => b,
        None => bandwidth(&dzz, n + m)?,
    };
    let k = multi_kernel(&dzz, bw)?;
    let kxx = k.narrow(0, 0, n)?.narrow(1, 0, n)?.mean_all()?;
    let kyy = k.narrow(0, n, m)?.narrow(1, n, m)?.mean_all()?;
    let kxy = k.narrow(0, 0, n)?.narrow(1, n, m)?.mean_all()?;
    Ok(((kxx + kyy)? - (kxy * 2.0)?)?)
}

/// Linear-time MMD² estimate (Gretton et al. 2012, Lemma 14): mean over consecutive pairs
/// of `k(x1,x2) + k(y1,y2) - k(x1,y2) - k(x2,y1)`. Unbiased, O(n d). Needs ≥ 2 per side.
pub fn mmd_linear(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let half = x.dim(0)?.min(y.dim(0)?) / 2;
    ensure!(
        half >= 1,
        "the linear MMD estimator needs at least two elements per side"
    );
    let x1 = x.narrow(0, 0, half)?;
    let x2 = x.narrow(0, half, half)?;
    let y1 = y.narrow(0, 0, half)?;
    let y2 = y.narrow(0, half, half)?;
    let sq = |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok((a - b)?.sqr()?.sum(D::Minus1)?) };
    let (dxx, dyy, dxy, dyx) = (sq(&x1, &x2)?, sq(&y1, &y2)?, sq(&x1, &y2)?, sq(&x2, &y1)?);
    let all = Tensor::cat(&[&dxx, &dyy, &dxy, &dyx], 0)?;
    let bw = {
        let v = all.detach().mean_all()?.to_scalar::<f32>()? as f64;
        if v > 0.0 && v.is_finite() {
            v
        } else {
            1.0
        }
    };
    let h = (((multi_kernel(&dxx, bw)? + multi_kernel(&dyy, bw)?)? - multi_kernel(&dxy, bw)?)?
        - multi_kernel(&dyx, bw)?)?;
    Ok(h.mean_all()?)
}

/// Indices (into `0..flags.len()`) of the set flags, at most `max` of them drawn uniformly
/// without replacement from a ChaCha stream seeded with `seed` (sorted for locality).
pub fn sample_valid(flags: &[bool], max: usize, seed: u64) -> Vec<u32> {
    let valid: Vec<u32> = flags
        .iter()
        .enumerate()
        .filter(|(_, f)| **f)
        .map(|(i, _)| i as u32)
        .collect();
    if valid.len() <= max {
        return valid;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picked: Vec<u32> = sample(&mut rng, valid.len(), max)
        .into_iter()
        .map(|i| valid[i])
        .collect();
    picked.sort_unstable();
    picked
}

/// Rows of `x` `[B, T, E]` (flattened to `[B*T, E]`) at `idx`.
pub fn gather_rows(x: &Tensor, idx: &[u32]) -> Result<Tensor> {
    let (b, t, e) = x.dims3()?;
    let flat = x.reshape((b * t, e))?;
    let ids = Tensor::from_slice(idx, idx.len(), x.device())?;
    Ok(flat.index_select(&ids, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::Rng;

    fn randn(rng: &mut ChaCha8Rng, n: usize, d: usize, shift: f32) -> Tensor {
        let v: Vec<f32> = (0..n * d)
            .map(|_| rng.gen_range(-1.0f32..1.0) + shift)
            .collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
    }
    fn val(t: Tensor) -> f64 {
        t.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn zero_for_identical_samples_and_grows_with_shift() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x = randn(&mut rng, 40, 6, 0.0);
        assert!(val(mmd_biased(&x, &x).unwrap()).abs() < 1e-5);
        let mut last = -1.0;
        for shift in [0.0, 0.5, 1.0, 2.0] {
            let mut r2 = ChaCha8Rng::seed_from_u64(2);
            let y = randn(&mut r2, 40, 6, shift);
            let v = val(mmd_biased(&x, &y).unwrap());
            assert!(
                v > last,
                "MMD must grow with the mean shift: {v} after {last}"
            );
            last = v;
        }
    }

    #[test]
    fn symmetric_and_finite_for_single_elements() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = randn(&mut rng, 7, 4, 0.0);
        let y = randn(&mut rng, 9, 4, 0.7);
        let a = val(mmd_biased(&x, &y).unwrap());
        let b = val(mmd_biased(&y, &x).unwrap());
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        let one = randn(&mut rng, 1, 4, 0.0);
        let other = randn(&mut rng, 1, 4, 1.0);
        assert!(val(mmd_biased(&one, &other).unwrap()).is_finite());
        assert!(val(mmd_biased(&one, &one).unwrap()).abs() < 1e-6);
    }

    #[test]
    fn sampled_estimate_close_to_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = randn(&mut rng, 400, 5, 0.0);
        let y = randn(&mut rng, 400, 5, 0.6);
        let exact = val(mmd_biased(&x, &y).unwrap());
        let ix = sample_valid(&vec![true; 400], 200, 9);
        let iy = sample_valid(&vec![true; 400], 200, 10);
        let xs = gather_rows(&x.unsqueeze(0).unwrap(), &ix).unwrap();
        let ys = gather_rows(&y.unsqueeze(0).unwrap(), &iy).unwrap();
        let approx = val(mmd_biased(&xs, &ys).unwrap());
        assert!(
            (approx - exact).abs() < 0.25 * exact,
            "sampled {approx} vs exact {exact}"
        );
        let lin = val(mmd_linear(&x, &y).unwrap());
        assert!(
            (lin - exact).abs() < 0.5 * exact,
            "linear {lin} vs exact {exact}"
        );
    }

    #[test]
    fn multi_kernel_op_matches_composed_ops() {
        use candle_core::Var;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let v: Vec<f32> = (0..30 * 30).map(|_| rng.gen_range(0.0f32..6.0)).collect();
        let d = Var::from_vec(v, (30, 30), &Device::Cpu).unwrap();
        let up = randn(&mut rng, 30, 30, 0.0);
        let bw = 2.7;
        let muls: Vec<f64> = (0..N_KERNELS)
            .map(|j| -1.0 / (bw * 2f64.powi(j - 2)))
            .collect();
        let fast = multi_kernel(d.as_tensor(), bw).unwrap();
        let slow = multi_kernel_composed(d.as_tensor(), &muls).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&fast), bits(&slow), "forward must be bit-identical");
        let grad = |t: &Tensor| -> Vec<f32> {
            let g = (t * &up).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(d.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (gf, gs) = (grad(&fast), grad(&slow));
        let scale = gs.iter().fold(0f32, |a, x| a.max(x.abs()));
        for (a, b) in gf.iter().zip(&gs) {
            assert!((a - b).abs() <= 1e-6 * scale, "{a} vs {b}");
        }
    }

    #[test]
    fn pairwise_distances_match_broadcast_form() {
        use candle_core::Var;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let a = Var::from_tensor(&randn(&mut rng, 9, 5, 0.0)).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, 7, 5, 0.5)).unwrap();
        let up = randn(&mut rng, 9, 7, 0.0);
        let reference = |a: &Tensor, b: &Tensor| -> Tensor {
            let an = a.sqr().unwrap().sum_keepdim(D::Minus1).unwrap();
            let bn = b
                .sqr()
                .unwrap()
                .sum_keepdim(D::Minus1)
                .unwrap()
                .t()
                .unwrap();
            let ab = a.matmul(&b.t().unwrap()).unwrap();
            let d = an
                .broadcast_add(&bn)
                .unwrap()
                .broadcast_sub(&(ab * 2.0).unwrap())
                .unwrap();
            crate::model::layers::relu(&d).unwrap()
        };
        let run = |fast: bool| -> Vec<Vec<u32>> {
            let d = if fast {
                pairwise_sq_dists(a.as_tensor(), b.as_tensor()).unwrap()
            } else {
                reference(a.as_tensor(), b.as_tensor())
            };
            let g = (&d * &up).unwrap().sum_all().unwrap().backward().unwrap();
            [
                &d,
                g.get(a.as_tensor()).unwrap(),
                g.get(b.as_tensor()).unwrap(),
            ]
            .iter()
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect()
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn sampling_respects_flags_and_seed() {
        let flags: Vec<bool> = (0..100).map(|i| i % 3 != 0).collect();
        let a = sample_valid(&flags, 10, 5);
        assert_eq!(a.len(), 10);
        assert!(a.iter().all(|&i| flags[i as usize]));
        assert_eq!(a, sample_valid(&flags, 10, 5));
        assert_ne!(a, sample_valid(&flags, 10, 6));
        assert_eq!(sample_valid(&flags, 1000, 5).len(), 66);
    }
}
