//! Real-world pickle variants (issue 15), written by Python's pickle + numpy with
//! `scripts/make_pickle_variants.py` into `tests/fixtures/pickles/variants/`: fixed-width
//! `S` / `U` ids in both byte orders, object and list ids, shared references (memo),
//! keys of dtypes mica does not convert, non-finite labels, MMSA length fields that are not
//! whole numbers or do not fit, and memory bombs.

use std::path::{Path, PathBuf};
use std::process::Command;

use mica::data::pickle::{self, ArrayData, ParseOptions, PickleErrorKind, ScalarKind};
use mica::data::{self, mica_format, pickle_write, Labels, LoadOptions};

fn variant(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pickles/variants")
        .join(name)
}

/// The ids the generator writes: `v<t|v|s><k>`.
fn expected_ids(split: &str, n: usize) -> Vec<String> {
    let letter = match split {
        "train" => 't',
        "valid" => 'v',
        _ => 's',
    };
    (0..n).map(|k| format!("v{letter}{k}")).collect()
}

const SIZES: [(&str, usize); 3] = [("train", 4), ("valid", 2), ("test", 3)];

fn err_of(path: &Path) -> String {
    data::load_any(path).unwrap_err().to_string()
}

#[test]
fn s_u_object_and_list_ids_load_and_round_trip() {
    let files = [
        ("ids_S_p2.pkl", false),
        ("ids_S_p5.pkl", false),
        ("ids_U_p4.pkl", false),
        ("ids_U_be_p3.pkl", false),
        ("ids_U_p5.pkl", true),
        ("ids_object_mixed_p4.pkl", false),
        ("ids_list_p2.pkl", false),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (file, accent) in files {
        let ds = data::load_any(&variant(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (split, n) in SIZES {
            let s = &ds.splits[split];
            let mut want = expected_ids(split, n);
            if accent {
                want[0].push('é');
            }
            assert_eq!(s.ids.as_ref(), Some(&want), "{file} {split}");
            // Features: value k + 0.5 on the last frame of sample k, left padded.
            assert_eq!(s.text.lengths, vec![1; n], "{file}");
            assert_eq!(s.audio.sample(n - 1)[6..], [n as f32 - 0.5; 2]);
            assert_eq!(
                s.labels,
                Labels::Sentiment((0..n).map(|k| k as f32 - 1.5).collect())
            );
        }
        // Round trips: mica's format, and MulT's pickle as mica writes it.
        let out = dir.path().join(file.replace(".pkl", ""));
        mica_format::save(&ds, &out).unwrap();
        assert_eq!(data::load_any(&out).unwrap().splits, ds.splits, "{file}");
        let pkl = dir.path().join(file);
        pickle_write::write_mult_pickle(&ds, &pkl).unwrap();
        let back = data::load_any(&pkl).unwrap();
        for (split, _) in SIZES {
            assert_eq!(back.splits[split].ids, ds.splits[split].ids, "{file}");
        }
    }
}

#[test]
fn fixed_width_string_arrays_keep_dtype_byte_order_and_text() {
    let bytes = std::fs::read(variant("ids_U_be_p3.pkl")).unwrap();
    let p = pickle::parse_bytes(&bytes, &ParseOptions::default()).unwrap();
    let test = p.dict_get(p.root(), "test").unwrap();
    let ids = p.as_array(p.dict_get(test, "id").unwrap()).unwrap();
    assert_eq!(ids.dtype.kind, ScalarKind::Unicode);
    assert_eq!(
        (ids.dtype_name(), ids.shape.clone()),
        (">U7".into(), vec![3])
    );
    assert_eq!(
        ids.data,
        ArrayData::Text(vec!["vs0".into(), "vs1".into(), "vs2".into()])
    );
    // MulT's (N, 3) rows of bytes: |S<n> with the id in column 0.
    let bytes = std::fs::read(variant("ids_S_p2.pkl")).unwrap();
    let p = pickle::parse_bytes(&bytes, &ParseOptions::default()).unwrap();
    let train = p.dict_get(p.root(), "train").unwrap();
    let ids = p.as_array(p.dict_get(train, "id").unwrap()).unwrap();
    assert_eq!(
        (ids.dtype_name(), ids.shape.clone()),
        ("|S3".into(), vec![4, 3])
    );
    let ArrayData::Text(t) = &ids.data else {
        panic!("{:?}", ids.data)
    };
    assert_eq!(t[..3], ["vt0", "0", "1"]);
}

#[test]
fn shared_references_resolve_as_in_python() {
    for file in ["shared_refs_p4.pkl", "shared_refs_p2.pkl"] {
        let ds = data::load_any(&variant(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        // d['valid'] = d['test']: both splits hold the test data.
        assert_eq!(ds.splits["valid"], ds.splits["test"], "{file}");
        assert_eq!(
            ds.splits["valid"].ids.as_ref(),
            Some(&expected_ids("test", 3))
        );
        // d['train']['audio'] = d['train']['vision']: one (4, 5, 2) zero array, twice.
        let train = &ds.splits["train"];
        assert_eq!((train.audio.t, train.audio.d), (5, 2));
        assert_eq!(train.audio, train.vision);
        assert_eq!(train.audio.lengths, [0; 4]);
    }
}

#[test]
fn keys_mica_does_not_read_never_fail_and_are_listed() {
    for file in ["unknown_keys_p4.pkl", "unknown_keys_p5.pkl"] {
        let path = variant(file);
        let ds = data::load_any(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(ds.splits["train"].len(), 4);
        let insp = data::inspect_any(&path).unwrap();
        let keys = &insp.keys["valid"];
        let value = |k: &str| (keys[k].value.clone(), keys[k].used);
        assert_eq!(
            value("meta_complex"),
            (
                "ndarray c16 [2, 2] (dtype not converted by mica)".into(),
                false
            )
        );
        assert_eq!(
            value("meta_time"),
            ("ndarray M8 [2] (dtype not converted by mica)".into(), false)
        );
        assert_eq!(
            value("meta_struct"),
            (
                "ndarray V12 [2] (dtype not converted by mica)".into(),
                false
            )
        );
        assert_eq!(value("meta_half"), ("ndarray float16 [2]".into(), false));
        assert_eq!(value("meta_dict"), ("dict of 2 keys".into(), false));
        assert_eq!(value("labels"), ("ndarray float32 [2, 1, 1]".into(), true));
        // float16 converts exactly.
        assert_eq!(insp.splits["valid"]["meta_half"].sum_f32_clean, 3.0);
    }
    // A key mica reads, in a dtype it does not convert: the error names split and key.
    let path = variant("used_key_complex_p4.pkl");
    assert_eq!(
        err_of(&path),
        format!(
            "{}: split 'test', key 'audio': unsupported numpy dtype \"c8\" (expected a \
             numeric array)",
            path.display()
        )
    );
}

#[test]
fn non_finite_labels_are_an_error_or_dropped_and_counted() {
    let path = variant("nan_labels_p4.pkl");
    assert_eq!(
        err_of(&path),
        format!(
            "{}: split 'train', key 'labels': 1 non-finite label value (NaN or ±inf) in 1 of \
             4 samples (first: sample 1); fix the file, or pass --drop-nonfinite-labels to \
             drop these samples",
            path.display()
        )
    );
    let opts = LoadOptions {
        drop_nonfinite_labels: true,
    };
    let (ds, dropped) = data::load_any_with(&path, &opts).unwrap();
    let counts: Vec<(String, usize)> = dropped
        .iter()
        .map(|d| (d.split.clone(), d.samples))
        .collect();
    assert_eq!(counts, [("train".into(), 1), ("test".into(), 2)]);
    let train = &ds.splits["train"];
    assert_eq!(train.labels, Labels::Sentiment(vec![-1.5, 0.5, 1.5]));
    assert_eq!(
        train.ids.as_deref(),
        Some(&["vt0".to_string(), "vt2".into(), "vt3".into()][..])
    );
    assert_eq!((train.text.n, train.audio.n, train.vision.n), (3, 3, 3));
    assert_eq!(train.audio.sample(2)[6..], [3.5; 2], "sample 3 moved up");
    assert_eq!(
        ds.splits["test"].ids.as_deref(),
        Some(&["vs1".to_string()][..])
    );
    assert_eq!(ds.splits["valid"].len(), 2);
    assert!(ds.provenance.contains("dropped 2 samples of split 'test'"));

    // IEMOCAP one-hot labels are checked before the argmax.
    let path = variant("nan_labels_iemocap_p4.pkl");
    assert_eq!(
        err_of(&path),
        format!(
            "{}: split 'valid', key 'labels': 1 non-finite label value (NaN or ±inf) in 1 of \
             2 samples (first: sample 1); fix the file, or pass --drop-nonfinite-labels to \
             drop these samples",
            path.display()
        )
    );
    let (ds, _) = data::load_any_with(&path, &opts).unwrap();
    assert_eq!(ds.splits["valid"].labels, Labels::Emotion(vec![0, 1, 0, 0]));
}

#[test]
fn mmsa_length_fields_must_be_whole_numbers_within_the_array() {
    let ds = data::load_any(&variant("mmsa_lengths_ok_p4.pkl")).unwrap();
    assert_eq!(ds.format, "mmsa");
    assert_eq!(ds.splits["train"].audio.lengths, [1, 2, 3, 4]);
    assert_eq!(ds.splits["test"].vision.lengths, [1, 2, 3]);
    assert_eq!(ds.splits["test"].ids.as_ref().unwrap()[2], "vid$_$2");
    let cases = [
        (
            "mmsa_lengths_fraction_p4.pkl",
            "split 'valid', key 'audio_lengths': sample 0: length 1.9 is not a whole number",
        ),
        (
            "mmsa_lengths_nan_p4.pkl",
            "split 'test', key 'audio_lengths': sample 1: length NaN is not a whole number",
        ),
        (
            "mmsa_lengths_beyond_p4.pkl",
            "split 'train', key 'audio_lengths': sample 2: length 13 outside 0..=4 (the \
             array's T)",
        ),
    ];
    for (file, msg) in cases {
        let path = variant(file);
        assert_eq!(
            err_of(&path),
            format!("{}: {msg}", path.display()),
            "{file}"
        );
    }
}

/// PROTO 4, `n` EMPTY_DICT opcodes, STOP.
fn empty_dict_bomb(n: usize) -> Vec<u8> {
    let mut b = vec![0x80, 4];
    b.extend(std::iter::repeat_n(b'}', n));
    b.push(b'.');
    b
}

#[test]
fn object_graph_memory_is_bounded_by_a_budget() {
    // 2 MB of EMPTY_DICT: with the default budget (32 MiB + 8 bytes per file byte) the
    // parser stops long before the end, instead of growing ~190x the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.pkl");
    let bytes = empty_dict_bomb(2_000_000);
    std::fs::write(&path, &bytes).unwrap();
    let e = err_of(&path);
    let budget = (32u64 << 20) + 8 * bytes.len() as u64;
    assert!(
        e.starts_with(&format!("{}: byte ", path.display()))
            && e.ends_with(&format!(
                ": the pickle's objects need more than {budget} bytes of memory for a \
                 2000003-byte file (the budget grows with the file size): this is not a \
                 dataset pickle (a memory bomb?)"
            )),
        "{e}"
    );
    let small = ParseOptions {
        budget_floor: 4096,
        budget_per_byte: 8,
        ..ParseOptions::default()
    };
    let e = pickle::parse_bytes(&empty_dict_bomb(10_000), &small).unwrap_err();
    assert!(matches!(e.kind, PickleErrorKind::Budget { .. }), "{e}");
    assert!(e.offset < 2000, "stopped early: {e}");
    // Below the budget the same program parses.
    assert!(pickle::parse_bytes(&empty_dict_bomb(20), &small).is_ok());

    // One 64 KiB payload, memoised once and built into 64 float32 arrays: 4 MiB of f32
    // from a 66 KiB file is past a 1 MiB + 8x budget.
    let mut b = vec![0x80, 4, 0x8e];
    b.extend_from_slice(&65536u64.to_le_bytes());
    b.extend(std::iter::repeat_n(0u8, 65536));
    b.push(0x94); // MEMOIZE as 0
    b.extend_from_slice(b"0"); // POP
    b.push(b']');
    let dtype = b"\x8c\x05numpy\x8c\x05dtype\x93\x8c\x02f4\x89\x88\x87R";
    for _ in 0..64 {
        b.extend_from_slice(b"\x8c\x15numpy.core.multiarray\x8c\x0c_reconstruct\x93");
        b.extend_from_slice(b"\x8c\x05numpy\x8c\x07ndarray\x93K\x00\x85C\x01b\x87R");
        b.extend_from_slice(b"(K\x01J\x00\x40\x00\x00\x85");
        b.extend_from_slice(dtype);
        b.extend_from_slice(b"\x89h\x00tba");
    }
    b.push(b'.');
    let opts = ParseOptions {
        budget_floor: 1 << 20,
        ..ParseOptions::default()
    };
    let e = pickle::parse_bytes(&b, &opts).unwrap_err();
    assert!(matches!(e.kind, PickleErrorKind::Budget { .. }), "{e}");
    // The default budget (32 MiB + 8x) allows it.
    let p = pickle::parse_bytes(&b, &ParseOptions::default()).unwrap();
    assert_eq!(p.as_seq(p.root()).unwrap().len(), 64);
}

// ---------------------------------------------------------------- through the binary

fn mica(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mica"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_drop_nonfinite_labels_and_inspect_lists_unused_keys() {
    let dir = tempfile::tempdir().unwrap();
    let nan = variant("nan_labels_p4.pkl");
    let out = dir.path().join("ds");
    let (nan_s, out_s) = (nan.to_str().unwrap(), out.to_str().unwrap());
    let o = mica(&["convert", nan_s, "--out", out_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("split 'train', key 'labels': 1 non-finite label value"),
        "{err}"
    );
    let o = mica(&["convert", nan_s, "--out", out_s, "--drop-nonfinite-labels"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("dropped 1 sample of split 'train' with non-finite values in 'labels'")
            && err.contains("dropped 2 samples of split 'test'"),
        "{err}"
    );
    assert_eq!(data::load_any(&out).unwrap().splits["test"].len(), 1);

    // train refuses the file before training, naming split and key.
    let o = mica(&["train", "--data", nan_s, "--epochs", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("key 'labels'") && err.contains("--drop-nonfinite-labels"),
        "{err}"
    );

    let unknown = variant("unknown_keys_p4.pkl");
    let o = mica(&["inspect", unknown.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("meta_complex")
            && text.contains("not read by mica: ndarray c16 [4, 2] (dtype not converted by mica)"),
        "{text}"
    );
}

#[test]
fn parse_errors_name_the_split_and_key_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(variant("ids_S_p2.pkl")).unwrap();
    let path = dir.path().join("cut.pkl");
    std::fs::write(&path, &bytes[..1500]).unwrap();
    assert_eq!(
        err_of(&path),
        format!(
            "{}: byte 1500, in ['valid']['labels']: file ends without the pickle STOP opcode \
             (truncated file?)",
            path.display()
        )
    );
    // A forbidden global inside a split's key is named with its place too.
    let mut evil = bytes[..bytes.len() - 3].to_vec(); // drop the last SETITEMS, SETITEMS, STOP
    evil.extend_from_slice(b"\x8c\x04evilcposix\nsystem\n");
    let e = pickle::parse_bytes(&evil, &ParseOptions::default()).unwrap_err();
    assert!(matches!(e.kind, PickleErrorKind::ForbiddenGlobal { .. }));
    assert_eq!(e.within, ["test", "evil"]);
}

#[test]
fn every_prefix_of_every_variant_is_an_error_and_whole_files_parse() {
    let dir = variant("");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.first() != Some(&0x80) {
            continue; // the HTML page
        }
        let opts = ParseOptions::default();
        pickle::parse_bytes(&bytes, &opts).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        for cut in 0..bytes.len() {
            let e = pickle::parse_bytes(&bytes[..cut], &opts).err();
            assert!(
                e.is_some_and(|e| e.offset <= cut as u64),
                "{path:?} cut {cut}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 18);
}
