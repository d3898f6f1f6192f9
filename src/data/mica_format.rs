//! mica's own dataset format: a directory with one safetensors file per split plus a
//! `manifest.json`.
//!
//! Each `<split>.safetensors` holds (little-endian, C order):
//! * `text`, `audio`, `vision`: `F32 [N, T, D]`, LEFT zero-padded, non-finite values already 0;
//! * `text_lengths`, `audio_lengths`, `vision_lengths`: `I64 [N]` real frames per sample;
//! * `labels`: `F32 [N]` (sentiment) or `U8 [N, 4]` (IEMOCAP emotions, 0/1);
//! * optionally `text_intervals`, `audio_intervals`, `vision_intervals`: `F32 [N, T, 2]`
//!   (start, end) seconds, `NaN` on padding.
//!
//! `manifest.json` ([`Manifest`]) records the format version, the source format and
//! provenance, and per split: file name, byte size, sha256, N, label kind, tensor shapes,
//! ids and the non-finite counts of the conversion. [`load`] checks size and sha256 of every
//! data file, so a truncated or corrupted copy is reported by name instead of read.
//! [`save`] writes the whole dataset into a temporary sibling directory (every file fsynced,
//! the manifest last) and only then swaps it in by rename, so an existing dataset at the
//! output path stays intact until the new one is complete (a full disk leaves it as it was).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::DataError;
use super::pickle_dataset::{ArraySummary, Inspection};
use super::{Dataset, Intervals, Labels, Modality, Split, MODALITIES};

/// Name of the manifest file in a mica dataset directory.
pub const MANIFEST: &str = "manifest.json";
/// Value of [`Manifest::format`].
pub const FORMAT_NAME: &str = "mica-dataset";
/// Current format version.
pub const FORMAT_VERSION: u32 = 1;

const MAX_HEADER: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 8 * 1024 * 1024;

/// Tensors of every split: split name → tensor name → tensor.
pub type SplitTensors = BTreeMap<String, BTreeMap<String, Tensor>>;

/// The `manifest.json` of a mica dataset directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Format of the data the directory was made from (`mult`, `mmsa`, `synth`, ...).
    pub source_format: String,
    /// Free-form provenance of the data.
    pub provenance: String,
    /// Splits by name.
    pub splits: BTreeMap<String, SplitEntry>,
}

/// One split of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitEntry {
    /// File name of the split's safetensors file, relative to the directory.
    pub file: String,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// sha256 of the file, lower-case hex.
    pub sha256: String,
    /// Number of samples.
    pub n: usize,
    /// `sentiment` or `emotion`.
    pub labels: String,
    /// Tensor name → shape.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Segment ids, when known.
    pub ids: Option<Vec<String>>,
    /// Non-finite values replaced by 0 when the data was read, per modality.
    pub non_finite: BTreeMap<String, u64>,
}

/// Element data of a tensor read from a mica safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `F32`.
    F32(Vec<f32>),
    /// `I64`.
    I64(Vec<i64>),
    /// `U8`.
    U8(Vec<u8>),
}

/// A tensor read from a mica safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, C order.
    pub data: TensorData,
}

impl Tensor {
    /// numpy-style dtype name (`float32`, `int64`, `uint8`).
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            TensorData::F32(_) => "float32",
            TensorData::I64(_) => "int64",
            TensorData::U8(_) => "uint8",
        }
    }

    /// Summary as `mica inspect --json` prints it (non-finite values count and sum as 0).
    pub fn summary(&self) -> ArraySummary {
        let (sum, bad) = match &self.data {
            TensorData::F32(v) => v.iter().fold((0.0, 0), |(s, b), &x| {
                if x.is_finite() {
                    (s + f64::from(x), b)
                } else {
                    (s, b + 1)
                }
            }),
            TensorData::I64(v) => (v.iter().map(|&x| f64::from(x as f32)).sum(), 0),
            TensorData::U8(v) => (v.iter().map(|&x| f64::from(x)).sum(), 0),
        };
        ArraySummary {
            dtype: self.dtype_name().to_string(),
            shape: self.shape.clone(),
            sum_f32_clean: sum,
            non_finite_after_f32_cast: bad,
        }
    }
}

