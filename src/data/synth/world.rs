//! What the synthetic generator draws from: its random numbers (ChaCha8 streams and the
//! distributions it needs) and the "world" shared by every sample of a dataset (column
//! statistics of each modality, the vocabulary and its polarity, burst directions, echo
//! projections).

use super::{SynthConfig, AUDIO, TEXT, VISION};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
// ---------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------

/// ChaCha8 plus the distributions the generator needs (normals, Student-t).
pub(super) struct Rand {
    pub(super) rng: ChaCha8Rng,
    pub(super) spare: Option<f32>,
}

impl Rand {
    /// The stream `stream` of the master `seed`.
    pub(super) fn new(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Rand { rng, spare: None }
    }
    pub(super) fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.rng.gen::<f32>()
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }
    pub(super) fn bernoulli(&mut self, p: f32) -> bool {
        self.rng.gen::<f32>() < p
    }
    /// Standard normal (Marsaglia's polar method, pairs cached).
    pub(super) fn normal(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.rng.gen::<f32>() - 1.0;
            let v = 2.0 * self.rng.gen::<f32>() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }
    /// Student-t with 3 degrees of freedom, scaled to unit variance (heavy tails).
    pub(super) fn student3(&mut self) -> f32 {
        let z = self.normal();
        let chi2: f32 = (0..3).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / 3.0).max(1e-6).sqrt() / 3f32.sqrt()
    }
    /// A count with mean ≈ `mean`: `r − 1 + U{0, 1, 2}` clamped at 0, where
    /// `r = ⌊mean⌋ + Bernoulli(mean − ⌊mean⌋)`.
    pub(super) fn count_around(&mut self, mean: f32) -> usize {
        let base = mean.floor();
        let r = base as i64 + i64::from(self.bernoulli(mean - base));
        (r - 1 + self.below(3) as i64).max(0) as usize
    }
}

// ---------------------------------------------------------------------------------------
// The world: what is shared by every sample of a dataset
// ---------------------------------------------------------------------------------------

/// How one feature column is distributed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ColKind {
    Normal,
    Heavy,
    Constant,
}

/// Per-column distribution of one modality: `x = mean + scale * z` (constant: `x = mean`).
#[derive(Debug, Clone)]
pub(super) struct Columns {
    pub(super) mean: Vec<f32>,
    pub(super) scale: Vec<f32>,
    pub(super) kind: Vec<ColKind>,
}

/// Modality-specific style of the column statistics (the distribution discrepancy).
pub(super) struct ColumnStyle {
    pub(super) mean_sd: f32,
    pub(super) mean_shift: f32,
    pub(super) base_scale: f32,
    pub(super) log_scale_sd: f32,
    pub(super) p_heavy: f32,
    pub(super) p_constant: f32,
}

impl Columns {
    /// Draws the column statistics of a modality of dimension `d` in a given style.
    pub(super) fn draw(r: &mut Rand, d: usize, style: &ColumnStyle, k: f32) -> Self {
        let mut cols = Columns {
            mean: Vec::with_capacity(d),
            scale: Vec::with_capacity(d),
            kind: Vec::with_capacity(d),
        };
        for j in 0..d {
            let mean = k * (style.mean_shift + style.mean_sd * r.normal());
            let scale =
                style.base_scale.powf(k.min(1.0)) * (k * style.log_scale_sd * r.normal()).exp();
            let u = r.uniform(0.0, 1.0);
            // Column 0 is never constant: MulT detects padding by channel 0 being 0.
            let kind = if j > 0 && u < k.min(1.0) * style.p_constant {
                ColKind::Constant
            } else if u < k.min(1.0) * (style.p_constant + style.p_heavy) {
                ColKind::Heavy
            } else {
                ColKind::Normal
            };
            let mean = if kind == ColKind::Constant && mean.abs() < 0.1 {
                mean.signum() * 0.1 + mean
            } else {
                mean
            };
            cols.mean.push(mean);
            cols.scale.push(scale);
            cols.kind.push(kind);
        }
        cols
    }

