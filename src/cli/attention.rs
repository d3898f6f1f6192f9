//! `mica attention`: the paper's Fig. 4. One sample's crossmodal attention map of one block
//! and layer as a heatmap (target steps top to bottom, source steps left to right,
//! padding cropped), the ground-truth co-occurring cells outlined in red where the data
//! has intervals; two checkpoints are drawn side by side (e.g. MICA vs the backbone).

use super::analyze::{get_split, resolve_checkpoint};
use super::common::DataArgs;
use crate::analysis::alignment::{
    attention_map, parse_block, parse_layer, AttentionMap, MOD_UPPER,
};
use crate::analysis::plots::{heatmap, side_by_side, HeatmapPanel};
use crate::data::{Split, MODALITIES};
use crate::train::checkpoint;
use crate::train::trainer::check_split;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use clap::Args;
use std::path::PathBuf;

/// Draws a crossmodal attention map of one sample (Fig. 4).
#[derive(Args, Debug)]
pub struct AttentionArgs {
    /// Checkpoint directory (or run directory = its `best`); give it twice to draw two
    /// models side by side (left: the first).
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Split the sample comes from.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// The sample: its id (when the data has ids), else its 0-based index in the split.
    #[arg(long)]
    pub sample: String,
    /// Layer: 1-based index or `last`.
    #[arg(long, default_value = "last")]
    pub layer: String,
    /// Crossmodal block SOURCE->TARGET with L, A, V (e.g. V->L: the text queries attend to
    /// the vision keys). Quote it in a shell (`'V->L'`), or write V-L.
    #[arg(long, default_value = "V->L")]
    pub block: String,
    /// Head: 0-based index, or `mean` for the average over heads.
    #[arg(long, default_value = "mean")]
    pub head: String,
    /// PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// The index of a sample given by id or 0-based index.
pub fn resolve_sample(split: &Split, s: &str) -> Result<usize> {
    if let Some(i) = split
        .ids
        .as_ref()
        .and_then(|ids| ids.iter().position(|x| x == s))
    {
        return Ok(i);
    }
    let i: usize = s.trim().parse().with_context(|| {
        format!("--sample `{s}`: neither an id of the split nor a 0-based index")
    })?;
    ensure!(
        i < split.len(),
        "--sample {i}: the split has {} samples (0-based)",
        split.len()
    );
    Ok(i)
}

/// Parses `--head`: `mean` → `None`, else a 0-based index.
pub fn parse_head(s: &str) -> Result<Option<usize>> {
    if s.trim().eq_ignore_ascii_case("mean") {
        return Ok(None);
    }
    Ok(Some(s.trim().parse().with_context(|| {
        format!("--head `{s}`: expected a 0-based index or `mean`")
    })?))
}

/// Panel title: label plus this map's correlation accuracy when known.
fn panel_title(label: &str, m: &AttentionMap) -> String {
    match &m.corr {
        Some(c) if c.count > 0 => format!(
            "{label} (Corr. Acc {:.0}%, {} of {} rows)",
            100.0 * c.accuracy(),
            c.hits.round(),
            c.count
        ),
        _ => label.to_string(),
    }
}

/// Runs `mica attention`.
pub fn run(a: &AttentionArgs) -> Result<()> {
    if a.checkpoint.len() > 2 {
        bail!("--checkpoint: give one, or two for a side-by-side comparison");
    }
    let (target, source) = parse_block(&a.block)?;
    let layer = parse_layer(&a.layer)?;
    let head = parse_head(&a.head)?;
    let ds = a.data.load()?;
    let split = get_split(&ds, &a.split)?;
    let sample = resolve_sample(split, &a.sample)?;
    let mut maps = Vec::new();
    for p in &a.checkpoint {
        let dir = resolve_checkpoint(p);
        let (cfg, _store, model) = checkpoint::load(&dir, &Device::Cpu)?;
        check_split(&cfg, split, &a.split)
            .with_context(|| format!("checkpoint {}", dir.display()))?;
        let m = attention_map(&model, split, sample, layer, target, source, head)
            .with_context(|| format!("checkpoint {}", dir.display()))?;
        eprintln!(
            "{}: {} x {} real steps, layer {}/{}, {} heads{}",
            dir.display(),
            m.rows,
            m.cols,
            m.layer,
            m.layers,
            m.heads,
            m.corr
                .map(|c| format!(
                    ", Corr. Acc of this map {:.3} (chance {:.3})",
                    c.accuracy(),
                    c.chance_level()
                ))
                .unwrap_or_else(|| ", no intervals: no ground-truth outline".into())
        );
        maps.push((cfg.variant.name().to_string(), m));
    }
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let id = split
        .ids
        .as_ref()
        .map(|ids| ids[sample].clone())
        .unwrap_or_else(|| sample.to_string());
    let head_s = head.map_or("mean over heads".into(), |h| format!("head {h}"));
    let title = format!(
        "sample {id}, layer {}/{}, block {}, {head_s}",
        maps[0].1.layer,
        maps[0].1.layers,
        a.block.to_ascii_uppercase()
    );
    let row_label = format!("target {} ({}) step", MOD_UPPER[target], MODALITIES[target]);
    let col_label = format!("source {} ({}) step", MOD_UPPER[source], MODALITIES[source]);
    let titles: Vec<String> = maps.iter().map(|(l, m)| panel_title(l, m)).collect();
    let panels: Vec<HeatmapPanel> = maps
        .iter()
        .zip(&titles)
        .map(|((_, m), t)| HeatmapPanel {
            title: t,
            matrix: &m.matrix,
            rows: m.rows,
            cols: m.cols,
            outline: m.truth.as_deref(),
            row_label: &row_label,
            col_label: &col_label,
        })
        .collect();
    match panels.as_slice() {
        [one] => heatmap(
            &a.out,
            &format!("{}: {title}", one.title),
            one.matrix,
            one.rows,
            one.cols,
            one.outline,
            one.row_label,
            one.col_label,
        )?,
        [left, right] => side_by_side(&a.out, &title, left, right)?,
        _ => unreachable!("one or two checkpoints"),
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        assert_eq!(parse_head("mean").unwrap(), None);
        assert_eq!(parse_head("1").unwrap(), Some(1));
        assert!(parse_head("x").is_err());
    }
}
