//! `mica.load(checkpoint)`: a trained model, its config, predictions and attention maps.

use crate::arrays::modality_from;
use crate::errors::{py_error, to_py, Kind};
use crate::runner;
use candle_core::Device;
use mica::config::{Config, Task};
use mica::data::batch::{chunks, make_batch};
use mica::data::{Intervals, Labels, Modality, Split, MODALITIES};
use mica::model::ctx::Ctx;
use mica::model::mult::ForwardOpts;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// A loaded mica checkpoint.
#[pyclass(name = "Model", module = "mica._mica", frozen)]
pub struct PyModel {
    cfg: Config,
    model: mica::model::Model,
    path: PathBuf,
}

/// Loads a checkpoint directory (a run's `best` or `last`, a run directory, or an
/// imported model), verifying every file against its `checkpoint.json`.
#[pyfunction]
pub fn load(py: Python<'_>, checkpoint: PathBuf) -> PyResult<PyModel> {
    let dir = checkpoint.clone();
    let loaded = py.detach(move || {
        // A run directory: its best weights, as `mica eval` takes them.
        let dir = if dir.join("best").join("config.json").is_file()
            && !dir.join("model.safetensors").is_file()
        {
            dir.join("best")
        } else {
            dir
        };
        mica::train::checkpoint::load(&dir, &Device::Cpu).map(|(cfg, _, model)| (cfg, model, dir))
    });
    let (cfg, model, path) = loaded.map_err(|e| to_py(e, Kind::Checkpoint))?;
    Ok(PyModel { cfg, model, path })
}

/// The three modalities (and optional element intervals) as one split with placeholder
/// labels, checked against the model's dims and lengths.
fn inputs_split(
    cfg: &Config,
    text: &Bound<'_, PyAny>,
    audio: &Bound<'_, PyAny>,
    vision: &Bound<'_, PyAny>,
    intervals: Option<[Bound<'_, PyAny>; 3]>,
) -> PyResult<Split> {
    let mut mods: Vec<Modality> = Vec::with_capacity(3);
    let mut non_finite = [0u64; 3];
    for (k, (obj, name)) in [text, audio, vision]
        .into_iter()
        .zip(MODALITIES)
        .enumerate()
    {
        let (m, bad) = modality_from(obj, name)?;
        non_finite[k] = bad;
        mods.push(m);
    }
    let n = mods[0].n;
    let mc = &cfg.model;
    for ((m, name), (d, t)) in mods.iter().zip(MODALITIES).zip([
        (mc.orig_d_l, mc.l_len),
        (mc.orig_d_a, mc.a_len),
        (mc.orig_d_v, mc.v_len),
    ]) {
        if m.n != n {
            return Err(py_error(
                Kind::Data,
                format!("{name} has {} samples, text has {n}", m.n),
            ));
        }
        if (m.t, m.d) != (t, d) {
            return Err(py_error(
                Kind::Data,
                format!("{name}: shape [{}, {}, {}], the model expects [N, {t}, {d}] (length {t}, {d} features)", m.n, m.t, m.d),
            ));
        }
    }
    let intervals = match intervals {
        None => None,
        Some(objs) => {
            let mut per = Vec::with_capacity(3);
            for ((obj, m), name) in objs.iter().zip(&mods).zip(MODALITIES) {
                let arr: PyReadonlyArrayDyn<'_, f32> = obj.extract().map_err(|_| {
                    py_error(
                        Kind::Data,
                        format!("{name} intervals: expected a float32 array [N, T, 2]"),
                    )
                })?;
                if arr.shape() != [m.n, m.t, 2] {
                    return Err(py_error(
                        Kind::Data,
                        format!(
                            "{name} intervals: shape {:?}, expected [{}, {}, 2]",
                            arr.shape(),
                            m.n,
                            m.t
                        ),
                    ));
                }
                per.push(arr.as_array().iter().copied().collect::<Vec<f32>>());
            }
            let mut it = per.into_iter();
            match (it.next(), it.next(), it.next()) {
                (Some(l), Some(a), Some(v)) => Some(Intervals {
                    per_modality: [l, a, v],
                }),
                _ => None,
            }
        }
    };
    let labels = match cfg.task {
        Task::Iemocap => Labels::Emotion(vec![0; n * 4]),
        _ => Labels::Sentiment(vec![0.0; n]),
    };
    let mut it = mods.into_iter();
    let (Some(text), Some(audio), Some(vision)) = (it.next(), it.next(), it.next()) else {
        return Err(py_error(Kind::Data, "three modalities expected".into()));
    };
    Ok(Split {
        text,
        audio,
        vision,
        labels,
        ids: None,
        non_finite,
        intervals,
    })
}

