//! The classic baselines of issue 20 through the binary on tiny synthetic data: EF-/LF-LSTM
//! with `--align ctc`, RAVEN and MCTN each train an epoch, their auxiliary losses enter
//! the training loss, and the best checkpoint evaluates to the run's own test metrics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mica(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn tiny_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let o = mica(
        &[
            "synth",
            "--size",
            "small",
            "--seed",
            "7",
            "--n-train",
            "12",
            "--n-valid",
            "4",
            "--n-test",
            "4",
        ],
        &[("--out", &data)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    data
}

#[test]
fn classic_baselines_train_an_epoch_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path());
    let small = [
        "--set",
        "model.lstm_hidden=6",
        "--set",
        "model.lstm_mod_hidden=4",
        "--set",
        "model.baselines.raven_word_hidden=6",
        "--set",
        "model.baselines.mctn_hidden=6",
        "--set",
        "model.baselines.mctn_reg_hidden=4",
    ];
    for (variant, align, arch) in [
        ("ef-lstm", "ctc", "ef-lstm"),
        ("lf-lstm", "ctc", "lf-lstm"),
        ("raven", "ctc", "raven"),
        ("mctn", "nearest", "mctn"),
    ] {
        let run = dir.path().join(format!("{variant}-{align}"));
        let mut args = vec![
            "train",
            "--variant",
            variant,
            "--align",
            align,
            "--epochs",
            "1",
            "--batch-size",
            "6",
            "--quiet",
            "--threads=1",
        ];
        args.extend(small);
        let o = mica(&args, &[("--data", &data), ("--out", &run)]);
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model"]["arch"], arch);
        assert_eq!(cfg["model"]["baselines"]["align"], align);
        // Columns: epoch, train_loss, train_task, ...: the auxiliary loss is in the total.
        let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
        let row: Vec<f64> = log
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(row[1].is_finite() && row[1] > row[2], "{variant}: {log}");
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap())
                .unwrap();
        let o = mica(
            &["eval", "--threads=1"],
            &[
                ("--checkpoint", &run.join("best")),
                ("--data", &data),
                ("--out", &dir.path().join(format!("{variant}-eval.json"))),
            ],
        );
        assert!(o.status.success(), "{variant} eval: {}", stderr(&o));
        let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(printed, metrics["test"], "{variant}: checkpoint round trip");
    }
    // Alignment weights make no sense without crossmodal attention.
    let o = mica(
        &["train", "--variant", "raven", "--beta", "0.5", "--quiet"],
        &[("--data", &data), ("--out", &dir.path().join("bad"))],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no alignment losses"), "{}", stderr(&o));
}

