//! Scaled dot-product attention: ONE interface for every attention in mica.
//!
//! The model calls [`attend`] with per-head queries (already scaled by `head_dim^-0.5`),
//! keys and values, the mask choice and the dropout rate; it gets the output and, on
//! request, the probabilities. Which kernel computes it ([`AttentionKernel`]) is a
//! runtime choice that never touches the model code.

use super::ctx::Ctx;
use super::layers::{causal_offset_mask, softmax_last};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Which implementation computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// Composed candle ops: materialises `[B, h, T_q, T_k]` maps.
    #[default]
    Plain,
}

/// One attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnCall<'a> {
    /// Queries `[B, h, T_q, hd]`, already multiplied by `hd^-0.5`.
    pub q: &'a Tensor,
    /// Keys `[B, h, T_k, hd]`.
    pub k: &'a Tensor,
    /// Values `[B, h, T_k, hd]`.
    pub v: &'a Tensor,
    /// Apply MulT's causal-offset mask (`-inf` where `j > i + |T_k - T_q|`).
    pub causal_offset: bool,
    /// Attention-dropout rate on the probabilities (training mode only).
    pub dropout: f32,
    /// Also return the probabilities (before dropout).
    pub want_probs: bool,
}

/// Result of one attention call.
#[derive(Debug, Clone)]
pub struct AttnResult {
    /// `[B, h, T_q, hd]`.
    pub out: Tensor,
    /// `[B, h, T_q, T_k]` probabilities before dropout, when requested.
    pub probs: Option<Tensor>,
}

/// Computes `softmax(q k^T + M) (dropout) v` with the chosen kernel.
pub fn attend(ctx: &Ctx, kernel: AttentionKernel, call: AttnCall) -> Result<AttnResult> {
    let (b, h, tq, hd) = call.q.dims4()?;
    let (bk, hk, tk, hdk) = call.k.dims4()?;
    ensure!(
        (b, h, hd) == (bk, hk, hdk) && call.v.dims4()? == (b, h, tk, hd),
        "attention: q {:?}, k {:?}, v {:?} do not fit together",
        call.q.dims(),
        call.k.dims(),
        call.v.dims()
    );
    match kernel {
        AttentionKernel::Plain => plain(ctx, call, tq, tk),
    }
}

fn plain(ctx: &Ctx, call: AttnCall, tq: usize, tk: usize) -> Result<AttnResult> {
    let mut scores = call.q.matmul(&call.k.t()?)?;
    if call.causal_offset {
        let mask = causal_offset_mask(tq, tk, call.q.device())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let probs = softmax_last(&scores)?;
    let dropped = ctx.dropout(&probs, call.dropout)?;
    let out = dropped.matmul(&call.v.contiguous()?)?;
    Ok(AttnResult {
        out,
        probs: call.want_probs.then_some(probs),
    })
}
