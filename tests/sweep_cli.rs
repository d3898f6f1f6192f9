//! Many-run commands through the binary: the plan (`manifest.json`) and the Slurm scripts
//! against golden files (`MICA_BLESS=1` rewrites them), the local executor running two
//! runs at a time with runs killed mid-training and resumed, per-run locks, `--status`
//! and `--aggregate`, and `mica grid`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

fn tiny_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let o = mica()
        .args(["synth", "--size", "small", "--seed", "3"])
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
    data
}

/// Tiny model options (a run takes about a second).
const TINY: [&str; 14] = [
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
    "--batch-size",
    "12",
    "--quiet",
    "--threads=1",
];

fn ablate(data: &Path, out: &Path, more: &[&str]) -> Command {
    let mut c = mica();
    c.arg("ablate")
        .args(TINY)
        .args(["--variants", "backbone,mica", "--seeds", "1,2"])
        .args(more)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    c
}

/// `got` (with the machine's paths replaced by placeholders) equals the golden file, or
/// becomes it with `MICA_BLESS=1`.
fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sweep")
        .join(name);
    if std::env::var_os("MICA_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MICA_BLESS=1 writes it)", path.display()));
    assert!(
        got == want,
        "{name} differs from {} (if the change is intended, rerun with MICA_BLESS=1):\n{got}",
        path.display()
    );
}

fn placeholders(s: &str, pairs: &[(&Path, &str)]) -> String {
    let mut s = s.to_string();
    for (p, name) in pairs {
        s = s.replace(&p.display().to_string(), name);
    }
    s
}

