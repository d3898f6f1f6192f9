//! The built-in synthetic ASYNCHRONOUS benchmark, with ground-truth alignment.
//!
//! Every sample is a short clip. The three streams live on their own time grids:
//! language at word onsets (variable word durations, pauses), acoustic frames at a
//! per-sample rate (≈ 12.5–20 Hz) and visual frames at ≈ 15 Hz; the acoustic and visual
//! grids start at a per-sample offset, are smoothly time-warped and jittered. Each element
//! keeps its true `[start, end)` interval in [`Split::intervals`], so "source elements that
//! truly co-occur with a target element" is simply "overlapping intervals" ([`cooccur`]).
//!
//! The features are heterogeneous per modality (dimensions, means, scales, heavy-tailed and
//! constant columns): the distribution discrepancy of the MICA paper. The label is planted so
//! that it can only be read by relating elements across modalities:
//!
//! * a few *sentiment words* carry a polarity `s` (readable linearly from their embedding);
//! * an *acoustic burst* co-occurring with a sentiment word flips its polarity (×−1,
//!   "sarcasm"), a *visual burst* co-occurring with it doubles it (×2, "emphasis");
//! * distractor bursts co-occur with neutral words only and change nothing; sentiment words
//!   without bursts count as they are;
//! * sentiment = `clip(κ Σ_words s·m + noise, −3, 3)`; the IEMOCAP-style emotions threshold
//!   the same valence (Happy / Neutral / Sad, and Angry for a negative contribution that
//!   carries visual emphasis), exactly one emotion per sample.
//!
//! Generation is deterministic per seed (ChaCha8, one stream per sample, so the result does
//! not depend on the number of threads) and parallel over samples.

use super::{Dataset, Intervals, Labels, Modality, Split};
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod probe;
mod world;

use world::{add_projected, ColKind, Columns, Rand, World, ECHO_DIM, N_SENTIMENT};

/// Text, audio, vision indices into the per-modality arrays.
const TEXT: usize = 0;
const AUDIO: usize = 1;
const VISION: usize = 2;

/// The split names, in generation order.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// Named size presets of the synthetic benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SynthSize {
    /// Tiny dims and lengths (text 12×16, audio 48×8, vision 40×12; 4000/400/800 samples):
    /// sized so that a MICA model can train on it in minutes on a CPU.
    Small,
    /// CMU-MOSI shapes: text 50×300, audio 375×5, vision 500×20; 1284/229/686 samples.
    Mosi,
    /// CMU-MOSEI shapes: text 50×300, audio 500×74, vision 500×35; 16265/1869/4643 samples.
    Mosei,
    /// IEMOCAP shapes: text 20×300, audio 400×74, vision 500×35; 2717/798/938 samples,
    /// four binary emotion labels.
    Iemocap,
}

impl SynthSize {
    /// The lower-case name (`small`, `mosi`, `mosei`, `iemocap`).
    pub fn name(self) -> &'static str {
        match self {
            SynthSize::Small => "small",
            SynthSize::Mosi => "mosi",
            SynthSize::Mosei => "mosei",
            SynthSize::Iemocap => "iemocap",
        }
    }

    /// Parses a lower-case size name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            SynthSize::Small,
            SynthSize::Mosi,
            SynthSize::Mosei,
            SynthSize::Iemocap,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// Which kind of labels a synthetic dataset carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    /// One sentiment score in [−3, 3] per sample (MOSI / MOSEI style).
    Sentiment,
    /// Four binary emotions (Neutral, Happy, Sad, Angry), exactly one set (IEMOCAP style).
    Emotion,
}

