//! `mica analyze`: the paper's Table 6 for one or several checkpoints — proxy A-distance
//! between the queries and keys of one layer (default: the last) per crossmodal block and
//! averaged, and the correlation accuracy of the head-averaged attention maps against the
//! data's ground-truth element intervals (when the data has them).

use super::common::DataArgs;
use super::runs::data_name;
use crate::analysis::ablation::fmt_metric;
use crate::analysis::alignment::{analyze_split, parse_layer, AnalyzeOptions, SplitAlignment};
use crate::data::Split;
use crate::train::checkpoint;
use crate::train::trainer::{atomic_write, check_split};
use anyhow::{ensure, Context, Result};
use candle_core::Device;
use clap::Args;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Table 6 (A-distance and correlation accuracy) of checkpoints on one split.
#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Checkpoint directory (a run's `best` or `last`, or the run directory itself, which
    /// means its `best`). Repeat to put several models side by side (e.g. MICA and the
    /// backbone).
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// Row label per --checkpoint, in order (default: the checkpoint's variant name).
    #[arg(long)]
    pub label: Vec<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Split to analyse.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Layer to analyse: 1-based index or `last` (the paper: the last layer).
    #[arg(long, default_value = "last")]
    pub layer: String,
    /// At most this many queries and this many keys per block enter the A-distance
    /// (uniform seeded sample of the split's real elements).
    #[arg(long, default_value_t = 2000)]
    pub max_elements: usize,
    /// Seed of the element sample and of the domain classifier's train/test split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Forward batch size (default: the checkpoint's training batch size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Output directory for analysis.json and analysis.md (default: next to the first
    /// checkpoint, RUN/analysis-<split>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One model's row of the output.
#[derive(Debug, Clone, Serialize)]
pub struct AnalyzedModel {
    /// Row label.
    pub label: String,
    /// Checkpoint directory read.
    pub checkpoint: PathBuf,
    /// The checkpoint's variant.
    pub variant: String,
    /// Its Table 6 numbers.
    pub analysis: SplitAlignment,
}

/// A run directory (it holds a `config.json` but no weights) means its `best` checkpoint.
pub fn resolve_checkpoint(p: &Path) -> PathBuf {
    let has_weights =
        checkpoint::existing(p).is_some_and(|d| d.join("model.safetensors").is_file());
    if !has_weights && checkpoint::existing(&p.join("best")).is_some() {
        p.join("best")
    } else {
        p.to_path_buf()
    }
}

/// Labels: the given ones, else the variant name, made unique with `#2`, `#3`, ...
pub fn row_labels(given: &[String], variants: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let base = given.get(i).cloned().unwrap_or_else(|| v.clone());
        let mut label = base.clone();
        let mut k = 2;
        while out.contains(&label) {
            label = format!("{base}#{k}");
            k += 1;
        }
        out.push(label);
    }
    out
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| fmt_metric(x, true))
}

/// Markdown of Table 6: one row per model (means over blocks), then one column pair per
/// model per block.
pub fn render_markdown(models: &[AnalyzedModel], data: &str, split: &str) -> String {
    let mut s = String::new();
    let Some(first) = models.first() else {
        return s;
    };
    let a = &first.analysis;
    let _ = writeln!(
        s,
        "## Table 6: alignment on {data}, split `{split}` ({} samples), layer {} of {}\n",
        a.samples, a.layer, a.layers
    );
    let _ = writeln!(
        s,
        "A-distance: proxy `2 (1 - 2 err)` of a linear domain classifier between the real \
         (non-padding) queries and keys of a block (half train, half test; raw, may be < 0). \
         Corr. Acc: share of real target steps whose most-attended real source step (head-averaged \
         attention) truly co-occurs; chance = what a uniform map scores. Means are over the blocks.\n"
    );
    let _ = writeln!(
        s,
        "Entropy: mean normalised entropy of a head's attention row over the real keys \
         (1 = uniform, 0 = one key); |q|, |k|: rms norms of the real queries and keys.\n"
    );
    let _ = writeln!(
        s,
        "| Model | A-distance | Corr. Acc (%) | chance (%) | Entropy | \\|q\\| | \\|k\\| |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for m in models {
        let a = &m.analysis;
        let _ = writeln!(
            s,
            "| {} | {:.3} | {} | {} | {:.3} | {:.3} | {:.3} |",
            m.label,
            a.mean_a_distance,
            pct(a.mean_corr_acc),
            pct(a.mean_corr_chance),
            a.mean_attn_entropy,
            a.mean_qk_rms[0],
            a.mean_qk_rms[1]
        );
    }
    if let Some(note) = models
        .iter()
        .find_map(|m| m.analysis.corr_acc_unavailable.clone())
    {
        let _ = writeln!(s, "\n**{note}**");
    }
    let _ = writeln!(s, "\n### Per block (A-distance / Corr. Acc %)\n");
    let labels: Vec<&str> = models.iter().map(|m| m.label.as_str()).collect();
    let _ = writeln!(s, "| Block | {} |", labels.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(labels.len()));
    let blocks: Vec<String> = first
        .analysis
        .blocks
        .iter()
        .map(|b| b.block.clone())
        .collect();
    for name in blocks {
        let cells: Vec<String> = models
            .iter()
            .map(|m| {
                m.analysis
                    .blocks
                    .iter()
                    .find(|b| b.block == name)
                    .map_or("–".into(), |b| {
                        format!("{:.3} / {}", b.a_distance, pct(b.corr_acc))
                    })
            })
            .collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    }
    s
}