/// `{"a": {"b": 1}}` → `{"a.b": 1}`.
fn flatten(v: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(
        prefix: &str,
        v: &serde_json::Value,
        out: &mut std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    walk("", v, &mut out);
    out
}

#[test]
fn the_plan_and_the_slurm_scripts_match_their_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let dir_abs = dir.path().canonicalize().unwrap();
    let data = tiny_data(&dir_abs);
    let out = dir_abs.join("abl");
    let o = ablate(
        &data,
        &out,
        &["--epochs", "2", "--executor", "slurm", "--dry-run"],
    )
    .args(["--jobs", "2", "--slurm-cpus", "2", "--slurm-mem", "2G"])
    .args(["--slurm-time", "00:10:00", "--slurm-partition", "short"])
    .args(["--slurm-opt=--account=lab", "--slurm-opt", "--qos=normal"])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("sbatch --dependency=afterok:$jid"),
        "{}",
        text(&o)
    );
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_mica"))
        .canonicalize()
        .unwrap();
    let ph = [
        (exe.as_path(), "<MICA>"),
        (out.as_path(), "<OUT>"),
        (data.as_path(), "<DATA>"),
    ];
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let ids: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "backbone/seed-1",
            "backbone/seed-2",
            "mica/seed-1",
            "mica/seed-2"
        ]
    );
    // The rows differ where Table 5 says they do, and only the seed differs within a row.
    let cfg = |i: usize| &v["runs"][i]["config"];
    assert_eq!(cfg(0)["variant"], "backbone");
    assert_eq!(cfg(2)["variant"], "mica");
    assert_eq!(cfg(1)["train"]["seed"], 2);
    let mut c0 = cfg(0).clone();
    c0["train"]["seed"] = cfg(1)["train"]["seed"].clone();
    assert_eq!(&c0, cfg(1));
    // The golden manifest holds what this feature decides: the data's hash (the
    // synthetic generator's business) is a placeholder, and each run's config is shown
    // as its difference from the first run's (the fields and defaults are config.rs's).
    let sha = v["data"]["sha256"].as_str().unwrap().to_string();
    let mut g = v.clone();
    let base = flatten(cfg(0));
    for r in g["runs"].as_array_mut().unwrap() {
        let diff: serde_json::Map<String, serde_json::Value> = flatten(&r["config"])
            .into_iter()
            .filter(|(k, x)| base.get(k) != Some(x))
            .collect();
        r["config"] = serde_json::json!({ "differs_from_run_0": diff });
    }
    let g = serde_json::to_string_pretty(&g).unwrap() + "\n";
    golden(
        "manifest.json",
        &placeholders(&g, &ph).replace(&sha, "<SHA256>"),
    );
    let array = std::fs::read_to_string(out.join("slurm/array.sh")).unwrap();
    golden("array.sh", &placeholders(&array, &ph));
    let agg = std::fs::read_to_string(out.join("slurm/aggregate.sh")).unwrap();
    golden("aggregate.sh", &placeholders(&agg, &ph));
    // Nothing trained, everything pending.
    assert!(!out.join("mica").exists());
    let o = mica()
        .arg("ablate")
        .arg("--status")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("4 runs: 4 pending"), "{}", text(&o));
    // The same plan again is accepted; the same ids with other options are refused.
    let o = ablate(
        &data,
        &out,
        &["--epochs", "2", "--executor", "slurm", "--dry-run"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = ablate(
        &data,
        &out,
        &["--epochs", "3", "--executor", "slurm", "--dry-run"],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("run backbone/seed-1 was planned with another config"),
        "{}",
        text(&o)
    );
    // Slurm-only flags are refused with the local executor, before anything is written.
    let o = ablate(&data, &dir_abs.join("x"), &["--slurm-mem", "2G"])
        .output()
        .unwrap();
    assert!(
        text(&o).contains("--slurm-mem goes with --executor slurm"),
        "{}",
        text(&o)
    );
    assert!(!dir_abs.join("x").exists());
}

#[test]
fn two_jobs_at_a_time_and_killed_runs_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path());
    let out = dir.path().join("abl");
    // Every child is killed right after its epoch-2 checkpoint (test-only fault switch).
    let o = ablate(&data, &out, &["--epochs", "3", "--jobs", "2"])
        .env("MICA_FAULT_AT", "ckpt:last:swapped:2")
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("4 runs, 4 to train: 2 at a time, "), "{t}");
    assert!(t.contains("4 of 4 runs failed"), "{t}");
    assert!(t.contains("exited with code 86"), "{t}");
    // Killed holders leave their locks behind; --status reads them as dead.
    assert!(out.join("mica/seed-1.lock").is_file());
    let o = mica()
        .arg("ablate")
        .arg("--status")
        .arg(&out)
        .output()
        .unwrap();
    let st = text(&o);
    assert!(st.contains("4 runs: 4 interrupted"), "{st}");
    assert!(st.contains("stopped after epoch 2/3"), "{st}");
    assert!(!out.join("ablation.md").exists());

    // Run again: the four runs resume from their checkpoints (stale locks taken over).
    let o = ablate(&data, &out, &["--epochs", "3", "--jobs", "2"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert_eq!(t.matches("resumed and finished").count(), 4, "{t}");
    for run in [
        "backbone/seed-1",
        "backbone/seed-2",
        "mica/seed-1",
        "mica/seed-2",
    ] {
        let log = std::fs::read_to_string(out.join(run).join("log.csv")).unwrap();
        assert_eq!(log.lines().count(), 4, "{run}: header + 3 epochs\n{log}");
        assert!(
            !out.join(format!("{run}.lock")).exists(),
            "{run}: lock released"
        );
    }
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    let rows = table["table"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["variant"], "mica");
    assert_eq!(rows[1]["seeds"], serde_json::json!([1, 2]));
    let o = mica()
        .arg("ablate")
        .arg("--status")
        .arg(&out)
        .output()
        .unwrap();
    assert!(text(&o).contains("4 runs: 4 done"), "{}", text(&o));

    // A third call reuses everything; --aggregate alone rewrites the tables.
    let o = ablate(&data, &out, &["--epochs", "3", "--jobs", "2"])
        .output()
        .unwrap();
    assert!(text(&o).contains("4 runs, 0 to train"), "{}", text(&o));
    std::fs::remove_file(out.join("ablation.md")).unwrap();
    let o = mica()
        .arg("ablate")
        .arg("--aggregate")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("ablation.md").is_file());
}

