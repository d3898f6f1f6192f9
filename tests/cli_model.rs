//! `mica import-mult` and `mica forward` through the binary: the official fixture weights
//! round-trip to the official outputs, and bad imports fail with errors that name the
//! parameter or key.

use candle_core::{Device, Tensor};
use mica::model::import::read_safetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::stderr;

fn mica(args: &[&std::ffi::OsStr]) -> Output {
    common::bin().args(args).output().unwrap()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mult-parity")
        .join(name)
}

fn import(weights: &Path, config: &Path, out: &Path) -> Output {
    mica(&[
        "import-mult".as_ref(),
        "--weights".as_ref(),
        weights.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
}

#[test]
fn import_then_forward_reproduces_the_official_outputs() {
    for name in ["tiny", "paper-mosi"] {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        let fx = fixture(name);
        let o = import(
            &fx.join("weights.safetensors"),
            &fx.join("config.json"),
            &ckpt,
        );
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(ckpt.join("model.safetensors").is_file() && ckpt.join("config.json").is_file());
        let out = dir.path().join("out.safetensors");
        let o = mica(&[
            "forward".as_ref(),
            "--checkpoint".as_ref(),
            ckpt.as_os_str(),
            "--inputs".as_ref(),
            fx.join("inputs.safetensors").as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let got = read_safetensors(&out, &Device::Cpu).unwrap();
        let want = read_safetensors(&fx.join("outputs.safetensors"), &Device::Cpu).unwrap();
        for key in ["output", "last_hs"] {
            let d = (&got[key] - &want[key])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "{name}/{key}: max abs error {d}");
        }
    }
}

/// Writes a modified copy of the tiny fixture's weights.
fn weights_with(dir: &Path, edit: impl Fn(&mut HashMap<String, Tensor>)) -> PathBuf {
    let mut w: HashMap<String, Tensor> =
        read_safetensors(&fixture("tiny").join("weights.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    edit(&mut w);
    let p = dir.join("w.safetensors");
    candle_core::safetensors::save(&w, &p).unwrap();
    p
}

#[test]
fn missing_parameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = weights_with(dir.path(), |w| {
        w.remove("trans_l_mem.layers.1.fc2.bias");
    });
    let o = import(
        &w,
        &fixture("tiny").join("config.json"),
        &dir.path().join("c"),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("missing parameter `trans_l_mem.layers.1.fc2.bias`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = weights_with(dir.path(), |w| {
        w.insert(
            "proj1.weight".into(),
            Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let o = import(
        &w,
        &fixture("tiny").join("config.json"),
        &dir.path().join("c"),
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("`proj1.weight`") && e.contains("[3, 3]"), "{e}");
}

#[test]
fn unknown_parameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = weights_with(dir.path(), |w| {
        w.insert(
            "extra_head.weight".into(),
            Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let o = import(
        &w,
        &fixture("tiny").join("config.json"),
        &dir.path().join("c"),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`extra_head.weight`"), "{}", stderr(&o));
}

#[test]
fn unknown_and_missing_config_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("tiny").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut model = v["model"].clone();
    model["nlevels_typo"] = serde_json::json!(3);
    let p = dir.path().join("bad.json");
    std::fs::write(&p, model.to_string()).unwrap();
    let o = import(
        &fixture("tiny").join("weights.safetensors"),
        &p,
        &dir.path().join("c"),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nlevels_typo"), "{}", stderr(&o));

    v["model"].as_object_mut().unwrap().remove("num_heads");
    std::fs::write(&p, v.to_string()).unwrap();
    let o = import(
        &fixture("tiny").join("weights.safetensors"),
        &p,
        &dir.path().join("c"),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("num_heads"), "{}", stderr(&o));
}

#[test]
fn forward_rejects_inputs_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let fx = fixture("tiny");
    assert!(import(
        &fx.join("weights.safetensors"),
        &fx.join("config.json"),
        &ckpt
    )
    .status
    .success());
    let mut inp: HashMap<String, Tensor> =
        read_safetensors(&fx.join("inputs.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    inp.insert(
        "audio".into(),
        Tensor::zeros((3, 9, 6), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("in.safetensors");
    candle_core::safetensors::save(&inp, &p).unwrap();
    let o = mica(&[
        "forward".as_ref(),
        "--checkpoint".as_ref(),
        ckpt.as_os_str(),
        "--inputs".as_ref(),
        p.as_os_str(),
        "--out".as_ref(),
        dir.path().join("o").as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("input `audio` has feature dim 6 but the model expects 5"),
        "{}",
        stderr(&o)
    );
}
