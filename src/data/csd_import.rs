//! Building a mica dataset from CMU-MultimodalSDK computational sequences (`mica import-csd`):
//! word-vector, acoustic, visual and label `.csd` files plus folds.
//!
//! The rules are the SDK's (`mmsdk/mmdatasdk/dataset/dataset.py` at 4f2eadc), reproduced
//! exactly (the fixtures check the SDK's own outputs):
//! * *intersection* of a reference interval `[r0, r1]` with a sequence's rows (sorted by
//!   start, stable): rows with `(-s0) - (-r1) > -eps` and `s1 - r0 > -eps`, clipped to
//!   `[max(s0, r0), min(s1, r1)]`, then rows with `|end - start| <= eps` dropped;
//!   `eps = 1e-5`; reference rows with `|r1 - r0| < eps` are skipped;
//! * unaligned (default): every labelled segment takes each modality's own rows intersecting
//!   it (the SDK's `align(labels)` without collapse functions);
//! * `--align words`: first every modality is collapsed onto each word by the mean
//!   (`align(text, [numpy.average])`; a float32 block is summed row by row in float32), with
//!   interval `[min, max]` of the clipped bounds; words without acoustic or visual rows get
//!   zeros (`impute`); then the segments take these word-level rows as above;
//! * segments lacking rows in any modality are dropped (`hard_unify`);
//! * each modality is left-padded with zeros, and a longer one keeps its LAST rows
//!   (`get_tensors(direction=False)`).
//!
//! Non-finite output values become 0 and are counted per modality (a `-inf` in COVAREP
//! propagates through the mean, as in the SDK, before it is zeroed). The element intervals
//! of every kept row are stored (`*_intervals`, NaN on padding), so `mica analyze` can
//! compute correlation accuracy. Videos are read one at a time: peak memory is one video
//! of each file plus the output.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::csd::{CsdReader, Features, Video};
use super::csd_write::{temp_path, write_atomic, SplitBuf, Store};
use super::error::DataError;
use super::mica_format::{Manifest, FORMAT_NAME, FORMAT_VERSION, MANIFEST};
use super::{Dataset, MODALITIES};

/// The SDK's alignment tolerance (`epsilon = 10e-6`).
pub const EPS: f64 = 10e-6;

/// Built-in standard folds: (name, JSON of the SDK's `standard_{train,valid,test}_fold`).
const STANDARD_FOLDS: [(&str, &str); 2] = [
    ("mosi", include_str!("../../assets/folds/cmu_mosi.json")),
    ("mosei", include_str!("../../assets/folds/cmu_mosei.json")),
];

/// Train / valid / test video ids.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Folds {
    /// Where the folds come from (for provenance and errors).
    #[serde(default)]
    pub source: String,
    /// Training videos.
    pub train: Vec<String>,
    /// Validation videos.
    pub valid: Vec<String>,
    /// Test videos.
    pub test: Vec<String>,
}

/// Split names in output order.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];

impl Folds {
    /// The SDK's standard folds of `name` (`mosi` or `mosei`).
    pub fn standard(name: &str) -> Option<Folds> {
        let (_, json) = STANDARD_FOLDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        serde_json::from_str(json).ok()
    }

