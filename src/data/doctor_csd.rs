//! `mica doctor` on CMU-MultimodalSDK computational sequences (`.csd`): what one file holds
//! (root, metadata, videos, feature dim and dtype or word strings, elements per video,
//! interval sanity, non-finite values) and which dataset it belongs to by the SDK's
//! standard MOSI / MOSEI folds; for a directory of `.csd` files, the videos missing from
//! some of them. Read video by video with [`CsdReader`]: memory is one video at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use super::csd::{CsdReader, Features};
use super::csd_import::{Folds, EPS};
use super::doctor::FileReport;
use super::hdf5::Dtype;

/// What a `.csd` file holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CsdReport {
    /// Name of the root group (e.g. `COVAREP`).
    pub root: String,
    /// Metadata keys, sorted.
    pub metadata_keys: Vec<String>,
    /// Entries under `/<root>/data` (videos, or `video[i]` segments in aligned files).
    pub videos: usize,
    /// Distinct videos (entry names cut at the first `[`, as the SDK does).
    pub distinct_videos: usize,
    /// `numbers` or `strings`.
    pub kind: String,
    /// Stored element types over all videos (`float32`, `float64`, `int16`, `|S13`, `vlen string`).
    pub dtypes: Vec<String>,
    /// Feature dimension (1 for strings); the first video's when they differ.
    pub dim: usize,
    /// Elements (rows) per video.
    pub elements: Counts,
    /// Word strings: distinct tokens (only for string features).
    pub distinct_strings: Option<usize>,
    /// Non-finite feature values.
    pub non_finite: NonFinite,
    /// Interval sanity.
    pub intervals: IntervalReport,
    /// Membership in the built-in standard folds.
    pub folds: FoldReport,
    /// Distinct video ids (for the directory check; not serialized).
    #[serde(skip)]
    pub ids: BTreeSet<String>,
}

/// Min / mean / max / total of a per-video count.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Smallest.
    pub min: usize,
    /// Mean over videos.
    pub mean: f64,
    /// Largest.
    pub max: usize,
    /// Sum over videos.
    pub total: usize,
}

/// Non-finite feature values as stored.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NonFinite {
    /// NaN values.
    pub nan: u64,
    /// `+inf` values.
    pub pos_inf: u64,
    /// `-inf` values (COVAREP has them).
    pub neg_inf: u64,
    /// Videos holding at least one.
    pub videos: usize,
}

/// Interval sanity over all elements.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IntervalReport {
    /// Elements with start > end.
    pub inverted: usize,
    /// Elements with |end - start| < 1e-5 s (the SDK skips such reference rows).
    pub zero_length: usize,
    /// Elements starting before 0 s.
    pub negative_start: usize,
    /// Videos whose rows are not in start order.
    pub unsorted_videos: usize,
    /// Videos with rows overlapping by more than 1e-5 s (after sorting by start).
    pub overlapping_videos: usize,
    /// The first inverted element: (video, row).
    #[serde(skip)]
    first_inverted: Option<(String, usize)>,
}

/// How many of the file's distinct videos are in each standard fold set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FoldReport {
    /// CMU-MOSI's standard folds.
    pub mosi: FoldCounts,
    /// CMU-MOSEI's standard folds.
    pub mosei: FoldCounts,
    /// Distinct videos in neither.
    pub in_none: usize,
}

/// Videos of the file per fold of one standard fold set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FoldCounts {
    /// In the train fold.
    pub train: usize,
    /// In the valid fold.
    pub valid: usize,
    /// In the test fold.
    pub test: usize,
    /// Videos of this fold set absent from the file.
    pub absent: usize,
}

impl FoldCounts {
    fn total(&self) -> usize {
        self.train + self.valid + self.test
    }
}

/// Videos missing from some `.csd` file of a directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CsdCoverage {
    /// `.csd` files read without error.
    pub files: usize,
    /// Distinct videos over those files.
    pub videos: usize,
    /// Videos present in every one of them.
    pub in_all: usize,
    /// File → videos of the other files that it lacks (files lacking none are left out).
    pub missing: BTreeMap<String, Vec<String>>,
}

