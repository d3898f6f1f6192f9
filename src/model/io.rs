//! What goes into and comes out of every model: the inputs (made by the data layer's
//! batching, re-exported here), the options of a forward, its
//! output and the crossmodal block traces the alignment losses and analyses read, and the
//! shape checks on the inputs.

use super::config::ModelConfig;
use super::encoder::AttnTrace;
pub use crate::data::batch::Inputs;
use anyhow::{ensure, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Short modality names in mica's fixed order (L, A, V), as in the official parameter names.
pub const MOD_SHORT: [&str; 3] = ["l", "a", "v"];

/// What a forward pass should keep besides the output.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOpts {
    /// Keep queries/keys of every crossmodal block (for MMD / PEA / A-distance).
    pub trace: bool,
    /// Also keep the attention probabilities of every crossmodal block.
    pub probs: bool,
    /// Keep every module's output, keyed by the official module name.
    pub intermediates: bool,
}

/// The trace of one crossmodal block: target `t` attends to source `s` at `layer`.
#[derive(Debug, Clone)]
pub struct BlockTrace {
    /// Target modality (0 = L, 1 = A, 2 = V).
    pub target: usize,
    /// Source modality.
    pub source: usize,
    /// Layer index.
    pub layer: usize,
    /// Queries, keys and (optionally) probabilities.
    pub attn: AttnTrace,
}

/// Output of a model forward.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[B, output_dim]`.
    pub output: Tensor,
    /// The read-out features fed to the head `[B, combined_dim]`.
    pub last_hs: Tensor,
    /// Crossmodal block traces (when requested).
    pub blocks: Vec<BlockTrace>,
    /// Per modality (L, A, V), `[B * T]` flags of the real (non-padding) time steps at
    /// the model's resolution (after the conv): MulT's rule, first channel != 0.
    pub valid: [Vec<bool>; 3],
    /// Module outputs by official name (when requested). Encoders and layers are
    /// batch-first here (`[B, T, C]`); the conv outputs are `[B, T, d]`.
    pub intermediates: BTreeMap<String, Tensor>,
}

/// Per modality, `[B * T]` flags of the real time steps: first channel of the projected
/// input != 0 (the positional embedding's padding rule).
pub fn valid_masks(proj: &[Tensor; 3]) -> Result<[Vec<bool>; 3]> {
    let one = |t: &Tensor| -> Result<Vec<bool>> {
        let first: Vec<f32> = t.narrow(2, 0, 1)?.flatten_all()?.to_vec1()?;
        Ok(first.into_iter().map(|x| x != 0.0).collect())
    };
    Ok([one(&proj[0])?, one(&proj[1])?, one(&proj[2])?])
}

/// Checks the inputs' rank, batch and feature dims against the config; the error names
/// the modality.
pub fn check_shapes(cfg: &ModelConfig, x: &Inputs) -> Result<()> {
    let names = ["text", "audio", "vision"];
    let b = x.text.dim(0)?;
    for (m, t) in [&x.text, &x.audio, &x.vision].into_iter().enumerate() {
        let dims = t.dims();
        ensure!(
            dims.len() == 3,
            "input `{}` must be [B, T, D], got {:?}",
            names[m],
            dims
        );
        ensure!(
            dims[0] == b,
            "input `{}` has batch {} but `text` has {}",
            names[m],
            dims[0],
            b
        );
        ensure!(
            dims[2] == cfg.orig_dims()[m],
            "input `{}` has feature dim {} but the model expects {}",
            names[m],
            dims[2],
            cfg.orig_dims()[m]
        );
    }
    Ok(())
}

/// [`check_shapes`], plus every sequence at least as long as its conv kernel.
pub fn check_inputs(cfg: &ModelConfig, x: &Inputs) -> Result<()> {
    check_shapes(cfg, x)?;
    for (m, t) in [&x.text, &x.audio, &x.vision].into_iter().enumerate() {
        let len = t.dim(1)?;
        ensure!(
            len >= cfg.kernels()[m],
            "input `{}` has length {len} shorter than its conv kernel {}",
            ["text", "audio", "vision"][m],
            cfg.kernels()[m]
        );
    }
    Ok(())
}
