//! Proxy A-distance between two sets of vectors (paper Table 6: queries vs keys of the
//! last layer), after Ben-David et al.: `A = 2 (1 - 2 err)` where `err` is the test error
//! of a linear domain classifier.
//!
//! Protocol (the paper leaves the details open; these are mica's choices):
//! * Split: each domain is shuffled with a ChaCha8 RNG seeded by `seed` and split in half
//!   (stratified, so both halves hold both domains in the same proportion); the first
//!   halves train, the second halves test.
//! * Features are standardised with the mean / std of the TRAIN half (a constant feature
//!   keeps scale 1).
//! * Classifier: L2-regularised logistic regression (bias unpenalised), objective
//!   `mean log-loss + l2 / 2 * |w|^2`, minimised by Newton's method with backtracking
//!   (deterministic: no randomness besides the split).
//! * `err` = share of misclassified TEST elements (threshold p >= 0.5 means "second set").
//! * `A` is reported RAW, not clamped: a classifier worse than chance gives `A < 0`
//!   (the paper's `2 (1 - 2 err)` has range [-2, 2]; clamp at 0 yourself if you want the
//!   usual [0, 2] convention).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Settings of the proxy A-distance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ADistanceConfig {
    /// Seed of the train / test split.
    pub seed: u64,
    /// L2 penalty strength on the weights (not the bias).
    pub l2: f64,
    /// Maximum Newton iterations.
    pub max_iter: usize,
    /// Stop when the largest parameter update is below this.
    pub tol: f64,
}

impl Default for ADistanceConfig {
    fn default() -> Self {
        ADistanceConfig {
            seed: 0,
            l2: 1e-3,
            max_iter: 100,
            tol: 1e-8,
        }
    }
}

/// Result of [`proxy_a_distance`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ADistance {
    /// `2 (1 - 2 err)`, not clamped.
    pub a_distance: f64,
    /// Test error of the domain classifier.
    pub test_error: f64,
    /// Train error of the domain classifier (diagnostic).
    pub train_error: f64,
    /// Number of training elements (both domains).
    pub n_train: usize,
    /// Number of test elements (both domains).
    pub n_test: usize,
    /// Newton iterations used.
    pub iterations: usize,
}

/// Errors of [`proxy_a_distance`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ADistanceError {
    /// A buffer is not a whole number of `dim`-vectors, or `dim` is 0.
    #[error("buffer of {len} values is not a whole number of {dim}-dim vectors")]
    Shape {
        /// Buffer length.
        len: usize,
        /// Vector dimension.
        dim: usize,
    },
    /// A set has fewer than 2 vectors (each half needs one).
    #[error("each set needs at least 2 vectors (got {0} and {1})")]
    TooFew(usize, usize),
}

/// Proxy A-distance between the vectors of `a` and `b` (row-major `[n_a, dim]` and
/// `[n_b, dim]`), see the module documentation for the protocol.
pub fn proxy_a_distance(
    a: &[f32],
    b: &[f32],
    dim: usize,
    cfg: &ADistanceConfig,
) -> Result<ADistance, ADistanceError> {
    for buf in [a, b] {
        if dim == 0 || buf.len() % dim != 0 {
            return Err(ADistanceError::Shape {
                len: buf.len(),
                dim,
            });
        }
    }
    let (na, nb) = (a.len() / dim, b.len() / dim);
    if na < 2 || nb < 2 {
        return Err(ADistanceError::TooFew(na, nb));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut train: Vec<(&[f32], f64)> = Vec::new();
    let mut test: Vec<(&[f32], f64)> = Vec::new();
    for (buf, n, label) in [(a, na, 0.0), (b, nb, 1.0)] {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut rng);
        let half = n / 2;
        for (k, &i) in idx.iter().enumerate() {
            let row = (&buf[i * dim..(i + 1) * dim], label);
            if k < half {
                train.push(row);
            } else {
                test.push(row);
            }
        }
    }
    let (mu, sd) = standardiser(&train, dim);
    let design = |rows: &[(&[f32], f64)]| -> (Vec<f64>, Vec<f64>) {
        let mut x = Vec::with_capacity(rows.len() * (dim + 1));
        let mut y = Vec::with_capacity(rows.len());
        for (v, label) in rows {
            for j in 0..dim {
                x.push((v[j] as f64 - mu[j]) / sd[j]);
            }
            x.push(1.0);
            y.push(*label);
        }
        (x, y)
    };
    let (xtr, ytr) = design(&train);
    let (xte, yte) = design(&test);
    let fit = logistic_regression(&xtr, &ytr, dim + 1, cfg.l2, cfg.max_iter, cfg.tol);
    let train_error = error_rate(&xtr, &ytr, &fit.weights);
    let test_error = error_rate(&xte, &yte, &fit.weights);
    Ok(ADistance {
        a_distance: 2.0 * (1.0 - 2.0 * test_error),
        test_error,
        train_error,
        n_train: ytr.len(),
        n_test: yte.len(),
        iterations: fit.iterations,
    })
}

