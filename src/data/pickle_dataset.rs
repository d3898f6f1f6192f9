//! Dataset pickles of MulT and MMSA (spec/data.md §1, §2) into the shared [`Dataset`] type.
//!
//! * MulT: `{split: {text, audio, vision, labels, [id]}}`, sequences LEFT zero-padded;
//!   lengths are `T - leading all-zero frames`; labels `(N,1,1)` sentiment or `(N,4,2)`
//!   IEMOCAP one-hot (argmaxed per emotion); ids are column 0 of `id`.
//! * MMSA: `{split: {raw_text, text, text_bert, audio, vision, [audio_lengths,
//!   vision_lengths], regression_labels, classification_labels, annotations, id}}`, sequences
//!   padded at the END. They are re-padded to the LEFT using the length fields so that the
//!   model's last-step read-out sees a real frame. Text lengths, which MMSA does not store,
//!   are the attention-mask sums of `text_bert[:, 1, :]` when its length matches `text`'s
//!   `T`, else `T - trailing all-zero frames`; the same trailing-zero rule is used for audio
//!   / vision when a length field is absent (aligned files). Ids are kept verbatim
//!   (`video$_$clip`).
//!
//! Non-finite values are replaced by 0 while the arrays are read and counted per split and
//! modality in [`Split::non_finite`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::Serialize;

use super::error::DataError;
use super::pickle::{self, ArrayData, ObjId, ParseOptions, Pickle};
use super::{Dataset, Labels, Modality, Split, MODALITIES};

/// The split names every dataset pickle must have, in order.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// Which pickle layout a file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickleLayout {
    /// MulT / MICA's `*_data[_noalign].pkl`.
    Mult,
    /// MMSA's `Processed/*.pkl`.
    Mmsa,
}

impl PickleLayout {
    /// The format name used in [`Dataset::format`] and `mica inspect --json`.
    pub fn name(self) -> &'static str {
        match self {
            PickleLayout::Mult => "mult",
            PickleLayout::Mmsa => "mmsa",
        }
    }
}

/// Summary of one numeric array, as `mica inspect --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArraySummary {
    /// The dtype stored in the file (`float64`, `float32`, `int64`, `uint8`, ...).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// Sum (in f64) of the values after the cast to f32 and non-finite → 0.
    pub sum_f32_clean: f64,
    /// How many values were non-finite after the cast to f32.
    pub non_finite_after_f32_cast: u64,
}

impl ArraySummary {
    /// Summarises `values` (already cleaned) stored as `dtype` with `shape`.
    pub fn new(dtype: &str, shape: &[usize], values: &[f32], non_finite: u64) -> Self {
        ArraySummary {
            dtype: dtype.to_string(),
            shape: shape.to_vec(),
            sum_f32_clean: values.iter().map(|&v| f64::from(v)).sum(),
            non_finite_after_f32_cast: non_finite,
        }
    }
}

/// Every numeric array of a dataset file, per split and key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    /// `mult`, `mmsa` or `mica`.
    pub format: String,
    /// Split → key → summary.
    pub splits: BTreeMap<String, BTreeMap<String, ArraySummary>>,
}

/// Parses the pickle file at `path` (streaming; large arrays are converted while read).
pub fn read_pickle(path: &Path) -> Result<Pickle, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let reader = BufReader::with_capacity(1 << 16, file);
    pickle::parse(reader, &ParseOptions::default()).map_err(|error| DataError::Pickle {
        path: path.display().to_string(),
        error,
    })
}

/// Checks the top level (`train`, `valid`, `test` and nothing else) and tells the layout
/// from the keys of the `train` split.
pub fn detect_layout(path: &Path, p: &Pickle) -> Result<PickleLayout, DataError> {
    let root = p.root();
    if p.dict_items(root).is_none() {
        return Err(DataError::layout(
            path,
            "-",
            "-",
            format!(
                "the pickle holds a {}, expected a dict of splits",
                p.type_name(root)
            ),
        ));
    }
    let keys = p.dict_keys(root);
    for split in SPLITS {
        if !keys.iter().any(|k| k == split) {
            return Err(DataError::layout(
                path,
                split,
                "-",
                format!("missing split (top-level keys: {keys:?})"),
            ));
        }
    }
    if let Some(extra) = keys.iter().find(|k| !SPLITS.contains(&k.as_str())) {
        return Err(DataError::layout(
            path,
            extra,
            "-",
            "unexpected top-level key (expected exactly train, valid, test)",
        ));
    }
    let mut layout = None;
    for split in SPLITS {
        let dict = split_dict(path, p, split)?;
        let skeys = p.dict_keys(dict);
        let has = |k: &str| skeys.iter().any(|s| s == k);
        let this = if has("regression_labels") || has("audio_lengths") || has("raw_text") {
            PickleLayout::Mmsa
        } else if has("labels") {
            PickleLayout::Mult
        } else {
            return Err(DataError::layout(
                path,
                split,
                "-",
                format!("neither a MulT nor an MMSA split (keys: {skeys:?})"),
            ));
        };
        if layout.is_some_and(|l| l != this) {
            return Err(DataError::layout(
                path,
                split,
                "-",
                "splits mix the MulT and MMSA layouts",
            ));
        }
        layout = Some(this);
    }
    Ok(layout.unwrap_or(PickleLayout::Mult))
}