#[pymethods]
impl PyModel {
    /// The checkpoint's full config (`config.json`) as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.cfg)
            .map_err(|e| py_error(Kind::Mica, format!("config: {e}")))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// The checkpoint directory the weights were read from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Eval-mode predictions `float32 [N, output_dim]` in batches of `batch_size`
    /// (default: the config's, as `mica predict` does).
    #[pyo3(signature = (text, audio, vision, batch_size=None, intervals=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
        audio: &Bound<'py, PyAny>,
        vision: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        intervals: Option<[Bound<'py, PyAny>; 3]>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let split = inputs_split(&self.cfg, text, audio, vision, intervals)?;
        let bs = batch_size.unwrap_or(self.cfg.train.batch_size);
        if bs == 0 {
            return Err(py_error(Kind::Config, "batch_size 0: use 1 or more".into()));
        }
        let width = self.cfg.model.output_dim;
        let model = &self.model;
        let out = runner::run(
            py,
            |r: &runner::Reporter<'_, ()>| -> anyhow::Result<Option<Vec<f32>>> {
                let order: Vec<usize> = (0..split.len()).collect();
                let ctx = Ctx::eval();
                let mut preds = Vec::with_capacity(split.len() * width);
                for idx in chunks(&order, bs) {
                    if r.stopped() {
                        return Ok(None);
                    }
                    let batch = make_batch(&split, &idx, &Device::Cpu)?;
                    let out = model.forward(&ctx, &batch.inputs, ForwardOpts::default())?;
                    preds.extend(out.output.flatten_all()?.to_vec1::<f32>()?);
                }
                Ok(Some(preds))
            },
            |_, ()| Ok(()),
        );
        if let Some(e) = out.interrupt {
            return Err(e);
        }
        let preds = out.result?.map_err(|e| to_py(e, Kind::Mica))?;
        let Some(preds) = preds else {
            return Err(py_error(Kind::Mica, "prediction stopped".into()));
        };
        let n = preds.len() / width.max(1);
        Ok(PyArray1::from_vec(py, preds)
            .reshape([n, width])?
            .into_any())
    }

    /// One sample's crossmodal attention map (as `mica attention` draws it): the real
    /// target steps (rows) by real source steps (columns) of block `block`
    /// (`"SOURCE->TARGET"`, e.g. `"A->L"`: text attending to audio) at `layer` (1-based;
    /// default the last), one head or the mean over heads.
    #[pyo3(signature = (text, audio, vision, sample=0, block="A->L", layer=None, head=None, intervals=None))]
    #[allow(clippy::too_many_arguments)]
    fn attention<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
        audio: &Bound<'py, PyAny>,
        vision: &Bound<'py, PyAny>,
        sample: usize,
        block: &str,
        layer: Option<usize>,
        head: Option<usize>,
        intervals: Option<[Bound<'py, PyAny>; 3]>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let split = inputs_split(&self.cfg, text, audio, vision, intervals)?;
        let (target, source) =
            mica::analysis::alignment::parse_block(block).map_err(|e| to_py(e, Kind::Config))?;
        if layer == Some(0) {
            return Err(py_error(
                Kind::Config,
                "layer 0: layers are numbered from 1".into(),
            ));
        }
        let layer = layer.map(|l| l - 1);
        let model = &self.model;
        let out = runner::run(
            py,
            |_: &runner::Reporter<'_, ()>| {
                mica::analysis::alignment::attention_map(
                    model, &split, sample, layer, target, source, head,
                )
            },
            |_, ()| Ok(()),
        );
        if let Some(e) = out.interrupt {
            return Err(e);
        }
        let m = out.result?.map_err(|e| to_py(e, Kind::Mica))?;
        let d = PyDict::new(py);
        d.set_item(
            "matrix",
            PyArray1::from_slice(py, &m.matrix).reshape([m.rows, m.cols])?,
        )?;
        match &m.truth {
            Some(t) => d.set_item(
                "truth",
                PyArray1::from_slice(py, t).reshape([m.rows, m.cols])?,
            )?,
            None => d.set_item("truth", py.None())?,
        }
        d.set_item("corr_acc", m.corr.as_ref().map(|c| c.accuracy()))?;
        d.set_item("layer", m.layer)?;
        d.set_item("layers", m.layers)?;
        d.set_item("heads", m.heads)?;
        d.set_item("block", block.to_ascii_uppercase())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "mica.Model(variant={:?}, task={:?}, d={}, layers={}, path={:?})",
            self.cfg.variant.name(),
            self.cfg.task.name(),
            self.cfg.model.d,
            self.cfg.model.layers,
            self.path.display().to_string()
        )
    }
}
