//! Mistakes and hostile input through the binary (issue 16's repro cases): outputs that
//! would destroy inputs or foreign directories, corrupted or NaN checkpoints, absurd
//! sizes, devices as small files, broken pipes, and the smaller cases (quoted ids,
//! non-finite synth options, eval's messages and its JSON beside a checkpoint).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::stderr;

fn mica(args: &[&str]) -> Command {
    let mut c = common::bin();
    c.args(args);
    c
}

fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

/// A failure with exactly one line on stderr, containing `needle`, and no panic.
fn one_line_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line expected: {e}");
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
}

fn tiny_data(dir: &Path, name: &str) -> PathBuf {
    common::tiny_synth(&dir.join(name), "small", "5", "12", &[])
}

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
    "--quiet",
    "--batch-size",
    "12",
    "--epochs",
];

/// A trained tiny run (1 epoch) on `data`.
fn tiny_run(data: &Path, out: &Path) {
    let o = run(mica(&["train"])
        .args(TINY)
        .arg("1")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out));
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_foreign_directory_is_never_written_into() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data");
    let foreign = dir.path().join("foreign");
    for sub in ["best", "last"] {
        std::fs::create_dir_all(foreign.join(sub)).unwrap();
        std::fs::write(foreign.join(sub).join("keep.txt"), sub).unwrap();
    }
    for f in ["metrics.json", "log.csv", "loss.png", "notes.txt"] {
        std::fs::write(foreign.join(f), f).unwrap();
    }
    let before = snapshot(&foreign);
    let o = run(mica(&["train"])
        .args(TINY)
        .arg("1")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&foreign));
    one_line_error(&o, "exists and is not empty, and is not a mica run directory: choose another --out (nothing was written)");
    // Multi-seed runs too, and convert / import-mult / synth outputs.
    let o = run(mica(&["train"])
        .args(TINY)
        .args(["1", "--seeds", "1,2", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&foreign));
    one_line_error(&o, "which is not part of a mica multi-seed run");
    let o = run(mica(&["convert"]).arg(&data).arg("--out").arg(&foreign));
    one_line_error(&o, "is not a mica dataset directory");
    let o = run(mica(&[
        "synth",
        "--n-train",
        "4",
        "--n-valid",
        "2",
        "--n-test",
        "2",
        "--out",
    ])
    .arg(&foreign));
    one_line_error(&o, "is not a mica dataset directory");
    assert_eq!(snapshot(&foreign), before);
    // An empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    tiny_run(&data, &empty);
}

#[test]
fn outputs_that_are_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data");
    let r = dir.path().join("r");
    tiny_run(&data, &r);
    let best = r.join("best");
    let before = (snapshot(&best), snapshot(&data));
    let ck = |cmd: &str, out: &Path| {
        run(mica(&[cmd, "--checkpoint"])
            .arg(&best)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(out))
    };
    for (cmd, out) in [
        ("predict", best.join("model.safetensors")),
        ("eval", best.join("config.json")),
        ("predict", data.join("manifest.json")),
        ("eval", data.join("test.safetensors")),
        ("predict", data.clone()),
    ] {
        let o = ck(cmd, &out);
        one_line_error(
            &o,
            &format!("--out {} would overwrite the input", out.display()),
        );
    }
    let o = run(mica(&["forward", "--checkpoint"])
        .arg(&best)
        .arg("--inputs")
        .arg(best.join("model.safetensors"))
        .arg("--out")
        .arg(best.join("model.safetensors")));
    one_line_error(&o, "would overwrite the input");
    let o = run(mica(&["convert"]).arg(&data).arg("--out").arg(&data));
    one_line_error(&o, "would overwrite the input");
    assert_eq!((snapshot(&best), snapshot(&data)), before);
    // A new file beside the inputs is fine (eval's default JSON goes there).
    let o = ck("predict", &best.join("preds.csv"));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn convert_replaces_a_dataset_only_once_the_new_one_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data");
    let other = dir.path().join("other");
    let o = run(mica(&[
        "synth",
        "--seed",
        "9",
        "--n-train",
        "5",
        "--n-valid",
        "3",
        "--n-test",
        "3",
        "--out",
    ])
    .arg(&other));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = snapshot(&data);
    // Killed while the new manifest is written: the old dataset is untouched.
    let o = run(mica(&["convert"])
        .arg(&other)
        .arg("--out")
        .arg(&data)
        .env("MICA_FAULT_AT", "write:manifest.json:1"));
    assert_eq!(o.status.code(), Some(86), "{}", stderr(&o));
    assert_eq!(snapshot(&data), before);
    let o = run(mica(&["inspect"]).arg(&data));
    assert!(o.status.success(), "{}", stderr(&o));
    // Uninterrupted, it replaces it.
    let o = run(mica(&["convert"]).arg(&other).arg("--out").arg(&data));
    assert!(o.status.success(), "{}", stderr(&o));
    let m = std::fs::read_to_string(data.join("manifest.json")).unwrap();
    assert!(m.contains("\"n\": 5"), "{m}");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "leftovers: {names:?}"
    );
}

