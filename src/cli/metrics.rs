//! `mica metrics`: the published metric sets of a prediction file.

use crate::eval::{evaluate, read_predictions, Task};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Task choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    /// CMU-MOSI (columns pred,label).
    Mosi,
    /// CMU-MOSEI (columns pred,label).
    Mosei,
    /// IEMOCAP (columns pred_0..pred_7,label_0..label_3).
    Iemocap,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Task {
        match t {
            TaskArg::Mosi => Task::Mosi,
            TaskArg::Mosei => Task::Mosei,
            TaskArg::Iemocap => Task::Iemocap,
        }
    }
}

/// Output format of `mica metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `{"mult": {..}, "mmsa": {..}}`, full precision, MMSA values unrounded.
    Json,
    /// The papers' table format (percent with one decimal, MAE / Corr three decimals).
    Table,
}

/// Computes MulT's and MMSA's metrics of a prediction CSV.
#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Which dataset's metrics (decides the expected CSV columns).
    #[arg(long, value_enum)]
    pub task: TaskArg,
    /// Prediction CSV: `pred,label` (mosi, mosei) or `pred_0..pred_7,label_0..label_3`
    /// (iemocap); an optional `id` column is ignored.
    #[arg(long)]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

/// Runs `mica metrics`: prints the metrics of `args.file` on stdout.
pub fn run(args: &MetricsArgs) -> anyhow::Result<()> {
    let task: Task = args.task.into();
    let (preds, labels) = read_predictions(&args.file, task)?;
    let metrics = evaluate(task, &preds, &labels)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&metrics.to_json())?),
        Format::Table => print!("{}", metrics.table()),
    }
    Ok(())
}
