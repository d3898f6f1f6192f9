//! Small statistics: mean / std, the paired t-test (as `scipy.stats.ttest_rel`, two-sided)
//! and the special functions it needs (log-gamma, regularised incomplete beta, Student-t CDF).

use serde::{Deserialize, Serialize};

/// Arithmetic mean (`NaN` for an empty slice).
pub fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Variance with `ddof` delta degrees of freedom (`NaN` when `len <= ddof`).
pub fn variance(x: &[f64], ddof: usize) -> f64 {
    if x.len() <= ddof {
        return f64::NAN;
    }
    let m = mean(x);
    x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - ddof) as f64
}

/// Population standard deviation (ddof 0, numpy's default and MMSA's report).
pub fn std_pop(x: &[f64]) -> f64 {
    variance(x, 0).sqrt()
}

/// Sample standard deviation (ddof 1).
pub fn std_sample(x: &[f64]) -> f64 {
    variance(x, 1).sqrt()
}

/// `ln Γ(x)` for `x > 0` (Lanczos approximation, g = 7, 9 coefficients; relative error
/// around 1e-15), with the reflection formula for `x < 0.5`.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_93,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_13,
        -176.615_029_162_140_59,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_571_6e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Γ(x) Γ(1-x) = π / sin(πx)
        let s = (std::f64::consts::PI * x).sin().abs();
        return std::f64::consts::PI.ln() - s.ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (Numerical Recipes' `betacf`,
/// modified Lentz), accurate to about 1e-15.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const MAX_ITER: usize = 10_000;
    const EPS: f64 = 1e-16;
    const FPMIN: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < FPMIN {
        d = FPMIN;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=MAX_ITER {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = 1.0 + aa / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = 1.0 + aa / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// Regularised incomplete beta function `I_x(a, b)` for `a, b > 0`, `0 <= x <= 1`
/// (Numerical Recipes' `betai`: continued fraction on the side where it converges fast).
/// `NaN` outside the domain.
pub fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if !(a > 0.0 && b > 0.0) || !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    if x == 0.0 || x == 1.0 {
        return x;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Survival function `P(T > t)` of Student's t with `df` degrees of freedom (exact in the
/// tails: `I_{df/(df+t^2)}(df/2, 1/2) / 2` for `t > 0`).
pub fn student_t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() || !(df > 0.0) {
        return f64::NAN;
    }
    if t.is_infinite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    let tail = 0.5 * inc_beta(0.5 * df, 0.5, df / (df + t * t));
    if t > 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// Cumulative distribution function `P(T <= t)` of Student's t with `df` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || !(df > 0.0) {
        return f64::NAN;
    }
    student_t_sf(-t, df)
}

/// Result of a paired t-test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TTest {
    /// t statistic of `mean(a - b) / (std_sample(a - b) / sqrt(n))`.
    pub t: f64,
    /// Degrees of freedom, `n - 1`.
    pub df: f64,
    /// Two-sided p-value `2 P(T > |t|)`.
    pub p_value: f64,
    /// `mean(a - b)`.
    pub mean_diff: f64,
}

/// Paired two-sided t-test of `a` against `b` (same length, paired by index), like
/// `scipy.stats.ttest_rel(a, b)`: `t = mean(d) / sqrt(var(d, ddof=1) / n)` with
/// `d = a - b`, `df = n - 1`. Constant non-zero differences give `t = ±inf`, `p = 0`;
/// all-zero differences give `t = NaN`, `p = NaN` (scipy does the same). Fewer than two
/// pairs or unequal lengths give `NaN`.
pub fn paired_t_test(a: &[f64], b: &[f64]) -> TTest {
    let n = a.len();
    if n != b.len() || n < 2 {
        return TTest {
            t: f64::NAN,
            df: f64::NAN,
            p_value: f64::NAN,
            mean_diff: f64::NAN,
        };
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let dm = mean(&d);
    let se = (variance(&d, 1) / n as f64).sqrt();
    let t = dm / se;
    let df = (n - 1) as f64;
    let p_value = if t.is_nan() {
        f64::NAN
    } else {
        (2.0 * student_t_sf(t.abs(), df)).min(1.0)
    };
    TTest {
        t,
        df,
        p_value,
        mean_diff: dm,
    }
}
