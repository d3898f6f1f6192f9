//! `mica eval` and `mica predict`: a saved checkpoint on any split of any dataset.

use super::common::DataArgs;
use crate::config::Task;
use crate::data::{Labels, Split};
use crate::eval::predictions::csv_field;
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
    /// Where to save the JSON (default: CHECKPOINT/eval-<split>.json; when that cannot be
    /// written, e.g. beside a read-only checkpoint, a warning is printed and eval succeeds).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Loads the checkpoint, the data and the split, checking they fit and that `out` is
/// none of the files read.
fn setup(
    ckpt: &std::path::Path,
    data: &DataArgs,
    split: &str,
    out: Option<&std::path::Path>,
) -> Result<(
    crate::config::Config,
    crate::model::Model,
    crate::data::Dataset,
)> {
    if let Some(out) = out {
        let mut inputs = checkpoint::input_files(ckpt);
        inputs.extend(data.input_files());
        crate::durable::ensure_not_input(out, "--out", &inputs)?;
    }
    let (cfg, _store, model) = checkpoint::load(ckpt, &Device::Cpu)?;
    let ds = data.load()?;
    let s: &Split = ds.splits.get(split).with_context(|| {
        format!(
            "no split `{split}` (the data has: {})",
            ds.splits.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let kind = |task: crate::config::Task| match task {
        crate::config::Task::Iemocap => "IEMOCAP emotions, 8 outputs",
        _ => "sentiment, 1 output",
    };
    match (&s.labels, cfg.task) {
        (Labels::Emotion(_), Task::Mosi | Task::Mosei) | (Labels::Sentiment(_), Task::Iemocap) => {
            anyhow::bail!(
                "{}: the checkpoint was trained for task {} ({}), but split `{split}` of the data has {} labels: evaluate it on data of its task",
                ckpt.display(),
                cfg.task.name(),
                kind(cfg.task),
                if matches!(s.labels, Labels::Emotion(_)) { "IEMOCAP emotion" } else { "sentiment" }
            )
        }
        _ => {}
    }
    check_split(&cfg, s, split)?;
    Ok((cfg, model, ds))
}

/// Runs `mica eval`: prints `{"mult": .., "mmsa": ..}` and a readable table; saves the JSON.
pub fn run_eval(a: &EvalArgs) -> Result<()> {
    let default_out = a.checkpoint.join(format!("eval-{}.json", a.split));
    let out = a.out.clone().unwrap_or(default_out);
    let (cfg, model, ds) = setup(&a.checkpoint, &a.data, &a.split, Some(&out))?;
    let split = &ds.splits[&a.split];
    let (preds, loss) = predict_split(&model, &cfg, split, &Device::Cpu)?;
    let m = split_metrics(cfg.task, split, &preds)
        .with_context(|| format!("{} on split `{}`", a.checkpoint.display(), a.split))?;
    let json = m.to_json();
    println!("{}", serde_json::to_string_pretty(&json)?);
    eprintln!(
        "{} split `{}` ({} samples, task loss {loss:.4}):\n{}",
        a.checkpoint.display(),
        a.split,
        split.len(),
        m.table()
    );
    match atomic_write(&out, serde_json::to_string_pretty(&json)?.as_bytes()) {
        Ok(()) => Ok(()),
        // The metrics are printed: a checkpoint directory that cannot take the default
        // file (read-only) is no failure; an explicit --out is.
        Err(e) if a.out.is_none() => {
            eprintln!("warning: the metrics were not saved ({e:#}); use --out FILE to save them elsewhere");
            Ok(())
        }
        Err(e) => Err(e),
    }
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
    let (cfg, model, ds) = setup(&a.checkpoint, &a.data, &a.split, Some(&a.out))?;
    let split = &ds.splits[&a.split];
    let (preds, _) = predict_split(&model, &cfg, split, &Device::Cpu)?;
    let (pw, lw) = (cfg.task.pred_width(), cfg.task.label_width());
    if let Some(k) = preds.iter().position(|x| !x.is_finite()) {
        let i = k / pw;
        let id = split
            .ids
            .as_ref()
            .map_or_else(|| i.to_string(), |v| v[i].clone());
        anyhow::bail!(
            "{}: the prediction for sample {id} (index {i}) of split `{}` is {}: the checkpoint's weights or the data hold NaN or infinity; nothing was written",
            a.checkpoint.display(),
            a.split,
            preds[k]
        );
    }
    let labels = crate::data::batch::labels_f64(&split.labels);
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
            .map(|v| csv_field(&v[i]))
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
