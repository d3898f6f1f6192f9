//! Alignment losses of MICA: MMD marginal alignment (L_m) and propagated element-level
//! alignment (L_e), computed from the traces of the crossmodal blocks of a forward pass.

pub mod mmd;
pub mod mmd_kernel;
pub mod pea;
pub mod pea_kernel;
pub mod precomputed;

use crate::config::{AlignConfig, LeReduction, MmdEstimator};
use crate::model::ctx::mix64;
use crate::model::mult::{BlockTrace, ForwardOutput};
use anyhow::{Context, Result};
use candle_core::Tensor;
use pea::MapDims;
use pea_kernel::{distance_tensor, pea_block, MaskBits, PeaBlock, PeaParams};
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
/// ([`pea_kernel`]), never from materialised probability maps.
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
        let d = distance_tensor(&heads.qh, &heads.kh, pb)?;
        terms.push(match cfg.le_reduction {
            LeReduction::Sum => d,
            LeReduction::Mean => (d / selected.max(1) as f64)?,
        });
    }
    sum_all(terms)
}