/// Every setting of the generator. Start from [`SynthConfig::preset`] and override fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// The preset this configuration started from (names the dataset).
    pub size: SynthSize,
    /// Master seed: same seed and settings give bit-identical datasets.
    pub seed: u64,
    /// Number of training samples.
    pub n_train: usize,
    /// Number of validation samples.
    pub n_valid: usize,
    /// Number of test samples.
    pub n_test: usize,
    /// Padded sequence length per modality (text, audio, vision).
    pub lengths: [usize; 3],
    /// Feature dimension per modality (text, audio, vision).
    pub dims: [usize; 3],
    /// Sentiment or emotion labels.
    pub labels: LabelKind,
    /// Mean number of sentiment words (planted events) per sample.
    pub events: f32,
    /// Mean number of distractor bursts (bursts on neutral words) per sample.
    pub distractors: f32,
    /// Probability that a sentiment word co-occurs with an acoustic (polarity-flipping) burst.
    pub p_flip: f32,
    /// Probability that a sentiment word co-occurs with a visual (emphasis, ×2) burst.
    pub p_emphasis: f32,
    /// Burst amplitude in units of the per-column noise standard deviation.
    pub burst_strength: f32,
    /// Frame-boundary jitter, as a fraction of the frame period, in [0, 0.9].
    pub jitter: f32,
    /// Largest per-sample start offset of the acoustic and visual streams, seconds.
    pub max_offset_s: f32,
    /// Strength of the smooth monotone time warp of the acoustic / visual grids, in [0, 0.8].
    pub warp: f32,
    /// Standard deviation of the label noise (sentiment units).
    pub noise: f32,
    /// Distribution discrepancy between modalities: 0 = every column N(0, 1) in every
    /// modality; 1 = realistic heterogeneity (means, scales over orders of magnitude,
    /// heavy tails, constant columns); larger = stronger.
    pub discrepancy: f32,
    /// Acoustic frame rate range (Hz), drawn per sample.
    pub audio_hz: [f32; 2],
    /// Visual frame rate range (Hz), drawn per sample.
    pub vision_hz: [f32; 2],
    /// Median word duration, seconds.
    pub word_s: f32,
    /// Crossmodal echo: every word carries a fresh random latent (its "instance": how this
    /// occurrence was said and mouthed), expressed in the word's text features and, weighted
    /// by the overlap, in every acoustic and visual frame it co-occurs with, each modality
    /// through its own fixed random projection of strength `echo`. Co-occurring elements thus
    /// share CONTENT (the premise of crossmodal attention and of MICA's modality-invariant
    /// space) that carries nothing of the label and cannot be memorised: a model can use it
    /// only to find which frames go with which word. 0 = none (the original benchmark).
    #[serde(default)]
    pub echo: f32,
}

impl SynthConfig {
    /// The default configuration of a size preset.
    pub fn preset(size: SynthSize, seed: u64) -> Self {
        let base = SynthConfig {
            size,
            seed,
            // Enough samples that the crossmodal rule, not the noise, is what a model can
            // fit (with 1200 a MICA model memorises the train split and validation stays
            // at the median baseline).
            n_train: 4000,
            n_valid: 400,
            n_test: 800,
            lengths: [12, 48, 40],
            dims: [16, 8, 12],
            labels: LabelKind::Sentiment,
            events: 2.0,
            distractors: 1.5,
            p_flip: 0.35,
            p_emphasis: 0.35,
            burst_strength: 3.0,
            jitter: 0.3,
            max_offset_s: 0.3,
            warp: 0.3,
            noise: 0.2,
            discrepancy: 1.0,
            audio_hz: [12.5, 16.0],
            vision_hz: [13.5, 16.5],
            word_s: 0.25,
            echo: 0.0,
        };
        match size {
            SynthSize::Small => base,
            SynthSize::Mosi => SynthConfig {
                n_train: 1284,
                n_valid: 229,
                n_test: 686,
                lengths: [50, 375, 500],
                dims: [300, 5, 20],
                events: 3.0,
                distractors: 2.0,
                audio_hz: [12.5, 20.0],
                word_s: 0.3,
                ..base
            },
            SynthSize::Mosei => SynthConfig {
                n_train: 16265,
                n_valid: 1869,
                n_test: 4643,
                lengths: [50, 500, 500],
                dims: [300, 74, 35],
                events: 3.0,
                distractors: 2.0,
                audio_hz: [12.5, 20.0],
                word_s: 0.3,
                ..base
            },
            SynthSize::Iemocap => SynthConfig {
                n_train: 2717,
                n_valid: 798,
                n_test: 938,
                lengths: [20, 400, 500],
                dims: [300, 74, 35],
                labels: LabelKind::Emotion,
                events: 2.0,
                distractors: 2.0,
                audio_hz: [12.5, 20.0],
                word_s: 0.3,
                ..base
            },
        }
    }

