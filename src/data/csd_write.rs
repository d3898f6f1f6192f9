//! Streaming output of `mica import-csd`: the large per-split tensors (features and element
//! intervals) are appended segment by segment to spill files in the output directory and
//! assembled into mica-format safetensors at the end, so peak memory stays at one video
//! plus the small per-sample arrays (lengths, labels, ids), not the whole output.
//!
//! The files written are byte-identical to [`super::mica_format::save`] of the same data
//! (same tensor order, header and manifest), and as atomic: every file is written under a
//! temporary name, fsynced and renamed; the manifest is removed first and written last.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::csd_import::Rows;
use super::error::DataError;
use super::mica_format::{SplitEntry, FORMAT_NAME, FORMAT_VERSION};
use super::{Intervals, Labels, Modality, Split, MODALITIES};

/// Where one large f32 tensor of a split accumulates.
pub enum Store {
    /// In memory.
    Mem(Vec<f32>),
    /// Appended to a spill file (removed when dropped).
    Spill {
        /// The spill file.
        path: PathBuf,
        /// Its writer (`None` once finished).
        w: Option<BufWriter<File>>,
        /// Values written.
        n: u64,
    },
}

impl Store {
    /// A spill file `path` (created, truncated).
    pub fn spill(path: PathBuf) -> Result<Store, DataError> {
        let f = File::create(&path).map_err(|e| DataError::io(&path, "cannot create", e))?;
        Ok(Store::Spill {
            path,
            w: Some(BufWriter::with_capacity(1 << 20, f)),
            n: 0,
        })
    }

    /// Appends values.
    pub fn extend(&mut self, vals: &[f32]) -> Result<(), DataError> {
        match self {
            Store::Mem(v) => v.extend_from_slice(vals),
            Store::Spill { path, w, n } => {
                let w = w
                    .as_mut()
                    .ok_or_else(|| DataError::format(path, "spill file already finished"))?;
                let mut buf = Vec::with_capacity(vals.len() * 4);
                for x in vals {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
                w.write_all(&buf)
                    .map_err(|e| DataError::io(path, "cannot write", e))?;
                *n += vals.len() as u64;
            }
        }
        Ok(())
    }

    /// Number of values stored.
    pub fn len(&self) -> u64 {
        match self {
            Store::Mem(v) => v.len() as u64,
            Store::Spill { n, .. } => *n,
        }
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Store::Spill { path, w, .. } = self {
            drop(w.take());
            let _ = fs::remove_file(path);
        }
    }
}

/// A split being built: large tensors in [`Store`]s (memory or spill files), the small
/// per-sample arrays in memory.
pub(crate) struct SplitBuf {
    pub(crate) data: [Store; 3],
    pub(crate) lengths: [Vec<usize>; 3],
    pub(crate) iv: [Store; 3],
    pub(crate) labels: Vec<f32>,
    pub(crate) ids: Vec<String>,
    pub(crate) replaced: [u64; 3],
}

impl SplitBuf {
    pub(crate) fn new(
        mut store: impl FnMut(&str) -> Result<Store, DataError>,
    ) -> Result<Self, DataError> {
        let mut stores = |kind: &str| -> Result<[Store; 3], DataError> {
            Ok([
                store(&format!("{}{kind}", MODALITIES[0]))?,
                store(&format!("{}{kind}", MODALITIES[1]))?,
                store(&format!("{}{kind}", MODALITIES[2]))?,
            ])
        };
        Ok(SplitBuf {
            data: stores("")?,
            iv: stores("_intervals")?,
            lengths: Default::default(),
            labels: Vec::new(),
            ids: Vec::new(),
            replaced: [0; 3],
        })
    }

