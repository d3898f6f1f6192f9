//! Options shared by the commands that build a config or read data.

use crate::config::{Config, Preset, Task, Variant};
use crate::data::source::load_dataset_with;
use crate::data::{Dataset, Labels, LoadOptions};
use crate::model::attention::AttentionKernel;
use crate::model::config::{GateBias, KvSource, Positions};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Where the data comes from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Your data: a MulT pickle (*_data_noalign.pkl / *_data.pkl), an MMSA pickle
    /// (unaligned_50.pkl / aligned_50.pkl) or a mica dataset directory. Wins over --dataset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Built-in dataset when no --data is given: synth-small (default), synth-mosi,
    /// synth-mosei, synth-iemocap. `mosi|mosei|iemocap` pick the task/preset for --data.
    #[arg(long, default_value = "synth-small")]
    pub dataset: String,
    /// Seed of the synthetic generator (independent of the training seed).
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// Drop the samples whose label is NaN or ±inf (counted on stderr); without it such
    /// labels are an error naming the split, key and count.
    #[arg(long)]
    pub drop_nonfinite_labels: bool,
}

impl DataArgs {
    /// Loads the requested dataset (notes about dropped samples go to stderr).
    pub fn load(&self) -> Result<Dataset> {
        let opts = LoadOptions {
            drop_nonfinite_labels: self.drop_nonfinite_labels,
        };
        load_dataset_with(self.data.as_deref(), &self.dataset, self.data_seed, &opts)
    }

    /// Where the data comes from, as a run records it: the `--data` path (absolute when
    /// it resolves), or `builtin:NAME:DATA_SEED`.
    pub fn source(&self) -> String {
        match &self.data {
            Some(p) => p
                .canonicalize()
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            None => format!("builtin:{}:{}", self.dataset, self.data_seed),
        }
    }

    /// The files this data is read from (for the output-path guard): the `--data` file or
    /// directory and, for a mica dataset directory, every file its manifest lists.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let Some(p) = &self.data else {
            return Vec::new();
        };
        let mut files = vec![p.clone()];
        if p.is_dir() {
            files.push(p.join(crate::data::mica_format::MANIFEST));
            if let Ok(m) = crate::data::mica_format::read_manifest(p) {
                files.extend(m.splits.values().map(|e| p.join(&e.file)));
            }
        }
        files
    }
}

/// Every model / loss / training option (defaults: the preset's).
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Model + losses: mult, backbone, mmd, mica, mica-nopropagate, or the LSTM baselines
    /// ef-lstm, lf-lstm (sizes: --set model.lstm_hidden=64, model.lstm_mod_hidden=32,
    /// model.lstm_dropout=0.1), or the classic rows mfm, gmfn, raven, mctn (options:
    /// --set model.baselines.KEY=VALUE).
    #[arg(long, value_enum)]
    pub variant: Option<Variant>,
    /// Hyper-parameter preset (paper Table 1): mosi, mosei, iemocap, synth-small, or
    /// mult-official (the official MulT code's main.py defaults). Default: from the dataset.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Task (loss and metrics): mosi, mosei, iemocap. Default: from the dataset's labels.
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// A TOML (or JSON) file with any subset of the config (sections model, align, train);
    /// applied after the preset, before the flags below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Global gradient-norm clip.
    #[arg(long)]
    pub clip: Option<f64>,
    /// ReduceLROnPlateau patience in epochs (MulT's `when`).
    #[arg(long)]
    pub when: Option<usize>,
    /// Weight of the MMD loss L_m.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Weight of the element-level loss L_e.
    #[arg(long)]
    pub beta: Option<f64>,
    /// Share of attention entries PEA selects per sample and head.
    #[arg(long)]
    pub tau: Option<f64>,
    /// Model width d.
    #[arg(long)]
    pub d: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Layers D.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Conv kernel sizes as L,A,V (e.g. 3,3,3).
    #[arg(long)]
    pub kernels: Option<String>,
    /// MICA keys/values source: layerwise (default) or lowlevel (MulT's).
    #[arg(long, value_enum)]
    pub kv_source: Option<KvSource>,
    /// MICA gate bias: per-position (default) or shared.
    #[arg(long, value_enum)]
    pub gate_bias: Option<GateBias>,
    /// Attention implementation.
    #[arg(long, value_enum)]
    pub attention: Option<AttentionKernel>,
    /// Turn the causal-offset attention mask off (MulT's default is on).
    #[arg(long)]
    pub no_attn_mask: bool,
    /// Positional embedding: index (each modality's step index, MulT's) or time (each
    /// element's real time; needs data with element times, e.g. the built-in benchmark).
    #[arg(long, value_enum)]
    pub positions: Option<Positions>,
    /// How EF-/LF-LSTM, RAVEN, MCTN, MFM and Graph-MFN bring audio and vision onto the
    /// text grid: `nearest` (resampling; the LSTMs' default), `ctc` (MulT's CTC module;
    /// RAVEN's and MCTN's default) or `none` (the data is already word-aligned; MFM's and
    /// Graph-MFN's default, refused on unaligned data). Same as
    /// `--set model.baselines.align=...`.
    #[arg(long, value_enum)]
    pub align: Option<crate::model::baselines::SeqAlign>,
    /// Any other option as section.key=value (e.g. model.relu_dropout=0.2,
    /// align.mmd_max_samples=512, align.le_reduction=sum); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The default preset and task of a dataset.
