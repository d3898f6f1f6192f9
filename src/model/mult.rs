//! MulT (Tsai et al., ACL 2019), exactly as the official PyTorch code computes it
//! (spec/mult.md). Reads top to bottom: front end, six crossmodal encoders, three
//! memory encoders, last-step read-out, residual head.

use super::config::{ModelConfig, Partial};
use super::ctx::Ctx;
use super::encoder::{Encoder, EncoderDropouts};
use super::params::ParamSource;
use anyhow::Result;
use candle_core::Tensor;
use std::collections::BTreeMap;

// Transitional re-exports: these moved to `model::io` and `model::front_end`; code written
// against `model::mult::{Inputs, ..}` (other branches) keeps building until it is updated.
use super::front_end::time_biases;
pub use super::front_end::{pe_of, time_pe, FrontEnd, Head};
pub use super::io::{
    check_inputs, check_shapes, valid_masks, BlockTrace, ForwardOpts, ForwardOutput, Inputs,
    MOD_SHORT,
};

/// The two sources of each target, in the official order (L<-A, L<-V, A<-L, A<-V, V<-L, V<-A).
pub const SOURCES: [[usize; 2]; 3] = [[1, 2], [0, 2], [0, 1]];

/// The official MulT model.
#[derive(Debug, Clone)]
pub struct Mult {
    /// Its configuration.
    pub cfg: ModelConfig,
    /// Conv front end.
    pub front: FrontEnd,
    /// Crossmodal encoders `[target][k]` for source `SOURCES[target][k]` (None when the
    /// partial mode leaves the target out).
    pub cross: [Option<[Encoder; 2]>; 3],
    /// Memory encoders (width 2d, `max(layers, 3)` layers), one per target.
    pub mem: [Encoder; 3],
    /// Output head.
    pub head: Head,
}

impl Mult {
    /// Builds every parameter in the official order (so a seed gives one model).
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let front = FrontEnd::new(p, cfg)?;
        let used = cfg.partial.targets();
        let mut cross: [Option<[Encoder; 2]>; 3] = [None, None, None];
        for t in 0..3 {
            if used[t] {
                let mk = |p: &mut dyn ParamSource, s: usize| {
                    let name = format!("trans_{}_with_{}", MOD_SHORT[t], MOD_SHORT[s]);
                    Encoder::new(
                        p,
                        &name,
                        cfg.d,
                        cfg.num_heads,
                        cfg.layers,
                        drops(cfg, cfg.attn_dropout_for_source(s)),
                        cfg.attn_mask,
                    )
                };
                cross[t] = Some([mk(p, SOURCES[t][0])?, mk(p, SOURCES[t][1])?]);
            }
        }
        let mem_layers = cfg.layers.max(3);
        let mk_mem = |p: &mut dyn ParamSource, t: usize| {
            let name = format!("trans_{}_mem", MOD_SHORT[t]);
            Encoder::new(
                p,
                &name,
                2 * cfg.d,
                cfg.num_heads,
                mem_layers,
                drops(cfg, cfg.attn_dropout),
                cfg.attn_mask,
            )
        };
        let mem = [mk_mem(p, 0)?, mk_mem(p, 1)?, mk_mem(p, 2)?];
        let n_used = used.iter().filter(|u| **u).count();
        let head = Head::new(p, 2 * cfg.d * n_used, cfg.output_dim, cfg.out_dropout)?;
        Ok(Mult {
            cfg: cfg.clone(),
            front,
            cross,
            mem,
            head,
        })
    }

    /// The forward pass (spec/mult.md "Data flow").
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        check_inputs(&self.cfg, x)?;
        let kernel = self.cfg.attention;
        let mut inter = BTreeMap::new();
        let z = self.front.forward(ctx, x)?;
        let pe = time_pe(&self.cfg, x, self.cfg.d)?;
        // The memory encoders run at width 2d.
        let pe_mem = time_pe(&self.cfg, x, 2 * self.cfg.d)?;
        let biases = time_biases(&self.cfg, x, z[0].device())?;
        if opts.intermediates {
            for m in 0..3 {
                inter.insert(format!("proj_{}", MOD_SHORT[m]), z[m].clone());
            }
        }
        let mut blocks = Vec::new();
        let mut last = Vec::new();
        for t in 0..3 {
            let Some(encs) = &self.cross[t] else { continue };
            let mut halves = Vec::with_capacity(2);
            for (k, enc) in encs.iter().enumerate() {
                let s = SOURCES[t][k];
                let o = enc.forward(
                    ctx,
                    kernel,
                    &z[t],
                    Some(&z[s]),
                    opts.trace || opts.probs,
                    [pe_of(&pe, t), pe_of(&pe, s)],
                    biases.get(t, s),
                )?;
                if opts.intermediates {
                    record(
                        &mut inter,
                        &format!("trans_{}_with_{}", MOD_SHORT[t], MOD_SHORT[s]),
                        &o.out,
                        &o.layer_outputs,
                    );
                }
                for (layer, mut attn) in o.traces.into_iter().enumerate() {
                    if opts.probs {
                        attn = attn.with_probs()?;
                    }
                    blocks.push(BlockTrace {
                        target: t,
                        source: s,
                        layer,
                        attn,
                    });
                }
                halves.push(o.out);
            }
            let h = Tensor::cat(&halves, 2)?;
            let o = self.mem[t].forward(
                ctx,
                kernel,
                &h,
                None,
                false,
                [pe_of(&pe_mem, t), None],
                biases.get(t, t),
            )?;
            if opts.intermediates {
                record(
                    &mut inter,
                    &format!("trans_{}_mem", MOD_SHORT[t]),
                    &o.out,
                    &o.layer_outputs,
                );
            }
            let tlen = o.out.dim(1)?;
            last.push(o.out.narrow(1, tlen - 1, 1)?.squeeze(1)?);
        }
        let last_hs = Tensor::cat(&last, 1)?;
        let (output, p1, p2) = self.head.forward(ctx, &last_hs)?;
        if opts.intermediates {
            inter.insert("proj1".into(), p1);
            inter.insert("proj2".into(), p2);
            inter.insert("out_layer".into(), output.clone());
        }
        let valid = valid_masks(&z)?;
        Ok(ForwardOutput {
            output,
            last_hs,
            blocks,
            valid,
            intermediates: inter,
        })
    }
}

fn record(inter: &mut BTreeMap<String, Tensor>, name: &str, out: &Tensor, layers: &[Tensor]) {
    inter.insert(name.to_string(), out.clone());
    for (i, l) in layers.iter().enumerate() {
        inter.insert(format!("{name}.layers.{i}"), l.clone());
    }
}

/// Encoder dropouts of a model config with the given attention dropout.
pub fn drops(cfg: &ModelConfig, attn: f32) -> EncoderDropouts {
    EncoderDropouts {
        attn,
        relu: cfg.relu_dropout,
        res: cfg.res_dropout,
        embed: cfg.embed_dropout,
    }
}

/// Whether a config leaves a target unused (partial mode).
pub fn is_partial(cfg: &ModelConfig) -> bool {
    cfg.partial != Partial::All
}