/// A tensor to write.
enum Out<'a> {
    F32(&'a [f32]),
    I64(Vec<i64>),
    U8(&'a [u8]),
}

impl Out<'_> {
    fn dtype(&self) -> &'static str {
        match self {
            Out::F32(_) => "F32",
            Out::I64(_) => "I64",
            Out::U8(_) => "U8",
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            Out::F32(v) => v.len() * 4,
            Out::I64(v) => v.len() * 8,
            Out::U8(v) => v.len(),
        }
    }
}

/// A writer that hashes and counts what it writes.
struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl HashingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.inner.write_all(data)
    }
}

/// Writes `ds` to `dir` in mica's format: into a temporary sibling directory first, then
/// renamed into place (an existing mica dataset at `dir` is replaced only then). A
/// non-empty `dir` that is not a mica dataset is refused.
pub fn save(ds: &Dataset, dir: &Path) -> Result<(), DataError> {
    check_output(dir)?;
    let tmp = temp_path(dir);
    // Temporaries of earlier, killed saves to the same path.
    let stale = format!(
        ".{}.tmp-",
        dir.file_name()
            .map_or_else(|| "data".into(), |n| n.to_string_lossy())
    );
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(entries) = fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stale) && e.path().is_dir() {
                fs::remove_dir_all(e.path())
                    .map_err(|err| DataError::io(&e.path(), "cannot remove", err))?;
            }
        }
    }
    fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, "cannot create directory", e))?;
    if let Err(e) = save_into(ds, &tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let sync =
        |d: &Path| crate::durable::sync_dir(d).map_err(|e| DataError::format(d, format!("{e:#}")));
    sync(&tmp)?;
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name()
            .map_or_else(|| "data".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old)
            .map_err(|e| DataError::io(dir, "cannot move the old dataset aside", e))?;
    }
    fs::rename(&tmp, dir)
        .map_err(|e| DataError::io(dir, "cannot move the new dataset into place", e))?;
    sync(parent)?;
    if had_old {
        fs::remove_dir_all(&old)
            .map_err(|e| DataError::io(&old, "cannot remove the old dataset", e))?;
    }
    Ok(())
}

/// Refuses an output path for [`save`] that exists, is not empty and is not a mica
/// dataset (nothing of a foreign directory is ever replaced).
pub fn check_output(dir: &Path) -> Result<(), DataError> {
    let empty =
        crate::durable::is_empty_dir(dir).map_err(|e| DataError::format(dir, format!("{e:#}")))?;
    if dir.exists() && !is_mica_dir(dir) && !empty {
        return Err(DataError::format(
            dir,
            "exists, is not empty and is not a mica dataset directory: choose another output path (nothing was written)",
        ));
    }
    Ok(())
}

/// Writes every file of `ds` into the (new, empty) directory `dir`, the manifest last.
fn save_into(ds: &Dataset, dir: &Path) -> Result<(), DataError> {
    let manifest_path = dir.join(MANIFEST);
    let mut splits = BTreeMap::new();
    for (name, split) in &ds.splits {
        check_split(dir, name, split)?;
        let file = format!("{name}.safetensors");
        let tensors = split_tensors(split);
        let (bytes, sha256) = write_atomic_safetensors(&dir.join(&file), &tensors)?;
        let shapes = tensors
            .iter()
            .map(|(k, shape, _)| (k.clone(), shape.clone()))
            .collect();
        let non_finite = MODALITIES
            .iter()
            .zip(split.non_finite)
            .map(|(m, c)| (m.to_string(), c))
            .collect();
        let entry = SplitEntry {
            file,
            bytes,
            sha256,
            n: split.len(),
            labels: match split.labels {
                Labels::Sentiment(_) => "sentiment".into(),
                Labels::Emotion(_) => "emotion".into(),
            },
            shapes,
            ids: split.ids.clone(),
            non_finite,
        };
        splits.insert(name.clone(), entry);
    }
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        source_format: ds.format.clone(),
        provenance: ds.provenance.clone(),
        splits,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| DataError::format(&manifest_path, format!("cannot encode manifest: {e}")))?;
    crate::durable::write_atomic(&manifest_path, &json)
        .map_err(|e| DataError::format(&manifest_path, format!("{e:#}")))
}

