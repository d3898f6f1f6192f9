//! Alignment losses of MICA: MMD marginal alignment (L_m) and propagated element-level
//! alignment (L_e), computed from the traces of the crossmodal blocks of a forward pass.

pub mod mmd;
pub mod pea;

use crate::config::{AlignConfig, LeReduction, LeScale, MmdEstimator};
use crate::kernels::pea::{
    distance_tensor, masked_distance, pea_block, MaskBits, PeaBlock, PeaParams,
};
use crate::kernels::rng::mix64;
use crate::model::io::{BlockTrace, ForwardOutput};
use anyhow::{Context, Result};
use candle_core::Tensor;
use pea::MapDims;
use std::collections::BTreeMap;

/// The two alignment losses of one forward pass (scalars with gradient).
#[derive(Debug, Clone)]
pub struct AlignLosses {
    /// `L_m`: sum over layers and blocks of the MMD² between keys and queries.
    pub lm: Option<Tensor>,
    /// `L_e`: sum over layers and blocks of the PEA distance (reduced per block).
    pub le: Option<Tensor>,
}

/// Computes `L_m` (when `alpha > 0` or `force`) and `L_e` (when `beta > 0` or `force`).
/// `seed` drives the MMD subsampling.
pub fn alignment_losses(
    out: &ForwardOutput,
    cfg: &AlignConfig,
    seed: u64,
    force: bool,
) -> Result<AlignLosses> {
    let lm = if cfg.alpha > 0.0 || force {
        Some(mmd_loss(out, cfg, seed)?)
    } else {
        None
    };
    let le = if cfg.beta > 0.0 || force {
        Some(pea_loss(out, cfg)?)
    } else {
        None
    };
    Ok(AlignLosses { lm, le })
}

/// Mean squared distance `E ||q_n - k_m||²` over ALL pairs of real queries and keys of the
/// same sample (`q` `[B, T_q, E]`, `k` `[B, T_k, E]`, `valid_*`: B·T flags), averaged over the
/// samples that have both: per sample `E|q|² + E|k|² - 2 (E q)·(E k)`, a scalar with
/// gradient. The denominator of `le_scale = relative`.
fn mean_pair_sq_distance(
    q: &Tensor,
    k: &Tensor,
    valid_q: &[bool],
    valid_k: &[bool],
) -> Result<Tensor> {
    let (b, tq, _) = q.dims3()?;
    let (_, tk, _) = k.dims3()?;
    let side = |x: &Tensor, valid: &[bool], t: usize| -> Result<(Tensor, Tensor, Vec<f32>)> {
        let mask: Vec<f32> = valid.iter().map(|&v| f32::from(u8::from(v))).collect();
        let counts: Vec<f32> = mask.chunks(t).map(|c| c.iter().sum::<f32>()).collect();
        let inv: Vec<f32> = counts.iter().map(|&c| 1.0 / c.max(1.0)).collect();
        let mask = Tensor::from_vec(mask, (b, t, 1), x.device())?;
        let inv = Tensor::from_vec(inv, (b, 1), x.device())?;
        let xm = x.broadcast_mul(&mask)?;
        let mean = xm.sum(1)?.broadcast_mul(&inv)?; // [B, E]
        let msq = xm
            .sqr()?
            .sum(2)?
            .sum(1)?
            .unsqueeze(1)?
            .broadcast_mul(&inv)?; // [B, 1]
        Ok((mean, msq, counts))
    };
    let (mq, sq, cq) = side(q, valid_q, tq)?;
    let (mk, sk, ck) = side(k, valid_k, tk)?;
    let both: Vec<f32> = cq
        .iter()
        .zip(&ck)
        .map(|(&a, &c)| f32::from(u8::from(a > 0.0 && c > 0.0)))
        .collect();
    let n = both.iter().sum::<f32>().max(1.0);
    let both = Tensor::from_vec(both, (b, 1), q.device())?;
    let cross = (mq * mk)?.sum_keepdim(1)?; // [B, 1]
    let per = ((sq + sk)? - (cross * 2.0)?)?;
    Ok((per.broadcast_mul(&both)?.sum_all()? / f64::from(n))?)
}

