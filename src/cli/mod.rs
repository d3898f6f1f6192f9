//! The `mica` command line: one subcommand per user job. Each subcommand lives in its
//! own file with its clap `Args` struct and a `run` function.

use clap::{Parser, Subcommand};

pub mod convert;
pub mod inspect;

/// mica: train, evaluate and explain MICA / MulT models on asynchronous multimodal sequences.
#[derive(Parser, Debug)]
#[command(name = "mica", version, about, long_about = None)]
pub struct Cli {
    /// The job to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `mica` subcommand.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Summarise a dataset (MulT / MMSA pickle or mica directory): shapes, dtypes, sums,
    /// non-finite counts.
    Inspect(inspect::Args),
    /// Convert a dataset (MulT / MMSA pickle or mica directory) into mica's own format.
    Convert(convert::Args),
}

/// Parses the command line and runs the chosen job.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Convert(args) => convert::run(args),
    }
}
