//! `mica doctor` through the binary: what a file is, split sizes and dims against the
//! published datasets, non-finite values, labels, lengths, HTML pages saved as data,
//! archives, truncation; JSON and text; exit status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mica::data::{pickle_write, Dataset, Labels, Modality, Split};
use serde_json::Value;

fn variant(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pickles/variants")
        .join(name)
}

fn doctor(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mica"))
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (o.status.success(), text(&o.stdout), text(&o.stderr))
}

fn doctor_json(path: &Path) -> (bool, Value) {
    let (ok, out, err) = doctor(&["--json", path.to_str().unwrap()]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (ok, v)
}

/// A dataset of T = 1 (one real frame per sample) with the given split sizes and dims;
/// sentiment labels in [-3, 3] or IEMOCAP emotions.
fn dataset(sizes: [usize; 3], dims: [usize; 3], emotion: bool) -> Dataset {
    let mut splits = BTreeMap::new();
    for (name, n) in ["train", "valid", "test"].into_iter().zip(sizes) {
        let m = |d: usize| Modality::from_left_padded(vec![1.0; n * d], n, 1, d);
        let labels = if emotion {
            Labels::Emotion((0..n * 4).map(|i| u8::from(i % 4 == 1)).collect())
        } else {
            Labels::Sentiment((0..n).map(|i| (i % 7) as f32 - 3.0).collect())
        };
        let split = Split {
            text: m(dims[0]),
            audio: m(dims[1]),
            vision: m(dims[2]),
            labels,
            ids: Some((0..n).map(|i| format!("v_{i}")).collect()),
            non_finite: [0; 3],
            intervals: None,
        };
        splits.insert(name.to_string(), split);
    }
    Dataset {
        format: "test".into(),
        splits,
        provenance: "test".into(),
    }
}

fn write(dir: &Path, name: &str, ds: &Dataset) -> PathBuf {
    let path = dir.join(name);
    pickle_write::write_mult_pickle(ds, &path).unwrap();
    path
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn published_mosi_split_and_features_are_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "mosi.pkl",
        &dataset([1284, 229, 686], [300, 5, 20], false),
    );
    let (ok, v) = doctor_json(&path);
    assert!(ok, "{v}");
    let f = &v["files"][0];
    assert_eq!(f["format"], "pickle");
    assert_eq!(f["layout"], "mult");
    assert_eq!(f["protocol"], 4);
    assert_eq!(
        f["dataset"],
        "CMU-MOSI (split sizes 1284/229/686 match the standard split)"
    );
    let sha = f["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(
        f["bytes"].as_u64().unwrap(),
        std::fs::metadata(&path).unwrap().len()
    );
    assert_eq!(v["errors"], 0);
    assert_eq!(v["warnings"], 0);
    assert!(strings(&f["notes"]).contains(
        &"features: MulT's release (GloVe 300, feature-selected COVAREP 5 / FACET 20)".into()
    ));
    let test = &f["splits"]["test"];
    assert_eq!(test["samples"], 686);
    assert_eq!(test["ids"], true);
    assert_eq!(test["labels"]["min"], -3.0);
    assert_eq!(test["labels"]["max"], 3.0);
    let audio = &test["modalities"]["audio"];
    assert_eq!(
        (audio["t"].as_u64(), audio["d"].as_u64()),
        (Some(1), Some(5))
    );
    assert_eq!(audio["length_mean"], 1.0);

    // The same split with 74 / 35 features: a known variant, flagged as not comparable.
    let path = write(
        dir.path(),
        "mosi74.pkl",
        &dataset([1284, 229, 686], [300, 74, 35], false),
    );
    let (ok, v) = doctor_json(&path);
    assert!(ok);
    let notes = strings(&v["files"][0]["notes"]);
    assert!(
        notes.iter().any(|n| n.contains("not comparable")),
        "{notes:?}"
    );
    // An unknown audio dim: a warning listing the known releases.
    let path = write(
        dir.path(),
        "mosi33.pkl",
        &dataset([1284, 229, 686], [300, 33, 20], false),
    );
    let (ok, v) = doctor_json(&path);
    assert!(ok, "warnings do not fail");
    let w = strings(&v["files"][0]["warnings"]);
    assert!(
        w[0].starts_with(
            "feature dims text/audio/vision 300/33/20 match none of CMU-MOSI's known releases: \
             300/5/20 = MulT's release"
        ),
        "{w:?}"
    );
}

