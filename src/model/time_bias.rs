//! Time-distance attention bias (`model.time_bias`): attention that knows WHEN elements are.
//!
//! On asynchronous streams a word and an acoustic frame with the same step index are not
//! simultaneous; what co-occurs depends on each sample's word durations, rates and offsets.
//! MulT's positions (step indices) cannot tell the attention where to look, and an additive
//! sinusoid of real time must be LEARNED into the query/key projections, which the
//! experiments of docs/learning.md show does not happen at benchmark scale.
//!
//! With `time_bias = σ > 0` every attention score gets a Gaussian bias in the time distance
//! of its query and key elements, head `h` with width `σ_h = σ · 2^h` (from sharp to broad,
//! like ALiBi's per-head slopes):
//!
//! `s_ij = q_i·k_j − (t_i − t_j)² / (2σ_h²)`.
//!
//! It is carried EXACTLY by two extra head columns, so every attention kernel takes it
//! unchanged: `−(t_i − t_j)²/(2σ²) = t_i t_j/σ² − t_j²/(2σ²) − t_i²/(2σ²)`, the last term is
//! constant in each softmax row and drops out, so `q̃_i = [q_i, t_i/σ², 1]`,
//! `k̃_j = [k_j, t_j, −t_j²/(2σ²)]` and `ṽ_j = [v_j, 0, 0]` give the same probabilities.
//! Padding keys get a time far from every real one (they receive no attention), padding
//! queries time 0. The columns are constants: no gradient flows into them.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};

/// Extra head columns the bias occupies.
pub const BIAS_COLS: usize = 2;

/// Time (seconds) given to padding keys: far from every real element.
const PAD_KEY_TIME: f32 = -1000.0;

/// The bias columns of one attention: `q` `[B, h, T_q, 2]` and `k` `[B, h, T_k, 2]`.
#[derive(Debug, Clone)]
pub struct TimeBias {
    /// Query-side columns `[t_i/σ_h², 1]`.
    pub q: Tensor,
    /// Key-side columns `[t_j, −t_j²/(2σ_h²)]`.
    pub k: Tensor,
}

/// The width of head `h`'s Gaussian: `σ · 2^h`.
pub fn head_sigma(sigma: f32, h: usize) -> f32 {
    sigma * (1u32 << h.min(30)) as f32
}

/// The element times of one modality after the front end: `[B, T]` seconds, `None` for
/// padding.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementTimes {
    /// Samples.
    pub b: usize,
    /// Elements per sample (after the conv front end).
    pub t: usize,
    /// Row-major `[B, T]` times.
    pub times: Vec<Option<f32>>,
}

/// Per sample, the time (seconds) of each element after a conv front end of width `kernel`
/// (the element at the kernel's centre, as the time positions use); `None` for padding.
pub fn element_times(times: &Tensor, kernel: usize) -> Result<ElementTimes> {
    let (b, t_in) = times.dims2()?;
    ensure!(
        kernel >= 1 && t_in >= kernel,
        "element times of length {t_in} are shorter than the conv kernel {kernel}"
    );
    let t_out = t_in - kernel + 1;
    let tv: Vec<f32> = times.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let centre = (kernel - 1) / 2;
    let out = (0..b)
        .flat_map(|i| {
            let tv = &tv;
            (0..t_out).map(move |s| {
                let t = tv[i * t_in + s + centre];
                t.is_finite().then_some(t)
            })
        })
        .collect();
    Ok(ElementTimes {
        b,
        t: t_out,
        times: out,
    })
}

/// The bias columns for queries at times `tq` and keys at times `tk` (each from
/// [`element_times`]), `heads` heads, sharpest width `sigma` seconds.
pub fn time_bias(
    tq: &ElementTimes,
    tk: &ElementTimes,
    heads: usize,
    sigma: f32,
    device: &candle_core::Device,
) -> Result<TimeBias> {
    ensure!(
        sigma.is_finite() && sigma > 0.0,
        "model option `time_bias` must be a positive number of seconds, got {sigma}"
    );
    let (b, n_q, q_times) = (&tq.b, &tq.t, &tq.times);
    let (bk, n_k, k_times) = (&tk.b, &tk.t, &tk.times);
    ensure!(b == bk, "time bias: {b} query samples but {bk} key samples");
    let mut q = Vec::with_capacity(b * heads * n_q * BIAS_COLS);
    let mut k = Vec::with_capacity(b * heads * n_k * BIAS_COLS);
    for i in 0..*b {
        for h in 0..heads {
            let inv = 1.0 / head_sigma(sigma, h).powi(2);
            for t in &q_times[i * n_q..(i + 1) * n_q] {
                q.extend([t.unwrap_or(0.0) * inv, 1.0]);
            }
            for t in &k_times[i * n_k..(i + 1) * n_k] {
                let t = t.unwrap_or(PAD_KEY_TIME);
                k.extend([t, -0.5 * t * t * inv]);
            }
        }
    }
    Ok(TimeBias {
        q: Tensor::from_vec(q, (*b, heads, *n_q, BIAS_COLS), device)?,
        k: Tensor::from_vec(k, (*b, heads, *n_k, BIAS_COLS), device)?,
    })
}

/// `[x, bias]` along the last axis (bias cast to `x`'s dtype).
pub fn extend(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(Tensor::cat(&[x, &bias.to_dtype(x.dtype())?], 3)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The two extra columns add exactly `−(t_i − t_j)²/(2σ_h²)` up to a per-row constant.
    #[test]
    fn columns_carry_the_gaussian_up_to_a_row_constant() {
        let dev = Device::Cpu;
        let et = |times: Vec<Option<f32>>| ElementTimes {
            b: 1,
            t: times.len(),
            times,
        };
        let tq = et(vec![Some(0.1), Some(0.55), None]);
        let tk = et(vec![None, Some(0.0), Some(0.5), Some(1.3)]);
        let tb = time_bias(&tq, &tk, 2, 0.2, &dev).unwrap();
        let s = tb.q.matmul(&tb.k.t().unwrap()).unwrap(); // [1, 2, 3, 4]
        let s: Vec<f32> = s.flatten_all().unwrap().to_vec1().unwrap();
        for h in 0..2 {
            let sig = head_sigma(0.2, h) as f64;
            for (i, ti) in [0.1f64, 0.55].iter().enumerate() {
                let row = &s[(h * 3 + i) * 4..(h * 3 + i + 1) * 4];
                let c = row[1] as f64 + (ti - 0.0).powi(2) / (2.0 * sig * sig);
                for (j, tj) in [(2, 0.5f64), (3, 1.3)] {
                    let want = -(ti - tj).powi(2) / (2.0 * sig * sig) + c;
                    assert!((row[j] as f64 - want).abs() < 1e-3, "h {h} i {i} j {j}");
                }
                // The padding key is far below every real key.
                assert!(row[0] < row[1] - 1e4);
            }
        }
    }

    #[test]
    fn element_times_follow_the_kernel_centre() {
        let t = Tensor::new(&[[f32::NAN, 0.1, 0.2, 0.3]], &Device::Cpu).unwrap();
        let e = element_times(&t, 3).unwrap();
        assert_eq!((e.b, e.t), (1, 2));
        assert_eq!(e.times, vec![Some(0.1), Some(0.2)]);
        assert!(time_bias(&e, &e, 1, 0.0, &Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("`time_bias`"));
    }
}
