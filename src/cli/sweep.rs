//! `mica sweep`: the paper's Fig. 3. Trains one run per value of alpha, beta or tau (and
//! per seed), everything else fixed, then writes the runs' metrics as CSV and a plot of
//! one metric (mean ± std over seeds) against the value.

use super::common::{ConfigArgs, DataArgs};
use super::runs::{data_name, seed_dir, summary_line, train_or_reuse};
use crate::analysis::plots::line_plot_with_errors;
use crate::analysis::sweep::{
    check_metric, resolve_metric, sweep_csv, sweep_points, sweep_stats, SweepRun,
};
use crate::config::Variant;
use crate::train::trainer::atomic_write;
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
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
    #[arg(long, value_enum)]
    pub param: SweepParam,
    /// Values to try, comma-separated (e.g. 0.1,0.3,0.5,0.8,1.0).
    #[arg(long, value_delimiter = ',', required = true)]
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
}

/// Runs `mica sweep`.
pub fn run(a: &SweepArgs) -> Result<()> {
    ensure!(!a.seeds.is_empty(), "--seeds: give at least one seed");
    ensure!(
        a.values.iter().all(|v| v.is_finite()),
        "--values: every value must be a finite number"
    );
    let t0 = Instant::now();
    let ds = a.data.load()?;
    let name = data_name(&a.data);
    let p = a.param.name();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{p}-{name}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let variant = a.cfg.variant.unwrap_or(Variant::Mica);
    let total = a.values.len() * a.seeds.len();
    let mut runs: Vec<SweepRun> = Vec::new();
    let mut metric: Option<String> = None;
    let mut k = 0;
    for &value in &a.values {
        let cargs = a.param.apply(&a.cfg, value)?;
        for &seed in &a.seeds {
            k += 1;
            let cfg = cargs.build(&a.data, &ds, seed)?;
            let metric = metric.get_or_insert_with(|| {
                resolve_metric(a.metric.as_deref(), cfg.task.is_sentiment())
            });
            let dir = seed_dir(&out.join(format!("{p}-{value}")), seed);
            eprintln!(
                "[{k}/{total}] {p} = {value}, seed {seed} -> {}",
                dir.display()
            );
            let t = Instant::now();
            let (m, status) = train_or_reuse(&cfg, &ds, &a.data.source(), &dir, !a.quiet)?;
            eprintln!(
                "[{k}/{total}] {p} = {value}, seed {seed}: {} in {:.1}s | {}",
                status.word(),
                t.elapsed().as_secs_f64(),
                summary_line(&m)
            );
            let r = SweepRun {
                value,
                seed,
                metrics: m,
            };
            check_metric(std::slice::from_ref(&r), metric)?;
            runs.push(r);
        }
    }
    let metric = metric.context("no run")?;
    let pts = sweep_points(&runs, &metric);
    let png = out.join("sweep.png");
    line_plot_with_errors(
        &png,
        &format!(
            "Sensitivity to {p} ({} on {name}, {} seed(s))",
            variant.name(),
            a.seeds.len()
        ),
        p,
        &format!("{metric} (mean ± std)"),
        &[(variant.name().to_string(), pts)],
    )?;
    atomic_write(&out.join("sweep.csv"), sweep_csv(p, &runs).as_bytes())?;
    let stats: Vec<serde_json::Value> = sweep_stats(&runs, &metric)
        .into_iter()
        .map(|(v, s)| serde_json::json!({ "value": v, "mean": s.mean, "std": s.std, "std_sample": s.std_sample, "n": s.n }))
        .collect();
    let json = serde_json::json!({
        "param": p, "metric": metric, "variant": variant.name(), "data": name,
        "values": a.values, "seeds": a.seeds, "points": stats, "runs": runs,
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
