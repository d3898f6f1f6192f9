//! CMU-MultimodalSDK computational sequences (`.csd`, HDF5), read with mica's own bounded
//! HDF5 subset reader ([`super::hdf5`]).
//!
//! Layout (both the SDK's current writer, chunked + gzip, and the v1.1 writer, contiguous):
//! ```text
//! /<root>/data/<video>/features    (n, d)  float32 / float64, or fixed-length byte strings
//! /<root>/data/<video>/intervals   (n, 2)  float64 [start, end] seconds
//! /<root>/metadata/<key>           (1,)    variable-length string (JSON or raw text)
//! ```
//! The root is the first top-level group, as the SDK takes it. Videos come in HDF5's
//! byte-wise name order (the SDK's order). [`CsdReader`] reads one video at a time (what
//! `mica import-csd` streams); [`ComputationalSequence::read`] reads a whole file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::DataError;
use super::hdf5::{DatasetInfo, Dtype, FileSource, Hdf5, Hdf5Error, ReadAt};

/// Feature values of one video.
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// `float32` features, `[n, d]` row-major, as stored (non-finite values kept).
    F32(Vec<f32>),
    /// `float64` features, `[n, d]` row-major, as stored (non-finite values kept).
    F64(Vec<f64>),
    /// Byte strings (e.g. words), one per element (`d` is then 1), trailing NULs removed.
    Strings(Vec<String>),
}

impl Features {
    /// Number of non-finite numbers (0 for strings).
    pub fn non_finite(&self) -> u64 {
        match self {
            Features::F32(v) => v.iter().filter(|x| !x.is_finite()).count() as u64,
            Features::F64(v) => v.iter().filter(|x| !x.is_finite()).count() as u64,
            Features::Strings(_) => 0,
        }
    }

    /// Replaces every non-finite number with 0; returns how many were replaced.
    pub fn zero_non_finite(&mut self) -> u64 {
        fn z<T: Copy + PartialEq>(v: &mut [T], ok: impl Fn(T) -> bool, zero: T) -> u64 {
            let mut n = 0;
            for x in v.iter_mut().filter(|x| !ok(**x)) {
                *x = zero;
                n += 1;
            }
            n
        }
        match self {
            Features::F32(v) => z(v, f32::is_finite, 0.0),
            Features::F64(v) => z(v, f64::is_finite, 0.0),
            Features::Strings(_) => 0,
        }
    }

    /// The `i`-th value (row-major) widened to f64 (`None` for strings or out of range).
    pub fn get(&self, i: usize) -> Option<f64> {
        match self {
            Features::F32(v) => v.get(i).map(|&x| f64::from(x)),
            Features::F64(v) => v.get(i).copied(),
            Features::Strings(_) => None,
        }
    }
}

/// One video of a computational sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Number of elements (rows).
    pub n: usize,
    /// Feature dimension (1 for strings).
    pub d: usize,
    /// `[n, d]` features.
    pub features: Features,
    /// `[n, 2]` (start, end) seconds, row-major.
    pub intervals: Vec<f64>,
    /// The features' element type as stored.
    pub dtype: Dtype,
}

/// A whole computational sequence in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputationalSequence {
    /// Name of the root group (e.g. `COVAREP`).
    pub root: String,
    /// Metadata as stored (JSON text in the current SDK's files, raw text in old ones).
    pub metadata: BTreeMap<String, String>,
    /// Videos in HDF5 name order (byte-wise, as the SDK iterates them).
    pub videos: BTreeMap<String, Video>,
    /// Non-finite feature values replaced by 0 on [`ComputationalSequence::read`].
    pub non_finite: u64,
}

impl ComputationalSequence {
    /// Reads a whole `.csd` file; non-finite features become 0 and are counted.
    pub fn read(path: &Path) -> Result<Self, DataError> {
        Self::from_reader(&CsdReader::open(path)?)
    }