/// Checks that a split's buffers agree with its declared sizes before it is written.
fn check_split(dir: &Path, name: &str, split: &Split) -> Result<(), DataError> {
    let n = split.len();
    let err = |key: &str, problem: String| DataError::layout(dir, name, key, problem);
    for (key, m) in MODALITIES.iter().zip(split.modalities()) {
        let want = m.n.checked_mul(m.t).and_then(|x| x.checked_mul(m.d));
        if m.n != n || want != Some(m.data.len()) || m.lengths.len() != n {
            return Err(err(
                key,
                format!(
                    "inconsistent sizes: n {} (labels {n}), t {}, d {}, {} values, {} lengths",
                    m.n,
                    m.t,
                    m.d,
                    m.data.len(),
                    m.lengths.len()
                ),
            ));
        }
    }
    if let Labels::Emotion(v) = &split.labels {
        if v.len() % 4 != 0 {
            return Err(err("labels", format!("{} emotion values", v.len())));
        }
    }
    if let Some(ids) = &split.ids {
        if ids.len() != n {
            return Err(err("ids", format!("{} ids for {n} samples", ids.len())));
        }
    }
    if let Some(iv) = &split.intervals {
        for ((key, m), v) in MODALITIES
            .iter()
            .zip(split.modalities())
            .zip(&iv.per_modality)
        {
            if Some(v.len()) != m.n.checked_mul(m.t).and_then(|x| x.checked_mul(2)) {
                return Err(err(key, format!("{} interval values", v.len())));
            }
        }
    }
    Ok(())
}

