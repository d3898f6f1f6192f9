//! Table 5: per variant (row) the mean ± std over seeds of every test metric, and paired
//! two-sided t-tests (paired by seed) of each row against the backbone and MulT rows for
//! the main metrics. Works on flat metric maps (`mult.acc_2`, `mult_mean.acc`, ...) as
//! read from each run's `metrics.json`, so finished runs on disk can be re-aggregated.

use super::stats::paired_t_test;
pub use crate::eval::flatten_json;
use crate::eval::SeedStat;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Flat metric map of one run: `set.key` → value.
pub type FlatMetrics = BTreeMap<String, f64>;

/// A metric of the tables: its flat key, a short label, whether it is shown in percent and
/// whether higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MainMetric {
    /// Flat key, e.g. `mult.acc_2`.
    pub key: &'static str,
    /// Column label.
    pub label: &'static str,
    /// Shown ×100 with one decimal.
    pub percent: bool,
    /// Higher is better (MAE: lower).
    pub higher_better: bool,
}

/// The main metrics of the tables: MulT's set (the paper's evaluation code) — Acc7, Acc2
/// (Non0), F1 (Non0), MAE, Corr for sentiment; mean accuracy and F1 over the four
/// emotions for IEMOCAP.
pub fn main_metrics(sentiment: bool) -> Vec<MainMetric> {
    let m = |key, label, percent, higher_better| MainMetric {
        key,
        label,
        percent,
        higher_better,
    };
    if sentiment {
        vec![
            m("mult.mult_acc_7", "Acc7", true, true),
            m("mult.acc_2", "Acc2 (Non0)", true, true),
            m("mult.f1", "F1 (Non0)", true, true),
            m("mult.mae", "MAE", false, false),
            m("mult.corr", "Corr", false, true),
        ]
    } else {
        vec![
            m("mult_mean.acc", "mean Acc", true, true),
            m("mult_mean.f1", "mean F1", true, true),
        ]
    }
}

/// Whether a flat metric map is a sentiment one (has `mult.mae`).
pub fn is_sentiment(m: &FlatMetrics) -> bool {
    m.contains_key("mult.mae")
}

/// Formats a value as the tables do (percent with one decimal, else three decimals).
pub fn fmt_metric(v: f64, percent: bool) -> String {
    if !v.is_finite() {
        format!("{v}")
    } else if percent {
        format!("{:.1}", v * 100.0)
    } else {
        format!("{v:.3}")
    }
}

/// A row's runs: seed → test metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowRuns {
    /// Row name (the variant).
    pub name: String,
    /// Seed → flat test metrics.
    pub runs: BTreeMap<u64, FlatMetrics>,
}

/// A paired t-test of a row against a reference row for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Seeds both rows have.
    pub pairs: usize,
    /// Mean of row − reference over the paired seeds.
    pub mean_diff: f64,
    /// t statistic.
    pub t: f64,
    /// Two-sided p-value (`NaN` with fewer than 2 pairs or all-equal differences).
    pub p_value: f64,
}

/// Paired t-test of `row` against `reference` on `key`, over their common seeds.
pub fn compare(row: &RowRuns, reference: &RowRuns, key: &str) -> Comparison {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (seed, m) in &row.runs {
        if let (Some(x), Some(y)) = (
            m.get(key),
            reference.runs.get(seed).and_then(|r| r.get(key)),
        ) {
            a.push(*x);
            b.push(*y);
        }
    }
    let t = paired_t_test(&a, &b);
    Comparison {
        pairs: a.len(),
        mean_diff: if a.is_empty() { f64::NAN } else { t.mean_diff },
        t: t.t,
        p_value: t.p_value,
    }
}