    /// Reads a whole `.csd` image held in memory (`name` is used in errors).
    pub fn from_bytes(name: &Path, bytes: &[u8]) -> Result<Self, DataError> {
        Self::from_reader(&CsdReader::from_source(name, bytes)?)
    }

    fn from_reader<R: ReadAt>(r: &CsdReader<R>) -> Result<Self, DataError> {
        let mut videos = BTreeMap::new();
        let mut non_finite = 0;
        for id in r.video_ids() {
            let mut v = r.read_video(id)?;
            non_finite += v.features.zero_non_finite();
            videos.insert(id.to_string(), v);
        }
        Ok(ComputationalSequence {
            root: r.root().to_string(),
            metadata: r.metadata()?,
            videos,
            non_finite,
        })
    }
}

/// An open `.csd` file, read video by video.
pub struct CsdReader<R: ReadAt = FileSource> {
    path: PathBuf,
    h5: Hdf5<R>,
    root: String,
    videos: Vec<(String, u64)>,
    index: std::collections::HashMap<String, u64>,
    metadata: Option<u64>,
}

impl CsdReader<FileSource> {
    /// Opens a `.csd` file and lists its videos.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
        let src = FileSource::new(file).map_err(|e| DataError::io(path, "cannot read", e))?;
        Self::from_source(path, src)
    }
}

