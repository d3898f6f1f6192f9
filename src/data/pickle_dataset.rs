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
//! Non-finite feature values are replaced by 0 and counted per split and modality in
//! [`Split::non_finite`]. Non-finite LABELS are an error naming split, key and count, or
//! (with [`LoadOptions::drop_nonfinite_labels`]) their samples are dropped and counted.
//! Keys mica does not read are never parsed beyond the pickle level (any dtype is fine
//! there) and are listed by [`inspect_pickle`]. A value referenced twice (a memo
//! reference, e.g. `d['valid'] = d['test']`) is read twice, as Python does.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::clean::{self, Dropped, LoadOptions};
use super::error::DataError;
use super::pickle::{self, ArrayData, ObjId, Object, ParseOptions, Pickle};
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

    /// The keys of a split that mica reads.
    pub fn used_keys(self) -> &'static [&'static str] {
        match self {
            PickleLayout::Mult => &["text", "audio", "vision", "labels", "id"],
            PickleLayout::Mmsa => &[
                "text",
                "text_bert",
                "audio",
                "vision",
                "audio_lengths",
                "vision_lengths",
                "regression_labels",
                "id",
            ],
        }
    }

    /// The key holding the labels.
    pub fn label_key(self) -> &'static str {
        match self {
            PickleLayout::Mult => "labels",
            PickleLayout::Mmsa => "regression_labels",
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
    /// Summarises `values` stored as `dtype` with `shape`; non-finite values (if any are
    /// left) count as 0 in the sum.
    pub fn new(dtype: &str, shape: &[usize], values: &[f32], non_finite: u64) -> Self {
        ArraySummary {
            dtype: dtype.to_string(),
            shape: shape.to_vec(),
            sum_f32_clean: values
                .iter()
                .filter(|v| v.is_finite())
                .map(|&v| f64::from(v))
                .sum(),
            non_finite_after_f32_cast: non_finite,
        }
    }
}

/// What one key of a split holds, as `mica inspect` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The value: `ndarray float64 [4, 3, 2]`, `ndarray <U10 [4, 3]`, `list of 4`, ...
    pub value: String,
    /// Whether mica reads this key (the others are skipped, whatever they hold).
    pub used: bool,
}

/// Every numeric array of a dataset file, per split and key.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Inspection {
    /// `mult`, `mmsa` or `mica`.
    pub format: String,
    /// Split → key → summary.
    pub splits: BTreeMap<String, BTreeMap<String, ArraySummary>>,
    /// Split → key → what it holds, for every key of a pickle's splits (empty for mica
    /// directories).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, BTreeMap<String, KeyInfo>>,
    /// Top-level keys besides `train`, `valid`, `test` (ignored).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_top_level: Vec<String>,
}

/// Parses the pickle file at `path` (streaming; large arrays are converted while read),
/// keeping non-finite values (the dataset layer replaces the features' by 0 and checks
/// the labels).
pub fn read_pickle(path: &Path) -> Result<Pickle, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let reader = BufReader::with_capacity(1 << 16, file);
    let opts = ParseOptions {
        keep_non_finite: true,
        ..ParseOptions::default()
    };
    pickle::parse(reader, &opts).map_err(|error| DataError::Pickle {
        path: path.display().to_string(),
        error,
    })
}

/// Checks the top level (`train`, `valid`, `test`; other keys are ignored) and tells the
/// layout from the keys of the splits.
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

/// Summarises every numeric array of a parsed dataset pickle and lists every key.
pub fn inspect_pickle(p: &Pickle, layout: PickleLayout) -> Inspection {
    let mut splits = BTreeMap::new();
    let mut keys = BTreeMap::new();
    let mut ignored_top_level = Vec::new();
    for (k, v) in p.dict_entries(p.root()) {
        let split = p
            .as_str(k)
            .map_or_else(|| format!("<{}>", p.type_name(k)), String::from);
        if !SPLITS.contains(&split.as_str()) || p.dict_items(v).is_none() {
            ignored_top_level.push(split);
            continue;
        }
        let mut arrays = BTreeMap::new();
        let mut infos = BTreeMap::new();
        for (key, value) in p.dict_entries(v) {
            let key = p
                .as_str(key)
                .map_or_else(|| format!("<{}>", p.type_name(key)), String::from);
            let info = KeyInfo {
                value: describe(p, value),
                used: layout.used_keys().contains(&key.as_str()),
            };
            infos.insert(key.clone(), info);
            let Some(array) = p.as_array(value) else {
                continue;
            };
            if let ArrayData::Numeric { values, non_finite } = &array.data {
                let summary =
                    ArraySummary::new(&array.dtype.name(), &array.shape, values, *non_finite);
                arrays.insert(key, summary);
            }
        }
        splits.insert(split.clone(), arrays);
        keys.insert(split, infos);
    }
    Inspection {
        format: layout.name().to_string(),
        splits,
        keys,
        ignored_top_level,
    }
}