/// Mean ± std (population, ddof 0, as the rest of mica) of every metric all runs of a row
/// have.
pub fn row_stats(row: &RowRuns) -> BTreeMap<String, SeedStat> {
    let mut out = BTreeMap::new();
    let Some(first) = row.runs.values().next() else {
        return out;
    };
    for key in first.keys() {
        let vals: Option<Vec<f64>> = row.runs.values().map(|m| m.get(key).copied()).collect();
        if let Some(v) = vals {
            out.insert(key.clone(), SeedStat::of(&v));
        }
    }
    out
}

/// One row of Table 5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationRow {
    /// Variant name.
    pub variant: String,
    /// Seeds of the row's runs.
    pub seeds: Vec<u64>,
    /// Per flat metric: mean, std (ddof 0), std (ddof 1), n.
    pub stats: BTreeMap<String, SeedStat>,
    /// Reference row name → metric key → paired test (the row itself is never compared).
    pub tests: BTreeMap<String, BTreeMap<String, Comparison>>,
}

/// Table 5 over all rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AblationTable {
    /// Sentiment (true) or emotion metrics.
    pub sentiment: bool,
    /// The metrics shown and tested.
    pub main_metrics: Vec<MainMetric>,
    /// Reference rows the tests compare against (those present among the rows).
    pub references: Vec<String>,
    /// The rows, in the given order.
    pub rows: Vec<AblationRow>,
}

/// The reference rows of the paired tests.
pub const REFERENCES: [&str; 2] = ["backbone", "mult"];

/// Builds Table 5 from the runs of every row.
pub fn ablation_table(rows: &[RowRuns]) -> AblationTable {
    let sentiment = rows
        .iter()
        .flat_map(|r| r.runs.values())
        .next()
        .is_none_or(is_sentiment);
    let main = main_metrics(sentiment);
    let references: Vec<&RowRuns> = REFERENCES
        .iter()
        .filter_map(|n| rows.iter().find(|r| r.name == *n))
        .collect();
    let table_rows = rows
        .iter()
        .map(|row| {
            let tests = references
                .iter()
                .filter(|r| r.name != row.name)
                .map(|r| {
                    let per: BTreeMap<String, Comparison> = main
                        .iter()
                        .map(|m| (m.key.to_string(), compare(row, r, m.key)))
                        .collect();
                    (r.name.clone(), per)
                })
                .collect();
            AblationRow {
                variant: row.name.clone(),
                seeds: row.runs.keys().copied().collect(),
                stats: row_stats(row),
                tests,
            }
        })
        .collect();
    AblationTable {
        sentiment,
        main_metrics: main,
        references: references.iter().map(|r| r.name.clone()).collect(),
        rows: table_rows,
    }
}