    /// Appends modality `m` of a segment: the last `t` rows, zeros (NaN times) on the left.
    /// Returns whether rows were cut.
    pub(crate) fn push_rows(&mut self, m: usize, rows: &Rows, t: usize) -> Result<bool, DataError> {
        let n = rows.len();
        let keep = n.min(t);
        let pad = t - keep;
        let mut data = vec![0.0f32; pad * rows.d];
        let mut iv = vec![f32::NAN; pad * 2];
        for i in n - keep..n {
            for &x in rows.row(i) {
                let y = x as f32;
                if y.is_finite() {
                    data.push(y);
                } else {
                    data.push(0.0);
                    self.replaced[m] += 1;
                }
            }
            iv.extend([rows.iv[i][0] as f32, rows.iv[i][1] as f32]);
        }
        self.data[m].extend(&data)?;
        self.iv[m].extend(&iv)?;
        self.lengths[m].push(keep);
        Ok(n > t)
    }

    /// The in-memory split (stores must be [`Store::Mem`]).
    pub(crate) fn into_split(mut self, t: [usize; 3], d: [usize; 3]) -> Split {
        let n = self.labels.len();
        let take = |s: &mut Store| match s {
            Store::Mem(v) => std::mem::take(v),
            Store::Spill { .. } => Vec::new(),
        };
        let data = [
            take(&mut self.data[0]),
            take(&mut self.data[1]),
            take(&mut self.data[2]),
        ];
        let iv = [
            take(&mut self.iv[0]),
            take(&mut self.iv[1]),
            take(&mut self.iv[2]),
        ];
        let [dt, da, dv] = data;
        let [lt, la, lv] = std::mem::take(&mut self.lengths);
        let mk = |data, m: usize, lengths| Modality {
            data,
            n,
            t: t[m],
            d: d[m],
            lengths,
        };
        Split {
            text: mk(dt, 0, lt),
            audio: mk(da, 1, la),
            vision: mk(dv, 2, lv),
            labels: Labels::Sentiment(std::mem::take(&mut self.labels)),
            ids: Some(std::mem::take(&mut self.ids)),
            non_finite: self.replaced,
            intervals: Some(Intervals { per_modality: iv }),
        }
    }

    /// Writes the split as `<dir>/<name>.safetensors` (the tensors `mica_format::save`
    /// writes, in its order); returns its manifest entry.
    pub(crate) fn write(
        &mut self,
        dir: &Path,
        name: &str,
        t: [usize; 3],
        d: [usize; 3],
    ) -> Result<SplitEntry, DataError> {
        let n = self.labels.len();
        let file = format!("{name}.safetensors");
        let [d0, d1, d2] = &mut self.data;
        let [i0, i1, i2] = &mut self.iv;
        let mut tensors = Vec::new();
        for (m, s) in [d0, d1, d2].into_iter().enumerate() {
            tensors.push(TensorOut {
                name: MODALITIES[m].into(),
                dtype: "F32",
                shape: vec![n, t[m], d[m]],
                data: DataOut::Store(s),
            });
        }
        for (m, l) in self.lengths.iter().enumerate() {
            let v = l.iter().map(|&x| x as i64).collect();
            tensors.push(TensorOut {
                name: format!("{}_lengths", MODALITIES[m]),
                dtype: "I64",
                shape: vec![n],
                data: DataOut::I64(v),
            });
        }
        tensors.push(TensorOut {
            name: "labels".into(),
            dtype: "F32",
            shape: vec![n],
            data: DataOut::F32(&self.labels),
        });
        for (m, s) in [i0, i1, i2].into_iter().enumerate() {
            tensors.push(TensorOut {
                name: format!("{}_intervals", MODALITIES[m]),
                dtype: "F32",
                shape: vec![n, t[m], 2],
                data: DataOut::Store(s),
            });
        }
        let shapes = tensors
            .iter()
            .map(|x| (x.name.clone(), x.shape.clone()))
            .collect();
        let (bytes, sha256) = write_safetensors(&dir.join(&file), &mut tensors)?;
        Ok(SplitEntry {
            file,
            bytes,
            sha256,
            n,
            labels: "sentiment".into(),
            shapes,
            ids: Some(self.ids.clone()),
            non_finite: MODALITIES
                .iter()
                .zip(self.replaced)
                .map(|(m, c)| (m.to_string(), c))
                .collect(),
        })
    }
}

/// One tensor of a split file: name, dtype, shape and where its bytes come from.
pub struct TensorOut<'a> {
    /// Tensor name.
    pub name: String,
    /// `F32` or `I64`.
    pub dtype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Its data.
    pub data: DataOut<'a>,
}

