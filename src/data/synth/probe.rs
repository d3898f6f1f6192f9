//! Closed-form probes of a dataset with ground-truth intervals: does its signal need
//! alignment?
//!
//! * The **pooled** probe sees only mean- and max-pooled features of each modality
//!   (standardized), fits a ridge regression on train (ridge strength chosen on valid) and
//!   predicts test.
//! * The **aligned** (oracle) probe knows the form of the planted rule and the TRUE
//!   alignment, but nothing else of the generator: for every word it averages the
//!   co-occurring acoustic and visual frames ([`super::cooccur`]) and fits
//!   `y ≈ b + Σ_words (ẽ·w)(1 + ā·α)(1 + v̄·β)` by alternating least squares on train
//!   (each step a closed-form ridge solve), then predicts test.
//!
//! Both report the Pearson correlation of their test predictions with the target
//! (the sentiment, or for emotion labels the valence code Happy +1, Neutral 0, Sad/Angry −1).

use crate::data::{Dataset, Labels, Modality, Split};
use anyhow::{anyhow, Context, Result};

/// Test-set Pearson correlations of the two probes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeReport {
    /// Aligned (oracle) probe: per-word products with co-occurring frames.
    pub aligned_r: f64,
    /// Pooled probe: ridge on mean/max pooled features.
    pub pooled_r: f64,
}

/// Number of alternating-least-squares rounds of the aligned probe.
const ALS_ROUNDS: usize = 30;
/// Relative ridge strength of the aligned probe's solves.
const ALS_RIDGE: f64 = 1e-4;
/// Relative ridge strengths the pooled probe chooses from on valid.
const POOLED_RIDGES: [f64; 6] = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0];

/// Runs both probes on `ds` (needs `train`, `valid`, `test` splits with intervals).
pub fn probe(ds: &Dataset) -> Result<ProbeReport> {
    let get = |name: &str| {
        ds.splits
            .get(name)
            .ok_or_else(|| anyhow!("dataset has no {name} split"))
    };
    let (train, valid, test) = (get("train")?, get("valid")?, get("test")?);
    let stats = FrameStats::of(train);
    let aligned_r = aligned_probe(&stats, train, test)?;
    let pooled_r = pooled_probe(train, valid, test);
    Ok(ProbeReport {
        aligned_r,
        pooled_r,
    })
}

/// The regression target of a split: sentiment, or the emotion valence code.
pub fn target(labels: &Labels) -> Vec<f64> {
    match labels {
        Labels::Sentiment(v) => v.iter().map(|&x| x as f64).collect(),
        Labels::Emotion(v) => v
            .chunks_exact(4)
            .map(|e| e[1] as f64 - e[2].max(e[3]) as f64)
            .collect(),
    }
}

/// Pearson correlation of two equally long series (0 when either is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

// ---------------------------------------------------------------------------------------
// Linear algebra
// ---------------------------------------------------------------------------------------

/// Ridge regression `y ≈ X w + b` on row-major `x` (`n × p`), penalty `rel · tr(XᵀX)/p`
/// on the centred problem; returns `(w, b)` (`b = 0` without intercept).
fn ridge(x: &[f64], y: &[f64], p: usize, rel: f64, intercept: bool) -> (Vec<f64>, f64) {
    let n = y.len();
    let (mx, my) = if intercept {
        let mut mx = vec![0.0; p];
        for row in x.chunks_exact(p) {
            mx.iter_mut().zip(row).for_each(|(m, v)| *m += v / n as f64);
        }
        (mx, y.iter().sum::<f64>() / n as f64)
    } else {
        (vec![0.0; p], 0.0)
    };
    let mut a = vec![0.0; p * p];
    let mut rhs = vec![0.0; p];
    let mut xc = vec![0.0; p];
    for (row, &yi) in x.chunks_exact(p).zip(y) {
        xc.iter_mut()
            .zip(row.iter().zip(&mx))
            .for_each(|(c, (v, m))| *c = v - m);
        for i in 0..p {
            let xi = xc[i];
            if xi == 0.0 {
                continue;
            }
            rhs[i] += xi * (yi - my);
            let arow = &mut a[i * p..(i + 1) * p];
            arow.iter_mut()
                .zip(&xc)
                .for_each(|(aij, xj)| *aij += xi * xj);
        }
    }
    let trace: f64 = (0..p).map(|i| a[i * p + i]).sum();
    let lambda = rel * (trace / p as f64).max(1e-12);
    (0..p).for_each(|i| a[i * p + i] += lambda);
    let w = cholesky_solve(&mut a, &rhs, p);
    let b = my - w.iter().zip(&mx).map(|(wi, m)| wi * m).sum::<f64>();
    (w, b)
}

