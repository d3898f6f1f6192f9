//! `mica eval` and `mica predict`: a saved checkpoint on any split of any dataset.

use super::common::DataArgs;
use crate::data::Split;
use crate::train::checkpoint;
use crate::train::trainer::{atomic_write, check_split, predict_split, split_metrics};
use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use std::path::PathBuf;

/// Evaluates a checkpoint on one split: MulT's and MMSA's metric sets.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory (a run's `best` or `last`, or an imported model).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Where to save the JSON (default: CHECKPOINT/eval-<split>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Loads the checkpoint, the data and the split, checking they fit.
fn setup(
    ckpt: &std::path::Path,
    data: &DataArgs,
    split: &str,
) -> Result<(
    crate::config::Config,
    crate::model::Model,
    crate::data::Dataset,
)> {
    let (cfg, _store, model) = checkpoint::load(ckpt, &Device::Cpu)?;
    let ds = data.load()?;
    let s: &Split = ds.splits.get(split).with_context(|| {
        format!(
            "no split `{split}` (the data has: {})",
            ds.splits.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    check_split(&cfg, s, split)?;
    Ok((cfg, model, ds))
}

/// Runs `mica eval`: prints `{"mult": .., "mmsa": ..}` and a readable table; saves the JSON.
pub fn run_eval(a: &EvalArgs) -> Result<()> {
    let (cfg, model, ds) = setup(&a.checkpoint, &a.data, &a.split)?;
    let split = &ds.splits[&a.split];
    let (preds, loss) = predict_split(&model, &cfg, split, &Device::Cpu)?;
    let m = split_metrics(cfg.task, split, &preds)?;
    let json = m.to_json();
    println!("{}", serde_json::to_string_pretty(&json)?);
    eprintln!(
        "{} split `{}` ({} samples, task loss {loss:.4}):\n{}",
        a.checkpoint.display(),
        a.split,
        split.len(),
        m.table()
    );
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.checkpoint.join(format!("eval-{}.json", a.split)));
    atomic_write(&out, serde_json::to_string_pretty(&json)?.as_bytes())?;
    Ok(())
}

/// Writes a checkpoint's predictions on one split to CSV.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Split to predict.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// CSV to write: id,pred,label (sentiment) or id,pred_0..pred_7,label_0..label_3 (IEMOCAP).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `mica predict`.
pub fn run_predict(a: &PredictArgs) -> Result<()> {
    let (cfg, model, ds) = setup(&a.checkpoint, &a.data, &a.split)?;
    let split = &ds.splits[&a.split];
    let (preds, _) = predict_split(&model, &cfg, split, &Device::Cpu)?;
    let labels = crate::data::batch::labels_f64(&split.labels);
    let (pw, lw) = (cfg.task.pred_width(), cfg.task.label_width());
    let mut s = String::from("id,");
    if pw == 1 {
        s.push_str("pred,label\n");
    } else {
        let p: Vec<String> = (0..pw).map(|i| format!("pred_{i}")).collect();
        let l: Vec<String> = (0..lw).map(|i| format!("label_{i}")).collect();
        s.push_str(&format!("{},{}\n", p.join(","), l.join(",")));
    }
    for i in 0..split.len() {
        let id = split
            .ids
            .as_ref()
            .map(|v| v[i].replace(',', ";"))
            .unwrap_or_else(|| i.to_string());
        let p: Vec<String> = preds[i * pw..(i + 1) * pw]
            .iter()
            .map(|x| format!("{x}"))
            .collect();
        let l: Vec<String> = labels[i * lw..(i + 1) * lw]
            .iter()
            .map(|x| format!("{x}"))
            .collect();
        s.push_str(&format!("{id},{},{}\n", p.join(","), l.join(",")));
    }
    atomic_write(&a.out, s.as_bytes())?;
    eprintln!("wrote {} predictions to {}", split.len(), a.out.display());
    Ok(())
}
