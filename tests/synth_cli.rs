//! `mica synth` end to end: the MulT pickle is written where documented, the sums file
//! matches the arrays, and `--format mica` says clearly that it is not wired yet.

use std::process::Command;

fn mica() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mica"))
}

#[test]
fn mult_pkl_into_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sums = dir.path().join("sums.json");
    let out = mica()
        .args([
            "synth", "--size", "small", "--seed", "3", "--format", "mult-pkl",
        ])
        .args([
            "--n-train",
            "8",
            "--n-valid",
            "4",
            "--n-test",
            "4",
            "--events",
            "3",
        ])
        .arg("--out")
        .arg(dir.path())
        .arg("--sums")
        .arg(&sums)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pkl = dir.path().join("synth_small_data_noalign.pkl");
    let bytes = std::fs::read(&pkl).unwrap();
    assert_eq!(&bytes[..2], &[0x80, 4], "pickle protocol 4");
    assert_eq!(bytes.last(), Some(&b'.'), "pickle STOP");
    let sums: serde_json::Value = serde_json::from_slice(&std::fs::read(&sums).unwrap()).unwrap();
    for split in ["train", "valid", "test"] {
        for key in ["text", "audio", "vision", "labels"] {
            assert!(sums[split][key].is_f64(), "{split}/{key}");
        }
    }
}

#[test]
fn mult_pkl_to_a_file_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let path = dir.path().join(name);
        let st = mica()
            .args([
                "synth", "--size", "iemocap", "--seed", "1", "--format", "mult-pkl",
            ])
            .args(["--n-train", "3", "--n-valid", "2", "--n-test", "2", "--out"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(path).unwrap()
    };
    assert_eq!(run("a.pkl"), run("b.pkl"));
}

#[test]
fn mica_format_is_reported_as_not_wired() {
    let dir = tempfile::tempdir().unwrap();
    let out = mica()
        .args([
            "synth",
            "--size",
            "small",
            "--n-train",
            "2",
            "--n-valid",
            "2",
            "--n-test",
            "2",
        ])
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not yet wired"), "{err}");
}

#[test]
fn bad_knob_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = mica()
        .args(["synth", "--warp", "2", "--format", "mult-pkl", "--out"])
        .arg(dir.path().join("x.pkl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warp"));
}
