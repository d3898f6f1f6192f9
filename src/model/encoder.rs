//! MulT's transformer encoder (fairseq style, pre-LayerNorm), batch-first `[B, T, E]`.
//!
//! Used for all nine MulT encoders and for MICA's blocks. A crossmodal layer normalises
//! queries, keys AND values with the same `LN0` (spec/mult.md "Encoder").

use super::attention::{attend, probs_from_lse, AttentionKernel, AttnCall};
use super::ctx::Ctx;
use super::layers::{linear, positional_embedding, LayerNorm, Linear};
use super::params::{Init, ParamSource};
use super::time_bias::{extend, TimeBias, BIAS_COLS};
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;

/// Dropout rates of one encoder (spec/mult.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderDropouts {
    /// On the attention probabilities (depends on the SOURCE modality).
    pub attn: f32,
    /// After `relu(fc1(x))`.
    pub relu: f32,
    /// On each residual branch.
    pub res: f32,
    /// On the scaled + positioned input embedding.
    pub embed: f32,
}

/// What one attention block exposes for the alignment losses (MMD, PEA).
#[derive(Debug, Clone)]
pub struct AttnTrace {
    /// Unscaled queries `LN0(z_t) W_Q + b_Q`, `[B, T_q, E]`.
    pub q: Tensor,
    /// Keys `LN0(z_s) W_K + b_K`, `[B, T_k, E]`.
    pub k: Tensor,
    /// Probabilities `[B, h, T_q, T_k]` (before dropout), when requested
    /// ([`AttnTrace::with_probs`]).
    pub probs: Option<Tensor>,
    /// The attention's per-head inputs and row log-sum-exp, from which PEA recomputes
    /// the probabilities tile by tile (None in hand-built traces).
    pub heads: Option<HeadTrace>,
}

/// The per-head view of one attention call: enough to recompute its probabilities.
#[derive(Debug, Clone)]
pub struct HeadTrace {
    /// Scaled queries `q · hd^-0.5`, `[B, h, T_q, hd]` (as the kernel saw them).
    pub qh: Tensor,
    /// Keys `[B, h, T_k, hd]`.
    pub kh: Tensor,
    /// Row log-sum-exp `[B, h, T_q]` (no gradient).
    pub lse: Tensor,
    /// Whether the causal-offset mask was on.
    pub causal_offset: bool,
}

impl AttnTrace {
    /// Fills `probs` (`[B, h, T_q, T_k]`, no gradient) from the per-head trace, when
    /// not already there.
    pub fn with_probs(mut self) -> Result<Self> {
        if self.probs.is_none() {
            let h = self
                .heads
                .as_ref()
                .context("attention trace without its per-head inputs")?;
            self.probs = Some(probs_from_lse(&h.qh, &h.kh, &h.lse, h.causal_offset)?);
        }
        Ok(self)
    }
}

/// Multi-head attention with the packed `in_proj` (rows Q, K, V) and `out_proj`.
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    /// `[3E, E]`.
    pub in_proj_weight: Tensor,
    /// `[3E]`.
    pub in_proj_bias: Tensor,
    /// `E -> E`.
    pub out_proj: Linear,
    /// Number of heads.
    pub num_heads: usize,
    /// Embedding width E.
    pub embed_dim: usize,
}

