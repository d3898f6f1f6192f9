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
    /// Drop the samples whose label is NaN or ±inf (counted on stderr); without it such
    /// labels are an error naming the split, key and count.
    #[arg(long)]
    pub drop_nonfinite_labels: bool,
}

/// Runs `mica convert`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut inputs = vec![args.input.clone()];
    if args.input.is_dir() {
        inputs.push(args.input.join(mica_format::MANIFEST));
    }
    crate::durable::ensure_not_input(&args.out, "--out", &inputs)?;
    mica_format::check_output(&args.out)?;
    let opts = data::LoadOptions {
        drop_nonfinite_labels: args.drop_nonfinite_labels,
    };
    let (ds, dropped) = data::load_any_with(&args.input, &opts)?;
    for d in dropped {
        eprintln!("note: {}: {}", args.input.display(), d.note());
    }
    eprint!("{}", ds.summary());
    mica_format::save(&ds, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