    /// Reads a JSON folds file `{"train": [...], "valid": [...], "test": [...]}`.
    pub fn from_file(path: &Path) -> Result<Folds, DataError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DataError::io(path, "cannot read folds", e))?;
        let mut f: Folds = serde_json::from_str(&text).map_err(|e| {
            DataError::format(path, format!("invalid folds file (want {{\"train\": [ids], \"valid\": [ids], \"test\": [ids]}}): {e}"))
        })?;
        f.source = path.display().to_string();
        Ok(f)
    }

    fn lists(&self) -> [&Vec<String>; 3] {
        [&self.train, &self.valid, &self.test]
    }

    /// Video → split name; an error names a video listed twice.
    fn index(&self) -> Result<HashMap<&str, &'static str>, String> {
        let mut out = HashMap::new();
        for (split, list) in SPLITS.iter().zip(self.lists()) {
            for v in list {
                if let Some(prev) = out.insert(v.as_str(), *split) {
                    return Err(format!(
                        "folds {}: video '{v}' is listed in '{prev}' and '{split}'",
                        self.source
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// How the modalities are laid out in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignMode {
    /// Each modality keeps its own elements (MulT's unaligned setting).
    Unaligned,
    /// Every modality averaged onto the words (the SDK's `align` with a mean).
    Words,
}

/// The four input files.
#[derive(Debug, Clone)]
pub struct CsdInputs {
    /// Word vectors (e.g. `glove_vectors`): one row per word.
    pub text: PathBuf,
    /// Acoustic features (e.g. `COVAREP`).
    pub audio: PathBuf,
    /// Visual features (e.g. `FACET 4.2`, `OpenFace`).
    pub vision: PathBuf,
    /// Labels: one row per segment, sentiment in column 0.
    pub labels: PathBuf,
}

/// Options of [`import`].
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Unaligned or word-aligned.
    pub align: AlignMode,
    /// Fixed lengths (text, audio, vision); with [`AlignMode::Words`] all use `lengths[0]`.
    pub lengths: [usize; 3],
    /// The folds.
    pub folds: Folds,
    /// Drop (and report) videos missing from a modality instead of failing.
    pub skip_missing: bool,
}

/// What [`import`] did besides the dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Non-finite feature values in the input files, per modality (text, audio, vision).
    pub input_non_finite: [u64; 3],
    /// Non-finite values replaced by 0 in the output, per modality.
    pub replaced: [u64; 3],
    /// Labelled videos in no fold (skipped, as the SDK does).
    pub not_in_folds: Vec<String>,
    /// Fold videos absent from the label file.
    pub folds_not_found: Vec<String>,
    /// Videos skipped with `skip_missing`: (video, modality).
    pub missing: Vec<(String, String)>,
    /// Segments dropped because a modality has no rows in them, or of zero length.
    pub dropped_segments: Vec<String>,
    /// Segments whose modality had more rows than the fixed length (first rows cut).
    pub truncated: [usize; 3],
    /// Words with no acoustic / visual rows, filled with zeros (`--align words`).
    pub imputed_words: [usize; 3],
}

/// Rows of one modality: intervals and features (widened to f64), plus whether the
/// features were float32 (the SDK's mean then adds in float32).
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// `(start, end)` per row.
    pub iv: Vec<[f64; 2]>,
    /// `[rows, d]` features.
    pub feat: Vec<f64>,
    /// Feature dimension.
    pub d: usize,
    /// Features were float32.
    pub single: bool,
}

impl Rows {
    fn empty(d: usize, single: bool) -> Rows {
        Rows {
            iv: Vec::new(),
            feat: Vec::new(),
            d,
            single,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.iv.len()
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.iv.is_empty()
    }

    pub(crate) fn row(&self, i: usize) -> &[f64] {
        &self.feat[i * self.d..(i + 1) * self.d]
    }

    fn push(&mut self, iv: [f64; 2], feat: &[f64]) {
        self.iv.push(iv);
        self.feat.extend_from_slice(feat);
    }

    /// Rows of a video read from a `.csd` file, in file order.
    pub fn from_video(v: &Video) -> Option<Rows> {
        let (feat, single) = match &v.features {
            Features::F32(x) => (x.iter().map(|&a| f64::from(a)).collect(), true),
            Features::F64(x) => (x.clone(), false),
            Features::Strings(_) => return None,
        };
        let iv = v.intervals.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        Some(Rows {
            iv,
            feat,
            d: v.d,
            single,
        })
    }

    /// The rows sorted by start time (stable, as Python's `sorted`).
    pub fn sorted(&self) -> Rows {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.sort_by(|&a, &b| self.iv[a][0].total_cmp(&self.iv[b][0]));
        let mut out = Rows::empty(self.d, self.single);
        for i in idx {
            out.push(self.iv[i], self.row(i));
        }
        out
    }
}

/// The SDK's `__intersect_and_copy`: rows of `sub` overlapping `r`, clipped to it.
pub fn intersect(r: [f64; 2], sub: &Rows) -> Rows {
    let mut out = Rows::empty(sub.d, sub.single);
    for (i, s) in sub.iv.iter().enumerate() {
        if (-s[0]) - (-r[1]) > -EPS && s[1] - r[0] > -EPS {
            let c = [s[0].max(r[0]), s[1].min(r[1])];
            if (c[0] - c[1]).abs() > EPS {
                out.push(c, sub.row(i));
            }
        }
    }
    out
}

/// The SDK's collapse with `numpy.average(features, axis=0)`: interval `[min, max]` of all
/// bounds, features the column means (float32 rows added one by one in float32).
pub fn collapse_mean(rows: &Rows) -> ([f64; 2], Vec<f64>) {
    let lo = rows
        .iv
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let hi = rows
        .iv
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let n = rows.len();
    let mean = if rows.single {
        let mut acc: Vec<f32> = rows.row(0).iter().map(|&x| x as f32).collect();
        for i in 1..n {
            for (a, &x) in acc.iter_mut().zip(rows.row(i)) {
                *a += x as f32;
            }
        }
        acc.iter().map(|&a| f64::from(a / n as f32)).collect()
    } else {
        let mut acc = rows.row(0).to_vec();
        for i in 1..n {
            for (a, &x) in acc.iter_mut().zip(rows.row(i)) {
                *a += x;
            }
        }
        acc.iter().map(|&a| a / n as f64).collect()
    };
    ([lo, hi], mean)
}

/// Word-level rows (`align(words, [mean])` then `impute(words)`) of one video: for the
/// words themselves (`other = None`) or another modality's rows `other` (sorted by start).
/// Returns the rows in the SDK's dict order (present words, then imputed ones) and the
/// number of imputed words.
pub fn word_level(words: &Rows, other: Option<&Rows>) -> (Rows, usize) {
    let d = other.map_or(words.d, |o| o.d);
    let single = other.map_or(words.single, |o| o.single);
    let mut out = Rows::empty(d, single);
    let mut imputed = Vec::new();
    for (i, &r) in words.iv.iter().enumerate() {
        if (r[0] - r[1]).abs() < EPS {
            continue;
        }
        let own = Rows {
            iv: vec![r],
            feat: words.row(i).to_vec(),
            d: words.d,
            single: words.single,
        };
        let (word_iv, _) = collapse_mean(&own);
        let rows = match other {
            None => own,
            Some(o) => intersect(r, o),
        };
        if rows.is_empty() {
            imputed.push(word_iv);
            continue;
        }
        let (iv, f) = collapse_mean(&rows);
        out.push(iv, &f);
    }
    let zeros = vec![0.0; d];
    for iv in &imputed {
        out.push(*iv, &zeros);
    }
    (out, imputed.len())
}

/// One labelled segment: its key (`video[row]`), label row and per-modality rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// `video[i]`, `i` the label row in the file.
    pub key: String,
    /// The label row's features.
    pub label: Vec<f64>,
    /// Text, audio, vision rows inside the segment (clipped intervals).
    pub rows: [Rows; 3],
}

/// The segments of one video, given its three modalities' rows (file order) and label
/// rows; also returns the keys of dropped segments and the imputed-word counts.
pub fn video_segments(
    video: &str,
    mods: [&Rows; 3],
    labels: &Rows,
    align: AlignMode,
) -> (Vec<Segment>, Vec<String>, [usize; 3]) {
    let mut imputed = [0; 3];
    let seqs: [Rows; 3] = match align {
        AlignMode::Unaligned => mods.map(Rows::sorted),
        AlignMode::Words => {
            let (t, _) = word_level(mods[0], None);
            let (a, ia) = word_level(mods[0], Some(&mods[1].sorted()));
            let (v, iv) = word_level(mods[0], Some(&mods[2].sorted()));
            imputed = [0, ia, iv];
            [t.sorted(), a.sorted(), v.sorted()]
        }
    };
    let (mut out, mut dropped) = (Vec::new(), Vec::new());
    for (i, &r) in labels.iv.iter().enumerate() {
        let key = format!("{video}[{i}]");
        if (r[0] - r[1]).abs() < EPS {
            dropped.push(key);
            continue;
        }
        let rows = [
            intersect(r, &seqs[0]),
            intersect(r, &seqs[1]),
            intersect(r, &seqs[2]),
        ];
        if rows.iter().any(Rows::is_empty) {
            dropped.push(key);
            continue;
        }
        out.push(Segment {
            key,
            label: labels.row(i).to_vec(),
            rows,
        });
    }
    (out, dropped, imputed)
}

/// Everything [`run`] produced.
struct Built {
    bufs: Vec<SplitBuf>,
    lengths: [usize; 3],
    dims: [usize; 3],
    report: ImportReport,
    provenance: String,
}

/// Reads the four files video by video and builds the dataset in memory (see the module
/// docs); `mica import-csd` uses [`import_to_dir`], which streams to disk.
pub fn import(
    inputs: &CsdInputs,
    opts: &ImportOptions,
) -> Result<(Dataset, ImportReport), DataError> {
    let b = run(inputs, opts, |_, _| Ok(Store::Mem(Vec::new())))?;
    let splits = SPLITS
        .iter()
        .zip(b.bufs)
        .map(|(name, buf)| (name.to_string(), buf.into_split(b.lengths, b.dims)))
        .collect();
    Ok((
        Dataset {
            format: "csd".into(),
            splits,
            provenance: b.provenance,
        },
        b.report,
    ))
}

/// As [`import`], writing the mica dataset to `dir` while reading: peak memory is one
/// video of each file plus the per-sample lengths, labels and ids. The files equal
/// `mica_format::save` of [`import`]'s dataset byte for byte.
pub fn import_to_dir(
    inputs: &CsdInputs,
    opts: &ImportOptions,
    dir: &Path,
) -> Result<(Manifest, ImportReport), DataError> {
    let existed = dir.exists();
    let r = import_to_dir_inner(inputs, opts, dir);
    if r.is_err() && !existed {
        // Spill files are gone with the stores; remove the directory this call made.
        let _ = fs::remove_dir(dir);
    }
    r
}

fn import_to_dir_inner(
    inputs: &CsdInputs,
    opts: &ImportOptions,
    dir: &Path,
) -> Result<(Manifest, ImportReport), DataError> {
    let manifest_path = dir.join(MANIFEST);
    let mut first = true;
    // The directory is made (and an old manifest removed) once the inputs opened.
    let mut b = run(inputs, opts, |split, tensor| {
        if std::mem::take(&mut first) {
            fs::create_dir_all(dir)
                .map_err(|e| DataError::io(dir, "cannot create directory", e))?;
            if manifest_path.exists() {
                fs::remove_file(&manifest_path)
                    .map_err(|e| DataError::io(&manifest_path, "cannot replace manifest", e))?;
            }
        }
        Store::spill(temp_path(&dir.join(format!("{split}.{tensor}")), "spill"))
    })?;
    let mut splits = BTreeMap::new();
    for (name, buf) in SPLITS.iter().zip(b.bufs.iter_mut()) {
        splits.insert(name.to_string(), buf.write(dir, name, b.lengths, b.dims)?);
    }
    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        source_format: "csd".into(),
        provenance: b.provenance,
        splits,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| DataError::format(&manifest_path, format!("cannot encode manifest: {e}")))?;
    write_atomic(&manifest_path, &json)?;
    Ok((manifest, b.report))
}