/// Solves `A x = b` for symmetric positive definite `A` (overwritten by its factor).
fn cholesky_solve(a: &mut [f64], b: &[f64], p: usize) -> Vec<f64> {
    for j in 0..p {
        let mut d = a[j * p + j];
        for k in 0..j {
            d -= a[j * p + k] * a[j * p + k];
        }
        let d = d.max(1e-12).sqrt();
        a[j * p + j] = d;
        for i in j + 1..p {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= a[i * p + k] * a[j * p + k];
            }
            a[i * p + j] = s / d;
        }
    }
    let mut z = b.to_vec();
    for i in 0..p {
        for k in 0..i {
            z[i] -= a[i * p + k] * z[k];
        }
        z[i] /= a[i * p + i];
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            z[i] -= a[k * p + i] * z[k];
        }
        z[i] /= a[i * p + i];
    }
    z
}

/// `X w + b` for row-major `x`.
fn predict(x: &[f64], w: &[f64], b: f64) -> Vec<f64> {
    x.chunks_exact(w.len())
        .map(|r| b + r.iter().zip(w).map(|(a, c)| a * c).sum::<f64>())
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---------------------------------------------------------------------------------------
// Standardization
// ---------------------------------------------------------------------------------------

/// Per-modality column means / standard deviations over the real frames of a split.
struct FrameStats {
    mean: [Vec<f64>; 3],
    sd: [Vec<f64>; 3],
}

impl FrameStats {
    fn of(split: &Split) -> Self {
        let one = |m: &Modality| {
            let (mut s, mut s2, mut cnt) = (vec![0.0f64; m.d], vec![0.0f64; m.d], 0.0f64);
            for i in 0..m.n {
                for row in real_frames(m, i).chunks_exact(m.d) {
                    for j in 0..m.d {
                        s[j] += row[j] as f64;
                        s2[j] += (row[j] as f64).powi(2);
                    }
                    cnt += 1.0;
                }
            }
            let mean: Vec<f64> = s.iter().map(|v| v / cnt.max(1.0)).collect();
            let sd = s2
                .iter()
                .zip(&mean)
                .map(|(v, mu)| (v / cnt.max(1.0) - mu * mu).max(0.0).sqrt())
                .collect();
            (mean, sd)
        };
        let [(m0, s0), (m1, s1), (m2, s2)] = split.modalities().map(one);
        FrameStats {
            mean: [m0, m1, m2],
            sd: [s0, s1, s2],
        }
    }

    /// Standardizes a raw frame of modality `m` (constant columns → 0).
    fn standardize(&self, m: usize, row: &[f32]) -> Vec<f64> {
        row.iter()
            .zip(self.mean[m].iter().zip(&self.sd[m]))
            .map(|(&v, (mu, sd))| {
                if *sd > 1e-9 {
                    (v as f64 - mu) / sd
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// The real (non-padding) frames of sample `i`, `[len, d]`.
fn real_frames(m: &Modality, i: usize) -> &[f32] {
    let s = m.sample(i);
    &s[(m.t - m.lengths[i]) * m.d..]
}

// ---------------------------------------------------------------------------------------
// Aligned probe
// ---------------------------------------------------------------------------------------

/// One word with the averaged co-occurring acoustic and visual frames, standardized.
struct AlignedWord {
    e: Vec<f64>,
    a: Vec<f64>,
    v: Vec<f64>,
}

/// Per sample, its words with their co-occurring frame averages.
fn aligned_words(stats: &FrameStats, split: &Split) -> Result<Vec<Vec<AlignedWord>>> {
    let iv = split
        .intervals
        .as_ref()
        .context("the aligned probe needs ground-truth intervals")?;
    let n = split.len();
    let mods = split.modalities();
    let mean_of = |m: usize, i: usize, idx: &[usize]| {
        let md = mods[m];
        let mut acc = vec![0.0; md.d];
        for &t in idx {
            let z = stats.standardize(m, &md.sample(i)[t * md.d..(t + 1) * md.d]);
            acc.iter_mut().zip(z).for_each(|(a, z)| *a += z);
        }
        acc.iter_mut().for_each(|a| *a /= idx.len().max(1) as f64);
        acc
    };
    Ok((0..n)
        .map(|i| {
            let to_a = super::cooccur(iv, n, 0, 1, i);
            let to_v = super::cooccur(iv, n, 0, 2, i);
            let text = &split.text;
            (text.t - text.lengths[i]..text.t)
                .map(|t| {
                    let mut e = stats.standardize(0, &text.sample(i)[t * text.d..(t + 1) * text.d]);
                    e.push(1.0);
                    AlignedWord {
                        e,
                        a: mean_of(1, i, &to_a[t]),
                        v: mean_of(2, i, &to_v[t]),
                    }
                })
                .collect()
        })
        .collect())
}

/// Parameters of the aligned model `b + Σ (ẽ·w)(1 + ā·α)(1 + v̄·β)`.
struct AlignedModel {
    w: Vec<f64>,
    alpha: Vec<f64>,
    beta: Vec<f64>,
    b: f64,
}

impl AlignedModel {
    fn predict(&self, sample: &[AlignedWord]) -> f64 {
        self.b
            + sample
                .iter()
                .map(|x| {
                    dot(&x.e, &self.w)
                        * (1.0 + dot(&x.a, &self.alpha))
                        * (1.0 + dot(&x.v, &self.beta))
                })
                .sum::<f64>()
    }

    /// Fits by alternating closed-form least squares over (w, b), α and β.
    fn fit(data: &[Vec<AlignedWord>], y: &[f64]) -> Self {
        let first = &data.iter().flatten().next().expect("no words");
        let (pe, pa, pv) = (first.e.len(), first.a.len(), first.v.len());
        let mut m = AlignedModel {
            w: vec![0.0; pe],
            alpha: vec![0.0; pa],
            beta: vec![0.0; pv],
            b: 0.0,
        };
        for _ in 0..ALS_ROUNDS {
            // (w, b): linear in w given α, β.
            let x: Vec<f64> = data
                .iter()
                .flat_map(|s| {
                    let mut acc = vec![0.0; pe];
                    for wd in s {
                        let c = (1.0 + dot(&wd.a, &m.alpha)) * (1.0 + dot(&wd.v, &m.beta));
                        acc.iter_mut().zip(&wd.e).for_each(|(a, e)| *a += c * e);
                    }
                    acc
                })
                .collect();
            (m.w, m.b) = ridge(&x, y, pe, ALS_RIDGE, true);
            m.alpha = m.factor_step(data, y, pa, |wd| &wd.a, |wd, m| 1.0 + dot(&wd.v, &m.beta));
            m.beta = m.factor_step(data, y, pv, |wd| &wd.v, |wd, m| 1.0 + dot(&wd.a, &m.alpha));
        }
        m
    }

    /// One factor's step: with `g = (ẽ·w)·other`, `y − b − Σ g ≈ (Σ g·feat)·θ`.
    fn factor_step(
        &self,
        data: &[Vec<AlignedWord>],
        y: &[f64],
        p: usize,
        feat: impl Fn(&AlignedWord) -> &Vec<f64>,
        other: impl Fn(&AlignedWord, &AlignedModel) -> f64,
    ) -> Vec<f64> {
        let mut x = Vec::with_capacity(data.len() * p);
        let mut r = Vec::with_capacity(data.len());
        for (s, &yi) in data.iter().zip(y) {
            let mut acc = vec![0.0; p];
            let mut base = 0.0;
            for wd in s {
                let g = dot(&wd.e, &self.w) * other(wd, self);
                base += g;
                acc.iter_mut().zip(feat(wd)).for_each(|(a, f)| *a += g * f);
            }
            x.extend(acc);
            r.push(yi - self.b - base);
        }
        ridge(&x, &r, p, ALS_RIDGE, false).0
    }
}

/// Test Pearson of the aligned probe fitted on `train`.
fn aligned_probe(stats: &FrameStats, train: &Split, test: &Split) -> Result<f64> {
    let tr = aligned_words(stats, train)?;
    let te = aligned_words(stats, test)?;
    let model = AlignedModel::fit(&tr, &target(&train.labels));
    let pred: Vec<f64> = te.iter().map(|s| model.predict(s)).collect();
    Ok(pearson(&pred, &target(&test.labels)))
}

// ---------------------------------------------------------------------------------------
// Pooled probe
// ---------------------------------------------------------------------------------------

/// Mean- and max-pooled features of every modality, `n × 2(d_l + d_a + d_v)`.
fn pooled_features(split: &Split) -> (Vec<f64>, usize) {
    let p: usize = split.modalities().iter().map(|m| 2 * m.d).sum();
    let mut x = Vec::with_capacity(split.len() * p);
    for i in 0..split.len() {
        for m in split.modalities() {
            let mut mean = vec![0.0; m.d];
            let mut max = vec![f64::NEG_INFINITY; m.d];
            let frames = real_frames(m, i);
            for row in frames.chunks_exact(m.d) {
                for j in 0..m.d {
                    mean[j] += row[j] as f64 / m.lengths[i].max(1) as f64;
                    max[j] = max[j].max(row[j] as f64);
                }
            }
            max.iter_mut()
                .filter(|v| !v.is_finite())
                .for_each(|v| *v = 0.0);
            x.extend(mean);
            x.extend(max);
        }
    }
    (x, p)
}

/// Column-standardizes `x` with the statistics of `reference` (constant columns → 0).
fn standardize_cols(x: &mut [f64], reference: &[f64], p: usize) {
    let n = (reference.len() / p) as f64;
    for j in 0..p {
        let mu = reference.iter().skip(j).step_by(p).sum::<f64>() / n;
        let var = reference
            .iter()
            .skip(j)
            .step_by(p)
            .map(|v| (v - mu).powi(2))
            .sum::<f64>()
            / n;
        let sd = var.sqrt();
        for v in x.iter_mut().skip(j).step_by(p) {
            *v = if sd > 1e-9 { (*v - mu) / sd } else { 0.0 };
        }
    }
}

/// Test Pearson of the pooled probe (ridge strength chosen by valid Pearson).
fn pooled_probe(train: &Split, valid: &Split, test: &Split) -> f64 {
    let (xtr_raw, p) = pooled_features(train);
    let mut xs = [
        xtr_raw.clone(),
        pooled_features(valid).0,
        pooled_features(test).0,
    ];
    xs.iter_mut().for_each(|x| standardize_cols(x, &xtr_raw, p));
    let [xtr, xva, xte] = xs;
    let (ytr, yva, yte) = (
        target(&train.labels),
        target(&valid.labels),
        target(&test.labels),
    );
    let best = POOLED_RIDGES
        .iter()
        .map(|&rel| {
            let (w, b) = ridge(&xtr, &ytr, p, rel, true);
            (pearson(&predict(&xva, &w, b), &yva), w, b)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .expect("ridge grid is not empty");
    pearson(&predict(&xte, &best.1, best.2), &yte)
}
