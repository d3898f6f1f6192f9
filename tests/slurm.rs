//! A real Slurm run: a tiny ablation submitted as a job array to the single-node cluster
//! that `.ci/run` starts with `scripts/ci_slurm.sh` (it sets `MICA_SLURM_TEST=1` and
//! `SLURM_CONF`), its tasks killed mid-run and requeued, waited for, aggregated by the
//! dependent job and checked. Without that cluster the test says SKIPPED, loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mica() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mica"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sh(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => text(&o),
        Err(e) => format!("{cmd}: {e}"),
    }
}

/// Everything worth seeing when the cluster did not do what was expected.
fn diagnostics(out: &Path) -> String {
    let mut s = sh("squeue", &["-a", "-o", "%i %T %r"]);
    s += &sh("sinfo", &[]);
    s += &text(
        &mica()
            .arg("ablate")
            .arg("--status")
            .arg(out)
            .output()
            .unwrap(),
    );
    if let Ok(rd) = std::fs::read_dir(out.join("slurm/logs")) {
        for e in rd.flatten() {
            s += &format!(
                "--- {}\n{}",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            );
        }
    }
    s
}

fn wait_for(what: &str, out: &Path, secs: u64, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}\n{}",
            diagnostics(out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn job_state(id: &str) -> String {
    sh("scontrol", &["show", "job", id])
}

#[test]
fn a_tiny_ablation_runs_as_a_slurm_array() {
    if std::env::var_os("MICA_SLURM_TEST").is_none() {
        eprintln!(
            "\n*** SKIPPED: the Slurm integration test needs the single-node cluster of \
             scripts/ci_slurm.sh (run .ci/run, which starts it and sets MICA_SLURM_TEST=1) ***\n"
        );
        return;
    }
    // Slurm runs the tasks under the submitting user on this machine: a shared directory.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let data = root.join("data");
    let o = mica()
        .args(["synth", "--size", "small", "--seed", "4"])
        .args([
            "--n-train",
            "12",
            "--n-valid",
            "6",
            "--n-test",
            "6",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out: PathBuf = root.join("abl");
    // The first attempt of every task dies after its epoch-2 checkpoint (as if preempted).
    let o = mica()
        .args(["ablate", "--d", "8", "--heads", "2", "--layers", "1"])
        .args(["--kernels", "1,1,1", "--set", "align.mmd_max_samples=32"])
        .args(["--batch-size", "12", "--epochs", "3", "--quiet"])
        .args(["--variants", "backbone,mica", "--seeds", "1,2"])
        .args(["--executor", "slurm", "--jobs", "2", "--slurm-cpus", "1"])
        .args(["--slurm-time", "00:05:00", "--slurm-mem", "500M"])
        .arg("--slurm-opt=--export=ALL,MICA_FAULT_AT=ckpt:last:swapped:2")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let ids: Vec<&str> = t
        .lines()
        .find_map(|l| l.strip_prefix("submitted array job "))
        .unwrap_or_else(|| panic!("no job ids in: {t}"))
        .split_whitespace()
        .collect();
    let (array, agg) = (ids[0].to_string(), ids[ids.len() - 1].to_string());
    // Every first attempt fails; the aggregation then can never run.
    wait_for("the killed first attempts", &out, 120, || {
        let s = text(
            &mica()
                .arg("ablate")
                .arg("--status")
                .arg(&out)
                .output()
                .unwrap(),
        );
        s.contains("4 runs: 4 interrupted")
    });
    assert!(!out.join("ablation.md").exists());
    // Requeue the array (what a preemption does): each task resumes its run.
    let o = Command::new("scontrol")
        .args(["requeue", &array])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // A requeued job waits two minutes before it is eligible again: not in a test.
    let o = Command::new("scontrol")
        .args(["update", &format!("jobid={array}"), "StartTime=now"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    wait_for("the requeued tasks", &out, 120, || {
        let s = text(
            &mica()
                .arg("ablate")
                .arg("--status")
                .arg(&out)
                .output()
                .unwrap(),
        );
        s.contains("4 runs: 4 done")
    });
    let logs = diagnostics(&out);
    assert_eq!(logs.matches("resumed and finished").count(), 4, "{logs}");
    // afterok of a failed array never fires (the aggregation job was cancelled with
    // it, --kill-on-invalid-dep): aggregate now, as a user would.
    wait_for("the aggregation job to be cancelled", &out, 30, || {
        job_state(&agg).contains("JobState=CANCELLED")
    });
    let o = mica()
        .arg("ablate")
        .arg("--aggregate")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    assert_eq!(table["runs"].as_array().unwrap().len(), 4);

    // A clean submission of a second ablation: the dependent job aggregates by itself.
    let out2 = root.join("abl2");
    let o = mica()
        .args(["ablate", "--d", "8", "--heads", "2", "--layers", "1"])
        .args([
            "--kernels",
            "1,1,1",
            "--batch-size",
            "12",
            "--epochs",
            "1",
            "--quiet",
        ])
        .args(["--variants", "backbone,mica", "--seeds", "1"])
        .args(["--executor", "slurm", "--slurm-time", "00:05:00"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out2)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    wait_for("the aggregation job", &out2, 120, || {
        out2.join("ablation.json").is_file()
    });
    let md = std::fs::read_to_string(out2.join("ablation.md")).unwrap();
    assert!(md.contains("mica") && md.contains("backbone"), "{md}");
}
