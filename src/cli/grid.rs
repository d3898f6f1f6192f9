//! `mica grid`: any config keys × values × seeds. `--vary section.key=V1,V2,..` (one flag
//! per key) spans the grid, every other option is shared; one run per cell and seed in
//! `OUT/<key=value,..>/seed-<seed>/`, then `OUT/grid.{md,json,csv}`: mean ± std per cell
//! and, when a cell is the backbone or MulT, paired t-tests against it. Planned, executed
//! and aggregated as `mica ablate` (see `plan`).

use super::common::{ConfigArgs, DataArgs};
use super::plan::{data_spec, execute, finished_runs, print_status, ExecArgs};
use super::runs::data_name;
use crate::analysis::ablation::{ablation_table, main_metrics, render_markdown, RowRuns};
use crate::data::Dataset;
use crate::sweep::manifest::{safe_part, Manifest, RunEntry};
use crate::train::trainer::atomic_write;
use anyhow::{ensure, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Trains every combination of the given config values over seeds and tabulates them.
#[derive(Args, Debug)]
pub struct GridArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Options shared by every run (the same as `mica train`'s).
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// A grid axis: a config key and its values, `section.key=V1,V2,..` (keys as for
    /// --set, e.g. train.lr=0.001,0.0003 or model.d=16,32); repeat for more axes.
    #[arg(long, value_name = "KEY=V1,V2,..", required_unless_present_any = ["status", "aggregate"])]
    pub vary: Vec<String>,
    /// Training seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1111")]
    pub seeds: Vec<u64>,
    /// Output directory (default: runs/grid-<data>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No per-epoch lines (the per-run progress lines stay).
    #[arg(long)]
    pub quiet: bool,
    /// Executor, status and aggregation options.
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Parses the `--vary` axes: (key, values), keys distinct, each with one or more values.
pub fn parse_axes(vary: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    for v in vary {
        let (k, vals) = v
            .split_once('=')
            .with_context(|| format!("--vary `{v}`: expected section.key=V1,V2,.."))?;
        let k = k.trim();
        ensure!(
            !k.is_empty() && k.contains('.'),
            "--vary `{v}`: expected a key such as train.lr or model.d before `=`"
        );
        ensure!(
            !axes.iter().any(|(o, _)| o == k),
            "--vary: key `{k}` given twice: list its values in one flag"
        );
        let vals: Vec<String> = super::ablate::dedup_keep_order(
            &vals
                .split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>(),
        );
        ensure!(
            vals.iter().all(|s| !s.is_empty()),
            "--vary `{v}`: an empty value"
        );
        axes.push((k.to_string(), vals));
    }
    Ok(axes)
}

/// Every combination of the axes' values (the last axis varies fastest).
pub fn cells(axes: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (k, vals) in axes {
        out = out
            .into_iter()
            .flat_map(|cell| {
                vals.iter().map(move |v| {
                    let mut c = cell.clone();
                    c.push((k.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    out
}

/// The cell's name (and directory): `key=value,key=value`.
pub fn cell_name(cell: &[(String, String)]) -> String {
    let s = cell
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    safe_part(&s)
}

/// The plan of `mica grid`.
pub fn plan(a: &GridArgs, ds: &Dataset) -> Result<Manifest> {
    let axes = parse_axes(&a.vary)?;
    let seeds = super::ablate::dedup_keep_order(&a.seeds);
    ensure!(!seeds.is_empty(), "--seeds: give at least one seed");
    let mut runs = Vec::new();
    let mut names = Vec::new();
    for cell in cells(&axes) {
        let name = cell_name(&cell);
        ensure!(
            !names.contains(&name),
            "--vary: two cells share the directory name `{name}` (values differing only in characters outside letters, digits and . _ - + = ,)"
        );
        let mut cargs = a.cfg.clone();
        cargs
            .set
            .extend(cell.iter().map(|(k, v)| format!("{k}={v}")));
        for &seed in &seeds {
            let config = cargs
                .build(&a.data, ds, seed)
                .with_context(|| format!("grid cell {name}"))?;
            let mut labels: BTreeMap<String, String> = cell.iter().cloned().collect();
            labels.insert("cell".into(), name.clone());
            runs.push(RunEntry {
                id: format!("{name}/seed-{seed}"),
                seed,
                labels,
                config,
            });
        }
        names.push(name);
    }
    let aggregate = serde_json::json!({
        "data": data_name(&a.data), "seeds": seeds, "cells": names,
        "keys": axes.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
    });
    Manifest::new("grid", data_spec(&a.data, ds), aggregate, runs)
}

/// Runs `mica grid`.
pub fn run(a: &GridArgs) -> Result<()> {
    if let Some(dir) = &a.exec.status {
        return print_status(dir);
    }
    if let Some(dir) = &a.exec.aggregate {
        return super::ablate::aggregate_dir(dir);
    }
    a.exec.check()?;
    let ds = a.data.load()?;
    let m = plan(a, &ds)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("grid-{}", data_name(&a.data))));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if execute(&out, &m, &ds, &a.exec, a.quiet)? {
        aggregate(&out, &m)?;
    }
    Ok(())
}

/// The grid's tables from its finished runs: `OUT/grid.{md,json,csv}`.
pub fn aggregate(out: &Path, m: &Manifest) -> Result<()> {
    let done = finished_runs(out, m)?;
    let cells: Vec<String> = serde_json::from_value(m.aggregate["cells"].clone())
        .context("manifest.json: bad `aggregate.cells`")?;
    let keys: Vec<String> = serde_json::from_value(m.aggregate["keys"].clone())
        .context("manifest.json: bad `aggregate.keys`")?;
    let name = m.aggregate["data"].as_str().unwrap_or("data");
    let mut rows = Vec::new();
    for c in &cells {
        let runs: BTreeMap<u64, _> = done
            .iter()
            .filter(|(e, _)| e.labels.get("cell") == Some(c))
            .map(|(e, metrics)| (e.seed, metrics.clone()))
            .collect();
        if !runs.is_empty() {
            rows.push(RowRuns {
                name: c.clone(),
                runs,
            });
        }
    }
    let table = ablation_table(&rows);
    let md = render_markdown(&table, &format!("Grid over {} on {name}", keys.join(" × ")));
    // One CSV line per run: the keys' values, the seed, the main metrics.
    let main = main_metrics(table.sentiment);
    let mut csv = String::new();
    let _ = writeln!(
        csv,
        "run,{},seed,{}",
        keys.join(","),
        main.iter().map(|k| k.key).collect::<Vec<_>>().join(",")
    );
    for (e, metrics) in &done {
        let vals: Vec<String> = keys
            .iter()
            .map(|k| e.labels.get(k).cloned().unwrap_or_default())
            .collect();
        let ms: Vec<String> = main
            .iter()
            .map(|k| {
                metrics
                    .get(k.key)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .collect();
        let _ = writeln!(
            csv,
            "{},{},{},{}",
            e.id,
            vals.join(","),
            e.seed,
            ms.join(",")
        );
    }
    let json = serde_json::json!({
        "data": name, "keys": keys, "cells": cells, "table": table,
        "runs": done.iter().map(|(e, metrics)| serde_json::json!({
            "id": e.id, "seed": e.seed, "labels": e.labels, "test": metrics,
        })).collect::<Vec<_>>(),
    });
    atomic_write(&out.join("grid.md"), md.as_bytes())?;
    atomic_write(&out.join("grid.csv"), csv.as_bytes())?;
    atomic_write(
        &out.join("grid.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!("{md}");
    eprintln!("wrote grid.md, grid.csv and grid.json in {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_span_every_combination() {
        let axes = parse_axes(&["train.lr=0.1,0.2".into(), "model.d=8,16,8".into()]).unwrap();
        assert_eq!(axes[1].1, vec!["8", "16"]);
        let c = cells(&axes);
        assert_eq!(c.len(), 4);
        assert_eq!(cell_name(&c[1]), "train.lr=0.1,model.d=16");
        assert!(parse_axes(&["lr".into()]).is_err());
        assert!(parse_axes(&["train.lr=1".into(), "train.lr=2".into()]).is_err());
        assert!(parse_axes(&["train.lr=1,,2".into()]).is_err());
    }
}
