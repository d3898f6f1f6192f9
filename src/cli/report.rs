//! `mica report`: one Markdown page gathering the results found in run directories.

use crate::analysis::report::render_report;
use crate::train::trainer::atomic_write;
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Gathers run metrics, loss curves, ablation and analysis tables, sweep plots and
/// attention maps found under directories into one Markdown page.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Directories to gather (searched recursively): training runs, `mica ablate` /
    /// `mica sweep` outputs, `mica analyze` outputs, folders of attention PNGs.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Markdown file to write (links inside are relative to it).
    #[arg(long, default_value = "report.md")]
    pub out: PathBuf,
}

/// Absolute form of an existing path.
fn absolute(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{}: no such directory", p.display()))
}

/// Runs `mica report`.
pub fn run(a: &ReportArgs) -> Result<()> {
    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = absolute(parent)?;
    let dirs = a
        .dirs
        .iter()
        .map(|d| absolute(d))
        .collect::<Result<Vec<_>>>()?;
    let md = render_report(&dirs, &base)?;
    atomic_write(&a.out, md.as_bytes())?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
