//! The paper's remaining baseline rows (Tables 2–4) and MulT's CTC alignment module:
//! EF-/LF-LSTM on CTC-aligned input ([`AlignedLstm`]), RAVEN ([`raven`]), MCTN
//! ([`mctn`]), MFM ([`mfm`]) and Graph-MFN ([`gmfn`], on the MFN of [`mfn`] with the
//! Dynamic Fusion Graph of [`dfg`]). Each model's module docs cite the official sources
//! it follows.
//!
//! **Word alignment.** MFM and Graph-MFN (the paper's † rows) read word-aligned input:
//! `baselines.align = none` (their default) uses audio and vision as given and is refused
//! on data whose three lengths differ (`config::check_aligned`, the message names
//! `--align nearest|ctc` and the commands that write aligned data); `nearest` and `ctc`
//! bring unaligned audio and vision onto the words as for the other rows.
//!
//! **Auxiliary losses.** Models with a training objective beyond the task loss (the CTC
//! terms, MCTN's translation and cyclic losses) put its weighted sum, a scalar with
//! gradient, into `ForwardOutput::intermediates` under [`AUX_LOSS`] on every forward; the
//! trainer adds it to the training loss (`train::trainer::step_losses`). Evaluation
//! ignores it.

pub mod config;
pub mod ctc;
pub mod ctc_loss;
pub mod dfg;
pub mod gmfn;
pub mod mctn;
pub mod mfm;
pub mod mfn;
pub mod raven;

use super::config::{Arch, ModelConfig};
use super::ctx::Ctx;
use super::lstm::{EfLstm, LfLstm};
use super::mult::{ForwardOpts, ForwardOutput, Inputs};
use super::params::ParamSource;
use anyhow::Result;
use candle_core::Tensor;
pub use config::SeqAlign;
use ctc::CtcPair;

/// A model of this module, behind one `forward`. (One model exists per run, boxed once in
/// `Model`, so the size gap between the variants costs nothing worth a box.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Baseline {
    /// EF-/LF-LSTM on CTC-aligned input.
    Aligned(AlignedLstm),
    /// RAVEN.
    Raven(raven::Raven),
    /// MCTN.
    Mctn(mctn::Mctn),
    /// MFM.
    Mfm(mfm::Mfm),
    /// Graph-MFN.
    Gmfn(gmfn::Gmfn),
}

impl Baseline {
    /// Whether `cfg` is built by this module (RAVEN, MCTN, MFM, Graph-MFN, or an LSTM
    /// with `--align ctc`).
    pub fn handles(cfg: &ModelConfig) -> bool {
        is_aligned_lstm(cfg)
            || matches!(cfg.arch, Arch::Raven | Arch::Mctn | Arch::Mfm | Arch::Gmfn)
    }

    /// Builds the model `cfg` describes.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        Ok(match cfg.arch {
            Arch::Raven => Baseline::Raven(raven::Raven::new(p, cfg)?),
            Arch::Mctn => Baseline::Mctn(mctn::Mctn::new(p, cfg)?),
            Arch::Mfm => Baseline::Mfm(mfm::Mfm::new(p, cfg)?),
            Arch::Gmfn => Baseline::Gmfn(gmfn::Gmfn::new(p, cfg)?),
            _ => Baseline::Aligned(AlignedLstm::new(p, cfg)?),
        })
    }

    /// Runs the model.
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        match self {
            Baseline::Aligned(m) => m.forward(ctx, x, opts),
            Baseline::Raven(m) => m.forward(ctx, x, opts),
            Baseline::Mctn(m) => m.forward(ctx, x, opts),
            Baseline::Mfm(m) => m.forward(ctx, x, opts),
            Baseline::Gmfn(m) => m.forward(ctx, x, opts),
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Baseline::Aligned(m) => &m.cfg,
            Baseline::Raven(m) => &m.cfg,
            Baseline::Mctn(m) => &m.cfg,
            Baseline::Mfm(m) => &m.cfg,
            Baseline::Gmfn(m) => &m.cfg,
        }
    }
}

/// Key of the auxiliary training loss in `ForwardOutput::intermediates` (module docs).
pub const AUX_LOSS: &str = "aux_loss";

