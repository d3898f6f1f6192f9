//! The main job end to end through the binary on tiny synthetic data: train → eval →
//! predict, resume after a kill, and one-line errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::stderr;

fn tiny_data(dir: &Path, size: &str) -> PathBuf {
    common::tiny_synth(&dir.join(format!("data-{size}")), size, "5", "12", &[])
}

/// Tiny model options shared by the tests (1 layer, d = 8, 2 heads); epochs per call.
const TINY: [&str; 12] = [
    "--d",
    "8",
    "--heads",
    "2",
    "--layers",
    "1",
    "--kernels",
    "1,1,1",
    "--set",
    "align.mmd_max_samples=32",
    "--quiet",
    "--threads=1",
];

fn train(data: &Path, out: &Path, more: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(more);
    if !more.contains(&"--batch-size") {
        args.extend_from_slice(&["--batch-size", "5"]);
    }
    args.extend_from_slice(&["--data"]);
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    c.args(&args).arg(data).arg("--out").arg(out);
    c.output().unwrap()
}

#[test]
fn train_eval_predict_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "small");
    let run = dir.path().join("run");
    let o = train(&data, &run, &["--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "config.json",
        "log.csv",
        "metrics.json",
        "loss.png",
        "best/model.safetensors",
        "best/config.json",
        "last/state.json",
        "last/optimizer.safetensors",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 3, "header + 2 epochs:\n{log}");
    assert!(log.starts_with("epoch,train_loss,train_task,train_lm,train_le,valid_loss,lr,seconds"));
    let png = std::fs::read(run.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert!(
        metrics["test"]["mult"]["mae"].is_f64() && metrics["test"]["mmsa"]["Has0_acc_2"].is_f64(),
        "{metrics}"
    );
    // Both alignment losses were on (mica variant) and reported.
    let second = log
        .lines()
        .nth(2)
        .unwrap()
        .split(',')
        .map(|x| x.parse::<f64>().unwrap())
        .collect::<Vec<_>>();
    assert!(
        second[3] > 0.0 && second[4] > 0.0,
        "L_m and L_e must be logged: {second:?}"
    );

    let eval_json = dir.path().join("eval.json");
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    let o = c
        .args(["eval", "--checkpoint"])
        .arg(run.join("best"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&eval_json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The checkpoint evaluated on test reproduces the run's own test metrics.
    assert_eq!(printed, metrics["test"]);
    assert!(eval_json.is_file());

    let csv = dir.path().join("preds.csv");
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    let o = c
        .args(["predict", "--checkpoint"])
        .arg(run.join("best"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("id,pred,label\n"));
    assert_eq!(text.lines().count(), 7);
    // The metrics command on the prediction file gives the same numbers again.
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    let o = c
        .args(["metrics", "--task", "mosi", "--file"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again, metrics["test"]);
}

#[test]
fn emotion_task_trains_with_cross_entropy() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "iemocap");
    let run = dir.path().join("run");
    let o = train(&data, &run, &["--epochs", "2", "--variant", "backbone"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["task"], "iemocap");
    for emo in ["Neutral", "Happy", "Sad", "Angry"] {
        assert!(
            m["test"]["mult"][emo]["acc"].is_f64() && m["test"]["mult"][emo]["f1"].is_f64(),
            "{m}"
        );
    }
}

#[test]
fn resumed_run_ends_with_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "small");
    let straight = dir.path().join("straight");
    let o = train(&data, &straight, &["--epochs", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let killed = dir.path().join("killed");
    let o = train(
        &data,
        &killed,
        &["--epochs", "3", "--stop-after-epochs", "1"],
    );
    assert!(!o.status.success(), "the simulated kill exits non-zero");
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    assert!(!killed.join("metrics.json").exists());
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    let o = c
        .args(["train", "--quiet", "--data"])
        .arg(&data)
        .arg("--resume")
        .arg(&killed)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |p: &Path| std::fs::read_to_string(p.join("metrics.json")).unwrap();
    assert_eq!(read(&straight), read(&killed));
    let strip = |p: &Path| -> Vec<String> {
        // Everything but the wall-clock seconds column must agree.
        std::fs::read_to_string(p.join("log.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(strip(&straight), strip(&killed));
}

#[test]
fn same_seed_same_numbers_and_existing_run_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "small");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    assert!(train(&data, &a, &["--epochs", "1"]).status.success());
    assert!(train(&data, &b, &["--epochs", "1"]).status.success());
    let read = |p: &Path| std::fs::read_to_string(p.join("metrics.json")).unwrap();
    assert_eq!(read(&a), read(&b));
    let o = train(&data, &a, &["--epochs", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already holds a run"), "{}", stderr(&o));
}

fn one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success());
    let e = stderr(o);
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
    assert!(e.trim().lines().count() <= 5, "error should be short: {e}");
}

#[test]
fn bad_input_gives_short_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pkl");
    one_line_error(
        &train(&missing, &dir.path().join("r1"), &["--epochs", "1"]),
        "nope.pkl",
    );
    let data = tiny_data(dir.path(), "small");
    one_line_error(
        &train(
            &data,
            &dir.path().join("r2"),
            &["--epochs", "1", "--variant", "foo"],
        ),
        "invalid value 'foo'",
    );
    one_line_error(
        &train(
            &data,
            &dir.path().join("r3"),
            &["--epochs", "1", "--task", "iemocap"],
        ),
        "sentiment labels",
    );
    one_line_error(
        &train(
            &data,
            &dir.path().join("r4"),
            &["--epochs", "1", "--set", "align.tau=7"],
        ),
        "tau",
    );
    one_line_error(
        &train(
            &data,
            &dir.path().join("r5"),
            &["--epochs", "1", "--variant", "backbone", "--alpha", "0.5"],
        ),
        "without alignment",
    );
}

#[test]
fn non_finite_loss_stops_the_run_without_saving_diverged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "small");
    let run = dir.path().join("run");
    // An absurd learning rate blows the parameters up after the first step.
    // One step per epoch: epoch 1's step is finite, its update makes the weights diverge.
    let o = train(
        &data,
        &run,
        &[
            "--epochs",
            "3",
            "--lr",
            "1e38",
            "--variant",
            "backbone",
            "--batch-size",
            "12",
        ],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("non-finite"), "{e}");
    assert!(!run.join("metrics.json").exists());
    assert!(e.contains("no checkpoint yet"), "{e}");
    assert!(
        !run.join("last").exists() && !run.join("best").exists(),
        "diverged weights must not be saved"
    );
}

#[test]
fn config_file_sets_any_subset_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "small");
    let toml = dir.path().join("c.toml");
    std::fs::write(
        &toml,
        "[train]\nepochs = 1\nlr = 0.004\n\n[model]\nrelu_dropout = 0.3\n\n[align]\ntau = 0.1\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    c.arg("train")
        .args(TINY)
        .args(["--batch-size", "6", "--tau", "0.2", "--config"])
        .arg(&toml)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&run);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["epochs"], 1);
    assert_eq!(cfg["train"]["lr"], 0.004);
    assert_eq!(cfg["model"]["relu_dropout"].as_f64().unwrap() as f32, 0.3);
    assert_eq!(cfg["align"]["tau"], 0.2, "a flag wins over the file");
    assert_eq!(cfg["model"]["d"], 8, "a flag wins over the preset");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nnot_an_option = 1\n").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    c.arg("train")
        .args(TINY)
        .arg("--config")
        .arg(&bad)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("r2"));
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not_an_option"), "{}", stderr(&out));
}
