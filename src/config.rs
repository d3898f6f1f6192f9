//! mica's one typed configuration (serde): model, alignment losses, training, data.
//! Presets reproduce the paper's Table 1; every field is reachable from the CLI
//! (`--set section.key=value` for the less common ones) and from a TOML file.

use crate::model::attention::AttentionKernel;
use crate::model::config::{Arch, GateBias, KvSource, ModelConfig, Partial};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Which dataset's task: decides the loss, the output width and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// CMU-MOSI: one sentiment score in [-3, 3] per sample.
    Mosi,
    /// CMU-MOSEI: one sentiment score in [-3, 3] per sample.
    Mosei,
    /// IEMOCAP: four binary emotions, predictions are 2 logits per emotion.
    Iemocap,
}

impl Task {
    /// The lower-case name (`mosi`, `mosei`, `iemocap`).
    pub fn name(self) -> &'static str {
        match self {
            Task::Mosi => "mosi",
            Task::Mosei => "mosei",
            Task::Iemocap => "iemocap",
        }
    }

    /// True for the regression (sentiment) tasks.
    pub fn is_sentiment(self) -> bool {
        !matches!(self, Task::Iemocap)
    }

    /// Prediction values per sample (1 for sentiment, 8 logits for IEMOCAP).
    pub fn pred_width(self) -> usize {
        if self.is_sentiment() {
            1
        } else {
            8
        }
    }

    /// Label values per sample (1 for sentiment, 4 binary labels for IEMOCAP).
    pub fn label_width(self) -> usize {
        if self.is_sentiment() {
            1
        } else {
            4
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which model + loss combination to train (paper Table 5 and baselines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The official MulT architecture (alignment losses off unless alpha/beta are set).
    Mult,
    /// MICA backbone without alignment (alpha = beta = 0).
    Backbone,
    /// Backbone + MMD marginal alignment (beta = 0).
    Mmd,
    /// Backbone + MMD + propagated element-level alignment (the full method).
    Mica,
    /// MICA without propagation of the PEA masks.
    MicaNopropagate,
    /// Early-fusion LSTM baseline (paper Tables 2-4; no alignment losses).
    EfLstm,
    /// Late-fusion LSTM baseline (paper Tables 2-4; no alignment losses).
    LfLstm,
    /// RAVEN baseline (paper Tables 2-4; audio/vision CTC-aligned onto the text grid).
    Raven,
    /// MCTN baseline (paper Tables 2-4; audio/vision CTC-aligned onto the text grid).
    Mctn,
    /// MFM baseline (paper Tables 2-4, †: needs word-aligned data, or `--align`).
    Mfm,
    /// Graph-MFN baseline (paper Tables 2-4, †: needs word-aligned data, or `--align`).
    Gmfn,
}

impl Variant {
    /// The architecture the variant uses.
    pub fn arch(self) -> Arch {
        match self {
            Variant::Mult => Arch::Mult,
            Variant::EfLstm => Arch::EfLstm,
            Variant::LfLstm => Arch::LfLstm,
            Variant::Raven => Arch::Raven,
            Variant::Mctn => Arch::Mctn,
            Variant::Mfm => Arch::Mfm,
            Variant::Gmfn => Arch::Gmfn,
            Variant::Backbone | Variant::Mmd | Variant::Mica | Variant::MicaNopropagate => {
                Arch::Mica
            }
        }
    }
    /// The recurrent baselines of the paper's Tables 2-4 (no crossmodal attention).
    pub const BASELINES: [Variant; 2] = [Variant::EfLstm, Variant::LfLstm];
    /// The classic rows added with the CTC module (paper Tables 2-4).
    pub const CLASSIC: [Variant; 4] = [Variant::Mfm, Variant::Gmfn, Variant::Raven, Variant::Mctn];
    /// Every variant: the LSTM baselines, the classic rows, then the ablation.
    pub const ALL: [Variant; 11] = [
        Variant::EfLstm,
        Variant::LfLstm,
        Variant::Mfm,
        Variant::Gmfn,
        Variant::Raven,
        Variant::Mctn,
        Variant::Mult,
        Variant::Backbone,
        Variant::Mmd,
        Variant::Mica,
        Variant::MicaNopropagate,
    ];
    /// True when the variant has crossmodal attention (so alignment losses can apply).
    pub fn has_attention(self) -> bool {
        self.arch().has_attention()
    }
    /// All variants of the ablation (Table 5 + MulT).
    pub const ABLATION: [Variant; 5] = [
        Variant::Mult,
        Variant::Backbone,
        Variant::Mmd,
        Variant::Mica,
        Variant::MicaNopropagate,
    ];
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Mult => "mult",
            Variant::Backbone => "backbone",
            Variant::Mmd => "mmd",
            Variant::Mica => "mica",
            Variant::MicaNopropagate => "mica-nopropagate",
            Variant::EfLstm => "ef-lstm",
            Variant::LfLstm => "lf-lstm",
            Variant::Raven => "raven",
            Variant::Mctn => "mctn",
            Variant::Mfm => "mfm",
            Variant::Gmfn => "gmfn",
        }
    }
}