#[test]
fn corrupted_and_nan_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data");
    let r = dir.path().join("r");
    tiny_run(&data, &r);
    let eval = |ck: &Path| {
        run(mica(&["eval", "--checkpoint"])
            .arg(ck)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(dir.path().join("e.json")))
    };
    // A bit flip, and a half-zeroed file.
    let flipped = dir.path().join("flipped");
    let half = dir.path().join("half");
    for (ck, edit) in [(&flipped, 0usize), (&half, 1)] {
        std::fs::create_dir(ck).unwrap();
        for f in ["config.json", "model.safetensors", "checkpoint.json"] {
            std::fs::copy(r.join("best").join(f), ck.join(f)).unwrap();
        }
        let w = ck.join("model.safetensors");
        let mut b = std::fs::read(&w).unwrap();
        let n = b.len();
        if edit == 0 {
            b[n - 3] ^= 0x10;
        } else {
            b[n / 2..].iter_mut().for_each(|x| *x = 0);
        }
        std::fs::write(&w, b).unwrap();
        let o = eval(ck);
        one_line_error(&o, &format!("{}: ", w.display()));
        one_line_error(&o, "records");
        one_line_error(&o, "the file is corrupted or was modified");
    }
    // One NaN weight in a checkpoint without a manifest (as older mica wrote them).
    let nan = dir.path().join("nan");
    std::fs::create_dir(&nan).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(r.join("best").join(f), nan.join(f)).unwrap();
    }
    let w = nan.join("model.safetensors");
    let mut b = std::fs::read(&w).unwrap();
    let n = b.len();
    b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&w, b).unwrap();
    let o = eval(&nan);
    one_line_error(
        &o,
        "non-finite value(s) (NaN or infinity): the weights are unusable",
    );
    let o = run(mica(&["predict", "--checkpoint"])
        .arg(&nan)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("p.csv")));
    one_line_error(&o, "non-finite value(s)");
    assert!(!dir.path().join("p.csv").exists());
}