/// Formats a p-value (`<0.001`, three decimals, or `n/a`).
pub fn fmt_p(p: f64) -> String {
    if p.is_nan() {
        "n/a".into()
    } else if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// Formats a signed difference with three decimals; a value that rounds to zero prints
/// as `0.000` (never `-0.000`).
pub fn fmt_delta(d: f64) -> String {
    if d.abs() < 5e-4 {
        "0.000".into()
    } else {
        format!("{d:+.3}")
    }
}

/// Markdown of Table 5: mean ± std per main metric, then one p-value table per reference
/// row (a `*` marks p < 0.05), then every metric's mean ± std.
pub fn render_markdown(t: &AblationTable, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## {title}\n");
    let n_seeds: Vec<usize> = t.rows.iter().map(|r| r.seeds.len()).collect();
    let _ = writeln!(
        s,
        "Test metrics of the best-on-validation weights, mean ± population std (ddof 0) \
         over seeds (runs per row: {n_seeds:?}). Metric set: MulT's evaluation code.\n"
    );
    let header: Vec<&str> = t.main_metrics.iter().map(|m| m.label).collect();
    let _ = writeln!(s, "| Model | seeds | {} |", header.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(header.len()));
    for r in &t.rows {
        let cells: Vec<String> = t
            .main_metrics
            .iter()
            .map(|m| match r.stats.get(m.key) {
                Some(st) => format!(
                    "{} ± {}",
                    fmt_metric(st.mean, m.percent),
                    fmt_metric(st.std, m.percent)
                ),
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            r.variant,
            r.seeds.len(),
            cells.join(" | ")
        );
    }
    for reference in &t.references {
        let _ = writeln!(
            s,
            "\n### Paired t-test against `{reference}` (two-sided p, paired by seed; \
             Δ = row − {reference}; * p < 0.05)\n"
        );
        let _ = writeln!(s, "| Model | {} |", header.join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(header.len()));
        for r in t.rows.iter().filter(|r| &r.variant != reference) {
            let Some(tests) = r.tests.get(reference) else {
                continue;
            };
            let cells: Vec<String> = t
                .main_metrics
                .iter()
                .map(|m| match tests.get(m.key) {
                    Some(c) => {
                        let scale = if m.percent { 100.0 } else { 1.0 };
                        let star = if c.p_value < 0.05 { "*" } else { "" };
                        format!(
                            "Δ {} p={}{star}",
                            fmt_delta(c.mean_diff * scale),
                            fmt_p(c.p_value)
                        )
                    }
                    None => "–".into(),
                })
                .collect();
            let _ = writeln!(s, "| {} | {} |", r.variant, cells.join(" | "));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(name: &str, vals: &[(u64, f64)]) -> RowRuns {
        RowRuns {
            name: name.into(),
            runs: vals
                .iter()
                .map(|&(seed, v)| {
                    let mut m = FlatMetrics::new();
                    m.insert("mult.acc_2".into(), v);
                    m.insert("mult.mae".into(), 1.0 - v);
                    (seed, m)
                })
                .collect(),
        }
    }

    #[test]
    fn flatten_reads_nested_numbers() {
        let v = serde_json::json!({"mult": {"mae": 0.5, "Happy": {"f1": 0.25}}, "x": "s"});
        let f = flatten_json(&v);
        assert_eq!(f.len(), 2);
        assert_eq!(f["mult.Happy.f1"], 0.25);
        assert!(is_sentiment(&f));
    }

    #[test]
    fn table_pairs_by_seed_and_skips_self() {
        let base = runs("backbone", &[(1, 0.70), (2, 0.72), (3, 0.71)]);
        // Seed 4 has no partner; the differences (0.05, 0.06, 0.04) are clearly positive.
        let mica = runs("mica", &[(1, 0.75), (2, 0.78), (3, 0.75), (4, 0.1)]);
        let t = ablation_table(&[base.clone(), mica.clone()]);
        assert!(t.sentiment);
        assert_eq!(t.references, vec!["backbone".to_string()]);
        assert!(t.rows[0].tests.is_empty());
        let c = t.rows[1].tests["backbone"]["mult.acc_2"];
        assert_eq!(c.pairs, 3);
        assert!((c.mean_diff - 0.05).abs() < 1e-12);
        assert!(c.p_value < 0.05, "{c:?}");
        let st = t.rows[1].stats["mult.acc_2"];
        assert_eq!(st.n, 4);
        // A metric missing from the runs gets NaN tests, not a panic.
        assert_eq!(t.rows[1].tests["backbone"]["mult.f1"].pairs, 0);
        let md = render_markdown(&t, "Table 5");
        assert!(md.contains("| mica | 4 |"));
        assert!(md.contains("Paired t-test against `backbone`"));
        assert!(md.contains("p=0.0") && md.contains('*'));
    }

    #[test]
    fn p_value_formatting() {
        assert_eq!(fmt_p(f64::NAN), "n/a");
        assert_eq!(fmt_delta(-1e-17), "0.000");
        assert_eq!(fmt_delta(-0.25), "-0.250");
        assert_eq!(fmt_p(1e-5), "<0.001");
        assert_eq!(fmt_p(0.04321), "0.043");
        assert_eq!(fmt_metric(0.8123, true), "81.2");
        assert_eq!(fmt_metric(0.8123, false), "0.812");
    }
}
