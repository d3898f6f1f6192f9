//! `.csd` import against the CMU-MultimodalSDK's own pipeline outputs on the fixtures:
//! word-aligned (`align(words, [mean])`, `impute`, `align(labels)`, `get_tensors(8)`) and
//! unaligned (`align(labels)`, `get_tensors(10 / 60 / 80)`), plus errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mica::data::csd::CsdReader;
use mica::data::csd_import::{
    import, video_segments, AlignMode, CsdInputs, Folds, ImportOptions, Rows,
};
use mica::data::{Dataset, Labels};
use safetensors::SafeTensors;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/csd")
}

fn inputs(suffix: &str) -> CsdInputs {
    let p = |n: &str| dir().join(format!("mosi_tiny_{n}{suffix}.csd"));
    CsdInputs {
        text: p("glove_vectors"),
        audio: p("covarep"),
        vision: p("facet"),
        labels: p("opinion_labels"),
    }
}

fn folds() -> Folds {
    Folds {
        source: "fixture".into(),
        train: vec!["vidA".into(), "vidB".into()],
        valid: vec!["vidC".into()],
        test: vec!["vidD".into()],
    }
}

fn opts(align: AlignMode, lengths: [usize; 3]) -> ImportOptions {
    ImportOptions {
        align,
        lengths,
        folds: folds(),
        skip_missing: false,
    }
}

/// Tensors by name: (shape, values widened to f64).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// SDK tensors of a safetensors fixture: name -> (shape, f64 values).
fn sdk(file: &str) -> (Tensors, Value) {
    let bytes = std::fs::read(dir().join(file)).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let ids: Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["ids"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        let v: Vec<f64> = match t.dtype() {
            safetensors::Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            d => panic!("{name}: {d:?}"),
        };
        out.insert(name, (t.shape().to_vec(), v));
    }
    (out, ids)
}

const KEYS: [&str; 3] = ["glove_vectors", "COVAREP", "FACET_4.2"];
const LABEL_KEY: &str = "Opinion Segment Labels";

/// Left-pads / truncates rows in f64 as `get_tensors` does.
fn pad(r: &Rows, t: usize) -> Vec<f64> {
    let keep = r.len().min(t);
    let mut out = vec![0.0; (t - keep) * r.d];
    out.extend_from_slice(&r.feat[(r.len() - keep) * r.d..]);
    out
}

#[test]
fn word_aligned_segments_equal_the_sdk_in_f64() {
    let (sdk, ids) = sdk("pipeline_aligned.safetensors");
    for suffix in ["", "_contiguous"] {
        let inp = inputs(suffix);
        let readers =
            [&inp.text, &inp.audio, &inp.vision, &inp.labels].map(|p| CsdReader::open(p).unwrap());
        let mut got: BTreeMap<String, [Vec<f64>; 3]> = BTreeMap::new();
        let mut labels = BTreeMap::new();
        for vid in ["vidA", "vidB", "vidC", "vidD"] {
            let rows: Vec<Rows> = readers
                .iter()
                .map(|r| Rows::from_video(&r.read_video(vid).unwrap()).unwrap())
                .collect();
            let (segs, dropped, imputed) = video_segments(
                vid,
                [&rows[0], &rows[1], &rows[2]],
                &rows[3],
                AlignMode::Words,
            );
            assert!(dropped.is_empty());
            if vid == "vidC" {
                assert_eq!(imputed, [0, 0, 2], "vidC[8], vidC[9] have no FACET frames");
            }
            for s in segs {
                labels.insert(s.key.clone(), s.label[0]);
                got.insert(
                    s.key,
                    [pad(&s.rows[0], 8), pad(&s.rows[1], 8), pad(&s.rows[2], 8)],
                );
            }
        }
        let mut worst = 0.0f64;
        for fold in ["train", "valid", "test"] {
            let fold_ids: Vec<&str> = ids[fold]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            for (m, key) in KEYS.iter().enumerate() {
                let (shape, want) = &sdk[&format!("{fold}/{key}")];
                assert_eq!(shape[0], fold_ids.len());
                let per = shape[1] * shape[2];
                for (i, id) in fold_ids.iter().enumerate() {
                    let g = &got[*id][m];
                    for (a, b) in g.iter().zip(&want[i * per..(i + 1) * per]) {
                        if b.is_finite() {
                            worst = worst.max((a - b).abs());
                        } else {
                            assert_eq!(
                                a.to_bits(),
                                b.to_bits(),
                                "{fold} {key} {id}: -inf propagates"
                            );
                        }
                    }
                    assert_eq!(g.len(), per);
                }
            }
            let (_, want) = &sdk[&format!("{fold}/{LABEL_KEY}")];
            for (i, id) in fold_ids.iter().enumerate() {
                assert_eq!(labels[*id], want[i], "{id}");
            }
        }
        // The SDK's arithmetic is reproduced exactly (float32 means added in float32).
        assert_eq!(worst, 0.0, "max |mica - sdk| = {worst}");
        assert_eq!(got.len(), 10);
    }
}

