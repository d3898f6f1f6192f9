//! `mica metrics` end to end: the binary on the reference fixtures, and its error messages.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

fn mica(args: &[&str]) -> Output {
    common::bin().args(args).output().expect("run mica")
}

fn metrics(task: &str, file: &Path) -> Output {
    mica(&["metrics", "--task", task, "--file", file.to_str().unwrap()])
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Rounds like Python's round(x, 4) via the library (tested in its own unit tests).
fn round4_all(v: &Value) -> Value {
    let mut out = v.clone();
    for (_, x) in out.as_object_mut().unwrap() {
        *x = serde_json::json!(mica::eval::round4(x.as_f64().unwrap()));
    }
    out
}

#[test]
fn sentiment_fixtures_through_the_binary() {
    for name in ["sentiment_a", "sentiment_b"] {
        let exp = expected(name);
        let out = metrics("mosi", &fixtures().join(format!("{name}.csv")));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        // mult: every official key, bit-exact; MAE printed by MulT as float32.
        for (k, want) in exp["official"].as_object().unwrap() {
            let g = got["mult"][k].as_f64().unwrap();
            if k == "mae" {
                assert_eq!(
                    g as f32,
                    want.to_string().parse::<f32>().unwrap(),
                    "{name} mae"
                );
                assert_eq!(g, exp["reimpl"]["mae"].as_f64().unwrap());
            } else {
                assert_eq!(g, want.as_f64().unwrap(), "{name} {k}");
            }
        }
        assert_eq!(got["mult"].as_object().unwrap().len(), 6);
        assert_eq!(round4_all(&got["mmsa"]), exp["mmsa"], "{name} mmsa");
    }
}

#[test]
fn emotion_fixture_through_the_binary() {
    let exp = expected("emotion_a");
    let out = metrics("iemocap", &fixtures().join("emotion_a.csv"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["mult"], exp["official"]);
    assert!(got.get("mmsa").is_none());
    assert!(got["mult_mean"]["f1"].is_number());
}

#[test]
fn table_format_names_the_sets() {
    let out = mica(&[
        "metrics",
        "--task",
        "mosei",
        "--file",
        fixtures().join("sentiment_a.csv").to_str().unwrap(),
        "--format",
        "table",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("metric set: mult") && text.contains("metric set: mmsa"));
    assert!(text.contains("Acc2 (Has0") && text.contains("Acc2 (Non0"));
}

/// Runs `mica metrics` on `content` written to a temp file; returns (file path, stderr).
fn failing(task: &str, content: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preds.csv");
    std::fs::write(&path, content).unwrap();
    let out = metrics(task, &path);
    assert!(!out.status.success(), "should fail: {content:?}");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    (path.display().to_string(), err)
}

#[test]
fn error_messages_name_file_line_and_problem() {
    let (p, e) = failing("mosi", "pred,label\n0.5,1.0\n0.3,abc\n");
    assert!(e.contains(&format!("{p}:3:")), "{e}");
    assert!(
        e.contains("column 2 (label)") && e.contains("\"abc\" is not a number"),
        "{e}"
    );

    let (p, e) = failing("mosi", "prediction,label\n0.5,1.0\n");
    assert!(
        e.contains(&format!("{p}:1:")) && e.contains("lacks column \"pred\""),
        "{e}"
    );

    let (p, e) = failing("iemocap", "pred,label\n0.5,1.0\n");
    assert!(
        e.contains(&format!("{p}:1:")) && e.contains("task iemocap expects 12 columns"),
        "{e}"
    );

    let (_, e) = failing(
        "mosi",
        &std::fs::read_to_string(fixtures().join("emotion_a.csv")).unwrap(),
    );
    assert!(
        e.contains(":1:") && e.contains("task mosi expects 2 columns"),
        "{e}"
    );

    let (p, e) = failing("mosi", "pred,label\n0.5,1.0\n0.5\n");
    assert!(
        e.contains(&format!("{p}:3:")) && e.contains("1 cells, the header has 2"),
        "{e}"
    );

    let (p, e) = failing("mosi", "pred,label\n0.5,NaN\n");
    assert!(
        e.contains(&format!("{p}:2:")) && e.contains("not finite"),
        "{e}"
    );

    let (p, e) = failing("mosi", "");
    assert!(
        e.contains(&format!("{p}:1:")) && e.contains("empty file"),
        "{e}"
    );

    let (p, e) = failing("mosi", "pred,label\n\n");
    assert!(
        e.contains(&format!("{p}:1:")) && e.contains("no data rows"),
        "{e}"
    );

    let mut row = vec!["0.0"; 8];
    row.extend(["1", "0", "2", "0"]);
    let header =
        "pred_0,pred_1,pred_2,pred_3,pred_4,pred_5,pred_6,pred_7,label_0,label_1,label_2,label_3";
    let (p, e) = failing("iemocap", &format!("{header}\n{}\n", row.join(",")));
    assert!(
        e.contains(&format!("{p}:2:")) && e.contains("label_2") && e.contains("not 0 or 1"),
        "{e}"
    );
}

#[test]
fn missing_file_and_id_column() {
    let out = metrics("mosi", Path::new("/nonexistent/preds.csv"));
    assert!(!out.status.success());
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(
        e.contains("/nonexistent/preds.csv") && e.contains("cannot read file"),
        "{e}"
    );

    // An id column (what prediction export writes) is accepted and ignored; CRLF too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.csv");
    std::fs::write(&path, "id,label,pred\r\nv1_0,1.0,0.5\r\nv1_1,-2.0,-1.5\r\n").unwrap();
    let out = metrics("mosi", &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    // |0.5 - 1| + |-1.5 + 2| = 1 -> MAE 0.5; both signs right -> acc_2 1.
    assert_eq!(got["mult"]["mae"], 0.5);
    assert_eq!(got["mult"]["acc_2"], 1.0);

    let out = mica(&[
        "metrics",
        "--task",
        "imdb",
        "--file",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}