    /// Maps a standardized frame `z` to raw feature values.
    pub(super) fn emit(&self, z: &[f32], out: &mut [f32]) {
        for j in 0..z.len() {
            out[j] = match self.kind[j] {
                ColKind::Constant => self.mean[j],
                _ => self.mean[j] + self.scale[j] * z[j],
            };
        }
        out[0] = nonzero(out[0]);
    }
}

/// Guarantees a real frame's first channel is never exactly 0 (MulT's padding test).
pub(super) fn nonzero(x: f32) -> f32 {
    if x == 0.0 {
        1e-3
    } else {
        x
    }
}

/// A random unit vector over the non-constant columns.
pub(super) fn unit_direction(r: &mut Rand, cols: &Columns) -> Vec<f32> {
    let mut v: Vec<f32> = cols
        .kind
        .iter()
        .map(|&k| {
            if k == ColKind::Constant {
                0.0
            } else {
                r.normal()
            }
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Everything shared by all samples: column statistics, vocabulary, burst directions.
pub(super) struct World {
    pub(super) cols: [Columns; 3],
    /// `[vocab, d_text]` standardized word embeddings.
    pub(super) vocab: Vec<f32>,
    /// Polarity of each vocabulary word (0 for neutral words).
    pub(super) polarity: Vec<f32>,
    /// Number of neutral words (they come first in the vocabulary).
    pub(super) n_neutral: usize,
    /// Burst direction (standardized space) of the acoustic and visual streams.
    pub(super) burst_dir: [Vec<f32>; 2],
    /// AR(1) coefficient of the acoustic and visual noise.
    pub(super) rho: [f32; 2],
    /// `[d_m, ECHO_DIM]` echo projections of the text, acoustic and visual streams (see
    /// [`SynthConfig::echo`]).
    pub(super) echo_proj: [Vec<f32>; 3],
}

/// Width of the per-word echo latent.
pub(super) const ECHO_DIM: usize = 8;

/// A `[d_m, ECHO_DIM]` random projection with N(0, 1/ECHO_DIM) entries (zero rows for
/// constant columns), so a N(0, I) latent maps to roughly unit-variance columns. With
/// `orth`, every column is made orthogonal to that unit vector (the text's polarity
/// direction: the echo must not blur the sentiment a word carries).
pub(super) fn echo_projection(r: &mut Rand, cols: &Columns, orth: Option<&[f32]>) -> Vec<f32> {
    let d = cols.kind.len();
    let sd = 1.0 / (ECHO_DIM as f32).sqrt();
    let mut p: Vec<f32> = cols
        .kind
        .iter()
        .flat_map(|&k| {
            let row: Vec<f32> = (0..ECHO_DIM)
                .map(|_| {
                    if k == ColKind::Constant {
                        0.0
                    } else {
                        sd * r.normal()
                    }
                })
                .collect();
            row
        })
        .collect();
    if let Some(u) = orth {
        for c in 0..ECHO_DIM {
            let along: f32 = (0..d).map(|j| p[j * ECHO_DIM + c] * u[j]).sum();
            (0..d).for_each(|j| p[j * ECHO_DIM + c] -= along * u[j]);
        }
    }
    p
}

/// `out += gain · P c` for a `[d, ECHO_DIM]` projection `P` and a latent `c`.
pub(super) fn add_projected(out: &mut [f32], proj: &[f32], c: &[f32], gain: f32) {
    for (j, x) in out.iter_mut().enumerate() {
        let row = &proj[j * ECHO_DIM..(j + 1) * ECHO_DIM];
        *x += gain * row.iter().zip(c).map(|(a, b)| a * b).sum::<f32>();
    }
}

/// Number of neutral and sentiment (half positive, half negative) vocabulary words.
pub(super) const N_NEUTRAL: usize = 200;
pub(super) const N_SENTIMENT: usize = 40;
/// Gain of the polarity component of a sentiment word's (standardized) embedding.
pub(super) const POLARITY_GAIN: f32 = 2.0;

impl World {
    pub(super) fn new(cfg: &SynthConfig) -> Self {
        let mut r = Rand::new(cfg.seed, 0);
        let k = cfg.discrepancy;
        let styles = [
            // GloVe-like: centred, small scale, no constant columns.
            ColumnStyle {
                mean_sd: 0.05,
                mean_shift: 0.0,
                base_scale: 0.4,
                log_scale_sd: 0.2,
                p_heavy: 0.05,
                p_constant: 0.0,
            },
            // COVAREP-like: offsets and scales over orders of magnitude, heavy tails.
            ColumnStyle {
                mean_sd: 3.0,
                mean_shift: -1.0,
                base_scale: 2.0,
                log_scale_sd: 1.2,
                p_heavy: 0.3,
                p_constant: 0.1,
            },
            // FACET-like: positive offsets, moderate scales.
            ColumnStyle {
                mean_sd: 1.0,
                mean_shift: 2.0,
                base_scale: 0.8,
                log_scale_sd: 0.5,
                p_heavy: 0.15,
                p_constant: 0.1,
            },
        ];
        let cols: [Columns; 3] =
            std::array::from_fn(|m| Columns::draw(&mut r, cfg.dims[m], &styles[m], k));
        let (vocab, polarity, polarity_dir) = draw_vocabulary(&mut r, cfg.dims[TEXT]);
        let burst_dir = [
            unit_direction(&mut r, &cols[AUDIO]),
            unit_direction(&mut r, &cols[VISION]),
        ];
        // Drawn last, so that datasets without echo stay bit-identical to earlier ones.
        let echo_proj = [
            echo_projection(&mut r, &cols[TEXT], Some(&polarity_dir)),
            echo_projection(&mut r, &cols[AUDIO], None),
            echo_projection(&mut r, &cols[VISION], None),
        ];
        World {
            cols,
            vocab,
            polarity,
            n_neutral: N_NEUTRAL,
            burst_dir,
            rho: [0.6, 0.85],
            echo_proj,
        }
    }

    /// The standardized embedding of vocabulary word `w`.
    pub(super) fn embedding(&self, w: usize, d: usize) -> &[f32] {
        &self.vocab[w * d..(w + 1) * d]
    }
}

/// Draws the vocabulary: neutral words have no component along the polarity direction `u`,
/// sentiment words have `POLARITY_GAIN · s · u` added (|s| ~ U(0.5, 1.5), half negative).
/// Returns the embeddings, the polarities and `u`.
pub(super) fn draw_vocabulary(r: &mut Rand, d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let u = {
        let mut v: Vec<f32> = (0..d).map(|_| r.normal()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    };
    let n_words = N_NEUTRAL + N_SENTIMENT;
    let mut vocab = Vec::with_capacity(n_words * d);
    let mut polarity = Vec::with_capacity(n_words);
    for w in 0..n_words {
        let mut e: Vec<f32> = (0..d).map(|_| r.normal()).collect();
        let along: f32 = e.iter().zip(&u).map(|(a, b)| a * b).sum();
        e.iter_mut().zip(&u).for_each(|(x, ui)| *x -= along * ui);
        let s = if w < N_NEUTRAL {
            0.0
        } else {
            let sign = if (w - N_NEUTRAL).is_multiple_of(2) {
                1.0
            } else {
                -1.0
            };
            sign * r.uniform(0.5, 1.5)
        };
        e.iter_mut()
            .zip(&u)
            .for_each(|(x, ui)| *x += POLARITY_GAIN * s * ui);
        vocab.extend(e);
        polarity.push(s);
    }
    (vocab, polarity, u)
}