/// Checks a mica split against the SDK's padded f64 tensors (f32 storage: relative 1e-6),
/// non-finite SDK values being 0 and counted.
fn check_split(ds: &Dataset, sdk: &Tensors, ids: &Value) {
    for fold in ["train", "valid", "test"] {
        let split = &ds.splits[fold];
        let want_ids: Vec<String> = ids[fold]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(split.ids.as_ref().unwrap(), &want_ids, "{fold}");
        for (m, key) in KEYS.iter().enumerate() {
            let (shape, want) = &sdk[&format!("{fold}/{key}")];
            let got = split.modalities()[m];
            assert_eq!(
                [got.n, got.t, got.d],
                [shape[0], shape[1], shape[2]],
                "{fold}/{key}"
            );
            let mut bad = 0;
            for (a, b) in got.data.iter().zip(want) {
                if b.is_finite() {
                    let tol = 1e-6 * b.abs().max(1.0);
                    assert!((f64::from(*a) - b).abs() <= tol, "{fold}/{key}: {a} vs {b}");
                } else {
                    assert_eq!(*a, 0.0);
                    bad += 1;
                }
            }
            assert_eq!(split.non_finite[m], bad, "{fold}/{key} non-finite count");
        }
        let Labels::Sentiment(y) = &split.labels else {
            panic!()
        };
        let (_, want) = &sdk[&format!("{fold}/{LABEL_KEY}")];
        assert_eq!(y.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), *want);
    }
}

#[test]
fn import_aligned_equals_the_sdk_pipeline() {
    let (sdk, ids) = sdk("pipeline_aligned.safetensors");
    let (ds, report) = import(&inputs(""), &opts(AlignMode::Words, [8, 375, 500])).unwrap();
    check_split(&ds, &sdk, &ids);
    assert_eq!(report.imputed_words, [0, 0, 2]);
    assert_eq!(report.input_non_finite, [0, 4, 0]);
    // vidA[1] has 9 words: its first word is cut in every modality.
    assert_eq!(report.truncated, [1, 1, 1]);
    let (ds2, _) = import(&inputs("_contiguous"), &opts(AlignMode::Words, [8, 1, 1])).unwrap();
    // NaN padding times: compare the printed form.
    assert_eq!(format!("{:?}", ds.splits), format!("{:?}", ds2.splits));
}

