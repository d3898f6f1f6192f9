//! Shared by the commands that train many runs (`ablate`, `sweep`): train one run into
//! its directory, or reuse / continue what an earlier (possibly killed) call left there.

use super::common::DataArgs;
use crate::analysis::ablation::{
    flatten_json, fmt_metric, is_sentiment, main_metrics, FlatMetrics,
};
use crate::config::Config;
use crate::data::Dataset;
use crate::train::trainer::{train, TrainOptions};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

/// What [`train_or_reuse`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// The run had finished before (metrics.json present): nothing trained.
    Reused,
    /// A killed run was continued from its last checkpoint.
    Resumed,
    /// Trained from scratch.
    Trained,
}

impl RunStatus {
    /// A word for progress lines.
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Reused => "reused",
            RunStatus::Resumed => "resumed and finished",
            RunStatus::Trained => "trained",
        }
    }
}

/// The flat test metrics of a finished run's `metrics.json`.
pub fn read_test_metrics(path: &Path) -> Result<FlatMetrics> {
    let text =
        crate::durable::read_string_capped(path, crate::durable::SMALL_FILE_CAP, "metrics file")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: bad JSON", path.display()))?;
    let m = flatten_json(&v["test"]);
    ensure!(!m.is_empty(), "{}: no test metrics", path.display());
    Ok(m)
}

/// Trains `cfg` into `dir` unless a finished run with the same config is there (then its
/// test metrics are read back); a killed run (a config, no metrics.json) is resumed (from
/// epoch 1 when it had no checkpoint yet). A run directory holding a DIFFERENT config or
/// data is an error, never overwritten.
pub fn train_or_reuse(
    cfg: &Config,
    ds: &Dataset,
    data_source: &str,
    dir: &Path,
    verbose: bool,
) -> Result<(FlatMetrics, RunStatus)> {
    let cfg_path = dir.join("config.json");
    let metrics = dir.join("metrics.json");
    if cfg_path.is_file() {
        let saved = Config::from_file(&cfg_path)?;
        ensure!(
            saved == *cfg,
            "{} holds a run with a different config (other options or data?): choose another --out or delete that directory",
            dir.display()
        );
        if metrics.is_file() {
            if let Some(info) = crate::train::rundir::read_info(dir)? {
                let sha = crate::data::fingerprint::fingerprint(ds);
                ensure!(
                    info.data.sha256 == sha,
                    "{} holds a run on other data ({}): choose another --out or delete that directory",
                    dir.display(),
                    info.data.describe()
                );
            }
            return Ok((read_test_metrics(&metrics)?, RunStatus::Reused));
        }
    }
    let resume = cfg_path.is_file();
    let opts = TrainOptions {
        out: dir.to_path_buf(),
        resume,
        stop_after_epochs: None,
        verbose,
        data_source: Some(data_source.to_string()),
    };
    train(cfg, ds, &opts)?;
    let status = if resume {
        RunStatus::Resumed
    } else {
        RunStatus::Trained
    };
    Ok((read_test_metrics(&metrics)?, status))
}

/// A short name of the data for default output directories: the file stem of `--data`,
/// else the built-in dataset name.
pub fn data_name(data: &DataArgs) -> String {
    data.data
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| data.dataset.clone())
}

/// One line of the main metrics of a run, e.g. `Acc7 30.1 | Acc2 (Non0) 75.0 | ...`.
pub fn summary_line(m: &FlatMetrics) -> String {
    main_metrics(is_sentiment(m))
        .iter()
        .filter_map(|k| {
            m.get(k.key)
                .map(|v| format!("{} {}", k.label, fmt_metric(*v, k.percent)))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `dir/seed-<seed>`.
pub fn seed_dir(dir: &Path, seed: u64) -> PathBuf {
    dir.join(format!("seed-{seed}"))
}
