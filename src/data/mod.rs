//! Data: the in-memory dataset type every reader and generator produces, plus the
//! readers (MulT / MMSA pickles, mica's own format) and the synthetic benchmark.
//!
//! Layout contract (spec/data.md): every modality is `[N, T, D]` f32, LEFT zero-padded
//! (real frames at the end) so MulT's last-step read-out always sees a real frame.

pub mod batch;
pub mod clean;
pub mod csd;
pub mod csd_import;
pub mod csd_write;
pub mod doctor;
pub mod doctor_csd;
pub mod error;
pub mod fingerprint;
pub mod hdf5;
pub mod mica_format;
pub mod pickle;
pub mod pickle_dataset;
// Transitional aliases: these moved into `pickle/`.
pub use pickle::numpy as pickle_numpy;
pub use pickle::write as pickle_write;
pub mod source;
pub mod synth;
pub mod word_align;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

pub use clean::{Dropped, LoadOptions};
pub use error::DataError;
pub use pickle_dataset::{ArraySummary, Inspection};

/// The three modalities, in the fixed order used everywhere in mica (L, A, V).
pub const MODALITIES: [&str; 3] = ["text", "audio", "vision"];

/// One modality of one split: a dense `[n, t, d]` f32 array plus per-sample lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct Modality {
    /// Row-major `[n, t, d]` values.
    pub data: Vec<f32>,
    /// Number of samples.
    pub n: usize,
    /// Padded sequence length.
    pub t: usize,
    /// Feature dimension.
    pub d: usize,
    /// Number of real (non-padding) frames per sample; padding is at the START.
    pub lengths: Vec<usize>,
}

impl Modality {
    /// Builds a modality from a `[n, t, d]` buffer, deriving lengths from the leading
    /// all-zero frames (MulT's convention: `T - leading zero frames`).
    pub fn from_left_padded(data: Vec<f32>, n: usize, t: usize, d: usize) -> Self {
        assert_eq!(data.len(), n * t * d, "Modality buffer size");
        let lengths = (0..n)
            .map(|i| {
                let sample = &data[i * t * d..(i + 1) * t * d];
                let leading = (0..t)
                    .take_while(|&s| sample[s * d..(s + 1) * d].iter().all(|&x| x == 0.0))
                    .count();
                t - leading
            })
            .collect();
        Modality {
            data,
            n,
            t,
            d,
            lengths,
        }
    }

    /// The `[t, d]` slice of sample `i`.
    pub fn sample(&self, i: usize) -> &[f32] {
        &self.data[i * self.t * self.d..(i + 1) * self.t * self.d]
    }
}

/// Labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// MOSI / MOSEI: one sentiment score in [-3, 3] per sample.
    Sentiment(Vec<f32>),
    /// IEMOCAP: per sample four binary decisions (Neutral, Happy, Sad, Angry), `n * 4` values in {0, 1}.
    Emotion(Vec<u8>),
}

impl Labels {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Labels::Sentiment(v) => v.len(),
            Labels::Emotion(v) => v.len() / 4,
        }
    }
    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Ground-truth timing of every element (known for the synthetic benchmark, or from
/// CMU-SDK intervals): per modality `[n, t, 2]` (start, end) in seconds of clip time.
/// Padding elements hold `(NaN, NaN)`. Target element `i` and source element `j`
/// truly co-occur iff their intervals overlap.
#[derive(Debug, Clone, PartialEq)]
pub struct Intervals {
    /// `[text, audio, vision]`, each `[n, t, 2]` row-major.
    pub per_modality: [Vec<f32>; 3],
}

/// One split (train / valid / test) of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Text (language) features `[N, T_l, D_l]`.
    pub text: Modality,
    /// Acoustic features `[N, T_a, D_a]`.
    pub audio: Modality,
    /// Visual features `[N, T_v, D_v]`.
    pub vision: Modality,
    /// Labels.
    pub labels: Labels,
    /// Segment ids (`<video>_<clip>`), when the file has them.
    pub ids: Option<Vec<String>>,
    /// Number of non-finite values replaced by 0 on load, per modality (text, audio, vision).
    pub non_finite: [u64; 3],
    /// Ground-truth element timing, where known.
    pub intervals: Option<Intervals>,
}

impl Split {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The modalities in mica's fixed order (text, audio, vision).
    pub fn modalities(&self) -> [&Modality; 3] {
        [&self.text, &self.audio, &self.vision]
    }
}

/// A whole dataset: named splits plus where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `"mult"`, `"mmsa"`, `"mica"` or `"synth"`.
    pub format: String,
    /// Splits by name (`train`, `valid`, `test`).
    pub splits: BTreeMap<String, Split>,
    /// Free-form provenance (source file, generator settings, ...).
    pub provenance: String,
}

