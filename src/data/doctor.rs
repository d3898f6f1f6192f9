//! `mica doctor`: what a data file is and whether mica can use it as it stands — format,
//! pickle protocol, sha256, splits and sizes against the published ones, feature dims
//! against the known variants, non-finite values per split and modality, label ranges and
//! sequence-length statistics; `.csd` files are looked into by [`super::doctor_csd`]. Problems are errors (mica cannot use the file as it is) or
//! warnings (it can, but something looks off); facts worth knowing are notes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::doctor_csd::{self, CsdCoverage, CsdReport};
use super::pickle_dataset::{self, Inspection, SPLITS};
use super::{mica_format, Dataset, Labels, LoadOptions, MODALITIES};

/// Published split sizes and feature variants of the datasets mica knows.
struct Known {
    name: &'static str,
    /// (train, valid, test) sizes, with where they come from.
    sizes: &'static [([usize; 3], &'static str)],
    /// Feature dims (text, audio, vision) of the known releases.
    variants: &'static [([usize; 3], &'static str)],
    /// Labels are IEMOCAP's four binary emotions.
    emotion: bool,
}

const KNOWN: [Known; 3] = [
    Known {
        name: "CMU-MOSI",
        sizes: &[([1284, 229, 686], "the standard split")],
        variants: &[
            (
                [300, 5, 20],
                "MulT's release (GloVe 300, feature-selected COVAREP 5 / FACET 20)",
            ),
            ([768, 5, 20], "MMSA's release (BERT 768, 5 / 20)"),
            (
                [300, 74, 35],
                "the papers' stated dims (GloVe 300, COVAREP 74, FACET 35)",
            ),
            (
                [300, 74, 47],
                "CMU-SDK features (GloVe 300, COVAREP 74, FACET 47)",
            ),
        ],
        emotion: false,
    },
    Known {
        name: "CMU-MOSEI",
        sizes: &[
            ([16326, 1871, 4659], "the published split"),
            ([16265, 1869, 4643], "MulT's aligned file"),
        ],
        variants: &[
            (
                [300, 74, 35],
                "MulT's release (GloVe 300, COVAREP 74, FACET 35)",
            ),
            ([768, 74, 35], "MMSA's release (BERT 768, 74 / 35)"),
        ],
        emotion: false,
    },
    Known {
        name: "IEMOCAP",
        sizes: &[([2717, 798, 938], "MulT's split")],
        variants: &[(
            [300, 74, 35],
            "MulT's release (GloVe 300, COVAREP 74, FACET 35)",
        )],
        emotion: true,
    },
];

/// The diagnosis of one path (a file, a mica directory, or a directory of data files).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The path given.
    pub path: String,
    /// One entry per file looked at.
    pub files: Vec<FileReport>,
    /// Errors over all files.
    pub errors: usize,
    /// Warnings over all files.
    pub warnings: usize,
    /// A directory with several `.csd` files: the videos missing from some of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csd_coverage: Option<CsdCoverage>,
}

/// The diagnosis of one file (or mica dataset directory).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: String,
    /// What it is: `pickle`, `mica dataset directory`, `HDF5 (.csd)`, `HTML page`, ...
    pub format: String,
    /// Dataset layout: `mult`, `mmsa`, `mica`.
    pub layout: Option<String>,
    /// Pickle protocol.
    pub protocol: Option<u8>,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256 of the file (hex).
    pub sha256: Option<String>,
    /// Which dataset it looks like, and why.
    pub dataset: Option<String>,
    /// Per split.
    pub splits: BTreeMap<String, SplitReport>,
    /// mica cannot use the file as it is.
    pub errors: Vec<String>,
    /// mica can use it, but something looks off.
    pub warnings: Vec<String>,
    /// Facts worth knowing.
    pub notes: Vec<String>,
    /// A `.csd` file: what it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csd: Option<CsdReport>,
}

/// One split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitReport {
    /// Samples in the file.
    pub samples: usize,
    /// Whether the split has ids.
    pub ids: bool,
    /// `text`, `audio`, `vision`.
    pub modalities: BTreeMap<String, ModalityReport>,
    /// The labels.
    pub labels: LabelReport,
}

/// One modality of one split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModalityReport {
    /// Padded sequence length T.
    pub t: usize,
    /// Feature dim D.
    pub d: usize,
    /// Non-finite values in the file (mica replaces them by 0).
    pub non_finite: u64,
    /// Shortest real length.
    pub length_min: usize,
    /// Mean real length.
    pub length_mean: f64,
    /// Longest real length.
    pub length_max: usize,
    /// Samples without any real frame.
    pub empty_samples: usize,
}