impl MultiheadAttention {
    /// Builds `{name}.in_proj_weight|in_proj_bias|out_proj.*` (Xavier weights, zero biases).
    pub fn new(
        p: &mut dyn ParamSource,
        name: &str,
        embed_dim: usize,
        num_heads: usize,
    ) -> Result<Self> {
        ensure!(
            num_heads > 0 && embed_dim.is_multiple_of(num_heads),
            "embed dim {embed_dim} is not divisible by the number of heads {num_heads}"
        );
        let e = embed_dim;
        let in_proj_weight = p.param(
            &format!("{name}.in_proj_weight"),
            &[3 * e, e],
            Init::XavierUniform,
        )?;
        let in_proj_bias = p.param(&format!("{name}.in_proj_bias"), &[3 * e], Init::Const(0.0))?;
        let out_proj = Linear::xavier(p, &format!("{name}.out_proj"), e, e)?;
        Ok(MultiheadAttention {
            in_proj_weight,
            in_proj_bias,
            out_proj,
            num_heads,
            embed_dim,
        })
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Projection `which` (0 = Q, 1 = K, 2 = V) of `x` `[B, T, E]`.
    pub fn project(&self, x: &Tensor, which: usize) -> Result<Tensor> {
        let e = self.embed_dim;
        let w = self.in_proj_weight.narrow(0, which * e, e)?;
        let b = self.in_proj_bias.narrow(0, which * e, e)?;
        linear(x, &w, Some(&b))
    }

    /// Projection `which` of `x` `[B, T, E]` split into heads `[B, h, T, hd]` and multiplied
    /// by `scale` when given, as one op keeping only its output (the values and gradients
    /// of `split_heads(project(x, which) * scale)`); `None` when the op does not apply
    /// (not f32 on the CPU).
    fn project_heads(
        &self,
        x: &Tensor,
        which: usize,
        scale: Option<f64>,
    ) -> Result<Option<Tensor>> {
        let e = self.embed_dim;
        let w = self.in_proj_weight.narrow(0, which * e, e)?;
        let b = self.in_proj_bias.narrow(0, which * e, e)?;
        Ok(crate::kernels::linear::linear_bias_to_heads(
            x,
            &w,
            &b,
            self.num_heads,
            scale,
        )?)
    }

    /// [`Self::project_heads`] of `ln(x)`, the LayerNorm applied inside the op (its output
    /// is never kept); `None` when the op does not apply.
    fn ln_project_heads(
        &self,
        ln: &LayerNorm,
        x: &Tensor,
        which: usize,
        scale: Option<f64>,
    ) -> Result<Option<Tensor>> {
        let e = self.embed_dim;
        let w = self.in_proj_weight.narrow(0, which * e, e)?;
        let b = self.in_proj_bias.narrow(0, which * e, e)?;
        Ok(crate::kernels::linear::ln_linear_to_heads(
            x,
            &ln.weight,
            &ln.bias,
            ln.eps,
            &w,
            &b,
            self.num_heads,
            scale,
        )?)
    }

    /// `[B, T, E] -> [B, h, T, hd]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        Ok(x.reshape((b, t, self.num_heads, self.head_dim()))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Attention of queries `ln(x)` over keys `ln(k)` / values `ln(v)` (`kv` = `(k, v)`, all
    /// `[B, T, E]`), or over `ln(x)` itself when `kv` is `None` (self-attention).
    /// Returns the output `[B, T_q, E]` and, when `trace`, the projections and probabilities.
    ///
    /// On f32 CPU tensors the projections are ops writing the head layout directly; in a
    /// crossmodal call each also applies the LayerNorm itself, so no normalised copy is
    /// kept (self-attention keeps its one, shared by q, k and v). The values and
    /// gradients are those of the composed ops.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        ctx: &Ctx,
        kernel: AttentionKernel,
        ln: &LayerNorm,
        x: &Tensor,
        kv: Option<(&Tensor, &Tensor)>,
        causal_offset: bool,
        dropout: f32,
        trace: bool,
        bias: Option<&TimeBias>,
    ) -> Result<(Tensor, Option<AttnTrace>)> {
        let (b, tq, e) = x.dims3()?;
        let scaling = (self.head_dim() as f64).powf(-0.5);
        let shared = match kv {
            None => Some(ln.forward(x)?),
            Some(_) => None,
        };
        let (x_k, x_v) = kv.unwrap_or((x, x));
        let heads = |src: &Tensor, which: usize, scale: Option<f64>| match &shared {
            Some(n) => self.project_heads(n, which, scale),
            None => self.ln_project_heads(ln, src, which, scale),
        };
        let normed = |src: &Tensor| match &shared {
            Some(n) => Ok(n.clone()),
            None => ln.forward(src),
        };
        // A trace exposes the unsplit q and k (with gradients), so they go the composed way.
        let fast = match trace {
            true => None,
            false => heads(x, 0, Some(scaling))?.zip(heads(x_k, 1, None)?),
        };
        let (qh, kh, qk) = match fast {
            Some((qh, kh)) => (qh, kh, None),
            None => {
                let q = self.project(&normed(x)?, 0)?;
                let k = self.project(&normed(x_k)?, 1)?;
                let qh = self.split_heads(&(&q * scaling)?)?;
                let kh = self.split_heads(&k)?;
                (qh, kh, Some((q, k)))
            }
        };
        let vh = match heads(x_v, 2, None)? {
            Some(vh) => vh,
            None => self.split_heads(&self.project(&normed(x_v)?, 2)?)?,
        };
        // The time bias rides in two extra constant columns (see `time_bias`): head width
        // `hd + 2`, which the fused kernel has a chunk-major build for like any other.
        let hd = self.head_dim();
        let (qh, kh, vh) = match bias {
            None => (qh, kh, vh),
            Some(tb) => {
                let (bv, hv, tv, _) = vh.dims4()?;
                let zeros = Tensor::zeros((bv, hv, tv, BIAS_COLS), vh.dtype(), vh.device())?;
                (
                    extend(&qh, &tb.q)?,
                    extend(&kh, &tb.k)?,
                    extend(&vh, &zeros)?,
                )
            }
        };
        let res = attend(
            ctx,
            kernel,
            AttnCall {
                q: &qh,
                k: &kh,
                v: &vh,
                causal_offset,
                dropout,
                want_probs: false,
                want_lse: trace,
            },
        )?;
        let fused_out = match (&res.packed, &self.out_proj.bias, bias) {
            (Some(packed), Some(ob), None) => {
                crate::kernels::linear::linear_bias_from_heads(packed, &self.out_proj.weight, ob)?
            }
            _ => None,
        };
        let out = match fused_out {
            Some(out) => out.reshape((b, tq, e))?,
            None => {
                let heads_out = match bias {
                    Some(_) => res.out.narrow(3, 0, hd)?,
                    None => res.out,
                };
                let out = heads_out
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((b, tq, e))?;
                self.out_proj.forward(&out)?
            }
        };
        let tr = match (trace, qk, res.lse) {
            (true, Some((q, k)), Some(lse)) => Some(AttnTrace {
                q,
                k,
                probs: None,
                heads: Some(HeadTrace {
                    qh,
                    kh,
                    lse,
                    causal_offset,
                }),
            }),
            _ => None,
        };
        Ok((out, tr))
    }
}

