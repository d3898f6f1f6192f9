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
    // Published Lanczos coefficients, kept digit for digit.
    #[allow(clippy::excessive_precision)]
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
    if !(a > 0.0 && b > 0.0 && (0.0..=1.0).contains(&x)) {
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
    if t.is_nan() || df.is_nan() || df <= 0.0 {
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
    if t.is_nan() || df.is_nan() || df <= 0.0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    #[test]
    fn paired_t_test_matches_closed_forms() {
        // d = a - b = [1, 2, 3, 4]: mean 2.5, var(ddof 1) = 5/3, se = sqrt(5/12),
        // t = 2.5 / sqrt(5/12) = sqrt(15), df = 3. Student-t with 3 df:
        // F(t) = 1/2 + (1/pi) (t/(sqrt3 (1 + t^2/3)) + atan(t/sqrt3)); with t^2/3 = 5:
        // p = 2 (1 - F) = 1 - (2/pi) (sqrt5/6 + atan(sqrt5)) = 0.0304662916621...
        // (scipy.stats.ttest_rel([2,4,6,8],[1,2,3,4]): t 3.872983346207417,
        //  p 0.030466291662170977).
        let r = paired_t_test(&[2.0, 4.0, 6.0, 8.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((r.t - 15f64.sqrt()).abs() < 1e-14);
        assert_eq!(r.df, 3.0);
        let p = 1.0 - 2.0 / PI * (5f64.sqrt() / 6.0 + 5f64.sqrt().atan());
        assert!((r.p_value - p).abs() < 1e-13, "{} vs {p}", r.p_value);
        assert!((r.p_value - 0.030466291662170977).abs() < 1e-13);
        assert_eq!(r.mean_diff, 2.5);

        // d = [1, 3]: t = 2 / (sqrt2 / sqrt2) = 2, df = 1 (Cauchy):
        // p = 1 - (2/pi) atan(2) = 0.29516723530086653 (scipy: 0.2951672353008665).
        let r = paired_t_test(&[3.0, 5.0], &[2.0, 2.0]);
        assert!((r.t - 2.0).abs() < 1e-15);
        assert!((r.p_value - (1.0 - 2.0 / PI * 2f64.atan())).abs() < 1e-14);
    }

    #[test]
    fn paired_t_test_matches_scipy_on_seed_like_data() {
        // scipy.stats.ttest_rel(a, b) -> t 3.282700017209169, p 0.030423416648821675.
        let a = [0.812, 0.805, 0.821, 0.799, 0.815];
        let b = [0.801, 0.798, 0.809, 0.800, 0.806];
        let r = paired_t_test(&a, &b);
        assert!((r.t - 3.282700017209169).abs() < 1e-11);
        assert!((r.p_value - 0.030423416648821675).abs() < 1e-12);
        // Antisymmetric in the arguments, same p.
        let s = paired_t_test(&b, &a);
        assert!((s.t + r.t).abs() < 1e-12 && (s.p_value - r.p_value).abs() < 1e-15);
    }

    #[test]
    fn degenerate_t_tests() {
        let r = paired_t_test(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]);
        assert!(r.t.is_nan() && r.p_value.is_nan());
        let r = paired_t_test(&[2.0, 3.0, 4.0], &[1.0, 2.0, 3.0]);
        assert_eq!(r.t, f64::INFINITY);
        assert_eq!(r.p_value, 0.0);
        assert!(paired_t_test(&[1.0], &[2.0]).p_value.is_nan());
        assert!(paired_t_test(&[1.0, 2.0], &[2.0]).p_value.is_nan());
    }

    #[test]
    fn special_functions_match_references() {
        // ln Γ(n) = ln((n-1)!), ln Γ(1/2) = ln(sqrt(pi)).
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-14);
        assert!((ln_gamma(0.5) - PI.sqrt().ln()).abs() < 1e-14);
        // scipy.special.gammaln(0.3) = 1.0957979948180756, gammaln(171.5) = 709.1431630309283
        assert!((ln_gamma(0.3) - 1.0957979948180756).abs() < 1e-13);
        assert!((ln_gamma(171.5) - 709.1431630309283).abs() < 1e-10);
        // I_x(a, 1) = x^a and I_x(1, b) = 1 - (1 - x)^b.
        assert!((inc_beta(3.5, 1.0, 0.3) - 0.3f64.powf(3.5)).abs() < 1e-14);
        assert!((inc_beta(1.0, 4.0, 0.3) - (1.0 - 0.7f64.powi(4))).abs() < 1e-14);
        // scipy.special.betainc(2.5, 0.5, 0.3) = 0.018927124071945658,
        // betainc(10, 20, 0.4) = 0.7853183897628262.
        assert!((inc_beta(2.5, 0.5, 0.3) - 0.018927124071945658).abs() < 1e-14);
        assert!((inc_beta(10.0, 20.0, 0.4) - 0.7853183897628262).abs() < 1e-13);
        assert!(inc_beta(1.0, 1.0, 1.5).is_nan());
        // scipy.stats.t.cdf(-2.3, 7.5) = 0.026286448052184542, t.sf(40, 3) = 1.7190340394579253e-05.
        assert!((student_t_cdf(-2.3, 7.5) - 0.026286448052184542).abs() < 1e-14);
        assert!((student_t_sf(40.0, 3.0) / 1.7190340394579253e-05 - 1.0).abs() < 1e-10);
        assert_eq!(student_t_cdf(0.0, 5.0), 0.5);
    }

    #[test]
    fn mean_and_std_helpers() {
        let x = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&x), 5.0);
        assert_eq!(std_pop(&x), 2.0);
        assert!((std_sample(&x) - (32.0f64 / 7.0).sqrt()).abs() < 1e-15);
        assert!(std_sample(&[1.0]).is_nan());
    }
}
