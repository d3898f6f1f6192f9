//! `mica doctor`: is this data file what it should be, and can mica use it?

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::data::doctor;

/// Arguments of `mica doctor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A data file (MulT / MMSA pickle, CMU-SDK .csd), a mica dataset directory, or a
    /// directory of data files (each .pkl / .csd / .h5 file in it is checked; the .csd
    /// files are also compared for videos missing from some of them).
    #[arg(value_name = "FILE_OR_DIR")]
    pub path: PathBuf,
    /// Print the report as JSON (files, with format, protocol, sha256, dataset, per split
    /// the sizes, dims, non-finite counts, label ranges and length statistics, for a .csd
    /// file `csd` (root, metadata keys, videos, dtypes, dim, elements, non_finite,
    /// intervals, folds), for a directory of .csd files `csd_coverage`, and the errors,
    /// warnings and notes) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `mica doctor`: prints the report; exits non-zero when it lists an error.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let report = doctor::diagnose(&args.path);
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding JSON")?;
        println!("{json}");
    } else {
        print!("{}", doctor::render(&report));
    }
    if report.errors > 0 {
        bail!(
            "{}: {} error(s): mica cannot use this data as it is",
            args.path.display(),
            report.errors
        );
    }
    Ok(())
}