/// One pre-LN encoder layer: `x + drop(MHA(LN0 x, LN0 k, LN0 v))`, then
/// `x + drop(fc2(drop(relu(fc1(LN1 x)))))`.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    /// The attention.
    pub self_attn: MultiheadAttention,
    /// `E -> 4E`.
    pub fc1: Linear,
    /// `4E -> E`.
    pub fc2: Linear,
    /// `LN0` (shared by queries, keys and values) and `LN1`.
    pub layer_norms: [LayerNorm; 2],
}

impl EncoderLayer {
    /// Builds `{name}.self_attn|fc1|fc2|layer_norms.{0,1}`.
    pub fn new(
        p: &mut dyn ParamSource,
        name: &str,
        embed_dim: usize,
        num_heads: usize,
    ) -> Result<Self> {
        let self_attn =
            MultiheadAttention::new(p, &format!("{name}.self_attn"), embed_dim, num_heads)?;
        let fc1 = Linear::xavier(p, &format!("{name}.fc1"), embed_dim, 4 * embed_dim)?;
        let fc2 = Linear::xavier(p, &format!("{name}.fc2"), 4 * embed_dim, embed_dim)?;
        let ln0 = LayerNorm::new(p, &format!("{name}.layer_norms.0"), embed_dim)?;
        let ln1 = LayerNorm::new(p, &format!("{name}.layer_norms.1"), embed_dim)?;
        Ok(EncoderLayer {
            self_attn,
            fc1,
            fc2,
            layer_norms: [ln0, ln1],
        })
    }

