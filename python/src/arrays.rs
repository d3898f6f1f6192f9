//! numpy <-> mica's in-memory dataset: splits as dicts of arrays, and back.
//!
//! A split dict holds `text`, `audio`, `vision` (`float32 [N, T, D]`, left zero-padded),
//! `labels` (`float32 [N]` sentiment, or `uint8 [N, 4]` IEMOCAP emotions), `ids` (a list
//! of str, or None), `{text,audio,vision}_lengths` (`int64 [N]`, real frames per sample)
//! and, where known, `{text,audio,vision}_intervals` (`float32 [N, T, 2]`, each element's
//! start and end in seconds; NaN for padding).

use crate::errors::{py_error, Kind};
use mica::data::{Dataset, Intervals, Labels, Modality, Split, MODALITIES};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::collections::BTreeMap;

/// A `[n, t, d]` f32 array as numpy.
fn array3<'py>(py: Python<'py>, data: &[f32], shape: [usize; 3]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_slice(py, data).reshape(shape)?.into_any())
}

/// One split as a dict of numpy arrays.
pub fn split_to_dict<'py>(py: Python<'py>, s: &Split) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (m, name) in s.modalities().into_iter().zip(MODALITIES) {
        d.set_item(name, array3(py, &m.data, [m.n, m.t, m.d])?)?;
        let lengths: Vec<i64> = m.lengths.iter().map(|&x| x as i64).collect();
        d.set_item(format!("{name}_lengths"), PyArray1::from_vec(py, lengths))?;
    }
    match &s.labels {
        Labels::Sentiment(v) => d.set_item("labels", PyArray1::from_slice(py, v))?,
        Labels::Emotion(v) => d.set_item(
            "labels",
            PyArray1::from_slice(py, v).reshape([v.len() / 4, 4])?,
        )?,
    }
    match &s.ids {
        Some(ids) => d.set_item("ids", PyList::new(py, ids)?)?,
        None => d.set_item("ids", py.None())?,
    }
    if let Some(iv) = &s.intervals {
        for ((m, name), per) in s
            .modalities()
            .into_iter()
            .zip(MODALITIES)
            .zip(&iv.per_modality)
        {
            d.set_item(format!("{name}_intervals"), array3(py, per, [m.n, m.t, 2])?)?;
        }
    }
    Ok(d)
}

/// A whole dataset as `{split: {key: array}}`.
pub fn dataset_to_dict<'py>(py: Python<'py>, ds: &Dataset) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (name, s) in &ds.splits {
        out.set_item(name, split_to_dict(py, s)?)?;
    }
    Ok(out)
}

/// A float32 array of `ndim` dimensions at `what`, copied out with its shape.
fn take_f32(obj: &Bound<'_, PyAny>, what: &str, ndim: usize) -> PyResult<(Vec<f32>, Vec<usize>)> {
    let arr: PyReadonlyArrayDyn<'_, f32> = obj.extract().map_err(|_| {
        py_error(
            Kind::Data,
            format!(
                "{what}: expected a float32 numpy array (the Python layer converts other dtypes)"
            ),
        )
    })?;
    let shape = arr.shape().to_vec();
    if shape.len() != ndim {
        return Err(py_error(
            Kind::Data,
            format!("{what}: expected {ndim} dimensions, got shape {shape:?}"),
        ));
    }
    let data = arr.as_array().iter().copied().collect();
    Ok((data, shape))
}

/// One modality `[N, T, D]` from numpy: non-finite values become 0 (counted), lengths
/// from the leading all-zero frames, as mica's readers do.
pub fn modality_from(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Modality, u64)> {
    let (mut data, shape) = take_f32(obj, what, 3)?;
    let mut bad = 0u64;
    for x in data.iter_mut().filter(|x| !x.is_finite()) {
        *x = 0.0;
        bad += 1;
    }
    let (n, t, d) = (shape[0], shape[1], shape[2]);
    if t == 0 || d == 0 {
        return Err(py_error(
            Kind::Data,
            format!(
                "{what}: shape {shape:?}: sequence length and feature dimension must be at least 1"
            ),
        ));
    }
    Ok((Modality::from_left_padded(data, n, t, d), bad))
}

/// Looks up a required key of a split dict.
fn required<'py>(d: &Bound<'py, PyDict>, split: &str, key: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?.ok_or_else(|| {
        py_error(
            Kind::Data,
            format!(
                "split '{split}': no '{key}' array (a split needs text, audio, vision and labels)"
            ),
        )
    })
}