/// Estimator of the MMD between keys and queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MmdEstimator {
    /// Biased V-statistic on at most `mmd_max_samples` seeded samples per side.
    #[default]
    Sampled,
    /// Linear-time estimator (Gretton et al. 2012, pairs of consecutive samples).
    Linear,
}

/// How L_e is reduced within a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LeReduction {
    /// Mean over the selected pairs of a block (default: independent of batch size).
    #[default]
    Mean,
    /// The paper's literal sum over samples, heads and pairs.
    Sum,
}

/// The alignment losses (spec/mica.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignConfig {
    /// Weight of the MMD loss L_m.
    pub alpha: f64,
    /// Weight of the element-level loss L_e.
    pub beta: f64,
    /// Share of attention entries selected by PEA per sample and head.
    pub tau: f64,
    /// Union of the PEA masks across the layers of a block.
    pub propagate: bool,
    /// Reduction of L_e within a block.
    pub le_reduction: LeReduction,
    /// Samples per side per block for the sampled MMD.
    pub mmd_max_samples: usize,
    /// MMD estimator.
    pub mmd_estimator: MmdEstimator,
    /// Scale of L_e: `absolute` (the paper's squared distances) or `relative` (each block's
    /// distance divided by the mean squared distance of all its real query/key pairs, so that
    /// shrinking or collapsing the queries and keys does not lower the loss).
    #[serde(default)]
    pub le_scale: LeScale,
}

/// How L_e measures the distance of the selected query/key pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LeScale {
    /// The paper's squared Euclidean distance of the selected pairs. Its minimum is reached
    /// by shrinking every query and key, or by mapping them all to one point: both make the
    /// attention uniform (docs/learning.md).
    #[default]
    Absolute,
    /// The selected pairs' mean squared distance divided by the mean squared distance over
    /// ALL real query/key pairs of the same samples: invariant to a common scale and to a
    /// collapse onto one point, so it is lowered only by bringing the selected pairs closer
    /// than the rest (contrastive); the attention cannot be flattened to satisfy it.
    Relative,
}

impl Default for AlignConfig {
    fn default() -> Self {
        AlignConfig {
            alpha: 0.0,
            beta: 0.0,
            tau: 0.25,
            propagate: true,
            le_reduction: LeReduction::Mean,
            mmd_max_samples: 1024,
            mmd_estimator: MmdEstimator::Sampled,
            le_scale: LeScale::Absolute,
        }
    }
}

/// Training protocol (spec/training.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Global gradient-norm clip.
    pub clip: f64,
    /// ReduceLROnPlateau patience (MulT's `when`).
    pub when: usize,
    /// LR decay factor of the scheduler.
    pub lr_factor: f64,
    /// Seed of init, shuffling, dropout and MMD sampling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 40,
            batch_size: 24,
            lr: 1e-3,
            clip: 0.8,
            when: 20,
            lr_factor: 0.1,
            seed: 1111,
        }
    }
}

/// Everything a run needs, saved with every run and checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Variant (architecture + losses).
    pub variant: Variant,
    /// Task (loss, metrics).
    pub task: Task,
    /// Model hyper-parameters.
    pub model: ModelConfig,
    /// Alignment losses.
    #[serde(default)]
    pub align: AlignConfig,
    /// Training protocol.
    #[serde(default)]
    pub train: TrainConfig,
}

