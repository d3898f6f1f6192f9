//! MulT (Tsai et al., ACL 2019), exactly as the official PyTorch code computes it
//! (spec/mult.md). Reads top to bottom: front end, six crossmodal encoders, three
//! memory encoders, last-step read-out, residual head.

use super::config::{ModelConfig, Partial, Positions};
use super::ctx::Ctx;
use super::encoder::{AttnTrace, Encoder, EncoderDropouts};
use super::layers::{time_positional_embedding, Conv1d, Linear};
use super::params::ParamSource;
use super::time_bias::{element_times, time_bias, ElementTimes, TimeBias};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Short modality names in mica's fixed order (L, A, V), as in the official parameter names.
pub const MOD_SHORT: [&str; 3] = ["l", "a", "v"];

/// The two sources of each target, in the official order (L<-A, L<-V, A<-L, A<-V, V<-L, V<-A).
pub const SOURCES: [[usize; 2]; 3] = [[1, 2], [0, 2], [0, 1]];

/// A batch of model inputs, batch-first `[B, T, D]` f32.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Text `[B, T_l, D_l]`.
    pub text: Tensor,
    /// Audio `[B, T_a, D_a]`.
    pub audio: Tensor,
    /// Vision `[B, T_v, D_v]`.
    pub vision: Tensor,
    /// Per modality, each element's time `[B, T]` f32 (seconds, the midpoint of its
    /// interval; NaN for padding), where the data knows it. Used by `positions = time`.
    pub times: Option<[Tensor; 3]>,
}

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
        let times = bias_times(&self.cfg, x)?;
        let dev = z[0].device();
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
                    bias_of(&self.cfg, &times, t, s, dev)?.as_ref(),
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
            let mem_bias = bias_of(&self.cfg, &times, t, t, dev)?;
            let o = self.mem[t].forward(
                ctx,
                kernel,
                &h,
                None,
                false,
                [pe_of(&pe_mem, t), None],
                mem_bias.as_ref(),
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

/// Per modality, `[B * T]` flags of the real time steps: first channel of the projected
/// input != 0 (the positional embedding's padding rule).
pub fn valid_masks(proj: &[Tensor; 3]) -> Result<[Vec<bool>; 3]> {
    let one = |t: &Tensor| -> Result<Vec<bool>> {
        let first: Vec<f32> = t.narrow(2, 0, 1)?.flatten_all()?.to_vec1()?;
        Ok(first.into_iter().map(|x| x != 0.0).collect())
    };
    Ok([one(&proj[0])?, one(&proj[1])?, one(&proj[2])?])
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

/// The element times of the three modalities after the front end, when the config asks
/// for a time bias (`time_bias > 0`); an error naming the option when the inputs carry no
/// element times.
pub fn bias_times(cfg: &ModelConfig, x: &Inputs) -> Result<Option<[ElementTimes; 3]>> {
    if cfg.time_bias == 0.0 {
        return Ok(None);
    }
    let Some(times) = &x.times else {
        anyhow::bail!(
            "model option `time_bias` needs element times, and these inputs have none \
             (data without element intervals, e.g. a MulT/MMSA pickle): use `time_bias = 0`"
        );
    };
    let k = cfg.kernels();
    let [l, a, v] = [0, 1, 2].map(|m| element_times(&times[m], k[m]));
    Ok(Some([l?, a?, v?]))
}

/// The time bias of target `t` attending to source `s` (`None` when off).
pub fn bias_of(
    cfg: &ModelConfig,
    times: &Option<[ElementTimes; 3]>,
    t: usize,
    s: usize,
    device: &candle_core::Device,
) -> Result<Option<TimeBias>> {
    match times {
        None => Ok(None),
        Some(et) => Ok(Some(time_bias(
            &et[t],
            &et[s],
            cfg.num_heads,
            cfg.time_bias,
            device,
        )?)),
    }
}

/// Modality `m`'s entry of optional per-modality positional embeddings.
pub fn pe_of(pe: &Option<[Tensor; 3]>, m: usize) -> Option<&Tensor> {
    pe.as_ref().map(|p| &p[m])
}

/// Whether a config leaves a target unused (partial mode).
pub fn is_partial(cfg: &ModelConfig) -> bool {
    cfg.partial != Partial::All
}
