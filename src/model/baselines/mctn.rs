//! MCTN, the Multimodal Cyclic Translation Network (Pham, Liang, Manzini, Morency, Póczos:
//! "Found in Translation: Learning Robust Joint Representations by Cyclic Translations
//! Between Modalities", AAAI 2019), hierarchical trimodal form as in its official code
//! (hainow/MCTN: `models/trimodals.py` `E2E_Hierarchical_MCTN_Model`,
//! `seq2seq/mctn_models.py`, `models/regression_model.py`,
//! `configs/hierarchical_mctn.yaml`). mica's own implementation.
//!
//! Text is the only input at test time; audio and vision are translation targets, brought
//! onto the text grid by MulT's CTC module on unaligned data (or nearest-time resampling).
//! 1. **Level 1**: a bidirectional LSTM encoder (directions summed, `mctn_hidden` units)
//!    over the text; an attention decoder translates its states into the vision sequence
//!    (MSE, weight `mctn_trans_weight`). **Cyclic consistency**: the decoded vision is
//!    encoded and decoded back into the text (MSE, weight `mctn_cycle_weight`).
//! 2. **Level 2**: a second bidirectional encoder over the level-1 encoder states (the joint
//!    text–vision representation) and an attention decoder into the audio (MSE, weight
//!    `mctn_trans_weight`; no cycle, as in the official code).
//! 3. **Prediction**: an LSTM (`mctn_reg_hidden`) over the level-2 states, attention pooling
//!    (`tanh` score per step, softmax over the real steps), dropout (`mctn_dropout`) and a
//!    linear layer.
//!
//! The attention decoder runs `T_l` steps: at each, additive attention
//! `v^T tanh(W_e enc_j + W_h h)` over the real encoder steps gives a context, the LSTM cell
//! takes `[context; previous output]`, a linear read-out gives the output frame.
//!
//! Differences from the official code: the back-translation has its own encoder and
//! decoder (the official one re-applies the forward encoder and decoder, which needs text
//! and vision of equal width); translation targets are detached (the CTC module is trained
//! by its own loss, not pulled towards easily-predicted sequences); losses cover the real
//! (non-padding) text steps only. The auxiliary loss ([`super::AUX_LOSS`]) is the weighted
//! translation and cyclic losses plus the CTC loss.

use super::ctc::CtcPair;
use super::{onto_text_grid, raw_valid, AUX_LOSS};
use crate::model::config::ModelConfig;
use crate::model::ctx::Ctx;
use crate::model::layers::Linear;
use crate::model::lstm::{length_mask, real_lengths, Lstm};
use crate::model::mult::{check_shapes, ForwardOpts, ForwardOutput, Inputs};
use crate::model::params::{Init, ParamSource};
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

/// A bidirectional LSTM whose two directions are summed (Keras `merge_mode='sum'`).
#[derive(Debug, Clone)]
pub struct BiLstm {
    /// `{name}.fwd`, `{name}.bwd`.
    pub dirs: [Lstm; 2],
}

fn reverse_time(x: &Tensor) -> Result<Tensor> {
    let t = x.dim(1)?;
    let idx: Vec<u32> = (0..t as u32).rev().collect();
    Ok(x.index_select(&Tensor::from_vec(idx, t, x.device())?, 1)?)
}

impl BiLstm {
    /// Builds both directions.
    pub fn new(p: &mut dyn ParamSource, name: &str, input: usize, hidden: usize) -> Result<Self> {
        Ok(BiLstm {
            dirs: [
                Lstm::new(p, &format!("{name}.fwd"), input, hidden)?,
                Lstm::new(p, &format!("{name}.bwd"), input, hidden)?,
            ],
        })
    }

    /// States `[B, T, H]` over the real steps of `mask` `[B, T]` (zero on padding).
    pub fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let f = self.dirs[0].forward_seq(x, Some(mask))?;
        let rm = reverse_time(mask)?;
        let b = reverse_time(&self.dirs[1].forward_seq(&reverse_time(x)?, Some(&rm))?)?;
        Ok((f + b)?.broadcast_mul(&mask.unsqueeze(2)?)?)
    }
}

