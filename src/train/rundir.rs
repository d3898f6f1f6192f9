//! A run directory's identity and states. `run.json` remembers what the run trained on
//! (the data's source and content hash) so `--resume` can load it again and refuse other
//! data; [`dir_state`] tells an empty directory, a mica run and anything else apart, so a
//! run never writes into a directory that is not its own.

use crate::durable;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Name of the file with the run's identity.
pub const RUN_INFO: &str = "run.json";

/// The data a run trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRef {
    /// `--data` path as given (absolute when it could be resolved), or `builtin:NAME` with
    /// its data seed, e.g. `builtin:synth-small:0`.
    pub source: String,
    /// [`crate::data::fingerprint::fingerprint`] of the dataset.
    pub sha256: String,
}

impl DataRef {
    /// The built-in dataset `name` generated with `seed`, if `source` names one.
    pub fn builtin(&self) -> Option<(&str, u64)> {
        let rest = self.source.strip_prefix("builtin:")?;
        let (name, seed) = rest.rsplit_once(':')?;
        Some((name, seed.parse().ok()?))
    }

    /// The source for messages: a path, or `--dataset NAME --data-seed S`.
    pub fn describe(&self) -> String {
        match self.builtin() {
            Some((name, seed)) => format!("--dataset {name} --data-seed {seed}"),
            None => self.source.clone(),
        }
    }
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Always `mica-run`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// What the run trained on.
    pub data: DataRef,
}

impl RunInfo {
    /// A version-1 record of `data`.
    pub fn new(data: DataRef) -> Self {
        RunInfo {
            format: "mica-run".into(),
            version: 1,
            data,
        }
    }
}

/// Reads `run.json` of `dir` (`None` for runs of older mica versions).
pub fn read_info(dir: &Path) -> Result<Option<RunInfo>> {
    let path = dir.join(RUN_INFO);
    if !path.exists() {
        return Ok(None);
    }
    let text = durable::read_string_capped(&path, durable::SMALL_FILE_CAP, "run record")?;
    let info: RunInfo = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid run record", path.display()))?;
    Ok(Some(info))
}

/// Writes `run.json` of `dir` atomically.
pub fn write_info(dir: &Path, info: &RunInfo) -> Result<()> {
    durable::write_atomic(
        &dir.join(RUN_INFO),
        serde_json::to_string_pretty(info)?.as_bytes(),
    )
}

/// What a directory given as a run's `--out` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Missing, empty, or only leftovers of interrupted writes (and a `run.json` without
    /// a config: a run killed before it started).
    Empty,
    /// A mica run (has its `config.json`).
    Run,
    /// Anything else: never written into.
    Other,
}

/// Classifies `dir` (see [`DirState`]).
pub fn dir_state(dir: &Path) -> Result<DirState> {
    if dir.join("config.json").is_file() {
        return Ok(DirState::Run);
    }
    if dir.exists() && !dir.is_dir() {
        return Ok(DirState::Other);
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(DirState::Empty);
    };
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name != RUN_INFO && !durable::is_leftover(&name) {
            return Ok(DirState::Other);
        }
    }
    Ok(DirState::Empty)
}

/// Refuses a fresh run into `dir` unless it is empty (see [`DirState::Empty`]).
pub fn ensure_fresh(dir: &Path) -> Result<()> {
    match dir_state(dir)? {
        DirState::Empty => Ok(()),
        DirState::Run => bail!(
            "{} already holds a run: continue it with --resume {}, or choose another --out",
            dir.display(),
            dir.display()
        ),
        DirState::Other => bail!(
            "--out {}: exists and is not empty, and is not a mica run directory: choose another --out (nothing was written)",
            dir.display()
        ),
    }
}