/// The requested split of the data, or an error naming the available ones.
pub fn get_split<'a>(ds: &'a crate::data::Dataset, name: &str) -> Result<&'a Split> {
    ds.splits.get(name).with_context(|| {
        format!(
            "no split `{name}` (the data has: {})",
            ds.splits.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Runs `mica analyze`.
pub fn run(a: &AnalyzeArgs) -> Result<()> {
    ensure!(
        a.label.is_empty() || a.label.len() == a.checkpoint.len(),
        "--label: give one per --checkpoint ({} labels, {} checkpoints)",
        a.label.len(),
        a.checkpoint.len()
    );
    let t0 = std::time::Instant::now();
    let layer = parse_layer(&a.layer)?;
    let ds = a.data.load()?;
    let split = get_split(&ds, &a.split)?;
    let mut loaded = Vec::new();
    for p in &a.checkpoint {
        let dir = resolve_checkpoint(p);
        let (cfg, _store, model) = checkpoint::load(&dir, &Device::Cpu)?;
        check_split(&cfg, split, &a.split)
            .with_context(|| format!("checkpoint {}", dir.display()))?;
        loaded.push((dir, cfg, model));
    }
    let variants: Vec<String> = loaded
        .iter()
        .map(|l| l.1.variant.name().to_string())
        .collect();
    let labels = row_labels(&a.label, &variants);
    let mut models = Vec::new();
    for ((dir, cfg, model), label) in loaded.iter().zip(labels) {
        eprintln!(
            "analysing {label} ({}) on split `{}` ...",
            dir.display(),
            a.split
        );
        let opts = AnalyzeOptions {
            layer,
            max_elements: a.max_elements,
            seed: a.seed,
            batch_size: a.batch_size.unwrap_or(cfg.train.batch_size),
        };
        let analysis = analyze_split(model, split, &opts)
            .with_context(|| format!("analysing {}", dir.display()))?;
        models.push(AnalyzedModel {
            label,
            checkpoint: dir.clone(),
            variant: cfg.variant.name().to_string(),
            analysis,
        });
    }
    let name = data_name(&a.data);
    let md = render_markdown(&models, &name, &a.split);
    let out = a.out.clone().unwrap_or_else(|| {
        let first = &models[0].checkpoint;
        first
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(format!("analysis-{}", a.split))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::json!({
        "data": name,
        "split": a.split,
        "layer": a.layer,
        "max_elements": a.max_elements,
        "seed": a.seed,
        "corr_acc_available": split.intervals.is_some(),
        "models": models,
    });
    atomic_write(
        &out.join("analysis.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    atomic_write(&out.join("analysis.md"), md.as_bytes())?;
    println!("{md}");
    if let Some(note) = models[0].analysis.corr_acc_unavailable.as_deref() {
        eprintln!("note: {note}");
    }
    eprintln!(
        "wrote {} and {} ({:.1}s)",
        out.join("analysis.json").display(),
        out.join("analysis.md").display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_default_to_variants_and_stay_unique() {
        let v = vec![
            "mica".to_string(),
            "mica".to_string(),
            "backbone".to_string(),
        ];
        assert_eq!(row_labels(&[], &v), vec!["mica", "mica#2", "backbone"]);
        let given = vec!["A".to_string(), "A".to_string(), "B".to_string()];
        assert_eq!(row_labels(&given, &v), vec!["A", "A#2", "B"]);
    }
}