/// An attention decoder (module docs).
#[derive(Debug, Clone)]
pub struct AttnDecoder {
    /// `{name}.cell`: `H + out -> H`.
    pub cell: Lstm,
    /// `{name}.att_enc` (no bias), `{name}.att_dec`: `H -> H`.
    pub att: [Linear; 2],
    /// `{name}.att_v.weight` `[1, H]`.
    pub v: Tensor,
    /// `{name}.readout`: `H -> out`.
    pub readout: Linear,
}

impl AttnDecoder {
    /// Builds the decoder from `hidden`-wide encoder states to `out`-wide frames.
    pub fn new(p: &mut dyn ParamSource, name: &str, hidden: usize, out: usize) -> Result<Self> {
        let att_enc = Linear {
            weight: p.param(
                &format!("{name}.att_enc.weight"),
                &[hidden, hidden],
                Init::FanInUniform(hidden),
            )?,
            bias: None,
        };
        Ok(AttnDecoder {
            cell: Lstm::new(p, &format!("{name}.cell"), hidden + out, hidden)?,
            att: [
                att_enc,
                Linear::torch_default(p, &format!("{name}.att_dec"), hidden, hidden)?,
            ],
            v: p.param(
                &format!("{name}.att_v.weight"),
                &[1, hidden],
                Init::FanInUniform(hidden),
            )?,
            readout: Linear::torch_default(p, &format!("{name}.readout"), hidden, out)?,
        })
    }

    /// Decodes `enc` `[B, T, H]` (real steps where `mask` `[B, T]` is 1) into `[B, T, out]`.
    pub fn forward(&self, enc: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, h) = enc.dims3()?;
        let out = self.readout.weight.dim(0)?;
        let ke = self.att[0].forward(enc)?;
        let neg = ((mask - 1.0)? * 1e9)?; // 0 on real steps, -1e9 on padding
        let mut hs = Tensor::zeros((b, h), enc.dtype(), enc.device())?;
        let mut cs = hs.clone();
        let mut y = Tensor::zeros((b, out), enc.dtype(), enc.device())?;
        let mut outs = Vec::with_capacity(t);
        for _ in 0..t {
            let q = self.att[1].forward(&hs)?.unsqueeze(1)?;
            let e = ke.broadcast_add(&q)?.tanh()?.matmul(
                &self
                    .v
                    .t()?
                    .unsqueeze(0)?
                    .broadcast_as((b, h, 1))?
                    .contiguous()?,
            )?;
            let s = (e.squeeze(2)? + &neg)?;
            let a = candle_nn::ops::softmax(&s, 1)?;
            let ctxv = a.unsqueeze(1)?.matmul(enc)?.squeeze(1)?;
            (hs, cs) = self.cell.cell(&Tensor::cat(&[&ctxv, &y], 1)?, &hs, &cs)?;
            y = self.readout.forward(&hs)?;
            outs.push(y.clone());
        }
        Ok(Tensor::stack(&outs, 1)?)
    }
}

/// Mean squared error over the real steps of `mask` `[B, T]`.
fn masked_mse(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let d = pred.dim(2)?;
    let n = mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let se = (pred - target)?.sqr()?.broadcast_mul(&mask.unsqueeze(2)?)?;
    Ok((se.sum_all()? / (n * d as f64))?)
}

/// MCTN (module docs).
#[derive(Debug, Clone)]
pub struct Mctn {
    /// Its configuration.
    pub cfg: ModelConfig,
    /// `ctc_a.*`, `ctc_v.*` when `baselines.align = ctc`.
    pub ctc: Option<CtcPair>,
    /// `enc1`: text -> H.
    pub enc1: BiLstm,
    /// `dec1`: -> vision.
    pub dec1: AttnDecoder,
    /// `enc1_back`: vision -> H (the cycle).
    pub enc1_back: BiLstm,
    /// `dec1_back`: -> text.
    pub dec1_back: AttnDecoder,
    /// `enc2`: H -> H over the joint representation.
    pub enc2: BiLstm,
    /// `dec2`: -> audio.
    pub dec2: AttnDecoder,
    /// `reg_lstm`: H -> R.
    pub reg: Lstm,
    /// `reg_att`: R -> 1 (tanh score).
    pub reg_att: Linear,
    /// `out_layer`: R -> output_dim.
    pub out: Linear,
}