#[test]
fn import_unaligned_equals_the_sdk_pipeline_and_keeps_element_times() {
    let (sdk, ids) = sdk("pipeline_unaligned.safetensors");
    let (ds, report) = import(&inputs(""), &opts(AlignMode::Unaligned, [10, 60, 80])).unwrap();
    check_split(&ds, &sdk, &ids);
    assert!(report.dropped_segments.is_empty() && report.missing.is_empty());
    // Rows per segment before padding and first / last intervals, from expected.json.
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap())
            .unwrap();
    let segs = &exp["pipeline"]["unaligned"]["segments"]["seq"];
    for split in ds.splits.values() {
        let iv = split.intervals.as_ref().unwrap();
        for (i, id) in split.ids.as_ref().unwrap().iter().enumerate() {
            for (m, key) in KEYS.iter().enumerate() {
                let e = &segs[key][id];
                let rows = e["rows"].as_u64().unwrap() as usize;
                let md = split.modalities()[m];
                assert_eq!(md.lengths[i], rows.min(md.t), "{id} {key}");
                let s = &iv.per_modality[m][i * md.t * 2..(i + 1) * md.t * 2];
                let f32s = |v: &Value| {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    &s[s.len() - 2..],
                    &f32s(&e["intervals_last"])[..],
                    "{id} {key}"
                );
                if rows <= md.t {
                    let first = 2 * (md.t - rows);
                    assert_eq!(
                        &s[first..first + 2],
                        &f32s(&e["intervals_first"])[..],
                        "{id} {key}"
                    );
                    assert!(
                        s[..first].iter().all(|x| x.is_nan()),
                        "padding times are NaN"
                    );
                }
                // Kept times are increasing by start and every one is a real element.
                let real = &s[2 * (md.t - md.lengths[i])..];
                assert!(real.chunks(2).all(|c| c[0] < c[1]));
                assert!(real
                    .chunks(2)
                    .zip(real.chunks(2).skip(1))
                    .all(|(a, b)| a[0] <= b[0]));
            }
        }
    }
    // -inf: vidA rows 96, 97 lie in vidA[1], vidD row 8 in vidD[0]; vidB row 66 in no segment.
    assert_eq!(report.input_non_finite, [0, 4, 0]);
    assert_eq!(report.replaced[1], 3);
}

#[test]
fn missing_video_and_bad_folds_are_named_errors() {
    let inp = inputs("");
    let mut o = opts(AlignMode::Unaligned, [10, 60, 80]);
    o.folds.test.push("vidA".into());
    let e = import(&inp, &o).unwrap_err().to_string();
    assert!(
        e.ends_with("folds fixture: video 'vidA' is listed in 'train' and 'test'"),
        "{e}"
    );

    let mut o = opts(AlignMode::Unaligned, [10, 60, 80]);
    o.folds.valid = vec!["nope".into()];
    let e = import(&inp, &o).unwrap_err().to_string();
    assert!(
        e.contains("split 'valid' is empty: none of its 1 fold videos (folds fixture)"),
        "{e}"
    );

    // A "vision" file without vidC (the words file lacks nothing, so use a labels file
    // with a video the others lack: the aligned-deployed labels are keyed vidA[0] ...).
    let mut inp2 = inputs("");
    inp2.labels = dir().join("mosi_tiny_opinion_labels.csd");
    inp2.vision = write_without_video("vidC");
    let e = import(&inp2, &opts(AlignMode::Unaligned, [10, 60, 80]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("video 'vidC' (fold 'valid', labelled in")
            && e.contains("is missing from this vision file"),
        "{e}"
    );
    let mut o = opts(AlignMode::Unaligned, [10, 60, 80]);
    o.skip_missing = true;
    o.folds.valid = vec!["vidC".into(), "vidB".into()];
    o.folds.train = vec!["vidA".into()];
    let (ds, report) = import(&inp2, &o).unwrap();
    assert_eq!(
        report.missing,
        vec![("vidC".to_string(), "vision".to_string())]
    );
    assert_eq!(
        ds.splits["valid"].ids.as_ref().unwrap(),
        &["vidB[0]", "vidB[1]", "vidB[2]"]
    );

    let bad = std::env::temp_dir().join(format!("mica-folds-{}.json", std::process::id()));
    std::fs::write(&bad, "{\"train\": [\"a\"]}").unwrap();
    let e = Folds::from_file(&bad).unwrap_err().to_string();
    assert!(
        e.contains("invalid folds file") && e.contains("missing field `valid`"),
        "{e}"
    );
    std::fs::remove_file(&bad).ok();

    let mut inp3 = inputs("");
    inp3.text = dir().join("mosi_tiny_words.csd");
    let e = import(&inp3, &opts(AlignMode::Unaligned, [10, 60, 80]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("features are strings (words?)"), "{e}");
}

/// A copy of the FACET fixture whose group `vidC` is renamed `vidX` (same name length, so
/// the local heap entry is patched in place).
fn write_without_video(video: &str) -> PathBuf {
    let mut bytes = std::fs::read(dir().join("mosi_tiny_facet_contiguous.csd")).unwrap();
    let needle = format!("{video}\0");
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap();
    bytes[pos + 3] = b'X';
    let out =
        std::env::temp_dir().join(format!("mica-facet-no-{video}-{}.csd", std::process::id()));
    std::fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn streamed_import_writes_the_same_files_as_save() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("mem"), dir.path().join("stream"));
    for (align, lengths) in [
        (AlignMode::Unaligned, [10, 60, 80]),
        (AlignMode::Words, [8, 1, 1]),
    ] {
        let o = opts(align, lengths);
        let (ds, _) = import(&inputs(""), &o).unwrap();
        mica::data::mica_format::save(&ds, &a).unwrap();
        let (manifest, _) = mica::data::csd_import::import_to_dir(&inputs(""), &o, &b).unwrap();
        for f in [
            "manifest.json",
            "train.safetensors",
            "valid.safetensors",
            "test.safetensors",
        ] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{f}"
            );
        }
        assert_eq!(
            manifest,
            mica::data::mica_format::read_manifest(&b).unwrap()
        );
        // No spill or temporary file is left behind.
        let mut names: Vec<String> = std::fs::read_dir(&b)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "manifest.json",
                "test.safetensors",
                "train.safetensors",
                "valid.safetensors"
            ]
        );
        let back = mica::data::mica_format::load(&b).unwrap();
        assert_eq!(format!("{:?}", back.splits), format!("{:?}", ds.splits));
    }
}

