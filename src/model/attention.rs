//! Scaled dot-product attention: ONE interface for every attention in mica.
//!
//! The model calls [`attend`] with per-head queries (already scaled by `head_dim^-0.5`),
//! keys and values, the mask choice and the dropout rate; it gets the output and, on
//! request, the probabilities. Which kernel computes it ([`AttentionKernel`]) is a
//! runtime choice that never touches the model code.
//!
//! [`AttentionKernel::Fused`] ([`crate::kernels::attention`]) never materialises the
//! `[B, h, T_q, T_k]` maps and recomputes them in the backward; it reproduces the plain
//! path's dropout mask exactly (same stream, same flat index). When probabilities are
//! requested (`want_probs`, for PEA), the fused path computes them once more from `q`,
//! `k` and the row log-sum-exp and returns them as a constant (no gradient flows through
//! them; the only consumer, PEA's top-τ selection, only reads them). Tensors that are not
//! f32 on the CPU fall back to the plain path.

use super::ctx::Ctx;
use super::layers::{causal_offset_mask, softmax_last};
use crate::kernels::attention::{fused_attention_packed, fused_probs};
use crate::kernels::rng::FusedDropout;
use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Which implementation computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// Composed candle ops: materialises `[B, h, T_q, T_k]` maps (kept for checking and
    /// for devices without the fused kernel).
    Plain,
    /// The fused CPU kernel of [`crate::kernels::attention`]: online softmax, dropout regenerated
    /// from the counter-based generator, backward by recomputation. The default: it
    /// passes the MulT parity tests and is faster and far leaner than `Plain`.
    #[default]
    Fused,
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
    /// Also return the row log-sum-exp `L` (`p_ij = exp(q_i·k_j + M_ij − L_i)`): all that
    /// PEA needs besides `q` and `k` to recompute the probabilities on the fly.
    pub want_lse: bool,
}

/// Result of one attention call.
#[derive(Debug, Clone)]
pub struct AttnResult {
    /// `[B, h, T_q, hd]`.
    pub out: Tensor,
    /// `[B, h, T_q, T_k]` probabilities before dropout, when requested.
    pub probs: Option<Tensor>,
    /// `[B, h, T_q]` row log-sum-exp (no gradient), when requested.
    pub lse: Option<Tensor>,
    /// The fused kernel's packed output `[B, h, T_q, hd + 1]` (`out` is its first `hd`
    /// columns), when the fused kernel ran.
    pub packed: Option<Tensor>,
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
        AttentionKernel::Fused => {
            let cpu_f32 = call.q.device().is_cpu()
                && [call.q, call.k, call.v]
                    .iter()
                    .all(|t| t.dtype() == candle_core::DType::F32);
            if cpu_f32 {
                fused(ctx, call)
            } else {
                plain(ctx, call, tq, tk)
            }
        }
    }
}

/// The probabilities `[B, h, T_q, T_k]` (no gradient) of a fused attention call, recomputed
/// from its scaled queries `q`, keys `k` and row log-sum-exp `lse` (what [`attend`] returns
/// with `want_probs`, computed later: attention traces fill their maps this way).
pub fn probs_from_lse(q: &Tensor, k: &Tensor, lse: &Tensor, causal_offset: bool) -> Result<Tensor> {
    Ok(fused_probs(q, k, lse, causal_offset)?)
}

fn fused(ctx: &Ctx, call: AttnCall) -> Result<AttnResult> {
    let drop = ctx
        .dropout_active(call.dropout)
        .then(|| FusedDropout::new(ctx.seed, ctx.next_stream(), call.dropout));
    let packed = fused_attention_packed(call.q, call.k, call.v, call.causal_offset, drop)?;
    let hd = call.q.dim(3)?;
    let out = packed.narrow(3, 0, hd)?;
    let lse = if call.want_probs || call.want_lse {
        Some(packed.narrow(3, hd, 1)?.squeeze(3)?.detach())
    } else {
        None
    };
    let probs = match (&lse, call.want_probs) {
        (Some(lse), true) => Some(fused_probs(call.q, call.k, lse, call.causal_offset)?),
        _ => None,
    };
    Ok(AttnResult {
        out,
        probs,
        lse: if call.want_lse { lse } else { None },
        packed: Some(packed),
    })
}

fn plain(ctx: &Ctx, call: AttnCall, tq: usize, tk: usize) -> Result<AttnResult> {
    let mut scores = call.q.matmul(&call.k.t()?)?;
    if call.causal_offset {
        let mask = causal_offset_mask(tq, tk, call.q.device())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let probs = softmax_last(&scores)?;
    let lse = if call.want_lse {
        let s = scores.detach();
        let max = s.max_keepdim(candle_core::D::Minus1)?;
        let sum = s
            .broadcast_sub(&max)?
            .exp()?
            .sum_keepdim(candle_core::D::Minus1)?;
        Some((sum.log()? + max)?.squeeze(candle_core::D::Minus1)?)
    } else {
        None
    };
    let dropped = ctx.dropout(&probs, call.dropout)?;
    let out = dropped.matmul(&call.v.contiguous()?)?;
    Ok(AttnResult {
        out,
        probs: call.want_probs.then_some(probs),
        lse,
        packed: None,
    })
}