/// The labels of one split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LabelReport {
    /// `sentiment` or `emotion`.
    pub kind: String,
    /// Non-finite label values in the file.
    pub non_finite: u64,
    /// Smallest finite sentiment.
    pub min: Option<f32>,
    /// Largest finite sentiment.
    pub max: Option<f32>,
    /// Emotion: positives per emotion (Neutral, Happy, Sad, Angry).
    pub positives: Option<[usize; 4]>,
}

/// Data-file extensions looked at in a directory that is not a mica dataset.
const DATA_EXTENSIONS: [&str; 6] = ["pkl", "pickle", "csd", "h5", "hdf5", "html"];

/// Diagnoses a file, a mica dataset directory, or every data file of a directory.
pub fn diagnose(path: &Path) -> Report {
    let mut files = Vec::new();
    let mut csd_coverage = None;
    if path.is_dir() && !mica_format::is_mica_dir(path) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for p in entries.iter().filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| DATA_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        }) {
            files.push(diagnose_one(p));
        }
        csd_coverage = doctor_csd::coverage(&mut files);
        if files.is_empty() {
            files.push(FileReport {
                path: path.display().to_string(),
                format: "directory".into(),
                errors: vec![format!(
                    "no data files here (.{}) and no mica dataset ({})",
                    DATA_EXTENSIONS[..5].join(", ."),
                    mica_format::MANIFEST
                )],
                ..FileReport::default()
            });
        }
    } else {
        files.push(diagnose_one(path));
    }
    Report {
        path: path.display().to_string(),
        errors: files.iter().map(|f| f.errors.len()).sum(),
        warnings: files.iter().map(|f| f.warnings.len()).sum(),
        files,
        csd_coverage,
    }
}

/// What the first bytes of a file say it is.
enum Sniff {
    Pickle(u8),
    Hdf5,
    Html(Option<String>),
    Other(&'static str, String),
}

fn sniff(head: &[u8]) -> Sniff {
    let text = String::from_utf8_lossy(head);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let lower = trimmed.to_ascii_lowercase();
    match head {
        [0x80, proto, ..] => Sniff::Pickle(*proto),
        [0x89, b'H', b'D', b'F', ..] => Sniff::Hdf5,
        [] => Sniff::Other(
            "empty",
            "the file is empty (an interrupted download?)".into(),
        ),
        [0x1f, 0x8b, ..] => Sniff::Other(
            "gzip archive",
            "a gzip archive, not the data itself: decompress it first (gunzip / tar xzf)".into(),
        ),
        [b'P', b'K', 3, 4, ..] => Sniff::Other(
            "zip archive",
            "a zip archive, not the data itself: unzip it first".into(),
        ),
        _ if lower.starts_with("<!doctype html")
            || lower.starts_with("<html")
            || lower.starts_with("<head")
            || (lower.starts_with('<') && lower.contains("<html")) =>
        {
            let title = lower.find("<title>").and_then(|i| {
                let rest = &trimmed[i + 7..];
                rest.find('<').map(|j| rest[..j].trim().to_string())
            });
            Sniff::Html(title)
        }
        _ if trimmed.starts_with("version https://git-lfs") => Sniff::Other(
            "Git LFS pointer",
            "a Git LFS pointer, not the data: fetch the real file (git lfs pull)".into(),
        ),
        _ => Sniff::Other(
            "unknown",
            "unknown format: not a pickle (protocol 2 to 5), an HDF5 .csd file nor a mica \
             dataset directory"
                .into(),
        ),
    }
}

/// sha256 (hex) and size of a file, streamed.
fn sha256_of(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, total))
}