/// The SDK's `mmdataset.deploy` of the label-aligned word-level dataset (after
/// `hard_unify`): every segment's rows, before padding, as mica computes them.
#[test]
fn word_aligned_rows_equal_the_sdk_deployed_files() {
    let inp = inputs("");
    let readers =
        [&inp.text, &inp.audio, &inp.vision, &inp.labels].map(|p| CsdReader::open(p).unwrap());
    let mut segs = BTreeMap::new();
    for vid in ["vidA", "vidB", "vidC", "vidD"] {
        let rows: Vec<Rows> = readers
            .iter()
            .map(|r| Rows::from_video(&r.read_video(vid).unwrap()).unwrap())
            .collect();
        let (s, _, _) = video_segments(
            vid,
            [&rows[0], &rows[1], &rows[2]],
            &rows[3],
            AlignMode::Words,
        );
        segs.extend(s.into_iter().map(|s| (s.key.clone(), s)));
    }
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (m, name) in ["glove_vectors", "covarep", "facet", "opinion_labels"]
        .iter()
        .enumerate()
    {
        let r =
            CsdReader::open(&dir().join(format!("aligned_deployed/mosi_tiny_aligned_{name}.csd")))
                .unwrap();
        let keys: Vec<&str> = r.video_ids().collect();
        // HDF5 name order of the deployed keys is byte-wise; all 10 segments are there.
        let mut sorted: Vec<&str> = segs.keys().map(String::as_str).collect();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "{name}");
        for key in keys {
            let got = Rows::from_video(&r.read_video(key).unwrap()).unwrap();
            let seg = &segs[key];
            let (iv, feat) = if m < 3 {
                (seg.rows[m].iv.clone(), seg.rows[m].feat.clone())
            } else {
                (
                    vec![readers[3]
                        .read_video(&key[..4])
                        .unwrap()
                        .intervals
                        .chunks(2)
                        .map(|c| [c[0], c[1]])
                        .nth(key[5..key.len() - 1].parse().unwrap())
                        .unwrap()],
                    seg.label.clone(),
                )
            };
            assert_eq!(got.iv, iv, "{name} {key}");
            assert_eq!(bits(&got.feat), bits(&feat), "{name} {key}");
        }
    }
}
