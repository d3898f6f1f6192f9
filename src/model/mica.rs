//! The MICA backbone (paper section 3.4, decisions in spec/mica.md).
//!
//! Same front end as MulT. Then per layer `i` and target `t` with sources `s1, s2`:
//! `Z_{s->t} = CA_{s->t}[i](kv = Z_s[i] (layerwise) or Z_s[0] (lowlevel), q = Z_t[i])`,
//! gate `G = sigmoid(Z_{s1->t} W1 + Z_{s2->t} W2 + b)`,
//! `Z_t[i+1] = G * Z_{s1->t} + (1 - G) * Z_{s2->t}`.
//! After the last layer a self-attention encoder of width d per modality, the last-step
//! read-out, and MulT's residual head on `[B, 3d]`.

use super::config::{GateBias, KvSource, ModelConfig};
use super::ctx::Ctx;
use super::encoder::{embed, embed_with, Encoder, EncoderLayer};
use super::front_end::{pe_of, time_biases, time_pe, FrontEnd, Head};
use super::io::{
    check_inputs, valid_masks, BlockTrace, ForwardOpts, ForwardOutput, Inputs, MOD_SHORT,
};
use super::layers::linear;
use super::mult::{drops, SOURCES};
use super::params::{Init, ParamSource};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use candle_nn::ops::sigmoid;
use std::collections::BTreeMap;

/// The gate merging the two crossmodal streams of one target.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `W1` `[d, d]` (applied as `x W1^T`).
    pub w1: Tensor,
    /// `W2` `[d, d]`.
    pub w2: Tensor,
    /// Bias `[T_t, d]` (per position) or `[d]` (shared).
    pub b: Tensor,
}

impl Gate {
    /// Builds `{name}.w1|w2|b` (Xavier weights, zero bias).
    pub fn new(
        p: &mut dyn ParamSource,
        name: &str,
        d: usize,
        t_len: usize,
        bias: GateBias,
    ) -> Result<Self> {
        let w1 = p.param(&format!("{name}.w1"), &[d, d], Init::XavierUniform)?;
        let w2 = p.param(&format!("{name}.w2"), &[d, d], Init::XavierUniform)?;
        let b = match bias {
            GateBias::PerPosition => {
                p.param(&format!("{name}.b"), &[t_len, d], Init::Const(0.0))?
            }
            GateBias::Shared => p.param(&format!("{name}.b"), &[d], Init::Const(0.0))?,
        };
        Ok(Gate { w1, w2, b })
    }

    /// `G * z1 + (1 - G) * z2` with `G = sigmoid(z1 W1^T + z2 W2^T + b)`; `z` are `[B, T, d]`.
    pub fn forward(&self, z1: &Tensor, z2: &Tensor) -> Result<Tensor> {
        let t = z1.dim(1)?;
        if self.b.rank() == 2 {
            ensure!(
                self.b.dim(0)? == t,
                "gate bias is per position for length {} but the sequence has length {t} (use gate_bias = shared for variable lengths)",
                self.b.dim(0)?
            );
        }
        let pre =
            (linear(z1, &self.w1, None)? + linear(z2, &self.w2, None)?)?.broadcast_add(&self.b)?;
        let g = sigmoid(&pre)?;
        // G z1 + (1 - G) z2 = z2 + G (z1 - z2)
        Ok((z2 + g.mul(&(z1 - z2)?)?)?)
    }
}

/// The MICA model.
#[derive(Debug, Clone)]
pub struct Mica {
    /// Configuration.
    pub cfg: ModelConfig,
    /// Conv front end (as MulT's).
    pub front: FrontEnd,
    /// `blocks[i][t][k]`: layer i, target t, source `SOURCES[t][k]`.
    pub blocks: Vec<[[EncoderLayer; 2]; 3]>,
    /// `gates[i][t]`.
    pub gates: Vec<[Gate; 3]>,
    /// Per-modality self-attention encoders of width d.
    pub self_enc: [Encoder; 3],
    /// Output head on `[B, 3d]`.
    pub head: Head,
}