fn split_dict(path: &Path, p: &Pickle, split: &str) -> Result<ObjId, DataError> {
    let id = p
        .dict_get(p.root(), split)
        .ok_or_else(|| DataError::layout(path, split, "-", "missing split"))?;
    if p.dict_items(id).is_none() {
        return Err(DataError::layout(
            path,
            split,
            "-",
            format!("split is a {}, expected a dict", p.type_name(id)),
        ));
    }
    Ok(id)
}

/// Summarises every numeric array of a parsed dataset pickle.
pub fn inspect_pickle(p: &Pickle, layout: PickleLayout) -> Inspection {
    let mut splits = BTreeMap::new();
    for (k, v) in p.dict_entries(p.root()) {
        let (Some(split), Some(_)) = (p.as_str(k), p.dict_items(v)) else {
            continue;
        };
        let mut arrays = BTreeMap::new();
        for (key, value) in p.dict_entries(v) {
            let (Some(key), Some(array)) = (p.as_str(key), p.as_array(value)) else {
                continue;
            };
            if let ArrayData::Numeric { values, non_finite } = &array.data {
                let summary =
                    ArraySummary::new(&array.dtype.name(), &array.shape, values, *non_finite);
                arrays.insert(key.to_string(), summary);
            }
        }
        splits.insert(split.to_string(), arrays);
    }
    Inspection {
        format: layout.name().to_string(),
        splits,
    }
}

/// Converts a parsed dataset pickle into a [`Dataset`] (moving the arrays out of it).
pub fn dataset_from_pickle(
    path: &Path,
    mut p: Pickle,
    layout: PickleLayout,
) -> Result<Dataset, DataError> {
    let mut splits = BTreeMap::new();
    for split in SPLITS {
        let dict = split_dict(path, &p, split)?;
        let mut cx = SplitCx {
            path,
            split,
            dict,
            p: &mut p,
        };
        let s = match layout {
            PickleLayout::Mult => mult_split(&mut cx)?,
            PickleLayout::Mmsa => mmsa_split(&mut cx)?,
        };
        splits.insert(split.to_string(), s);
    }
    Ok(Dataset {
        format: layout.name().to_string(),
        splits,
        provenance: format!(
            "{} pickle (protocol {}) {}",
            layout.name(),
            p.protocol,
            path.display()
        ),
    })
}

/// Reads a dataset pickle (MulT or MMSA layout) into a [`Dataset`].
pub fn load_pickle(path: &Path) -> Result<Dataset, DataError> {
    let p = read_pickle(path)?;
    let layout = detect_layout(path, &p)?;
    dataset_from_pickle(path, p, layout)
}

/// A numeric array moved out of the pickle.
struct Numeric {
    values: Vec<f32>,
    shape: Vec<usize>,
    non_finite: u64,
}

/// The split being converted.
struct SplitCx<'a> {
    path: &'a Path,
    split: &'a str,
    dict: ObjId,
    p: &'a mut Pickle,
}

