//! Where a command's data comes from: a file or directory (`--data`), or a named
//! built-in dataset (`--dataset synth-small|synth-mosi|synth-mosei|synth-iemocap`).

use super::Dataset;
use anyhow::{bail, Result};
use std::path::Path;

/// Names accepted by `--dataset`.
pub const DATASET_NAMES: [&str; 7] = [
    "synth-small",
    "synth-mosi",
    "synth-mosei",
    "synth-iemocap",
    "mosi",
    "mosei",
    "iemocap",
];

/// Loads the dataset a command asked for. `data` wins over `dataset`; the real-data
/// names (`mosi`, `mosei`, `iemocap`) need `data`. `data_seed` seeds the synthetic
/// generator (independent of the training seed, so every seed sees the same data).
pub fn load_dataset(data: Option<&Path>, dataset: &str, data_seed: u64) -> Result<Dataset> {
    if let Some(path) = data {
        return super::load_any(path).map_err(|e| anyhow::anyhow!("{e}"));
    }
    match dataset {
        "synth-small" | "synth-mosi" | "synth-mosei" | "synth-iemocap" => {
            super::synth::dataset_by_name(dataset, data_seed)
        }
        "mosi" | "mosei" | "iemocap" => {
            bail!("--dataset {dataset} reads your own file: add --data PATH (a MulT or MMSA pickle, or a mica dataset directory)")
        }
        other => bail!(
            "unknown --dataset `{other}` (expected one of: {})",
            DATASET_NAMES.join(", ")
        ),
    }
}
