//! The LSTM baselines (EF-LSTM, LF-LSTM) end to end through the binary on tiny synthetic
//! data: training lowers the task loss, no alignment loss is logged, the best checkpoint
//! evaluates, and alignment weights are refused.

use std::path::{Path, PathBuf};

mod common;
use common::{mica, stderr};

fn tiny_data(dir: &Path) -> PathBuf {
    common::tiny_synth(&dir.join("data"), "small", "5", "24", &[])
}

/// The log's rows as numbers (header skipped).
fn log_rows(run: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(run.join("log.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse::<f64>().unwrap()).collect())
        .collect()
}

#[test]
fn lstm_baselines_train_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path());
    for variant in ["ef-lstm", "lf-lstm"] {
        let run = dir.path().join(variant);
        let o = mica(
            &[
                "train",
                "--variant",
                variant,
                "--epochs",
                "5",
                "--lr",
                "5e-3",
                "--batch-size",
                "8",
                "--set",
                "model.lstm_hidden=16",
                "--set",
                "model.lstm_mod_hidden=8",
                "--quiet",
                "--threads=1",
            ],
            &[("--data", &data), ("--out", &run)],
        );
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
        let rows = log_rows(&run);
        assert_eq!(rows.len(), 5, "{variant}: {rows:?}");
        // Columns: epoch, train_loss, train_task, train_lm, train_le, ...
        let (first, last) = (&rows[0], &rows[rows.len() - 1]);
        assert!(
            last[2] < first[2],
            "{variant}: train task loss did not fall: {rows:?}"
        );
        assert!(rows
            .iter()
            .all(|r| r[3] == 0.0 && r[4] == 0.0 && r[1] == r[2]));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["variant"], variant);
        assert_eq!(cfg["model"]["arch"], variant);
        assert_eq!(cfg["model"]["lstm_hidden"], 16);
        assert_eq!(
            (
                cfg["align"]["alpha"].as_f64(),
                cfg["align"]["beta"].as_f64()
            ),
            (Some(0.0), Some(0.0))
        );
        // The best checkpoint loads and evaluates.
        let out = dir.path().join(format!("{variant}-eval.json"));
        let o = mica(
            &["eval", "--threads=1"],
            &[
                ("--checkpoint", &run.join("best")),
                ("--data", &data),
                ("--out", &out),
            ],
        );
        assert!(o.status.success(), "{variant} eval: {}", stderr(&o));
    }
    // Alignment weights make no sense without crossmodal attention.
    let o = mica(
        &["train", "--variant", "lf-lstm", "--alpha", "0.5", "--quiet"],
        &[("--data", &data), ("--out", &dir.path().join("bad"))],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no alignment losses"), "{}", stderr(&o));
}