/// The tensors of a split, in file order.
fn split_tensors(split: &Split) -> Vec<(String, Vec<usize>, Out<'_>)> {
    let mut out = Vec::new();
    for (key, m) in MODALITIES.iter().zip(split.modalities()) {
        out.push((key.to_string(), vec![m.n, m.t, m.d], Out::F32(&m.data)));
    }
    for (key, m) in MODALITIES.iter().zip(split.modalities()) {
        let lengths = m.lengths.iter().map(|&l| l as i64).collect();
        out.push((format!("{key}_lengths"), vec![m.n], Out::I64(lengths)));
    }
    match &split.labels {
        Labels::Sentiment(v) => out.push(("labels".into(), vec![v.len()], Out::F32(v))),
        Labels::Emotion(v) => out.push(("labels".into(), vec![v.len() / 4, 4], Out::U8(v))),
    }
    if let Some(iv) = &split.intervals {
        for ((key, m), v) in MODALITIES
            .iter()
            .zip(split.modalities())
            .zip(&iv.per_modality)
        {
            out.push((format!("{key}_intervals"), vec![m.n, m.t, 2], Out::F32(v)));
        }
    }
    out
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "data".to_string(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes a safetensors file under a temporary name, then renames it; returns its size and
/// sha256.
fn write_atomic_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Out<'_>)],
) -> Result<(u64, String), DataError> {
    let tmp = temp_path(path);
    let result = write_safetensors(&tmp, tensors);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let (bytes, sha) = result.map_err(|e| DataError::io(&tmp, "cannot write", e))?;
    fs::rename(&tmp, path).map_err(|e| DataError::io(path, "cannot rename", e))?;
    Ok((bytes, sha))
}

fn safetensors_header(tensors: &[(String, Vec<usize>, Out<'_>)]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert(
        "__metadata__".into(),
        serde_json::json!({"format": FORMAT_NAME, "version": FORMAT_VERSION.to_string()}),
    );
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let end = offset + data.byte_len();
        map.insert(
            name.clone(),
            serde_json::json!({"dtype": data.dtype(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::Value::Object(map).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    header
}

fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Out<'_>)],
) -> std::io::Result<(u64, String)> {
    let file = File::create(path)?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let header = safetensors_header(tensors);
    w.write(&(header.len() as u64).to_le_bytes())?;
    w.write(&header)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for (_, _, data) in tensors {
        match data {
            Out::F32(v) => write_le(&mut w, &mut buf, v, |x, b| {
                b.extend_from_slice(&x.to_le_bytes())
            })?,
            Out::I64(v) => write_le(&mut w, &mut buf, v, |x, b| {
                b.extend_from_slice(&x.to_le_bytes())
            })?,
            Out::U8(v) => w.write(v)?,
        }
    }
    w.inner.flush()?;
    w.inner.get_ref().sync_all()?;
    Ok((w.bytes, hex(&w.hasher.finalize())))
}

fn write_le<T: Copy>(
    w: &mut HashingWriter,
    buf: &mut Vec<u8>,
    values: &[T],
    put: impl Fn(T, &mut Vec<u8>),
) -> std::io::Result<()> {
    for chunk in values.chunks(8192) {
        buf.clear();
        for &x in chunk {
            put(x, buf);
        }
        w.write(buf)?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True when `path` is a mica dataset directory (has a manifest).
pub fn is_mica_dir(path: &Path) -> bool {
    path.is_dir() && path.join(MANIFEST).is_file()
}

/// Reads and checks `manifest.json` of `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, DataError> {
    let path = dir.join(MANIFEST);
    let text =
        crate::durable::read_string_capped(&path, crate::durable::SMALL_FILE_CAP, "manifest")
            .map_err(|e| {
                DataError::format(
                    &path,
                    format!("{e:#}").replace(&format!("{}: ", path.display()), ""),
                )
            })?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| DataError::format(&path, format!("invalid manifest: {e}")))?;
    if m.format != FORMAT_NAME || m.version != FORMAT_VERSION {
        return Err(DataError::format(
            &path,
            format!(
                "format {:?} version {} is not {FORMAT_NAME} version {FORMAT_VERSION}",
                m.format, m.version
            ),
        ));
    }
    Ok(m)
}

/// The tensors of every split of `dir`, after checking sizes and checksums.
pub fn read_tensors(dir: &Path) -> Result<(Manifest, SplitTensors), DataError> {
    let manifest = read_manifest(dir)?;
    let mut splits = BTreeMap::new();
    for (name, entry) in &manifest.splits {
        let plain = Path::new(&entry.file).file_name() == Some(std::ffi::OsStr::new(&entry.file));
        if !plain || entry.file.starts_with('.') {
            return Err(DataError::format(
                &dir.join(MANIFEST),
                format!(
                    "split '{name}': file name {:?} is not a plain file name",
                    entry.file
                ),
            ));
        }
        let tensors = read_safetensors(&dir.join(&entry.file), entry.bytes, &entry.sha256)?;
        splits.insert(name.clone(), tensors);
    }
    Ok((manifest, splits))
}

/// Summarises every tensor of a mica dataset directory.
pub fn inspect(dir: &Path) -> Result<Inspection, DataError> {
    let (manifest, splits) = read_tensors(dir)?;
    Ok(inspection_of(&manifest, &splits))
}

/// Summaries of every tensor; for the modalities, the non-finite count is the number of
/// values the conversion replaced by 0 (from the manifest), as the source file had them.
fn inspection_of(manifest: &Manifest, splits: &SplitTensors) -> Inspection {
    let summarise = |split: &str, key: &str, t: &Tensor| {
        let mut s = t.summary();
        let replaced = manifest
            .splits
            .get(split)
            .and_then(|e| e.non_finite.get(key))
            .copied()
            .unwrap_or(0);
        s.non_finite_after_f32_cast += replaced;
        s
    };
    Inspection {
        format: "mica".into(),
        splits: splits
            .iter()
            .map(|(s, ts)| {
                let summaries = ts
                    .iter()
                    .map(|(k, t)| (k.clone(), summarise(s, k, t)))
                    .collect();
                (s.clone(), summaries)
            })
            .collect(),
        ..Inspection::default()
    }
}

/// Loads a mica dataset directory, verifying every file's size and sha256.
pub fn load(dir: &Path) -> Result<Dataset, DataError> {
    load_with_inspection(dir).map(|(ds, _)| ds)
}

/// Loads a mica dataset directory and also summarises its tensors.
pub fn load_with_inspection(dir: &Path) -> Result<(Dataset, Inspection), DataError> {
    let (manifest, tensors) = read_tensors(dir)?;
    let inspection = inspection_of(&manifest, &tensors);
    let mut splits = BTreeMap::new();
    for (name, ts) in tensors {
        let entry = manifest
            .splits
            .get(&name)
            .ok_or_else(|| DataError::format(dir, format!("split '{name}' not in manifest")))?;
        let path = dir.join(&entry.file);
        splits.insert(name.clone(), split_from_tensors(&path, &name, entry, ts)?);
    }
    let ds = Dataset {
        format: "mica".into(),
        splits,
        provenance: manifest.provenance,
    };
    Ok((ds, inspection))
}

fn split_from_tensors(
    path: &Path,
    split: &str,
    entry: &SplitEntry,
    mut ts: BTreeMap<String, Tensor>,
) -> Result<Split, DataError> {
    let err = |key: &str, problem: String| DataError::layout(path, split, key, problem);
    let mut take = |key: &str| {
        ts.remove(key)
            .ok_or_else(|| err(key, "missing tensor".into()))
    };
    let n = entry.n;
    let mut mods = Vec::new();
    for key in MODALITIES {
        let t = take(key)?;
        let lengths = take(&format!("{key}_lengths"))?;
        let (TensorData::F32(data), [tn, tt, td]) = (t.data, t.shape.as_slice()) else {
            return Err(err(key, "expected F32 [N, T, D]".into()));
        };
        let (tn, tt, td) = (*tn, *tt, *td);
        let lengths = match (lengths.data, lengths.shape.as_slice()) {
            (TensorData::I64(v), [ln]) if *ln == n => v
                .iter()
                .map(|&l| usize::try_from(l).ok().filter(|&l| l <= tt))
                .collect::<Option<Vec<_>>>(),
            _ => None,
        }
        .ok_or_else(|| {
            err(
                &format!("{key}_lengths"),
                format!("expected I64 [{n}] within 0..={tt}"),
            )
        })?;
        if tn != n {
            return Err(err(key, format!("{tn} samples, manifest says {n}")));
        }
        mods.push(Modality {
            data,
            n,
            t: tt,
            d: td,
            lengths,
        });
    }
    let labels_t = take("labels")?;
    let labels = match (
        labels_t.data,
        labels_t.shape.as_slice(),
        entry.labels.as_str(),
    ) {
        (TensorData::F32(v), [ln], "sentiment") if *ln == n => Labels::Sentiment(v),
        (TensorData::U8(v), [ln, 4], "emotion") if *ln == n => Labels::Emotion(v),
        _ => {
            return Err(err(
                "labels",
                format!("expected F32 [{n}] sentiment or U8 [{n}, 4] emotion labels"),
            ))
        }
    };
    let intervals = read_intervals(&mut ts, &mods, &err)?;
    let ids = entry.ids.clone();
    if ids.as_ref().is_some_and(|v| v.len() != n) {
        return Err(err("ids", format!("manifest ids do not match {n} samples")));
    }
    // The format stores non-finite values as 0; any found anyway are zeroed here and
    // counted with the conversion's (so the summary agrees with `inspect`'s table).
    let mut found = [0u64; 3];
    for (m, f) in mods.iter_mut().zip(&mut found) {
        for x in m.data.iter_mut().filter(|x| !x.is_finite()) {
            *x = 0.0;
            *f += 1;
        }
    }
    let count = |k: usize| entry.non_finite.get(MODALITIES[k]).copied().unwrap_or(0) + found[k];
    let mut mods = mods.into_iter();
    let (Some(text), Some(audio), Some(vision)) = (mods.next(), mods.next(), mods.next()) else {
        return Err(err("-", "missing modality".into()));
    };
    Ok(Split {
        text,
        audio,
        vision,
        labels,
        ids,
        non_finite: [count(0), count(1), count(2)],
        intervals,
    })
}

fn read_intervals(
    ts: &mut BTreeMap<String, Tensor>,
    mods: &[Modality],
    err: &dyn Fn(&str, String) -> DataError,
) -> Result<Option<Intervals>, DataError> {
    let keys = MODALITIES.map(|k| format!("{k}_intervals"));
    let present = keys.iter().filter(|k| ts.contains_key(*k)).count();
    if present == 0 {
        return Ok(None);
    }
    let mut per = Vec::new();
    for (key, m) in keys.iter().zip(mods) {
        let t = ts
            .remove(key)
            .ok_or_else(|| err(key, "missing (other modalities have intervals)".into()))?;
        match (t.data, t.shape.as_slice()) {
            (TensorData::F32(v), [a, b, 2]) if *a == m.n && *b == m.t => per.push(v),
            _ => return Err(err(key, format!("expected F32 [{}, {}, 2]", m.n, m.t))),
        }
    }
    let mut per = per.into_iter();
    match (per.next(), per.next(), per.next()) {
        (Some(t), Some(a), Some(v)) => Ok(Some(Intervals {
            per_modality: [t, a, v],
        })),
        _ => Err(err("intervals", "missing".into())),
    }
}

/// One tensor entry of a safetensors header.
#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads a safetensors file written by [`save`], streaming, while checking its size and
/// sha256 against the manifest.
fn read_safetensors(
    path: &Path,
    expected_bytes: u64,
    expected_sha: &str,
) -> Result<BTreeMap<String, Tensor>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let size = file
        .metadata()
        .map_err(|e| DataError::io(path, "cannot stat", e))?
        .len();
    if size != expected_bytes {
        return Err(DataError::format(
            path,
            format!(
                "file is {size} bytes but the manifest says {expected_bytes}: truncated or \
                 incomplete copy"
            ),
        ));
    }
    let mut r = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        path,
    };
    let header_len = u64::from_le_bytes(r.fixed::<8>()?);
    if header_len > MAX_HEADER || header_len > size - 8 {
        return Err(DataError::format(
            path,
            format!("bad safetensors header size {header_len}"),
        ));
    }
    let header = r.bytes(header_len as usize)?;
    let data_len = size - 8 - header_len;
    let entries = parse_header(path, &header, data_len)?;
    let mut out = BTreeMap::new();
    for (name, e) in entries {
        let len = e.data_offsets[1] - e.data_offsets[0];
        let data = match e.dtype.as_str() {
            "F32" => TensorData::F32(r.values(len, f32::from_le_bytes)?),
            "I64" => TensorData::I64(r.values(len, i64::from_le_bytes)?),
            "U8" => TensorData::U8(r.bytes(len as usize)?),
            _ => unreachable_dtype(path, &name)?,
        };
        out.insert(
            name,
            Tensor {
                shape: e.shape,
                data,
            },
        );
    }
    let actual = hex(&r.hasher.finalize());
    if actual != expected_sha {
        return Err(DataError::Checksum {
            path: path.display().to_string(),
            expected: expected_sha.to_string(),
            actual,
        });
    }
    Ok(out)
}

fn unreachable_dtype<T>(path: &Path, name: &str) -> Result<T, DataError> {
    Err(DataError::format(
        path,
        format!("tensor '{name}': unsupported dtype"),
    ))
}

/// Parses and validates a safetensors header: known dtypes, sizes matching shapes, tensors
/// contiguous and covering exactly `data_len` bytes. Returns the entries in file order.
fn parse_header(
    path: &Path,
    header: &[u8],
    data_len: u64,
) -> Result<Vec<(String, HeaderEntry)>, DataError> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| DataError::format(path, format!("bad safetensors header: {e}")))?;
    let mut entries = Vec::new();
    for (name, value) in map {
        if name == "__metadata__" {
            continue;
        }
        let e: HeaderEntry = serde_json::from_value(value)
            .map_err(|err| DataError::format(path, format!("tensor '{name}': {err}")))?;
        let item = match e.dtype.as_str() {
            "F32" => 4u64,
            "I64" => 8,
            "U8" => 1,
            other => {
                return Err(DataError::format(
                    path,
                    format!("tensor '{name}': unsupported dtype {other}"),
                ))
            }
        };
        let want = e
            .shape
            .iter()
            .try_fold(item, |acc, &d| acc.checked_mul(d as u64));
        let [b, end] = e.data_offsets;
        if end < b || want != Some(end - b) {
            return Err(DataError::format(
                path,
                format!(
                    "tensor '{name}': byte range does not match shape {:?}",
                    e.shape
                ),
            ));
        }
        entries.push((name, e));
    }
    entries.sort_by_key(|(_, e)| e.data_offsets[0]);
    let mut pos = 0u64;
    for (name, e) in &entries {
        if e.data_offsets[0] != pos {
            return Err(DataError::format(
                path,
                format!("tensor '{name}': data not contiguous"),
            ));
        }
        pos = e.data_offsets[1];
    }
    if pos != data_len {
        return Err(DataError::format(
            path,
            format!("tensors cover {pos} bytes, the file holds {data_len}"),
        ));
    }
    Ok(entries)
}

/// A reader that hashes what it reads.
struct HashingReader<'a> {
    inner: BufReader<File>,
    hasher: Sha256,
    path: &'a Path,
}

