//! Alignment losses of MICA: MMD marginal alignment (L_m) and propagated element-level
//! alignment (L_e), computed from the traces of the crossmodal blocks of a forward pass.

pub mod mmd;
pub mod pea;

use crate::config::{AlignConfig, LeReduction, MmdEstimator};
use crate::model::ctx::mix64;
use crate::model::mult::{BlockTrace, ForwardOutput};
use anyhow::{Context, Result};
use candle_core::Tensor;
use pea::{masked_sq_distance, top_tau_mask, MapDims};
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
/// `seed` drives the MMD subsampling. `heads` is the model's number of heads.
pub fn alignment_losses(
    out: &ForwardOutput,
    cfg: &AlignConfig,
    heads: usize,
    seed: u64,
    force: bool,
) -> Result<AlignLosses> {
    let lm = if cfg.alpha > 0.0 || force {
        Some(mmd_loss(out, cfg, seed)?)
    } else {
        None
    };
    let le = if cfg.beta > 0.0 || force {
        Some(pea_loss(out, cfg, heads)?)
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
    let q = mmd::gather_rows(&block.attn.q, &iq)?;
    let k = mmd::gather_rows(&block.attn.k, &ik)?;
    match cfg.mmd_estimator {
        MmdEstimator::Sampled => mmd::mmd_biased(&k, &q),
        MmdEstimator::Linear => mmd::mmd_linear(&k, &q),
    }
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

/// The PEA masks of every traced block, keyed by `(layer, target, source)`: `W[l]`, or
/// `V[l] = W[0] | .. | W[l]` of the same (target, source) pair when `propagate`.
pub fn pea_masks(out: &ForwardOutput, cfg: &AlignConfig) -> Result<PeaMasks> {
    let mut propagated: BTreeMap<(usize, usize), Vec<bool>> = BTreeMap::new();
    let mut order: Vec<&BlockTrace> = out.blocks.iter().collect();
    order.sort_by_key(|b| (b.layer, b.target, b.source));
    let mut masks = BTreeMap::new();
    for block in order {
        let probs = block
            .attn
            .probs
            .as_ref()
            .context("PEA needs the attention probabilities (forward with probs)")?;
        let (b, h, tq, tk) = probs.dims4()?;
        let dims = MapDims { b, h, tq, tk };
        let p: Vec<f32> = probs.flatten_all()?.to_vec1()?;
        let w = top_tau_mask(
            &p,
            dims,
            &out.valid[block.target],
            &out.valid[block.source],
            cfg.tau,
        )?;
        let v = if cfg.propagate {
            let acc = propagated
                .entry((block.target, block.source))
                .or_insert_with(|| vec![false; w.len()]);
            for (a, x) in acc.iter_mut().zip(&w) {
                *a |= *x;
            }
            acc.clone()
        } else {
            w
        };
        masks.insert((block.layer, block.target, block.source), (dims, v));
    }
    Ok(masks)
}

/// `L_e`: per block, top-τ masks of the probabilities (OR-ed over the layers of the same
/// block when `propagate`), distance of the selected pairs, reduced per `le_reduction`.
pub fn pea_loss(out: &ForwardOutput, cfg: &AlignConfig, heads: usize) -> Result<Tensor> {
    let masks = pea_masks(out, cfg)?;
    let mut terms = Vec::with_capacity(masks.len());
    for block in &out.blocks {
        let (dims, v) = &masks[&(block.layer, block.target, block.source)];
        let selected = v.iter().filter(|x| **x).count();
        let mask: Vec<f32> = v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(
            mask,
            (dims.b, dims.h, dims.tq, dims.tk),
            block.attn.q.device(),
        )?;
        let d = masked_sq_distance(&block.attn.q, &block.attn.k, &mask, heads)?;
        terms.push(match cfg.le_reduction {
            LeReduction::Sum => d,
            LeReduction::Mean => (d / selected.max(1) as f64)?,
        });
    }
    sum_all(terms)
}