    /// Checks every setting is in its valid range.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.lengths.iter().all(|&t| t >= 2),
            "every sequence length must be at least 2, got {:?}",
            self.lengths
        );
        ensure!(
            self.dims.iter().all(|&d| d >= 2),
            "every feature dimension must be at least 2, got {:?}",
            self.dims
        );
        ensure!(
            self.events >= 0.0 && self.distractors >= 0.0,
            "events and distractors must be >= 0"
        );
        ensure!(
            (0.0..=1.0).contains(&self.p_flip) && (0.0..=1.0).contains(&self.p_emphasis),
            "p_flip and p_emphasis must be probabilities"
        );
        ensure!(
            (0.0..=0.9).contains(&self.jitter),
            "jitter must be in [0, 0.9]"
        );
        ensure!((0.0..=0.8).contains(&self.warp), "warp must be in [0, 0.8]");
        ensure!(
            self.max_offset_s >= 0.0 && self.noise >= 0.0 && self.discrepancy >= 0.0,
            "max_offset_s, noise and discrepancy must be >= 0"
        );
        ensure!(self.burst_strength >= 0.0, "burst_strength must be >= 0");
        ensure!(self.echo >= 0.0, "echo must be >= 0");
        ensure!(self.word_s > 0.0, "word_s must be > 0");
        for (name, hz) in [("audio_hz", self.audio_hz), ("vision_hz", self.vision_hz)] {
            ensure!(
                hz[0] > 0.0 && hz[0] <= hz[1],
                "{name} must be a positive range, got {hz:?}"
            );
        }
        let d_max = self.max_duration();
        ensure!(
            d_max > self.max_offset_s + 3.0 * self.word_s,
            "lengths {:?} leave only {d_max:.2} s of clip at the highest frame rates: \
             raise the audio/vision lengths or lower the rates / max_offset_s",
            self.lengths
        );
        Ok(())
    }

    /// Sample counts of the three splits, in [`SPLITS`] order.
    pub fn split_sizes(&self) -> [usize; 3] {
        [self.n_train, self.n_valid, self.n_test]
    }

    /// The longest clip (seconds) whose frames fit the padded lengths at the highest rates.
    fn max_duration(&self) -> f32 {
        let a = self.lengths[AUDIO] as f32 / self.audio_hz[1];
        let v = self.lengths[VISION] as f32 / self.vision_hz[1];
        0.98 * a.min(v)
    }

    /// Label scale κ: keeps the sentiment standard deviation near 1.5 for any event count.
    fn kappa(&self) -> f32 {
        let e_s2 = 13.0 / 12.0; // E[s²] for |s| ~ U(0.5, 1.5)
        let e_m2 = 1.0 + 3.0 * self.p_emphasis; // E[m²] for m = ±1 · (1 or 2)
        1.5 / (self.events.max(0.5) * e_s2 * e_m2).sqrt()
    }
}

/// Generates the dataset described by `cfg` (deterministic per seed).
pub fn generate(cfg: &SynthConfig) -> Result<Dataset> {
    generate_with_progress(cfg, &mut |_, _| {})
}