impl Mica {
    /// Builds the backbone's parameters: `proj_*`, `blocks.{i}.{t}_with_{s}.*`,
    /// `gates.{i}.{t}.*`, `self_{t}.*`, `proj1|proj2|out_layer`.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let front = FrontEnd::new(p, cfg)?;
        let lens = cfg.model_lens();
        let mut blocks = Vec::with_capacity(cfg.layers);
        let mut gates = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mk = |p: &mut dyn ParamSource, t: usize, s: usize| {
                EncoderLayer::new(
                    p,
                    &format!("blocks.{i}.{}_with_{}", MOD_SHORT[t], MOD_SHORT[s]),
                    cfg.d,
                    cfg.num_heads,
                )
            };
            let mut per_t = Vec::with_capacity(3);
            // `t` indexes both the modality names and `SOURCES`.
            #[allow(clippy::needless_range_loop)]
            for t in 0..3 {
                per_t.push([mk(p, t, SOURCES[t][0])?, mk(p, t, SOURCES[t][1])?]);
            }
            blocks.push(to3(per_t));
            let mut g = Vec::with_capacity(3);
            for t in 0..3 {
                g.push(Gate::new(
                    p,
                    &format!("gates.{i}.{}", MOD_SHORT[t]),
                    cfg.d,
                    lens[t],
                    cfg.gate_bias,
                )?);
            }
            gates.push(to3(g));
        }
        let n_self = cfg.layers.max(3);
        let mk_self = |p: &mut dyn ParamSource, t: usize| {
            Encoder::new(
                p,
                &format!("self_{}", MOD_SHORT[t]),
                cfg.d,
                cfg.num_heads,
                n_self,
                drops(cfg, cfg.attn_dropout),
                cfg.attn_mask,
            )
        };
        let self_enc = [mk_self(p, 0)?, mk_self(p, 1)?, mk_self(p, 2)?];
        let head = Head::new(p, 3 * cfg.d, cfg.output_dim, cfg.out_dropout)?;
        Ok(Mica {
            cfg: cfg.clone(),
            front,
            blocks,
            gates,
            self_enc,
            head,
        })
    }

    /// The forward pass.
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        check_inputs(&self.cfg, x)?;
        let cfg = &self.cfg;
        let kernel = cfg.attention;
        let want_trace = opts.trace || opts.probs;
        let proj = self.front.forward(ctx, x)?;
        let mut inter = BTreeMap::new();
        // Z[0]: scaled + positioned + dropped-out embeddings of each modality.
        let pe = time_pe(cfg, x, cfg.d)?;
        let z0: Vec<Tensor> = proj
            .iter()
            .enumerate()
            .map(|(m, p)| match pe_of(&pe, m) {
                Some(pe) => embed_with(ctx, p, pe, cfg.d, cfg.embed_dropout),
                None => embed(ctx, p, cfg.d, cfg.embed_dropout),
            })
            .collect::<Result<_>>()?;
        let biases = time_biases(cfg, x, proj[0].device())?;
        let mut z = z0.clone();
        let mut traces = Vec::new();
        for (i, (layer_blocks, layer_gates)) in self.blocks.iter().zip(&self.gates).enumerate() {
            let mut next = Vec::with_capacity(3);
            for t in 0..3 {
                let mut streams = Vec::with_capacity(2);
                for (k, block) in layer_blocks[t].iter().enumerate() {
                    let s = SOURCES[t][k];
                    let kv = match cfg.kv_source {
                        KvSource::Layerwise => &z[s],
                        KvSource::Lowlevel => &z0[s],
                    };
                    let d = drops(cfg, cfg.attn_dropout_for_source(s));
                    let (out, tr) = block.forward(
                        ctx,
                        kernel,
                        &z[t],
                        Some((kv, kv)),
                        cfg.attn_mask,
                        &d,
                        want_trace,
                        biases.get(t, s),
                    )?;
                    if let Some(mut attn) = tr {
                        if opts.probs {
                            attn = attn.with_probs()?;
                        }
                        traces.push(BlockTrace {
                            target: t,
                            source: s,
                            layer: i,
                            attn,
                        });
                    }
                    streams.push(out);
                }
                next.push(layer_gates[t].forward(&streams[0], &streams[1])?);
            }
            z = next;
            if opts.intermediates {
                for t in 0..3 {
                    inter.insert(format!("z.{}.{}", i + 1, MOD_SHORT[t]), z[t].clone());
                }
            }
        }
        let mut last = Vec::with_capacity(3);
        // `t` indexes both the encoders and `z`.
        #[allow(clippy::needless_range_loop)]
        for t in 0..3 {
            let h = self.self_enc[t]
                .forward(
                    ctx,
                    kernel,
                    &z[t],
                    None,
                    false,
                    [pe_of(&pe, t), None],
                    biases.get(t, t),
                )?
                .out;
            let len = h.dim(1)?;
            last.push(h.narrow(1, len - 1, 1)?.squeeze(1)?);
        }
        let last_hs = Tensor::cat(&last, 1)?;
        let (output, _, _) = self.head.forward(ctx, &last_hs)?;
        let valid = valid_masks(&proj)?;
        Ok(ForwardOutput {
            output,
            last_hs,
            blocks: traces,
            valid,
            intermediates: inter,
        })
    }
}

fn to3<T>(v: Vec<T>) -> [T; 3] {
    let mut it = v.into_iter();
    let a = it.next().expect("three items");
    let b = it.next().expect("three items");
    let c = it.next().expect("three items");
    [a, b, c]
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn gate_matches_hand_computation() {
        let dev = Device::Cpu;
        // d = 2, shared bias.
        let gate = Gate {
            w1: Tensor::new(&[[1.0f32, 0.0], [0.5, -1.0]], &dev).unwrap(),
            w2: Tensor::new(&[[0.0f32, 2.0], [1.0, 1.0]], &dev).unwrap(),
            b: Tensor::new(&[0.1f32, -0.2], &dev).unwrap(),
        };
        let z1 = Tensor::new(&[[[1.0f32, 2.0]]], &dev).unwrap();
        let z2 = Tensor::new(&[[[-1.0f32, 0.5]]], &dev).unwrap();
        let got: Vec<f32> = gate
            .forward(&z1, &z2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // pre_0 = (1*1 + 0*2) + (0*-1 + 2*0.5) + 0.1 = 2.1 ; pre_1 = (0.5 - 2) + (-1 + 0.5) - 0.2 = -2.2
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (g0, g1) = (sig(2.1), sig(-2.2));
        let want = [g0 * 1.0 - (1.0 - g0), g1 * 2.0 + (1.0 - g1) * 0.5];
        for k in 0..2 {
            assert!(
                (got[k] as f64 - want[k]).abs() < 1e-6,
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn gate_per_position_bias_needs_matching_length() {
        let dev = Device::Cpu;
        let b = Var::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
        let eye = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let gate = Gate {
            w1: eye.clone(),
            w2: eye,
            b: b.as_tensor().clone(),
        };
        let z = Tensor::zeros((1, 4, 2), candle_core::DType::F32, &dev).unwrap();
        let e = gate.forward(&z, &z).unwrap_err().to_string();
        assert!(e.contains("gate_bias = shared"), "{e}");
    }
}
