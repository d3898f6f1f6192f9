//! `mica._mica`: the Rust side of mica's Python package. The pure-Python layer
//! (`python/mica/__init__.py`) converts arguments to the exact dtypes used here, builds
//! the command-line flags of `train` and drives progress bars; everything numeric is
//! mica's core crate, so results equal the CLI's.

mod arrays;
mod errors;
mod model;
mod runner;
mod train;

use errors::{from_data, py_error, to_py, Kind};
use mica::eval::Task;
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// Reads a dataset that mica reads (MulT / MMSA pickle, without executing it; a mica
/// dataset directory) into `{split: {key: numpy array}}`.
#[pyfunction]
#[pyo3(signature = (path, drop_nonfinite_labels=false))]
fn read_dataset<'py>(
    py: Python<'py>,
    path: PathBuf,
    drop_nonfinite_labels: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = mica::data::LoadOptions {
        drop_nonfinite_labels,
    };
    let p = path.clone();
    let (ds, dropped) = py
        .detach(move || mica::data::load_any_with(&p, &opts))
        .map_err(from_data)?;
    for d in dropped {
        eprintln!("note: {}: {}", path.display(), d.note());
    }
    arrays::dataset_to_dict(py, &ds)
}

/// The built-in synthetic benchmark as `{split: {key: numpy array}}`, with every
/// element's ground-truth interval (`*_intervals`). `overrides` sets any generator
/// field (`n_train`, `p_flip`, `jitter`, ...: the fields of `mica synth`).
#[pyfunction]
#[pyo3(signature = (size="small", seed=0, overrides=None))]
fn synth<'py>(
    py: Python<'py>,
    size: &str,
    seed: u64,
    overrides: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    use mica::data::synth::{generate, SynthConfig, SynthSize};
    let Some(sz) = SynthSize::from_name(size) else {
        return Err(py_error(
            Kind::Config,
            format!("size {size:?}: expected small, mosi, mosei or iemocap"),
        ));
    };
    let mut cfg = SynthConfig::preset(sz, seed);
    if let Some(text) = overrides {
        let over: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| py_error(Kind::Config, format!("synth options: {e}")))?;
        let mut base = serde_json::to_value(&cfg)
            .map_err(|e| py_error(Kind::Mica, format!("synth config: {e}")))?;
        let fields = base
            .as_object_mut()
            .ok_or_else(|| py_error(Kind::Mica, "synth config is not an object".into()))?;
        for (k, v) in over {
            if !fields.contains_key(&k) || k == "size" || k == "seed" {
                let mut known: Vec<&String> = fields
                    .keys()
                    .filter(|k| *k != "size" && *k != "seed")
                    .collect();
                known.sort();
                let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                return Err(py_error(
                    Kind::Config,
                    format!(
                        "synth: unknown option {k:?} (options: {})",
                        known.join(", ")
                    ),
                ));
            }
            fields.insert(k, v);
        }
        cfg = serde_json::from_value(base)
            .map_err(|e| py_error(Kind::Config, format!("synth options: {e}")))?;
    }
    let ds = py
        .detach(move || generate(&cfg))
        .map_err(|e| to_py(e, Kind::Config))?;
    arrays::dataset_to_dict(py, &ds)
}

/// MulT's and MMSA's metric sets of predictions against labels, as `mica metrics`
/// computes them: sentiment tasks take `[N]` predictions and labels, `iemocap` `[N, 8]`
/// logits and `[N, 4]` labels. Returns the CLI's JSON as a str.
#[pyfunction]
fn metrics(
    py: Python<'_>,
    pred: PyReadonlyArrayDyn<'_, f64>,
    labels: PyReadonlyArrayDyn<'_, f64>,
    task: &str,
) -> PyResult<String> {
    let task = match task {
        "mosi" => Task::Mosi,
        "mosei" => Task::Mosei,
        "iemocap" => Task::Iemocap,
        other => {
            return Err(py_error(
                Kind::Config,
                format!("task {other:?}: expected mosi, mosei or iemocap"),
            ))
        }
    };
    let (pw, lw) = (task.pred_width(), task.label_width());
    let (ps, ls) = (pred.shape().to_vec(), labels.shape().to_vec());
    let rows = |s: &[usize], w: usize| -> Option<usize> {
        match s {
            [n] if w == 1 => Some(*n),
            [n, k] if *k == w => Some(*n),
            _ => None,
        }
    };
    let shape_hint = |w: usize| {
        if w == 1 {
            "[N]".to_string()
        } else {
            format!("[N, {w}]")
        }
    };
    let n = rows(&ps, pw).ok_or_else(|| {
        py_error(
            Kind::Metrics,
            format!(
                "pred: shape {ps:?}, task {} expects {}",
                task.name(),
                shape_hint(pw)
            ),
        )
    })?;
    let m = rows(&ls, lw).ok_or_else(|| {
        py_error(
            Kind::Metrics,
            format!(
                "labels: shape {ls:?}, task {} expects {}",
                task.name(),
                shape_hint(lw)
            ),
        )
    })?;
    if n != m {
        return Err(py_error(
            Kind::Metrics,
            format!("{n} predictions for {m} labels"),
        ));
    }
    let p: Vec<f64> = pred.as_array().iter().copied().collect();
    let l: Vec<f64> = labels.as_array().iter().copied().collect();
    let json = py
        .detach(move || mica::eval::evaluate(task, &p, &l).map(|m| m.to_json()))
        .map_err(|e| to_py(anyhow::Error::new(e), Kind::Metrics))?;
    serde_json::to_string(&json).map_err(|e| py_error(Kind::Mica, format!("{e}")))
}

/// The extension module.
#[pymodule]
fn _mica(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(synth, m)?)?;
    m.add_function(wrap_pyfunction!(metrics, m)?)?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add_class::<model::PyModel>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
