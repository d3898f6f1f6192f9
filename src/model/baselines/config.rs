//! The hyper-parameters of the classic baselines (`model.baselines.*`, every one reachable
//! through `--set model.baselines.KEY=VALUE`), with serde defaults so configs written
//! before they existed still load.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// How a baseline that needs one time grid brings audio and vision onto the text's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SeqAlign {
    /// Nearest-time resampling (no parameters; `lstm::resample_to`).
    #[default]
    Nearest,
    /// MulT's CTC alignment module: learned soft "pseudo-alignment" plus a CTC loss
    /// (`baselines::ctc`).
    Ctc,
}

/// Hyper-parameters of the CTC module, RAVEN and MCTN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Alignment of audio/vision onto the text grid for EF-LSTM, LF-LSTM, RAVEN, MCTN
    /// (`--align`).
    pub align: SeqAlign,
    /// Weight of the CTC losses (audio→text + vision→text, each the batch mean of the
    /// per-sample negative log-likelihood) in the training loss.
    pub ctc_weight: f64,
    /// RAVEN: hidden size of the acoustic and visual sub-network LSTMs.
    pub raven_nonverbal_hidden: usize,
    /// RAVEN: hidden size of the word-level LSTM.
    pub raven_word_hidden: usize,
    /// RAVEN: the threshold β of the shift's scale `α = min(β ‖e‖ / ‖h_m‖, 1)`.
    pub raven_shift_beta: f64,
    /// RAVEN: dropout on the word-level LSTM's last state.
    pub raven_dropout: f32,
    /// MCTN: hidden size of the encoders and decoders.
    pub mctn_hidden: usize,
    /// MCTN: hidden size of the regression LSTM over the joint representation.
    pub mctn_reg_hidden: usize,
    /// MCTN: weight of the translation losses (text→vision, joint→audio).
    pub mctn_trans_weight: f64,
    /// MCTN: weight of the cyclic (back-translation vision→text) loss.
    pub mctn_cycle_weight: f64,
    /// MCTN: dropout on the regression LSTM's last state.
    pub mctn_dropout: f32,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            align: SeqAlign::Nearest,
            ctc_weight: 1.0,
            raven_nonverbal_hidden: 16,
            raven_word_hidden: 64,
            raven_shift_beta: 0.5,
            raven_dropout: 0.1,
            mctn_hidden: 64,
            mctn_reg_hidden: 32,
            mctn_trans_weight: 0.1,
            mctn_cycle_weight: 0.1,
            mctn_dropout: 0.1,
        }
    }
}

impl BaselineConfig {
    /// Checks the values; errors name the `model.baselines.*` option.
    pub fn validate(&self) -> Result<()> {
        for (name, w) in [
            ("ctc_weight", self.ctc_weight),
            ("raven_shift_beta", self.raven_shift_beta),
            ("mctn_trans_weight", self.mctn_trans_weight),
            ("mctn_cycle_weight", self.mctn_cycle_weight),
        ] {
            ensure!(
                w.is_finite() && w >= 0.0,
                "model option `baselines.{name}` must be a finite number >= 0, got {w}"
            );
        }
        for (name, n) in [
            ("raven_nonverbal_hidden", self.raven_nonverbal_hidden),
            ("raven_word_hidden", self.raven_word_hidden),
            ("mctn_hidden", self.mctn_hidden),
            ("mctn_reg_hidden", self.mctn_reg_hidden),
        ] {
            ensure!(
                n > 0 && n <= 4096,
                "model option `baselines.{name}` must be in 1..=4096, got {n}"
            );
        }
        for (name, p) in [
            ("raven_dropout", self.raven_dropout),
            ("mctn_dropout", self.mctn_dropout),
        ] {
            ensure!(
                (0.0..1.0).contains(&p),
                "model option `baselines.{name}` must be in [0, 1), got {p}"
            );
        }
        Ok(())
    }
}