/// A one-line description of a pickle value.
pub fn describe(p: &Pickle, id: ObjId) -> String {
    match p.get(id) {
        Some(Object::Array(a)) => {
            let note = match &a.data {
                ArrayData::Unconverted { .. } => " (dtype not converted by mica)",
                _ => "",
            };
            format!("ndarray {} {:?}{note}", a.dtype_name(), a.shape)
        }
        Some(Object::List(v)) => format!("list of {}", v.len()),
        Some(Object::Tuple(v)) => format!("tuple of {}", v.len()),
        Some(Object::Set(v)) => format!("set of {}", v.len()),
        Some(Object::Dict(_)) => format!("dict of {} keys", p.dict_entries(id).len()),
        _ => p.type_name(id).to_string(),
    }
}

/// Converts a parsed dataset pickle into a [`Dataset`] (moving the arrays out of it),
/// refusing non-finite labels.
pub fn dataset_from_pickle(
    path: &Path,
    p: Pickle,
    layout: PickleLayout,
) -> Result<Dataset, DataError> {
    dataset_from_pickle_with(path, p, layout, &LoadOptions::default()).map(|(ds, _)| ds)
}

/// [`dataset_from_pickle`] with options; also returns the samples dropped.
pub fn dataset_from_pickle_with(
    path: &Path,
    mut p: Pickle,
    layout: PickleLayout,
    opts: &LoadOptions,
) -> Result<(Dataset, Vec<Dropped>), DataError> {
    let mut uses = array_uses(&p);
    let mut splits = BTreeMap::new();
    let mut dropped = Vec::new();
    for split in SPLITS {
        let dict = split_dict(path, &p, split)?;
        let mut cx = SplitCx {
            path,
            split,
            dict,
            p: &mut p,
            uses: &mut uses,
        };
        let (mut s, keep) = match layout {
            PickleLayout::Mult => mult_split(&mut cx, opts)?,
            PickleLayout::Mmsa => mmsa_split(&mut cx, opts)?,
        };
        if let Some(keep) = keep {
            let samples = clean::retain_samples(&mut s, &keep);
            dropped.push(Dropped {
                split: split.to_string(),
                key: layout.label_key().to_string(),
                samples,
            });
        }
        splits.insert(split.to_string(), s);
    }
    let mut ds = Dataset {
        format: layout.name().to_string(),
        splits,
        provenance: format!(
            "{} pickle (protocol {}) {}",
            layout.name(),
            p.protocol,
            path.display()
        ),
    };
    clean::note_in_provenance(&mut ds, &dropped);
    Ok((ds, dropped))
}

/// Reads a dataset pickle (MulT or MMSA layout) into a [`Dataset`].
pub fn load_pickle(path: &Path) -> Result<Dataset, DataError> {
    let p = read_pickle(path)?;
    let layout = detect_layout(path, &p)?;
    dataset_from_pickle(path, p, layout)
}

/// How many times each array is referenced by a split's keys (a memo reference makes
/// the same array, or the same split dict, appear more than once).
fn array_uses(p: &Pickle) -> HashMap<ObjId, usize> {
    let mut uses = HashMap::new();
    for split in SPLITS {
        let Some(dict) = p.dict_get(p.root(), split) else {
            continue;
        };
        for (_, v) in p.dict_entries(dict) {
            if p.as_array(v).is_some() {
                *uses.entry(v).or_insert(0) += 1;
            }
        }
    }
    uses
}

/// A numeric array moved (or, when shared, copied) out of the pickle.
struct Numeric {
    values: Vec<f32>,
    shape: Vec<usize>,
    non_finite: u64,
}

impl Numeric {
    /// Replaces non-finite values by 0 (features).
    fn cleaned(mut self) -> Self {
        if self.non_finite > 0 {
            for v in self.values.iter_mut().filter(|v| !v.is_finite()) {
                *v = 0.0;
            }
        }
        self
    }
}