#[test]
fn absurd_sizes_and_devices_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data");
    let train = |flags: &[&str], out: &str| {
        run(mica(&["train", "--quiet", "--epochs", "1", "--data"])
            .arg(&data)
            .args(flags)
            .arg("--out")
            .arg(dir.path().join(out)))
    };
    one_line_error(
        &train(&["--d", "100000000", "--heads", "1"], "a"),
        "the model (d 100000000, layers ",
    );
    one_line_error(
        &train(&["--layers", "1000000000"], "b"),
        "layers 1000000000) needs at least",
    );
    one_line_error(
        &run(mica(&["synth", "--n-train", "1000000000000", "--out"]).arg(dir.path().join("s"))),
        "samples need at least",
    );
    one_line_error(
        &run(mica(&["inspect"])
            .arg(&data)
            .env("CANDLE_NUM_THREADS", "999999")),
        "CANDLE_NUM_THREADS=999999: expected a thread count from 1 to 1024",
    );
    one_line_error(
        &run(mica(&["--threads", "100000", "inspect"]).arg(&data)),
        "--threads 100000: expected a thread count from 1 to 1024",
    );
    // A checkpoint whose config.json asks for a billion layers (no manifest to catch the edit).
    let r = dir.path().join("r");
    tiny_run(&data, &r);
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::copy(
        r.join("best/model.safetensors"),
        big.join("model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(r.join("best/config.json")).unwrap();
    let cfg = cfg.replace("\"layers\": 1,", "\"layers\": 1000000000,");
    std::fs::write(big.join("config.json"), cfg).unwrap();
    one_line_error(
        &run(mica(&["eval", "--checkpoint"])
            .arg(&big)
            .arg("--data")
            .arg(&data)),
        "layers 1000000000) needs at least",
    );
    // /dev/zero where a small file is expected.
    if Path::new("/dev/zero").exists() {
        one_line_error(
            &train(&["--config", "/dev/zero"], "z"),
            "/dev/zero: is a device, expected a config file",
        );
        one_line_error(
            &run(mica(&[
                "import-mult",
                "--weights",
                "/dev/zero",
                "--config",
                "/dev/zero",
                "--out",
            ])
            .arg(dir.path().join("imp"))),
            "/dev/zero: is a device, expected a config file",
        );
        let cfg_json = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mult-parity/tiny/config.json");
        one_line_error(
            &run(mica(&["import-mult", "--weights", "/dev/zero", "--config"])
                .arg(&cfg_json)
                .arg("--out")
                .arg(dir.path().join("imp"))),
            "/dev/zero: not a safetensors file (header length 0)",
        );
        one_line_error(
            &run(&mut mica(&[
                "metrics",
                "--task",
                "mosi",
                "--file",
                "/dev/zero",
            ])),
            "/dev/zero: is a device, expected a prediction CSV file",
        );
        one_line_error(
            &run(mica(&["forward", "--checkpoint"])
                .arg(r.join("best"))
                .args(["--inputs", "/dev/zero", "--out"])
                .arg(dir.path().join("o.st"))),
            "/dev/zero: not a safetensors file (header length 0)",
        );
    }
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_process_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data");
    for args in [
        vec!["inspect"],
        vec![
            "train", "--epochs", "1", "--d", "8", "--heads", "2", "--layers", "1", "--out", "r",
            "--data",
        ],
    ] {
        let mut child = mica(&args)
            .arg(&data)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close both read ends before the process writes anything.
        drop(child.stdout.take());
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert!(
            status.success() || status.signal() == Some(13),
            "{args:?}: {status:?} (101 would be a panic)"
        );
    }
    // A training run stopped that way is resumable (or was not started).
    let r = dir.path().join("r");
    if r.join("config.json").exists() {
        let o = run(mica(&["train", "--quiet", "--resume"]).arg(&r));
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

#[test]
fn quoted_ids_non_finite_synth_options_and_eval_messages() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data");
    // Ids with a comma, a quote and a line break: predict quotes them, metrics reads them.
    let manifest = data.join("manifest.json");
    let m = std::fs::read_to_string(&manifest).unwrap();
    let m = m
        .replace("\"synthtest000000_0\"", "\"a,b\"")
        .replace("\"synthtest000001_0\"", "\"say \\\"hi\\\"\\nthere\"");
    std::fs::write(&manifest, m).unwrap();
    let r = dir.path().join("r");
    tiny_run(&data, &r);
    let csv = dir.path().join("p.csv");
    let o = run(mica(&["predict", "--checkpoint"])
        .arg(r.join("best"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&csv));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.contains("\n\"a,b\","), "{text}");
    assert!(text.contains("\n\"say \"\"hi\"\"\nthere\","), "{text}");
    let o = run(mica(&["metrics", "--task", "mosi", "--file"]).arg(&csv));
    assert!(o.status.success(), "{}", stderr(&o));
    // eval prints the same metrics.
    let o = run(mica(&["eval", "--checkpoint"])
        .arg(r.join("best"))
        .arg("--data")
        .arg(&data));
    assert!(o.status.success(), "{}", stderr(&o));
    // Non-finite synth options.
    for (flag, v) in [("--burst-strength", "inf"), ("--noise", "NaN")] {
        let o = run(mica(&["synth", flag, v, "--out"]).arg(dir.path().join("s")));
        one_line_error(
            &o,
            &format!(
                "{flag} {}: expected a finite number",
                v.to_lowercase().replace("nan", "NaN")
            ),
        );
        assert!(!dir.path().join("s").exists());
    }
    // A sentiment checkpoint on IEMOCAP data: the message fits eval (it has no --task).
    let iemo = dir.path().join("iemo");
    let o = run(mica(&[
        "synth",
        "--size",
        "iemocap",
        "--n-train",
        "4",
        "--n-valid",
        "2",
        "--n-test",
        "2",
        "--out",
    ])
    .arg(&iemo));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(mica(&["eval", "--checkpoint"])
        .arg(r.join("best"))
        .arg("--data")
        .arg(&iemo));
    one_line_error(&o, "the checkpoint was trained for task mosi (sentiment, 1 output), but split `test` of the data has IEMOCAP emotion labels: evaluate it on data of its task");
    assert!(!stderr(&o).contains("--task"));
    // eval's default JSON cannot be written (its path is a directory): a warning, exit 0,
    // the metrics printed; an explicit --out that fails is an error.
    std::fs::remove_file(r.join("best/eval-test.json")).unwrap();
    std::fs::create_dir(r.join("best/eval-test.json")).unwrap();
    let o = run(mica(&["eval", "--checkpoint"])
        .arg(r.join("best"))
        .arg("--data")
        .arg(&data));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"mmsa\""));
    assert!(
        stderr(&o).contains("warning: the metrics were not saved"),
        "{}",
        stderr(&o)
    );
    let o = run(mica(&["eval", "--checkpoint"])
        .arg(r.join("best"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(r.join("best/eval-test.json")));
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn an_all_padding_modality_adds_zero_mmd_instead_of_failing() {
    use candle_core::{Device, Tensor};
    use mica::model::encoder::AttnTrace;
    use mica::model::io::BlockTrace;
    let q = Tensor::randn(0f32, 1.0, (2, 3, 4), &Device::Cpu).unwrap();
    let k = Tensor::randn(0f32, 1.0, (2, 5, 4), &Device::Cpu).unwrap();
    let block = BlockTrace {
        target: 0,
        source: 1,
        layer: 0,
        attn: AttnTrace {
            q,
            k,
            probs: None,
            heads: None,
        },
    };
    let cfg = mica::config::AlignConfig::default();
    // Text all padding in this batch: the block adds exactly 0.
    let valid = [vec![false; 6], vec![true; 10], vec![true; 4]];
    let v = mica::align::block_mmd(&block, &valid, &cfg, 1).unwrap();
    assert_eq!(v.to_scalar::<f32>().unwrap(), 0.0);
    let valid = [vec![true; 6], vec![true; 10], vec![true; 4]];
    let v = mica::align::block_mmd(&block, &valid, &cfg, 1).unwrap();
    assert!(v.to_scalar::<f32>().unwrap() > 0.0);
}

#[test]
fn inspect_summary_counts_the_non_finite_values_its_table_shows() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "data");
    // A mica dataset whose audio holds 5 NaN (the format promises zeros; a hand-edited or
    // foreign writer may not keep the promise).
    let mut ds = mica::data::load_any(&data).unwrap();
    let split = ds.splits.get_mut("train").unwrap();
    for x in split.audio.data.iter_mut().take(5) {
        *x = f32::NAN;
    }
    let bad = dir.path().join("bad");
    mica::data::mica_format::save(&ds, &bad).unwrap();
    let o = run(mica(&["inspect"]).arg(&bad));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let table = out
        .lines()
        .find(|l| l.trim_start().starts_with("audio ") && l.contains("non-finite 5"));
    assert!(table.is_some(), "{out}");
    let summary: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("non-finite values replaced by 0: 5"))
        .collect();
    assert_eq!(summary.len(), 1, "{out}");
    // Training reads them as zeros.
    let loaded = mica::data::load_any(&bad).unwrap();
    assert!(loaded.splits["train"]
        .audio
        .data
        .iter()
        .all(|x| x.is_finite()));
    assert_eq!(loaded.splits["train"].non_finite, [0, 5, 0]);
}