    /// Runs the layer. `kv` = `(keys, values)` source embeddings for a crossmodal layer,
    /// `None` for self-attention.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        ctx: &Ctx,
        kernel: AttentionKernel,
        x: &Tensor,
        kv: Option<(&Tensor, &Tensor)>,
        causal_offset: bool,
        drop: &EncoderDropouts,
        trace: bool,
        bias: Option<&TimeBias>,
    ) -> Result<(Tensor, Option<AttnTrace>)> {
        let residual = x;
        let (attn, tr) = self.self_attn.forward(
            ctx,
            kernel,
            &self.layer_norms[0],
            x,
            kv,
            causal_offset,
            drop.attn,
            trace,
            bias,
        )?;
        let x = ctx.residual_dropout(residual, &attn, drop.res)?;
        let residual = &x;
        let h = self
            .fc1
            .forward_ln_relu_dropout(ctx, &self.layer_norms[1], &x, drop.relu)?;
        let h = self.fc2.forward(&h)?;
        let x = ctx.residual_dropout(residual, &h, drop.res)?;
        Ok((x, tr))
    }
}

/// Output of an encoder run.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// Final output (after the last LayerNorm) `[B, T, E]`.
    pub out: Tensor,
    /// Output of each layer (before the final LayerNorm).
    pub layer_outputs: Vec<Tensor>,
    /// Per layer, the attention trace when requested.
    pub traces: Vec<AttnTrace>,
}

/// A stack of encoder layers with input embedding and a final LayerNorm.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Width E.
    pub embed_dim: usize,
    /// The layers.
    pub layers: Vec<EncoderLayer>,
    /// Final LayerNorm.
    pub layer_norm: LayerNorm,
    /// Dropout rates.
    pub drop: EncoderDropouts,
    /// Causal-offset mask on/off.
    pub attn_mask: bool,
}

impl Encoder {
    /// Builds `{name}.layers.{i}.*` and `{name}.layer_norm.*`.
    pub fn new(
        p: &mut dyn ParamSource,
        name: &str,
        embed_dim: usize,
        num_heads: usize,
        n_layers: usize,
        drop: EncoderDropouts,
        attn_mask: bool,
    ) -> Result<Self> {
        let layers = (0..n_layers)
            .map(|i| EncoderLayer::new(p, &format!("{name}.layers.{i}"), embed_dim, num_heads))
            .collect::<Result<_>>()?;
        let layer_norm = LayerNorm::new(p, &format!("{name}.layer_norm"), embed_dim)?;
        Ok(Encoder {
            embed_dim,
            layers,
            layer_norm,
            drop,
            attn_mask,
        })
    }

    /// Input embedding: `dropout(sqrt(E) * x + PE(x))` (each call is its own dropout draw);
    /// `pe` replaces the step-index table by given positions (`positions = time`).
    pub fn embed(&self, ctx: &Ctx, x: &Tensor, pe: Option<&Tensor>) -> Result<Tensor> {
        match pe {
            Some(pe) => embed_with(ctx, x, pe, self.embed_dim, self.drop.embed),
            None => embed(ctx, x, self.embed_dim, self.drop.embed),
        }
    }