/// The import itself; `store(split, tensor)` makes the store of each large tensor.
fn run(
    inputs: &CsdInputs,
    opts: &ImportOptions,
    mut store: impl FnMut(&str, &str) -> Result<Store, DataError>,
) -> Result<Built, DataError> {
    let paths = [&inputs.text, &inputs.audio, &inputs.vision];
    let readers = [
        CsdReader::open(paths[0])?,
        CsdReader::open(paths[1])?,
        CsdReader::open(paths[2])?,
    ];
    let labels = CsdReader::open(&inputs.labels)?;
    let index = opts
        .folds
        .index()
        .map_err(|e| DataError::format(&inputs.labels, e))?;
    let lengths = match opts.align {
        AlignMode::Unaligned => opts.lengths,
        AlignMode::Words => [opts.lengths[0]; 3],
    };
    if let Some(m) = lengths.iter().position(|&l| l == 0) {
        return Err(DataError::format(
            paths[m],
            format!("{} length must be at least 1", MODALITIES[m]),
        ));
    }
    let mut report = ImportReport::default();
    let mut bufs = SPLITS
        .iter()
        .map(|sp| SplitBuf::new(|tensor| store(sp, tensor)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut dims: [Option<(usize, String)>; 3] = [None, None, None];
    let label_ids: Vec<String> = labels.video_ids().map(str::to_string).collect();
    for list in opts.folds.lists() {
        report
            .folds_not_found
            .extend(list.iter().filter(|v| !labels.has_video(v)).cloned());
    }
    'videos: for vid in &label_ids {
        let Some(split) = index.get(vid.as_str()) else {
            report.not_in_folds.push(vid.clone());
            continue;
        };
        for (m, r) in readers.iter().enumerate() {
            if !r.has_video(vid) {
                if opts.skip_missing {
                    report
                        .missing
                        .push((vid.clone(), MODALITIES[m].to_string()));
                    continue 'videos;
                }
                return Err(DataError::format(
                    r.path(),
                    format!(
                        "video '{vid}' (fold '{split}', labelled in {}) is missing from this {} file \
                         (pass --skip-missing to drop such videos)",
                        inputs.labels.display(),
                        MODALITIES[m]
                    ),
                ));
            }
        }
        let mut rows = Vec::with_capacity(3);
        for (m, r) in readers.iter().enumerate() {
            let v = r.read_video(vid)?;
            report.input_non_finite[m] += v.features.non_finite();
            let Some(x) = Rows::from_video(&v) else {
                return Err(DataError::format(
                    r.path(),
                    format!(
                        "video '{vid}': features are strings (words?); give the word-vector file \
                         (e.g. glove_vectors) as the {} input",
                        MODALITIES[m]
                    ),
                ));
            };
            match &dims[m] {
                None => dims[m] = Some((x.d, vid.clone())),
                Some((d, first)) if *d != x.d => {
                    return Err(DataError::format(
                        r.path(),
                        format!(
                            "video '{vid}' has {} feature columns, video '{first}' has {d}",
                            x.d
                        ),
                    ))
                }
                _ => {}
            }
            rows.push(x);
        }
        let lv = labels.read_video(vid)?;
        let Some(lrows) = Rows::from_video(&lv) else {
            return Err(DataError::format(
                &inputs.labels,
                format!("video '{vid}': labels are strings"),
            ));
        };
        if lrows.d == 0 {
            return Err(DataError::format(
                &inputs.labels,
                format!("video '{vid}': labels have no column"),
            ));
        }
        let (segs, dropped, imputed) =
            video_segments(vid, [&rows[0], &rows[1], &rows[2]], &lrows, opts.align);
        drop(rows);
        report.dropped_segments.extend(dropped);
        for (r, i) in report.imputed_words.iter_mut().zip(imputed) {
            *r += i;
        }
        let k = SPLITS.iter().position(|s| s == split).unwrap_or(0);
        let buf = &mut bufs[k];
        for s in segs {
            let y = s.label[0];
            if !y.is_finite() {
                return Err(DataError::format(
                    &inputs.labels,
                    format!("segment '{}': label {y} is not finite", s.key),
                ));
            }
            for (m, r) in s.rows.iter().enumerate() {
                report.truncated[m] += usize::from(buf.push_rows(m, r, lengths[m])?);
            }
            buf.labels.push(y as f32);
            buf.ids.push(s.key);
        }
    }
    let d = dims.map(|x| x.map_or(0, |(d, _)| d));
    for (k, (name, buf)) in SPLITS.iter().zip(&bufs).enumerate() {
        if buf.labels.is_empty() {
            let n = opts.folds.lists()[k].len();
            return Err(DataError::format(
                &inputs.labels,
                format!(
                    "split '{name}' is empty: none of its {n} fold videos (folds {}) has a labelled \
                     segment with rows in every modality",
                    opts.folds.source
                ),
            ));
        }
        for (r, x) in report.replaced.iter_mut().zip(buf.replaced) {
            *r += x;
        }
    }
    let provenance = format!(
        "import-csd: text {}, audio {}, vision {}, labels {}; {}; lengths {:?}; folds {}",
        inputs.text.display(),
        inputs.audio.display(),
        inputs.vision.display(),
        inputs.labels.display(),
        match opts.align {
            AlignMode::Unaligned => "unaligned",
            AlignMode::Words => "aligned to words (mean)",
        },
        lengths,
        opts.folds.source
    );
    Ok(Built {
        bufs,
        lengths,
        dims: d,
        report,
        provenance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(iv: &[[f64; 2]], feat: &[f64], single: bool) -> Rows {
        Rows {
            iv: iv.to_vec(),
            feat: feat.to_vec(),
            d: feat.len() / iv.len().max(1),
            single,
        }
    }

    #[test]
    fn intersection_clips_and_drops_touching_rows() {
        let sub = rows(
            &[[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]],
            &[1.0, 2.0, 3.0],
            false,
        );
        let got = intersect([1.0, 2.5], &sub);
        // [0, 1] only touches: clipped length 0 -> dropped; [2, 3] clipped to [2, 2.5].
        assert_eq!(got.iv, vec![[1.0, 2.0], [2.0, 2.5]]);
        assert_eq!(got.feat, vec![2.0, 3.0]);
    }

    #[test]
    fn float32_mean_adds_in_float32() {
        let a = 16_777_216.0f64; // 2^24: adding 1.0 in f32 is lost
        let r = rows(&[[0.0, 1.0], [1.0, 2.0]], &[a, 1.0], true);
        assert_eq!(collapse_mean(&r), ([0.0, 2.0], vec![8_388_608.0]));
        let r64 = Rows { single: false, ..r };
        assert_eq!(collapse_mean(&r64).1, vec![8_388_608.5]);
    }

    #[test]
    fn folds_reject_a_video_in_two_splits_and_standard_folds_load() {
        let f = Folds {
            source: "x.json".into(),
            train: vec!["a".into()],
            valid: vec![],
            test: vec!["a".into()],
        };
        assert_eq!(
            f.index().unwrap_err(),
            "folds x.json: video 'a' is listed in 'train' and 'test'"
        );
        let mosi = Folds::standard("mosi").unwrap();
        assert_eq!(
            (mosi.train.len(), mosi.valid.len(), mosi.test.len()),
            (52, 10, 31)
        );
        let mosei = Folds::standard("MOSEI").unwrap();
        assert_eq!(
            (mosei.train.len(), mosei.valid.len(), mosei.test.len()),
            (2249, 300, 678)
        );
        assert!(mosi.index().is_ok() && mosei.index().is_ok());
        assert!(Folds::standard("iemocap").is_none());
    }
}