/// EF-LSTM or LF-LSTM run on CTC-pseudo-aligned audio and vision (`--align ctc`, MulT's
/// setting for those rows): the CTC modules map audio and vision onto the text grid, the
/// inner model runs on (text, aligned audio, aligned vision) unchanged, and the CTC loss
/// (times `baselines.ctc_weight`) is the auxiliary loss.
#[derive(Debug, Clone)]
pub struct AlignedLstm {
    /// Its configuration.
    pub cfg: ModelConfig,
    /// `ctc_a.*`, `ctc_v.*`.
    pub ctc: CtcPair,
    /// The EF- or LF-LSTM (parameter names as without alignment).
    pub inner: LstmKind,
}

/// The LSTM baseline inside an [`AlignedLstm`].
#[derive(Debug, Clone)]
pub enum LstmKind {
    /// Early fusion.
    Ef(EfLstm),
    /// Late fusion.
    Lf(LfLstm),
}

impl AlignedLstm {
    /// Builds the CTC modules, then the inner model.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let ctc = CtcPair::new(p, cfg.orig_dims(), cfg.l_len)?;
        let inner = match cfg.arch {
            Arch::EfLstm => LstmKind::Ef(EfLstm::new(p, cfg)?),
            Arch::LfLstm => LstmKind::Lf(LfLstm::new(p, cfg)?),
            other => anyhow::bail!("--align ctc wraps ef-lstm or lf-lstm, not {other:?}"),
        };
        Ok(AlignedLstm {
            cfg: cfg.clone(),
            ctc,
            inner,
        })
    }

    /// The forward pass; the intermediates always hold [`AUX_LOSS`].
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        super::mult::check_shapes(&self.cfg, x)?;
        let (audio, vision, ctc) = self.ctc.align(&x.text, &x.audio, &x.vision)?;
        let aligned = Inputs {
            text: x.text.clone(),
            audio,
            vision,
            times: None,
        };
        let mut out = match &self.inner {
            LstmKind::Ef(m) => m.forward(ctx, &aligned, opts)?,
            LstmKind::Lf(m) => m.forward(ctx, &aligned, opts)?,
        };
        // `valid` describes the inputs as given (the raw audio/vision grids).
        out.valid = raw_valid(x)?;
        out.intermediates
            .insert(AUX_LOSS.into(), (ctc * self.cfg.baselines.ctc_weight)?);
        Ok(out)
    }
}

/// `[B * T]` real-step flags of each raw modality (left padding).
pub fn raw_valid(x: &Inputs) -> Result<[Vec<bool>; 3]> {
    let mut out: [Vec<bool>; 3] = Default::default();
    for (m, t) in [&x.text, &x.audio, &x.vision].into_iter().enumerate() {
        let len = t.dim(1)?;
        out[m] = super::lstm::real_lengths(t)?
            .into_iter()
            .flat_map(|n| (0..len).map(move |s| s + n >= len))
            .collect();
    }
    Ok(out)
}

/// Audio and vision on the text grid by `cfg.baselines.align`: nearest-time resampling
/// (no loss), the CTC modules (with their weighted loss), or as given (`none`, data
/// already word-aligned; other lengths are refused as [`config::check_aligned`] says).
pub fn onto_text_grid(
    cfg: &ModelConfig,
    ctc: Option<&CtcPair>,
    x: &Inputs,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    match (cfg.baselines.align, ctc) {
        (SeqAlign::Ctc, Some(c)) => {
            let (a, v, l) = c.align(&x.text, &x.audio, &x.vision)?;
            Ok((a, v, Some((l * cfg.baselines.ctc_weight)?)))
        }
        (SeqAlign::None, _) => {
            let lens = [x.text.dim(1)?, x.audio.dim(1)?, x.vision.dim(1)?];
            config::check_aligned(cfg.arch.name(), SeqAlign::None, lens)?;
            Ok((x.audio.clone(), x.vision.clone(), None))
        }
        _ => {
            let tl = x.text.dim(1)?;
            let lt = super::lstm::real_lengths(&x.text)?;
            let la = super::lstm::real_lengths(&x.audio)?;
            let lv = super::lstm::real_lengths(&x.vision)?;
            let a = super::lstm::resample_to(&x.audio, &la, &lt, tl)?;
            let v = super::lstm::resample_to(&x.vision, &lv, &lt, tl)?;
            Ok((a, v, None))
        }
    }
}

/// Whether the configuration wraps an LSTM baseline in the CTC modules.
pub fn is_aligned_lstm(cfg: &ModelConfig) -> bool {
    cfg.arch.is_lstm() && cfg.baselines.align == SeqAlign::Ctc
}

#[cfg(test)]
mod tests;