fn dtype_name(d: Dtype) -> String {
    match d {
        Dtype::Float(4) => "float32".into(),
        Dtype::Float(n) => format!("float{}", 8 * n),
        Dtype::Int { size, signed } => {
            format!("{}int{}", if signed { "" } else { "u" }, 8 * size)
        }
        Dtype::FixedString(w) => format!("|S{w}"),
        Dtype::VlenString => "vlen string".into(),
    }
}

/// The video an SDK key belongs to (`vid[3]` → `vid`).
fn base_id(key: &str) -> &str {
    key.split('[').next().unwrap_or(key)
}

/// Looks inside a `.csd` file: fills `r.csd`, `r.dataset`, errors, warnings and notes.
pub(super) fn diagnose(path: &Path, r: &mut FileReport) {
    let reader = match CsdReader::open(path) {
        Ok(x) => x,
        Err(e) => {
            r.errors.push(e.to_string());
            return;
        }
    };
    let mut c = CsdReport {
        root: reader.root().to_string(),
        ..CsdReport::default()
    };
    match reader.metadata() {
        Ok(m) => {
            c.metadata_keys = m.keys().cloned().collect();
            if let Some(name) = m.get("dataset name") {
                let name = serde_json::from_str::<String>(name).unwrap_or_else(|_| name.clone());
                r.notes.push(format!("metadata 'dataset name': {name:?}"));
            }
        }
        Err(e) => r.errors.push(e.to_string()),
    }
    let ids: Vec<String> = reader.video_ids().map(str::to_string).collect();
    c.videos = ids.len();
    let mut dtypes = BTreeSet::new();
    let mut dims: BTreeMap<usize, (usize, String)> = BTreeMap::new();
    let mut strings = BTreeSet::new();
    let mut lengths = Vec::with_capacity(ids.len());
    for id in &ids {
        let v = match reader.read_video(id) {
            Ok(v) => v,
            Err(e) => {
                r.errors.push(e.to_string());
                return;
            }
        };
        c.ids.insert(base_id(id).to_string());
        lengths.push(v.n);
        dtypes.insert(dtype_name(v.dtype));
        dims.entry(v.d).or_insert((0, id.clone())).0 += 1;
        if c.dim == 0 && dims.len() == 1 {
            c.dim = v.d;
        }
        let before = (c.non_finite.nan, c.non_finite.pos_inf, c.non_finite.neg_inf);
        let mut count = |x: f64| {
            if x.is_nan() {
                c.non_finite.nan += 1;
            } else if x == f64::INFINITY {
                c.non_finite.pos_inf += 1;
            } else if x == f64::NEG_INFINITY {
                c.non_finite.neg_inf += 1;
            }
        };
        match &v.features {
            Features::F32(x) => x.iter().for_each(|&x| count(f64::from(x))),
            Features::F64(x) => x.iter().for_each(|&x| count(x)),
            Features::Strings(s) => strings.extend(s.iter().cloned()),
        }
        if before != (c.non_finite.nan, c.non_finite.pos_inf, c.non_finite.neg_inf) {
            c.non_finite.videos += 1;
        }
        check_intervals(id, &v.intervals, &mut c.intervals);
    }
    let is_string = |d: &String| d.starts_with("|S") || d == "vlen string";
    if dtypes.iter().any(is_string) {
        c.distinct_strings = Some(strings.len());
        c.kind = "strings".into();
        if !dtypes.iter().all(is_string) {
            r.errors
                .push("some videos hold strings, others numbers".to_string());
        }
    } else {
        c.kind = "numbers".into();
    }
    c.dtypes = dtypes.into_iter().collect();
    c.distinct_videos = c.ids.len();
    let total: usize = lengths.iter().sum();
    c.elements = Counts {
        min: lengths.iter().copied().min().unwrap_or(0),
        max: lengths.iter().copied().max().unwrap_or(0),
        mean: total as f64 / lengths.len().max(1) as f64,
        total,
    };
    if c.videos == 0 {
        r.warnings
            .push(format!("'/{}/data' holds no video", c.root));
    }
    if dims.len() > 1 {
        let list: Vec<String> = dims
            .iter()
            .map(|(d, (n, first))| format!("{d} ({n} video(s), first '{first}')"))
            .collect();
        r.errors.push(format!(
            "the videos have different feature dims: {}",
            list.join(", ")
        ));
    }
    judge(&mut c, r);
    r.csd = Some(c);
}

