//! Fuzz target: the pickle parser must never panic, whatever the bytes. Inputs are parsed
//! twice (payloads in memory and payloads left lazy in the "file"), and both parses must
//! agree on success or failure and on the arrays produced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mica::data::pickle::{parse_bytes, ParseOptions};

fuzz_target!(|data: &[u8]| {
    let eager = ParseOptions {
        lazy_threshold: u64::MAX,
        lazy_str_threshold: u64::MAX,
        chunk_bytes: 64,
    };
    let lazy = ParseOptions {
        lazy_threshold: 0,
        lazy_str_threshold: 300,
        chunk_bytes: 3,
    };
    let a = parse_bytes(data, &eager);
    let b = parse_bytes(data, &lazy);
    assert_eq!(a.is_ok(), b.is_ok(), "eager and lazy parses disagree");
    if let (Ok(a), Ok(b)) = (a, b) {
        let root_a = a.as_array(a.root()).cloned();
        let root_b = b.as_array(b.root()).cloned();
        assert_eq!(root_a, root_b);
    }
});
