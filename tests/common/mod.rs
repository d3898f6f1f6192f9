//! Helpers shared by the integration tests: running the `mica` binary, reading its
//! output, and making a tiny synthetic data set with `mica synth`.
//!
//! Each test crate includes this module (`mod common;`) and uses only some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `Command` for the `mica` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mica"))
}

/// Runs `mica ARGS` followed by each `(flag, path)` of `paths` (the flag left out when
/// empty) and returns its output.
pub fn mica(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = bin();
    c.args(args);
    for (flag, p) in paths {
        if !flag.is_empty() {
            c.arg(flag);
        }
        c.arg(p);
    }
    c.output().unwrap()
}

/// The output's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The output's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Writes a tiny synthetic data set to `out` (`mica synth --size SIZE --seed SEED
/// --n-train N_TRAIN --n-valid 6 --n-test 6 EXTRA.. --out OUT`), asserting success.
pub fn tiny_synth(out: &Path, size: &str, seed: &str, n_train: &str, extra: &[&str]) -> PathBuf {
    let o = bin()
        .args(["synth", "--size", size, "--seed", seed])
        .args(["--n-train", n_train, "--n-valid", "6", "--n-test", "6"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    out.to_path_buf()
}