/// Per-feature mean and std (ddof 0) of the training rows; std 0 becomes 1.
fn standardiser(rows: &[(&[f32], f64)], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let mut mu = vec![0.0; dim];
    for (v, _) in rows {
        for j in 0..dim {
            mu[j] += v[j] as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0; dim];
    for (v, _) in rows {
        for j in 0..dim {
            let d = v[j] as f64 - mu[j];
            var[j] += d * d;
        }
    }
    let sd = var
        .iter()
        .map(|s| {
            let s = (s / n).sqrt();
            if s > 0.0 && s.is_finite() {
                s
            } else {
                1.0
            }
        })
        .collect();
    (mu, sd)
}

/// A fitted logistic regression.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticFit {
    /// Weights, the last one multiplies the constant column (bias).
    pub weights: Vec<f64>,
    /// Newton iterations used.
    pub iterations: usize,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Log-loss term `log(1 + exp(z)) - y z`, computed stably.
fn log_loss(z: f64, y: f64) -> f64 {
    let softplus = if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    };
    softplus - y * z
}

fn objective(x: &[f64], y: &[f64], w: &[f64], l2: f64) -> f64 {
    let p = w.len();
    let n = y.len();
    let loss: f64 = (0..n)
        .map(|i| log_loss(dot(&x[i * p..(i + 1) * p], w), y[i]))
        .sum::<f64>()
        / n as f64;
    loss + 0.5 * l2 * w[..p - 1].iter().map(|v| v * v).sum::<f64>()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// L2-regularised logistic regression by Newton's method with backtracking line search.
/// `x` is row-major `[n, p]` whose LAST column is the constant 1 (its weight, the bias, is
/// not penalised); `y` in {0, 1}. Deterministic.
pub fn logistic_regression(
    x: &[f64],
    y: &[f64],
    p: usize,
    l2: f64,
    max_iter: usize,
    tol: f64,
) -> LogisticFit {
    let n = y.len();
    let mut w = vec![0.0; p];
    let mut iterations = 0;
    let mut f = objective(x, y, &w, l2);
    for it in 0..max_iter {
        iterations = it + 1;
        let mut grad = vec![0.0; p];
        let mut hess = vec![0.0; p * p];
        for i in 0..n {
            let row = &x[i * p..(i + 1) * p];
            let mu = sigmoid(dot(row, &w));
            let r = mu - y[i];
            let s = mu * (1.0 - mu);
            for j in 0..p {
                grad[j] += r * row[j];
                let sj = s * row[j];
                for k in 0..=j {
                    hess[j * p + k] += sj * row[k];
                }
            }
        }
        for j in 0..p {
            grad[j] /= n as f64;
            for k in 0..=j {
                hess[j * p + k] /= n as f64;
                hess[k * p + j] = hess[j * p + k];
            }
            // Ridge on the weights; a tiny one on the bias keeps H positive definite.
            hess[j * p + j] += if j + 1 < p { l2 } else { 1e-10 };
            if j + 1 < p {
                grad[j] += l2 * w[j];
            }
        }
        let step = match cholesky_solve(&hess, &grad, p) {
            Some(s) => s,
            None => grad.clone(),
        };
        // Backtracking: halve until the objective does not increase.
        let mut scale = 1.0;
        let mut accepted = false;
        for _ in 0..40 {
            let cand: Vec<f64> = w.iter().zip(&step).map(|(a, s)| a - scale * s).collect();
            let fc = objective(x, y, &cand, l2);
            if fc <= f {
                w = cand;
                f = fc;
                accepted = true;
                break;
            }
            scale *= 0.5;
        }
        let max_update = step.iter().fold(0.0f64, |m, s| m.max((scale * s).abs()));
        if !accepted || max_update < tol {
            break;
        }
    }
    LogisticFit {
        weights: w,
        iterations,
    }
}

/// Solves `A x = b` for symmetric positive definite `A` (`[p, p]` row-major) by
/// Cholesky; `None` when `A` is not positive definite.
fn cholesky_solve(a: &[f64], b: &[f64], p: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..=i {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= l[i * p + k] * l[j * p + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * p + i] = s.sqrt();
            } else {
                l[i * p + j] = s / l[j * p + j];
            }
        }
    }
    let mut z = vec![0.0; p];
    for i in 0..p {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * p + k] * z[k];
        }
        z[i] = s / l[i * p + i];
    }
    let mut x = vec![0.0; p];
    for i in (0..p).rev() {
        let mut s = z[i];
        for k in i + 1..p {
            s -= l[k * p + i] * x[k];
        }
        x[i] = s / l[i * p + i];
    }
    Some(x)
}

