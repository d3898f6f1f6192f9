//! Connectionist temporal classification loss (Graves et al., ICML 2006) as a candle op
//! with its backward: the log-space forward–backward recursion that PyTorch's
//! `torch.nn.functional.ctc_loss` and warp-ctc compute.
//!
//! [`ctc_loss`] takes log-probabilities `[B, T, C]` (batch-first, normalised over `C`, e.g.
//! a `log_softmax`), per-sample target label sequences (no blank in them), and per sample
//! the window of input frames `[start, start + len)` the alignment runs over (mica's data
//! is left-padded, so its real frames end at `T`; PyTorch's `input_lengths` are the
//! `start = 0` case). It returns the per-sample negative log-likelihood `[B]`
//! (`reduction='none'`).
//!
//! **Gradient.** The op's backward is the exact derivative with respect to its input
//! `lp`: `∂nll/∂lp[t, c] = -exp(logsumexp_{s: l'_s = c}(α_t(s) + β_t(s)) + nll - lp[t, c])`
//! (`α`, `β` both include frame `t`'s emission). PyTorch's CUDA/CPU kernels return
//! `exp(lp) - ...` instead, which equals this after a `log_softmax` backward: gradients
//! agree with PyTorch's with respect to the *logits* ([`tests`] compare exactly that, and
//! finite differences check the op itself).
//!
//! **Impossible alignments** (a target longer than its window allows) have `nll = +inf`;
//! with `zero_infinity` the loss and its gradient are 0 instead (PyTorch's option).
//!
//! The recursion runs on the CPU in f64 (`O(B T S)`, `S = 2 L + 1`): small next to the
//! LSTMs that feed it.