impl SplitCx<'_> {
    fn err(&self, key: &str, problem: impl Into<String>) -> DataError {
        DataError::layout(self.path, self.split, key, problem)
    }

    fn get(&self, key: &str) -> Option<ObjId> {
        self.p.dict_get(self.dict, key)
    }

    /// Moves the numeric array `key` out, checking its rank.
    fn numeric(&mut self, key: &str, ranks: &[usize]) -> Result<Numeric, DataError> {
        let id = self.get(key).ok_or_else(|| self.err(key, "missing"))?;
        let found = self.p.type_name(id);
        let array = self
            .p
            .take_array(id)
            .ok_or_else(|| self.err(key, format!("expected a numpy array, found a {found}")))?;
        if !ranks.contains(&array.shape.len()) {
            return Err(self.err(
                key,
                format!("expected rank {ranks:?}, found shape {:?}", array.shape),
            ));
        }
        match array.data {
            ArrayData::Numeric { values, non_finite } => Ok(Numeric {
                values,
                shape: array.shape,
                non_finite,
            }),
            ArrayData::Objects(_) => {
                Err(self.err(key, "expected a numeric array, found dtype object"))
            }
        }
    }

    /// The three modalities as `[N, T, D]` arrays with a common N.
    fn modalities(&mut self) -> Result<[Numeric; 3], DataError> {
        let [t, a, v] = MODALITIES;
        let arrays = [
            self.numeric(t, &[3])?,
            self.numeric(a, &[3])?,
            self.numeric(v, &[3])?,
        ];
        let n = arrays[0].shape[0];
        for (name, arr) in MODALITIES.iter().zip(&arrays) {
            if arr.shape[0] != n {
                return Err(self.err(
                    name,
                    format!(
                        "{} samples, but text has {n} (shape {:?})",
                        arr.shape[0], arr.shape
                    ),
                ));
            }
        }
        Ok(arrays)
    }

    /// Strings of a list / tuple / object array (first column of a 2-D object array).
    fn ids(&self, key: &str, n: usize) -> Result<Option<Vec<String>>, DataError> {
        let Some(id) = self.get(key) else {
            return Ok(None);
        };
        let items: Vec<ObjId> = match (self.p.as_seq(id), self.p.as_array(id)) {
            (Some(seq), _) => seq.to_vec(),
            (_, Some(arr)) => match (&arr.data, arr.shape.as_slice()) {
                (ArrayData::Objects(objs), [rows]) if *rows == n => objs.clone(),
                (ArrayData::Objects(objs), [rows, cols]) if *rows == n && *cols > 0 => {
                    objs.iter().step_by(*cols).copied().collect()
                }
                _ => {
                    return Err(self.err(
                        key,
                        format!(
                            "expected an object array of {n} rows, found dtype {} shape {:?}",
                            arr.dtype.name(),
                            arr.shape
                        ),
                    ))
                }
            },
            _ => {
                return Err(self.err(
                    key,
                    format!("expected ids, found a {}", self.p.type_name(id)),
                ))
            }
        };
        if items.len() != n {
            return Err(self.err(key, format!("{} ids for {n} samples", items.len())));
        }
        items
            .iter()
            .map(|&i| {
                self.p.as_text(i).ok_or_else(|| {
                    self.err(
                        key,
                        format!("id is a {}, expected str or bytes", self.p.type_name(i)),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A list / array of non-negative integer lengths, if present.
    fn lengths(&mut self, key: &str, n: usize, t: usize) -> Result<Option<Vec<usize>>, DataError> {
        let Some(id) = self.get(key) else {
            return Ok(None);
        };
        let raw: Vec<i64> = if let Some(seq) = self.p.as_seq(id) {
            seq.iter()
                .map(|&i| {
                    self.p
                        .as_int(i)
                        .ok_or_else(|| self.err(key, "lengths must be integers"))
                })
                .collect::<Result<_, _>>()?
        } else {
            let arr = self.numeric(key, &[1, 2])?;
            arr.values.iter().map(|&v| v as i64).collect()
        };
        if raw.len() != n {
            return Err(self.err(key, format!("{} lengths for {n} samples", raw.len())));
        }
        raw.iter()
            .enumerate()
            .map(|(i, &l)| match usize::try_from(l) {
                Ok(l) if l <= t => Ok(l),
                _ => Err(self.err(key, format!("sample {i}: length {l} outside 0..={t}"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn mult_split(cx: &mut SplitCx) -> Result<Split, DataError> {
    let [text, audio, vision] = cx.modalities()?;
    let n = text.shape[0];
    let labels = cx.numeric("labels", &[1, 2, 3])?;
    let labels = mult_labels(cx, labels, n)?;
    let ids = cx.ids("id", n)?;
    let non_finite = [text.non_finite, audio.non_finite, vision.non_finite];
    let [text, audio, vision] = [text, audio, vision].map(|m| {
        let (t, d) = (m.shape[1], m.shape[2]);
        Modality::from_left_padded(m.values, n, t, d)
    });
    Ok(Split {
        text,
        audio,
        vision,
        labels,
        ids,
        non_finite,
        intervals: None,
    })
}

fn mult_labels(cx: &SplitCx, labels: Numeric, n: usize) -> Result<Labels, DataError> {
    let shape = labels.shape.as_slice();
    if shape.first() != Some(&n) {
        return Err(cx.err(
            "labels",
            format!("shape {shape:?} does not match {n} samples"),
        ));
    }
    if shape == [n, 4, 2] {
        let argmax = labels
            .values
            .chunks_exact(2)
            .map(|pair| u8::from(pair[1] > pair[0]))
            .collect();
        return Ok(Labels::Emotion(argmax));
    }
    if shape.iter().skip(1).all(|&d| d == 1) {
        return Ok(Labels::Sentiment(labels.values));
    }
    Err(cx.err(
        "labels",
        format!("shape {shape:?}: expected (N,1,1) sentiment or (N,4,2) IEMOCAP one-hot"),
    ))
}

fn mmsa_split(cx: &mut SplitCx) -> Result<Split, DataError> {
    let [text, audio, vision] = cx.modalities()?;
    let n = text.shape[0];
    let text_lengths = mmsa_text_lengths(cx, &text, n)?;
    let audio_lengths = cx.lengths("audio_lengths", n, audio.shape[1])?;
    let vision_lengths = cx.lengths("vision_lengths", n, vision.shape[1])?;
    let labels = cx.numeric("regression_labels", &[1, 2])?;
    if labels.shape.first() != Some(&n) || labels.values.len() != n {
        return Err(cx.err(
            "regression_labels",
            format!("shape {:?} does not match {n} samples", labels.shape),
        ));
    }
    let ids = cx.ids("id", n)?;
    let non_finite = [text.non_finite, audio.non_finite, vision.non_finite];
    Ok(Split {
        text: left_pad(text, text_lengths),
        audio: left_pad(audio, audio_lengths),
        vision: left_pad(vision, vision_lengths),
        labels: Labels::Sentiment(labels.values),
        ids,
        non_finite,
        intervals: None,
    })
}

/// MMSA text lengths: `text_bert[:, 1, :]` (BERT attention mask) sums when usable.
fn mmsa_text_lengths(
    cx: &mut SplitCx,
    text: &Numeric,
    n: usize,
) -> Result<Option<Vec<usize>>, DataError> {
    let t = text.shape[1];
    let Some(id) = cx.get("text_bert") else {
        return Ok(None);
    };
    let Some(arr) = cx.p.as_array(id) else {
        return Ok(None);
    };
    let ArrayData::Numeric { values, .. } = &arr.data else {
        return Ok(None);
    };
    if t == 0 || arr.shape != [n, 3, t] {
        return Ok(None);
    }
    let lengths = values
        .chunks_exact(3 * t)
        .map(|rows| rows[t..2 * t].iter().filter(|&&m| m != 0.0).count())
        .collect();
    Ok(Some(lengths))
}

/// Number of trailing all-zero frames of a `[t, d]` sample.
fn trailing_zero_frames(sample: &[f32], d: usize) -> usize {
    if d == 0 {
        return 0;
    }
    sample
        .chunks_exact(d)
        .rev()
        .take_while(|f| f.iter().all(|&x| x == 0.0))
        .count()
}

/// Moves the first `length` frames of every end-padded sample to the end (left padding),
/// in place; lengths default to `T - trailing all-zero frames`.
fn left_pad(m: Numeric, lengths: Option<Vec<usize>>) -> Modality {
    let (n, t, d) = (m.shape[0], m.shape[1], m.shape[2]);
    let mut data = m.values;
    let frame = t * d;
    let lengths = lengths.unwrap_or_else(|| {
        data.chunks_exact(frame.max(1))
            .take(n)
            .map(|s| t - trailing_zero_frames(s, d))
            .collect()
    });
    if frame > 0 {
        for (sample, &len) in data.chunks_exact_mut(frame).zip(&lengths) {
            let pad = (t - len) * d;
            sample.copy_within(0..len * d, pad);
            sample[..pad].fill(0.0);
        }
    }
    Modality {
        data,
        n,
        t,
        d,
        lengths,
    }
}

/// Reads `raw_text`-style lists of strings; used by tests and tools.
pub fn string_list(p: &Pickle, id: ObjId) -> Option<Vec<String>> {
    p.as_seq(id)?.iter().map(|&i| p.as_text(i)).collect()
}
