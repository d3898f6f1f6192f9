//! The `mica` command line: one subcommand per user job. Each subcommand lives in its
//! own file with its clap `Args` struct and a `run` function.

pub mod synth;

use clap::{Parser, Subcommand};

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
    /// Generate the built-in synthetic asynchronous benchmark (ground-truth alignment).
    Synth(synth::SynthArgs),
}

/// Parses the command line and runs the chosen job.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Synth(args) => synth::run(&args),
    }
}