/// Counts inverted, zero-length, negative, unsorted and overlapping intervals of one video.
fn check_intervals(video: &str, iv: &[f64], out: &mut IntervalReport) {
    let rows: Vec<(f64, f64)> = iv.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    out.inverted += rows.iter().filter(|(s, e)| s > e).count();
    if out.first_inverted.is_none() {
        out.first_inverted = rows
            .iter()
            .position(|(s, e)| s > e)
            .map(|k| (video.to_string(), k));
    }
    out.zero_length += rows.iter().filter(|(s, e)| (e - s).abs() < EPS).count();
    out.negative_start += rows.iter().filter(|(s, _)| *s < 0.0).count();
    if rows.windows(2).any(|w| w[1].0 < w[0].0) {
        out.unsorted_videos += 1;
    }
    let mut sorted = rows;
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut end = f64::NEG_INFINITY;
    let mut overlap = false;
    for (s, e) in sorted {
        overlap |= s < end - EPS;
        end = end.max(e);
    }
    out.overlapping_videos += usize::from(overlap);
}

/// Warnings, notes, fold membership and the dataset line of a read `.csd` file.
fn judge(c: &mut CsdReport, r: &mut FileReport) {
    let nf = &c.non_finite;
    let bad = nf.nan + nf.pos_inf + nf.neg_inf;
    if bad > 0 {
        r.warnings.push(format!(
            "{bad} non-finite feature value(s) in {} video(s) (NaN {}, +inf {}, -inf {}; \
             COVAREP's -inf is usual): import-csd replaces them by 0 and counts them",
            nf.videos, nf.nan, nf.pos_inf, nf.neg_inf
        ));
    }
    let iv = &c.intervals;
    if iv.inverted > 0 {
        let (vid, row) = iv.first_inverted.clone().unwrap_or_default();
        r.warnings.push(format!(
            "{} element(s) end before they start (start > end), the first in video '{vid}', \
             row {row}",
            iv.inverted
        ));
    }
    if iv.zero_length > 0 {
        r.notes.push(format!(
            "{} element(s) of zero length (< 1e-5 s): the SDK's align skips them as reference \
             rows",
            iv.zero_length
        ));
    }
    if iv.negative_start > 0 {
        r.notes.push(format!(
            "{} element(s) start before 0 s (seen in the SDK's label files)",
            iv.negative_start
        ));
    }
    if iv.unsorted_videos > 0 || iv.overlapping_videos > 0 {
        r.notes.push(format!(
            "intervals: {} video(s) with rows not in time order, {} with overlapping rows (usual \
             in the SDK's label files; import-csd, like the SDK, sorts feature rows by start and \
             keeps label rows in file order)",
            iv.unsorted_videos, iv.overlapping_videos
        ));
    }
    if c.distinct_videos < c.videos {
        r.notes.push(format!(
            "entries are segments (video[i], as the SDK's deploy writes aligned data): {} \
             entries of {} videos",
            c.videos, c.distinct_videos
        ));
    }
    let count = |f: Option<Folds>| -> FoldCounts {
        let Some(f) = f else {
            return FoldCounts::default();
        };
        let n = |l: &[String]| l.iter().filter(|v| c.ids.contains(v.as_str())).count();
        let (train, valid, test) = (n(&f.train), n(&f.valid), n(&f.test));
        FoldCounts {
            train,
            valid,
            test,
            absent: f.train.len() + f.valid.len() + f.test.len() - train - valid - test,
        }
    };
    let mosi = count(Folds::standard("mosi"));
    let mosei = count(Folds::standard("mosei"));
    let std_ids: BTreeSet<String> = ["mosi", "mosei"]
        .iter()
        .filter_map(|n| Folds::standard(n))
        .flat_map(|f| f.train.into_iter().chain(f.valid).chain(f.test))
        .collect();
    let in_none = c.ids.iter().filter(|v| !std_ids.contains(*v)).count();
    let n = c.distinct_videos;
    let best = [("CMU-MOSI", &mosi), ("CMU-MOSEI", &mosei)]
        .into_iter()
        .filter(|(_, f)| f.total() > 0)
        .max_by_key(|(_, f)| f.total());
    if mosi.total() > 0 && mosei.total() > 0 {
        r.warnings.push(format!(
            "videos of two datasets: {} in CMU-MOSI's standard folds, {} in CMU-MOSEI's",
            mosi.total(),
            mosei.total()
        ));
    }
    match best {
        Some((name, f)) => {
            r.dataset = Some(format!(
                "{name} ({} of the file's {n} videos are in its standard folds: train {} / \
                 valid {} / test {})",
                f.total(),
                f.train,
                f.valid,
                f.test
            ));
            if f.absent > 0 {
                r.notes.push(format!(
                    "{} video(s) of {name}'s standard folds are not in this file",
                    f.absent
                ));
            }
            if in_none > 0 {
                r.notes.push(format!(
                    "{in_none} video(s) are in no standard fold: import-csd skips them with \
                     the standard folds"
                ));
            }
        }
        None if n > 0 => r.notes.push(format!(
            "none of the {n} videos is in the standard CMU-MOSI or CMU-MOSEI folds: give \
             import-csd your own folds (--folds FILE or --train/--valid/--test)"
        )),
        None => {}
    }
    c.folds = FoldReport {
        mosi,
        mosei,
        in_none,
    };
}