pub fn defaults_for(dataset: &str, has_data: bool, ds: &Dataset) -> (Preset, Task) {
    let emotion = ds
        .splits
        .values()
        .next()
        .is_some_and(|s| matches!(s.labels, Labels::Emotion(_)));
    let task = if emotion {
        Task::Iemocap
    } else if dataset.ends_with("mosei") {
        Task::Mosei
    } else {
        Task::Mosi
    };
    let preset = match (dataset, has_data) {
        ("synth-small", false) => Preset::SynthSmall,
        _ => match task {
            Task::Iemocap => Preset::Iemocap,
            Task::Mosei => Preset::Mosei,
            Task::Mosi => Preset::Mosi,
        },
    };
    (preset, task)
}

/// Input dims and lengths (L, A, V) of a dataset's train split.
pub fn shapes(ds: &Dataset) -> Result<([usize; 3], [usize; 3])> {
    let s = ds
        .splits
        .get("train")
        .context("the dataset has no `train` split")?;
    Ok((
        [s.text.d, s.audio.d, s.vision.d],
        [s.text.t, s.audio.t, s.vision.t],
    ))
}

fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Parses option `--NAME`'s value `L,A,V` (three integers, each > 0 when `positive`).
pub fn parse_lav(name: &str, s: &str, positive: bool) -> Result<[usize; 3]> {
    let what = if positive {
        "positive integers"
    } else {
        "integers"
    };
    let bad = || anyhow::anyhow!("--{name} `{s}`: expected three {what} L,A,V");
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad())?;
    if v.len() != 3 || (positive && v.contains(&0)) {
        return Err(bad());
    }
    Ok([v[0], v[1], v[2]])
}

impl ConfigArgs {
    /// Builds the config: preset → `--config` file → flags → `--set`.
    pub fn build(&self, data: &DataArgs, ds: &Dataset, seed: u64) -> Result<Config> {
        let (preset0, task0) = defaults_for(&data.dataset, data.data.is_some(), ds);
        let (dims, lens) = shapes(ds)?;
        self.build_for(preset0, task0, dims, lens, seed)
    }