    /// Runs the encoder on `x` `[B, T, E]`; `source` `[B, T_s, E]` makes it crossmodal
    /// (keys and values are embedded from it, each with its own dropout draw). `pe` gives
    /// the positional embeddings of `x` and of `source` when they are not step indices.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        ctx: &Ctx,
        kernel: AttentionKernel,
        x: &Tensor,
        source: Option<&Tensor>,
        trace: bool,
        pe: [Option<&Tensor>; 2],
        bias: Option<&TimeBias>,
    ) -> Result<EncoderOutput> {
        let mut h = self.embed(ctx, x, pe[0])?;
        let kv = match source {
            Some(s) => Some((self.embed(ctx, s, pe[1])?, self.embed(ctx, s, pe[1])?)),
            None => None,
        };
        let mut layer_outputs = Vec::with_capacity(self.layers.len());
        let mut traces = Vec::new();
        for layer in &self.layers {
            let kvr = kv.as_ref().map(|(k, v)| (k, v));
            let (out, tr) = layer.forward(
                ctx,
                kernel,
                &h,
                kvr,
                self.attn_mask,
                &self.drop,
                trace,
                bias,
            )?;
            h = out;
            layer_outputs.push(h.clone());
            traces.extend(tr);
        }
        let out = self.layer_norm.forward(&h)?;
        Ok(EncoderOutput {
            out,
            layer_outputs,
            traces,
        })
    }
}

/// `dropout(sqrt(E) * x + PE(x), p)` with the padding rule of [`positional_embedding`].
///
/// On f32 CPU tensors one op keeping only its output ([`crate::kernels::pointwise::embed`], the
/// same values); the dropout draws one stream when active, as [`Ctx::dropout`].
pub fn embed(ctx: &Ctx, x: &Tensor, embed_dim: usize, p: f32) -> Result<Tensor> {
    if crate::kernels::pointwise::applies(&[x]) {
        let d = ctx.dropout_active(p).then(|| ctx.next_dropout(p));
        return Ok(crate::kernels::pointwise::embed(
            x,
            (embed_dim as f64).sqrt(),
            d,
        )?);
    }
    embed_composed(ctx, x, embed_dim, p)
}

/// `dropout(sqrt(E) * x + pe, p)` with given positional embeddings `pe` `[B, T, E]`
/// (`positions = time`; composed ops).
pub fn embed_with(ctx: &Ctx, x: &Tensor, pe: &Tensor, embed_dim: usize, p: f32) -> Result<Tensor> {
    let scaled = (x * (embed_dim as f64).sqrt())?;
    ctx.dropout(&(scaled + pe)?, p)
}