/// Like [`generate`], calling `progress(done, total)` (samples) after each block.
pub fn generate_with_progress(
    cfg: &SynthConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Dataset> {
    cfg.validate()?;
    let world = World::new(cfg);
    let total: usize = cfg.split_sizes().iter().sum();
    let mut done = 0;
    let mut splits = BTreeMap::new();
    for (split_idx, (name, n)) in SPLITS.iter().zip(cfg.split_sizes()).enumerate() {
        let split = generate_split(cfg, &world, split_idx, n, &mut |k| {
            progress(done + k, total);
        });
        done += n;
        splits.insert(name.to_string(), split);
    }
    Ok(Dataset {
        format: "synth".into(),
        splits,
        provenance: provenance(cfg),
    })
}

/// The provenance string of a synthetic dataset: the generator's settings as JSON.
pub fn provenance(cfg: &SynthConfig) -> String {
    let json = serde_json::to_string(cfg).unwrap_or_default();
    format!("mica synth {json}")
}

/// The synthetic datasets by name: `synth-small`, `synth-mosi`, `synth-mosei`,
/// `synth-iemocap`, each with its preset's defaults and the given seed.
pub fn dataset_by_name(name: &str, seed: u64) -> Result<Dataset> {
    let Some(size) = name.strip_prefix("synth-").and_then(SynthSize::from_name) else {
        bail!(
            "unknown synthetic dataset {name:?}: expected synth-small, synth-mosi, \
             synth-mosei or synth-iemocap"
        );
    };
    generate(&SynthConfig::preset(size, seed))
}

/// For target element `i` of `sample` (indices into the PADDED time axis, length `T_target`),
/// the indices of the source elements whose intervals overlap it (the truly co-occurring
/// elements). Padding elements (NaN intervals) co-occur with nothing. `n` is the number of
/// samples of the split; `target`/`source` are modality indices (0 text, 1 audio, 2 vision).
pub fn cooccur(
    intervals: &Intervals,
    n: usize,
    target: usize,
    source: usize,
    sample: usize,
) -> Vec<Vec<usize>> {
    let tgt = sample_intervals(&intervals.per_modality[target], n, sample);
    let src = sample_intervals(&intervals.per_modality[source], n, sample);
    let first_src = src
        .iter()
        .position(|iv| !iv[0].is_nan())
        .unwrap_or(src.len());
    let mut lo = first_src;
    tgt.iter()
        .map(|t| {
            if t[0].is_nan() {
                return Vec::new();
            }
            while lo < src.len() && src[lo][1] <= t[0] {
                lo += 1;
            }
            (lo..src.len())
                .take_while(|&j| src[j][0] < t[1])
                .filter(|&j| overlaps(src[j], *t))
                .collect()
        })
        .collect()
}

/// The `[T, 2]` intervals of one sample of one modality, as `[start, end]` pairs.
pub fn sample_intervals(per_modality: &[f32], n: usize, sample: usize) -> Vec<[f32; 2]> {
    assert!(
        n > 0 && per_modality.len().is_multiple_of(2 * n),
        "interval array size"
    );
    let t = per_modality.len() / (2 * n);
    per_modality[sample * t * 2..(sample + 1) * t * 2]
        .chunks_exact(2)
        .map(|c| [c[0], c[1]])
        .collect()
}

/// True when the half-open intervals `[a0, a1)` and `[b0, b1)` overlap.
fn overlaps(a: [f32; 2], b: [f32; 2]) -> bool {
    a[0] < b[1] && b[0] < a[1]
}

/// Length of the overlap of two half-open intervals (0 when disjoint).
fn overlap_len(a: [f32; 2], b: [f32; 2]) -> f32 {
    (a[1].min(b[1]) - a[0].max(b[0])).max(0.0)
}

// ---------------------------------------------------------------------------------------
// One sample
// ---------------------------------------------------------------------------------------

/// The element intervals of one sample: words, acoustic and visual frames.
struct Timeline {
    /// Per modality, the real elements' `[start, end)` in clip seconds.
    elems: [Vec<[f32; 2]>; 3],
}

/// A burst planted on the acoustic (0) or visual (1) stream over a clip-time interval.
struct Burst {
    stream: usize,
    span: [f32; 2],
}

/// One generated sample, before it is placed into the padded split arrays.
struct Sample {
    /// Per modality, `[len, d]` raw features of the real elements.
    feats: [Vec<f32>; 3],
    timeline: Timeline,
    sentiment: f32,
    emotion: [u8; 4],
}

/// Monotone, smooth warp of [0, 1] onto itself: `u + a·sin(πku)/(πk)`, derivative ≥ 1−|a|.
fn warp01(u: f32, a: f32, k: f32) -> f32 {
    let pk = std::f32::consts::PI * k;
    u + a * (pk * u).sin() / pk
}

/// Frame boundaries of a stream with `n` frames covering `[start, end)`, warped and jittered
/// (strictly increasing; first and last boundary exact).
fn frame_bounds(r: &mut Rand, n: usize, start: f32, end: f32, cfg: &SynthConfig) -> Vec<f32> {
    let a = cfg.warp * r.uniform(-1.0, 1.0);
    let k = (1 + r.below(3)) as f32;
    let period = (end - start) / n as f32;
    let jit = cfg.jitter * (1.0 - a.abs()) * period;
    (0..=n)
        .map(|j| {
            let b = start + (end - start) * warp01(j as f32 / n as f32, a, k);
            if j == 0 || j == n {
                b
            } else {
                b + jit * r.uniform(-0.5, 0.5)
            }
        })
        .collect()
}

/// Consecutive boundaries → `[start, end)` intervals.
fn bounds_to_intervals(b: &[f32]) -> Vec<[f32; 2]> {
    b.windows(2).map(|w| [w[0], w[1]]).collect()
}

/// Draws the timing of one sample: words, then the acoustic and visual frame grids.
fn draw_timeline(r: &mut Rand, cfg: &SynthConfig) -> Timeline {
    let hz_a = r.uniform(cfg.audio_hz[0], cfg.audio_hz[1]);
    let hz_v = r.uniform(cfg.vision_hz[0], cfg.vision_hz[1]);
    let off = [
        r.uniform(0.0, cfg.max_offset_s),
        r.uniform(0.0, cfg.max_offset_s),
    ];
    let d_max = cfg.max_duration();
    let t_l = cfg.lengths[TEXT];
    let min_words = (t_l / 3).max(2).min(t_l);
    let n_words = min_words + r.below(t_l - min_words + 1);
    let mut words = Vec::with_capacity(n_words);
    let mut t = r.uniform(0.0, 0.2);
    while words.len() < n_words {
        let dur = (cfg.word_s * (0.35 * r.normal()).exp()).max(0.08);
        if t + dur > d_max {
            break;
        }
        words.push([t, t + dur]);
        t += dur;
        if r.bernoulli(0.12) {
            t += r.uniform(0.1, 0.5);
        }
    }
    if words.is_empty() {
        words.push([0.0, cfg.word_s.min(d_max)]);
    }
    let last_end = words.last().map_or(0.0, |w| w[1]);
    let clip_end = (last_end + r.uniform(0.0, 0.2)).min(d_max);
    let grid = |r: &mut Rand, hz: f32, off: f32, t_max: usize| {
        let n = (((clip_end - off) * hz).floor() as usize).clamp(1, t_max);
        bounds_to_intervals(&frame_bounds(r, n, off, clip_end, cfg))
    };
    let audio = grid(r, hz_a, off[0], cfg.lengths[AUDIO]);
    let vision = grid(r, hz_v, off[1], cfg.lengths[VISION]);
    Timeline {
        elems: [words, audio, vision],
    }
}

/// Picks `k` distinct items of `pool` (partial Fisher–Yates), in increasing order.
fn pick(r: &mut Rand, pool: &[usize], k: usize) -> Vec<usize> {
    let mut p = pool.to_vec();
    let k = k.min(p.len());
    for i in 0..k {
        let j = i + r.below(p.len() - i);
        p.swap(i, j);
    }
    let mut out = p[..k].to_vec();
    out.sort_unstable();
    out
}

/// Standardized AR(1) noise of a stream, `[len, d]`; heavy columns draw Student-t shocks.
fn ar_noise(r: &mut Rand, len: usize, cols: &Columns, rho: f32) -> Vec<f32> {
    let d = cols.kind.len();
    let innov = (1.0 - rho * rho).sqrt();
    let mut z = vec![0f32; len * d];
    for t in 0..len {
        for j in 0..d {
            let shock = match cols.kind[j] {
                ColKind::Constant => 0.0,
                ColKind::Normal => r.normal(),
                ColKind::Heavy => r.student3(),
            };
            z[t * d + j] = if t == 0 {
                shock
            } else {
                rho * z[(t - 1) * d + j] + innov * shock
            };
        }
    }
    z
}

/// Adds each burst of this stream to the frames it overlaps, scaled by the overlap fraction.
fn add_bursts(
    z: &mut [f32],
    frames: &[[f32; 2]],
    bursts: &[Burst],
    stream: usize,
    dir: &[f32],
    amp: f32,
) {
    let d = dir.len();
    for b in bursts.iter().filter(|b| b.stream == stream) {
        for (t, f) in frames.iter().enumerate() {
            let frac = overlap_len(*f, b.span) / (f[1] - f[0]);
            if frac > 0.0 {
                z[t * d..(t + 1) * d]
                    .iter_mut()
                    .zip(dir)
                    .for_each(|(x, u)| *x += amp * frac * u);
            }
        }
    }
}

/// Adds to each frame `echo ·` the projected echo latent of every word it overlaps, scaled
/// by the overlapped fraction of the frame.
fn add_echo(
    z: &mut [f32],
    frames: &[[f32; 2]],
    words: &[[f32; 2]],
    latents: &[f32],
    proj: &[f32],
    echo: f32,
) {
    let d = proj.len() / ECHO_DIM;
    for (t, f) in frames.iter().enumerate() {
        for (w, span) in words.iter().enumerate() {
            let frac = overlap_len(*f, *span) / (f[1] - f[0]);
            if frac > 0.0 {
                let c = &latents[w * ECHO_DIM..(w + 1) * ECHO_DIM];
                add_projected(&mut z[t * d..(t + 1) * d], proj, c, echo * frac);
            }
        }
    }
}

/// Generates sample `i` of split `split_idx` from its own random stream.
fn draw_sample(cfg: &SynthConfig, world: &World, split_idx: usize, i: usize) -> Sample {
    let mut r = Rand::new(cfg.seed, ((split_idx as u64 + 1) << 40) | i as u64);
    let timeline = draw_timeline(&mut r, cfg);
    let words = &timeline.elems[TEXT];
    let streams_start = timeline.elems[AUDIO][0][0].max(timeline.elems[VISION][0][0]);
    let eligible: Vec<usize> = (0..words.len())
        .filter(|&w| words[w][0] >= streams_start)
        .collect();

    // Sentiment words and their co-occurring bursts.
    let n_events = r.count_around(cfg.events);
    let events = pick(&mut r, &eligible, n_events);
    let mut bursts = Vec::new();
    let mut valence = 0.0f32;
    let mut angry = false;
    let mut word_ids = vec![0usize; words.len()];
    for &w in &events {
        let vid = world.n_neutral + r.below(N_SENTIMENT);
        word_ids[w] = vid;
        let flip = r.bernoulli(cfg.p_flip);
        let emph = r.bernoulli(cfg.p_emphasis);
        for (on, stream) in [(flip, 0), (emph, 1)] {
            if on {
                bursts.push(Burst {
                    stream,
                    span: words[w],
                });
            }
        }
        let m = if flip { -1.0 } else { 1.0 } * if emph { 2.0 } else { 1.0 };
        let contrib = world.polarity[vid] * m;
        valence += contrib;
        angry |= emph && contrib < 0.0;
    }
    // Neutral words; distractor bursts on neutral words not next to a sentiment word.
    for (w, id) in word_ids.iter_mut().enumerate() {
        if !events.contains(&w) {
            *id = r.below(world.n_neutral);
        }
    }
    let far: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|&w| events.iter().all(|&e| e.abs_diff(w) > 1))
        .collect();
    let n_distract = r.count_around(cfg.distractors);
    for w in pick(&mut r, &far, n_distract) {
        bursts.push(Burst {
            stream: r.below(2),
            span: words[w],
        });
    }

    // Features.
    let d_l = cfg.dims[TEXT];
    let mut text = vec![0f32; words.len() * d_l];
    // The echo latents (drawn only with echo on: datasets without it stay unchanged).
    let latents: Vec<f32> = if cfg.echo > 0.0 {
        (0..words.len() * ECHO_DIM).map(|_| r.normal()).collect()
    } else {
        Vec::new()
    };
    let mut z = vec![0f32; d_l];
    for (w, &vid) in word_ids.iter().enumerate() {
        for (zj, ej) in z.iter_mut().zip(world.embedding(vid, d_l)) {
            *zj = ej + 0.1 * r.normal();
        }
        if cfg.echo > 0.0 {
            let c = &latents[w * ECHO_DIM..(w + 1) * ECHO_DIM];
            add_projected(&mut z, &world.echo_proj[TEXT], c, cfg.echo);
        }
        world.cols[TEXT].emit(&z, &mut text[w * d_l..(w + 1) * d_l]);
    }
    let mut stream_feats = |m: usize| {
        let frames = &timeline.elems[m];
        let d = cfg.dims[m];
        let mut z = ar_noise(&mut r, frames.len(), &world.cols[m], world.rho[m - 1]);
        if cfg.echo > 0.0 {
            add_echo(
                &mut z,
                frames,
                words,
                &latents,
                &world.echo_proj[m],
                cfg.echo,
            );
        }
        add_bursts(
            &mut z,
            frames,
            &bursts,
            m - 1,
            &world.burst_dir[m - 1],
            cfg.burst_strength,
        );
        let mut out = vec![0f32; frames.len() * d];
        for t in 0..frames.len() {
            world.cols[m].emit(&z[t * d..(t + 1) * d], &mut out[t * d..(t + 1) * d]);
        }
        out
    };
    let audio = stream_feats(AUDIO);
    let vision = stream_feats(VISION);

    // Labels.
    let score = cfg.kappa() * valence + cfg.noise * r.normal();
    Sample {
        feats: [text, audio, vision],
        timeline,
        sentiment: score.clamp(-3.0, 3.0),
        emotion: emotion_of(score, angry),
    }
}