#[test]
fn other_split_sizes_are_warned_about_and_iemocap_is_told_by_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "mosei_subset.pkl",
        &dataset([10, 3, 4], [300, 74, 35], false),
    );
    let (ok, v) = doctor_json(&path);
    assert!(ok);
    let f = &v["files"][0];
    assert_eq!(
        f["dataset"],
        "CMU-MOSI or CMU-MOSEI? (by its labels and feature dims)"
    );
    assert_eq!(
        strings(&f["warnings"]),
        [
            "split sizes 10/3/4 differ from the published ones (CMU-MOSI 1284/229/686 (the \
          standard split); CMU-MOSEI 16326/1871/4659 (the published split); CMU-MOSEI \
          16265/1869/4643 (MulT's aligned file)): a subset, another split, or samples lost?"
        ]
    );
    let path = write(
        dir.path(),
        "iemocap.pkl",
        &dataset([2717, 798, 938], [300, 74, 35], true),
    );
    let (ok, v) = doctor_json(&path);
    assert!(ok);
    let f = &v["files"][0];
    assert_eq!(
        f["dataset"],
        "IEMOCAP (split sizes 2717/798/938 match MulT's split)"
    );
    assert_eq!(f["splits"]["valid"]["labels"]["kind"], "emotion");
    assert_eq!(
        f["splits"]["valid"]["labels"]["positives"],
        serde_json::json!([0, 798, 0, 0])
    );
}

