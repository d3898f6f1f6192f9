//! The analysis commands end to end through the binary on tiny synthetic data:
//! ablate (Table 5) → analyze (Table 6) → attention (Fig. 4) → report, sweep (Fig. 3),
//! analyze on data without intervals, and one-line errors for bad input.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{mica, stderr};

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// Tiny model and training options (1 layer, d = 8, 2 heads, 1 epoch).
const TINY: [&str; 16] = [
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
    "6",
    "--set",
    "align.mmd_max_samples=32",
    "--quiet",
    "--threads=1",
];

fn tiny_data(dir: &Path, format: &str) -> PathBuf {
    let out = dir.join(if format == "mica" { "data" } else { "data.pkl" });
    common::tiny_synth(&out, "small", "5", "12", &["--format", format])
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PNG signature and IHDR chunk; returns (width, height).
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&b[8..16], b"\x00\x00\x00\x0dIHDR", "{}", path.display());
    let be = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    (be(&b[16..20]), be(&b[20..24]))
}

#[test]
fn ablate_analyze_attention_report_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "mica");
    let out = dir.path().join("ablation");
    let mut args = vec!["ablate", "--variants", "backbone,mica", "--seeds", "1,2"];
    args.extend_from_slice(&TINY);
    let o = mica(&args, &[("--data", &data), ("--out", &out)]);
    ok(&o);
    for v in ["backbone", "mica"] {
        for s in [1, 2] {
            let run = out.join(v).join(format!("seed-{s}"));
            assert!(
                run.join("metrics.json").is_file(),
                "missing {}",
                run.display()
            );
            assert_eq!(json(&run.join("config.json"))["variant"], v);
        }
    }
    assert!(stderr(&o).contains("[4/4] mica seed 2"), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(
        md.contains("| backbone | 2 |") && md.contains("| mica | 2 |"),
        "{md}"
    );
    assert!(md.contains("Paired t-test against `backbone`"), "{md}");
    let j = json(&out.join("ablation.json"));
    assert_eq!(j["seeds"], serde_json::json!([1, 2]));
    assert_eq!(j["variants"], serde_json::json!(["backbone", "mica"]));
    let rows = j["table"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for key in ["mult.acc_2", "mult.f1", "mult.mae", "mult.corr"] {
        let st = &rows[1]["stats"][key];
        assert_eq!(st["n"], 2, "{key}: {st}");
        assert!(st["mean"].is_f64() && st["std"].is_f64(), "{key}: {st}");
        let t = &rows[1]["tests"]["backbone"][key];
        assert_eq!(t["pairs"], 2, "{key}: {t}");
        assert!(
            t.get("p_value").is_some() && t.get("mean_diff").is_some(),
            "{t}"
        );
    }
    // The mean in the table is the mean of the two runs' own metrics.
    let m1 = json(&out.join("mica/seed-1/metrics.json"))["test"]["mult"]["mae"]
        .as_f64()
        .unwrap();
    let m2 = json(&out.join("mica/seed-2/metrics.json"))["test"]["mult"]["mae"]
        .as_f64()
        .unwrap();
    let mean = rows[1]["stats"]["mult.mae"]["mean"].as_f64().unwrap();
    assert!((mean - (m1 + m2) / 2.0).abs() < 1e-12);
    assert!(
        rows[0]["tests"].as_object().unwrap().is_empty(),
        "no self-test"
    );

    // Running the same command again reuses every finished run.
    let before = std::fs::read(out.join("mica/seed-1/metrics.json")).unwrap();
    let o = mica(&args, &[("--data", &data), ("--out", &out)]);
    ok(&o);
    assert_eq!(
        stderr(&o).matches(": reused in").count(),
        4,
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(out.join("mica/seed-1/metrics.json")).unwrap(),
        before
    );

    // Table 6 of the two models side by side.
    let mica_ckpt = out.join("mica/seed-1/best");
    let back_run = out.join("backbone/seed-1");
    let an = dir.path().join("analysis");
    let o = mica(
        &["analyze", "--max-elements", "50", "--threads=1"],
        &[
            ("--checkpoint", &mica_ckpt),
            ("--checkpoint", &back_run),
            ("--data", &data),
            ("--out", &an),
        ],
    );
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("Table 6") && stdout.contains("| mica |"),
        "{stdout}"
    );
    let a = json(&an.join("analysis.json"));
    assert_eq!(a["corr_acc_available"], true);
    let models = a["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[1]["variant"], "backbone");
    for m in models {
        let an = &m["analysis"];
        let blocks = an["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 6, "six crossmodal blocks");
        assert_eq!(an["layer"], 1);
        for b in blocks {
            let ad = b["a_distance"].as_f64().unwrap();
            assert!((-2.0..=2.0).contains(&ad), "{b}");
            assert!(b["queries_used"].as_u64().unwrap() <= 50, "{b}");
            let ca = b["corr_acc"].as_f64().unwrap();
            let chance = b["corr_chance"].as_f64().unwrap();
            assert!(
                (0.0..=1.0).contains(&ca) && chance > 0.0 && chance <= 1.0,
                "{b}"
            );
        }
        let mean_ad = an["mean_a_distance"].as_f64().unwrap();
        let by_hand: f64 = blocks
            .iter()
            .map(|b| b["a_distance"].as_f64().unwrap())
            .sum::<f64>()
            / 6.0;
        assert!((mean_ad - by_hand).abs() < 1e-12);
        assert!(an["mean_corr_acc"].is_f64());
        assert!(an["corr_acc_unavailable"].is_null());
    }
    let amd = std::fs::read_to_string(an.join("analysis.md")).unwrap();
    assert!(amd.contains("| V->L |"), "{amd}");

    // Fig. 4: one checkpoint, then two side by side; both with sample index and id.
    let one = dir.path().join("figs/attn-mica.png");
    let o = mica(
        &[
            "attention",
            "--sample",
            "0",
            "--layer",
            "1",
            "--block",
            "V->L",
            "--head",
            "0",
        ],
        &[
            ("--checkpoint", &mica_ckpt),
            ("--data", &data),
            ("--out", &one),
        ],
    );
    ok(&o);
    assert!(
        stderr(&o).contains("Corr. Acc of this map"),
        "{}",
        stderr(&o)
    );
    assert_eq!(png_size(&one), (700, 600));
    let two = dir.path().join("figs/attn-pair.png");
    let o = mica(
        &["attention", "--sample", "3", "--block", "A-V"],
        &[
            ("--checkpoint", &mica_ckpt),
            ("--checkpoint", &back_run),
            ("--data", &data),
            ("--out", &two),
        ],
    );
    ok(&o);
    assert_eq!(png_size(&two), (1400, 600));

    // The report gathers all of it with relative links.
    let report = dir.path().join("report.md");
    let o = mica(
        &["report"],
        &[
            ("", &out),
            ("", &an),
            ("", &dir.path().join("figs")),
            ("--out", &report),
        ],
    );
    ok(&o);
    let r = std::fs::read_to_string(&report).unwrap();
    for want in [
        "Table 5",
        "Table 6",
        "### Runs (4)",
        "(ablation/mica/seed-1/loss.png)",
        "![attn-pair.png](figs/attn-pair.png)",
    ] {
        assert!(r.contains(want), "missing {want:?} in\n{r}");
    }
    assert!(
        !r.contains(&dir.path().display().to_string()),
        "links must be relative:\n{r}"
    );
}

#[test]
fn sweep_writes_csv_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "mica");
    let out = dir.path().join("sweep");
    let mut args = vec![
        "sweep", "--param", "tau", "--values", "0.1,0.5", "--seeds", "1,2", "--metric", "mae",
    ];
    args.extend_from_slice(&TINY);
    let o = mica(&args, &[("--data", &data), ("--out", &out)]);
    ok(&o);
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "header + 2 values x 2 seeds:\n{csv}");
    assert!(
        lines[0].starts_with("tau,seed,") && lines[0].contains("mult.mae"),
        "{csv}"
    );
    assert!(lines[1].starts_with("0.1,1,"), "{csv}");
    assert_eq!(
        json(&out.join("tau-0.5/seed-2/config.json"))["align"]["tau"],
        0.5
    );
    let j = json(&out.join("sweep.json"));
    assert_eq!(j["metric"], "mult.mae");
    let pts = j["points"].as_array().unwrap();
    assert_eq!(pts.len(), 2);
    for p in pts {
        assert_eq!(p["n"], 2);
        assert!(p["mean"].as_f64().unwrap() >= 0.0 && p["std"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(png_size(&out.join("sweep.png")), (900, 600));
    // Sweeping a parameter that is also fixed is refused.
    let mut bad = args.clone();
    bad.extend_from_slice(&["--tau", "0.3"]);
    let o = mica(&bad, &[("--data", &data), ("--out", &out)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("swept parameter"), "{}", stderr(&o));
}

#[test]
fn analyze_without_intervals_reports_a_distance_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(dir.path(), "mult-pkl");
    let run = dir.path().join("run");
    let mut args = vec!["train", "--variant", "mult"];
    args.extend_from_slice(&TINY);
    ok(&mica(&args, &[("--data", &data), ("--out", &run)]));
    let o = mica(&["analyze"], &[("--checkpoint", &run), ("--data", &data)]);
    ok(&o);
    assert!(
        stderr(&o).contains("Corr. Acc unavailable"),
        "{}",
        stderr(&o)
    );
    // Default output: next to the checkpoint.
    let a = json(&run.join("analysis-test/analysis.json"));
    assert_eq!(a["corr_acc_available"], false);
    let an = &a["models"][0]["analysis"];
    assert!(an["mean_a_distance"].is_f64(), "{an}");
    assert!(an["mean_corr_acc"].is_null());
    assert!(an["corr_acc_unavailable"]
        .as_str()
        .unwrap()
        .contains("no element intervals"));
    assert_eq!(an["blocks"].as_array().unwrap().len(), 6);
    let md = std::fs::read_to_string(run.join("analysis-test/analysis.md")).unwrap();
    assert!(
        md.contains("n/a") && md.contains("Corr. Acc unavailable"),
        "{md}"
    );

    // Attention still draws, without outline.
    let png = dir.path().join("a.png");
    ok(&mica(
        &["attention", "--sample", "1", "--block", "L->A"],
        &[("--checkpoint", &run), ("--data", &data), ("--out", &png)],
    ));
    assert_eq!(png_size(&png).0, 700);

    // One-line errors for bad input.
    for (flags, want) in [
        (vec!["--sample", "99"], "the split has 6 samples"),
        (vec!["--sample", "0", "--block", "L->L"], "must differ"),
        (
            vec!["--sample", "0", "--layer", "3"],
            "layer 3 requested, the model has 1",
        ),
        (vec!["--sample", "0", "--head", "7"], "head 7 out of range"),
    ] {
        let mut a = vec!["attention"];
        a.extend_from_slice(&flags);
        let o = mica(
            &a,
            &[("--checkpoint", &run), ("--data", &data), ("--out", &png)],
        );
        assert!(!o.status.success(), "{flags:?}");
        assert!(stderr(&o).contains(want), "{flags:?}: {}", stderr(&o));
    }
    let o = mica(
        &["analyze", "--split", "nope"],
        &[("--checkpoint", &run), ("--data", &data)],
    );
    assert!(stderr(&o).contains("no split `nope`"), "{}", stderr(&o));
}