    /// [`ConfigArgs::build`] for given input shapes instead of a dataset (`mica bench`):
    /// `preset0` / `task0` apply where `--preset` / `--task` are not given.
    pub fn build_for(
        &self,
        preset0: Preset,
        task0: Task,
        dims: [usize; 3],
        lens: [usize; 3],
        seed: u64,
    ) -> Result<Config> {
        let variant = self.variant.unwrap_or(Variant::Mica);
        let mut cfg = Config::preset(
            self.preset.unwrap_or(preset0),
            variant,
            self.task.unwrap_or(task0),
            dims,
            lens,
        );
        if let Some(path) = &self.config {
            cfg = config_with_file(cfg, path)?;
        }
        cfg.train.seed = seed;
        self.apply_flags(&mut cfg)?;
        for s in &self.set {
            cfg.set(s)?;
        }
        self.apply_variant(variant, &mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The options given as flags, over the preset and the `--config` file.
    fn apply_flags(&self, cfg: &mut Config) -> Result<()> {
        let t = &mut cfg.train;
        if let Some(v) = self.epochs {
            t.epochs = v;
        }
        if let Some(v) = self.batch_size {
            t.batch_size = v;
        }
        if let Some(v) = self.lr {
            t.lr = v;
        }
        if let Some(v) = self.clip {
            t.clip = v;
        }
        if let Some(v) = self.when {
            t.when = v;
        }
        let a = &mut cfg.align;
        if let Some(v) = self.alpha {
            a.alpha = v;
        }
        if let Some(v) = self.beta {
            a.beta = v;
        }
        if let Some(v) = self.tau {
            a.tau = v;
        }
        let m = &mut cfg.model;
        if let Some(v) = self.d {
            m.d = v;
        }
        if let Some(v) = self.heads {
            m.num_heads = v;
        }
        if let Some(v) = self.layers {
            m.layers = v;
        }
        if let Some(k) = &self.kernels {
            [m.kernel_l, m.kernel_a, m.kernel_v] = parse_lav("kernels", k, false)?;
        }
        if let Some(v) = self.kv_source {
            m.kv_source = v;
        }
        if let Some(v) = self.gate_bias {
            m.gate_bias = v;
        }
        if let Some(v) = self.attention {
            m.attention = v;
        }
        if self.no_attn_mask {
            m.attn_mask = false;
        }
        if let Some(v) = self.positions {
            m.positions = v;
        }
        if let Some(v) = self.align {
            m.baselines.align = v;
        }
        Ok(())
    }

    /// The variant's rules: a variant without an alignment loss refuses its weight, and
    /// the variant's defaults are applied (keeping the weights `mult` and `mica` were
    /// given).
    fn apply_variant(&self, variant: Variant, cfg: &mut Config) -> Result<()> {
        // A variant without an alignment loss keeps it off even if a weight was given,
        // except `mult`, where explicit --alpha/--beta turn the losses on (paper Table A2).
        let explicit = |w: Option<f64>| w.is_some_and(|x| x > 0.0);
        match variant {
            Variant::Backbone if explicit(self.alpha) || explicit(self.beta) => {
                anyhow::bail!("--variant backbone trains without alignment: drop --alpha/--beta or use --variant mmd/mica")
            }
            Variant::EfLstm
            | Variant::LfLstm
            | Variant::Raven
            | Variant::Mctn
            | Variant::Mfm
            | Variant::Gmfn
                if explicit(self.alpha) || explicit(self.beta) =>
            {
                anyhow::bail!(
                    "--variant {} has no crossmodal attention, so no alignment losses: drop --alpha/--beta",
                    variant.name()
                )
            }
            Variant::Mmd if explicit(self.beta) => {
                anyhow::bail!(
                    "--variant mmd has no element-level loss: drop --beta or use --variant mica"
                )
            }
            _ => {}
        }
        let (alpha, beta, propagate) = (cfg.align.alpha, cfg.align.beta, cfg.align.propagate);
        cfg.apply_variant();
        if variant == Variant::Mult {
            cfg.align.alpha = self.alpha.unwrap_or(0.0);
            cfg.align.beta = self.beta.unwrap_or(0.0);
        } else if variant == Variant::Mica {
            cfg.align.alpha = alpha;
            cfg.align.beta = beta;
            cfg.align.propagate = propagate;
        }
        Ok(())
    }
}

/// `cfg` overridden by the TOML or JSON config file `path` (its keys merged over the
/// config's).
fn config_with_file(cfg: Config, path: &std::path::Path) -> Result<Config> {
    let text = crate::durable::read_string_capped(path, crate::durable::SMALL_FILE_CAP, "config")?;
    let over: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}: bad JSON", path.display()))?
    } else {
        let t: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: bad TOML", path.display()))?;
        serde_json::to_value(t)?
    };
    let mut base = serde_json::to_value(&cfg)?;
    merge(&mut base, over);
    serde_json::from_value(base).with_context(|| format!("{}: bad config", path.display()))
}
