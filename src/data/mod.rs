//! Data: the in-memory dataset type every reader and generator produces, plus the
//! readers (MulT / MMSA pickles, mica's own format) and the synthetic benchmark.
//!
//! Layout contract (spec/data.md): every modality is `[N, T, D]` f32, LEFT zero-padded
//! (real frames at the end) so MulT's last-step read-out always sees a real frame.

pub mod batch;

use std::collections::BTreeMap;

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

pub mod pickle_write;
pub mod synth;
