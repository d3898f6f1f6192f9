//! Fig. 3: a hyper-parameter sweep's runs (value, seed, test metrics) as CSV, and the
//! chosen metric's mean ± std over seeds per value as error-bar points.

use super::ablation::FlatMetrics;
use super::plots::ErrorPoint;
use crate::eval::SeedStat;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// One finished run of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRun {
    /// The swept parameter's value.
    pub value: f64,
    /// Training seed.
    pub seed: u64,
    /// Flat test metrics.
    pub metrics: FlatMetrics,
}

/// Resolves a metric name: a flat key (`mult.acc_2`, `mmsa.Non0_acc_2`, `mult_mean.acc`)
/// or a short alias (`acc2`, `acc7`, `acc5`, `f1`, `mae`, `corr`; `acc`, `f1` for
/// emotions); `None` picks the default (Acc2 Non0, or mean accuracy for emotions).
pub fn resolve_metric(name: Option<&str>, sentiment: bool) -> String {
    let n = name.unwrap_or(if sentiment { "acc2" } else { "acc" });
    let alias = match (n.to_ascii_lowercase().as_str(), sentiment) {
        ("acc2", true) => "mult.acc_2",
        ("acc7", true) => "mult.mult_acc_7",
        ("acc5", true) => "mult.mult_acc_5",
        ("f1", true) => "mult.f1",
        ("mae", true) => "mult.mae",
        ("corr", true) => "mult.corr",
        ("acc", false) => "mult_mean.acc",
        ("f1", false) => "mult_mean.f1",
        _ => n,
    };
    alias.to_string()
}

/// Checks that every run has `metric`; the error lists the available names.
pub fn check_metric(runs: &[SweepRun], metric: &str) -> Result<()> {
    if let Some(r) = runs.iter().find(|r| !r.metrics.contains_key(metric)) {
        let names: Vec<&str> = r.metrics.keys().map(String::as_str).collect();
        bail!(
            "no metric `{metric}` (value {}, seed {}); available: {}",
            r.value,
            r.seed,
            names.join(", ")
        );
    }
    Ok(())
}

/// CSV with one line per run: `<param>,seed,<every metric>` (metric columns are the union
/// of all runs' names, sorted; a missing one is empty).
pub fn sweep_csv(param: &str, runs: &[SweepRun]) -> String {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.metrics.keys()).collect();
    let mut s = format!("{param},seed");
    for k in &keys {
        let _ = write!(s, ",{k}");
    }
    s.push('\n');
    for r in runs {
        let _ = write!(s, "{},{}", r.value, r.seed);
        for k in &keys {
            match r.metrics.get(*k) {
                Some(v) => {
                    let _ = write!(s, ",{v}");
                }
                None => s.push(','),
            }
        }
        s.push('\n');
    }
    s
}

/// Per distinct value (ascending), the metric's statistics over the seeds that have it.
pub fn sweep_stats(runs: &[SweepRun], metric: &str) -> Vec<(f64, SeedStat)> {
    let mut values: Vec<f64> = runs.iter().map(|r| r.value).collect();
    values.sort_by(f64::total_cmp);
    values.dedup();
    values
        .into_iter()
        .filter_map(|v| {
            let xs: Vec<f64> = runs
                .iter()
                .filter(|r| r.value == v)
                .filter_map(|r| r.metrics.get(metric).copied())
                .collect();
            (!xs.is_empty()).then(|| (v, SeedStat::of(&xs)))
        })
        .collect()
}

/// Error-bar points (value, mean, population std) of [`sweep_stats`].
pub fn sweep_points(runs: &[SweepRun], metric: &str) -> Vec<ErrorPoint> {
    sweep_stats(runs, metric)
        .into_iter()
        .map(|(v, s)| (v, s.mean, s.std))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(value: f64, seed: u64, acc: f64) -> SweepRun {
        let mut metrics = FlatMetrics::new();
        metrics.insert("mult.acc_2".into(), acc);
        metrics.insert("mult.mae".into(), 1.0);
        SweepRun {
            value,
            seed,
            metrics,
        }
    }

    #[test]
    fn points_group_by_value_in_order() {
        let runs = vec![
            run(0.5, 1, 0.8),
            run(0.1, 1, 0.6),
            run(0.5, 2, 0.9),
            run(0.1, 2, 0.6),
        ];
        let p = sweep_points(&runs, "mult.acc_2");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], (0.1, 0.6, 0.0));
        assert_eq!(p[1].0, 0.5);
        assert!((p[1].1 - 0.85).abs() < 1e-12 && (p[1].2 - 0.05).abs() < 1e-12);
        let csv = sweep_csv("alpha", &runs);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "alpha,seed,mult.acc_2,mult.mae");
        assert_eq!(lines[1], "0.5,1,0.8,1");
        assert_eq!(lines.len(), 5);
        assert!(check_metric(&runs, "mult.acc_2").is_ok());
        let e = check_metric(&runs, "nope").unwrap_err().to_string();
        assert!(e.contains("mult.mae"), "{e}");
    }

    #[test]
    fn metric_aliases() {
        assert_eq!(resolve_metric(None, true), "mult.acc_2");
        assert_eq!(resolve_metric(Some("MAE"), true), "mult.mae");
        assert_eq!(resolve_metric(None, false), "mult_mean.acc");
        assert_eq!(resolve_metric(Some("mmsa.Corr"), true), "mmsa.Corr");
    }
}
