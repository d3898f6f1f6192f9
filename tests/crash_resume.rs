//! Crash consistency of run directories, through the binary: a training run killed at
//! every write step (the test-only `MICA_FAULT_AT` switch exits the process abruptly
//! there) is resumable to the same `metrics.json` as an uninterrupted run, or refused with
//! a one-line message and then restartable; resume remembers its data and refuses
//! conflicting options.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::stderr;

const FAULT_EXIT_CODE: i32 = 86;

fn mica() -> Command {
    common::bin()
}

fn tiny_data(dir: &Path, name: &str, seed: &str) -> PathBuf {
    common::tiny_synth(&dir.join(name), "small", seed, "12", &[])
}

/// Tiny model; lr and batch chosen so the best validation loss improves twice in 3
/// epochs (both checkpoints then go through every step of a replacement).
const TINY: [&str; 16] = [
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
    "--batch-size",
    "12",
    "--lr",
    "0.0001",
];

fn train_cmd(data: &Path, out: &Path, more: &[&str]) -> Command {
    let mut c = mica();
    c.arg("train")
        .args(TINY)
        .args(more)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    c
}

fn resume_cmd(out: &Path, more: &[&str]) -> Command {
    let mut c = mica();
    c.args(["train", "--quiet", "--resume"]).arg(out).args(more);
    c
}

fn metrics(run: &Path) -> String {
    std::fs::read_to_string(run.join("metrics.json")).unwrap()
}

