//! Labels that are not numbers (NaN, ±inf): by default an error naming the file, split, key
//! and count; with [`LoadOptions::drop_nonfinite_labels`] (`--drop-nonfinite-labels`) the
//! samples are dropped from every modality, the ids and the intervals, and counted.
//! Never silently 0.

use std::path::Path;

use super::error::DataError;
use super::{Dataset, Intervals, Labels, Modality, Split};

/// How a dataset load treats the problems a user may choose to tolerate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Drop the samples whose label has a non-finite value instead of failing.
    pub drop_nonfinite_labels: bool,
}

/// Samples dropped from one split because of non-finite labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The split.
    pub split: String,
    /// The label key in the file.
    pub key: String,
    /// Number of samples dropped.
    pub samples: usize,
}

impl Dropped {
    /// One line for the user, e.g. `dropped 2 samples of split 'test' with non-finite
    /// values in 'labels'`.
    pub fn note(&self) -> String {
        format!(
            "dropped {} sample{} of split '{}' with non-finite values in '{}' (--drop-nonfinite-labels)",
            self.samples,
            if self.samples == 1 { "" } else { "s" },
            self.split,
            self.key
        )
    }
}

/// Which samples have a non-finite value among their `per_sample` label values.
pub fn nonfinite_samples(values: &[f32], per_sample: usize) -> Vec<bool> {
    values
        .chunks(per_sample.max(1))
        .map(|c| c.iter().any(|v| !v.is_finite()))
        .collect()
}

/// Applies the policy to one split's labels: `Ok(None)` when every label is finite,
/// `Ok(Some(keep))` (the samples to keep) when dropping is allowed, else the error.
pub fn label_policy(
    path: &Path,
    split: &str,
    key: &str,
    values: &[f32],
    per_sample: usize,
    opts: &LoadOptions,
) -> Result<Option<Vec<bool>>, DataError> {
    let bad = nonfinite_samples(values, per_sample);
    let Some(first) = bad.iter().position(|&b| b) else {
        return Ok(None);
    };
    if opts.drop_nonfinite_labels {
        return Ok(Some(bad.iter().map(|b| !b).collect()));
    }
    let bad_values = values.iter().filter(|v| !v.is_finite()).count();
    let bad_samples = bad.iter().filter(|&&b| b).count();
    Err(DataError::layout(
        path,
        split,
        key,
        format!(
            "{bad_values} non-finite label value{} (NaN or ±inf) in {bad_samples} of {} samples \
             (first: sample {first}); fix the file, or pass --drop-nonfinite-labels to drop \
             these samples",
            if bad_values == 1 { "" } else { "s" },
            bad.len()
        ),
    ))
}

/// Keeps the samples `i` with `keep[i]` (every modality, labels, ids, intervals);
/// returns how many were dropped.
pub fn retain_samples(split: &mut Split, keep: &[bool]) -> usize {
    let kept = keep.iter().filter(|&&k| k).count();
    let dropped = keep.len() - kept;
    if dropped == 0 {
        return 0;
    }
    for m in [&mut split.text, &mut split.audio, &mut split.vision] {
        retain_modality(m, keep);
    }
    split.labels = match &split.labels {
        Labels::Sentiment(v) => Labels::Sentiment(retain_rows(v, 1, keep)),
        Labels::Emotion(v) => Labels::Emotion(retain_rows(v, 4, keep)),
    };
    if let Some(ids) = &split.ids {
        split.ids = Some(retain_rows(ids, 1, keep));
    }
    if let Some(iv) = &split.intervals {
        let ts = [&split.text, &split.audio, &split.vision].map(|m| m.t * 2);
        let per = [0, 1, 2].map(|i| retain_rows(&iv.per_modality[i], ts[i], keep));
        split.intervals = Some(Intervals { per_modality: per });
    }
    dropped
}

fn retain_modality(m: &mut Modality, keep: &[bool]) {
    m.data = retain_rows(&m.data, m.t * m.d, keep);
    m.lengths = retain_rows(&m.lengths, 1, keep);
    m.n = m.lengths.len();
}