fn sum_all(terms: Vec<Tensor>) -> Result<Tensor> {
    let mut it = terms.into_iter();
    let first = it.next().context("no crossmodal blocks were traced")?;
    it.try_fold(first, |acc, t| Ok((acc + t)?))
}

/// MMD between the keys (source) and queries (target) of one block, over the non-padding
/// elements of the batch, bounded by `mmd_max_samples` per side.
pub fn block_mmd(
    block: &BlockTrace,
    valid: &[Vec<bool>; 3],
    cfg: &AlignConfig,
    seed: u64,
) -> Result<Tensor> {
    let salt = mix64(
        seed ^ ((block.layer as u64) << 8 | (block.target as u64) << 4 | block.source as u64),
    );
    let iq = mmd::sample_valid(&valid[block.target], cfg.mmd_max_samples, salt);
    let ik = mmd::sample_valid(&valid[block.source], cfg.mmd_max_samples, salt ^ 0x5555);
    // A modality that is all padding in this batch (or, for the linear estimator, has a
    // single element) gives the block nothing to compare: it adds 0 instead of failing.
    let need = match cfg.mmd_estimator {
        MmdEstimator::Sampled => 1,
        MmdEstimator::Linear => 2,
    };
    if iq.len() < need || ik.len() < need {
        return Ok(Tensor::zeros(
            (),
            block.attn.q.dtype(),
            block.attn.q.device(),
        )?);
    }
    let q = mmd::gather_rows(&block.attn.q, &iq)?;
    let k = mmd::gather_rows(&block.attn.k, &ik)?;
    let names = crate::data::MODALITIES;
    match cfg.mmd_estimator {
        MmdEstimator::Sampled => mmd::mmd_biased(&k, &q),
        MmdEstimator::Linear => mmd::mmd_linear(&k, &q),
    }
    .with_context(|| {
        format!(
            "L_m of the {} <- {} block, layer {} ({} {} and {} {} elements in this batch)",
            names[block.target],
            names[block.source],
            block.layer + 1,
            iq.len(),
            names[block.target],
            ik.len(),
            names[block.source]
        )
    })
}

/// `L_m` = sum over every traced block of [`block_mmd`].
pub fn mmd_loss(out: &ForwardOutput, cfg: &AlignConfig, seed: u64) -> Result<Tensor> {
    let terms = out
        .blocks
        .iter()
        .map(|b| block_mmd(b, &out.valid, cfg, seed))
        .collect::<Result<Vec<_>>>()?;
    sum_all(terms)
}

/// PEA masks by `(layer, target, source)`, with the shape of their maps.
pub type PeaMasks = BTreeMap<(usize, usize, usize), (MapDims, Vec<bool>)>;

/// PEA of every traced block in `(layer, target, source)` order, each block's mask
/// propagated from the previous layer of the same (target, source) pair when
/// `propagate`: `V[l] = W[0] | .. | W[l]`. Computed from the per-head traces
/// ([`crate::kernels::pea`]), never from materialised probability maps.
pub fn pea_blocks<'a>(
    out: &'a ForwardOutput,
    cfg: &AlignConfig,
) -> Result<Vec<(&'a BlockTrace, PeaBlock)>> {
    let mut order: Vec<&BlockTrace> = out.blocks.iter().collect();
    order.sort_by_key(|b| (b.layer, b.target, b.source));
    let mut last: BTreeMap<(usize, usize), MaskBits> = BTreeMap::new();
    let mut res = Vec::with_capacity(order.len());
    for block in order {
        let heads = block
            .attn
            .heads
            .as_ref()
            .context("PEA needs the per-head attention trace (forward with trace = true)")?;
        let prev = if cfg.propagate {
            last.get(&(block.target, block.source))
        } else {
            None
        };
        let pb = pea_block(
            &heads.qh,
            &heads.kh,
            &heads.lse,
            PeaParams {
                causal: heads.causal_offset,
                valid_q: &out.valid[block.target],
                valid_k: &out.valid[block.source],
                tau: cfg.tau,
                prev,
            },
        )?;
        last.insert((block.target, block.source), pb.mask.clone());
        res.push((block, pb));
    }
    Ok(res)
}

