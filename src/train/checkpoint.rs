//! Checkpoints: a directory with `model.safetensors` (official parameter names),
//! `config.json` (mica's complete config) and `checkpoint.json` (size and sha256 of every
//! other file, verified on load); the `last` checkpoint of a run also holds the optimiser
//! (`optimizer.safetensors`) and loop state (`state.json`) for `--resume`.
//!
//! A checkpoint is one atomic unit: every file is written and fsynced into `.NAME.tmp`,
//! `checkpoint.json` last, then the old `NAME` is moved to `.NAME.old`, `.NAME.tmp` is
//! renamed to `NAME` and `.NAME.old` removed, each rename followed by an fsync of the run
//! directory. At every moment `NAME` or `.NAME.old` is a complete checkpoint
//! ([`existing`] finds it).

use crate::config::Config;
use crate::durable::{self, fault_point};
use crate::model::import::{read_safetensors_bytes, tensors_from_bytes};
use crate::model::params::{Loader, ParamStore};
use crate::model::Model;
use crate::train::optim::{Adam, AdamSlot};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Name of the file listing a checkpoint's files with their sha256.
pub const MANIFEST: &str = "checkpoint.json";
const FORMAT: &str = "mica-checkpoint";

/// Size and sha256 of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSum {
    /// Bytes.
    pub bytes: u64,
    /// sha256, lower-case hex.
    pub sha256: String,
}

/// `checkpoint.json`: what a complete checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `mica-checkpoint`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// File name → size and sha256.
    pub files: BTreeMap<String, FileSum>,
}

/// Writes `config.json` + `model.safetensors` (+ whatever `extra` writes into the
/// directory it is given) and `checkpoint.json` into `dir` as one atomic unit.
pub fn save(
    dir: &Path,
    cfg: &Config,
    store: &ParamStore,
    extra: &dyn Fn(&Path) -> Result<()>,
) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let old = sibling(dir, "old");
    let label = file_name(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    store.save(&tmp.join("model.safetensors"))?;
    std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(cfg)?)
        .with_context(|| format!("writing {}", tmp.join("config.json").display()))?;
    extra(&tmp)?;
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))? {
        let path = e?.path();
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", path.display()))?;
        files.insert(
            file_name(&path),
            FileSum {
                bytes: bytes.len() as u64,
                sha256: durable::sha256_hex(&bytes),
            },
        );
    }
    fault_point(&format!("ckpt:{label}:files"));
    let manifest = Manifest {
        format: FORMAT.into(),
        version: 1,
        files,
    };
    durable::write_atomic(
        &tmp.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    if dir.exists() {
        if old.exists() {
            // A crash after an earlier swap left a stale copy: `dir` is complete.
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("removing stale {}", old.display()))?;
        }
        durable::rename_synced(dir, &old)?;
        fault_point(&format!("ckpt:{label}:aside"));
    }
    durable::rename_synced(&tmp, dir)?;
    fault_point(&format!("ckpt:{label}:swapped"));
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        durable::sync_dir(parent_of(dir))?;
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "ckpt".into())
}

fn parent_of(dir: &Path) -> &Path {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `.NAME.SUFFIX` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    dir.with_file_name(format!(".{}.{suffix}", file_name(dir)))
}

/// The directory to read a checkpoint from: `dir`, or its `.old` twin when a crash hit
/// between the renames of [`save`] (also the `NAME.old` of older mica versions).
pub fn existing(dir: &Path) -> Option<PathBuf> {
    if dir.join("config.json").is_file() {
        return Some(dir.to_path_buf());
    }
    let legacy = dir.with_file_name(format!("{}.old", file_name(dir)));
    [sibling(dir, "old"), legacy]
        .into_iter()
        .find(|old| old.join("config.json").is_file())
}

/// Removes what an interrupted [`save`] of `dir` left: `.NAME.tmp`, and `.NAME.old` once
/// `NAME` is complete (before that, `.NAME.old` is the checkpoint and stays).
pub fn tidy(dir: &Path) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let old = sibling(dir, "old");
    if dir.join("config.json").is_file() && old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