/// Valence threshold between Neutral and Happy / Sad / Angry.
const EMOTION_THRESHOLD: f32 = 0.5;

/// One-hot (Neutral, Happy, Sad, Angry) from the valence score and the anger cue.
fn emotion_of(score: f32, angry: bool) -> [u8; 4] {
    let idx = if score > EMOTION_THRESHOLD {
        1
    } else if score >= -EMOTION_THRESHOLD {
        0
    } else if angry {
        3
    } else {
        2
    };
    let mut e = [0u8; 4];
    e[idx] = 1;
    e
}

// ---------------------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------------------

/// Samples generated between two progress reports.
const BLOCK: usize = 256;

/// Generates one split, `progress(done)` after each block of samples.
fn generate_split(
    cfg: &SynthConfig,
    world: &World,
    split_idx: usize,
    n: usize,
    progress: &mut dyn FnMut(usize),
) -> Split {
    let [t_l, t_a, t_v] = cfg.lengths;
    let [d_l, d_a, d_v] = cfg.dims;
    let mut data = [
        vec![0f32; n * t_l * d_l],
        vec![0f32; n * t_a * d_a],
        vec![0f32; n * t_v * d_v],
    ];
    let mut iv = [
        vec![f32::NAN; n * t_l * 2],
        vec![f32::NAN; n * t_a * 2],
        vec![f32::NAN; n * t_v * 2],
    ];
    let mut lengths = [vec![0usize; n], vec![0usize; n], vec![0usize; n]];
    let mut sentiment = Vec::with_capacity(n);
    let mut emotion = Vec::with_capacity(n * 4);
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(8);
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK * threads).min(n);
        let samples = draw_block(cfg, world, split_idx, start..end, threads);
        for (i, s) in (start..end).zip(samples) {
            for m in 0..3 {
                let (t, d) = (cfg.lengths[m], cfg.dims[m]);
                let len = s.timeline.elems[m].len();
                let pad = t - len;
                lengths[m][i] = len;
                data[m][(i * t + pad) * d..(i + 1) * t * d].copy_from_slice(&s.feats[m]);
                for (k, e) in s.timeline.elems[m].iter().enumerate() {
                    let o = (i * t + pad + k) * 2;
                    iv[m][o] = e[0];
                    iv[m][o + 1] = e[1];
                }
            }
            sentiment.push(s.sentiment);
            emotion.extend_from_slice(&s.emotion);
        }
        start = end;
        progress(start);
    }
    let [x_l, x_a, x_v] = data;
    let [len_l, len_a, len_v] = lengths;
    let modality = |data, t, d, lengths| Modality {
        data,
        n,
        t,
        d,
        lengths,
    };
    Split {
        text: modality(x_l, t_l, d_l, len_l),
        audio: modality(x_a, t_a, d_a, len_a),
        vision: modality(x_v, t_v, d_v, len_v),
        labels: match cfg.labels {
            LabelKind::Sentiment => Labels::Sentiment(sentiment),
            LabelKind::Emotion => Labels::Emotion(emotion),
        },
        ids: Some((0..n).map(|i| sample_id(split_idx, i)).collect()),
        non_finite: [0; 3],
        intervals: Some(Intervals { per_modality: iv }),
    }
}

/// Segment id `<video>_<clip>` of a synthetic sample, e.g. `synthtrain000042_0`.
fn sample_id(split_idx: usize, i: usize) -> String {
    format!("synth{}{i:06}_0", SPLITS[split_idx])
}

/// Draws the samples `range` of a split on up to `threads` threads, in order.
fn draw_block(
    cfg: &SynthConfig,
    world: &World,
    split_idx: usize,
    range: std::ops::Range<usize>,
    threads: usize,
) -> Vec<Sample> {
    let idx: Vec<usize> = range.collect();
    if threads <= 1 || idx.len() < 2 * threads {
        return idx
            .into_iter()
            .map(|i| draw_sample(cfg, world, split_idx, i))
            .collect();
    }
    let chunk = idx.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = idx
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|&i| draw_sample(cfg, world, split_idx, i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("synth worker panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests;