/// [`embed`] with composed ops.
pub fn embed_composed(ctx: &Ctx, x: &Tensor, embed_dim: usize, p: f32) -> Result<Tensor> {
    let pe = positional_embedding(x)?;
    let scaled = (x * (embed_dim as f64).sqrt())?;
    ctx.dropout(&(scaled + pe)?, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::Initializer;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rand_var(shape: &[usize], rng: &mut ChaCha8Rng) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    /// The trace path projects q and k with the composed ops (LayerNorm op, linear,
    /// `* scaling`, `split_heads`); without a trace they come from the head-layout linear
    /// op (with the LayerNorm inside it in a crossmodal layer). A whole layer in training
    /// mode gives bit-identical outputs and gradients both ways.
    #[test]
    fn fused_projections_give_the_trace_paths_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut init = Initializer::new(1, &Device::Cpu);
        let layer = EncoderLayer::new(&mut init, "l", 8, 2).unwrap();
        let store = init.into_store();
        for var in store.vars.values() {
            var.set(rand_var(var.dims(), &mut rng).as_tensor()).unwrap();
        }
        let x = rand_var(&[2, 5, 8], &mut rng);
        let k = rand_var(&[2, 7, 8], &mut rng);
        let v = rand_var(&[2, 7, 8], &mut rng);
        let drop = EncoderDropouts {
            attn: 0.2,
            relu: 0.2,
            res: 0.2,
            embed: 0.2,
        };
        let up = rand_var(&[2, 5, 8], &mut rng);
        let run = |trace: bool, cross: bool| {
            let ctx = Ctx::train(17);
            let kv = cross.then(|| (k.as_tensor(), v.as_tensor()));
            let (out, tr) = layer
                .forward(
                    &ctx,
                    AttentionKernel::Fused,
                    x.as_tensor(),
                    kv,
                    true,
                    &drop,
                    trace,
                    None,
                )
                .unwrap();
            assert_eq!(tr.is_some(), trace);
            let g = (&out * up.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut all = vec![bits(&out)];
            let inputs = if cross { vec![&x, &k, &v] } else { vec![&x] };
            for t in inputs.into_iter().chain(store.vars.values()) {
                all.push(bits(g.get(t.as_tensor()).expect("a gradient")));
            }
            all
        };
        assert_eq!(run(false, true), run(true, true), "crossmodal");
        assert_eq!(run(false, false), run(true, false), "self-attention");
    }

    /// Max |a − b| / max |b| over two tensors of the same shape.
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        let (mut e, mut m) = (0f64, 0f64);
        for (x, y) in a.iter().zip(&b) {
            assert!(x.is_finite() && y.is_finite(), "non-finite {x} / {y}");
            e = e.max((x - y).abs() as f64);
            m = m.max(y.abs() as f64);
        }
        e / m.max(1e-30)
    }

    /// Time-biased attention (head width `hd + 2`) goes through the fused kernel: a layer
    /// in training mode (attention dropout on) gives the plain path's outputs and
    /// gradients, self- and crossmodal, with and without the causal offset, with padding
    /// keys (their far-away time) and a padding query.
    #[test]
    fn time_biased_attention_is_the_same_fused_and_plain() {
        use crate::model::time_bias::{time_bias, ElementTimes};
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut init = Initializer::new(1, &Device::Cpu);
        // E 12, 2 heads: width 6, 8 with the bias (odd widths: the kernel tests).
        let layer = EncoderLayer::new(&mut init, "l", 12, 2).unwrap();
        let store = init.into_store();
        for var in store.vars.values() {
            var.set(rand_var(var.dims(), &mut rng).as_tensor()).unwrap();
        }
        let x = rand_var(&[2, 5, 12], &mut rng);
        let k = rand_var(&[2, 7, 12], &mut rng);
        let v = rand_var(&[2, 7, 12], &mut rng);
        let times = |t: usize, pad: usize| ElementTimes {
            b: 2,
            t,
            times: (0..2 * t)
                .map(|i| {
                    let (s, j) = (i / t, i % t);
                    (s == 0 || j < t - pad).then_some(0.05 + 0.21 * j as f32 + 0.03 * s as f32)
                })
                .collect(),
        };
        let (tq, tk) = (times(5, 1), times(7, 3));
        let dev = Device::Cpu;
        let cross_bias = time_bias(&tq, &tk, 2, 0.2, &dev).unwrap();
        let self_bias = time_bias(&tq, &tq, 2, 0.2, &dev).unwrap();
        let drop = EncoderDropouts {
            attn: 0.2,
            relu: 0.0,
            res: 0.0,
            embed: 0.0,
        };
        let up = rand_var(&[2, 5, 12], &mut rng);
        let run = |kernel: AttentionKernel, cross: bool, causal: bool| {
            let ctx = Ctx::train(23);
            let kv = cross.then(|| (k.as_tensor(), v.as_tensor()));
            let bias = if cross { &cross_bias } else { &self_bias };
            let (out, _) = layer
                .forward(
                    &ctx,
                    kernel,
                    x.as_tensor(),
                    kv,
                    causal,
                    &drop,
                    false,
                    Some(bias),
                )
                .unwrap();
            let g = (&out * up.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut all = vec![out];
            let inputs = if cross { vec![&x, &k, &v] } else { vec![&x] };
            for t in inputs.into_iter().chain(store.vars.values()) {
                all.push(g.get(t.as_tensor()).expect("a gradient").clone());
            }
            all
        };
        for cross in [true, false] {
            for causal in [false, true] {
                let fused = run(AttentionKernel::Fused, cross, causal);
                let plain = run(AttentionKernel::Plain, cross, causal);
                for (i, (f, p)) in fused.iter().zip(&plain).enumerate() {
                    let e = rel(f, p);
                    assert!(
                        e < 1e-4,
                        "cross {cross} causal {causal}: tensor {i}: {e:.3e}"
                    );
                }
            }
        }
    }
}