/// MulT's model defaults (spec/mult.md) for the given input shapes.
pub fn mult_model_defaults(
    orig_dims: [usize; 3],
    lens: [usize; 3],
    output_dim: usize,
) -> ModelConfig {
    ModelConfig {
        arch: Arch::Mult,
        orig_d_l: orig_dims[0],
        orig_d_a: orig_dims[1],
        orig_d_v: orig_dims[2],
        l_len: lens[0],
        a_len: lens[1],
        v_len: lens[2],
        d: 30,
        num_heads: 5,
        layers: 5,
        kernel_l: 1,
        kernel_a: 1,
        kernel_v: 1,
        attn_dropout: 0.1,
        attn_dropout_a: 0.0,
        attn_dropout_v: 0.0,
        relu_dropout: 0.1,
        res_dropout: 0.1,
        out_dropout: 0.0,
        embed_dropout: 0.25,
        attn_mask: true,
        output_dim,
        partial: Partial::All,
        kv_source: KvSource::Layerwise,
        gate_bias: GateBias::PerPosition,
        attention: AttentionKernel::default(),
        lstm_hidden: 64,
        lstm_mod_hidden: 32,
        lstm_dropout: 0.1,
        positions: Default::default(),
        time_step: 0.01,
        time_bias: 0.0,
        baselines: Default::default(),
    }
}

/// A hyper-parameter preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Paper Table 1, CMU-MOSI.
    Mosi,
    /// Paper Table 1, CMU-MOSEI.
    Mosei,
    /// Paper Table 1, IEMOCAP.
    Iemocap,
    /// A small, fast configuration for the built-in `synth-small` benchmark.
    SynthSmall,
    /// The official MulT code's `main.py` defaults (d 30, 5 heads, 5 layers, conv kernels 1,
    /// batch 24, lr 1e-3, 40 epochs, clip 0.8, `when` 20, its dropouts): what users of the
    /// official code ran. MICA variants keep the paper's α 0.8, β 0.5, τ 0.25.
    MultOfficial,
}

impl Config {
    /// The config of `preset` for data of the given shapes, with `variant` applied.
    /// Values the paper does not give come from MulT's defaults (spec/mica.md "Presets").
    pub fn preset(
        preset: Preset,
        variant: Variant,
        task: Task,
        orig_dims: [usize; 3],
        lens: [usize; 3],
    ) -> Config {
        let mut model = mult_model_defaults(orig_dims, lens, task.pred_width());
        let mut train = TrainConfig::default();
        let mut align = AlignConfig::default();
        model.d = 40;
        // (batch, epochs, lr, heads, tau, alpha, beta, kernels L/A/V, layers)
        let (batch, epochs, lr, heads, tau, alpha, beta, k, layers) = match preset {
            Preset::Mosei => (64, 120, 5e-4, 10, 0.3, 0.8, 0.5, [3, 3, 3], 6),
            Preset::Mosi => (64, 120, 1e-3, 8, 0.25, 0.8, 0.5, [3, 3, 3], 4),
            // Table 1 gives kernels L/V/A = 3/3/5: audio 5.
            Preset::Iemocap => (32, 80, 1e-3, 10, 0.25, 0.7, 0.5, [3, 5, 3], 4),
            // β from the validation loss with the time bias (0.05 / 0.2 / 0.5, seed 1111:
            // 0.773 / 0.836 / 0.936; docs/learning.md §6).
            Preset::SynthSmall => (32, 12, 2e-3, 4, 0.25, 0.8, 0.05, [1, 1, 1], 2),
            Preset::MultOfficial => (24, 40, 1e-3, 5, 0.25, 0.8, 0.5, [1, 1, 1], 5),
        };
        if preset == Preset::MultOfficial {
            model.d = 30; // models.py: self.d_l, self.d_a, self.d_v = 30, 30, 30
        }
        if preset == Preset::SynthSmall {
            model.d = 16;
            model.embed_dropout = 0.1;
            // Small batches of short sequences: 256 samples per side already cover most
            // elements of a batch, at a sixteenth of the kernel-matrix cost.
            align.mmd_max_samples = 256;
            // Attention that knows when elements are (docs/learning.md §5): without it
            // neither MulT nor MICA finds the co-occurring elements of this benchmark.
            // Not in the paper; `--set model.time_bias=0` gives the paper's models.
            model.time_bias = 0.1;
        }
        train.batch_size = batch;
        train.epochs = epochs;
        train.lr = lr;
        model.num_heads = heads;
        model.kernel_l = k[0];
        model.kernel_a = k[1];
        model.kernel_v = k[2];
        model.layers = layers;
        align.tau = tau;
        align.alpha = alpha;
        align.beta = beta;
        let mut cfg = Config {
            variant,
            task,
            model,
            align,
            train,
        };
        cfg.apply_variant();
        cfg.classic_preset(preset);
        cfg
    }

