//! The options and diagnostics of the learning investigation (docs/learning.md) through the
//! binary: time positions, the relative L_e, the probes and the attention statistics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn mica(args: &[&str], extra: &[&Path]) -> Output {
    common::bin().args(args).args(extra).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// A tiny synthetic dataset (mica format, with element times) in `dir`.
fn tiny(dir: &Path, extra: &[&str]) -> PathBuf {
    let data = dir.join("data");
    let mut args = vec![
        "synth",
        "--size",
        "small",
        "--seed",
        "5",
        "--n-train",
        "12",
        "--n-valid",
        "6",
        "--n-test",
        "6",
    ];
    args.extend_from_slice(extra);
    args.push("--out");
    let o = mica(&args, &[&data]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    data
}

/// Trains a tiny model for one epoch; returns the process output.
fn train(data: &Path, out: &Path, more: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--d",
        "8",
        "--heads",
        "2",
        "--layers",
        "1",
        "--kernels",
        "1,1,1",
        "--batch-size",
        "6",
        "--epochs",
        "1",
        "--quiet",
        "--threads=1",
        "--set",
        "align.mmd_max_samples=32",
    ];
    args.extend_from_slice(more);
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    c.args(&args).arg("--data").arg(data).arg("--out").arg(out);
    c.output().unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn time_positions_change_the_model_and_are_saved() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny(dir.path(), &[]);
    let (a, b) = (dir.path().join("index"), dir.path().join("time"));
    let o = train(&data, &a, &["--variant", "mult"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = train(&data, &b, &["--variant", "mult", "--positions", "time"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cfg: serde_json::Value = serde_json::from_str(&read(&b.join("config.json"))).unwrap();
    assert_eq!(cfg["model"]["positions"], "time");
    assert_eq!(cfg["model"]["time_step"], 0.01);
    // Same seed, same data: only the positions differ, so the trained numbers must too.
    assert_ne!(read(&a.join("log.csv")), read(&b.join("log.csv")));
    // The checkpoint keeps the option: eval re-reads the element times.
    let o = mica(
        &["eval", "--data"],
        &[&data, Path::new("--checkpoint"), &b.join("best")],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn time_positions_refuse_data_without_element_times() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = dir.path().join("tiny_data_noalign.pkl");
    let o = mica(
        &[
            "synth",
            "--size",
            "small",
            "--seed",
            "5",
            "--n-train",
            "12",
            "--n-valid",
            "6",
            "--n-test",
            "6",
            "--format",
            "mult-pkl",
            "--out",
        ],
        &[&pkl],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = train(
        &pkl,
        &dir.path().join("run"),
        &["--variant", "mult", "--positions", "time"],
    );
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("`positions = time` needs element times") && e.contains("positions = index"),
        "{e}"
    );
}

#[test]
fn relative_le_is_a_different_loss_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny(dir.path(), &[]);
    let le = |run: &Path| -> f64 {
        let log = read(&run.join("log.csv"));
        let row = log
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .nth(4)
            .unwrap()
            .to_string();
        row.parse().unwrap()
    };
    let (a, b) = (dir.path().join("abs"), dir.path().join("rel"));
    let o = train(&data, &a, &["--variant", "mica"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = train(
        &data,
        &b,
        &["--variant", "mica", "--set", "align.le_scale=relative"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (la, lb) = (le(&a), le(&b));
    assert!(la.is_finite() && lb.is_finite() && lb > 0.0, "{la} {lb}");
    assert_ne!(la, lb);
    let cfg: serde_json::Value = serde_json::from_str(&read(&b.join("config.json"))).unwrap();
    assert_eq!(cfg["align"]["le_scale"], "relative");
}

#[test]
fn probes_and_attention_statistics_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let o = mica(
        &[
            "synth",
            "--size",
            "small",
            "--seed",
            "5",
            "--n-train",
            "300",
            "--n-valid",
            "60",
            "--n-test",
            "60",
            "--probe",
            "--out",
        ],
        &[&data],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("probes (test Pearson r): aligned oracle "),
        "{out}"
    );
    let run = dir.path().join("run");
    let o = train(&data, &run, &["--variant", "backbone"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = mica(
        &["analyze", "--data"],
        &[&data, Path::new("--checkpoint"), &run],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&read(&run.join("analysis-test/analysis.json"))).unwrap();
    let m = &json["models"][0]["analysis"];
    let ent = m["mean_attn_entropy"].as_f64().unwrap();
    assert!(ent > 0.0 && ent <= 1.0 + 1e-9, "{m}");
    let q = m["mean_qk_rms"][0].as_f64().unwrap();
    assert!(q > 0.0, "{m}");
    assert!(read(&run.join("analysis-test/analysis.md")).contains("| Entropy |"));
}