/// The PEA masks of every traced block, keyed by `(layer, target, source)`: `W[l]`, or
/// `V[l] = W[0] | .. | W[l]` of the same (target, source) pair when `propagate`.
pub fn pea_masks(out: &ForwardOutput, cfg: &AlignConfig) -> Result<PeaMasks> {
    let mut masks = BTreeMap::new();
    for (block, pb) in pea_blocks(out, cfg)? {
        let d = pb.mask.dims;
        let dims = MapDims {
            b: d.b,
            h: d.h,
            tq: d.tq,
            tk: d.tk,
        };
        masks.insert(
            (block.layer, block.target, block.source),
            (dims, pb.mask.to_bools()),
        );
    }
    Ok(masks)
}

/// `L_e`: per block, top-τ masks of the probabilities (OR-ed over the layers of the same
/// block when `propagate`), distance of the selected pairs, reduced per `le_reduction`.
pub fn pea_loss(out: &ForwardOutput, cfg: &AlignConfig) -> Result<Tensor> {
    let mut terms = Vec::with_capacity(out.blocks.len());
    for (block, pb) in pea_blocks(out, cfg)? {
        let heads = block.attn.heads.as_ref().expect("checked by pea_blocks");
        let selected = pb.selected;
        let h = heads.qh.dim(1)?;
        // With a time bias the per-head traces carry its two constant columns (see
        // `model::time_bias`): they select the pairs, but the distance is that of the
        // queries and keys themselves: the same kernel on the heads' own columns, with
        // the selected mask.
        let hd = block.attn.q.dim(2)? / h;
        let biased = heads.qh.dim(3)? != hd;
        let d = if biased {
            let (qh, kh) = (heads.qh.narrow(3, 0, hd)?, heads.kh.narrow(3, 0, hd)?);
            let own = masked_distance(&qh, &kh, &pb.mask)?;
            distance_tensor(&qh, &kh, own)?
        } else {
            distance_tensor(&heads.qh, &heads.kh, pb)?
        };
        let d = match cfg.le_reduction {
            LeReduction::Sum => d,
            LeReduction::Mean => (d / selected.max(1) as f64)?,
        };
        terms.push(match cfg.le_scale {
            LeScale::Absolute => d,
            LeScale::Relative => {
                let h = h as f64;
                let all = mean_pair_sq_distance(
                    &block.attn.q,
                    &block.attn.k,
                    &out.valid[block.target],
                    &out.valid[block.source],
                )?;
                // Per head: the heads' slices split the squared distance between them.
                d.broadcast_div(&((all / h)? + 1e-6)?)?
            }
        });
    }
    sum_all(terms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// [`mean_pair_sq_distance`] equals the brute-force mean over real pairs, per sample
    /// then over the samples that have both real queries and keys, and its gradient
    /// matches central finite differences.
    #[test]
    fn mean_pair_distance_matches_brute_force_and_finite_differences() {
        let (b, tq, tk, e) = (3, 4, 5, 3);
        let val = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 7.0;
        let qv: Vec<f32> = (0..b * tq * e).map(val).collect();
        let kv: Vec<f32> = (0..b * tk * e).map(|i| val(i + 5) * 0.5 + 0.3).collect();
        // Sample 2 has no real keys: it must not count.
        let vq: Vec<bool> = (0..b * tq).map(|i| i % tq != 0).collect();
        let vk: Vec<bool> = (0..b * tk).map(|i| i / tk != 2 && i % tk != 1).collect();
        let brute = |q: &[f32], k: &[f32]| {
            let mut per = Vec::new();
            for s in 0..b {
                let (mut sum, mut n) = (0f64, 0usize);
                for i in 0..tq {
                    for j in 0..tk {
                        if vq[s * tq + i] && vk[s * tk + j] {
                            sum += (0..e)
                                .map(|c| {
                                    let d = q[(s * tq + i) * e + c] - k[(s * tk + j) * e + c];
                                    f64::from(d * d)
                                })
                                .sum::<f64>();
                            n += 1;
                        }
                    }
                }
                if n > 0 {
                    per.push(sum / n as f64);
                }
            }
            per.iter().sum::<f64>() / per.len() as f64
        };
        let dev = Device::Cpu;
        let q = Var::from_vec(qv.clone(), (b, tq, e), &dev).unwrap();
        let k = Tensor::from_vec(kv.clone(), (b, tk, e), &dev).unwrap();
        let got = mean_pair_sq_distance(q.as_tensor(), &k, &vq, &vk).unwrap();
        let got_v = f64::from(got.to_scalar::<f32>().unwrap());
        let want = brute(&qv, &kv);
        assert!(
            (got_v - want).abs() < 1e-5 * want.max(1.0),
            "{got_v} vs {want}"
        );
        let grads = got.backward().unwrap();
        let g: Vec<f32> = grads
            .get(&q)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let h = 1e-2f32;
        for idx in [0, 4, 7, 13, 20, 35] {
            let mut p = qv.clone();
            p[idx] += h;
            let mut m = qv.clone();
            m[idx] -= h;
            let fd = (brute(&p, &kv) - brute(&m, &kv)) / f64::from(2.0 * h);
            assert!(
                (f64::from(g[idx]) - fd).abs() < 1e-3,
                "dq[{idx}]: {} vs {fd}",
                g[idx]
            );
        }
    }

    /// The fused distance of a given mask (the time-biased L_e: pairs selected on the
    /// extended heads, distance of the heads' own columns) is the composed
    /// [`pea::masked_sq_distance`] on the unsplit, unscaled projections, value and
    /// gradients.
    #[test]
    fn masked_distance_matches_the_composed_distance() {
        use crate::kernels::attention::Dims;
        let (b, h, tq, tk, hd) = (2, 3, 6, 9, 5);
        let e = h * hd;
        let val = |i: usize| ((i * 53 % 31) as f32 - 15.0) / 9.0;
        let dev = Device::Cpu;
        let q = Var::from_vec((0..b * tq * e).map(val).collect(), (b, tq, e), &dev).unwrap();
        let kv: Vec<f32> = (0..b * tk * e).map(|i| val(i + 7) * 0.7).collect();
        let k = Var::from_vec(kv, (b, tk, e), &dev).unwrap();
        let heads = |x: &Tensor, t: usize| {
            x.reshape((b, t, h, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scale = (hd as f64).powf(-0.5);
        let qh = (heads(q.as_tensor(), tq) * scale).unwrap();
        let kh = heads(k.as_tensor(), tk);
        // A mask of the extended heads' maps (width hd + 2), about a third set.
        let dims = Dims {
            b,
            h,
            tq,
            tk,
            hd: hd + 2,
        };
        let mut mask = MaskBits::empty(dims);
        let mut bools = Vec::new();
        for t in 0..b * h {
            for i in 0..tq {
                for j in 0..tk {
                    let on = (t * 7 + i * 5 + j * 3) % 3 == 0;
                    if on {
                        mask.bits[(t * tq + i) * mask.words + j / 64] |= 1 << (j % 64);
                    }
                    bools.push(f32::from(u8::from(on)));
                }
            }
        }
        let own = masked_distance(&qh, &kh, &mask).unwrap();
        assert_eq!(own.selected, mask.count());
        let fused = distance_tensor(&qh, &kh, own).unwrap();
        let m = Tensor::from_vec(bools, (b, h, tq, tk), &dev).unwrap();
        let composed = pea::masked_sq_distance(q.as_tensor(), k.as_tensor(), &m, h).unwrap();
        let (f, c) = (
            fused.to_scalar::<f32>().unwrap(),
            composed.to_scalar::<f32>().unwrap(),
        );
        assert!((f - c).abs() <= 1e-5 * c.abs(), "{f} vs {c}");
        let (gf, gc) = (fused.backward().unwrap(), composed.backward().unwrap());
        for x in [&q, &k] {
            let a: Vec<f32> = gf.get(x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = gc.get(x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let top = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-5 * top, "gradient {u} vs {v}");
            }
        }
    }
}