/// A split from a dict of numpy arrays (keys as [`split_to_dict`] writes them; the
/// `*_lengths` keys are derived from the padding and ignored here).
pub fn split_from_dict(name: &str, d: &Bound<'_, PyDict>) -> PyResult<Split> {
    let mut mods = Vec::with_capacity(3);
    let mut non_finite = [0u64; 3];
    for (k, m) in MODALITIES.iter().enumerate() {
        let (modality, bad) = modality_from(
            &required(d, name, m)?,
            &format!("split '{name}', key '{m}'"),
        )?;
        non_finite[k] = bad;
        mods.push(modality);
    }
    let n = mods[0].n;
    for (m, key) in mods.iter().zip(MODALITIES) {
        if m.n != n {
            return Err(py_error(
                Kind::Data,
                format!(
                    "split '{name}': '{key}' has {} samples, 'text' has {n}",
                    m.n
                ),
            ));
        }
    }
    let what = format!("split '{name}', key 'labels'");
    let (labels, shape) = take_f32(&required(d, name, "labels")?, &what, 2).or_else(|_| {
        take_f32(&required(d, name, "labels")?, &what, 1).map(|(v, s)| (v, vec![s[0], 1]))
    })?;
    if shape[0] != n {
        return Err(py_error(
            Kind::Data,
            format!("{what}: {} labels for {n} samples", shape[0]),
        ));
    }
    if let Some(i) = labels.iter().position(|x| !x.is_finite()) {
        return Err(py_error(
            Kind::Data,
            format!("{what}: label {i} is {} (labels must be finite)", labels[i]),
        ));
    }
    let labels = match shape[1] {
        1 => Labels::Sentiment(labels),
        4 => {
            if let Some(i) = labels.iter().position(|&x| x != 0.0 && x != 1.0) {
                return Err(py_error(
                    Kind::Data,
                    format!(
                        "{what}: value {} at flat index {i}: IEMOCAP labels [N, 4] are 0 or 1",
                        labels[i]
                    ),
                ));
            }
            Labels::Emotion(labels.iter().map(|&x| x as u8).collect())
        }
        c => {
            return Err(py_error(
                Kind::Data,
                format!("{what}: shape {shape:?}: expected [N] (or [N, 1]) sentiment scores or [N, 4] IEMOCAP emotions, not {c} columns"),
            ))
        }
    };
    let ids = match d.get_item("ids")? {
        Some(v) if !v.is_none() => {
            let ids: Vec<String> = v.extract().map_err(|_| {
                py_error(
                    Kind::Data,
                    format!("split '{name}', key 'ids': expected a list of str"),
                )
            })?;
            if ids.len() != n {
                return Err(py_error(
                    Kind::Data,
                    format!(
                        "split '{name}', key 'ids': {} ids for {n} samples",
                        ids.len()
                    ),
                ));
            }
            Some(ids)
        }
        _ => None,
    };
    let mut per = Vec::new();
    for (m, key) in mods.iter().zip(MODALITIES) {
        let k = format!("{key}_intervals");
        if let Some(v) = d.get_item(&k)? {
            let what = format!("split '{name}', key '{k}'");
            let (data, shape) = take_f32(&v, &what, 3)?;
            if shape != [m.n, m.t, 2] {
                return Err(py_error(
                    Kind::Data,
                    format!(
                        "{what}: shape {shape:?}, expected [{}, {}, 2] (start, end per element)",
                        m.n, m.t
                    ),
                ));
            }
            per.push(data);
        }
    }
    let intervals = match per.len() {
        0 => None,
        3 => {
            let [l, a, v]: [Vec<f32>; 3] = per.try_into().map_err(|_| {
                py_error(Kind::Data, "three interval arrays expected".to_string())
            })?;
            Some(Intervals { per_modality: [l, a, v] })
        }
        _ => {
            return Err(py_error(
                Kind::Data,
                format!("split '{name}': give text_intervals, audio_intervals and vision_intervals together, or none"),
            ))
        }
    };
    let mut it = mods.into_iter();
    let (Some(text), Some(audio), Some(vision)) = (it.next(), it.next(), it.next()) else {
        return Err(py_error(
            Kind::Data,
            "three modalities expected".to_string(),
        ));
    };
    Ok(Split {
        text,
        audio,
        vision,
        labels,
        ids,
        non_finite,
        intervals,
    })
}

/// A dataset from `{split: {key: array}}`.
pub fn dataset_from_dict(d: &Bound<'_, PyDict>) -> PyResult<Dataset> {
    let mut splits = BTreeMap::new();
    for (k, v) in d.iter() {
        let name: String = k
            .extract()
            .map_err(|_| py_error(Kind::Data, "split names must be str".to_string()))?;
        let sd = v.cast::<PyDict>().map_err(|_| {
            py_error(
                Kind::Data,
                format!("split '{name}': expected a dict of numpy arrays"),
            )
        })?;
        splits.insert(name.clone(), split_from_dict(&name, sd)?);
    }
    Ok(Dataset {
        format: "arrays".into(),
        splits,
        provenance: "numpy arrays passed from Python".into(),
    })
}
