//! The sweep manifest `OUT/manifest.json`: the list of runs a many-run command (`ablate`,
//! `sweep`, `grid`) will train, each with its stable id (its directory under `OUT`), its
//! seed and its fully resolved config, plus where the data comes from and what the
//! aggregation step needs. Written before anything trains; every executor (in-process,
//! local pool, Slurm array) trains the entries of this one file.

use crate::config::Config;
use crate::durable;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the manifest inside the output directory.
pub const MANIFEST: &str = "manifest.json";

/// Value of the manifest's `format` field.
pub const FORMAT: &str = "mica-sweep";

/// Where the runs' data comes from: enough for another process (a Slurm task) to load
/// the same data again, and its hash to check that it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSpec {
    /// `--data` path (absolute when it resolved), or none for a built-in dataset.
    pub data: Option<PathBuf>,
    /// `--dataset` (the built-in dataset, or the task/preset hint for `--data`).
    pub dataset: String,
    /// `--data-seed`.
    pub data_seed: u64,
    /// `--drop-nonfinite-labels`.
    pub drop_nonfinite_labels: bool,
    /// The source as run directories record it (`run.json`).
    pub source: String,
    /// Fingerprint of the dataset's content.
    pub sha256: String,
}

/// One planned run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    /// Stable id: the run's directory relative to the output directory, e.g.
    /// `mica/seed-1111` or `alpha-0.5/seed-1111`.
    pub id: String,
    /// Training seed.
    pub seed: u64,
    /// What distinguishes the run for the aggregation (e.g. `variant`, `value`, or the
    /// grid's `key=value` settings).
    pub labels: BTreeMap<String, String>,
    /// The resolved config the run trains.
    pub config: Config,
}

/// `OUT/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The command that planned it: `ablate`, `sweep` or `grid`.
    pub kind: String,
    /// The data of every run.
    pub data: DataSpec,
    /// What the aggregation step needs (command-specific: seeds, rows, parameter, metric).
    pub aggregate: serde_json::Value,
    /// The runs, in the order they are trained and numbered (array task index).
    pub runs: Vec<RunEntry>,
}

impl Manifest {
    /// A version-1 manifest; ids are checked (see [`check_id`]) and must be distinct.
    pub fn new(
        kind: &str,
        data: DataSpec,
        aggregate: serde_json::Value,
        runs: Vec<RunEntry>,
    ) -> Result<Self> {
        let m = Manifest {
            format: FORMAT.into(),
            version: 1,
            kind: kind.into(),
            data,
            aggregate,
            runs,
        };
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.format == FORMAT,
            "format `{}`, expected `{FORMAT}`",
            self.format
        );
        ensure!(
            self.version == 1,
            "version {}, this mica reads version 1",
            self.version
        );
        for (i, r) in self.runs.iter().enumerate() {
            check_id(&r.id)?;
            ensure!(
                !self.runs[..i].iter().any(|o| o.id == r.id),
                "run id `{}` appears twice",
                r.id
            );
        }
        Ok(())
    }

    /// The run with this id.
    pub fn entry(&self, id: &str) -> Option<&RunEntry> {
        self.runs.iter().find(|r| r.id == id)
    }

    /// The run directory of `entry` under `out`.
    pub fn run_dir(out: &Path, entry: &RunEntry) -> PathBuf {
        out.join(&entry.id)
    }

    /// The runs with this label value, in manifest order.
    pub fn with_label<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> impl Iterator<Item = &'a RunEntry> + 'a {
        self.runs
            .iter()
            .filter(move |r| r.labels.get(key).is_some_and(|v| v == value))
    }
}

/// Refuses ids that could leave the output directory or confuse a shell or a file system:
/// one or more `/`-separated components of `A-Z a-z 0-9 . _ - + = ,`, none empty, `.`
/// or `..`, none starting with `.`.
pub fn check_id(id: &str) -> Result<()> {
    ensure!(!id.is_empty(), "empty run id");
    for part in id.split('/') {
        let ok = !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+=,".contains(c));
        ensure!(
            ok,
            "run id `{id}`: each part must be non-empty, not start with `.`, and use only letters, digits and . _ - + = ,"
        );
    }
    Ok(())
}

/// A directory-name-safe form of `s`: characters outside those [`check_id`] allows become
/// `_`, a leading `.` too.
pub fn safe_part(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+=,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// The manifest path of `out`.
pub fn path(out: &Path) -> PathBuf {
    out.join(MANIFEST)
}

/// Reads and checks `OUT/manifest.json`.
pub fn read(out: &Path) -> Result<Manifest> {
    let p = path(out);
    ensure!(
        p.is_file(),
        "{}: no sweep manifest there (not the output directory of mica ablate / sweep / grid, or planned by an older mica: run the command again with --out {})",
        out.display(),
        out.display()
    );
    let text = durable::read_string_capped(&p, durable::SMALL_FILE_CAP, "sweep manifest")?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid sweep manifest", p.display()))?;
    m.check()
        .with_context(|| format!("{}: invalid sweep manifest", p.display()))?;
    Ok(m)
}

/// Writes `m` as `OUT/manifest.json` (atomically). An existing manifest may be replaced
/// by one of the same command on the same data whose runs keep their configs (more seeds,
/// more rows); a manifest that gives an existing run id another config, or other data,
/// is refused, naming the run.
pub fn write(out: &Path, m: &Manifest) -> Result<()> {
    let p = path(out);
    if p.is_file() {
        let old = read(out)?;
        ensure!(
            old.kind == m.kind,
            "{}: {} holds a `mica {}` plan, not a `mica {}` one: choose another --out",
            p.display(),
            out.display(),
            old.kind,
            m.kind
        );
        ensure!(
            old.data.sha256 == m.data.sha256,
            "{}: the runs there were planned on other data ({}): choose another --out or delete {}",
            p.display(),
            old.data.source,
            out.display()
        );
        for r in &m.runs {
            if let Some(o) = old.entry(&r.id) {
                if o.config != r.config {
                    bail!(
                        "{}: run {} was planned with another config (other options?): choose another --out, or delete {} and {}",
                        p.display(),
                        r.id,
                        out.join(&r.id).display(),
                        p.display()
                    );
                }
            }
        }
        if old == *m {
            return Ok(());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    durable::write_atomic(&p, serde_json::to_string_pretty(m)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_inside_the_output_directory() {
        for ok in [
            "mica/seed-1111",
            "alpha-0.5/seed-1",
            "train.lr=0.001,model.d=16/seed-2",
        ] {
            check_id(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a//b",
            "/abs",
            ".hidden/seed-1",
            "a/..",
            "a b/seed-1",
            "a$x",
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert_eq!(safe_part("a b/c"), "a_b_c");
        assert_eq!(safe_part(".x"), "_.x");
        check_id(&safe_part("../../etc")).unwrap();
    }
}