/// The per-epoch log without its wall-clock seconds column.
fn log_without_seconds(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("log.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

fn assert_one_line(o: &Output) {
    let e = stderr(o);
    assert_eq!(e.trim().lines().count(), 1, "one-line error expected: {e}");
    assert!(e.starts_with("error: "), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn a_kill_at_every_write_step_resumes_to_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data", "5");
    let epochs = ["--epochs", "3"];

    // The uninterrupted run, recording every write step it reaches.
    let straight = dir.path().join("straight");
    let trace = dir.path().join("trace.txt");
    let o = train_cmd(&data, &straight, &epochs)
        .env("MICA_FAULT_TRACE", &trace)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let steps: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for needed in [
        "rename:run.json",
        "rename:config.json",
        "ckpt:best:files",
        "ckpt:best:swapped",
        "ckpt:last:files",
        "write:checkpoint.json",
        "ckpt:last:aside",
        "ckpt:last:swapped",
        "write:log.csv",
        "rename:loss.png",
        "write:metrics.json",
        "rename:metrics.json",
    ] {
        assert!(
            steps.iter().any(|s| s == needed),
            "no step {needed} in {steps:?}"
        );
    }

    // Kill at the k-th occurrence of every step, then resume (or restart).
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    let (mut resumed, mut restarted) = (0, 0);
    for (i, step) in steps.iter().enumerate() {
        let k = {
            let c = seen.entry(step).or_insert(0);
            *c += 1;
            *c
        };
        let run = dir.path().join(format!("killed-{i}"));
        let o = train_cmd(&data, &run, &epochs)
            .env("MICA_FAULT_AT", format!("{step}:{k}"))
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(FAULT_EXIT_CODE),
            "{step}:{k} was not reached: {}",
            stderr(&o)
        );
        let o = resume_cmd(&run, &[]).output().unwrap();
        if o.status.success() {
            resumed += 1;
        } else {
            // Only a run killed before its config existed may be refused, in one line that
            // says how to start it again; then the same command starts it in place.
            assert_one_line(&o);
            assert!(
                stderr(&o).contains("start it again with the same options"),
                "{step}:{k}: {}",
                stderr(&o)
            );
            let o = train_cmd(&data, &run, &epochs).output().unwrap();
            assert!(o.status.success(), "{step}:{k}: restart: {}", stderr(&o));
            restarted += 1;
        }
        assert_eq!(
            metrics(&run),
            metrics(&straight),
            "after a kill at {step}:{k}"
        );
        assert_eq!(
            log_without_seconds(&run),
            log_without_seconds(&straight),
            "{step}:{k}"
        );
        // Nothing is left behind: no temporaries, no `.old` twins.
        for e in std::fs::read_dir(&run).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(!name.starts_with('.'), "{step}:{k}: leftover {name}");
        }
    }
    assert!(
        resumed > steps.len() / 2,
        "{resumed} resumed, {restarted} restarted"
    );
}

#[test]
fn resume_remembers_its_data_and_refuses_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data", "5");
    let other = tiny_data(dir.path(), "other", "6");
    let straight = dir.path().join("straight");
    assert!(train_cmd(&data, &straight, &["--epochs", "2"])
        .output()
        .unwrap()
        .status
        .success());
    let run = dir.path().join("run");
    let o = train_cmd(&data, &run, &["--epochs", "2", "--stop-after-epochs", "1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    // Different data (same dims): refused, naming both.
    for flags in [
        vec!["--data".to_string(), other.display().to_string()],
        vec![
            "--dataset".into(),
            "synth-small".into(),
            "--data-seed".into(),
            "3".into(),
        ],
    ] {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let o = resume_cmd(&run, &flags).output().unwrap();
        assert!(!o.status.success());
        assert_one_line(&o);
        let e = stderr(&o);
        let data_abs = data.canonicalize().unwrap();
        assert!(
            e.contains(&format!("the run was trained on {}", data_abs.display())),
            "{e}"
        );
        assert!(e.contains("but the data given is "), "{e}");
        assert!(!run.join("metrics.json").exists());
    }
    // No --data: the recorded data is used, and the result is the uninterrupted run's.
    let o = resume_cmd(&run, &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics(&run), metrics(&straight));
    // The recorded data moved away: refused by name, and --data brings it back.
    let moved = dir.path().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let o = resume_cmd(&run, &["--epochs", "3"]).output().unwrap();
    assert_one_line(&o);
    assert!(
        stderr(&o).contains("is gone: pass --data with the same data"),
        "{}",
        stderr(&o)
    );
    let o = resume_cmd(&run, &["--epochs", "3", "--data", moved.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn resume_applies_more_epochs_and_refuses_other_options() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data", "5");
    let straight = dir.path().join("straight");
    assert!(train_cmd(&data, &straight, &["--epochs", "3"])
        .output()
        .unwrap()
        .status
        .success());
    let run = dir.path().join("run");
    assert!(train_cmd(&data, &run, &["--epochs", "2"])
        .output()
        .unwrap()
        .status
        .success());
    let o = resume_cmd(
        &run,
        &[
            "--epochs",
            "10",
            "--seed",
            "99",
            "--lr",
            "0.5",
            "--variant",
            "mult",
        ],
    )
    .output()
    .unwrap();
    assert_one_line(&o);
    let e = stderr(&o);
    assert!(
        e.contains("these options differ from it: --seed 99 (the run's: 1111), --variant mult (the run's: mica), --lr 0.5 (the run's: 0.0001); only --epochs may change"),
        "{e}"
    );
    // Options equal to the run's are no conflict; fewer epochs than done are refused.
    let o = resume_cmd(&run, &["--epochs", "1", "--lr", "0.0001"])
        .output()
        .unwrap();
    assert_one_line(&o);
    assert!(
        stderr(&o).contains("--epochs 1, but the run has already trained 2 epochs"),
        "{}",
        stderr(&o)
    );
    // More epochs on a finished run: it continues, says so, and ends where a 3-epoch run ends.
    let o = resume_cmd(&run, &["--epochs", "3"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--epochs 3: the run continues to epoch 3 (it was set to 2)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(metrics(&run), metrics(&straight));
    assert_eq!(log_without_seconds(&run), log_without_seconds(&straight));
}

#[test]
fn epochs_zero_and_duplicate_seeds_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data", "5");
    let run = dir.path().join("run");
    let o = train_cmd(&data, &run, &["--epochs", "0"]).output().unwrap();
    assert_one_line(&o);
    assert!(
        stderr(&o).contains("--epochs 0: nothing to train (use 1 or more)"),
        "{}",
        stderr(&o)
    );
    assert!(!run.exists());
    let mut c = mica();
    c.arg("train")
        .args(&TINY[..12])
        .args(["--epochs", "1", "--seeds", "1,2,1", "--data"]);
    let o = c.arg(&data).arg("--out").arg(&run).output().unwrap();
    assert_one_line(&o);
    assert!(
        stderr(&o).contains("--seeds: seed 1 appears twice"),
        "{}",
        stderr(&o)
    );
    assert!(!run.exists());
}

#[test]
fn resume_of_what_is_not_a_run_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let o = resume_cmd(&dir.path().join("missing"), &[])
        .output()
        .unwrap();
    assert_one_line(&o);
    assert!(
        stderr(&o).contains("missing: no such directory"),
        "{}",
        stderr(&o)
    );
    let multi = dir.path().join("multi");
    std::fs::create_dir_all(multi.join("seed-7")).unwrap();
    let o = resume_cmd(&multi, &[]).output().unwrap();
    assert_one_line(&o);
    assert!(
        stderr(&o).contains(&format!(
            "holds a multi-seed run: resume each seed's directory (e.g. --resume {})",
            multi.join("seed-7").display()
        )),
        "{}",
        stderr(&o)
    );
}
