//! numpy / sklearn / Python arithmetic reproduced exactly: pairwise sums, MAE in float32,
//! OpenBLAS's dot, `np.corrcoef`, `np.round`, sklearn's accuracy and weighted F1, and
//! Python's `round(x, n)`.

use std::collections::BTreeSet;

/// numpy's pairwise summation (`pairwise_sum_FLOAT` / `_DOUBLE`: block size 128, 8-way
/// unrolled), as used by `np.add.reduce` / `np.mean` on a contiguous array, in the
/// arithmetic of `T`.
fn pairwise_sum<T: Copy + Default + std::ops::Add<Output = T> + std::ops::AddAssign>(a: &[T]) -> T {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = T::default();
        for &x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [T::default(); 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// numpy's float32 pairwise summation (see [`pairwise_sum`]).
pub fn pairwise_sum_f32(a: &[f32]) -> f32 {
    pairwise_sum(a)
}

/// numpy's float64 pairwise summation (see [`pairwise_sum`]).
pub fn pairwise_sum_f64(a: &[f64]) -> f64 {
    pairwise_sum(a)
}

/// Mean absolute error computed the way MulT / MMSA do: both vectors cast to `f32`,
/// `np.mean(np.absolute(p - t))` in float32 (pairwise sum, then division by N in f32),
/// the float32 result widened to `f64`. `NaN` for empty input.
pub fn mae_f32(preds: &[f64], labels: &[f64]) -> f64 {
    let diffs: Vec<f32> = preds
        .iter()
        .zip(labels)
        .map(|(&p, &t)| ((p as f32) - (t as f32)).abs())
        .collect();
    if diffs.is_empty() {
        return f64::NAN;
    }
    (pairwise_sum_f32(&diffs) / diffs.len() as f32) as f64
}

/// Mean absolute error in `f64` (for reference; the published number is [`mae_f32`]).
pub fn mae_f64(preds: &[f64], labels: &[f64]) -> f64 {
    let d: Vec<f64> = preds
        .iter()
        .zip(labels)
        .map(|(p, t)| (p - t).abs())
        .collect();
    pairwise_sum_f64(&d) / d.len() as f64
}

/// Dot product as OpenBLAS (0.3.x, Haswell kernels, what numpy's wheels run on x86-64)
/// computes an entry of `X @ X.T` via `dsyrk`: the K dimension is cut into blocks
/// (`GEMM_Q` = 256; a remainder between 256 and 512 is halved), each block is one
/// sequential fused-multiply-add chain from 0, and the block results are added in order.
/// This reproduces `np.cov` / `np.corrcoef` bit for bit on such machines; elsewhere the
/// difference is a few ulps.
pub fn blas_dot(a: &[f64], b: &[f64]) -> f64 {
    const Q: usize = 256;
    let k = a.len().min(b.len());
    let mut c = 0.0f64;
    let mut ls = 0;
    while ls < k {
        let mut m = k - ls;
        if m >= 2 * Q {
            m = Q;
        } else if m > Q {
            m = m.div_ceil(2);
        }
        let mut acc = 0.0f64;
        for i in ls..ls + m {
            acc = a[i].mul_add(b[i], acc);
        }
        c += acc;
        ls += m;
    }
    c
}

/// Pearson correlation in `f64`, reproducing `np.corrcoef(p, t)[0][1]`: centre by the
/// means (pairwise sums), `c = X X^T` via [`blas_dot`], `c *= 1 / (N - 1)`, then
/// `c01 / sqrt(c00) / sqrt(c11)` clipped to [-1, 1].
/// `NaN` when either vector is constant or the input is empty.
pub fn pearson(p: &[f64], t: &[f64]) -> f64 {
    let n = p.len().min(t.len());
    if n == 0 {
        return f64::NAN;
    }
    let (p, t) = (&p[..n], &t[..n]);
    let mp = pairwise_sum_f64(p) / n as f64;
    let mt = pairwise_sum_f64(t) / n as f64;
    let a: Vec<f64> = p.iter().map(|v| v - mp).collect();
    let b: Vec<f64> = t.iter().map(|v| v - mt).collect();
    let inv_fact = 1.0 / (n as f64 - 1.0);
    let c00 = blas_dot(&a, &a) * inv_fact;
    let c11 = blas_dot(&b, &b) * inv_fact;
    let c01 = blas_dot(&a, &b) * inv_fact;
    let c = c01 / c00.sqrt() / c11.sqrt();
    if c.is_nan() {
        c
    } else {
        c.clamp(-1.0, 1.0)
    }
}

/// numpy's `np.round` (round half to even) — Rust's `round_ties_even`.
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// MulT's `multiclass_acc` after clipping both vectors to `[-clip, clip]`:
/// `mean(round(clip(p)) == round(clip(t)))` with round half to even.
pub fn multiclass_acc(p: &[f64], t: &[f64], clip: f64) -> f64 {
    let n = p.len().min(t.len());
    let hits = p
        .iter()
        .zip(t)
        .filter(|(&a, &b)| np_round(a.clamp(-clip, clip)) == np_round(b.clamp(-clip, clip)))
        .count();
    hits as f64 / n as f64
}

/// sklearn's `accuracy_score`: share of equal entries (`NaN` for empty input).
pub fn accuracy<T: PartialEq>(y_true: &[T], y_pred: &[T]) -> f64 {
    let n = y_true.len().min(y_pred.len());
    let hits = y_true.iter().zip(y_pred).filter(|(a, b)| a == b).count();
    hits as f64 / n as f64
}

/// sklearn's `f1_score(y_true, y_pred, average='weighted')`.
///
/// Classes: the sorted union of the values in `y_true` and `y_pred`. Per class
/// `F1_c = 2 TP / (2 TP + FP + FN)` (0 when the denominator is 0); the result is
/// `sum_c F1_c * support_true(c) / sum_c support_true(c)` with supports counted in the
/// FIRST argument. `NaN` for empty input (sklearn raises).
pub fn weighted_f1<T: Ord + Copy>(y_true: &[T], y_pred: &[T]) -> f64 {
    let n = y_true.len().min(y_pred.len());
    let classes: BTreeSet<T> = y_true[..n].iter().chain(&y_pred[..n]).copied().collect();
    let mut weighted = 0.0f64;
    let mut total = 0.0f64;
    for c in classes {
        let (mut tp, mut n_true, mut n_pred) = (0usize, 0usize, 0usize);
        for (a, b) in y_true[..n].iter().zip(&y_pred[..n]) {
            let (is_t, is_p) = (*a == c, *b == c);
            n_true += is_t as usize;
            n_pred += is_p as usize;
            tp += (is_t && is_p) as usize;
        }
        let denom = (n_true + n_pred) as f64;
        let f1 = if denom == 0.0 {
            0.0
        } else {
            2.0 * tp as f64 / denom
        };
        weighted += f1 * n_true as f64;
        total += n_true as f64;
    }
    if total == 0.0 {
        f64::NAN
    } else {
        weighted / total
    }
}

/// Python's `round(x, ndigits)` for `ndigits >= 0`: the double's EXACT decimal value
/// rounded half to even at `ndigits` decimals, converted back to the nearest double.
/// Non-finite values are returned unchanged.
pub fn round_decimals(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // 1100 decimals hold the exact expansion of every finite double (at most 1074).
    let exact = format!("{:.1100}", x.abs());
    let (int_part, frac) = exact.split_once('.').expect("formatted with decimals");
    let mut digits: Vec<u8> = int_part
        .bytes()
        .chain(frac.bytes().take(ndigits))
        .map(|b| b - b'0')
        .collect();
    let rest = &frac.as_bytes()[ndigits..];
    let first = rest[0] - b'0';
    let tail_nonzero = rest[1..].iter().any(|&b| b != b'0');
    let last_odd = digits.last().is_some_and(|d| d % 2 == 1);
    let round_up = first > 5 || (first == 5 && (tail_nonzero || last_odd));
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, 1);
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - ndigits;
    let mut s = String::with_capacity(digits.len() + 2);
    if x.is_sign_negative() {
        s.push('-');
    }
    for d in &digits[..split] {
        s.push((b'0' + d) as char);
    }
    s.push('.');
    for d in &digits[split..] {
        s.push((b'0' + d) as char);
    }
    s.push('0');
    s.parse().expect("a decimal string")
}

/// MMSA's rounding: Python's `round(x, 4)`.
pub fn round4(x: f64) -> f64 {
    round_decimals(x, 4)
}
