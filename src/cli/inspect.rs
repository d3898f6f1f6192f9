//! `mica inspect`: what a dataset file or directory holds.

use std::path::PathBuf;

use anyhow::Context;

use crate::data;

/// Arguments of `mica inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset to inspect: a MulT or MMSA pickle (.pkl) or a mica dataset directory.
    #[arg(value_name = "FILE_OR_DIR")]
    pub path: PathBuf,
    /// Print machine-readable JSON (format, and per split and key: dtype, shape,
    /// sum after the f32 cast with non-finite values as 0, non-finite count; for pickles
    /// also every key with what it holds and whether mica reads it) instead of the human
    /// summary. Keys mica does not read are listed, never fatal.
    #[arg(long)]
    pub json: bool,
}

/// Runs `mica inspect`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.json {
        let inspection = data::inspect_any(&args.path)?;
        let json = serde_json::to_string_pretty(&inspection).context("encoding JSON")?;
        println!("{json}");
        return Ok(());
    }
    let (ds, inspection) = data::load_with_inspection(&args.path)?;
    println!("{}", args.path.display());
    for (split, arrays) in &inspection.splits {
        println!("[{split}] arrays as stored:");
        for (key, a) in arrays {
            println!(
                "  {key:<22} {:<8} {:?}  sum {:.6}  non-finite {}",
                a.dtype, a.shape, a.sum_f32_clean, a.non_finite_after_f32_cast
            );
        }
        let unused = inspection.keys.get(split).into_iter().flatten();
        for (key, info) in unused.filter(|(_, i)| !i.used) {
            println!("  {key:<22} not read by mica: {}", info.value);
        }
    }
    for key in &inspection.ignored_top_level {
        println!("top-level key {key:?} ignored (not a split)");
    }
    print!("{}", ds.summary());
    Ok(())
}