/// The split being converted.
struct SplitCx<'a> {
    path: &'a Path,
    split: &'a str,
    dict: ObjId,
    p: &'a mut Pickle,
    /// References left per array: the last one moves it out, the others copy it.
    uses: &'a mut HashMap<ObjId, usize>,
}

impl SplitCx<'_> {
    fn err(&self, key: &str, problem: impl Into<String>) -> DataError {
        DataError::layout(self.path, self.split, key, problem)
    }

    fn get(&self, key: &str) -> Option<ObjId> {
        self.p.dict_get(self.dict, key)
    }

    /// The numeric array `key` (moved out on its last use), checking its rank; non-finite
    /// values are kept.
    fn numeric(&mut self, key: &str, ranks: &[usize]) -> Result<Numeric, DataError> {
        let id = self.get(key).ok_or_else(|| self.err(key, "missing"))?;
        let found = self.p.type_name(id);
        let left = self.uses.get(&id).copied().unwrap_or(0);
        let array = if left > 1 {
            self.uses.insert(id, left - 1);
            self.p.as_array(id).cloned()
        } else {
            self.p.take_array(id)
        }
        .ok_or_else(|| self.err(key, format!("expected a numpy array, found a {found}")))?;
        if !ranks.contains(&array.shape.len()) {
            return Err(self.err(
                key,
                format!("expected rank {ranks:?}, found shape {:?}", array.shape),
            ));
        }
        let dtype = array.dtype_name();
        match array.data {
            ArrayData::Numeric { values, non_finite } => Ok(Numeric {
                values,
                shape: array.shape,
                non_finite,
            }),
            ArrayData::Unconverted { .. } => Err(self.err(
                key,
                format!("unsupported numpy dtype {dtype:?} (expected a numeric array)"),
            )),
            _ => Err(self.err(
                key,
                format!("expected a numeric array, found dtype {dtype}"),
            )),
        }
    }

    /// The three modalities as `[N, T, D]` arrays with a common N, non-finite values
    /// replaced by 0 (and counted).
    fn modalities(&mut self) -> Result<[Numeric; 3], DataError> {
        let [t, a, v] = MODALITIES;
        let arrays = [
            self.numeric(t, &[3])?.cleaned(),
            self.numeric(a, &[3])?.cleaned(),
            self.numeric(v, &[3])?.cleaned(),
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

    /// Ids: a list / tuple of str or bytes, an object array of them, or a fixed-width
    /// `S` / `U` array; of a 2-D array (MulT's `[id, start, end]` rows) column 0.
    fn ids(&self, key: &str, n: usize) -> Result<Option<Vec<String>>, DataError> {
        let Some(id) = self.get(key) else {
            return Ok(None);
        };
        let column0 = |len: usize, shape: &[usize]| -> Option<(usize, usize)> {
            match shape {
                [rows] if *rows == len => Some((*rows, 1)),
                [rows, cols] if *rows == n && *cols > 0 && rows * cols == len => {
                    Some((*rows, *cols))
                }
                _ => None,
            }
        };
        let items: Vec<ObjId> = match (self.p.as_seq(id), self.p.as_array(id)) {
            (Some(seq), _) => seq.to_vec(),
            (_, Some(arr)) => {
                let bad = || {
                    self.err(
                        key,
                        format!(
                            "expected ids (str / bytes) for {n} samples, found an array of \
                             dtype {} shape {:?}",
                            arr.dtype_name(),
                            arr.shape
                        ),
                    )
                };
                match &arr.data {
                    ArrayData::Objects(objs) => {
                        let (_, cols) = column0(objs.len(), &arr.shape).ok_or_else(bad)?;
                        objs.iter().step_by(cols).copied().collect()
                    }
                    ArrayData::Text(text) => {
                        let (rows, cols) = column0(text.len(), &arr.shape).ok_or_else(bad)?;
                        if rows != n {
                            return Err(self.err(key, format!("{rows} ids for {n} samples")));
                        }
                        return Ok(Some(text.iter().step_by(cols).cloned().collect()));
                    }
                    _ => return Err(bad()),
                }
            }
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
            .enumerate()
            .map(|(i, &item)| {
                self.p.as_text(item).ok_or_else(|| {
                    self.err(
                        key,
                        format!(
                            "id {i} is a {}, expected str or bytes",
                            self.p.type_name(item)
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A list / array of lengths, if present: whole numbers within `0..=t`.
    fn lengths(&mut self, key: &str, n: usize, t: usize) -> Result<Option<Vec<usize>>, DataError> {
        let Some(id) = self.get(key) else {
            return Ok(None);
        };
        // Values read from a numpy array are f32 (shown as such in messages).
        let mut from_f32 = false;
        let raw: Vec<f64> = if let Some(seq) = self.p.as_seq(id) {
            seq.iter()
                .enumerate()
                .map(|(i, &item)| match self.p.get(item) {
                    Some(Object::Int(v)) => Ok(*v as f64),
                    Some(Object::Float(v)) => Ok(*v),
                    _ => Err(self.err(
                        key,
                        format!(
                            "sample {i}: length is a {}, expected a number",
                            self.p.type_name(item)
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?
        } else {
            let arr = self.numeric(key, &[1, 2])?;
            from_f32 = true;
            arr.values.iter().map(|&v| f64::from(v)).collect()
        };
        if raw.len() != n {
            return Err(self.err(key, format!("{} lengths for {n} samples", raw.len())));
        }
        raw.iter()
            .enumerate()
            .map(|(i, &l)| {
                let shown = if from_f32 {
                    (l as f32).to_string()
                } else {
                    l.to_string()
                };
                if !l.is_finite() || l.fract() != 0.0 {
                    return Err(self.err(
                        key,
                        format!("sample {i}: length {shown} is not a whole number"),
                    ));
                }
                if l < 0.0 || l > t as f64 {
                    return Err(self.err(
                        key,
                        format!("sample {i}: length {shown} outside 0..={t} (the array's T)"),
                    ));
                }
                Ok(l as usize)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// A converted split and, when samples must be dropped, which to keep.
type SplitOut = (Split, Option<Vec<bool>>);

fn mult_split(cx: &mut SplitCx, opts: &LoadOptions) -> Result<SplitOut, DataError> {
    let [text, audio, vision] = cx.modalities()?;
    let n = text.shape[0];
    let labels = cx.numeric("labels", &[1, 2, 3])?;
    let (labels, keep) = mult_labels(cx, labels, n, opts)?;
    let ids = cx.ids("id", n)?;
    let non_finite = [text.non_finite, audio.non_finite, vision.non_finite];
    let [text, audio, vision] = [text, audio, vision].map(|m| {
        let (t, d) = (m.shape[1], m.shape[2]);
        Modality::from_left_padded(m.values, n, t, d)
    });
    let split = Split {
        text,
        audio,
        vision,
        labels,
        ids,
        non_finite,
        intervals: None,
    };
    Ok((split, keep))
}

fn mult_labels(
    cx: &SplitCx,
    labels: Numeric,
    n: usize,
    opts: &LoadOptions,
) -> Result<(Labels, Option<Vec<bool>>), DataError> {
    let shape = labels.shape.as_slice();
    if shape.first() != Some(&n) {
        return Err(cx.err(
            "labels",
            format!("shape {shape:?} does not match {n} samples"),
        ));
    }
    let emotion = shape == [n, 4, 2];
    if !emotion && !shape.iter().skip(1).all(|&d| d == 1) {
        return Err(cx.err(
            "labels",
            format!("shape {shape:?}: expected (N,1,1) sentiment or (N,4,2) IEMOCAP one-hot"),
        ));
    }
    let per_sample = if emotion { 8 } else { 1 };
    let keep = clean::label_policy(
        cx.path,
        cx.split,
        "labels",
        &labels.values,
        per_sample,
        opts,
    )?;
    let labels = if emotion {
        let argmax = labels
            .values
            .chunks_exact(2)
            .map(|pair| u8::from(pair[1] > pair[0]))
            .collect();
        Labels::Emotion(argmax)
    } else {
        Labels::Sentiment(labels.values)
    };
    Ok((labels, keep))
}

fn mmsa_split(cx: &mut SplitCx, opts: &LoadOptions) -> Result<SplitOut, DataError> {
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
    let keep = clean::label_policy(
        cx.path,
        cx.split,
        "regression_labels",
        &labels.values,
        1,
        opts,
    )?;
    let ids = cx.ids("id", n)?;
    let non_finite = [text.non_finite, audio.non_finite, vision.non_finite];
    let split = Split {
        text: left_pad(text, text_lengths),
        audio: left_pad(audio, audio_lengths),
        vision: left_pad(vision, vision_lengths),
        labels: Labels::Sentiment(labels.values),
        ids,
        non_finite,
        intervals: None,
    };
    Ok((split, keep))
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