    /// The classic baselines' hyper-parameters: unaligned data reaches RAVEN and MCTN
    /// through MulT's CTC module; MCTN takes its official hierarchical config
    /// (hainow/MCTN `configs/hierarchical_mctn.yaml`: hidden 32, regression hidden 32,
    /// loss weights 0.1, Adam lr 1e-4) except on `synth-small`, which keeps its lr.
    fn classic_preset(&mut self, preset: Preset) {
        use crate::model::baselines::SeqAlign;
        let b = &mut self.model.baselines;
        match self.variant {
            Variant::Raven => b.align = SeqAlign::Ctc,
            Variant::Mctn => {
                b.align = SeqAlign::Ctc;
                if preset != Preset::SynthSmall {
                    self.train.lr = 1e-4;
                }
            }
            // Word-aligned data as given (refused on unaligned data, naming `--align`);
            // the official MFM code trains with Adam's default lr 1e-3.
            Variant::Mfm | Variant::Gmfn => {
                b.align = SeqAlign::None;
                if preset != Preset::SynthSmall {
                    self.train.lr = 1e-3;
                }
            }
            _ => {}
        }
    }

    /// Sets the architecture and switches the alignment losses the variant excludes off.
    pub fn apply_variant(&mut self) {
        self.model.arch = self.variant.arch();
        match self.variant {
            Variant::Mult => {
                self.model.kv_source = KvSource::Lowlevel;
                self.align.alpha = 0.0;
                self.align.beta = 0.0;
            }
            Variant::Backbone | Variant::EfLstm | Variant::LfLstm => {
                self.align.alpha = 0.0;
                self.align.beta = 0.0;
            }
            Variant::Raven | Variant::Mctn | Variant::Mfm | Variant::Gmfn => {
                self.align.alpha = 0.0;
                self.align.beta = 0.0;
            }
            Variant::Mmd => self.align.beta = 0.0,
            Variant::Mica => self.align.propagate = true,
            Variant::MicaNopropagate => self.align.propagate = false,
        }
    }