/// For a directory: the videos each `.csd` file lacks that another one has, as warnings
/// on the lacking file. `None` with fewer than two readable `.csd` files.
pub(super) fn coverage(files: &mut [FileReport]) -> Option<CsdCoverage> {
    let read: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].csd.is_some() && files[i].errors.is_empty())
        .collect();
    if read.len() < 2 {
        return None;
    }
    let sets: Vec<(usize, BTreeSet<String>)> = read
        .iter()
        .filter_map(|&i| Some((i, files[i].csd.as_ref()?.ids.clone())))
        .collect();
    let all: BTreeSet<String> = sets.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let mut cov = CsdCoverage {
        files: sets.len(),
        videos: all.len(),
        in_all: all
            .iter()
            .filter(|v| sets.iter().all(|(_, s)| s.contains(*v)))
            .count(),
        missing: BTreeMap::new(),
    };
    for (i, ids) in &sets {
        let i = *i;
        let lack: Vec<String> = all.iter().filter(|v| !ids.contains(*v)).cloned().collect();
        if lack.is_empty() {
            continue;
        }
        let shown: Vec<&str> = lack.iter().take(10).map(String::as_str).collect();
        let more = lack.len().saturating_sub(10);
        files[i].warnings.push(format!(
            "{} video(s) of the other .csd files are missing here: {}{} (import-csd drops \
             videos missing from any modality, as the SDK's unify)",
            lack.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
        cov.missing.insert(files[i].path.clone(), lack);
    }
    Some(cov)
}

/// Text lines for a `.csd` report.
pub(super) fn render(c: &CsdReport, out: &mut String) {
    use std::fmt::Write as _;
    let what = if c.kind == "strings" {
        format!(
            "strings {} ({} distinct)",
            c.dtypes.join(", "),
            c.distinct_strings.unwrap_or(0)
        )
    } else {
        format!("{} [n, {}]", c.dtypes.join(", "), c.dim)
    };
    let _ = writeln!(
        out,
        "  csd:     root '{}', {} videos, features {what}",
        c.root, c.videos
    );
    let _ = writeln!(out, "  metadata: {}", c.metadata_keys.join(", "));
    let e = &c.elements;
    let _ = writeln!(
        out,
        "  elements per video: min {} mean {:.2} max {} ({} in all)",
        e.min, e.mean, e.max, e.total
    );
    let iv = &c.intervals;
    let _ = writeln!(
        out,
        "  intervals: inverted {}, zero-length {}, negative start {}, unsorted videos {}, \
         overlapping videos {}",
        iv.inverted, iv.zero_length, iv.negative_start, iv.unsorted_videos, iv.overlapping_videos
    );
    let nf = &c.non_finite;
    let _ = writeln!(
        out,
        "  non-finite: NaN {}, +inf {}, -inf {} (in {} videos)",
        nf.nan, nf.pos_inf, nf.neg_inf, nf.videos
    );
    let f = |x: &FoldCounts| format!("train {} / valid {} / test {}", x.train, x.valid, x.test);
    let _ = writeln!(
        out,
        "  folds:   CMU-MOSI {}; CMU-MOSEI {}; in none {}",
        f(&c.folds.mosi),
        f(&c.folds.mosei),
        c.folds.in_none
    );
}
