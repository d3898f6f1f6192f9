//! `mica convert`: any supported dataset format into mica's own format.

use std::path::PathBuf;

use crate::data::{self, mica_format};

/// Arguments of `mica convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset to convert: a MulT or MMSA pickle (.pkl) or a mica dataset directory.
    #[arg(value_name = "FILE")]
    pub input: PathBuf,
    /// Output directory (created if needed) for the mica dataset: one safetensors file per
    /// split plus manifest.json with shapes, ids, non-finite counts and sha256 checksums.
    /// Written beside it first and swapped in when complete; an existing mica dataset there
    /// is replaced, any other non-empty directory refused.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `mica convert`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut inputs = vec![args.input.clone()];
    if args.input.is_dir() {
        inputs.push(args.input.join(mica_format::MANIFEST));
    }
    crate::durable::ensure_not_input(&args.out, "--out", &inputs)?;
    mica_format::check_output(&args.out)?;
    let ds = data::load_any(&args.input)?;
    eprint!("{}", ds.summary());
    mica_format::save(&ds, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
