//! Checkpoints: a directory with `model.safetensors` (official parameter names) and
//! `config.json` (mica's complete config); the `last` checkpoint of a run also holds the
//! optimiser and loop state for `--resume`. Directories are replaced atomically: written
//! to `NAME.tmp`, then swapped in by rename.

use crate::config::Config;
use crate::model::params::{Loader, ParamStore};
use crate::model::Model;
use crate::train::optim::{Adam, AdamSlot};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Writes `config.json` + `model.safetensors` (+ whatever `extra` writes into the
/// directory it is given) into `dir` atomically.
pub fn save(
    dir: &Path,
    cfg: &Config,
    store: &ParamStore,
    extra: &dyn Fn(&Path) -> Result<()>,
) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let old = sibling(dir, "old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    store.save(&tmp.join("model.safetensors"))?;
    std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(cfg)?)?;
    extra(&tmp)?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("moving {} into place", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "ckpt".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// The directory to read a checkpoint from: `dir`, or its `.old` twin when a crash hit
/// between the two renames of [`save`].
pub fn existing(dir: &Path) -> Option<PathBuf> {
    if dir.join("config.json").is_file() {
        return Some(dir.to_path_buf());
    }
    let old = sibling(dir, "old");
    old.join("config.json").is_file().then_some(old)
}

/// Loads a checkpoint directory: config, parameters and the built model.
pub fn load(dir: &Path, device: &Device) -> Result<(Config, ParamStore, Model)> {
    let Some(dir) = existing(dir) else {
        bail!("{}: not a mica checkpoint (no config.json; expected a directory written by `mica train` or `mica import-mult`)", dir.display());
    };
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let weights = dir.join("model.safetensors");
    let tensors = crate::model::import::read_safetensors(&weights, device)?;
    let mut loader = Loader::new(tensors, device, &weights.display().to_string());
    let model = Model::new(&mut loader, &cfg.model)?;
    let store = loader.finish(crate::model::import::is_ignored_buffer)?;
    Ok((cfg, store, model))
}

/// Writes Adam's moments to a safetensors file (`exp_avg.NAME`, `exp_avg_sq.NAME`) and
/// returns the per-parameter step counts (kept in the run state).
pub fn adam_to_file(adam: &Adam, store: &ParamStore, path: &Path) -> Result<BTreeMap<String, u64>> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut steps = BTreeMap::new();
    for (name, slot) in &adam.state {
        let dims = store
            .vars
            .get(name)
            .with_context(|| format!("optimiser state for unknown `{name}`"))?
            .dims()
            .to_vec();
        tensors.insert(
            format!("exp_avg.{name}"),
            Tensor::from_vec(slot.exp_avg.clone(), dims.clone(), &Device::Cpu)?,
        );
        tensors.insert(
            format!("exp_avg_sq.{name}"),
            Tensor::from_vec(slot.exp_avg_sq.clone(), dims, &Device::Cpu)?,
        );
        steps.insert(name.clone(), slot.step);
    }
    candle_core::safetensors::save(&tensors, path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(steps)
}

/// Restores Adam's moments written by [`adam_to_file`].
pub fn adam_from_file(adam: &mut Adam, path: &Path, steps: &BTreeMap<String, u64>) -> Result<()> {
    let t = crate::model::import::read_safetensors(path, &Device::Cpu)?;
    adam.state.clear();
    for (name, &step) in steps {
        let get = |k: String| -> Result<Vec<f32>> {
            Ok(t.get(&k)
                .with_context(|| format!("{}: missing `{k}`", path.display()))?
                .flatten_all()?
                .to_vec1()?)
        };
        adam.state.insert(
            name.clone(),
            AdamSlot {
                step,
                exp_avg: get(format!("exp_avg.{name}"))?,
                exp_avg_sq: get(format!("exp_avg_sq.{name}"))?,
            },
        );
    }
    Ok(())
}