impl HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        self.inner
            .read_exact(buf)
            .map_err(|e| DataError::io(self.path, "cannot read", e))?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DataError> {
        let mut b = [0u8; N];
        self.read(&mut b)?;
        Ok(b)
    }

    /// Reads `len` bytes (already checked against the file size).
    fn bytes(&mut self, len: usize) -> Result<Vec<u8>, DataError> {
        let mut v = vec![0u8; len];
        self.read(&mut v)?;
        Ok(v)
    }

    /// Reads `len` bytes of `N`-byte little-endian values in chunks.
    fn values<T, const N: usize>(
        &mut self,
        len: u64,
        decode: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, DataError> {
        let count = (len / N as u64) as usize;
        let mut out = Vec::with_capacity(count);
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(buf.len());
            let piece = &mut buf[..n];
            self.read(piece)?;
            out.extend(piece.chunks_exact(N).map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                decode(b)
            }));
            left -= n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str, data_len: u64) -> Result<Vec<String>, String> {
        parse_header(Path::new("x.safetensors"), json.as_bytes(), data_len)
            .map(|v| v.into_iter().map(|(n, _)| n).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn safetensors_headers_are_validated() {
        let ok = r#"{"__metadata__":{"a":"b"},"b":{"dtype":"I64","shape":[2],"data_offsets":[8,24]},
                    "a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert_eq!(header(ok, 24).unwrap(), ["a", "b"], "file order");
        assert!(header(ok, 25).unwrap_err().contains("cover 24 bytes"));
        let gap = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(header(gap, 8).unwrap_err().contains("contiguous"));
        let shape = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(header(shape, 8)
            .unwrap_err()
            .contains("does not match shape"));
        let dtype = r#"{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}"#;
        assert!(header(dtype, 8).unwrap_err().contains("unsupported dtype"));
        let overflow =
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#;
        assert!(header(overflow, 8).is_err());
        let backwards = r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}}"#;
        assert!(header(backwards, 8).is_err());
        assert!(header("[1,2]", 0)
            .unwrap_err()
            .contains("bad safetensors header"));
    }

    #[test]
    fn tensor_summaries_skip_non_finite_values() {
        let t = Tensor {
            shape: vec![3],
            data: TensorData::F32(vec![1.5, f32::NAN, 2.0]),
        };
        let s = t.summary();
        assert_eq!((s.sum_f32_clean, s.non_finite_after_f32_cast), (3.5, 1));
        assert_eq!(s.dtype, "float32");
        let t = Tensor {
            shape: vec![2],
            data: TensorData::I64(vec![3, 4]),
        };
        assert_eq!(t.summary().sum_f32_clean, 7.0);
    }
}
