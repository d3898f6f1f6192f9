//! `mica sweep`: the paper's Fig. 3. Trains one run per value of alpha, beta or tau (and
//! per seed), everything else fixed, then writes the runs' metrics as CSV and a plot of
//! one metric (mean ± std over seeds) against the value. Planned, executed and aggregated
//! as `mica ablate` (see `plan`).

use super::common::{ConfigArgs, DataArgs};
use super::plan::{data_spec, execute, finished_runs, print_status, ExecArgs};
use super::runs::data_name;
use crate::analysis::plots::line_plot_with_errors;
use crate::analysis::sweep::{
    check_metric, resolve_metric, sweep_csv, sweep_points, sweep_stats, SweepRun,
};
use crate::config::Variant;
use crate::data::Dataset;
use crate::sweep::manifest::{safe_part, Manifest, RunEntry};
use crate::train::trainer::atomic_write;
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The hyper-parameters a sweep can vary (paper Fig. 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SweepParam {
    /// Weight of the MMD loss L_m.
    Alpha,
    /// Weight of the element-level loss L_e.
    Beta,
    /// Share of attention entries PEA selects.
    Tau,
}

impl SweepParam {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            SweepParam::Alpha => "alpha",
            SweepParam::Beta => "beta",
            SweepParam::Tau => "tau",
        }
    }

    /// `base` with this parameter set to `v`; an error when `base` already fixes it.
    pub fn apply(self, base: &ConfigArgs, v: f64) -> Result<ConfigArgs> {
        let mut c = base.clone();
        let slot = match self {
            SweepParam::Alpha => &mut c.alpha,
            SweepParam::Beta => &mut c.beta,
            SweepParam::Tau => &mut c.tau,
        };
        if slot.is_some() {
            bail!(
                "--{0} is the swept parameter: give its values with --values, not --{0}",
                self.name()
            );
        }
        *slot = Some(v);
        Ok(c)
    }
}

/// Trains one run per value (and seed) of a hyper-parameter and plots a metric (Fig. 3).
#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Every training option applies to all runs (default variant: mica).
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Hyper-parameter to vary.
    #[arg(long, value_enum, required_unless_present_any = ["status", "aggregate"])]
    pub param: Option<SweepParam>,
    /// Values to try, comma-separated (e.g. 0.1,0.3,0.5,0.8,1.0).
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["status", "aggregate"])]
    pub values: Vec<f64>,
    /// Training seeds per value, comma-separated (error bars need two or more).
    #[arg(long, value_delimiter = ',', default_value = "1111")]
    pub seeds: Vec<u64>,
    /// Metric to plot: a flat key (mult.acc_2, mmsa.Non0_acc_2, mult_mean.acc, ...) or an
    /// alias (acc2, acc7, acc5, f1, mae, corr; acc, f1 for IEMOCAP). Default: acc2 (acc).
    #[arg(long)]
    pub metric: Option<String>,
    /// Output directory: runs go to OUT/<param>-<value>/seed-<seed>/, results to
    /// OUT/sweep.{csv,json,png} (default: runs/sweep-<param>-<data>). Finished runs there
    /// are reused, killed ones continued.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No per-epoch lines (the per-run progress lines stay).
    #[arg(long)]
    pub quiet: bool,
    /// Executor, status and aggregation options.
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// The plan of `mica sweep`: one run per value and seed, `<param>-<value>/seed-<seed>`.
pub fn plan(a: &SweepArgs, ds: &Dataset) -> Result<Manifest> {
    let param = a.param.context("--param: give alpha, beta or tau")?;
    ensure!(!a.seeds.is_empty(), "--seeds: give at least one seed");
    ensure!(!a.values.is_empty(), "--values: give at least one value");
    ensure!(
        a.values.iter().all(|v| v.is_finite()),
        "--values: every value must be a finite number"
    );
    let p = param.name();
    let variant = a.cfg.variant.unwrap_or(Variant::Mica);
    let mut runs = Vec::new();
    let mut metric: Option<String> = None;
    for &value in &a.values {
        let cargs = param.apply(&a.cfg, value)?;
        for &seed in &a.seeds {
            let config = cargs.build(&a.data, ds, seed)?;
            metric.get_or_insert_with(|| {
                resolve_metric(a.metric.as_deref(), config.task.is_sentiment())
            });
            let id = format!("{}/seed-{seed}", safe_part(&format!("{p}-{value}")));
            if runs.iter().any(|r: &RunEntry| r.id == id) {
                continue; // a value or seed given twice
            }
            runs.push(RunEntry {
                id,
                seed,
                labels: BTreeMap::from([("value".to_string(), value.to_string())]),
                config,
            });
        }
    }
    let aggregate = serde_json::json!({
        "param": p, "metric": metric, "variant": variant.name(), "data": data_name(&a.data),
        "values": a.values, "seeds": a.seeds,
    });
    Manifest::new("sweep", data_spec(&a.data, ds), aggregate, runs)
}