/// MFM and Graph-MFN through the binary: word-aligned synthetic data (`mica synth
/// --aligned`, mica's format and MulT's `*_data.pkl`), one epoch each, the best checkpoint
/// re-evaluates to the run's test metrics, `mica ablate` trains both rows, and unaligned
/// data is refused with the message naming the options (accepted with `--align nearest`).
#[test]
fn mfm_and_gmfn_train_on_aligned_data_and_refuse_unaligned() {
    let dir = tempfile::tempdir().unwrap();
    let synth = |out: &Path, more: &[&str]| {
        let mut args = vec![
            "synth",
            "--size",
            "small",
            "--seed",
            "5",
            "--n-train",
            "12",
            "--n-valid",
            "4",
            "--n-test",
            "4",
        ];
        args.extend(more);
        let o = mica(&args, &[("--out", out)]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let aligned = dir.path().join("aligned");
    synth(&aligned, &["--aligned"]);
    let pkl_dir = dir.path().join("pkl");
    std::fs::create_dir(&pkl_dir).unwrap();
    synth(&pkl_dir, &["--aligned", "--format", "mult-pkl"]);
    let pkl = pkl_dir.join("synth_small_data.pkl");
    assert!(pkl.exists());
    let unaligned = tiny_data(dir.path());
    let small = [
        "--set",
        "model.baselines.mfn_hidden_l=4",
        "--set",
        "model.baselines.mfn_hidden_a=3",
        "--set",
        "model.baselines.mfn_hidden_v=3",
        "--set",
        "model.baselines.mfn_mem=4",
        "--set",
        "model.baselines.mfm_zv=4",
        "--set",
        "model.baselines.mfm_fl=4",
    ];
    for variant in ["mfm", "gmfn"] {
        for (tag, data) in [("mica", &aligned), ("pkl", &pkl)] {
            let run = dir.path().join(format!("{variant}-{tag}"));
            let mut args = vec![
                "train",
                "--variant",
                variant,
                "--epochs",
                "1",
                "--batch-size",
                "6",
                "--quiet",
                "--threads=1",
            ];
            args.extend(small);
            let o = mica(&args, &[("--data", data), ("--out", &run)]);
            assert!(o.status.success(), "{variant}/{tag}: {}", stderr(&o));
            let cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(cfg["model"]["arch"], variant);
            assert_eq!(cfg["model"]["baselines"]["align"], "none");
            let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
            let row: Vec<f64> = log
                .lines()
                .nth(1)
                .unwrap()
                .split(',')
                .map(|x| x.parse().unwrap())
                .collect();
            assert!(row[1].is_finite(), "{variant}: {log}");
            if variant == "mfm" {
                // Reconstruction + MMD enter the training loss.
                assert!(row[1] > row[2], "{variant}: {log}");
            }
            let metrics: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap())
                    .unwrap();
            let o = mica(
                &["eval", "--threads=1"],
                &[
                    ("--checkpoint", &run.join("best")),
                    ("--data", data),
                    (
                        "--out",
                        &dir.path().join(format!("{variant}-{tag}-eval.json")),
                    ),
                ],
            );
            assert!(o.status.success(), "{variant} eval: {}", stderr(&o));
            let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(printed, metrics["test"], "{variant}: checkpoint round trip");
        }
        // Unaligned data: the exact refusal; `--align nearest` feeds it.
        let o = mica(
            &["train", "--variant", variant, "--epochs", "1", "--quiet"],
            &[
                ("--data", &unaligned),
                ("--out", &dir.path().join(format!("{variant}-bad"))),
            ],
        );
        assert!(!o.status.success());
        let want = format!(
            "error: --variant {variant} needs word-aligned input (text, audio and vision of one \
             length), but this data's lengths are 12 / 48 / 40: train with `--align nearest` \
             (nearest-time resampling onto the words) or `--align ctc` (MulT's CTC module), or \
             give aligned data (`mica synth --aligned`, `mica import-csd --align words`, MulT's \
             `*_data.pkl`)\n"
        );
        assert_eq!(stderr(&o), want);
        assert!(!dir.path().join(format!("{variant}-bad")).exists());
        let mut args = vec![
            "train",
            "--variant",
            variant,
            "--align",
            "nearest",
            "--epochs",
            "1",
            "--batch-size",
            "6",
            "--quiet",
            "--threads=1",
        ];
        args.extend(small);
        let o = mica(
            &args,
            &[
                ("--data", &unaligned),
                ("--out", &dir.path().join(format!("{variant}-nearest"))),
            ],
        );
        assert!(o.status.success(), "{variant} nearest: {}", stderr(&o));
    }
    // Both rows in `mica ablate`.
    let mut args = vec![
        "ablate",
        "--variants",
        "mfm,gmfn",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "6",
        "--quiet",
        "--threads=1",
    ];
    args.extend(small);
    let out = dir.path().join("ablate");
    let o = mica(&args, &[("--data", &aligned), ("--out", &out)]);
    assert!(o.status.success(), "ablate: {}", stderr(&o));
    let table = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(
        table.contains("| mfm |") && table.contains("| gmfn |"),
        "{table}"
    );
}