use anyhow::{ensure, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

/// Per-sample CTC problems; the op's input is the `[B, T, C]` log-probabilities.
#[derive(Debug, Clone)]
struct CtcOp {
    /// Per sample, its label sequence (values in `[0, C)`, never `blank`).
    targets: Vec<Vec<u32>>,
    /// Per sample, the first input frame of its window.
    starts: Vec<usize>,
    /// Per sample, the number of input frames in its window.
    lens: Vec<usize>,
    /// The blank class.
    blank: usize,
    /// Impossible alignments give loss 0 and no gradient.
    zero_infinity: bool,
}

fn lse2(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The extended label sequence `l'` of `l`: blanks around and between the labels.
fn extended(target: &[u32], blank: usize) -> Vec<usize> {
    let mut e = Vec::with_capacity(2 * target.len() + 1);
    e.push(blank);
    for &l in target {
        e.push(l as usize);
        e.push(blank);
    }
    e
}

/// Whether state `s` of `ext` may be entered from `s - 2` (skipping a blank).
fn can_skip(ext: &[usize], s: usize, blank: usize) -> bool {
    s >= 2 && ext[s] != blank && ext[s] != ext[s - 2]
}

/// `α` `[n, S]` of one sample (`lp(t, c)` is the log-probability at window frame `t`);
/// returns it with `nll`.
fn forward_one(
    lp: &dyn Fn(usize, usize) -> f64,
    n: usize,
    ext: &[usize],
    blank: usize,
) -> (Vec<f64>, f64) {
    let ns = ext.len();
    let mut alpha = vec![f64::NEG_INFINITY; n.max(1) * ns];
    if n == 0 {
        // No frames: only the empty target has probability 1.
        return (alpha, if ns == 1 { 0.0 } else { f64::INFINITY });
    }
    alpha[0] = lp(0, ext[0]);
    if ns > 1 {
        alpha[1] = lp(0, ext[1]);
    }
    for t in 1..n {
        let (prev, cur) = alpha.split_at_mut(t * ns);
        let prev = &prev[(t - 1) * ns..];
        for s in 0..ns {
            let mut a = prev[s];
            if s >= 1 {
                a = lse2(a, prev[s - 1]);
            }
            if can_skip(ext, s, blank) {
                a = lse2(a, prev[s - 2]);
            }
            cur[s] = if a == f64::NEG_INFINITY {
                a
            } else {
                a + lp(t, ext[s])
            };
        }
    }
    let last = &alpha[(n - 1) * ns..];
    let ll = if ns > 1 {
        lse2(last[ns - 1], last[ns - 2])
    } else {
        last[0]
    };
    (alpha, -ll)
}

/// `β` `[n, S]` of one sample (including frame `t`'s emission, like `α`).
fn backward_one(
    lp: &dyn Fn(usize, usize) -> f64,
    n: usize,
    ext: &[usize],
    blank: usize,
) -> Vec<f64> {
    let ns = ext.len();
    let mut beta = vec![f64::NEG_INFINITY; n * ns];
    if n == 0 {
        return beta;
    }
    beta[(n - 1) * ns + ns - 1] = lp(n - 1, ext[ns - 1]);
    if ns > 1 {
        beta[(n - 1) * ns + ns - 2] = lp(n - 1, ext[ns - 2]);
    }
    for t in (0..n - 1).rev() {
        let (cur, next) = beta.split_at_mut((t + 1) * ns);
        let cur = &mut cur[t * ns..];
        for s in 0..ns {
            let mut b = next[s];
            if s + 1 < ns {
                b = lse2(b, next[s + 1]);
            }
            if s + 2 < ns && can_skip(ext, s + 2, blank) {
                b = lse2(b, next[s + 2]);
            }
            cur[s] = if b == f64::NEG_INFINITY {
                b
            } else {
                b + lp(t, ext[s])
            };
        }
    }
    beta
}

impl CtcOp {
    fn dims(&self, l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let d = l.shape().dims();
        if d.len() != 3 || d[0] != self.targets.len() {
            candle_core::bail!(
                "ctc_loss: log_probs must be [B, T, C] with B = number of targets, got {d:?}"
            )
        }
        Ok((d[0], d[1], d[2]))
    }

    /// Per-sample nll from the contiguous `[B, T, C]` values.
    fn nlls(&self, v: &[f32], t_len: usize, c: usize) -> Vec<f64> {
        (0..self.targets.len())
            .map(|b| {
                let base = b * t_len * c + self.starts[b] * c;
                let lp = |t: usize, k: usize| v[base + t * c + k] as f64;
                let ext = extended(&self.targets[b], self.blank);
                let (_, nll) = forward_one(&lp, self.lens[b], &ext, self.blank);
                if self.zero_infinity && !nll.is_finite() {
                    0.0
                } else {
                    nll
                }
            })
            .collect()
    }

    /// `∂nll_b/∂lp` scaled by `g[b]`, `[B, T, C]`.
    fn grads(&self, v: &[f32], g: &[f32], t_len: usize, c: usize) -> Vec<f32> {
        let mut out = vec![0f32; v.len()];
        for (b, &gb) in g.iter().enumerate().take(self.targets.len()) {
            if gb == 0.0 {
                continue;
            }
            let base = b * t_len * c + self.starts[b] * c;
            let lp = |t: usize, k: usize| v[base + t * c + k] as f64;
            let ext = extended(&self.targets[b], self.blank);
            let n = self.lens[b];
            // Impossible alignment: zero_infinity gives no gradient; without it the loss
            // is +inf and no finite gradient exists: mica gives 0 (PyTorch gives NaN).
            if let Some(gr) = grad_one(&lp, n, &ext, self.blank, c) {
                for (o, x) in out[base..base + n * c].iter_mut().zip(gr) {
                    *o = (x * gb as f64) as f32;
                }
            }
        }
        out
    }
}

/// `∂nll/∂lp` `[n, C]` of one sample (`None` when the alignment is impossible).
fn grad_one(
    lp: &dyn Fn(usize, usize) -> f64,
    n: usize,
    ext: &[usize],
    blank: usize,
    c: usize,
) -> Option<Vec<f64>> {
    let (alpha, nll) = forward_one(lp, n, ext, blank);
    if !nll.is_finite() {
        return None;
    }
    let beta = backward_one(lp, n, ext, blank);
    let ns = ext.len();
    let mut out = vec![0f64; n * c];
    let mut acc = vec![f64::NEG_INFINITY; c];
    for t in 0..n {
        acc.iter_mut().for_each(|a| *a = f64::NEG_INFINITY);
        for s in 0..ns {
            let k = ext[s];
            acc[k] = lse2(acc[k], alpha[t * ns + s] + beta[t * ns + s]);
        }
        for (k, a) in acc.iter().enumerate() {
            if *a > f64::NEG_INFINITY {
                out[t * c + k] = -(a + nll - lp(t, k)).exp();
            }
        }
    }
    Some(out)
}

impl CustomOp1 for CtcOp {
    fn name(&self) -> &'static str {
        "mica-ctc-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, c) = self.dims(l)?;
        let (CpuStorage::F32(v), Some((o1, o2))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("ctc_loss: contiguous f32 log_probs expected")
        };
        let nll: Vec<f32> = self
            .nlls(&v[o1..o2], t, c)
            .into_iter()
            .map(|x| x as f32)
            .collect();
        Ok((CpuStorage::F32(nll), Shape::from(b)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, t, c) = x.dims3()?;
        let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let g: Vec<f32> = grad.flatten_all()?.to_vec1()?;
        let out = self.grads(&v, &g, t, c);
        Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
    }
}

/// Per-sample CTC negative log-likelihood `[B]` of `log_probs` `[B, T, C]` (f32, CPU,
/// normalised over `C`): sample `b` aligns `targets[b]` to frames
/// `[starts[b], starts[b] + lens[b])`. Errors name the bad argument. See the module docs
/// for the gradient and `zero_infinity`.
pub fn ctc_loss(
    log_probs: &Tensor,
    targets: &[Vec<u32>],
    starts: &[usize],
    lens: &[usize],
    blank: usize,
    zero_infinity: bool,
) -> Result<Tensor> {
    let (b, t, c) = log_probs.dims3()?;
    ensure!(
        targets.len() == b && starts.len() == b && lens.len() == b,
        "ctc_loss: {b} samples in log_probs but {} targets, {} starts, {} lengths",
        targets.len(),
        starts.len(),
        lens.len()
    );
    ensure!(
        blank < c,
        "ctc_loss: blank {blank} is not a class (C = {c})"
    );
    ensure!(
        log_probs.dtype() == DType::F32 && log_probs.device().is_cpu(),
        "ctc_loss: log_probs must be f32 on the CPU"
    );
    for i in 0..b {
        ensure!(
            starts[i] + lens[i] <= t,
            "ctc_loss: sample {i}: window [{}, {}) exceeds the {t} frames",
            starts[i],
            starts[i] + lens[i]
        );
        if let Some(bad) = targets[i]
            .iter()
            .find(|&&l| l as usize >= c || l as usize == blank)
        {
            anyhow::bail!("ctc_loss: sample {i}: target label {bad} is the blank or not a class (C = {c}, blank {blank})");
        }
    }
    let op = CtcOp {
        targets: targets.to_vec(),
        starts: starts.to_vec(),
        lens: lens.to_vec(),
        blank,
        zero_infinity,
    };
    Ok(log_probs.contiguous()?.apply_op1(op)?)
}

#[cfg(test)]
#[path = "ctc_loss_tests.rs"]
mod tests;
