//! `mica synth` end to end: the MulT pickle is written where documented, the sums file
//! matches the arrays, and both output formats are read back by mica's readers.

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

/// Every value of a dataset as bits (NaN-safe: the padding intervals are NaN).
fn bits(ds: &mica::data::Dataset) -> Vec<u32> {
    use mica::data::Labels;
    let mut out = Vec::new();
    for split in ds.splits.values() {
        for m in split.modalities() {
            out.extend(m.data.iter().map(|v| v.to_bits()));
            out.extend(m.lengths.iter().map(|&l| l as u32));
        }
        if let Some(iv) = &split.intervals {
            for v in &iv.per_modality {
                out.extend(v.iter().map(|x| x.to_bits()));
            }
        }
        match &split.labels {
            Labels::Sentiment(v) => out.extend(v.iter().map(|x| x.to_bits())),
            Labels::Emotion(v) => out.extend(v.iter().map(|&x| x as u32)),
        }
    }
    out
}

fn synth_cfg(
    size: mica::data::synth::SynthSize,
    seed: u64,
    n: [usize; 3],
) -> mica::data::synth::SynthConfig {
    let mut cfg = mica::data::synth::SynthConfig::preset(size, seed);
    cfg.n_train = n[0];
    cfg.n_valid = n[1];
    cfg.n_test = n[2];
    cfg
}

#[test]
fn mica_format_round_trips_with_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small");
    let out = mica()
        .args([
            "synth",
            "--size",
            "small",
            "--seed",
            "4",
            "--n-train",
            "6",
            "--n-valid",
            "3",
            "--n-test",
            "3",
            "--out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = mica::data::load_any(&path).unwrap();
    let want = mica::data::synth::generate(&synth_cfg(
        mica::data::synth::SynthSize::Small,
        4,
        [6, 3, 3],
    ))
    .unwrap();
    assert_eq!(back.format, "mica");
    assert!(
        back.splits["train"].intervals.is_some(),
        "ground truth must survive"
    );
    assert_eq!(bits(&back), bits(&want));
    assert_eq!(back.splits["test"].ids, want.splits["test"].ids);
}

#[test]
fn mult_pkl_is_read_back_by_the_pickle_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.pkl");
    let st = mica()
        .args([
            "synth", "--size", "iemocap", "--seed", "2", "--format", "mult-pkl",
        ])
        .args(["--n-train", "4", "--n-valid", "2", "--n-test", "3", "--out"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    let back = mica::data::load_any(&path).unwrap();
    let mut want = mica::data::synth::generate(&synth_cfg(
        mica::data::synth::SynthSize::Iemocap,
        2,
        [4, 2, 3],
    ))
    .unwrap();
    // The MulT layout has no intervals.
    for s in want.splits.values_mut() {
        s.intervals = None;
    }
    assert_eq!(back.format, "mult");
    assert_eq!(bits(&back), bits(&want));
    for (name, s) in &want.splits {
        assert_eq!(back.splits[name].labels, s.labels, "{name}");
    }
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
