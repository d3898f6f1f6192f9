//! Where a command's data comes from: a file or directory (`--data`), or a named
//! built-in dataset (`--dataset synth-small|synth-mosi|synth-mosei|synth-iemocap`).

use super::{Dataset, LoadOptions};
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
    load_dataset_with(data, dataset, data_seed, &LoadOptions::default())
}

/// [`load_dataset`] with options; a note per split with dropped samples goes to stderr.
pub fn load_dataset_with(
    data: Option<&Path>,
    dataset: &str,
    data_seed: u64,
    opts: &LoadOptions,
) -> Result<Dataset> {
    if let Some(path) = data {
        let (ds, dropped) = super::load_any_with(path, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
        for d in dropped {
            eprintln!("note: {}: {}", path.display(), d.note());
        }
        return Ok(ds);
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