#[test]
fn a_run_held_by_a_live_process_is_never_trained_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path());
    let out = dir.path().join("abl");
    let o = ablate(
        &data,
        &out,
        &["--epochs", "1", "--executor", "slurm", "--dry-run"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // pid 1 is alive in every container: a live owner on this host.
    std::fs::create_dir_all(out.join("mica")).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let lock = serde_json::json!({"pid": 1, "host": host, "started": 0, "slurm": null});
    std::fs::write(out.join("mica/seed-1.lock"), lock.to_string()).unwrap();
    let o = mica()
        .args(["run-task", "--id", "mica/seed-1", "--quiet"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("run mica/seed-1 is being trained by pid 1 on"),
        "{t}"
    );
    assert!(!out.join("mica/seed-1").exists(), "nothing written");
    let o = mica()
        .arg("ablate")
        .arg("--status")
        .arg(&out)
        .output()
        .unwrap();
    let st = text(&o);
    assert!(
        st.lines()
            .any(|l| l.starts_with("mica/seed-1 ") && l.contains(" running ")),
        "{st}"
    );
    // The run by index trains (backbone/seed-1 is index 0), and a bad index is named.
    let o = mica()
        .args(["run-task", "--index", "0", "--quiet"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("backbone/seed-1: trained in"),
        "{}",
        text(&o)
    );
    let o = mica()
        .args(["run-task", "--index", "9"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(text(&o).contains("--index 9: "), "{}", text(&o));
    assert!(text(&o).contains("plans 4 runs (0 to 3)"), "{}", text(&o));
    // A failed run is recorded with its error and shown by --status.
    std::fs::create_dir_all(out.join("backbone/seed-2")).unwrap();
    std::fs::write(out.join("backbone/seed-2/notes.txt"), "mine").unwrap();
    let o = mica()
        .args(["run-task", "--id", "backbone/seed-2", "--quiet"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = mica()
        .arg("ablate")
        .arg("--status")
        .arg(&out)
        .output()
        .unwrap();
    let st = text(&o);
    assert!(st.contains("backbone/seed-2  failed"), "{st}");
    assert!(st.contains("is not a mica run directory"), "{st}");
    assert!(
        st.contains("4 runs: 1 done, 1 running, 1 failed, 1 pending"),
        "{st}"
    );
}

#[test]
fn a_grid_spans_keys_times_values_times_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path());
    let out = dir.path().join("grid");
    let o = mica()
        .arg("grid")
        .args(TINY)
        .args(["--epochs", "1", "--seeds", "1", "--jobs", "2"])
        .args([
            "--vary",
            "train.lr=0.001,0.0003",
            "--vary",
            "model.relu_dropout=0,0.2",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(out.join("grid.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[0].starts_with("run,train.lr,model.relu_dropout,seed,"),
        "{csv}"
    );
    let cfg = std::fs::read_to_string(
        out.join("train.lr=0.0003,model.relu_dropout=0.2/seed-1/config.json"),
    )
    .unwrap();
    let c: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(c["train"]["lr"], 0.0003);
    assert_eq!(c["model"]["relu_dropout"], 0.2);
    let md = std::fs::read_to_string(out.join("grid.md")).unwrap();
    assert!(md.contains("train.lr=0.001,model.relu_dropout=0"), "{md}");
    // An unknown key is named before anything trains.
    let o = mica()
        .arg("grid")
        .args(["--vary", "train.nope=1,2", "--out"])
        .arg(dir.path().join("g2"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        text(&o).contains("unknown option `train.nope`"),
        "{}",
        text(&o)
    );
}
