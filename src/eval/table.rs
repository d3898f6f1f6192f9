//! Metrics as tables: the one flattening of a metrics JSON into `set.key` names, the
//! papers' labels and column order, the readable table, and multi-seed aggregation.

use super::metrics::{Metrics, EMOTIONS};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Flattens a metrics JSON object (`{"mult": {"mae": ..}, ..}`) into `set.key` names (e.g.
/// `mult.mae`, `mult.Happy.f1`): numbers as they are, `null` (how JSON writes a `NaN`
/// metric) as `NaN`, other values (strings, booleans, arrays) skipped as not metrics. The
/// one flattening of metrics: [`super::Metrics::flat`] and the readers of `metrics.json`
/// files (Table 5, run listings) both use it.
pub fn flatten_json(v: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    flatten_into("", v, &mut out);
    out
}

fn flatten_into(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(&key, child, out);
            }
        }
        Value::Number(n) => {
            out.insert(prefix.to_string(), n.as_f64().unwrap_or(f64::NAN));
        }
        Value::Null => {
            out.insert(prefix.to_string(), f64::NAN);
        }
        _ => {}
    }
}

/// Human label and whether a metric is shown in percent, for a (set, key) pair.
fn describe(set: &str, key: &str) -> (String, bool) {
    let (label, pct) = match (set, key) {
        (_, "mae") | (_, "MAE") => ("MAE".to_string(), false),
        (_, "corr") | (_, "Corr") => ("Corr".to_string(), false),
        (_, "mult_acc_7") | (_, "Mult_acc_7") => ("Acc7".to_string(), true),
        (_, "mult_acc_5") | (_, "Mult_acc_5") => ("Acc5".to_string(), true),
        ("mult", "acc_2") => ("Acc2 (Non0: t != 0)".to_string(), true),
        ("mult", "f1") => ("F1 (Non0, MulT's swapped args)".to_string(), true),
        (_, "Has0_acc_2") => ("Acc2 (Has0: all, >= 0)".to_string(), true),
        (_, "Has0_F1_score") => ("F1 (Has0)".to_string(), true),
        (_, "Non0_acc_2") => ("Acc2 (Non0: t != 0)".to_string(), true),
        (_, "Non0_F1_score") => ("F1 (Non0)".to_string(), true),
        (_, k) => {
            let (emo, m) = k.split_once('.').unwrap_or(("mean", k));
            let m = if m == "acc" { "Acc" } else { "F1" };
            (format!("{emo} {m}"), true)
        }
    };
    (label, pct)
}

/// Display order inside a set: the papers' column order.
fn order(key: &str) -> usize {
    const ORDER: [&str; 14] = [
        "Has0_acc_2",
        "Has0_F1_score",
        "Non0_acc_2",
        "Non0_F1_score",
        "acc_2",
        "f1",
        "mult_acc_7",
        "Mult_acc_7",
        "mult_acc_5",
        "Mult_acc_5",
        "mae",
        "MAE",
        "corr",
        "Corr",
    ];
    if let Some(i) = ORDER.iter().position(|k| *k == key) {
        return i;
    }
    let emo = key.split('.').next().unwrap_or("");
    100 + EMOTIONS.iter().position(|e| *e == emo).unwrap_or(9) * 2 + key.ends_with(".f1") as usize
}

fn set_title(set: &str) -> &'static str {
    match set {
        "mult" => "metric set: mult (MulT eval_metrics.py)",
        "mmsa" => "metric set: mmsa (MMSA MetricsTop, unrounded)",
        "mult_mean" => "metric set: mult, mean over the four emotions",
        _ => "metric set: other",
    }
}

fn fmt_value(v: f64, pct: bool) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else if pct {
        format!("{:.1}", v * 100.0)
    } else {
        format!("{v:.3}")
    }
}

/// One table row: (set, key, value, optional ± spread).
pub(crate) type Row = (String, String, f64, Option<f64>);

/// Renders rows grouped by metric set, in the papers' column order.
pub(crate) fn render_table(rows: &[Row]) -> String {
    let mut sets: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    sets.dedup();
    let mut out = String::new();
    for set in sets {
        let _ = writeln!(out, "{}", set_title(set));
        let mut mine: Vec<&Row> = rows.iter().filter(|r| r.0 == set).collect();
        mine.sort_by_key(|r| order(&r.1));
        for (_, key, v, spread) in mine {
            let (label, pct) = describe(set, key);
            let mut cell = fmt_value(*v, pct);
            if let Some(s) = spread {
                cell = format!("{cell} ± {}", fmt_value(*s, pct));
            }
            let _ = writeln!(out, "  {label:<32} {cell:>14}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Multi-seed aggregation
// ---------------------------------------------------------------------------------------

/// Mean and spread of one metric over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedStat {
    /// Mean over runs.
    pub mean: f64,
    /// Population standard deviation (ddof 0, MMSA's and numpy's default): the one the
    /// report prints after ±.
    pub std: f64,
    /// Sample standard deviation (ddof 1); `NaN` for a single run.
    pub std_sample: f64,
    /// Number of runs.
    pub n: usize,
}

impl SeedStat {
    /// Statistics of `values`.
    pub fn of(values: &[f64]) -> SeedStat {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        SeedStat {
            mean,
            std: (ss / n as f64).sqrt(),
            std_sample: if n > 1 {
                (ss / (n - 1) as f64).sqrt()
            } else {
                f64::NAN
            },
            n,
        }
    }
}

/// Per-metric mean ± std over several runs (seeds), keyed like [`Metrics::flat`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Statistics per flat metric name.
    pub stats: BTreeMap<String, SeedStat>,
}

/// Aggregates runs of the same task: for every metric present in all runs, mean,
/// population std (reported) and sample std.
pub fn aggregate(runs: &[Metrics]) -> Aggregate {
    let flats: Vec<BTreeMap<String, f64>> = runs.iter().map(Metrics::flat).collect();
    let mut stats = BTreeMap::new();
    if let Some(first) = flats.first() {
        for key in first.keys() {
            let vals: Option<Vec<f64>> = flats.iter().map(|f| f.get(key).copied()).collect();
            if let Some(v) = vals {
                stats.insert(key.clone(), SeedStat::of(&v));
            }
        }
    }
    Aggregate { stats }
}

impl Aggregate {
    /// JSON: `{"mult.mae": {"mean", "std", "std_sample", "n"}, ..}`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.stats).expect("plain numbers")
    }

    /// Table like [`Metrics::table`] with `mean ± std` (population std, ddof 0).
    pub fn table(&self) -> String {
        let rows: Vec<Row> = self
            .stats
            .iter()
            .map(|(k, s)| {
                let (set, name) = k.split_once('.').unwrap_or(("", k.as_str()));
                (set.to_string(), name.to_string(), s.mean, Some(s.std))
            })
            .collect();
        let n = self.stats.values().next().map_or(0, |s| s.n);
        format!(
            "{n} runs, mean ± population std (ddof 0)\n{}",
            render_table(&rows)
        )
    }
}
