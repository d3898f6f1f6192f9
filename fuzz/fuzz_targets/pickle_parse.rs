//! Fuzz target: the pickle parser must never panic, whatever the bytes. Inputs are parsed
//! twice (payloads in memory and payloads left lazy in the "file"): whatever parses eagerly
//! must parse lazily to the same root array. (Lazy parsing may accept more: a payload that
//! is never used as array data is not decoded, e.g. a latin1 string with wide characters.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use mica::data::pickle::{parse_bytes, ParseOptions};

fuzz_target!(|data: &[u8]| {
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
    let a = parse_bytes(data, &eager);
    let b = parse_bytes(data, &lazy);
    if let Ok(a) = a {
        let b = b.expect("parses eagerly but not lazily");
        let root_a = a.as_array(a.root()).cloned();
        let root_b = b.as_array(b.root()).cloned();
        assert_eq!(root_a, root_b);
    }
});