/// Share of rows whose prediction (`sigmoid(x w) >= 0.5`) differs from `y`.
fn error_rate(x: &[f64], y: &[f64], w: &[f64]) -> f64 {
    let p = w.len();
    let wrong = (0..y.len())
        .filter(|&i| {
            let pred = if dot(&x[i * p..(i + 1) * p], w) >= 0.0 {
                1.0
            } else {
                0.0
            };
            pred != y[i]
        })
        .count();
    wrong as f64 / y.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn gaussian(n: usize, dim: usize, shift: f32, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim)
            .map(|k| {
                // Box-Muller: one standard normal per value.
                let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
                let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                z as f32 + if k % dim == 0 { shift } else { 0.0 }
            })
            .collect()
    }

    #[test]
    fn identical_samples_give_about_zero() {
        let a = gaussian(600, 8, 0.0, 1);
        let r = proxy_a_distance(&a, &a, 8, &ADistanceConfig::default()).unwrap();
        assert_eq!((r.n_train, r.n_test), (600, 600));
        // Chance level: err ~ 0.5 (sd of A about 0.06 here).
        assert!(r.a_distance.abs() < 0.3, "{r:?}");
    }

    #[test]
    fn same_distribution_gives_about_zero() {
        let a = gaussian(500, 8, 0.0, 2);
        let b = gaussian(500, 8, 0.0, 3);
        let r = proxy_a_distance(&a, &b, 8, &ADistanceConfig::default()).unwrap();
        assert!(r.a_distance.abs() < 0.3, "{r:?}");
    }

    #[test]
    fn separated_samples_give_about_two() {
        let a = gaussian(300, 8, 0.0, 4);
        let b = gaussian(300, 8, 20.0, 5);
        let r = proxy_a_distance(&a, &b, 8, &ADistanceConfig::default()).unwrap();
        assert_eq!(r.test_error, 0.0);
        assert_eq!(r.a_distance, 2.0);
    }

    #[test]
    fn partially_overlapping_is_between_and_deterministic() {
        // Unit-variance shift of 2 along one axis: Bayes error Phi(-1) = 0.159,
        // A = 2 (1 - 2 * 0.159) = 1.37.
        let a = gaussian(1000, 4, 0.0, 6);
        let b = gaussian(1000, 4, 2.0, 7);
        let cfg = ADistanceConfig {
            seed: 9,
            ..Default::default()
        };
        let r = proxy_a_distance(&a, &b, 4, &cfg).unwrap();
        assert!((r.a_distance - 1.37).abs() < 0.15, "{r:?}");
        assert_eq!(r, proxy_a_distance(&a, &b, 4, &cfg).unwrap());
        let other = ADistanceConfig { seed: 10, ..cfg };
        assert_ne!(
            r.test_error,
            proxy_a_distance(&a, &b, 4, &other).unwrap().test_error
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let cfg = ADistanceConfig::default();
        assert!(matches!(
            proxy_a_distance(&[0.0; 7], &[0.0; 8], 2, &cfg),
            Err(ADistanceError::Shape { len: 7, dim: 2 })
        ));
        assert!(matches!(
            proxy_a_distance(&[0.0; 2], &[0.0; 8], 2, &cfg),
            Err(ADistanceError::TooFew(1, 4))
        ));
    }

    #[test]
    fn ten_thousand_vectors_of_dim_40_are_fast() {
        let a = gaussian(5000, 40, 0.3, 11);
        let b = gaussian(5000, 40, 0.0, 12);
        let t = std::time::Instant::now();
        let r = proxy_a_distance(&a, &b, 40, &ADistanceConfig::default()).unwrap();
        assert!(r.iterations < 100);
        assert!(t.elapsed().as_secs_f64() < 20.0, "{:?}", t.elapsed());
    }
}