/// The rows (of `width` items) of `v` whose flag in `keep` is set.
fn retain_rows<T: Clone>(v: &[T], width: usize, keep: &[bool]) -> Vec<T> {
    if width == 0 {
        return Vec::new();
    }
    v.chunks(width)
        .zip(keep)
        .filter(|(_, &k)| k)
        .flat_map(|(row, _)| row.iter().cloned())
        .collect()
}

/// Checks (or drops) non-finite sentiment labels of every split of a loaded dataset whose
/// label key is `key`; records the drops in the provenance.
pub fn apply_to_dataset(
    path: &Path,
    ds: &mut Dataset,
    key: &str,
    opts: &LoadOptions,
) -> Result<Vec<Dropped>, DataError> {
    let mut dropped = Vec::new();
    for (name, split) in ds.splits.iter_mut() {
        let Labels::Sentiment(values) = &split.labels else {
            continue;
        };
        if let Some(keep) = label_policy(path, name, key, values, 1, opts)? {
            let samples = retain_samples(split, &keep);
            dropped.push(Dropped {
                split: name.clone(),
                key: key.to_string(),
                samples,
            });
        }
    }
    note_in_provenance(ds, &dropped);
    Ok(dropped)
}

/// Appends the drops to the dataset's provenance.
pub fn note_in_provenance(ds: &mut Dataset, dropped: &[Dropped]) {
    for d in dropped {
        ds.provenance.push_str("; ");
        ds.provenance.push_str(&d.note());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modality(n: usize, t: usize, d: usize) -> Modality {
        let data: Vec<f32> = (0..n * t * d).map(|i| i as f32).collect();
        Modality {
            data,
            n,
            t,
            d,
            lengths: (0..n).collect(),
        }
    }

    #[test]
    fn retain_keeps_the_flagged_samples_everywhere() {
        let mut s = Split {
            text: modality(3, 2, 1),
            audio: modality(3, 1, 2),
            vision: modality(3, 1, 1),
            labels: Labels::Sentiment(vec![0.5, f32::NAN, 2.0]),
            ids: Some(vec!["a".into(), "b".into(), "c".into()]),
            non_finite: [0; 3],
            intervals: Some(Intervals {
                per_modality: [
                    (0..12).map(|i| i as f32).collect(),
                    (0..6).map(|i| i as f32).collect(),
                    (0..6).map(|i| i as f32).collect(),
                ],
            }),
        };
        let keep = [true, false, true];
        assert_eq!(retain_samples(&mut s, &keep), 1);
        assert_eq!(s.text.data, [0.0, 1.0, 4.0, 5.0]);
        assert_eq!((s.text.n, s.audio.n, s.vision.n), (2, 2, 2));
        assert_eq!(s.audio.data, [0.0, 1.0, 4.0, 5.0]);
        assert_eq!(s.vision.lengths, [0, 2]);
        assert_eq!(s.labels, Labels::Sentiment(vec![0.5, 2.0]));
        assert_eq!(
            s.ids.as_deref(),
            Some(&["a".to_string(), "c".to_string()][..])
        );
        let iv = s.intervals.unwrap();
        assert_eq!(
            iv.per_modality[0],
            [0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0]
        );
        assert_eq!(iv.per_modality[1], [0.0, 1.0, 4.0, 5.0]);
    }

    #[test]
    fn policy_names_split_key_and_counts() {
        let p = Path::new("d.pkl");
        let v = [1.0, f32::INFINITY, f32::NAN, 0.0, f32::NEG_INFINITY, 2.0];
        let strict = LoadOptions::default();
        let e = label_policy(p, "valid", "labels", &v, 2, &strict)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "d.pkl: split 'valid', key 'labels': 3 non-finite label values (NaN or ±inf) in \
             3 of 3 samples (first: sample 0); fix the file, or pass \
             --drop-nonfinite-labels to drop these samples"
        );
        let drop = LoadOptions {
            drop_nonfinite_labels: true,
        };
        let keep = label_policy(p, "valid", "labels", &v, 1, &drop).unwrap();
        assert_eq!(keep.unwrap(), [true, false, false, true, false, true]);
        assert_eq!(
            label_policy(p, "valid", "labels", &[0.0], 1, &strict).unwrap(),
            None
        );
    }
}
