//! The `.csd` (HDF5) reader on the CMU-MultimodalSDK fixtures: both writers' layouts
//! (chunked + gzip, contiguous), metadata, word strings, `-inf` counting, and every
//! truncation of every fixture being an error (never a panic).

use std::path::{Path, PathBuf};

use mica::data::csd::{ComputationalSequence, CsdReader, Features};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/csd")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

const NAMES: [&str; 5] = [
    "words",
    "glove_vectors",
    "covarep",
    "facet",
    "opinion_labels",
];

fn files() -> Vec<String> {
    NAMES
        .iter()
        .flat_map(|n| {
            [
                format!("mosi_tiny_{n}.csd"),
                format!("mosi_tiny_{n}_contiguous.csd"),
            ]
        })
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn every_fixture_matches_expected_shapes_sums_and_intervals() {
    let exp = expected();
    for file in files() {
        let e = &exp["files"][&file];
        let cs = ComputationalSequence::read(&dir().join(&file)).unwrap();
        assert_eq!(cs.root, e["root_name_group"].as_str().unwrap(), "{file}");
        let ids: Vec<&str> = cs.videos.keys().map(String::as_str).collect();
        let want: Vec<&str> = e["video_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(ids, want, "{file}");
        let mut non_finite = 0;
        for (id, v) in &cs.videos {
            let ev = &e["videos"][id];
            let shape = f64s(&ev["features_shape"]);
            assert_eq!(
                (v.n as f64, v.d as f64),
                (shape[0], shape[1]),
                "{file} {id}"
            );
            assert_eq!(
                &v.intervals[..2],
                &f64s(&ev["intervals_first"])[..],
                "{file} {id}"
            );
            assert_eq!(
                &v.intervals[v.intervals.len() - 2..],
                &f64s(&ev["intervals_last"])[..]
            );
            let isum: f64 = v.intervals.iter().sum();
            assert!(
                (isum - ev["intervals_sum"].as_f64().unwrap()).abs() < 1e-9,
                "{file} {id}"
            );
            match &v.features {
                Features::Strings(tokens) => {
                    let want: Vec<&str> = ev["tokens"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap())
                        .collect();
                    assert_eq!(tokens, &want, "{file} {id}");
                }
                f => {
                    let dtype = ev["features_dtype"].as_str().unwrap();
                    assert_eq!(
                        matches!(f, Features::F32(_)),
                        dtype == "<f4",
                        "{file} {id} {dtype}"
                    );
                    // Non-finite values were zeroed: the plain sum is the sum of finite ones.
                    let sum: f64 = (0..v.n * v.d).map(|i| f.get(i).unwrap()).sum();
                    let want = ev["features_sum_finite_f64"].as_f64().unwrap();
                    assert!(
                        (sum - want).abs() < 1e-9 * want.abs().max(1.0),
                        "{file} {id}: {sum} vs {want}"
                    );
                    non_finite += ev["features_nonfinite_count"].as_u64().unwrap();
                }
            }
        }
        assert_eq!(cs.non_finite, non_finite, "{file}");
    }
}

#[test]
fn covarep_minus_inf_values_are_counted_and_zeroed() {
    for file in ["mosi_tiny_covarep.csd", "mosi_tiny_covarep_contiguous.csd"] {
        let r = CsdReader::open(&dir().join(file)).unwrap();
        let raw = r.read_video("vidA").unwrap();
        let Features::F32(v) = &raw.features else {
            panic!("COVAREP is float32")
        };
        // MCEP_0 (column 11) of rows 96 and 97 is -inf as stored.
        assert_eq!(v[96 * 74 + 11], f32::NEG_INFINITY);
        assert_eq!(v[97 * 74 + 11], f32::NEG_INFINITY);
        assert_eq!(raw.features.non_finite(), 2);
        let cs = ComputationalSequence::read(&dir().join(file)).unwrap();
        assert_eq!(cs.non_finite, 4, "{file}");
        assert_eq!(cs.videos["vidA"].features.get(96 * 74 + 11), Some(0.0));
    }
}

#[test]
fn both_writers_hold_the_same_arrays() {
    for n in NAMES {
        let a = ComputationalSequence::read(&dir().join(format!("mosi_tiny_{n}.csd"))).unwrap();
        let b = ComputationalSequence::read(&dir().join(format!("mosi_tiny_{n}_contiguous.csd")))
            .unwrap();
        assert_eq!(a.videos, b.videos, "{n}");
        assert_eq!(a.root, b.root);
    }
}

#[test]
fn metadata_strings_as_stored() {
    let exp = expected();
    for file in files() {
        let cs = ComputationalSequence::read(&dir().join(&file)).unwrap();
        let want = exp["files"][&file]["metadata_raw"].as_object().unwrap();
        assert_eq!(cs.metadata.len(), want.len(), "{file}");
        for (k, v) in want {
            assert_eq!(cs.metadata[k], v["stored"].as_str().unwrap(), "{file} {k}");
        }
    }
}

#[test]
fn every_prefix_of_every_fixture_is_an_error() {
    let deployed = ["glove_vectors", "covarep", "facet", "opinion_labels"]
        .map(|n| format!("aligned_deployed/mosi_tiny_aligned_{n}.csd"));
    for file in files().into_iter().chain(deployed) {
        let path = dir().join(&file);
        let bytes = std::fs::read(&path).unwrap();
        assert!(ComputationalSequence::from_bytes(&path, &bytes).is_ok());
        let step = (bytes.len() / 400).max(1);
        let cuts = (0..2048)
            .chain((2048..bytes.len()).step_by(step))
            .chain([bytes.len() - 1]);
        for cut in cuts.filter(|&c| c < bytes.len()) {
            let r = ComputationalSequence::from_bytes(&path, &bytes[..cut]);
            let e = r.expect_err(&format!("{file} cut at {cut} parsed"));
            assert!(e.to_string().contains(&file), "{e}");
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Deterministic byte flips over the metadata-heavy start of each file.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for file in files() {
        let bytes = std::fs::read(dir().join(&file)).unwrap();
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % b.len().min(8192);
                b[i] ^= (state >> 32) as u8 | 1;
            }
            let _ = ComputationalSequence::from_bytes(Path::new(&file), &b);
        }
    }
}

#[test]
fn non_hdf5_input_is_named() {
    let e = ComputationalSequence::from_bytes(Path::new("x.csd"), b"<html>not found</html>")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "x.csd: not a readable .csd file: HDF5 structure at byte 0: not an HDF5 file (no signature at byte 0, 512, 1024, ...)"
    );
}