impl Mctn {
    /// Builds the CTC modules (if any), both translation levels and the regression.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let b = &cfg.baselines;
        let dims = cfg.orig_dims();
        let ctc = CtcPair::for_config(p, cfg)?;
        let (h, r) = (b.mctn_hidden, b.mctn_reg_hidden);
        Ok(Mctn {
            cfg: cfg.clone(),
            ctc,
            enc1: BiLstm::new(p, "enc1", dims[0], h)?,
            dec1: AttnDecoder::new(p, "dec1", h, dims[2])?,
            enc1_back: BiLstm::new(p, "enc1_back", dims[2], h)?,
            dec1_back: AttnDecoder::new(p, "dec1_back", h, dims[0])?,
            enc2: BiLstm::new(p, "enc2", h, h)?,
            dec2: AttnDecoder::new(p, "dec2", h, dims[1])?,
            reg: Lstm::new(p, "reg_lstm", h, r)?,
            reg_att: Linear::torch_default(p, "reg_att", r, 1)?,
            out: Linear::torch_default(p, "out_layer", r, cfg.output_dim)?,
        })
    }

    /// The forward pass; intermediates always hold [`AUX_LOSS`], and with `intermediates`
    /// also `decoded_vision`, `cycled_text`, `decoded_audio` and `joint` (level-2 states).
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        check_shapes(&self.cfg, x)?;
        let bc = &self.cfg.baselines;
        let (audio, vision, ctc) = onto_text_grid(&self.cfg, self.ctc.as_ref(), x)?;
        let t = x.text.dim(1)?;
        let dev: &Device = x.text.device();
        let mask = length_mask(&real_lengths(&x.text)?, t, dev)?;
        let e1 = self.enc1.forward(&x.text, &mask)?;
        let vis_hat = self.dec1.forward(&e1, &mask)?;
        let back = self.enc1_back.forward(&vis_hat, &mask)?;
        let text_cyc = self.dec1_back.forward(&back, &mask)?;
        let e2 = self.enc2.forward(&e1, &mask)?;
        let aud_hat = self.dec2.forward(&e2, &mask)?;
        // Regression over the joint representation, attention-pooled.
        let states = self.reg.forward_seq(&e2, Some(&mask))?;
        let score = (self.reg_att.forward(&states)?.tanh()?.squeeze(2)? + ((&mask - 1.0)? * 1e9)?)?;
        let att = candle_nn::ops::softmax(&score, 1)?;
        let pooled = att.unsqueeze(1)?.matmul(&states)?.squeeze(1)?;
        let output = self.out.forward(&ctx.dropout(&pooled, bc.mctn_dropout)?)?;
        let trans = (masked_mse(&vis_hat, &vision.detach(), &mask)?
            + masked_mse(&aud_hat, &audio.detach(), &mask)?)?;
        let cycle = masked_mse(&text_cyc, &x.text.detach(), &mask)?;
        let mut aux = ((trans * bc.mctn_trans_weight)? + (cycle * bc.mctn_cycle_weight)?)?;
        if let Some(l) = ctc {
            aux = (aux + l)?;
        }
        let mut inter = BTreeMap::new();
        inter.insert(AUX_LOSS.to_string(), aux);
        if opts.intermediates {
            inter.insert("decoded_vision".into(), vis_hat);
            inter.insert("cycled_text".into(), text_cyc);
            inter.insert("decoded_audio".into(), aud_hat);
            inter.insert("joint".into(), e2);
            inter.insert("out_layer".into(), output.clone());
        }
        Ok(ForwardOutput {
            output,
            last_hs: pooled,
            blocks: Vec::new(),
            valid: raw_valid(x)?,
            intermediates: inter,
        })
    }
}