fn diagnose_one(path: &Path) -> FileReport {
    let mut r = FileReport {
        path: path.display().to_string(),
        ..FileReport::default()
    };
    if path.is_dir() {
        r.format = "mica dataset directory".into();
        r.layout = Some("mica".into());
        diagnose_mica(path, &mut r);
        return r;
    }
    match sha256_of(path) {
        Ok((hex, bytes)) => {
            r.sha256 = Some(hex);
            r.bytes = bytes;
        }
        Err(e) => {
            r.format = "unreadable".into();
            r.errors.push(format!("cannot read: {e}"));
            return r;
        }
    }
    let mut head = vec![0u8; 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    head.truncate(n);
    match sniff(&head) {
        Sniff::Pickle(proto) => {
            r.format = "pickle".into();
            r.protocol = Some(proto);
            diagnose_pickle(path, &mut r);
        }
        Sniff::Hdf5 => {
            r.format = "HDF5 (CMU-MultimodalSDK computational sequence, .csd)".into();
            r.notes.push(
                "a .csd file holds one modality (or the labels) of a whole corpus: import the \
                 word, audio, vision and label files together into a mica dataset"
                    .into(),
            );
            doctor_csd::diagnose(path, &mut r);
        }
        Sniff::Html(title) => {
            r.format = "HTML page".into();
            let title = title
                .map(|t| format!(" (title: {t:?})"))
                .unwrap_or_default();
            r.errors.push(format!(
                "an HTML page saved under a data file's name{title}: the download link returned \
                 a web page (a quota, login or virus-scan warning page?), not the data; \
                 download the file itself"
            ));
        }
        Sniff::Other(format, problem) => {
            r.format = format.into();
            r.errors.push(problem);
        }
    }
    r
}

fn diagnose_pickle(path: &Path, r: &mut FileReport) {
    if let Some(proto) = r.protocol.filter(|p| !(2..=5).contains(p)) {
        r.errors.push(format!(
            "pickle protocol {proto}: only protocols 2 to 5 exist and are read"
        ));
        return;
    }
    let p = match pickle_dataset::read_pickle(path) {
        Ok(p) => p,
        Err(e) => {
            r.errors.push(e.to_string());
            return;
        }
    };
    let layout = match pickle_dataset::detect_layout(path, &p) {
        Ok(l) => l,
        Err(e) => {
            r.errors.push(e.to_string());
            return;
        }
    };
    r.layout = Some(layout.name().into());
    let inspection = pickle_dataset::inspect_pickle(&p, layout);
    for (split, keys) in &inspection.keys {
        for (key, info) in keys.iter().filter(|(_, i)| !i.used) {
            r.notes.push(format!(
                "split '{split}', key '{key}': not read by mica ({})",
                info.value
            ));
        }
    }
    for key in &inspection.ignored_top_level {
        r.warnings.push(format!(
            "top-level key '{key}' is not a split (train, valid, test): ignored"
        ));
    }
    let opts = LoadOptions {
        drop_nonfinite_labels: true,
    };
    let loaded = pickle_dataset::dataset_from_pickle_with(path, p, layout, &opts);
    finish(r, &inspection, layout.label_key(), loaded.map(|(ds, _)| ds));
}

fn diagnose_mica(path: &Path, r: &mut FileReport) {
    match mica_format::load_with_inspection(path) {
        Ok((mut ds, inspection)) => {
            let opts = LoadOptions {
                drop_nonfinite_labels: true,
            };
            let loaded = super::clean::apply_to_dataset(path, &mut ds, "labels", &opts).map(|_| ds);
            finish(r, &inspection, "labels", loaded);
        }
        Err(e) => r.errors.push(e.to_string()),
    }
}

/// Fills the split reports and the checks from the file's arrays as stored
/// (`inspection`) and the dataset loaded with non-finite labels dropped.
fn finish(
    r: &mut FileReport,
    inspection: &Inspection,
    label_key: &str,
    loaded: Result<Dataset, super::DataError>,
) {
    for split in SPLITS {
        let Some(arrays) = inspection.splits.get(split) else {
            continue;
        };
        let bad = arrays
            .get(label_key)
            .map_or(0, |a| a.non_finite_after_f32_cast);
        if bad > 0 {
            r.errors.push(format!(
                "split '{split}', key '{label_key}': {bad} non-finite label value{} (NaN or \
                 ±inf): mica refuses the file unless you pass --drop-nonfinite-labels",
                if bad == 1 { "" } else { "s" }
            ));
        }
        let mut s = SplitReport {
            samples: arrays
                .get("text")
                .and_then(|a| a.shape.first().copied())
                .unwrap_or(0),
            ..SplitReport::default()
        };
        s.labels.non_finite = bad;
        for m in MODALITIES {
            let Some(a) = arrays.get(m) else { continue };
            let mr = ModalityReport {
                t: a.shape.get(1).copied().unwrap_or(0),
                d: a.shape.get(2).copied().unwrap_or(0),
                non_finite: a.non_finite_after_f32_cast,
                ..ModalityReport::default()
            };
            if mr.non_finite > 0 {
                r.warnings.push(format!(
                    "split '{split}', {m}: {} non-finite values (NaN / ±inf; mica replaces them \
                     by 0 on load)",
                    mr.non_finite
                ));
            }
            s.modalities.insert(m.to_string(), mr);
        }
        r.splits.insert(split.to_string(), s);
    }
    let ds = match loaded {
        Ok(ds) => ds,
        Err(e) => {
            r.errors.push(e.to_string());
            identify(r, None);
            return;
        }
    };
    for (name, split) in &ds.splits {
        let s = r.splits.entry(name.clone()).or_default();
        s.ids = split.ids.is_some();
        for (m, key) in split.modalities().iter().zip(MODALITIES) {
            let mr = s.modalities.entry(key.to_string()).or_default();
            let lengths = &m.lengths;
            mr.length_min = lengths.iter().copied().min().unwrap_or(0);
            mr.length_max = lengths.iter().copied().max().unwrap_or(0);
            mr.length_mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
            mr.empty_samples = lengths.iter().filter(|&&l| l == 0).count();
            if mr.empty_samples > 0 {
                r.notes.push(format!(
                    "split '{name}', {key}: {} sample(s) without any frame (all zero)",
                    mr.empty_samples
                ));
            }
        }
        label_stats(r, name, &split.labels);
    }
    identify(r, Some(&ds));
}

fn label_stats(r: &mut FileReport, split: &str, labels: &Labels) {
    let Some(s) = r.splits.get_mut(split) else {
        return;
    };
    match labels {
        Labels::Sentiment(v) => {
            s.labels.kind = "sentiment".into();
            let finite = v.iter().copied().filter(|x| x.is_finite());
            s.labels.min = finite.clone().reduce(f32::min);
            s.labels.max = finite.reduce(f32::max);
            if s.labels.min.is_some_and(|m| m < -3.0) || s.labels.max.is_some_and(|m| m > 3.0) {
                let (lo, hi) = (s.labels.min.unwrap_or(0.0), s.labels.max.unwrap_or(0.0));
                r.warnings.push(format!(
                    "split '{split}': sentiment labels in [{lo}, {hi}], outside MOSI / \
                     MOSEI's [-3, 3] (another scale? the metrics assume [-3, 3])"
                ));
            }
        }
        Labels::Emotion(v) => {
            s.labels.kind = "emotion".into();
            let mut pos = [0usize; 4];
            for row in v.chunks_exact(4) {
                for (p, &x) in pos.iter_mut().zip(row) {
                    *p += usize::from(x);
                }
            }
            s.labels.positives = Some(pos);
        }
    }
}

/// Which known dataset the file looks like (split sizes first, then labels and dims),
/// and whether its dims are a known variant.
fn identify(r: &mut FileReport, ds: Option<&Dataset>) {
    let n = |s: &str| r.splits.get(s).map_or(0, |s| s.samples);
    let sizes = [n("train"), n("valid"), n("test")];
    let dim = |m: &str| -> Vec<usize> {
        SPLITS
            .iter()
            .filter_map(|s| r.splits.get(*s)?.modalities.get(m).map(|x| x.d))
            .collect()
    };
    let dims_per = [dim("text"), dim("audio"), dim("vision")];
    let first = |v: &Vec<usize>| v.first().copied().unwrap_or(0);
    let dims = [
        first(&dims_per[0]),
        first(&dims_per[1]),
        first(&dims_per[2]),
    ];
    for (m, v) in MODALITIES.iter().zip(&dims_per) {
        if v.iter().any(|&d| d != v[0]) {
            r.errors
                .push(format!("{m}: the splits have different feature dims {v:?}"));
        }
    }
    let emotion = ds
        .and_then(|d| d.splits.values().next())
        .is_some_and(|s| matches!(s.labels, Labels::Emotion(_)));
    let by_size = KNOWN.iter().find_map(|k| {
        k.sizes
            .iter()
            .find(|(s, _)| *s == sizes)
            .map(|(_, why)| (k, *why))
    });
    let sizes_txt = format!("{}/{}/{}", sizes[0], sizes[1], sizes[2]);
    let known = match by_size {
        Some((k, why)) => {
            r.dataset = Some(format!("{} (split sizes {sizes_txt} match {why})", k.name));
            Some(k)
        }
        None => {
            let candidates: Vec<&Known> = KNOWN
                .iter()
                .filter(|k| {
                    k.emotion == emotion && (emotion || k.variants.iter().any(|(v, _)| *v == dims))
                })
                .collect();
            if candidates.is_empty() {
                r.notes.push(format!(
                    "not one of the known datasets (split sizes {sizes_txt}, dims text {} / \
                     audio {} / vision {}): fine for your own data",
                    dims[0], dims[1], dims[2]
                ));
            } else {
                let names: Vec<&str> = candidates.iter().map(|k| k.name).collect();
                let published: Vec<String> = candidates
                    .iter()
                    .flat_map(|k| {
                        k.sizes.iter().map(move |(s, why)| {
                            format!("{} {}/{}/{} ({why})", k.name, s[0], s[1], s[2])
                        })
                    })
                    .collect();
                r.dataset = Some(format!(
                    "{}? (by its labels and feature dims)",
                    names.join(" or ")
                ));
                r.warnings.push(format!(
                    "split sizes {sizes_txt} differ from the published ones ({}): a subset, \
                     another split, or samples lost?",
                    published.join("; ")
                ));
            }
            // With more than one candidate the dims are already known to match.
            (candidates.len() == 1).then(|| candidates[0])
        }
    };
    let Some(k) = known else { return };
    if k.emotion != emotion && ds.is_some() {
        r.warnings.push(format!(
            "{} has {} labels, this file has {} labels",
            k.name,
            if k.emotion { "emotion" } else { "sentiment" },
            if emotion { "emotion" } else { "sentiment" }
        ));
    }
    match k.variants.iter().find(|(v, _)| *v == dims) {
        Some((_, what)) => r.notes.push(format!("features: {what}")),
        None => {
            let known: Vec<String> = k
                .variants
                .iter()
                .map(|(v, what)| format!("{}/{}/{} = {what}", v[0], v[1], v[2]))
                .collect();
            r.warnings.push(format!(
                "feature dims text/audio/vision {}/{}/{} match none of {}'s known releases: {}",
                dims[0],
                dims[1],
                dims[2],
                k.name,
                known.join("; ")
            ));
        }
    }
    if k.name == "CMU-MOSI" && dims[1] != 5 {
        r.notes.push(
            "MulT's and MICA's published MOSI results use the 5-d audio / 20-d vision \
             features: results on other features are not comparable"
                .into(),
        );
    }
}

/// The human-readable report.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in &report.files {
        let _ = writeln!(out, "{}", f.path);
        let mut what = f.format.clone();
        if let Some(l) = &f.layout {
            let _ = write!(what, ", {l} layout");
        }
        if let Some(p) = f.protocol {
            let _ = write!(what, ", protocol {p}");
        }
        if f.sha256.is_some() {
            let _ = write!(what, ", {} bytes", f.bytes);
        }
        let _ = writeln!(out, "  format:  {what}");
        if let Some(h) = &f.sha256 {
            let _ = writeln!(out, "  sha256:  {h}");
        }
        if let Some(d) = &f.dataset {
            let _ = writeln!(out, "  dataset: {d}");
        }
        if let Some(c) = &f.csd {
            doctor_csd::render(c, &mut out);
        }
        for (name, s) in SPLITS
            .iter()
            .filter_map(|n| f.splits.get_key_value(*n))
            .chain(
                f.splits
                    .iter()
                    .filter(|(n, _)| !SPLITS.contains(&n.as_str())),
            )
        {
            let labels = match s.labels.kind.as_str() {
                "sentiment" => format!(
                    "sentiment in [{}, {}]",
                    s.labels.min.map_or("-".into(), |v| v.to_string()),
                    s.labels.max.map_or("-".into(), |v| v.to_string())
                ),
                "emotion" => format!(
                    "emotion, positives N/H/S/A {:?}",
                    s.labels.positives.unwrap_or_default()
                ),
                _ => "?".into(),
            };
            let _ = writeln!(
                out,
                "  [{name}] {} samples, ids {}, labels {labels}, non-finite labels {}",
                s.samples,
                if s.ids { "yes" } else { "no" },
                s.labels.non_finite
            );
            for (m, x) in MODALITIES
                .iter()
                .filter_map(|m| s.modalities.get_key_value(*m))
            {
                let _ = writeln!(
                    out,
                    "    {m:<6} T {:<4} D {:<4} length min {} mean {:.1} max {}  empty {}  \
                     non-finite {}",
                    x.t,
                    x.d,
                    x.length_min,
                    x.length_mean,
                    x.length_max,
                    x.empty_samples,
                    x.non_finite
                );
            }
        }
        for (title, list) in [
            ("error", &f.errors),
            ("warning", &f.warnings),
            ("note", &f.notes),
        ] {
            for line in list {
                let _ = writeln!(out, "  {title}: {line}");
            }
        }
    }
    if let Some(c) = &report.csd_coverage {
        let _ = writeln!(
            out,
            ".csd videos: {} over {} files, {} in every file, {} file(s) lacking some",
            c.videos,
            c.files,
            c.in_all,
            c.missing.len()
        );
    }
    let _ = writeln!(
        out,
        "{} error(s), {} warning(s)",
        report.errors, report.warnings
    );
    out
}