/// Bytes of a [`TensorOut`].
pub enum DataOut<'a> {
    /// A store (memory or spill file) of f32 values.
    Store(&'a mut Store),
    /// f32 values in memory.
    F32(&'a [f32]),
    /// i64 values in memory.
    I64(Vec<i64>),
}

impl DataOut<'_> {
    fn byte_len(&self) -> u64 {
        match self {
            DataOut::Store(s) => s.len() * 4,
            DataOut::F32(v) => v.len() as u64 * 4,
            DataOut::I64(v) => v.len() as u64 * 8,
        }
    }
}

/// The safetensors header mica writes (same bytes as `mica_format::save`).
fn header(tensors: &[TensorOut<'_>]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert(
        "__metadata__".into(),
        serde_json::json!({"format": FORMAT_NAME, "version": FORMAT_VERSION.to_string()}),
    );
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.data.byte_len();
        map.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::Value::Object(map).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    h
}

struct Hashing {
    w: BufWriter<File>,
    h: Sha256,
    n: u64,
}

impl Hashing {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.h.update(b);
        self.n += b.len() as u64;
        self.w.write_all(b)
    }
}

fn put_f32(out: &mut Hashing, v: &[f32]) -> std::io::Result<()> {
    for c in v.chunks(8192) {
        let b: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
        out.put(&b)?;
    }
    Ok(())
}

fn write_file(tmp: &Path, tensors: &mut [TensorOut<'_>]) -> std::io::Result<(u64, String)> {
    let mut out = Hashing {
        w: BufWriter::with_capacity(1 << 20, File::create(tmp)?),
        h: Sha256::new(),
        n: 0,
    };
    let h = header(tensors);
    out.put(&(h.len() as u64).to_le_bytes())?;
    out.put(&h)?;
    for t in tensors.iter_mut() {
        match &mut t.data {
            DataOut::Store(Store::Mem(v)) => put_f32(&mut out, v)?,
            DataOut::F32(v) => put_f32(&mut out, v)?,
            DataOut::I64(v) => {
                let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                out.put(&b)?;
            }
            DataOut::Store(Store::Spill { path, w, .. }) => {
                if let Some(mut w) = w.take() {
                    w.flush()?;
                }
                let mut r = BufReader::with_capacity(1 << 20, File::open(&*path)?);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let k = r.read(&mut buf)?;
                    if k == 0 {
                        break;
                    }
                    out.put(&buf[..k])?;
                }
            }
        }
    }
    out.w.flush()?;
    out.w.get_ref().sync_all()?;
    Ok((
        out.n,
        out.h
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    ))
}

/// A hidden temporary name next to `path`.
pub fn temp_path(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `tensors` as the safetensors file `path` (temporary name, fsync, rename);
/// returns its size and sha256.
pub fn write_safetensors(
    path: &Path,
    tensors: &mut [TensorOut<'_>],
) -> Result<(u64, String), DataError> {
    let tmp = temp_path(path, "tmp");
    let r = write_file(&tmp, tensors);
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let r = r.map_err(|e| DataError::io(&tmp, "cannot write", e))?;
    fs::rename(&tmp, path).map_err(|e| DataError::io(path, "cannot rename", e))?;
    Ok(r)
}

/// Writes `bytes` to `path` atomically (temporary name, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = temp_path(path, "tmp");
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(DataError::io(&tmp, "cannot write", e));
    }
    fs::rename(&tmp, path).map_err(|e| DataError::io(path, "cannot rename", e))
}
