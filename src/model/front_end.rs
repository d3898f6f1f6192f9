//! MulT's front end and read-out head (spec/mult.md): the per-modality temporal Conv1d
//! projection (with the text input's dropout), the time positional embeddings, and the
//! residual head `out_layer(proj2(drop(relu(proj1 x))) + x)`.

use super::config::{ModelConfig, Positions};
use super::ctx::Ctx;
use super::io::{Inputs, MOD_SHORT};
use super::layers::{time_positional_embedding, Conv1d, Linear};
use super::params::ParamSource;
use super::time_bias::{element_times, time_bias, TimeBias};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// The per-modality temporal Conv1d front end (identity where `orig_d == d`).
#[derive(Debug, Clone)]
pub struct FrontEnd {
    /// `proj_l`, `proj_a`, `proj_v`.
    pub proj: [Conv1d; 3],
    /// Whether each conv is applied (official: skipped when `orig_d == d`).
    pub applied: [bool; 3],
    /// Dropout on the raw text input.
    pub embed_dropout: f32,
}

impl FrontEnd {
    /// Builds `proj_l|a|v.weight` (always created, as the official code does).
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        let dims = cfg.orig_dims();
        let ks = cfg.kernels();
        let mk = |p: &mut dyn ParamSource, m: usize| {
            Conv1d::new(p, &format!("proj_{}", MOD_SHORT[m]), dims[m], cfg.d, ks[m])
        };
        let proj = [mk(p, 0)?, mk(p, 1)?, mk(p, 2)?];
        let applied = [0, 1, 2].map(|m| dims[m] != cfg.d);
        Ok(FrontEnd {
            proj,
            applied,
            embed_dropout: cfg.embed_dropout,
        })
    }

    /// Text dropout, then each modality's conv: three `[B, T', d]` tensors.
    pub fn forward(&self, ctx: &Ctx, x: &Inputs) -> Result<[Tensor; 3]> {
        let text = ctx.dropout(&x.text, self.embed_dropout)?;
        let raw = [&text, &x.audio, &x.vision];
        let mut out = Vec::with_capacity(3);
        // `m` indexes `applied`, `proj` and `raw` alike.
        #[allow(clippy::needless_range_loop)]
        for m in 0..3 {
            out.push(if self.applied[m] {
                self.proj[m].forward(raw[m])?
            } else {
                raw[m].clone()
            });
        }
        Ok([out[0].clone(), out[1].clone(), out[2].clone()])
    }
}

/// MulT's residual head: `out_layer(proj2(drop(relu(proj1 x))) + x)`.
#[derive(Debug, Clone)]
pub struct Head {
    /// `C -> C`.
    pub proj1: Linear,
    /// `C -> C`.
    pub proj2: Linear,
    /// `C -> output_dim`.
    pub out_layer: Linear,
    /// Dropout after the ReLU.
    pub out_dropout: f32,
}

impl Head {
    /// Builds `proj1`, `proj2`, `out_layer` (PyTorch default init).
    pub fn new(
        p: &mut dyn ParamSource,
        width: usize,
        output_dim: usize,
        out_dropout: f32,
    ) -> Result<Self> {
        Ok(Head {
            proj1: Linear::torch_default(p, "proj1", width, width)?,
            proj2: Linear::torch_default(p, "proj2", width, width)?,
            out_layer: Linear::torch_default(p, "out_layer", width, output_dim)?,
            out_dropout,
        })
    }

    /// Returns `(output, proj1 pre-ReLU, proj2 before the residual add)`.
    pub fn forward(&self, ctx: &Ctx, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let p1 = self.proj1.forward(x)?;
        let p2 = self
            .proj2
            .forward(&ctx.relu_dropout(&p1, self.out_dropout)?)?;
        let out = self.out_layer.forward(&(&p2 + x)?)?;
        Ok((out, p1, p2))
    }
}

/// The time positional embeddings `[B, T_m, width]` of the three modalities when the config
/// asks for `positions = time` (None for step-index positions); an error naming the option
/// when the inputs carry no element times.
pub fn time_pe(cfg: &ModelConfig, x: &Inputs, width: usize) -> Result<Option<[Tensor; 3]>> {
    if cfg.positions != Positions::Time {
        return Ok(None);
    }
    let Some(times) = &x.times else {
        anyhow::bail!(
            "model option `positions = time` needs element times, and these inputs have none \
             (data without element intervals, e.g. a MulT/MMSA pickle): use `positions = index`"
        );
    };
    let k = cfg.kernels();
    let pe: Vec<Tensor> = (0..3)
        .map(|m| time_positional_embedding(&times[m], k[m], width, cfg.time_step))
        .collect::<Result<_>>()?;
    let [l, a, v]: [Tensor; 3] = pe.try_into().expect("three modalities");
    Ok(Some([l, a, v]))
}

/// The time biases of every (target, source) pair of modalities, built once per forward
/// pass (`time_bias > 0`), or none (`time_bias = 0`).
#[derive(Debug, Clone, Default)]
pub struct TimeBiases(Option<Vec<TimeBias>>);

impl TimeBiases {
    /// The bias of target `t` attending to source `s` (`t == s`: self-attention).
    pub fn get(&self, t: usize, s: usize) -> Option<&TimeBias> {
        self.0.as_ref().map(|b| &b[t * 3 + s])
    }
}

/// The time biases when the config asks for them (`time_bias > 0`); an error naming the
/// option when the inputs carry no element times.
pub fn time_biases(cfg: &ModelConfig, x: &Inputs, device: &Device) -> Result<TimeBiases> {
    if cfg.time_bias == 0.0 {
        return Ok(TimeBiases(None));
    }
    let Some(times) = &x.times else {
        anyhow::bail!(
            "model option `time_bias` needs element times, and these inputs have none \
             (data without element intervals, e.g. a MulT/MMSA pickle): use `time_bias = 0`"
        );
    };
    let k = cfg.kernels();
    let et = (0..3)
        .map(|m| element_times(&times[m], k[m]))
        .collect::<Result<Vec<_>>>()?;
    let all = (0..9)
        .map(|i| time_bias(&et[i / 3], &et[i % 3], cfg.num_heads, cfg.time_bias, device))
        .collect::<Result<Vec<_>>>()?;
    Ok(TimeBiases(Some(all)))
}

/// Modality `m`'s entry of optional per-modality positional embeddings.
pub fn pe_of(pe: &Option<[Tensor; 3]>, m: usize) -> Option<&Tensor> {
    pe.as_ref().map(|p| &p[m])
}