    /// Checks every value; errors name the option.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        if self.model.output_dim != self.task.pred_width() {
            bail!(
                "task {:?} needs output_dim {}, the model has {}",
                self.task,
                self.task.pred_width(),
                self.model.output_dim
            );
        }
        let a = &self.align;
        anyhow::ensure!(
            a.alpha >= 0.0 && a.alpha.is_finite(),
            "option `alpha` must be >= 0, got {}",
            a.alpha
        );
        anyhow::ensure!(
            a.beta >= 0.0 && a.beta.is_finite(),
            "option `beta` must be >= 0, got {}",
            a.beta
        );
        anyhow::ensure!(
            a.tau > 0.0 && a.tau <= 1.0,
            "option `tau` must be in (0, 1], got {}",
            a.tau
        );
        anyhow::ensure!(
            a.mmd_max_samples >= 2,
            "option `mmd_max_samples` must be at least 2"
        );
        let t = &self.train;
        anyhow::ensure!(t.batch_size >= 1, "option `batch_size` must be at least 1");
        anyhow::ensure!(
            t.lr > 0.0 && t.lr.is_finite(),
            "option `lr` must be positive, got {}",
            t.lr
        );
        anyhow::ensure!(
            t.clip > 0.0,
            "option `clip` must be positive, got {}",
            t.clip
        );
        anyhow::ensure!(
            t.lr_factor > 0.0 && t.lr_factor < 1.0,
            "option `lr_factor` must be in (0, 1)"
        );
        Ok(())
    }

    /// Reads a config from JSON (checkpoints, runs) or TOML (user files), by extension.
    pub fn from_file(path: &std::path::Path) -> Result<Config> {
        let text =
            crate::durable::read_string_capped(path, crate::durable::SMALL_FILE_CAP, "config")?;
        let cfg: Config = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).with_context(|| format!("{}: bad config", path.display()))?
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{}: bad config", path.display()))?
        };
        cfg.validate()
            .with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(cfg)
    }

    /// Applies one `section.key=value` override (value parsed as JSON, else as a string).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (path, value) = assignment
            .split_once('=')
            .with_context(|| format!("--set `{assignment}`: expected section.key=value"))?;
        let mut json = serde_json::to_value(&*self)?;
        let mut slot = &mut json;
        for part in path.split('.') {
            slot = slot
                .get_mut(part)
                .with_context(|| format!("--set `{assignment}`: unknown option `{path}`"))?;
        }
        let parsed: serde_json::Value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        *slot = parsed;
        *self = serde_json::from_value(json)
            .with_context(|| format!("--set `{assignment}`: bad value"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_table_1() {
        let c = Config::preset(
            Preset::Iemocap,
            Variant::Mica,
            Task::Iemocap,
            [300, 74, 35],
            [20, 400, 500],
        );
        assert_eq!(
            (
                c.train.batch_size,
                c.train.epochs,
                c.model.num_heads,
                c.model.layers
            ),
            (32, 80, 10, 4)
        );
        assert_eq!(
            (c.model.kernel_l, c.model.kernel_a, c.model.kernel_v),
            (3, 5, 3)
        );
        assert_eq!((c.align.alpha, c.align.beta, c.align.tau), (0.7, 0.5, 0.25));
        assert_eq!(c.model.output_dim, 8);
        c.validate().unwrap();
        let m = Config::preset(
            Preset::Mosei,
            Variant::Backbone,
            Task::Mosei,
            [300, 74, 35],
            [50, 500, 500],
        );
        assert_eq!(
            (m.train.lr, m.model.layers, m.align.alpha, m.align.beta),
            (5e-4, 6, 0.0, 0.0)
        );
    }

    #[test]
    fn mult_official_preset_is_main_py_defaults() {
        let c = Config::preset(
            Preset::MultOfficial,
            Variant::Mult,
            Task::Mosi,
            [300, 5, 20],
            [50, 375, 500],
        );
        let m = &c.model;
        assert_eq!((m.d, m.num_heads, m.layers), (30, 5, 5));
        assert_eq!(m.kernels(), [1, 1, 1]);
        assert_eq!(
            (
                m.attn_dropout,
                m.attn_dropout_a,
                m.attn_dropout_v,
                m.relu_dropout
            ),
            (0.1, 0.0, 0.0, 0.1)
        );
        assert_eq!(
            (m.res_dropout, m.out_dropout, m.embed_dropout),
            (0.1, 0.0, 0.25)
        );
        assert!(m.attn_mask);
        let t = &c.train;
        assert_eq!(
            (t.batch_size, t.epochs, t.lr, t.clip, t.when),
            (24, 40, 1e-3, 0.8, 20)
        );
        assert_eq!((c.align.alpha, c.align.beta), (0.0, 0.0));
    }

    #[test]
    fn set_overrides_and_rejects_unknown_keys() {
        let mut c = Config::preset(
            Preset::Mosi,
            Variant::Mica,
            Task::Mosi,
            [300, 5, 20],
            [50, 375, 500],
        );
        c.set("align.tau=0.1").unwrap();
        c.set("model.kv_source=lowlevel").unwrap();
        assert_eq!(c.align.tau, 0.1);
        assert_eq!(c.model.kv_source, KvSource::Lowlevel);
        let e = c.set("model.nope=3").unwrap_err().to_string();
        assert!(e.contains("unknown option `model.nope`"), "{e}");
        assert!(c.set("align.tau=abc").is_err());
    }
}