impl Dataset {
    /// A human-readable summary: per split the sample count, shapes, label kind, mean
    /// lengths and the number of non-finite values replaced by 0 per modality.
    pub fn summary(&self) -> String {
        let mut out = format!("format: {}\nprovenance: {}\n", self.format, self.provenance);
        for (name, s) in &self.splits {
            let labels = match &s.labels {
                Labels::Sentiment(_) => "sentiment",
                Labels::Emotion(_) => "emotion (4 binary)",
            };
            let _ = writeln!(
                out,
                "split {name}: {} samples, labels {labels}, ids {}",
                s.len(),
                if s.ids.is_some() { "yes" } else { "no" }
            );
            for ((m, key), bad) in s.modalities().iter().zip(MODALITIES).zip(s.non_finite) {
                let mean = m.lengths.iter().sum::<usize>() as f64 / m.n.max(1) as f64;
                let _ = writeln!(
                    out,
                    "  {key:<6} [{}, {}, {}]  mean length {mean:.1}  non-finite values replaced by 0: {bad}",
                    m.n, m.t, m.d
                );
            }
        }
        out
    }
}

/// What kind of dataset a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A mica dataset directory.
    MicaDir,
    /// A pickle file (MulT or MMSA layout).
    Pickle,
}

/// Tells the kind of dataset at `path` from its magic bytes (or manifest).
pub fn detect(path: &Path) -> Result<SourceKind, DataError> {
    if path.is_dir() {
        if mica_format::is_mica_dir(path) {
            return Ok(SourceKind::MicaDir);
        }
        return Err(DataError::format(
            path,
            format!(
                "directory without {}: not a mica dataset",
                mica_format::MANIFEST
            ),
        ));
    }
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let n = file
        .read(&mut magic)
        .map_err(|e| DataError::io(path, "cannot read", e))?;
    match magic.get(..n) {
        Some([0x80, ..]) => Ok(SourceKind::Pickle),
        Some([0x89, b'H', b'D', b'F']) => Err(DataError::format(
            path,
            "HDF5 (a CMU-MultimodalSDK .csd computational sequence): build a dataset from the \
             .csd files with `mica import-csd`",
        )),
        Some([]) => Err(DataError::format(path, "empty file")),
        _ => Err(DataError::format(
            path,
            "unknown format: not a pickle (protocol 2 to 5) nor a mica dataset directory",
        )),
    }
}

/// Loads a dataset from a MulT or MMSA pickle or a mica dataset directory; non-finite
/// labels are an error.
pub fn load_any(path: &Path) -> Result<Dataset, DataError> {
    load_any_with(path, &LoadOptions::default()).map(|(ds, _)| ds)
}

/// [`load_any`] with options; also returns the samples dropped (non-finite labels, with
/// [`LoadOptions::drop_nonfinite_labels`]).
pub fn load_any_with(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Dataset, Vec<Dropped>), DataError> {
    match detect(path)? {
        SourceKind::MicaDir => {
            let mut ds = mica_format::load(path)?;
            let dropped = clean::apply_to_dataset(path, &mut ds, "labels", opts)?;
            Ok((ds, dropped))
        }
        SourceKind::Pickle => {
            let p = pickle_dataset::read_pickle(path)?;
            let layout = pickle_dataset::detect_layout(path, &p)?;
            pickle_dataset::dataset_from_pickle_with(path, p, layout, opts)
        }
    }
}

/// Loads a dataset (non-finite labels are an error) and summarises every numeric array of
/// the file as stored.
pub fn load_with_inspection(path: &Path) -> Result<(Dataset, Inspection), DataError> {
    match detect(path)? {
        SourceKind::MicaDir => {
            let (mut ds, inspection) = mica_format::load_with_inspection(path)?;
            clean::apply_to_dataset(path, &mut ds, "labels", &LoadOptions::default())?;
            Ok((ds, inspection))
        }
        SourceKind::Pickle => {
            let p = pickle_dataset::read_pickle(path)?;
            let layout = pickle_dataset::detect_layout(path, &p)?;
            let inspection = pickle_dataset::inspect_pickle(&p, layout);
            let ds = pickle_dataset::dataset_from_pickle(path, p, layout)?;
            Ok((ds, inspection))
        }
    }
}

/// Summarises every numeric array of a dataset file or directory without building a
/// [`Dataset`] (so a pickle whose splits fail validation can still be inspected).
pub fn inspect_any(path: &Path) -> Result<Inspection, DataError> {
    match detect(path)? {
        SourceKind::MicaDir => mica_format::inspect(path),
        SourceKind::Pickle => {
            let p = pickle_dataset::read_pickle(path)?;
            let layout = pickle_dataset::detect_layout(path, &p)?;
            Ok(pickle_dataset::inspect_pickle(&p, layout))
        }
    }
}