impl<R: ReadAt> CsdReader<R> {
    /// Opens a `.csd` image from any random-access source (`path` is used in errors).
    pub fn from_source(path: &Path, src: R) -> Result<Self, DataError> {
        let h5err =
            |e: Hdf5Error| DataError::format(path, format!("not a readable .csd file: {e}"));
        let h5 = Hdf5::open(src).map_err(h5err)?;
        let top = h5.group_entries(h5.root()).map_err(h5err)?;
        let Some((root, root_at)) = top.into_iter().next() else {
            return Err(DataError::format(
                path,
                "no top-level group: not a computational sequence",
            ));
        };
        let entries = h5.group_entries(root_at).map_err(h5err)?;
        let find = |n: &str| entries.iter().find(|(k, _)| k == n).map(|(_, a)| *a);
        let Some(data) = find("data") else {
            return Err(DataError::format(
                path,
                format!("group '/{root}/data' missing: not a computational sequence"),
            ));
        };
        let metadata = find("metadata");
        let videos = h5
            .group_entries(data)
            .map_err(|e| DataError::format(path, format!("group '/{root}/data': {e}")))?;
        let index = videos.iter().cloned().collect();
        Ok(CsdReader {
            path: path.to_path_buf(),
            h5,
            root,
            videos,
            index,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Name of the root group.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Video ids in HDF5 name order.
    pub fn video_ids(&self) -> impl Iterator<Item = &str> {
        self.videos.iter().map(|(n, _)| n.as_str())
    }

    /// True when the file has a video `id`.
    pub fn has_video(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    fn err(&self, place: &str, e: impl std::fmt::Display) -> DataError {
        DataError::format(&self.path, format!("'/{}/{place}': {e}", self.root))
    }

    /// Metadata key → stored string (JSON text or raw text, as written).
    pub fn metadata(&self) -> Result<BTreeMap<String, String>, DataError> {
        let mut out = BTreeMap::new();
        let Some(group) = self.metadata else {
            return Ok(out);
        };
        let keys = self
            .h5
            .group_entries(group)
            .map_err(|e| self.err("metadata", e))?;
        for (key, at) in keys {
            let place = format!("metadata/{key}");
            let ds = self.h5.dataset(at).map_err(|e| self.err(&place, e))?;
            let values = match ds.dtype {
                Dtype::VlenString => self.h5.read_vlen_strings(&ds),
                Dtype::FixedString(_) => self
                    .h5
                    .read_raw(&ds)
                    .map(|raw| fixed_strings(&raw, ds.elem_size)),
                _ => {
                    return Err(self.err(&place, "metadata is not a string"));
                }
            }
            .map_err(|e| self.err(&place, e))?;
            out.insert(key, values.into_iter().next().unwrap_or_default());
        }
        Ok(out)
    }

    /// Reads one video's features and intervals (non-finite features kept as stored).
    pub fn read_video(&self, id: &str) -> Result<Video, DataError> {
        let Some(&at) = self.index.get(id) else {
            return Err(DataError::format(
                &self.path,
                format!("video '{id}' not in '/{}/data'", self.root),
            ));
        };
        let place = format!("data/{id}");
        let entries = self.h5.group_entries(at).map_err(|e| self.err(&place, e))?;
        let get = |name: &str| -> Result<DatasetInfo, DataError> {
            let p = format!("{place}/{name}");
            let a = entries
                .iter()
                .find(|(k, _)| k == name)
                .ok_or_else(|| self.err(&p, "missing"))?
                .1;
            self.h5.dataset(a).map_err(|e| self.err(&p, e))
        };
        let (f, iv) = (get("features")?, get("intervals")?);
        let fp = format!("{place}/features");
        let ip = format!("{place}/intervals");
        let (n, d) = match f.shape[..] {
            [n, d] => (n, d),
            [n] => (n, 1),
            _ => return Err(self.err(&fp, format!("shape {:?}, expected (n, d)", f.shape))),
        };
        if iv.shape[..] != [n, 2] {
            return Err(self.err(
                &ip,
                format!(
                    "shape {:?}, expected ({n}, 2) to match the features",
                    iv.shape
                ),
            ));
        }
        let raw = self.h5.read_raw(&f).map_err(|e| self.err(&fp, e))?;
        let features = match f.dtype {
            Dtype::Float(4) => Features::F32(le_f32(&raw)),
            Dtype::Float(_) => Features::F64(le_f64(&raw)),
            Dtype::FixedString(w) => {
                if d != 1 {
                    return Err(self.err(&fp, format!("{d} strings per element, expected 1")));
                }
                Features::Strings(fixed_strings(&raw, w))
            }
            Dtype::Int { size, signed } => Features::F64(ints(&raw, size, signed)),
            Dtype::VlenString => Features::Strings(
                self.h5
                    .read_vlen_strings(&f)
                    .map_err(|e| self.err(&fp, e))?,
            ),
        };
        let iraw = self.h5.read_raw(&iv).map_err(|e| self.err(&ip, e))?;
        let intervals = match iv.dtype {
            Dtype::Float(4) => le_f32(&iraw).into_iter().map(f64::from).collect(),
            Dtype::Float(_) => le_f64(&iraw),
            Dtype::Int { size, signed } => ints(&iraw, size, signed),
            _ => return Err(self.err(&ip, "intervals are not numbers")),
        };
        if let Some(k) = intervals.iter().position(|x| !x.is_finite()) {
            return Err(self.err(&ip, format!("row {} holds a non-finite time", k / 2)));
        }
        Ok(Video {
            n: n as usize,
            d: d as usize,
            features,
            intervals,
            dtype: f.dtype,
        })
    }
}

fn le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn le_f64(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

fn ints(b: &[u8], size: usize, signed: bool) -> Vec<f64> {
    b.chunks_exact(size)
        .map(|c| {
            let mut buf = [0u8; 8];
            buf[..size].copy_from_slice(c);
            let u = u64::from_le_bytes(buf);
            if signed && size < 8 && c[size - 1] & 0x80 != 0 {
                (u as i64 - (1i64 << (8 * size))) as f64
            } else if signed {
                u as i64 as f64
            } else {
                u as f64
            }
        })
        .collect()
}

fn fixed_strings(raw: &[u8], width: usize) -> Vec<String> {
    raw.chunks_exact(width.max(1))
        .map(|c| {
            let end = c.iter().position(|&x| x == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect()
}
