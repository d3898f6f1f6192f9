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

/// The same tiny dataset as a MulT pickle (no element times) in `dir`.
fn tiny_pickle(dir: &Path) -> PathBuf {
    let pkl = dir.join("tiny_data_noalign.pkl");
    let args = [
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
    ];
    let o = mica(&args, &[&pkl]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    pkl
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
    let pkl = tiny_pickle(dir.path());
    let o = train(
        &pkl,
        &dir.path().join("run"),
        &["--variant", "mult", "--positions", "time"],
    );
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("split `train` has no element times")
            && e.contains("`--positions time` needs them: use `--positions index`"),
        "{e}"
    );
    assert!(
        !dir.path().join("run").exists(),
        "refused before anything is written"
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

/// Mean correlation accuracy over the blocks of the first model of an analysis, and its
/// chance level.
fn corr_acc(run: &Path) -> (f64, f64) {
    let json: serde_json::Value =
        serde_json::from_str(&read(&run.join("analysis-test/analysis.json"))).unwrap();
    let blocks = json["models"][0]["analysis"]["blocks"].as_array().unwrap();
    let mean = |key: &str| {
        blocks.iter().map(|b| b[key].as_f64().unwrap()).sum::<f64>() / blocks.len() as f64
    };
    (mean("corr_acc"), mean("corr_chance"))
}

/// A sharp time bias makes the crossmodal attention of even an (almost) untrained model pick
/// truly co-occurring elements: correlation accuracy far above chance, while the same model
/// without it sits near chance. Every option round-trips through the checkpoint.
#[test]
fn time_bias_points_attention_at_co_occurring_elements() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny(dir.path(), &[]);
    let (a, b) = (dir.path().join("plain"), dir.path().join("biased"));
    let o = train(&data, &a, &["--variant", "mult"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = train(
        &data,
        &b,
        &["--variant", "mica", "--set", "model.time_bias=0.02"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cfg: serde_json::Value = serde_json::from_str(&read(&b.join("config.json"))).unwrap();
    assert_eq!(cfg["model"]["time_bias"], 0.02);
    for run in [&a, &b] {
        let o = mica(
            &["analyze", "--data"],
            &[&data, Path::new("--checkpoint"), run],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let (acc_a, chance) = corr_acc(&a);
    let (acc_b, _) = corr_acc(&b);
    assert!(acc_b > 0.8, "biased Corr. Acc {acc_b} (chance {chance})");
    assert!(acc_a < 0.5, "unbiased Corr. Acc {acc_a} (chance {chance})");
}

#[test]
fn time_bias_refuses_data_without_element_times_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = tiny_pickle(dir.path());
    let o = train(
        &pkl,
        &dir.path().join("run"),
        &["--variant", "mult", "--set", "model.time_bias=0.1"],
    );
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("split `train` has no element times")
            && e.contains("model option `time_bias` = 0.1 needs them")
            && e.contains("add `--set model.time_bias=0`"),
        "{e}"
    );
    assert!(
        !dir.path().join("run").exists(),
        "refused before anything is written"
    );
    // The synth-small preset turns the time bias on: on data without times it is refused
    // the same way, naming the preset; switching it off trains.
    let o = train(
        &pkl,
        &dir.path().join("preset"),
        &["--variant", "mult", "--preset", "synth-small"],
    );
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("the preset `synth-small` sets 0.1"), "{e}");
    let o = train(
        &pkl,
        &dir.path().join("preset-off"),
        &[
            "--variant",
            "mult",
            "--preset",
            "synth-small",
            "--set",
            "model.time_bias=0",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let data = tiny(dir.path(), &[]);
    let o = train(
        &data,
        &dir.path().join("neg"),
        &["--variant", "mult", "--set", "model.time_bias=-1"],
    );
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("model option `time_bias` must be 0 (off)"),
        "{e}"
    );
}

/// The echo changes the data only when on: `--echo 0` is bit-identical to the default
/// (the original generator), `--echo 1` differs, and a negative echo is refused.
#[test]
fn echo_is_off_by_default_and_changes_only_when_on() {
    let dir = tempfile::tempdir().unwrap();
    let (d0, d1) = (dir.path().join("d0"), dir.path().join("d1"));
    let base = [
        "synth",
        "--size",
        "small",
        "--seed",
        "3",
        "--n-train",
        "20",
        "--n-valid",
        "6",
        "--n-test",
        "6",
    ];
    let mut a0: Vec<&str> = base.to_vec();
    a0.extend(["--echo", "0", "--out"]);
    let o = mica(&a0, &[&d0]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut a1: Vec<&str> = base.to_vec();
    a1.extend(["--echo", "1", "--out"]);
    let o = mica(&a1, &[&d1]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let d2 = dir.path().join("d2");
    let mut a2: Vec<&str> = base.to_vec();
    a2.extend(["--out"]);
    let o = mica(&a2, &[&d2]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bytes = |d: &Path| {
        let mut v = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        {
            v.extend(std::fs::read(p).unwrap());
        }
        v
    };
    assert!(!bytes(&d0).is_empty());
    assert_eq!(bytes(&d0), bytes(&d2), "--echo 0 must equal the default");
    assert_ne!(bytes(&d0), bytes(&d1), "--echo 1 must change the data");
    let mut bad: Vec<&str> = base.to_vec();
    bad.extend(["--echo=-1", "--out"]);
    let o = mica(&bad, &[&dir.path().join("bad")]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("echo must be >= 0"),
        "{}",
        text(&o.stderr)
    );
}
