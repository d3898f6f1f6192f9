//! `mica import-csd` through the binary: the fixtures into a mica dataset (unaligned with
//! element times, and word-aligned), `mica analyze` computing correlation accuracy on it
//! from the imported times, and named errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{mica, stderr};

fn fx(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/csd")
        .join(name)
}

fn import(extra: &[&str], out: &Path) -> Output {
    let (t, a, v, l) = (
        fx("mosi_tiny_glove_vectors.csd"),
        fx("mosi_tiny_covarep.csd"),
        fx("mosi_tiny_facet_contiguous.csd"),
        fx("mosi_tiny_opinion_labels.csd"),
    );
    let mut args = vec!["import-csd"];
    args.extend_from_slice(extra);
    mica(
        &args,
        &[
            ("--text", &t),
            ("--audio", &a),
            ("--vision", &v),
            ("--labels", &l),
            ("--out", out),
        ],
    )
}

const FOLDS: [&str; 6] = ["--train", "vidA,vidB", "--valid", "vidC", "--test", "vidD"];

#[test]
fn import_then_train_and_analyze_with_real_times() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = FOLDS.to_vec();
    args.extend([
        "--text-len",
        "10",
        "--audio-len",
        "60",
        "--vision-len",
        "80",
    ]);
    let o = import(&args, &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("audio : 4 non-finite input values; 3 output values replaced by 0"),
        "{err}"
    );
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["source_format"], "csd");
    assert_eq!(m["splits"]["train"]["n"], 5);
    assert_eq!(
        m["splits"]["train"]["shapes"]["audio_intervals"],
        serde_json::json!([5, 60, 2])
    );
    assert_eq!(
        m["splits"]["valid"]["ids"],
        serde_json::json!(["vidC[0]", "vidC[1]", "vidC[2]"])
    );
    assert_eq!(m["splits"]["train"]["non_finite"]["audio"], 2);

    let run = dir.path().join("run");
    let train = [
        "train",
        "--variant",
        "mica",
        "--d",
        "8",
        "--heads",
        "2",
        "--layers",
        "1",
        "--kernels",
        "1,1,1",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--set",
        "align.mmd_max_samples=32",
        "--quiet",
        "--threads=1",
    ];
    let o = mica(&train, &[("--data", &data), ("--out", &run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let an = dir.path().join("an");
    let o = mica(
        &["analyze", "--split", "train"],
        &[("--checkpoint", &run), ("--data", &data), ("--out", &an)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let a: Value =
        serde_json::from_str(&std::fs::read_to_string(an.join("analysis.json")).unwrap()).unwrap();
    assert_eq!(a["corr_acc_available"], true);
    let acc = a["models"][0]["analysis"]["mean_corr_acc"]
        .as_f64()
        .unwrap();
    let chance = a["models"][0]["analysis"]["mean_corr_chance"]
        .as_f64()
        .unwrap();
    assert!(
        (0.0..=1.0).contains(&acc) && chance > 0.0 && chance < 1.0,
        "{acc} {chance}"
    );
}

#[test]
fn word_aligned_import_has_one_length() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("aligned");
    let mut args = FOLDS.to_vec();
    args.extend(["--align", "words", "--text-len", "8"]);
    let o = import(&args, &data);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("vision: 0 non-finite input values; 0 output values replaced by 0; 1 segments truncated; 2 words without frames filled with zeros"), "{}", stderr(&o));
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap())
            .unwrap();
    for k in ["text", "audio", "vision"] {
        assert_eq!(m["splits"]["test"]["shapes"][k][1], 8, "{k}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_mica"))
        .arg("inspect")
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The aligned-only rows (MFM, Graph-MFN) read it as given.
    for variant in ["mfm", "gmfn"] {
        let run = dir.path().join(variant);
        let train = [
            "train",
            "--variant",
            variant,
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--set",
            "model.baselines.mfn_hidden_l=4",
            "--set",
            "model.baselines.mfn_mem=4",
            "--quiet",
            "--threads=1",
        ];
        let o = mica(&train, &[("--data", &data), ("--out", &run)]);
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
    }
}

#[test]
fn errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let o = import(&[], &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("give the folds"), "{}", stderr(&o));

    let o = import(&["--folds", "nosuch"], &out);
    assert!(
        stderr(&o).contains(
            "--folds nosuch: neither a built-in fold set (mosi, mosei) nor an existing file"
        ),
        "{}",
        stderr(&o)
    );

    // The standard MOSI folds name none of the fixture's videos.
    let o = import(&["--folds", "mosi"], &out);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("split 'train' is empty: none of its 52 fold videos"),
        "{}",
        stderr(&o)
    );

    let o = import(
        &["--train", "vidA,vidB", "--valid", "vidB", "--test", "vidD"],
        &out,
    );
    assert!(
        stderr(&o).contains("video 'vidB' is listed in 'train' and 'valid'"),
        "{}",
        stderr(&o)
    );

    let o = import(&["--train", "vidA"], &out);
    assert!(!o.status.success());

    // Output onto an input: refused before anything is written.
    let copy = dir.path().join("labels.csd");
    std::fs::copy(fx("mosi_tiny_opinion_labels.csd"), &copy).unwrap();
    let (t, a, v) = (
        fx("mosi_tiny_glove_vectors.csd"),
        fx("mosi_tiny_covarep.csd"),
        fx("mosi_tiny_facet.csd"),
    );
    let mut args = vec!["import-csd"];
    args.extend_from_slice(&FOLDS);
    let o = mica(
        &args,
        &[
            ("--text", &t),
            ("--audio", &a),
            ("--vision", &v),
            ("--labels", &copy),
            ("--out", &copy),
        ],
    );
    assert!(
        stderr(&o).contains("is a file; give a directory"),
        "{}",
        stderr(&o)
    );

    // A truncated input names the file.
    let cut = dir.path().join("cut.csd");
    let bytes = std::fs::read(fx("mosi_tiny_covarep.csd")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = mica(
        &args,
        &[
            ("--text", &t),
            ("--audio", &cut),
            ("--vision", &v),
            ("--labels", &copy),
            ("--out", &out),
        ],
    );
    let e = stderr(&o);
    assert!(
        e.contains("cut.csd: not a readable .csd file") && e.contains("truncated"),
        "{e}"
    );
    assert!(!out.exists());

    // `mica inspect` on a .csd points to import-csd.
    let o = Command::new(env!("CARGO_BIN_EXE_mica"))
        .arg("inspect")
        .arg(fx("mosi_tiny_words.csd"))
        .output()
        .unwrap();
    assert!(stderr(&o).contains("mica import-csd"), "{}", stderr(&o));
}