/// Runs `mica sweep`.
pub fn run(a: &SweepArgs) -> Result<()> {
    if let Some(dir) = &a.exec.status {
        return print_status(dir);
    }
    if let Some(dir) = &a.exec.aggregate {
        return super::ablate::aggregate_dir(dir);
    }
    a.exec.check()?;
    let param = a.param.context("--param: give alpha, beta or tau")?;
    let ds = a.data.load()?;
    let m = plan(a, &ds)?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("sweep-{}-{}", param.name(), data_name(&a.data)))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if execute(&out, &m, &ds, &a.exec, a.quiet)? {
        aggregate(&out, &m)?;
    }
    Ok(())
}

/// Fig. 3 from the finished runs of a sweep plan: `OUT/sweep.{csv,json,png}`.
pub fn aggregate(out: &Path, m: &Manifest) -> Result<()> {
    let t0 = Instant::now();
    let done = finished_runs(out, m)?;
    let g = &m.aggregate;
    let text = |k: &str| -> Result<String> {
        g[k].as_str()
            .map(str::to_string)
            .with_context(|| format!("manifest.json: bad `aggregate.{k}`"))
    };
    let (p, metric, variant, name) = (
        text("param")?,
        text("metric")?,
        text("variant")?,
        text("data")?,
    );
    let mut runs: Vec<SweepRun> = Vec::new();
    for (e, metrics) in done {
        let value: f64 = e
            .labels
            .get("value")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("manifest.json: run {} has no numeric `value` label", e.id))?;
        runs.push(SweepRun {
            value,
            seed: e.seed,
            metrics,
        });
    }
    check_metric(&runs, &metric)?;
    let seeds: Vec<u64> = serde_json::from_value(g["seeds"].clone()).unwrap_or_default();
    let pts = sweep_points(&runs, &metric);
    let png = out.join("sweep.png");
    line_plot_with_errors(
        &png,
        &format!(
            "Sensitivity to {p} ({variant} on {name}, {} seed(s))",
            seeds.len()
        ),
        &p,
        &format!("{metric} (mean ± std)"),
        &[(variant.clone(), pts)],
    )?;
    atomic_write(&out.join("sweep.csv"), sweep_csv(&p, &runs).as_bytes())?;
    let stats: Vec<serde_json::Value> = sweep_stats(&runs, &metric)
        .into_iter()
        .map(|(v, s)| serde_json::json!({ "value": v, "mean": s.mean, "std": s.std, "std_sample": s.std_sample, "n": s.n }))
        .collect();
    let json = serde_json::json!({
        "param": p, "metric": metric, "variant": variant, "data": name,
        "values": g["values"], "seeds": seeds, "points": stats, "runs": runs,
    });
    atomic_write(
        &out.join("sweep.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!("{p},{metric} mean,std");
    for s in json["points"].as_array().into_iter().flatten() {
        println!("{},{},{}", s["value"], s["mean"], s["std"]);
    }
    eprintln!(
        "wrote {}, sweep.csv and sweep.json in {} ({:.1}s)",
        png.display(),
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swept_parameter_is_set_and_not_given_twice() {
        let base = ConfigArgs::default();
        assert_eq!(SweepParam::Tau.apply(&base, 0.3).unwrap().tau, Some(0.3));
        let fixed = ConfigArgs {
            alpha: Some(1.0),
            ..Default::default()
        };
        assert!(SweepParam::Alpha.apply(&fixed, 0.3).is_err());
        assert_eq!(
            SweepParam::Beta.apply(&fixed, 0.2).unwrap().alpha,
            Some(1.0)
        );
    }
}
