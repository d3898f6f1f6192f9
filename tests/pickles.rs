//! Dataset readers against the reference fixtures (`tests/fixtures/pickles/expected.json`),
//! malicious and corrupted pickles, mica's own format, and the `inspect` / `convert` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use mica::data::mica_format;
use mica::data::pickle::{self, ArrayData, ParseOptions, PickleErrorKind};
use mica::data::{self, DataError, Dataset, Intervals, Labels};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickles")
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Fixtures that must load, with their expectations.
fn loadable() -> Vec<(String, Value)> {
    expected()
        .into_iter()
        .filter(|(_, v)| v["format"] != "refuse")
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

fn numeric_entries(split: &Value) -> Vec<(String, Value)> {
    split
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.get("sum_f32_clean").is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn as_f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn as_usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Compares an inspection (from a pickle or from `inspect --json`) with expected.json.
fn check_inspection(file: &str, exp: &Value, got: &Value, only: Option<&[&str]>) {
    assert_eq!(got["format"], exp["format"], "{file}: format");
    let splits = exp["splits"].as_object().unwrap();
    assert_eq!(
        got["splits"].as_object().unwrap().len(),
        splits.len(),
        "{file}"
    );
    for (split, keys) in splits {
        let entries = numeric_entries(keys);
        if only.is_none() {
            let got_keys = got["splits"][split].as_object().unwrap().len();
            assert_eq!(got_keys, entries.len(), "{file}/{split}: numeric keys");
        }
        for (key, e) in entries {
            if only.is_some_and(|o| !o.contains(&key.as_str())) {
                continue;
            }
            let g = &got["splits"][split][&key];
            let at = format!("{file}/{split}/{key}");
            if only.is_none() {
                assert_eq!(g["dtype"], e["dtype"], "{at}: dtype");
                assert_eq!(g["shape"], e["shape"], "{at}: shape");
            }
            assert_eq!(
                g["non_finite_after_f32_cast"], e["non_finite_after_f32_cast"],
                "{at}: non-finite"
            );
            let (gs, es) = (
                g["sum_f32_clean"].as_f64().unwrap(),
                e["sum_f32_clean"].as_f64().unwrap(),
            );
            assert!(close(gs, es), "{at}: sum {gs} vs {es}");
        }
    }
}

#[test]
fn every_fixture_inspects_as_expected() {
    for (file, exp) in loadable() {
        let inspection = data::inspect_any(&fixture_dir().join(&file)).unwrap();
        let got = serde_json::to_value(&inspection).unwrap();
        check_inspection(&file, &exp, &got, None);
    }
}

#[test]
fn fixture_first_values_match_at_pickle_level() {
    for (file, exp) in loadable() {
        let bytes = std::fs::read(fixture_dir().join(&file)).unwrap();
        let p = pickle::parse_bytes(&bytes, &ParseOptions::default()).unwrap();
        for (split, keys) in exp["splits"].as_object().unwrap() {
            let sd = p.dict_get(p.root(), split).unwrap();
            for (key, e) in numeric_entries(keys) {
                let Some(first) = e.get("first_values") else {
                    continue;
                };
                let arr = p.as_array(p.dict_get(sd, &key).unwrap()).unwrap();
                let ArrayData::Numeric { values, .. } = &arr.data else {
                    panic!("{file}/{split}/{key}: not numeric");
                };
                let want = as_f32s(first);
                assert_eq!(&values[..want.len()], &want[..], "{file}/{split}/{key}");
            }
        }
    }
}

#[test]
fn datasets_load_with_expected_shapes_labels_ids_and_counts() {
    for (file, exp) in loadable() {
        let ds = data::load_any(&fixture_dir().join(&file)).unwrap();
        assert_eq!(ds.format, exp["format"].as_str().unwrap(), "{file}");
        assert_eq!(ds.splits.len(), 3, "{file}");
        for (name, keys) in exp["splits"].as_object().unwrap() {
            let split = &ds.splits[name];
            let at = format!("{file}/{name}");
            for (i, (key, m)) in ["text", "audio", "vision"]
                .iter()
                .zip(split.modalities())
                .enumerate()
            {
                let shape = as_usizes(&keys[*key]["shape"]);
                assert_eq!(vec![m.n, m.t, m.d], shape, "{at}/{key}: shape");
                assert_eq!(m.data.len(), m.n * m.t * m.d);
                assert_eq!(m.lengths.len(), m.n);
                let nf = keys[*key]["non_finite_after_f32_cast"].as_u64().unwrap();
                assert_eq!(split.non_finite[i], nf, "{at}/{key}: non-finite");
                assert!(m.data.iter().all(|v| v.is_finite()), "{at}/{key}");
                // Left padding: every sample's padding is all zero, its last frame is real
                // unless the sample is empty.
                for s in 0..m.n {
                    let sample = m.sample(s);
                    let pad = (m.t - m.lengths[s]) * m.d;
                    assert!(sample[..pad].iter().all(|&v| v == 0.0), "{at}/{key} #{s}");
                }
            }
            match (&split.labels, exp["format"].as_str().unwrap()) {
                (Labels::Sentiment(v), "mult") => {
                    let first = as_f32s(&keys["labels"]["first_values"]);
                    assert_eq!(&v[..first.len()], &first[..], "{at}: labels");
                }
                (Labels::Emotion(v), "mult") => {
                    assert_eq!(v.len(), split.len() * 4);
                    assert!(v.iter().all(|&x| x <= 1));
                    // One-hot pairs [0,1] → 1: the label sum counts the 4 pairs per sample.
                    let n = keys["labels"]["shape"][0].as_u64().unwrap() as usize;
                    assert_eq!(v.len(), n * 4);
                }
                (Labels::Sentiment(v), "mmsa") => {
                    let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
                    let want = keys["regression_labels"]["sum_f32_clean"].as_f64().unwrap();
                    assert!(close(sum, want), "{at}: regression labels");
                }
                other => panic!("{at}: unexpected labels {other:?}"),
            }
            let ids = split.ids.as_ref();
            match &keys.get("id") {
                Some(id) if id.get("first_row").is_some() => {
                    assert_eq!(
                        ids.unwrap()[0],
                        id["first_row"][0].as_str().unwrap(),
                        "{at}"
                    );
                    assert_eq!(ids.unwrap().len(), split.len());
                }
                Some(id) => assert_eq!(ids.unwrap()[0], id["first"].as_str().unwrap(), "{at}"),
                None => assert!(ids.is_none(), "{at}: no ids expected"),
            }
        }
    }
}

#[test]
fn mult_lengths_count_frames_after_leading_zero_frames() {
    let ds = data::load_any(&fixture_dir().join("mosi_tiny_p2_np1.pkl")).unwrap();
    let v = &ds.splits["train"].vision;
    // expected.json: train vision starts with zero frames (first values 0.0).
    assert!(v.lengths[0] < v.t, "first sample is padded");
    for s in 0..v.n {
        let sample = v.sample(s);
        let lead = (0..v.t)
            .take_while(|&f| sample[f * v.d..(f + 1) * v.d].iter().all(|&x| x == 0.0))
            .count();
        assert_eq!(v.lengths[s], v.t - lead);
    }
}

#[test]
fn iemocap_one_hot_labels_are_argmaxed() {
    let path = fixture_dir().join("iemocap_tiny_p5_np2.pkl");
    let bytes = std::fs::read(&path).unwrap();
    let p = pickle::parse_bytes(&bytes, &ParseOptions::default()).unwrap();
    let ds = data::load_any(&path).unwrap();
    for split in ["train", "valid", "test"] {
        let sd = p.dict_get(p.root(), split).unwrap();
        let raw = p.as_array(p.dict_get(sd, "labels").unwrap()).unwrap();
        assert_eq!(raw.shape[1..], [4, 2]);
        let ArrayData::Numeric { values, .. } = &raw.data else {
            panic!()
        };
        let want: Vec<u8> = values.chunks(2).map(|c| u8::from(c[1] > c[0])).collect();
        assert_eq!(ds.splits[split].labels, Labels::Emotion(want));
    }
}

#[test]
fn mmsa_end_padding_is_moved_to_the_left_using_the_length_fields() {
    let path = fixture_dir().join("mmsa_tiny_unaligned.pkl");
    let exp = &expected()["mmsa_tiny_unaligned.pkl"];
    let bytes = std::fs::read(&path).unwrap();
    let p = pickle::parse_bytes(&bytes, &ParseOptions::default()).unwrap();
    let ds = data::load_any(&path).unwrap();
    for (split, keys) in exp["splits"].as_object().unwrap() {
        let sd = p.dict_get(p.root(), split).unwrap();
        let s = &ds.splits[split];
        for (key, m) in [("audio", &s.audio), ("vision", &s.vision)] {
            let lengths = as_usizes(&keys[format!("{key}_lengths")]);
            assert_eq!(m.lengths, lengths, "{split}/{key}");
            let raw = p.as_array(p.dict_get(sd, key).unwrap()).unwrap();
            let ArrayData::Numeric { values, .. } = &raw.data else {
                panic!()
            };
            let frame = m.t * m.d;
            for (i, &len) in lengths.iter().enumerate() {
                let got = &m.data[i * frame..(i + 1) * frame];
                let src = &values[i * frame..(i + 1) * frame];
                let pad = (m.t - len) * m.d;
                assert!(got[..pad].iter().all(|&v| v == 0.0), "{split}/{key} #{i}");
                assert_eq!(&got[pad..], &src[..len * m.d], "{split}/{key} #{i}");
                assert_ne!(len, 0);
                assert!(
                    got[frame - m.d..].iter().any(|&v| v != 0.0),
                    "last frame real"
                );
            }
        }
        for key in ["raw_text", "annotations", "id"] {
            let list = data::pickle_dataset::string_list(&p, p.dict_get(sd, key).unwrap());
            let list = list.unwrap();
            assert_eq!(list.len(), keys[key]["len"].as_u64().unwrap() as usize);
            assert_eq!(
                list[0],
                keys[key]["first"].as_str().unwrap(),
                "{split}/{key}"
            );
        }
        // Text lengths come from text_bert's attention mask (all ones in the fixture).
        assert!(s.text.lengths.iter().all(|&l| l == s.text.t));
    }
}

#[test]
fn lazy_and_eager_parsing_give_identical_arrays() {
    let eager = ParseOptions {
        lazy_threshold: u64::MAX,
        lazy_str_threshold: u64::MAX,
        chunk_bytes: 1 << 20,
        ..ParseOptions::default()
    };
    // Every byte payload and every long string is left in the file and read back in
    // 7-byte chunks, so chunk boundaries split elements and UTF-8 characters.
    let lazy = ParseOptions {
        lazy_threshold: 0,
        lazy_str_threshold: 200,
        chunk_bytes: 7,
        ..ParseOptions::default()
    };
    for (file, _) in loadable() {
        let bytes = std::fs::read(fixture_dir().join(&file)).unwrap();
        let a = pickle::parse_bytes(&bytes, &eager).unwrap();
        let b = pickle::parse_bytes(&bytes, &lazy).unwrap();
        let arrays = |p: &pickle::Pickle| -> Vec<pickle::Array> {
            (0..)
                .map_while(|i| p.get(i))
                .filter_map(|o| match o {
                    pickle::Object::Array(a) => Some((**a).clone()),
                    _ => None,
                })
                .collect()
        };
        let (aa, ba) = (arrays(&a), arrays(&b));
        assert!(!aa.is_empty());
        assert_eq!(aa, ba, "{file}");
    }
}

#[test]
fn every_truncated_prefix_of_every_fixture_is_an_error() {
    let opts = ParseOptions::default();
    let lazy = ParseOptions {
        lazy_threshold: 0,
        lazy_str_threshold: 200,
        chunk_bytes: 5,
        ..ParseOptions::default()
    };
    for (file, _) in expected() {
        let bytes = std::fs::read(fixture_dir().join(&file)).unwrap();
        for cut in 0..bytes.len() {
            let o = if cut % 2 == 0 { &opts } else { &lazy };
            match pickle::parse_bytes(&bytes[..cut], o) {
                Ok(_) => panic!("{file}: prefix of {cut} bytes parsed"),
                Err(e) => assert!(e.offset <= cut as u64, "{file}: {e}"),
            }
        }
    }
}

#[test]
fn truncated_file_on_disk_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture_dir().join("mosei_tiny_p4_np2.pkl")).unwrap();
    let path = dir.path().join("cut.pkl");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = data::load_any(&path).unwrap_err().to_string();
    assert!(
        msg.contains("cut.pkl") && msg.contains("byte ") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn fuzz_regressions_parse_consistently_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let eager = ParseOptions {
        lazy_threshold: u64::MAX,
        lazy_str_threshold: u64::MAX,
        chunk_bytes: 64,
        ..ParseOptions::default()
    };
    let lazy = ParseOptions {
        lazy_threshold: 0,
        lazy_str_threshold: 300,
        chunk_bytes: 3,
        ..ParseOptions::default()
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let a = pickle::parse_bytes(&bytes, &eager);
        let b = pickle::parse_bytes(&bytes, &lazy);
        if let Ok(a) = a {
            let b = b.expect("parses eagerly but not lazily");
            assert_eq!(a.as_array(a.root()), b.as_array(b.root()));
        }
        seen += 1;
    }
    assert!(seen > 0);
}

// ---------------------------------------------------------------- hand-made pickles

/// A tiny pickle writer for hand-made test programs.
struct Pk(Vec<u8>);

impl Pk {
    fn proto(v: u8) -> Self {
        Pk(vec![0x80, v])
    }
    fn op(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn s(self, t: &str) -> Self {
        let len = (t.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(t.as_bytes())
    }
    fn global(self, m: &str, n: &str) -> Self {
        self.op(b"c")
            .op(m.as_bytes())
            .op(b"\n")
            .op(n.as_bytes())
            .op(b"\n")
    }
    fn int(self, v: i32) -> Self {
        self.op(b"J").op(&v.to_le_bytes())
    }
    fn bytes(self, b: &[u8]) -> Self {
        let len = (b.len() as u32).to_le_bytes();
        self.op(b"B").op(&len).op(b)
    }
    fn dtype(self, spec: &str, order: &str) -> Self {
        self.global("numpy", "dtype")
            .s(spec)
            .op(b"\x89\x88\x87R(")
            .int(3)
            .s(order)
            .op(b"NNN")
            .int(-1)
            .int(-1)
            .int(0)
            .op(b"tb")
    }
    /// `_reconstruct(ndarray, (0,), b'b')` + BUILD((1, shape, dtype, fortran, data)).
    fn array(self, spec: &str, order: &str, shape: &[i32], fortran: bool, data: &[u8]) -> Self {
        let mut p = self
            .global("numpy.core.multiarray", "_reconstruct")
            .global("numpy", "ndarray")
            .int(0)
            .op(b"\x85")
            .bytes(b"b")
            .op(b"\x87R(")
            .int(1)
            .op(b"(");
        for &d in shape {
            p = p.int(d);
        }
        p.op(b"t")
            .dtype(spec, order)
            .op(if fortran { b"\x88" } else { b"\x89" })
            .bytes(data)
            .op(b"tb")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

fn parse(bytes: &[u8]) -> Result<pickle::Pickle, pickle::PickleError> {
    pickle::parse_bytes(bytes, &ParseOptions::default())
}

/// Parses `bytes` eagerly and with every payload (and string of 12+ bytes) left lazy
/// (3-byte chunks); both must give
/// the same root array, whose shape, values and non-finite count are returned.
fn root_values(bytes: &[u8]) -> (Vec<usize>, Vec<f32>, u64) {
    let lazy = ParseOptions {
        lazy_threshold: 0,
        lazy_str_threshold: 12,
        chunk_bytes: 3,
        ..ParseOptions::default()
    };
    let a = parse(bytes).unwrap();
    let b = pickle::parse_bytes(bytes, &lazy).unwrap();
    let a = a.as_array(a.root()).unwrap().clone();
    assert_eq!(Some(&a), b.as_array(b.root()));
    match a.data {
        ArrayData::Numeric { values, non_finite } => (a.shape, values, non_finite),
        other => panic!("not a numeric array: {other:?}"),
    }
}

fn forbidden(bytes: &[u8]) -> (String, String, u64) {
    let e = parse(bytes).unwrap_err();
    match e.kind {
        PickleErrorKind::ForbiddenGlobal { module, name } => (module, name, e.offset),
        other => panic!("expected a forbidden global, got {other:?}"),
    }
}

#[test]
fn evil_fixture_is_refused_with_the_global_named() {
    let path = fixture_dir().join("evil_os_system.pkl");
    let err = data::load_any(&path).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("evil_os_system.pkl"), "{msg}");
    assert!(
        msg.contains("posix.system") && msg.contains("byte 17"),
        "{msg}"
    );
    assert!(matches!(err, DataError::Pickle { .. }));
}

#[test]
fn stack_global_builtins_eval_is_refused() {
    // Protocol 4: STACK_GLOBAL('builtins', 'eval')("print('pwned')")
    let mut b = vec![0x80, 4, 0x95];
    b.extend_from_slice(&20u64.to_le_bytes());
    b.extend_from_slice(b"\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94");
    b.extend_from_slice(b"\x8c\x0eprint('pwned')\x85R.");
    let (module, name, offset) = forbidden(&b);
    assert_eq!((module.as_str(), name.as_str()), ("builtins", "eval"));
    let at = b.iter().position(|&x| x == 0x93).unwrap() as u64;
    assert_eq!(offset, at, "offset of the STACK_GLOBAL opcode");
}

#[test]
fn subprocess_popen_is_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let cmd = format!("touch {}", marker.display());
    let bytes = Pk::proto(2)
        .op(b"}")
        .s("train")
        .global("subprocess", "Popen")
        .s("sh")
        .s("-c")
        .s(&cmd)
        .op(b"\x87\x85R")
        .op(b"s")
        .stop();
    let path = dir.path().join("evil.pkl");
    std::fs::write(&path, &bytes).unwrap();
    let msg = data::load_any(&path).unwrap_err().to_string();
    assert!(
        msg.contains("subprocess.Popen") && msg.contains("byte 13"),
        "{msg}"
    );
    assert!(!marker.exists(), "the command ran");
    let (module, name, _) = forbidden(&bytes);
    assert_eq!(format!("{module}.{name}"), "subprocess.Popen");
}

#[test]
fn forbidden_global_nested_in_numpy_arguments_is_refused() {
    // _reconstruct(ndarray, (0,), os.system('id')): the evil call sits inside the
    // arguments of an allowed constructor.
    let prefix = Pk::proto(2)
        .global("numpy.core.multiarray", "_reconstruct")
        .global("numpy", "ndarray")
        .int(0)
        .op(b"\x85");
    let at = prefix.0.len() as u64;
    let bytes = prefix.global("os", "system").s("id").op(b"\x85R\x87R.").0;
    let (module, name, offset) = forbidden(&bytes);
    assert_eq!(format!("{module}.{name}"), "os.system");
    assert_eq!(offset, at);
    // Same, as the dtype of a protocol-5 _frombuffer call.
    let bytes = Pk::proto(5)
        .global("numpy._core.numeric", "_frombuffer")
        .op(b"(")
        .bytes(&[0; 4])
        .global("nt", "system")
        .op(b"t")
        .op(b"R.")
        .0;
    let (module, name, _) = forbidden(&bytes);
    assert_eq!(format!("{module}.{name}"), "nt.system");
}

#[test]
fn build_and_calls_on_anything_but_numpy_are_refused() {
    // BUILD on a dict (would call __setstate__ / update __dict__ in Python).
    let e = parse(&Pk::proto(2).op(b"}}b.").0).unwrap_err();
    assert!(e.to_string().contains("BUILD on a dict"), "{e}");
    // REDUCE of a non-global.
    let e = parse(&Pk::proto(2).s("x").op(b")R.").0).unwrap_err();
    assert!(e.to_string().contains("REDUCE of a str"), "{e}");
    // _codecs.encode with another codec.
    let e = parse(
        &Pk::proto(2)
            .global("_codecs", "encode")
            .s("x")
            .s("rot13")
            .op(b"\x86R.")
            .0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("latin1"), "{e}");
}

#[test]
fn unknown_and_refused_opcodes_are_named_with_their_offset() {
    let e = parse(&[0x80, 2, b'N', 0xff, b'.']).unwrap_err();
    assert!(matches!(e.kind, PickleErrorKind::UnknownOpcode(0xff)));
    assert_eq!(e.offset, 3);
    assert!(e.to_string().contains("0xff") && e.to_string().contains("byte 3"));
    for (op, name) in [
        (b'P', "PERSID"),
        (b'Q', "BINPERSID"),
        (0x82, "EXT1"),
        (b'i', "INST"),
        (b'o', "OBJ"),
        (0x97, "NEXT_BUFFER"),
    ] {
        let e = parse(&[0x80, 5, op, b'.']).unwrap_err();
        assert!(e.to_string().contains(name), "{e}");
        assert_eq!(e.offset, 2);
    }
}

#[test]
fn hostile_sizes_and_structures_fail_cleanly() {
    // BINBYTES8 declaring 2^64-1 bytes: no allocation, a truncation error.
    let mut b = vec![0x80, 4, 0x8e];
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    let e = parse(&b).unwrap_err();
    assert!(matches!(e.kind, PickleErrorKind::Truncated { .. }), "{e}");
    // An array whose shape claims 2^62 elements with 8 bytes of data.
    let big = Pk::proto(2)
        .array("f8", "<", &[1 << 20, 1 << 20, 4], false, &[0; 8])
        .stop();
    assert!(parse(&big).unwrap_err().to_string().contains("needs"));
    // Overflowing shape product.
    let ovf = Pk::proto(2)
        .array(
            "f8",
            "<",
            &[i32::MAX, i32::MAX, i32::MAX, i32::MAX],
            false,
            &[0; 8],
        )
        .stop();
    assert!(parse(&ovf).is_err());
    // Negative dimension.
    assert!(parse(&Pk::proto(2).array("f4", "<", &[-1], false, &[0; 4]).stop()).is_err());
    // Memo references that do not exist, POP on an empty stack, stray marks.
    assert!(parse(b"\x80\x02h\x05.").is_err());
    assert!(parse(b"\x80\x020.").is_err());
    assert!(parse(b"\x80\x02(.").is_err());
    // Deep nesting and many memo references are linear, not exponential.
    let mut deep = vec![0x80, 4];
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend(std::iter::repeat_n(b'a', 99_999));
    deep.push(b'.');
    assert!(parse(&deep).is_ok());
    let mut laughs = vec![0x80, 4, b']', 0x94];
    for _ in 0..50_000 {
        laughs.extend_from_slice(b"h\x00h\x00\x86a");
    }
    laughs.push(b'.');
    assert!(parse(&laughs).is_ok());
    // Integers beyond i64.
    assert!(parse(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.").is_err());
    assert!(parse(b"\x80\x02\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f.").is_ok());
    // Protocol 6 does not exist.
    assert!(parse(b"\x80\x06N.").is_err());
    // Nothing after the last opcode.
    assert!(matches!(
        parse(b"\x80\x02N").unwrap_err().kind,
        PickleErrorKind::NoStop
    ));
}

#[test]
fn numeric_dtypes_byte_orders_and_fortran_order_are_converted() {
    // f8 big-endian, Fortran order, shape (2, 3): memory holds column-major values.
    let c_order: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let f_mem = [
        c_order[0], c_order[3], c_order[1], c_order[4], c_order[2], c_order[5],
    ];
    let data: Vec<u8> = f_mem.iter().flat_map(|v| v.to_be_bytes()).collect();
    let b = Pk::proto(2).array("f8", ">", &[2, 3], true, &data).stop();
    let (shape, values, bad) = root_values(&b);
    assert_eq!((shape, bad), (vec![2, 3], 0));
    assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    // 3-D Fortran order: element (i, j, k) stored at i + 2j + 6k.
    let (s0, s1, s2) = (2usize, 3usize, 4usize);
    let mut mem = vec![0f32; s0 * s1 * s2];
    for i in 0..s0 {
        for j in 0..s1 {
            for k in 0..s2 {
                mem[i + s0 * j + s0 * s1 * k] = (100 * i + 10 * j + k) as f32;
            }
        }
    }
    let data: Vec<u8> = mem.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b = Pk::proto(2)
        .array("f4", "<", &[2, 3, 4], true, &data)
        .stop();
    let (_, values, _) = root_values(&b);
    let want: Vec<f32> = (0..s0)
        .flat_map(|i| {
            (0..s1).flat_map(move |j| (0..s2).map(move |k| (100 * i + 10 * j + k) as f32))
        })
        .collect();
    assert_eq!(values, want);

    // Non-finite values, including f64 overflow of f32, become 0 and are counted.
    let v = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        -1e300,
        2.5,
        1e-300,
    ];
    let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let (_, values, bad) = root_values(&Pk::proto(3).array("f8", "<", &[7], false, &data).stop());
    assert_eq!(bad, 5);
    assert_eq!(values, [0.0, 0.0, 0.0, 0.0, 0.0, 2.5, 0.0]);

    // Integers and booleans.
    let cases: Vec<(&str, &str, Vec<u8>, Vec<f32>)> = vec![
        ("i1", "|", vec![0xff, 0x7f], vec![-1.0, 127.0]),
        ("u1", "|", vec![0xff, 0x01], vec![255.0, 1.0]),
        ("b1", "|", vec![0, 3], vec![0.0, 1.0]),
        ("i2", ">", vec![0xff, 0xfe, 0x01, 0x00], vec![-2.0, 256.0]),
        ("u2", "<", vec![0xff, 0xff, 0x01, 0x00], vec![65535.0, 1.0]),
        (
            "i4",
            "<",
            [-7i32, 9].iter().flat_map(|x| x.to_le_bytes()).collect(),
            vec![-7.0, 9.0],
        ),
        (
            "u4",
            ">",
            [7u32, 9].iter().flat_map(|x| x.to_be_bytes()).collect(),
            vec![7.0, 9.0],
        ),
        (
            "i8",
            "<",
            [-3i64, 1 << 40]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            vec![-3.0, (1u64 << 40) as f32],
        ),
        (
            "u8",
            "<",
            [5u64, 6].iter().flat_map(|x| x.to_le_bytes()).collect(),
            vec![5.0, 6.0],
        ),
    ];
    for (spec, order, data, want) in cases {
        let (_, values, bad) =
            root_values(&Pk::proto(2).array(spec, order, &[2], false, &data).stop());
        assert_eq!((values, bad), (want, 0), "{spec}");
    }
}

#[test]
fn protocol2_latin1_strings_and_protocol5_frombuffer_are_decoded() {
    // Python 3 protocol 2 stores bytes as _codecs.encode(str, 'latin1'); bytes >= 0x80 are
    // two UTF-8 bytes in the string.
    let vals: [f32; 4] = [1.5, -2.25, f32::NAN, 3.0e-3];
    let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let text: String = raw.iter().map(|&b| char::from(b)).collect();
    let b = Pk::proto(2)
        .global("numpy.core.multiarray", "_reconstruct")
        .global("numpy", "ndarray")
        .int(0)
        .op(b"\x85")
        .global("_codecs", "encode")
        .s("b")
        .s("latin1")
        .op(b"\x86R\x87R(")
        .int(1)
        .int(4)
        .op(b"\x85")
        .dtype("f4", "<")
        .op(b"\x89")
        .global("_codecs", "encode")
        .s(&text)
        .s("latin1")
        .op(b"\x86Rtb.")
        .0;
    let (_, values, bad) = root_values(&b);
    assert_eq!(values, [1.5, -2.25, 0.0, 3.0e-3]);
    assert_eq!(bad, 1);

    // Protocol 5: _frombuffer(bytearray, dtype, shape, 'F').
    let mem: [f32; 4] = [1.0, 3.0, 2.0, 4.0];
    let mut buf = vec![0x96];
    buf.extend_from_slice(&16u64.to_le_bytes());
    buf.extend(mem.iter().flat_map(|v| v.to_le_bytes()));
    let b = Pk::proto(5)
        .global("numpy._core.numeric", "_frombuffer")
        .op(b"(")
        .op(&buf)
        .dtype("f4", "<")
        .int(2)
        .int(2)
        .op(b"\x86")
        .s("F")
        .op(b"tR.")
        .0;
    let (shape, values, _) = root_values(&b);
    assert_eq!(shape, [2, 2]);
    assert_eq!(values, [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn every_supported_opcode_builds_the_python_value() {
    use pickle::Object;
    // A protocol-0..5 mix: ['a', b'b', 'é', 'x', b'xy', 7, -3, 258, 2**40, -2**63, True,
    //  False, None, 1.5, 2.5, -7, 12, (), (7,), [7, 7], {'k': 1, 'k2': 2}, frozenset{1, 2},
    //  set{3}, 'long', b'long', bytearray, text 'Ab\u00e9']
    let mut b: Vec<u8> = vec![0x80, 4, b']', b'('];
    b.extend_from_slice(b"\x8c\x01a"); // SHORT_BINUNICODE
    b.extend_from_slice(b"C\x01b"); // SHORT_BINBYTES
    b.extend_from_slice(b"X\x02\x00\x00\x00\xc3\xa9"); // BINUNICODE 'é'
    b.extend_from_slice(b"U\x01x"); // SHORT_BINSTRING
    b.extend_from_slice(b"T\x02\x00\x00\x00xy"); // BINSTRING
    b.extend_from_slice(b"K\x07J\xfd\xff\xff\xffM\x02\x01"); // BININT1, BININT, BININT2
    b.extend_from_slice(b"\x8a\x06\x00\x00\x00\x00\x00\x01"); // LONG1 2**40
    b.extend_from_slice(b"\x8b\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80"); // LONG4
    b.extend_from_slice(b"\x88\x89N"); // True False None
    b.extend_from_slice(b"G\x3f\xf8\x00\x00\x00\x00\x00\x00F2.5\n"); // BINFLOAT, FLOAT
    b.extend_from_slice(b"I-7\nL12L\n"); // INT, LONG text forms
    b.extend_from_slice(b")K\x07\x85p9\n0g9\n"); // EMPTY_TUPLE, TUPLE1, PUT, POP, GET
    b.extend_from_slice(b"(K\x072l"); // MARK, DUP, LIST (the DUP pushes 7 twice)
    b.extend_from_slice(b"(\x8c\x01kK\x01d\x8c\x02k2K\x02s"); // DICT, SETITEM
    b.extend_from_slice(b"(K\x01K\x02\x91"); // FROZENSET
    b.extend_from_slice(b"\x8f(K\x03\x90"); // EMPTY_SET, ADDITEMS
    b.extend_from_slice(b"\x8d\x04\x00\x00\x00\x00\x00\x00\x00long"); // BINUNICODE8
    b.extend_from_slice(b"\x8e\x04\x00\x00\x00\x00\x00\x00\x00long"); // BINBYTES8
    b.extend_from_slice(b"\x96\x01\x00\x00\x00\x00\x00\x00\x00z"); // BYTEARRAY8
    b.extend_from_slice(b"VAb\\u00e9\n"); // UNICODE (raw-unicode-escape)
    b.extend_from_slice(b"(K\x09K\x09\x31"); // MARK ... POP_MARK drops both
    b.extend_from_slice(b"e."); // APPENDS, STOP
    let p = parse(&b).unwrap();
    let items = p.as_seq(p.root()).unwrap().to_vec();
    let get = |i: usize| p.get(items[i]).unwrap().clone();
    let expect = [
        Object::Str("a".into()),
        Object::Bytes(b"b".to_vec()),
        Object::Str("é".into()),
        Object::Bytes(b"x".to_vec()),
        Object::Bytes(b"xy".to_vec()),
        Object::Int(7),
        Object::Int(-3),
        Object::Int(258),
        Object::Int(1 << 40),
        Object::Int(i64::MIN),
        Object::Bool(true),
        Object::Bool(false),
        Object::None,
        Object::Float(1.5),
        Object::Float(2.5),
        Object::Int(-7),
        Object::Int(12),
        Object::Tuple(vec![]),
    ];
    for (i, e) in expect.iter().enumerate() {
        assert_eq!(&get(i), e, "item {i}");
    }
    assert_eq!(items.len(), 27, "{items:?}");
    let ints = |i: usize| -> Vec<i64> {
        match get(i) {
            Object::Tuple(v) | Object::List(v) | Object::Set(v) => {
                v.iter().map(|&x| p.as_int(x).unwrap()).collect()
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ints(18), [7], "(7,) via PUT/POP/GET");
    assert_eq!(ints(19), [7, 7], "DUP");
    assert_eq!(p.dict_keys(items[20]), ["k", "k2"]);
    assert_eq!(p.as_int(p.dict_get(items[20], "k2").unwrap()), Some(2));
    assert_eq!(ints(21), [1, 2]);
    assert_eq!(ints(22), [3]);
    assert_eq!(get(23), Object::Str("long".into()));
    assert_eq!(get(24), Object::Bytes(b"long".to_vec()));
    assert_eq!(get(25), Object::Bytes(b"z".to_vec()));
    assert_eq!(get(26), Object::Str("Abé".into()));
}

#[test]
fn duplicate_dict_keys_keep_the_last_value_as_python_does() {
    let b = Pk::proto(2)
        .op(b"}(")
        .s("a")
        .int(1)
        .s("b")
        .int(2)
        .s("a")
        .int(3)
        .op(b"u")
        .stop();
    let p = parse(&b).unwrap();
    assert_eq!(p.dict_keys(p.root()), ["a", "b"]);
    assert_eq!(p.as_int(p.dict_get(p.root(), "a").unwrap()), Some(3));
}

// ---------------------------------------------------------------- layout validation

/// A MulT-layout pickle with the given per-split arrays (f4, value 1.0) and labels.
/// (split name, text/audio/vision shapes, labels shape).
type SplitSpec<'a> = (&'a str, [[i32; 3]; 3], Vec<i32>);

fn mult_pickle(splits: &[SplitSpec]) -> Vec<u8> {
    let mut p = Pk::proto(2).op(b"}(");
    for (name, shapes, labels) in splits {
        p = p.s(name).op(b"}(");
        for (key, shape) in ["text", "audio", "vision"].iter().zip(shapes) {
            let count = shape.iter().product::<i32>() as usize;
            let data: Vec<u8> = (0..count).flat_map(|_| 1f32.to_le_bytes()).collect();
            p = p.s(key).array("f4", "<", shape, false, &data);
        }
        let count = labels.iter().product::<i32>() as usize;
        let data: Vec<u8> = (0..count).flat_map(|_| 0.5f32.to_le_bytes()).collect();
        p = p
            .s("labels")
            .array("f4", "<", labels, false, &data)
            .op(b"u");
    }
    p.op(b"u").stop()
}

fn load_bytes(bytes: &[u8]) -> Result<Dataset, DataError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.pkl");
    std::fs::write(&path, bytes).unwrap();
    data::load_any(&path)
}

#[test]
fn layout_problems_name_file_split_and_key() {
    let ok = [[2, 3, 4], [2, 5, 2], [2, 6, 1]];
    let good = mult_pickle(&[
        ("train", ok, vec![2, 1, 1]),
        ("valid", ok, vec![2, 1, 1]),
        ("test", ok, vec![2, 1, 1]),
    ]);
    let ds = load_bytes(&good).unwrap();
    assert_eq!(ds.splits["test"].audio.lengths, [5, 5]);

    let bad_n = [[2, 3, 4], [3, 5, 2], [2, 6, 1]];
    let e = load_bytes(&mult_pickle(&[
        ("train", ok, vec![2, 1, 1]),
        ("valid", bad_n, vec![2, 1, 1]),
        ("test", ok, vec![2, 1, 1]),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("data.pkl")
            && e.contains("split 'valid', key 'audio'")
            && e.contains("3 samples"),
        "{e}"
    );

    let e = load_bytes(&mult_pickle(&[
        ("train", ok, vec![2, 1, 1]),
        ("valid", ok, vec![2, 1, 1]),
        ("test", ok, vec![3, 1, 1]),
    ]))
    .unwrap_err()
    .to_string();
    assert!(e.contains("split 'test', key 'labels'"), "{e}");

    let e = load_bytes(&mult_pickle(&[
        ("train", ok, vec![2, 3, 1]),
        ("valid", ok, vec![2, 1, 1]),
        ("test", ok, vec![2, 1, 1]),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("split 'train', key 'labels'") && e.contains("(N,4,2)"),
        "{e}"
    );

    let e = load_bytes(&mult_pickle(&[
        ("train", ok, vec![2, 1, 1]),
        ("valid", ok, vec![2, 1, 1]),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("split 'test'") && e.contains("missing split"),
        "{e}"
    );

    // A top-level key besides the splits is ignored (issue 15: a key mica does not use
    // never makes the file fail).
    let ds = load_bytes(&mult_pickle(&[
        ("train", ok, vec![2, 1, 1]),
        ("valid", ok, vec![2, 1, 1]),
        ("test", ok, vec![2, 1, 1]),
        ("extra", ok, vec![2, 1, 1]),
    ]))
    .unwrap();
    assert_eq!(
        ds.splits.keys().collect::<Vec<_>>(),
        ["test", "train", "valid"]
    );

    // Wrong rank: a 2-D text array.
    let mut p = Pk::proto(2).op(b"}(");
    for name in ["train", "valid", "test"] {
        p = p
            .s(name)
            .op(b"}(")
            .s("text")
            .array("f4", "<", &[2, 3], false, &[0; 24])
            .s("labels")
            .array("f4", "<", &[2], false, &[0; 8])
            .op(b"u");
    }
    let e = load_bytes(&p.op(b"u").stop()).unwrap_err().to_string();
    assert!(
        e.contains("split 'train', key 'text'") && e.contains("rank"),
        "{e}"
    );

    // Not a dict at all.
    let e = load_bytes(&Pk::proto(2).op(b"]").stop())
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected a dict of splits"), "{e}");
}

// ---------------------------------------------------------------- mica format

fn with_intervals(mut ds: Dataset) -> Dataset {
    for split in ds.splits.values_mut() {
        let per = split.modalities().map(|m| {
            let mut v = Vec::with_capacity(m.n * m.t * 2);
            for s in 0..m.n {
                for f in 0..m.t {
                    if f < m.t - m.lengths[s] {
                        v.extend([f32::NAN, f32::NAN]);
                    } else {
                        v.extend([f as f32 * 0.1, f as f32 * 0.1 + 0.05]);
                    }
                }
            }
            v
        });
        split.intervals = Some(Intervals { per_modality: per });
    }
    ds
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn mica_format_round_trips_every_fixture_with_intervals() {
    for (file, _) in loadable() {
        let ds = with_intervals(data::load_any(&fixture_dir().join(&file)).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        mica_format::save(&ds, &out).unwrap();
        let names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with('.')),
            "temp files left: {names:?}"
        );
        let back = mica_format::load(&out).unwrap();
        assert_eq!(back.format, "mica");
        assert_eq!(back.provenance, ds.provenance);
        assert_eq!(back.splits.len(), ds.splits.len());
        for (name, a) in &ds.splits {
            let b = &back.splits[name];
            assert_eq!(a.modalities(), b.modalities(), "{file}/{name}");
            assert_eq!(
                (&a.labels, &a.ids, a.non_finite),
                (&b.labels, &b.ids, b.non_finite)
            );
            let (ia, ib) = (a.intervals.as_ref().unwrap(), b.intervals.as_ref().unwrap());
            for m in 0..3 {
                assert_eq!(bits(&ia.per_modality[m]), bits(&ib.per_modality[m]));
            }
        }
        // load_any recognises the directory too.
        let again = data::load_any(&out).unwrap();
        for (name, split) in &again.splits {
            assert_eq!(split.modalities(), back.splits[name].modalities());
        }
        // The files are standard safetensors.
        let bytes = std::fs::read(out.join("train.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let text = st.tensor("text").unwrap();
        assert_eq!(text.dtype(), safetensors::Dtype::F32);
        assert_eq!(
            text.shape(),
            [
                ds.splits["train"].text.n,
                ds.splits["train"].text.t,
                ds.splits["train"].text.d
            ]
        );
    }
}

#[test]
fn mica_format_detects_truncation_corruption_and_missing_files() {
    let ds = data::load_any(&fixture_dir().join("mosi_tiny_p4_np1.pkl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    mica_format::save(&ds, &out).unwrap();
    let train = out.join("train.safetensors");
    let good = std::fs::read(&train).unwrap();

    std::fs::write(&train, &good[..good.len() - 10]).unwrap();
    let e = mica_format::load(&out).unwrap_err().to_string();
    assert!(
        e.contains("train.safetensors") && e.contains("truncated"),
        "{e}"
    );

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    std::fs::write(&train, &flipped).unwrap();
    let err = mica_format::load(&out).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("train.safetensors"));

    std::fs::remove_file(&train).unwrap();
    let e = mica_format::load(&out).unwrap_err().to_string();
    assert!(e.contains("train.safetensors"), "{e}");

    std::fs::write(&train, &good).unwrap();
    assert!(mica_format::load(&out).is_ok());
    // Saving again over an existing directory works and stays loadable.
    mica_format::save(&ds, &out).unwrap();
    assert_eq!(mica_format::load(&out).unwrap().splits, ds.splits);

    std::fs::write(out.join("manifest.json"), b"{\"format\": 1").unwrap();
    let e = data::load_any(&out).unwrap_err().to_string();
    assert!(e.contains("manifest.json"), "{e}");
}

#[test]
fn unknown_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = data::load_any(&dir.path().join("nope.pkl"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.pkl") && e.contains("cannot open"), "{e}");
    let e = data::load_any(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a mica dataset"), "{e}");
    let p = dir.path().join("x.csd");
    std::fs::write(&p, b"\x89HDF\r\n").unwrap();
    assert!(data::load_any(&p).unwrap_err().to_string().contains("HDF5"));
    std::fs::write(&p, b"hello").unwrap();
    assert!(data::load_any(&p)
        .unwrap_err()
        .to_string()
        .contains("unknown format"));
}

// ---------------------------------------------------------------- CLI

fn mica(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mica"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_inspect_json_convert_and_inspect_again() {
    let exp = expected();
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "mosi_tiny_p2_np1.pkl",
        "mmsa_tiny_unaligned.pkl",
        "iemocap_tiny_p5_np2.pkl",
    ] {
        let src = fixture_dir().join(file);
        let out = mica(&["inspect", "--json", src.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        check_inspection(file, &exp[file], &got, None);

        let target = dir.path().join(file);
        let out = mica(&[
            "convert",
            src.to_str().unwrap(),
            "--out",
            target.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("non-finite values replaced by 0"),
            "{stderr}"
        );

        let out = mica(&["inspect", "--json", target.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["format"], "mica");
        got["format"] = exp[file]["format"].clone();
        check_inspection(file, &exp[file], &got, Some(&["text", "audio", "vision"]));

        let out = mica(&["inspect", target.to_str().unwrap()]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("split train"));
    }
}

#[test]
fn cli_failures_exit_non_zero_with_one_message() {
    let evil = fixture_dir().join("evil_os_system.pkl");
    for args in [
        vec!["inspect", evil.to_str().unwrap()],
        vec!["inspect", "--json", evil.to_str().unwrap()],
        vec![
            "convert",
            evil.to_str().unwrap(),
            "--out",
            "/nonexistent/never",
        ],
    ] {
        let out = mica(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.contains("posix.system"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    let out = mica(&["inspect", "/nonexistent/file.pkl"]);
    assert_eq!(out.status.code(), Some(1));
}
