//! MulT's CTC alignment module for its baselines on unaligned data (Tsai et al., ACL 2019,
//! Section 4.2; official code: yaohungt/Multimodal-Transformer, `src/ctc.py` `CTCModule`
//! and the `ctc_criterion` terms of `src/train.py`). mica's own implementation.
//!
//! A two-layer LSTM over the source sequence (audio or vision, `[B, T_s, D_s]`) with
//! `T_l + 1` hidden units predicts, per source frame, a distribution over the `T_l` text
//! positions plus a blank (class 0): `P = softmax(LSTM(x))`. The "pseudo-aligned" source
//! on the text grid is `P[:, :, 1:]^T x` `[B, T_l, D_s]` (a soft assignment of frames to
//! text positions). A CTC loss ([`super::ctc_loss`]) with the text positions `1..T_l` as
//! the label sequence (every position once, in order; blank 0) trains the LSTM; as in the
//! official code the LSTM *outputs* (tanh-bounded hidden states) are the CTC activations.
//!
//! **Padding** (mica's data is left-padded; the official code ran CTC over the padded
//! lengths): the LSTM runs over each sample's real source frames only (masked state, as in
//! [`crate::model::lstm`]); the CTC labels are the positions of the sample's real text
//! steps (`T_l - n_l + 1 ..= T_l`) and its window the real source frames; pseudo-aligned
//! rows on text padding are zero. A sample whose source has fewer real frames than its
//! text cannot be aligned monotonically: its CTC term is 0 (`zero_infinity`).
//!
//! **Loss scale.** warp-ctc (the official criterion) sums the per-sample losses over the
//! batch; mica takes the batch mean, times `model.baselines.ctc_weight` (set it to the
//! batch size to recover the official scale).

use super::ctc_loss::ctc_loss;
use crate::model::lstm::{length_mask, real_lengths, Lstm};
use crate::model::params::ParamSource;
use anyhow::{ensure, Result};
use candle_core::Tensor;

/// One source→text CTC alignment module (`ctc_a.*` or `ctc_v.*`).
#[derive(Debug, Clone)]
pub struct CtcAligner {
    /// The two LSTM layers (`{name}.lstm0`, `{name}.lstm1`), the last of width `T_l + 1`.
    pub lstms: [Lstm; 2],
    /// The text length `T_l` (number of position classes without the blank).
    pub out_len: usize,
}

/// The aligner's result.
#[derive(Debug, Clone)]
pub struct Aligned {
    /// The pseudo-aligned source on the text grid `[B, T_l, D_s]` (zero on text padding).
    pub seq: Tensor,
    /// Batch-mean CTC negative log-likelihood (scalar).
    pub ctc: Tensor,
}

impl CtcAligner {
    /// Builds `{name}.lstm0.*` (`in_dim -> T_l + 1`) and `{name}.lstm1.*`
    /// (`T_l + 1 -> T_l + 1`), PyTorch's two-layer `nn.LSTM` init.
    pub fn new(p: &mut dyn ParamSource, name: &str, in_dim: usize, out_len: usize) -> Result<Self> {
        ensure!(
            out_len > 0,
            "the CTC module needs a text length of at least 1"
        );
        let h = out_len + 1;
        Ok(CtcAligner {
            lstms: [
                Lstm::new(p, &format!("{name}.lstm0"), in_dim, h)?,
                Lstm::new(p, &format!("{name}.lstm1"), h, h)?,
            ],
            out_len,
        })
    }

    /// Aligns `x` `[B, T_s, D_s]` (left-padded) onto the text grid whose real lengths are
    /// `text_lens` (module docs).
    pub fn forward(&self, x: &Tensor, text_lens: &[usize]) -> Result<Aligned> {
        let (b, ts, _) = x.dims3()?;
        ensure!(
            text_lens.len() == b,
            "CTC module: {b} source samples but {} text lengths",
            text_lens.len()
        );
        let tl = self.out_len;
        let src_lens = real_lengths(x)?;
        let mask = length_mask(&src_lens, ts, x.device())?;
        let h = self.lstms[0].forward_seq(x, Some(&mask))?;
        let act = self.lstms[1].forward_seq(&h, Some(&mask))?; // [B, T_s, T_l + 1]
        let probs = candle_nn::ops::softmax(&act, 2)?;
        // Frames on source padding carry no mass (their x rows are zero anyway).
        let p = probs
            .narrow(2, 1, tl)?
            .broadcast_mul(&mask.unsqueeze(2)?)?
            .transpose(1, 2)?
            .contiguous()?; // [B, T_l, T_s]
        let text_mask = length_mask(text_lens, tl, x.device())?;
        let seq = p
            .matmul(&x.contiguous()?)?
            .broadcast_mul(&text_mask.unsqueeze(2)?)?;
        let targets: Vec<Vec<u32>> = text_lens
            .iter()
            .map(|&n| ((tl - n + 1) as u32..=tl as u32).collect())
            .collect();
        let starts: Vec<usize> = src_lens.iter().map(|&n| ts - n).collect();
        let lp = candle_nn::ops::log_softmax(&act, 2)?;
        let nll = ctc_loss(&lp, &targets, &starts, &src_lens, 0, true)?;
        Ok(Aligned {
            seq,
            ctc: nll.mean_all()?,
        })
    }
}

/// The CTC modules of audio→text and vision→text (`ctc_a`, `ctc_v`).
#[derive(Debug, Clone)]
pub struct CtcPair {
    /// Audio→text.
    pub audio: CtcAligner,
    /// Vision→text.
    pub vision: CtcAligner,
}

impl CtcPair {
    /// The pair when the config aligns with the CTC module (`baselines.align = ctc`), else
    /// none: the one place every classic baseline builds it from.
    pub fn for_config(
        p: &mut dyn ParamSource,
        cfg: &crate::model::config::ModelConfig,
    ) -> Result<Option<Self>> {
        match cfg.baselines.align {
            super::SeqAlign::Ctc => Ok(Some(CtcPair::new(p, cfg.orig_dims(), cfg.l_len)?)),
            super::SeqAlign::Nearest | super::SeqAlign::None => Ok(None),
        }
    }

    /// Builds `ctc_a.*` and `ctc_v.*` for text length `l_len`.
    pub fn new(p: &mut dyn ParamSource, dims: [usize; 3], l_len: usize) -> Result<Self> {
        Ok(CtcPair {
            audio: CtcAligner::new(p, "ctc_a", dims[1], l_len)?,
            vision: CtcAligner::new(p, "ctc_v", dims[2], l_len)?,
        })
    }

    /// Pseudo-aligned audio and vision on the text grid, and the summed CTC loss
    /// (audio→text + vision→text, as the official `ctc_loss`).
    pub fn align(
        &self,
        text: &Tensor,
        audio: &Tensor,
        vision: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let tl = text.dim(1)?;
        ensure!(
            tl == self.audio.out_len,
            "the CTC alignment module was built for text length {} (model.l_len) but the input text has {tl} steps",
            self.audio.out_len
        );
        let text_lens = real_lengths(text)?;
        let a = self.audio.forward(audio, &text_lens)?;
        let v = self.vision.forward(vision, &text_lens)?;
        Ok((a.seq, v.seq, (a.ctc + v.ctc)?))
    }
}
