//! The hyper-parameters of the classic baselines (`model.baselines.*`, every one reachable
//! through `--set model.baselines.KEY=VALUE`), with serde defaults so configs written
//! before they existed still load.
//!
//! The MFN / MFM defaults are the official MFM code's best MOSI configuration
//! (pliang279/factorized `mfm_mosi.py`, `best_acc`): LSTHM widths 88 / 64 / 48, memory 64,
//! attention and gate networks 128 units with dropout 0.5, output network 64 / 0.5;
//! factors z_y 32, z_l 32, z_a 8, z_v 80, f_y 16, f_l 88, f_a 8, f_v 8; loss weights
//! λ_mmd 1, λ_l 1, λ_a 0.01, λ_v 0.5.

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
    /// None: the data is already word-aligned (text, audio and vision of one padded
    /// length, step `t` of each describing word `t`); audio and vision are used as given
    /// (EF-LSTM still resamples by real lengths, the identity on such data). Refused on
    /// unaligned data ([`check_aligned`]) for every row but LF-LSTM. MFM's and Graph-MFN's
    /// default.
    None,
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
    /// MFN (in MFM and Graph-MFN): hidden size of the text LSTHM.
    pub mfn_hidden_l: usize,
    /// MFN: hidden size of the acoustic LSTHM.
    pub mfn_hidden_a: usize,
    /// MFN: hidden size of the visual LSTHM.
    pub mfn_hidden_v: usize,
    /// MFN: size of the multi-view gated memory.
    pub mfn_mem: usize,
    /// MFN: hidden units of the delta-memory attention network and of the network making
    /// the memory proposal ĉ (official `NN1Config`, `NN2Config`).
    pub mfn_att_hidden: usize,
    /// MFN: dropout inside those two networks.
    pub mfn_att_dropout: f32,
    /// MFN: hidden units of the memory's retain / update gate networks γ1, γ2.
    pub mfn_gamma_hidden: usize,
    /// MFN: dropout inside the gate networks.
    pub mfn_gamma_dropout: f32,
    /// Graph-MFN: hidden units of its output network (official `outConfig`).
    pub mfn_out_hidden: usize,
    /// Graph-MFN: dropout inside the output network.
    pub mfn_out_dropout: f32,
    /// Graph-MFN: width of every Dynamic Fusion Graph vertex beyond the unimodal ones.
    pub gmfn_node: usize,
    /// Graph-MFN: hidden units of each DFG vertex network and of the efficacy network.
    pub gmfn_dfg_hidden: usize,
    /// MFM: size of the multimodal discriminative factor z_y.
    pub mfm_zy: usize,
    /// MFM: size of the text generative factor z_l.
    pub mfm_zl: usize,
    /// MFM: size of the acoustic generative factor z_a.
    pub mfm_za: usize,
    /// MFM: size of the visual generative factor z_v.
    pub mfm_zv: usize,
    /// MFM: size of the decoded discriminative factor f_y.
    pub mfm_fy: usize,
    /// MFM: size of the decoded text factor f_l.
    pub mfm_fl: usize,
    /// MFM: size of the decoded acoustic factor f_a.
    pub mfm_fa: usize,
    /// MFM: size of the decoded visual factor f_v.
    pub mfm_fv: usize,
    /// MFM: dropout of the z_y → f_y network.
    pub mfm_zy_dropout: f32,
    /// MFM: dropout of the z_l → f_l network.
    pub mfm_zl_dropout: f32,
    /// MFM: dropout of the z_a → f_a network.
    pub mfm_za_dropout: f32,
    /// MFM: dropout of the z_v → f_v network.
    pub mfm_zv_dropout: f32,
    /// MFM: dropout of the f_y → ŷ network.
    pub mfm_y_dropout: f32,
    /// MFM: weight λ_mmd of the prior-matching MMD terms.
    pub mfm_mmd_weight: f64,
    /// MFM: weight λ_l of the text reconstruction loss.
    pub mfm_recon_l: f64,
    /// MFM: weight λ_a of the acoustic reconstruction loss.
    pub mfm_recon_a: f64,
    /// MFM: weight λ_v of the visual reconstruction loss.
    pub mfm_recon_v: f64,
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
            mfn_hidden_l: 88,
            mfn_hidden_a: 64,
            mfn_hidden_v: 48,
            mfn_mem: 64,
            mfn_att_hidden: 128,
            mfn_att_dropout: 0.5,
            mfn_gamma_hidden: 128,
            mfn_gamma_dropout: 0.5,
            mfn_out_hidden: 64,
            mfn_out_dropout: 0.5,
            gmfn_node: 20,
            gmfn_dfg_hidden: 100,
            mfm_zy: 32,
            mfm_zl: 32,
            mfm_za: 8,
            mfm_zv: 80,
            mfm_fy: 16,
            mfm_fl: 88,
            mfm_fa: 8,
            mfm_fv: 8,
            mfm_zy_dropout: 0.0,
            mfm_zl_dropout: 0.2,
            mfm_za_dropout: 0.2,
            mfm_zv_dropout: 0.7,
            mfm_y_dropout: 0.0,
            mfm_mmd_weight: 1.0,
            mfm_recon_l: 1.0,
            mfm_recon_a: 0.01,
            mfm_recon_v: 0.5,
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
            ("mfm_mmd_weight", self.mfm_mmd_weight),
            ("mfm_recon_l", self.mfm_recon_l),
            ("mfm_recon_a", self.mfm_recon_a),
            ("mfm_recon_v", self.mfm_recon_v),
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
            ("mfn_hidden_l", self.mfn_hidden_l),
            ("mfn_hidden_a", self.mfn_hidden_a),
            ("mfn_hidden_v", self.mfn_hidden_v),
            ("mfn_mem", self.mfn_mem),
            ("mfn_att_hidden", self.mfn_att_hidden),
            ("mfn_gamma_hidden", self.mfn_gamma_hidden),
            ("mfn_out_hidden", self.mfn_out_hidden),
            ("gmfn_node", self.gmfn_node),
            ("gmfn_dfg_hidden", self.gmfn_dfg_hidden),
            ("mfm_zy", self.mfm_zy),
            ("mfm_zl", self.mfm_zl),
            ("mfm_za", self.mfm_za),
            ("mfm_zv", self.mfm_zv),
            ("mfm_fy", self.mfm_fy),
            ("mfm_fl", self.mfm_fl),
            ("mfm_fa", self.mfm_fa),
            ("mfm_fv", self.mfm_fv),
        ] {
            ensure!(
                n > 0 && n <= 4096,
                "model option `baselines.{name}` must be in 1..=4096, got {n}"
            );
        }
        for (name, p) in [
            ("raven_dropout", self.raven_dropout),
            ("mctn_dropout", self.mctn_dropout),
            ("mfn_att_dropout", self.mfn_att_dropout),
            ("mfn_gamma_dropout", self.mfn_gamma_dropout),
            ("mfn_out_dropout", self.mfn_out_dropout),
            ("mfm_zy_dropout", self.mfm_zy_dropout),
            ("mfm_zl_dropout", self.mfm_zl_dropout),
            ("mfm_za_dropout", self.mfm_za_dropout),
            ("mfm_zv_dropout", self.mfm_zv_dropout),
            ("mfm_y_dropout", self.mfm_y_dropout),
        ] {
            ensure!(
                (0.0..1.0).contains(&p),
                "model option `baselines.{name}` must be in [0, 1), got {p}"
            );
        }
        Ok(())
    }
}

/// Refuses `align = none` (use the data as given) when the data is not word-aligned:
/// `lens` are the padded (text, audio, vision) lengths; `variant` names the model in the
/// message, which names the options and commands that align the data.
pub fn check_aligned(variant: &str, align: SeqAlign, lens: [usize; 3]) -> Result<()> {
    if align != SeqAlign::None || (lens[0] == lens[1] && lens[1] == lens[2]) {
        return Ok(());
    }
    anyhow::bail!(
        "--variant {variant} needs word-aligned input (text, audio and vision of one length), \
         but this data's lengths are {} / {} / {}: train with `--align nearest` (nearest-time \
         resampling onto the words) or `--align ctc` (MulT's CTC module), or give aligned data \
         (`mica synth --aligned`, `mica import-csd --align words`, MulT's `*_data.pkl`)",
        lens[0],
        lens[1],
        lens[2]
    )
}
