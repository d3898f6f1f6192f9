//! RAVEN, the Recurrent Attended Variation Embedding Network (Wang, Shen, Liu, Liang, Zadeh,
//! Morency: "Words Can Shift: Dynamically Adjusting Word Representations Using Nonverbal
//! Behaviors", AAAI 2019, Section 3). mica's own implementation from the paper's equations;
//! on unaligned data the audio and vision reach the words through MulT's CTC module (as in
//! MulT's Tables 1–3, whose RAVEN row used it), or by nearest-time resampling with
//! `--set model.baselines.align=nearest`.
//!
//! For word `i` (a real text step) with embedding `e_i`:
//! 1. **Nonverbal sub-networks**: one LSTM per modality over the word's audio / visual frames,
//!    last state `h_a^i`, `h_v^i` (`raven_nonverbal_hidden` units). Word-aligned data (MulT's
//!    `*_data.pkl`, the CTC pseudo-alignment, resampling) has one frame per word, so each
//!    sub-network is one LSTM step from the zero state.
//! 2. **Gated modality mixing**: `w_v = σ(W_hv [h_v; e] + b_v)`, `w_a = σ(W_ha [h_a; e] + b_a)`
//!    (one gate per word and modality), `h_m = w_v (W_v h_v) + w_a (W_a h_a) + b_h`.
//! 3. **Multimodal shifting**: `e_m = e + α h_m`, `α = min(β ‖e‖₂ / ‖h_m‖₂, 1)` (β =
//!    `raven_shift_beta`; a 1e-8 inside each norm keeps padding words finite).
//! 4. **Prediction**: a word-level LSTM (`raven_word_hidden`) over the shifted words, its last
//!    state, dropout (`raven_dropout`), a linear layer to the output.
//!
//! The CTC loss (times `ctc_weight`) is the auxiliary loss ([`super::AUX_LOSS`]).

use super::ctc::CtcPair;
use super::{onto_text_grid, raw_valid, AUX_LOSS};
use crate::model::config::ModelConfig;
use crate::model::ctx::Ctx;
use crate::model::layers::Linear;
use crate::model::lstm::{length_mask, real_lengths, Lstm};
use crate::model::mult::{check_shapes, ForwardOpts, ForwardOutput, Inputs};
use crate::model::params::{Init, ParamSource};
use anyhow::Result;
use candle_core::{Tensor, D};
use candle_nn::ops::sigmoid;
use std::collections::BTreeMap;

/// RAVEN (module docs).
#[derive(Debug, Clone)]
pub struct Raven {
    /// Its configuration.
    pub cfg: ModelConfig,
    /// `ctc_a.*`, `ctc_v.*` when `baselines.align = ctc`.
    pub ctc: Option<CtcPair>,
    /// `sub_a`, `sub_v`: the nonverbal sub-network LSTMs.
    pub sub: [Lstm; 2],
    /// `gate_a`, `gate_v`: `[h_m; e] -> 1`.
    pub gates: [Linear; 2],
    /// `proj_a`, `proj_v`: `h_m -> D_l` (no bias; `b_h` is `mix_bias`).
    pub proj: [Linear; 2],
    /// `mix_bias` `[D_l]` (`b_h`).
    pub mix_bias: Tensor,
    /// `word_lstm`: `D_l -> raven_word_hidden`.
    pub word: Lstm,
    /// `out_layer`: `raven_word_hidden -> output_dim`.
    pub out: Linear,
}

impl Raven {
    /// Builds the CTC modules (if any), the sub-networks, the mixing and the word LSTM.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let b = &cfg.baselines;
        let dims = cfg.orig_dims();
        let ctc = CtcPair::for_config(p, cfg)?;
        let hn = b.raven_nonverbal_hidden;
        let sub = [
            Lstm::new(p, "sub_a", dims[1], hn)?,
            Lstm::new(p, "sub_v", dims[2], hn)?,
        ];
        let gates = [
            Linear::torch_default(p, "gate_a", hn + dims[0], 1)?,
            Linear::torch_default(p, "gate_v", hn + dims[0], 1)?,
        ];
        let mut bare = |name: &str| -> Result<Linear> {
            Ok(Linear {
                weight: p.param(name, &[dims[0], hn], Init::FanInUniform(hn))?,
                bias: None,
            })
        };
        let proj = [bare("proj_a.weight")?, bare("proj_v.weight")?];
        let mix_bias = p.param("mix_bias", &[dims[0]], Init::Const(0.0))?;
        let word = Lstm::new(p, "word_lstm", dims[0], b.raven_word_hidden)?;
        let out = Linear::torch_default(p, "out_layer", b.raven_word_hidden, cfg.output_dim)?;
        Ok(Raven {
            cfg: cfg.clone(),
            ctc,
            sub,
            gates,
            proj,
            mix_bias,
            word,
            out,
        })
    }

    /// The forward pass; intermediates always hold [`AUX_LOSS`] (the CTC loss, or 0), and
    /// with `intermediates` also `shift` (`α h_m`, `[B, T_l, D_l]`) and `word_lstm`.
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        check_shapes(&self.cfg, x)?;
        let (audio, vision, ctc) = onto_text_grid(&self.cfg, self.ctc.as_ref(), x)?;
        let e = &x.text;
        let (b, t, dl) = e.dims3()?;
        let mut hm = self.mix_bias.broadcast_as((b, t, dl))?.contiguous()?;
        for (m, seq) in [&audio, &vision].into_iter().enumerate() {
            let d = seq.dim(2)?;
            // One frame per word: each word's sub-network is one step from the zero state.
            let h = self.sub[m]
                .forward(&seq.reshape((b * t, 1, d))?, None)?
                .reshape((b, t, self.sub[m].hidden))?;
            let w = sigmoid(&self.gates[m].forward(&Tensor::cat(&[&h, e], 2)?)?)?;
            hm = (hm + self.proj[m].forward(&h)?.broadcast_mul(&w)?)?;
        }
        let norm = |v: &Tensor| -> Result<Tensor> {
            Ok((v.sqr()?.sum_keepdim(D::Minus1)? + 1e-8)?.sqrt()?)
        };
        let ratio = ((norm(e)? / norm(&hm)?)? * self.cfg.baselines.raven_shift_beta)?;
        let alpha = ratio.minimum(1.0)?;
        let shift = hm.broadcast_mul(&alpha)?;
        let em = (e + &shift)?;
        let lens = real_lengths(&x.text)?;
        let mask = length_mask(&lens, t, e.device())?;
        let last = self.word.forward(&em, Some(&mask))?;
        let output = self
            .out
            .forward(&ctx.dropout(&last, self.cfg.baselines.raven_dropout)?)?;
        let mut inter = BTreeMap::new();
        let aux = match ctc {
            Some(l) => l,
            None => Tensor::zeros((), e.dtype(), e.device())?,
        };
        inter.insert(AUX_LOSS.to_string(), aux);
        if opts.intermediates {
            inter.insert("shift".into(), shift);
            inter.insert("word_lstm".into(), last.clone());
            inter.insert("out_layer".into(), output.clone());
        }
        Ok(ForwardOutput {
            output,
            last_hs: last,
            blocks: Vec::new(),
            valid: raw_valid(x)?,
            intermediates: inter,
        })
    }
}