/// The files a command reads from a checkpoint directory (for the output-path guard).
pub fn input_files(dir: &Path) -> Vec<PathBuf> {
    let d = existing(dir).unwrap_or_else(|| dir.to_path_buf());
    [
        "config.json",
        "model.safetensors",
        MANIFEST,
        "state.json",
        "optimizer.safetensors",
    ]
    .iter()
    .map(|f| d.join(f))
    .collect()
}

/// `checkpoint.json` of `dir`, or `None` for a checkpoint written before mica kept one.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    let text = durable::read_string_capped(&path, durable::SMALL_FILE_CAP, "checkpoint manifest")?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid checkpoint manifest", path.display()))?;
    if m.format != FORMAT || m.version != 1 {
        bail!(
            "{}: not a version-1 mica checkpoint manifest",
            path.display()
        );
    }
    Ok(Some(m))
}

/// Checks `bytes` read from `dir/name` against the checkpoint's manifest (when it has one);
/// the error names the file.
pub fn verify(dir: &Path, manifest: Option<&Manifest>, name: &str, bytes: &[u8]) -> Result<()> {
    let Some(m) = manifest else { return Ok(()) };
    let path = dir.join(name);
    let Some(want) = m.files.get(name) else {
        bail!(
            "{}: not listed in {}",
            path.display(),
            dir.join(MANIFEST).display()
        );
    };
    let sha = durable::sha256_hex(bytes);
    if bytes.len() as u64 != want.bytes || sha != want.sha256 {
        bail!(
            "{}: {} bytes with sha256 {sha}, but {} records {} bytes with sha256 {}: the file is corrupted or was modified",
            path.display(),
            bytes.len(),
            dir.join(MANIFEST).display(),
            want.bytes,
            want.sha256
        );
    }
    Ok(())
}

/// Reads `dir/name` (capped at [`durable::SMALL_FILE_CAP`]) and verifies it.
pub fn read_verified(dir: &Path, manifest: Option<&Manifest>, name: &str) -> Result<Vec<u8>> {
    let bytes = durable::read_capped(&dir.join(name), durable::SMALL_FILE_CAP, name)?;
    verify(dir, manifest, name, &bytes)?;
    Ok(bytes)
}

/// Loads a checkpoint directory: config, parameters and the built model. Every file is
/// checked against `checkpoint.json`, and a parameter holding NaN or infinity is refused.
pub fn load(dir: &Path, device: &Device) -> Result<(Config, ParamStore, Model)> {
    let Some(dir) = existing(dir) else {
        bail!("{}: not a mica checkpoint (no config.json; expected a directory written by `mica train` or `mica import-mult`)", dir.display());
    };
    let manifest = read_manifest(&dir)?;
    read_verified(&dir, manifest.as_ref(), "config.json")?;
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let weights = dir.join("model.safetensors");
    let bytes = read_safetensors_bytes(&weights)?;
    verify(&dir, manifest.as_ref(), "model.safetensors", &bytes)?;
    let tensors = tensors_from_bytes(&bytes, &weights, device)?;
    drop(bytes);
    for (name, t) in &tensors {
        let v: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let bad = v.iter().filter(|x| !x.is_finite()).count();
        if bad > 0 {
            bail!(
                "{}: parameter `{name}` holds {bad} non-finite value(s) (NaN or infinity): the weights are unusable",
                weights.display()
            );
        }
    }
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

/// Restores Adam's moments written by [`adam_to_file`] into the checkpoint `dir`
/// (verified against its manifest).
pub fn adam_from_file(
    adam: &mut Adam,
    dir: &Path,
    manifest: Option<&Manifest>,
    steps: &BTreeMap<String, u64>,
) -> Result<()> {
    let path = dir.join("optimizer.safetensors");
    let bytes = read_safetensors_bytes(&path)?;
    verify(dir, manifest, "optimizer.safetensors", &bytes)?;
    let t = tensors_from_bytes(&bytes, &path, &Device::Cpu)?;
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