#[test]
fn html_pages_archives_truncation_and_nan_labels_are_errors() {
    let html = variant("html_page_saved_as.pkl");
    let (ok, out, err) = doctor(&[html.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains(
            "error: an HTML page saved under a data file's name (title: \"Google Drive - Virus \
             scan warning\"): the download link returned a web page"
        ),
        "{out}"
    );
    assert!(
        err.contains("1 error(s): mica cannot use this data as it is"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("mosi.pkl");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    let (ok, v) = doctor_json(&gz);
    assert!(!ok);
    assert_eq!(v["files"][0]["format"], "gzip archive");

    let good = std::fs::read(variant("ids_U_p4.pkl")).unwrap();
    let cut = dir.path().join("cut.pkl");
    std::fs::write(&cut, &good[..good.len() - 40]).unwrap();
    let (ok, v) = doctor_json(&cut);
    assert!(!ok);
    let e = strings(&v["files"][0]["errors"]);
    assert!(e[0].contains("truncated"), "{e:?}");

    let (ok, v) = doctor_json(&variant("nan_labels_p4.pkl"));
    assert!(!ok);
    let f = &v["files"][0];
    assert_eq!(
        strings(&f["errors"]),
        [
            "split 'train', key 'labels': 1 non-finite label value (NaN or ±inf): mica \
             refuses the file unless you pass --drop-nonfinite-labels",
            "split 'test', key 'labels': 2 non-finite label values (NaN or ±inf): mica \
             refuses the file unless you pass --drop-nonfinite-labels"
        ]
    );
    assert_eq!(f["splits"]["test"]["labels"]["non_finite"], 2);
    assert_eq!(f["splits"]["test"]["samples"], 3);

    // Non-finite features: warnings per split and modality, the file is usable.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickles");
    let (ok, v) = doctor_json(&fixture.join("mosi_tiny_p2_np1.pkl"));
    assert!(ok);
    let f = &v["files"][0];
    assert_eq!(f["splits"]["train"]["modalities"]["audio"]["non_finite"], 4);
    assert!(strings(&f["warnings"]).contains(
        &"split 'train', audio: 4 non-finite values (NaN / ±inf; mica replaces them by 0 on \
          load)"
            .to_string()
    ));
}

#[test]
fn directories_check_each_data_file_and_mica_datasets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(variant("ids_S_p2.pkl"), dir.path().join("a.pkl")).unwrap();
    std::fs::copy(variant("html_page_saved_as.pkl"), dir.path().join("b.pkl")).unwrap();
    std::fs::write(dir.path().join("readme.txt"), "not data").unwrap();
    let (ok, v) = doctor_json(dir.path());
    assert!(!ok);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["format"], "pickle");
    assert_eq!(files[1]["format"], "HTML page");
    assert_eq!(v["errors"], 1);

    // A mica dataset directory (written by convert) is checked as one dataset.
    let out = dir.path().join("ds");
    let o = Command::new(env!("CARGO_BIN_EXE_mica"))
        .args([
            "convert",
            variant("unknown_keys_p4.pkl").to_str().unwrap(),
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success());
    let (ok, out_text, _) = doctor(&[out.to_str().unwrap()]);
    assert!(ok, "{out_text}");
    assert!(
        out_text.contains("format:  mica dataset directory, mica layout")
            && out_text.contains("[train] 4 samples, ids no, labels sentiment in [-1.5, 1.5]"),
        "{out_text}"
    );
    // The unread keys of a pickle are listed as notes.
    let (_, v) = doctor_json(&variant("unknown_keys_p4.pkl"));
    let notes = strings(&v["files"][0]["notes"]);
    assert!(
        notes.contains(
            &"split 'train', key 'meta_complex': not read by mica (ndarray c16 [4, 2] (dtype \
              not converted by mica))"
                .to_string()
        ),
        "{notes:?}"
    );
}

fn csd(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/csd")
        .join(name)
}

fn csd_doctor(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/csd_doctor")
        .join(name)
}

fn counts(v: &Value, keys: &[&str]) -> Vec<u64> {
    keys.iter().map(|k| v[*k].as_u64().unwrap()).collect()
}

const FOLDS: [&str; 4] = ["train", "valid", "test", "absent"];

#[test]
fn csd_files_are_looked_into_in_both_layouts() {
    for (name, metadata_keys, has_dimension_names) in [
        ("mosi_tiny_covarep.csd", 14, true),
        ("mosi_tiny_covarep_contiguous.csd", 12, false),
    ] {
        let (ok, v) = doctor_json(&csd(name));
        assert!(ok, "{v}");
        let f = &v["files"][0];
        assert_eq!(
            f["format"],
            "HDF5 (CMU-MultimodalSDK computational sequence, .csd)"
        );
        let c = &f["csd"];
        assert_eq!(c["root"], "COVAREP");
        assert_eq!(c["metadata_keys"].as_array().unwrap().len(), metadata_keys);
        assert_eq!(
            strings(&c["metadata_keys"]).contains(&"dimension names".to_string()),
            has_dimension_names
        );
        assert_eq!(
            (c["videos"].as_u64(), c["distinct_videos"].as_u64()),
            (Some(4), Some(4))
        );
        assert_eq!(c["kind"], "numbers");
        assert_eq!(strings(&c["dtypes"]), ["float32"]);
        assert_eq!(c["dim"], 74);
        assert_eq!(
            counts(&c["elements"], &["min", "max", "total"]),
            [141, 203, 670]
        );
        assert_eq!(c["elements"]["mean"], 167.5);
        // The fixture's four -inf values (vidA rows 96, 97, vidB row 66, vidD row 8).
        assert_eq!(
            counts(&c["non_finite"], &["nan", "pos_inf", "neg_inf", "videos"]),
            [0, 0, 4, 3]
        );
        assert_eq!(
            counts(
                &c["intervals"],
                &[
                    "inverted",
                    "zero_length",
                    "negative_start",
                    "unsorted_videos",
                    "overlapping_videos"
                ]
            ),
            [0, 0, 0, 0, 0]
        );
        assert_eq!(
            strings(&f["warnings"]),
            [
                "4 non-finite feature value(s) in 3 video(s) (NaN 0, +inf 0, -inf 4; COVAREP's \
              -inf is usual): import-csd replaces them by 0 and counts them"
            ]
        );
        // vidA..vidD are in no standard fold: no dataset is claimed.
        assert_eq!(counts(&c["folds"]["mosi"], &FOLDS), [0, 0, 0, 93]);
        assert_eq!(counts(&c["folds"]["mosei"], &FOLDS), [0, 0, 0, 3227]);
        assert_eq!(c["folds"]["in_none"], 4);
        assert!(f["dataset"].is_null());
        let notes = strings(&f["notes"]);
        assert!(
            notes.contains(
                &"none of the 4 videos is in the standard CMU-MOSI or CMU-MOSEI folds: give \
                  import-csd your own folds (--folds FILE or --train/--valid/--test)"
                    .to_string()
            ) && notes.contains(
                &"metadata 'dataset name': \"CMU-MOSI (tiny synthetic sample)\"".to_string()
            ),
            "{notes:?}"
        );
        assert!(f
            .get("splits")
            .is_some_and(|s| s.as_object().unwrap().is_empty()));
    }

    // Words: fixed-length byte strings, one per element, widths per video.
    for name in ["mosi_tiny_words.csd", "mosi_tiny_words_contiguous.csd"] {
        let (ok, out, _) = doctor(&[csd(name).to_str().unwrap()]);
        assert!(ok, "{out}");
        assert!(
            out.contains("csd:     root 'words', 4 videos, features strings |S13, |S6, |S8, |S9 (44 distinct)")
                && out.contains("elements per video: min 14 mean 17.25 max 20 (69 in all)")
                && out.contains("folds:   CMU-MOSI train 0 / valid 0 / test 0; CMU-MOSEI train 0 / valid 0 / test 0; in none 4")
                && out.contains("0 error(s), 0 warning(s)"),
            "{out}"
        );
    }
    let (ok, v) = doctor_json(&csd("mosi_tiny_glove_vectors_contiguous.csd"));
    assert!(ok);
    let c = &v["files"][0]["csd"];
    assert_eq!(
        (c["dim"].as_u64(), strings(&c["dtypes"])),
        (Some(300), vec!["float64".into()])
    );

    // Labels: rows out of time order, overlapping, one starting before 0 s (as in MOSEI's
    // label files): reported, not failed.
    let (ok, v) = doctor_json(&csd("mosi_tiny_opinion_labels.csd"));
    assert!(ok, "{v}");
    let f = &v["files"][0];
    assert_eq!(f["csd"]["root"], "Opinion Segment Labels");
    assert_eq!(
        counts(
            &f["csd"]["intervals"],
            &[
                "inverted",
                "zero_length",
                "negative_start",
                "unsorted_videos",
                "overlapping_videos"
            ]
        ),
        [0, 0, 1, 1, 1]
    );
    assert_eq!(v["warnings"], 0);
    assert!(strings(&f["notes"])
        .contains(&"1 element(s) start before 0 s (seen in the SDK's label files)".to_string()));
}

#[test]
fn csd_fold_membership_names_the_dataset_and_bad_files_are_errors() {
    // Two CMU-MOSI train videos, one CMU-MOSI test, one CMU-MOSEI valid, one in no fold
    // (tests/fixtures/csd_doctor/make.py).
    let (ok, v) = doctor_json(&csd_doctor("fold_members.csd"));
    assert!(ok, "warnings only: {v}");
    let f = &v["files"][0];
    let c = &f["csd"];
    assert_eq!(counts(&c["folds"]["mosi"], &FOLDS), [2, 0, 1, 90]);
    assert_eq!(counts(&c["folds"]["mosei"], &FOLDS), [0, 1, 0, 3226]);
    assert_eq!(c["folds"]["in_none"], 1);
    assert_eq!(
        f["dataset"],
        "CMU-MOSI (3 of the file's 5 videos are in its standard folds: train 2 / valid 0 / test 1)"
    );
    assert_eq!(
        counts(&c["non_finite"], &["nan", "pos_inf", "neg_inf", "videos"]),
        [1, 1, 0, 1]
    );
    assert_eq!(
        strings(&f["warnings"])[1..],
        [
            "1 element(s) end before they start (start > end), the first in video \
             'tmZoasNr4rU', row 1",
            "videos of two datasets: 3 in CMU-MOSI's standard folds, 1 in CMU-MOSEI's"
        ]
    );

    let (ok, v) = doctor_json(&csd_doctor("dims_differ.csd"));
    assert!(!ok);
    assert_eq!(
        strings(&v["files"][0]["errors"]),
        [
            "the videos have different feature dims: 2 (1 video(s), first 'vidA'), 3 (1 video(s), \
          first 'vidB')"
        ]
    );

    // Truncated copies: an error naming the file, exit non-zero, never a panic.
    let good = std::fs::read(csd("mosi_tiny_covarep.csd")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.csd");
    for len in [8, 600, good.len() / 2, good.len() - 1] {
        std::fs::write(&cut, &good[..len]).unwrap();
        let (ok, out, err) = doctor(&["--json", cut.to_str().unwrap()]);
        assert!(!ok && !err.contains("panicked"), "{len}: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let e = strings(&v["files"][0]["errors"]);
        assert_eq!(e.len(), 1, "{len}: {e:?}");
        assert!(
            e[0].starts_with(&format!("{}: ", cut.display())),
            "{len}: {e:?}"
        );
        assert!(err.contains("cut.csd: 1 error(s)"), "{err}");
    }
}

#[test]
fn a_directory_of_csd_files_reports_videos_missing_from_some() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        (csd("mosi_tiny_covarep.csd"), "covarep.csd"),
        (csd("mosi_tiny_words_contiguous.csd"), "words.csd"),
        (csd_doctor("three_videos.csd"), "three.csd"),
    ] {
        std::fs::copy(from, dir.path().join(to)).unwrap();
    }
    let three = dir.path().join("three.csd").display().to_string();
    let (ok, v) = doctor_json(dir.path());
    assert!(ok, "warnings only: {v}");
    let cov = &v["csd_coverage"];
    assert_eq!(counts(cov, &["files", "videos", "in_all"]), [3, 4, 3]);
    assert_eq!(
        cov["missing"],
        serde_json::json!({ three.clone(): ["vidD"] })
    );
    let files = v["files"].as_array().unwrap();
    let t = files.iter().find(|f| f["path"] == three.as_str()).unwrap();
    assert_eq!(
        strings(&t["warnings"]),
        [
            "1 video(s) of the other .csd files are missing here: vidD (import-csd drops videos \
          missing from any modality, as the SDK's unify)"
        ]
    );
    let (_, out, _) = doctor(&[dir.path().to_str().unwrap()]);
    assert!(
        out.contains(".csd videos: 4 over 3 files, 3 in every file, 1 file(s) lacking some"),
        "{out}"
    );

    // A truncated file is an error of its own and left out of the comparison.
    let good = std::fs::read(csd("mosi_tiny_facet.csd")).unwrap();
    std::fs::write(dir.path().join("facet.csd"), &good[..good.len() / 3]).unwrap();
    let (ok, v) = doctor_json(dir.path());
    assert!(!ok);
    assert_eq!(v["errors"], 1);
    assert_eq!(v["csd_coverage"]["files"], 3);

    // A single file has no comparison.
    let (_, v) = doctor_json(&csd("mosi_tiny_covarep.csd"));
    assert!(v.get("csd_coverage").is_none());
}
