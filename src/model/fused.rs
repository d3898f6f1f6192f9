//! Fused CPU attention (spec/kernels.md): `softmax(q kᵀ + M) (dropout) v` without ever
//! materialising a `[B, h, T_q, T_k]` map, with a backward that recomputes the
//! probabilities from the row log-sum-exp.
//!
//! Layout and design:
//! - One task per (batch, head) pair; tasks are spread over
//!   [`candle_core::utils::get_num_threads`] groups on the current rayon pool. A task owns its rows of the
//!   output and its `dK`/`dV` accumulators, so no reduction across threads is needed.
//! - Keys and values of a task are transposed to keys-major `[hd, T_k]` so every inner
//!   loop runs over keys (contiguous, vectorised 16 at a time); `hd` (5–10) is the short
//!   outer loop.
//! - Forward per query row: keys in blocks of [`KEY_BLOCK`], online softmax (running
//!   max `m`, running sum `l`, rescaling the accumulator when `m` grows), the causal-offset
//!   mask as an index bound (`j ≤ i + |T_k − T_q|`, so masked keys are never touched) and
//!   the dropout keep bits regenerated from the counter-based generator of
//!   [`crate::model::ctx`] at the flat index `((b·h + head)·T_q + i)·T_k + j`: exactly the
//!   mask the plain path draws for the same stream.
//! - The row log-sum-exp `L_i = m_i + ln l_i` is the only extra state the backward needs.
//!   It travels as an extra last column of the op's output (`[B, h, T_q, hd + 1]`); the
//!   caller narrows it away, so its incoming gradient is zero and ignored. This keeps
//!   the op a plain [`CustomOp3`] without hidden state and without a recomputation pass.
//! - Backward per row: recompute `p_ij = exp(q_i·k_j − L_i)`, `D_i = dO_i·o_i`,
//!   `dV_j += p_ij z_ij/(1−r) dO_i`, `dP_ij = z_ij/(1−r) dO_i·v_j`,
//!   `dS_ij = p_ij (dP_ij − D_i)`, `dQ_i = Σ_j dS_ij k_j`, `dK_j += dS_ij q_i`.
//!   `q` enters already scaled, so `dQ` is w.r.t. the scaled queries (autograd applies
//!   the `hd^-0.5` of the scaling op).
//! - `exp` is a range-reduced polynomial ([`exp_approx`], ≤ 2 ulp from `f32::exp` on the
//!   range used), written so the loops vectorise. On x86-64 the kernels are compiled a
//!   second time with AVX2 + FMA and picked at run time.

use super::ctx::mix64;
use super::pointwise::{f32_slice, with_f32};
use super::simd::{self, Simd};
use candle_core::utils::get_num_threads;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Calls kernel `name` in the SIMD build `level` (see [`super::simd`]).
macro_rules! dispatch {
    ($level:expr; $name:ident ( $($arg:expr),* $(,)? )) => {
        super::simd::simd_dispatch!($level, kernels, $name($($arg),*))
    };
}

/// Keys processed per online-softmax block (a block of scores stays in L1).
pub const KEY_BLOCK: usize = 256;

/// Attention dropout as the fused kernel regenerates it: element `idx` is kept iff
/// `mix64(base ^ idx) >> 40 >= threshold`, which is exactly
/// [`crate::model::ctx::keep`]`(seed, stream, idx, p)` (see [`FusedDropout::new`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedDropout {
    /// `mix64(seed ^ mix64(stream))`.
    pub base: u64,
    /// Smallest kept 24-bit draw: `ceil(p · 2^24)`.
    pub threshold: u64,
    /// Multiplier of kept entries, `1/(1−p)` (0 when `p ≥ 1`).
    pub scale: f32,
}

impl FusedDropout {
    /// The dropout of rate `p` drawn from stream `stream` under `seed`.
    ///
    /// `ctx::uniform01` is `(h >> 40) · 2^-24` (exact in f32), so `u ≥ p` ⇔
    /// `(h >> 40) ≥ p · 2^24` ⇔ `(h >> 40) ≥ ceil(p · 2^24)` (the product is exact in f64).
    pub fn new(seed: u64, stream: u64, p: f32) -> Self {
        let threshold = if p <= 0.0 {
            0
        } else {
            ((p as f64) * (1u64 << 24) as f64)
                .ceil()
                .min((1u64 << 24) as f64) as u64
        };
        let scale = if p >= 1.0 { 0.0 } else { 1.0 / (1.0 - p) };
        FusedDropout {
            base: mix64(seed ^ mix64(stream)),
            threshold,
            scale,
        }
    }

    /// Keep indicator of flat element `idx`.
    #[inline]
    pub fn keep(&self, idx: u64) -> bool {
        (mix64(self.base ^ idx) >> 40) >= self.threshold
    }

    /// The multipliers (`scale` if kept, else 0) of the flat indices
    /// `idx0..idx0 + out.len()`, 16 at a time on AVX-512 CPUs (the same values).
    pub fn multipliers(&self, idx0: u64, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd::current() == Simd::Avx512 {
            // SAFETY: `Simd::Avx512` is only selected when the CPU has the features.
            unsafe { super::fused_avx512::multipliers(self, idx0, out) };
            return;
        }
        for (i, o) in (idx0..).zip(out) {
            *o = if self.keep(i) { self.scale } else { 0.0 };
        }
    }
}

/// Shape of one fused attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Batch.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Query length.
    pub tq: usize,
    /// Key length.
    pub tk: usize,
    /// Head width.
    pub hd: usize,
}

impl Dims {
    /// Number of (batch, head) tasks.
    pub fn tasks(&self) -> usize {
        self.b * self.h
    }
    /// Last key query `i` may see (exclusive bound).
    #[inline]
    pub fn key_end(&self, i: usize, causal: bool) -> usize {
        if causal {
            (i + self.tq.abs_diff(self.tk) + 1).min(self.tk)
        } else {
            self.tk
        }
    }
}

/// The fused attention as a candle op with backward: inputs `q` (scaled) `[B, h, T_q, hd]`,
/// `k`, `v` `[B, h, T_k, hd]` (f32, contiguous); output `[B, h, T_q, hd + 1]` whose last
/// column is the row log-sum-exp `L` (use [`fused_attention`], which narrows it away).
#[derive(Debug, Clone, Copy)]
pub struct FusedAttention {
    /// MulT's causal-offset mask.
    pub causal_offset: bool,
    /// Dropout on the probabilities (None: no dropout).
    pub dropout: Option<FusedDropout>,
}

/// `softmax(q kᵀ + M) (dropout) v` with the fused kernel; returns the output
/// `[B, h, T_q, hd]` and the row log-sum-exp `[B, h, T_q]` (detached). Gradients flow to
/// `q`, `k` and `v`.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal_offset: bool,
    dropout: Option<FusedDropout>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let hd = q.dim(3)?;
    let res = fused_attention_packed(q, k, v, causal_offset, dropout)?;
    let out = res.narrow(3, 0, hd)?;
    let lse = res.narrow(3, hd, 1)?.squeeze(3)?.detach();
    Ok((out, lse))
}

/// The fused op's own output `[B, h, T_q, hd + 1]`: per row the attention output, then the
/// row log-sum-exp (its gradient is ignored). [`fused_attention`] splits it; a consumer
/// that can read the packed rows (the out-projection of
/// [`super::rowops::linear_bias_from_heads`]) saves the head-merging copy.
pub fn fused_attention_packed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal_offset: bool,
    dropout: Option<FusedDropout>,
) -> candle_core::Result<Tensor> {
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        FusedAttention {
            causal_offset,
            dropout,
        },
    )
}

/// Probabilities `[B, h, T_q, T_k]` (before dropout; 0 where masked) from `q`, `k` and the
/// row log-sum-exp of [`fused_attention`], as a constant tensor (no gradient): for
/// consumers such as PEA's top-τ selection that only read them.
pub fn fused_probs(
    q: &Tensor,
    k: &Tensor,
    lse: &Tensor,
    causal_offset: bool,
) -> candle_core::Result<Tensor> {
    let (b, h, tq, hd) = q.dims4()?;
    let tk = k.dim(2)?;
    let dims = Dims { b, h, tq, tk, hd };
    let qv = q.detach().flatten_all()?.to_vec1::<f32>()?;
    let kv = k.detach().flatten_all()?.to_vec1::<f32>()?;
    let lv = lse.detach().flatten_all()?.to_vec1::<f32>()?;
    let mut probs = vec![0f32; dims.tasks() * tq * tk];
    let items: Vec<_> = probs.chunks_mut(tq * tk).enumerate().collect();
    let level = simd::current();
    for_each_task(get_num_threads(), items, |(t, dst)| {
        let kt = transpose(&kv[t * tk * hd..(t + 1) * tk * hd], tk, hd);
        let q = &qv[t * tq * hd..(t + 1) * tq * hd];
        let l = &lv[t * tq..(t + 1) * tq];
        task_probs(level, dims, causal_offset, q, &kt, l, dst);
    });
    Tensor::from_vec(probs, (b, h, tq, tk), q.device())
}

/// Probabilities of one (batch, head) task into `dst` `[T_q, T_k]` from the scaled
/// queries `q` `[T_q, hd]`, the transposed keys `kt` `[hd, T_k]` and the row log-sum-exp
/// `lse` `[T_q]`: `exp(q_i·k_j − L_i)`, the very values [`fused_probs`] returns. Entries
/// the causal-offset mask hides are left untouched (callers zero `dst` first).
pub fn task_probs(
    level: Simd,
    dims: Dims,
    causal: bool,
    q: &[f32],
    kt: &[f32],
    lse: &[f32],
    dst: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level == Simd::Avx512 {
        // SAFETY: AVX-512 was selected, so the CPU has it.
        return unsafe { super::fused_avx512::probs_task(dims, causal, q, kt, lse, dst) };
    }
    dispatch!(level; probs_task(dims, causal, q, kt, lse, dst))
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "mica-fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, tq, hd) = l1.shape().dims4()?;
        let (bk, hk, tk, hdk) = l2.shape().dims4()?;
        if (b, h, hd) != (bk, hk, hdk) || l3.shape().dims4()? != (b, h, tk, hd) {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?} do not fit together",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let dims = Dims { b, h, tq, tk, hd };
        let q = f32_slice(s1, l1, "fused attention (`q`)")?;
        let k = f32_slice(s2, l2, "fused attention (`k`)")?;
        let v = f32_slice(s3, l3, "fused attention (`v`)")?;
        let out = forward_all(
            get_num_threads(),
            dims,
            self.causal_offset,
            self.dropout,
            q,
            k,
            v,
        );
        Ok((CpuStorage::F32(out), Shape::from((b, h, tq, hd + 1))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, tq, hd) = q.dims4()?;
        let tk = k.dim(2)?;
        let dims = Dims { b, h, tq, tk, hd };
        let (dq, dk, dv) = with_f32(q, |qv| {
            with_f32(k, |kv| {
                with_f32(v, |vv| {
                    with_f32(res, |ov| {
                        with_f32(grad_res, |gv| {
                            Ok(backward_all(
                                get_num_threads(),
                                dims,
                                self.causal_offset,
                                self.dropout,
                                qv,
                                kv,
                                vv,
                                ov,
                                gv,
                            ))
                        })
                    })
                })
            })
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// Runs `f` on every item, spread over `threads` contiguous groups (every task of one call
/// costs the same) run on the current rayon pool (the one candle's matmul uses too), so no
/// thread is spawned.
pub(crate) fn for_each_task<T: Send>(threads: usize, items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    use rayon::prelude::*;
    let threads = threads.max(1).min(items.len());
    if threads <= 1 {
        items.into_iter().for_each(f);
        return;
    }
    let per = items.len().div_ceil(threads);
    let mut groups: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    groups
        .into_par_iter()
        .for_each(|g| g.into_iter().for_each(&f));
}

/// `[rows, cols]` row-major to `[cols, rows]`.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

/// Head widths with a chunk-major build ([`kernels::forward_task_hd`]); others take the
/// generic kernels.
const FAST_HD: [usize; 4] = [4, 5, 8, 10];

/// Calls `$f::<HD>($args)` for the head widths of [`FAST_HD`].
macro_rules! by_hd {
    ($hd:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $hd {
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            8 => $f::<8>($($arg),*),
            10 => $f::<10>($($arg),*),
            other => unreachable!("no chunk-major build for head width {other}"),
        }
    };
}

/// `[rows, cols]` row-major to `[cols, stride]` (zero padded to `stride ≥ rows`).
fn transpose_padded(x: &[f32], rows: usize, cols: usize, stride: usize) -> Vec<f32> {
    if FAST_HD.contains(&cols) && stride.is_multiple_of(16) && stride >= rows {
        return by_hd!(cols, transpose_padded_hd(x, rows, stride));
    }
    let mut t = vec![0f32; cols * stride];
    if rows == 0 || cols == 0 {
        return t;
    }
    // Column-major order: each output row is written contiguously (`cols` is 4–10).
    for (c, dst) in t.chunks_exact_mut(stride).enumerate() {
        for (d, src) in dst[..rows].iter_mut().zip(x[c..].iter().step_by(cols)) {
            *d = *src;
        }
    }
    t
}

/// [`transpose_padded`] for a head width `HD` of [`FAST_HD`] (`stride` a multiple of 16):
/// 16 rows at a time through a `[HD][16]` block, so every output store is 16 wide.
fn transpose_padded_hd<const HD: usize>(x: &[f32], rows: usize, stride: usize) -> Vec<f32> {
    let mut t = vec![0f32; HD * stride];
    let mut blk = [[0f32; 16]; HD];
    for r0 in (0..rows).step_by(16) {
        let n = (rows - r0).min(16);
        for (l, src) in x[r0 * HD..(r0 + n) * HD].chunks_exact(HD).enumerate() {
            let src: &[f32; HD] = src.try_into().unwrap();
            for c in 0..HD {
                blk[c][l] = src[c];
            }
        }
        for (c, b) in blk.iter_mut().enumerate() {
            b[n..].iter_mut().for_each(|v| *v = 0.0);
            t[c * stride + r0..c * stride + r0 + 16].copy_from_slice(b);
        }
    }
    t
}

#[allow(clippy::too_many_arguments)]
fn forward_hd<const HD: usize>(
    level: Simd,
    dims: Dims,
    causal: bool,
    drop: Option<FusedDropout>,
    task: usize,
    q: &[f32],
    kt: &[f32],
    vt: &[f32],
    tkp: usize,
    dst: &mut [f32],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Simd::Avx512` is only selected when the CPU has the features.
        Simd::Avx512 => unsafe {
            super::fused_avx512::forward_task::<HD>(dims, causal, drop, task, q, kt, vt, tkp, dst)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 + FMA.
        Simd::Avx2 => unsafe {
            kernels::avx2_hd::forward_task_hd::<HD>(dims, causal, drop, task, q, kt, vt, tkp, dst)
        },
        _ => kernels::forward_task_hd::<false, HD>(dims, causal, drop, task, q, kt, vt, tkp, dst),
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_hd<const HD: usize>(
    level: Simd,
    dims: Dims,
    causal: bool,
    drop: Option<FusedDropout>,
    task: usize,
    q: &[f32],
    kt: &[f32],
    vt: &[f32],
    tkp: usize,
    o: &[f32],
    g: &[f32],
    dq: &mut [f32],
    dkt: &mut [f32],
    dvt: &mut [f32],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Simd::Avx512` is only selected when the CPU has the features.
        Simd::Avx512 => unsafe {
            super::fused_avx512::backward_task::<HD>(
                dims, causal, drop, task, q, kt, vt, tkp, o, g, dq, dkt, dvt,
            )
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 + FMA.
        Simd::Avx2 => unsafe {
            kernels::avx2_hd::backward_task_hd::<HD>(
                dims, causal, drop, task, q, kt, vt, tkp, o, g, dq, dkt, dvt,
            )
        },
        _ => kernels::backward_task_hd::<false, HD>(
            dims, causal, drop, task, q, kt, vt, tkp, o, g, dq, dkt, dvt,
        ),
    }
}

fn forward_all(
    threads: usize,
    dims: Dims,
    causal: bool,
    drop: Option<FusedDropout>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<f32> {
    let Dims { tq, tk, hd, .. } = dims;
    let mut out = vec![0f32; dims.tasks() * tq * (hd + 1)];
    let items: Vec<_> = out.chunks_mut(tq * (hd + 1)).enumerate().collect();
    let level = simd::current();
    let fast = FAST_HD.contains(&hd);
    let tkp = tk.next_multiple_of(16);
    for_each_task(threads, items, |(t, dst)| {
        let (k, v) = (
            &k[t * tk * hd..(t + 1) * tk * hd],
            &v[t * tk * hd..(t + 1) * tk * hd],
        );
        let q = &q[t * tq * hd..(t + 1) * tq * hd];
        if fast {
            let kt = transpose_padded(k, tk, hd, tkp);
            let vt = transpose_padded(v, tk, hd, tkp);
            by_hd!(
                hd,
                forward_hd(level, dims, causal, drop, t, q, &kt, &vt, tkp, dst)
            );
        } else {
            let (kt, vt) = (transpose(k, tk, hd), transpose(v, tk, hd));
            dispatch!(level; forward_task(dims, causal, drop, t, q, &kt, &vt, dst));
        }
    });
    out
}

#[allow(clippy::too_many_arguments)]
fn backward_all(
    threads: usize,
    dims: Dims,
    causal: bool,
    drop: Option<FusedDropout>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    g: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { tq, tk, hd, .. } = dims;
    let n = dims.tasks();
    let mut dq = vec![0f32; n * tq * hd];
    let mut dk = vec![0f32; n * tk * hd];
    let mut dv = vec![0f32; n * tk * hd];
    let items: Vec<_> = dq
        .chunks_mut(tq * hd)
        .zip(dk.chunks_mut(tk * hd))
        .zip(dv.chunks_mut(tk * hd))
        .enumerate()
        .collect();
    let level = simd::current();
    let fast = FAST_HD.contains(&hd);
    let tkp = if fast { tk.next_multiple_of(16) } else { tk };
    for_each_task(threads, items, |(t, ((dq, dk), dv))| {
        let (ks, vs) = (
            &k[t * tk * hd..(t + 1) * tk * hd],
            &v[t * tk * hd..(t + 1) * tk * hd],
        );
        let q = &q[t * tq * hd..(t + 1) * tq * hd];
        let o = &o[t * tq * (hd + 1)..(t + 1) * tq * (hd + 1)];
        let g = &g[t * tq * (hd + 1)..(t + 1) * tq * (hd + 1)];
        let mut dkt = vec![0f32; hd * tkp];
        let mut dvt = vec![0f32; hd * tkp];
        if fast {
            let kt = transpose_padded(ks, tk, hd, tkp);
            let vt = transpose_padded(vs, tk, hd, tkp);
            by_hd!(
                hd,
                backward_hd(
                    level, dims, causal, drop, t, q, &kt, &vt, tkp, o, g, dq, &mut dkt, &mut dvt
                )
            );
        } else {
            let (kt, vt) = (transpose(ks, tk, hd), transpose(vs, tk, hd));
            dispatch!(level; backward_task(
                dims, causal, drop, t, q, &kt, &vt, o, g, dq, &mut dkt, &mut dvt
            ));
        }
        for d in 0..hd {
            let rows = dk[d..]
                .iter_mut()
                .step_by(hd)
                .zip(&dkt[d * tkp..d * tkp + tk]);
            rows.for_each(|(o, x)| *o = *x);
            let rows = dv[d..]
                .iter_mut()
                .step_by(hd)
                .zip(&dvt[d * tkp..d * tkp + tk]);
            rows.for_each(|(o, x)| *o = *x);
        }
    });
    (dq, dk, dv)
}

/// Vectorisable `exp` for `x ≤ ~88`: Cephes' `expf` (round-to-nearest range reduction by
/// `ln 2` in two parts, degree-6 polynomial, exponent by bit assembly). Inputs below
/// `-87.3` (where `f32::exp` gives a subnormal or 0) return `~1.2e-38`, which is
/// negligible against the softmax sums (≥ 1) it is added to.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    exp_generic::<false>(x)
}

#[inline(always)]
fn fmadd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn exp_generic<const F: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer, which then sits in the low mantissa
    // bits (`bits = 0x4B40_0000 + n`), so no float-to-int conversion is needed (those
    // saturate in Rust and would keep the loop from vectorising).
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.336_55 { -87.336_55 } else { x };
    let x = if x > 88.37 { 88.37 } else { x };
    let t = fmadd::<F>(x, LOG2E, ROUND);
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = fmadd::<F>(-n, C2, fmadd::<F>(-n, C1, x));
    let mut p = 1.987_569_1e-4f32;
    p = fmadd::<F>(p, r, 1.398_2e-3);
    p = fmadd::<F>(p, r, 8.333_452e-3);
    p = fmadd::<F>(p, r, 4.166_579_6e-2);
    p = fmadd::<F>(p, r, 1.666_666_5e-1);
    p = fmadd::<F>(p, r, 0.5); // Cephes: 5.0000001201e-1, which is 0.5 in f32.
    let y = fmadd::<F>(p, r * r, r) + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    y * scale
}

/// The per-task kernels, generic over FMA use; `avx2` holds the AVX2 + FMA builds.
mod kernels {
    use super::{exp_generic, fmadd, Dims, FusedDropout, KEY_BLOCK};

    const LANES: usize = 16;

    #[inline(always)]
    fn dot<const F: bool>(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; LANES];
        let mut ca = a.chunks_exact(LANES);
        let mut cb = b.chunks_exact(LANES);
        for (x, y) in ca.by_ref().zip(cb.by_ref()) {
            for l in 0..LANES {
                acc[l] = fmadd::<F>(x[l], y[l], acc[l]);
            }
        }
        let mut s = 0f32;
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            s = fmadd::<F>(*x, *y, s);
        }
        acc.iter().sum::<f32>() + s
    }

    #[inline(always)]
    fn max_of(a: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut c = a.chunks_exact(LANES);
        for x in c.by_ref() {
            for l in 0..LANES {
                acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
            }
        }
        let mut m = f32::NEG_INFINITY;
        for &x in c.remainder().iter().chain(acc.iter()) {
            if x > m {
                m = x;
            }
        }
        m
    }

    /// `y[j] += a * x[j]`.
    #[inline(always)]
    fn axpy<const F: bool>(a: f32, x: &[f32], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y = fmadd::<F>(a, *x, *y);
        }
    }

    /// `s[j] = Σ_d q[d] kt[d][j0 + j]` for `j < s.len()`.
    #[inline(always)]
    fn scores<const F: bool>(q: &[f32], kt: &[f32], tk: usize, j0: usize, s: &mut [f32]) {
        let n = s.len();
        let k0 = &kt[j0..j0 + n];
        for (s, k) in s.iter_mut().zip(k0) {
            *s = q[0] * *k;
        }
        for (d, &qd) in q.iter().enumerate().skip(1) {
            axpy::<F>(qd, &kt[d * tk + j0..d * tk + j0 + n], s);
        }
    }

    /// `s[j] = exp(s[j] - m)`, returns the sum.
    #[inline(always)]
    fn exp_shift_sum<const F: bool>(s: &mut [f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut c = s.chunks_exact_mut(LANES);
        for x in c.by_ref() {
            for l in 0..LANES {
                x[l] = exp_generic::<F>(x[l] - m);
                acc[l] += x[l];
            }
        }
        let mut tail = 0f32;
        for x in c.into_remainder() {
            *x = exp_generic::<F>(*x - m);
            tail += *x;
        }
        acc.iter().sum::<f32>() + tail
    }

    /// Applies the dropout keep bits of row `row_base + j0 + j` in place (`x *= z/(1-r)`).
    #[inline(always)]
    fn apply_dropout(d: &FusedDropout, row_base: u64, j0: usize, x: &mut [f32]) {
        for (j, x) in x.iter_mut().enumerate() {
            *x = if d.keep(row_base + (j0 + j) as u64) {
                *x * d.scale
            } else {
                0.0
            };
        }
    }

    /// Forward of one (batch, head) task: `dst` `[T_q, hd + 1]` gets `o_i` and `L_i`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn forward_task<const F: bool>(
        dims: Dims,
        causal: bool,
        drop: Option<FusedDropout>,
        task: usize,
        q: &[f32],
        kt: &[f32],
        vt: &[f32],
        dst: &mut [f32],
    ) {
        let Dims { tq, tk, hd, .. } = dims;
        let mut buf = vec![0f32; KEY_BLOCK.min(tk)];
        let mut acc = vec![0f32; hd];
        for i in 0..tq {
            let qi = &q[i * hd..(i + 1) * hd];
            let jend = dims.key_end(i, causal);
            let row_base = ((task * tq + i) * tk) as u64;
            let mut m = f32::NEG_INFINITY;
            let mut l = 0f32;
            acc.iter_mut().for_each(|a| *a = 0.0);
            let mut j0 = 0;
            while j0 < jend {
                let n = KEY_BLOCK.min(jend - j0);
                let s = &mut buf[..n];
                scores::<F>(qi, kt, tk, j0, s);
                let m_new = m.max(max_of(s));
                if m_new > m {
                    // First block: m = -inf, c = 0 and l, acc are still 0.
                    let c = if m == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (m - m_new).exp()
                    };
                    l *= c;
                    acc.iter_mut().for_each(|a| *a *= c);
                    m = m_new;
                }
                l += exp_shift_sum::<F>(s, m);
                if let Some(d) = &drop {
                    apply_dropout(d, row_base, j0, s);
                }
                for (dd, a) in acc.iter_mut().enumerate() {
                    *a += dot::<F>(s, &vt[dd * tk + j0..dd * tk + j0 + n]);
                }
                j0 += n;
            }
            let row = &mut dst[i * (hd + 1)..(i + 1) * (hd + 1)];
            let inv = 1.0 / l;
            for (o, a) in row.iter_mut().zip(&acc) {
                *o = a * inv;
            }
            row[hd] = m + l.ln();
        }
    }

    /// Backward of one task: `dq` `[T_q, hd]` is written, `dkt`/`dvt` `[hd, T_k]` accumulated.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn backward_task<const F: bool>(
        dims: Dims,
        causal: bool,
        drop: Option<FusedDropout>,
        task: usize,
        q: &[f32],
        kt: &[f32],
        vt: &[f32],
        o: &[f32],
        g: &[f32],
        dq: &mut [f32],
        dkt: &mut [f32],
        dvt: &mut [f32],
    ) {
        let Dims { tq, tk, hd, .. } = dims;
        let nb = KEY_BLOCK.min(tk);
        let mut p = vec![0f32; nb];
        let mut dp = vec![0f32; nb];
        let mut pz = vec![0f32; nb];
        for i in 0..tq {
            let qi = &q[i * hd..(i + 1) * hd];
            let oi = &o[i * (hd + 1)..(i + 1) * (hd + 1)];
            let gi = &g[i * (hd + 1)..i * (hd + 1) + hd];
            let lse = oi[hd];
            let di: f32 = gi.iter().zip(oi).map(|(a, b)| a * b).sum();
            let jend = dims.key_end(i, causal);
            let row_base = ((task * tq + i) * tk) as u64;
            let dqi = &mut dq[i * hd..(i + 1) * hd];
            dqi.iter_mut().for_each(|x| *x = 0.0);
            let mut j0 = 0;
            while j0 < jend {
                let n = KEY_BLOCK.min(jend - j0);
                let (p, dp, pz) = (&mut p[..n], &mut dp[..n], &mut pz[..n]);
                scores::<F>(qi, kt, tk, j0, p);
                for x in p.iter_mut() {
                    *x = exp_generic::<F>(*x - lse);
                }
                // dP_raw[j] = dO_i · v_j.
                scores::<F>(gi, vt, tk, j0, dp);
                let pv: &[f32] = if let Some(d) = &drop {
                    for (j, ((pz, dp), p)) in
                        pz.iter_mut().zip(dp.iter_mut()).zip(p.iter()).enumerate()
                    {
                        let z = if d.keep(row_base + (j0 + j) as u64) {
                            d.scale
                        } else {
                            0.0
                        };
                        *pz = *p * z;
                        *dp *= z;
                    }
                    pz
                } else {
                    p
                };
                for (d, &gd) in gi.iter().enumerate() {
                    axpy::<F>(gd, pv, &mut dvt[d * tk + j0..d * tk + j0 + n]);
                }
                // dS = p (dP - D_i), in place of dP.
                for (ds, p) in dp.iter_mut().zip(p.iter()) {
                    *ds = *p * (*ds - di);
                }
                for (d, dqd) in dqi.iter_mut().enumerate() {
                    *dqd += dot::<F>(dp, &kt[d * tk + j0..d * tk + j0 + n]);
                }
                for (d, &qd) in qi.iter().enumerate() {
                    axpy::<F>(qd, dp, &mut dkt[d * tk + j0..d * tk + j0 + n]);
                }
                j0 += n;
            }
        }
    }

    /// Probabilities of one task into `dst` `[T_q, T_k]` (zeros where masked).
    #[inline(always)]
    pub fn probs_task<const F: bool>(
        dims: Dims,
        causal: bool,
        q: &[f32],
        kt: &[f32],
        lse: &[f32],
        dst: &mut [f32],
    ) {
        let Dims { tq, tk, hd, .. } = dims;
        for i in 0..tq {
            let jend = dims.key_end(i, causal);
            let row = &mut dst[i * tk..i * tk + jend];
            scores::<F>(&q[i * hd..(i + 1) * hd], kt, tk, 0, row);
            for x in row.iter_mut() {
                *x = exp_generic::<F>(*x - lse[i]);
            }
        }
    }

    /// Horizontal sum of 16 lanes.
    #[inline(always)]
    fn hsum(x: &[f32; LANES]) -> f32 {
        x.iter().sum()
    }

    /// Scores of the 16 keys from `j0` for a query of width `HD`: `Σ_d q[d] kt[d][j0 + l]`
    /// (`kt` `[HD, tkp]`), all `HD` products accumulated in one 16-lane register.
    #[inline(always)]
    fn chunk_dot<const F: bool, const HD: usize>(
        q: &[f32; HD],
        kt: &[f32],
        tkp: usize,
        j0: usize,
    ) -> [f32; LANES] {
        let mut s = [0f32; LANES];
        for d in 0..HD {
            let k: &[f32; LANES] = kt[d * tkp + j0..d * tkp + j0 + LANES].try_into().unwrap();
            for l in 0..LANES {
                s[l] = fmadd::<F>(q[d], k[l], s[l]);
            }
        }
        s
    }

    /// Keep multipliers (`1/(1−r)` or 0) of the 16 entries from flat index `idx0`.
    #[inline(always)]
    fn keep_chunk(d: &FusedDropout, idx0: u64) -> [f32; LANES] {
        let mut z = [0f32; LANES];
        for (l, z) in z.iter_mut().enumerate() {
            *z = if d.keep(idx0 + l as u64) {
                d.scale
            } else {
                0.0
            };
        }
        z
    }

    /// [`forward_task`] for head width `HD` with keys and values padded to `tkp` (a
    /// multiple of 16) and processed chunk-major: each 16-key chunk's scores are built in
    /// one register from `HD` FMAs, and the output accumulates in `HD` 16-lane
    /// accumulators, so the inner loops touch every key once per pass.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn forward_task_hd<const F: bool, const HD: usize>(
        dims: Dims,
        causal: bool,
        drop: Option<FusedDropout>,
        task: usize,
        q: &[f32],
        kt: &[f32],
        vt: &[f32],
        tkp: usize,
        dst: &mut [f32],
    ) {
        let Dims { tq, tk, .. } = dims;
        const BLOCK: usize = KEY_BLOCK / LANES;
        let mut buf = [[0f32; LANES]; BLOCK];
        for i in 0..tq {
            let qi: &[f32; HD] = q[i * HD..(i + 1) * HD].try_into().unwrap();
            let jend = dims.key_end(i, causal);
            let chunks = jend.div_ceil(LANES);
            let row_base = ((task * tq + i) * tk) as u64;
            let mut m = f32::NEG_INFINITY;
            let mut lsum = 0f32;
            let mut acc = [[0f32; LANES]; HD];
            let mut c0 = 0;
            while c0 < chunks {
                let nc = BLOCK.min(chunks - c0);
                let mut bmax = [f32::NEG_INFINITY; LANES];
                for (c, s) in buf[..nc].iter_mut().enumerate() {
                    let j0 = (c0 + c) * LANES;
                    *s = chunk_dot::<F, HD>(qi, kt, tkp, j0);
                    if j0 + LANES > jend {
                        // The row's last chunk: hide the keys past `jend`.
                        for (l, x) in s.iter_mut().enumerate() {
                            if j0 + l >= jend {
                                *x = f32::NEG_INFINITY;
                            }
                        }
                    }
                    for l in 0..LANES {
                        bmax[l] = if s[l] > bmax[l] { s[l] } else { bmax[l] };
                    }
                }
                let m_new = bmax.iter().fold(m, |a, &b| if b > a { b } else { a });
                if m_new > m {
                    // First block: m = -inf, lsum and acc are still 0.
                    let c = if m == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (m - m_new).exp()
                    };
                    lsum *= c;
                    for a in acc.iter_mut() {
                        for x in a.iter_mut() {
                            *x *= c;
                        }
                    }
                    m = m_new;
                }
                let mut psum = [0f32; LANES];
                for (c, s) in buf[..nc].iter().enumerate() {
                    let j0 = (c0 + c) * LANES;
                    let mut p = [0f32; LANES];
                    for l in 0..LANES {
                        p[l] = exp_generic::<F>(s[l] - m);
                    }
                    if j0 + LANES > jend {
                        p[jend - j0..].iter_mut().for_each(|x| *x = 0.0);
                    }
                    for l in 0..LANES {
                        psum[l] += p[l];
                    }
                    if let Some(d) = &drop {
                        let z = keep_chunk(d, row_base + j0 as u64);
                        for l in 0..LANES {
                            p[l] *= z[l];
                        }
                    }
                    for (dd, a) in acc.iter_mut().enumerate() {
                        let v: &[f32; LANES] =
                            vt[dd * tkp + j0..dd * tkp + j0 + LANES].try_into().unwrap();
                        for l in 0..LANES {
                            a[l] = fmadd::<F>(p[l], v[l], a[l]);
                        }
                    }
                }
                lsum += hsum(&psum);
                c0 += nc;
            }
            let row = &mut dst[i * (HD + 1)..(i + 1) * (HD + 1)];
            let inv = 1.0 / lsum;
            for (o, a) in row.iter_mut().zip(&acc) {
                *o = hsum(a) * inv;
            }
            row[HD] = m + lsum.ln();
        }
    }

    /// [`backward_task`] for head width `HD`, chunk-major like [`forward_task_hd`]:
    /// `dkt`/`dvt` `[HD, tkp]` are accumulated, `dq` `[T_q, HD]` written.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn backward_task_hd<const F: bool, const HD: usize>(
        dims: Dims,
        causal: bool,
        drop: Option<FusedDropout>,
        task: usize,
        q: &[f32],
        kt: &[f32],
        vt: &[f32],
        tkp: usize,
        o: &[f32],
        g: &[f32],
        dq: &mut [f32],
        dkt: &mut [f32],
        dvt: &mut [f32],
    ) {
        let Dims { tq, tk, .. } = dims;
        for i in 0..tq {
            let qi: &[f32; HD] = q[i * HD..(i + 1) * HD].try_into().unwrap();
            let oi = &o[i * (HD + 1)..(i + 1) * (HD + 1)];
            let gi: &[f32; HD] = g[i * (HD + 1)..i * (HD + 1) + HD].try_into().unwrap();
            let lse = oi[HD];
            let di: f32 = gi.iter().zip(oi).map(|(a, b)| a * b).sum();
            let jend = dims.key_end(i, causal);
            let row_base = ((task * tq + i) * tk) as u64;
            let mut dq_acc = [[0f32; LANES]; HD];
            for c in 0..jend.div_ceil(LANES) {
                let j0 = c * LANES;
                let s = chunk_dot::<F, HD>(qi, kt, tkp, j0);
                let mut p = [0f32; LANES];
                for l in 0..LANES {
                    p[l] = exp_generic::<F>(s[l] - lse);
                }
                if j0 + LANES > jend {
                    p[jend - j0..].iter_mut().for_each(|x| *x = 0.0);
                }
                // dP_raw[j] = dO_i · v_j.
                let mut dp = chunk_dot::<F, HD>(gi, vt, tkp, j0);
                let mut pz = p;
                if let Some(d) = &drop {
                    let z = keep_chunk(d, row_base + j0 as u64);
                    for l in 0..LANES {
                        pz[l] *= z[l];
                        dp[l] *= z[l];
                    }
                }
                let mut ds = [0f32; LANES];
                for l in 0..LANES {
                    ds[l] = p[l] * (dp[l] - di);
                }
                for d in 0..HD {
                    let at = d * tkp + j0..d * tkp + j0 + LANES;
                    let dv: &mut [f32; LANES] = (&mut dvt[at.clone()]).try_into().unwrap();
                    for l in 0..LANES {
                        dv[l] = fmadd::<F>(gi[d], pz[l], dv[l]);
                    }
                    let k: &[f32; LANES] = kt[at.clone()].try_into().unwrap();
                    for l in 0..LANES {
                        dq_acc[d][l] = fmadd::<F>(ds[l], k[l], dq_acc[d][l]);
                    }
                    let dk: &mut [f32; LANES] = (&mut dkt[at]).try_into().unwrap();
                    for l in 0..LANES {
                        dk[l] = fmadd::<F>(qi[d], ds[l], dk[l]);
                    }
                }
            }
            for (x, a) in dq[i * HD..(i + 1) * HD].iter_mut().zip(&dq_acc) {
                *x = hsum(a);
            }
        }
    }

    /// The `#[target_feature]` builds of the kernels: `avx2` (AVX2 + FMA) and `avx512`.
    macro_rules! simd_builds {
        ($($module:ident: $features:literal),*) => {$(
            #[cfg(target_arch = "x86_64")]
            pub mod $module {
                use super::super::{Dims, FusedDropout};

                /// [`super::forward_task`] in this build.
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = $features)]
                pub fn forward_task(
                    dims: Dims,
                    causal: bool,
                    drop: Option<FusedDropout>,
                    task: usize,
                    q: &[f32],
                    kt: &[f32],
                    vt: &[f32],
                    dst: &mut [f32],
                ) {
                    super::forward_task::<true>(dims, causal, drop, task, q, kt, vt, dst)
                }

                /// [`super::backward_task`] in this build.
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = $features)]
                pub fn backward_task(
                    dims: Dims,
                    causal: bool,
                    drop: Option<FusedDropout>,
                    task: usize,
                    q: &[f32],
                    kt: &[f32],
                    vt: &[f32],
                    o: &[f32],
                    g: &[f32],
                    dq: &mut [f32],
                    dkt: &mut [f32],
                    dvt: &mut [f32],
                ) {
                    super::backward_task::<true>(
                        dims, causal, drop, task, q, kt, vt, o, g, dq, dkt, dvt,
                    )
                }

                /// [`super::probs_task`] in this build.
                #[target_feature(enable = $features)]
                pub fn probs_task(
                    dims: Dims,
                    causal: bool,
                    q: &[f32],
                    kt: &[f32],
                    lse: &[f32],
                    dst: &mut [f32],
                ) {
                    super::probs_task::<true>(dims, causal, q, kt, lse, dst)
                }
            }
        )*};
    }
    simd_builds!(
        avx2: "avx2,fma",
        avx512: "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"
    );

    /// The AVX2 + FMA build of the chunk-major kernels (the AVX-512 build is
    /// [`crate::model::fused_avx512`], written with intrinsics).
    #[cfg(target_arch = "x86_64")]
    pub mod avx2_hd {
        use super::super::{Dims, FusedDropout};

        /// [`super::forward_task_hd`] in this build.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma")]
        pub fn forward_task_hd<const HD: usize>(
            dims: Dims,
            causal: bool,
            drop: Option<FusedDropout>,
            task: usize,
            q: &[f32],
            kt: &[f32],
            vt: &[f32],
            tkp: usize,
            dst: &mut [f32],
        ) {
            super::forward_task_hd::<true, HD>(dims, causal, drop, task, q, kt, vt, tkp, dst)
        }

        /// [`super::backward_task_hd`] in this build.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma")]
        pub fn backward_task_hd<const HD: usize>(
            dims: Dims,
            causal: bool,
            drop: Option<FusedDropout>,
            task: usize,
            q: &[f32],
            kt: &[f32],
            vt: &[f32],
            tkp: usize,
            o: &[f32],
            g: &[f32],
            dq: &mut [f32],
            dkt: &mut [f32],
            dvt: &mut [f32],
        ) {
            super::backward_task_hd::<true, HD>(
                dims, causal, drop, task, q, kt, vt, tkp, o, g, dq, dkt, dvt,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::{attend, AttentionKernel, AttnCall};
    use crate::model::ctx::{keep, Ctx};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rand_vec(n: usize, scale: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
    }

    /// max |a - b| / max |b|.
    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let (mut e, mut s) = (0f64, 0f64);
        for (x, y) in a.iter().zip(&b) {
            assert!(x.is_finite(), "non-finite value {x}");
            e = e.max((*x as f64 - *y as f64).abs());
            s = s.max((*y as f64).abs());
        }
        e / s.max(1e-30)
    }

    #[derive(Debug, Clone, Copy)]
    struct Case {
        dims: Dims,
        causal: bool,
        dropout: f32,
        scale: f32,
    }

    /// Runs `attend` with `kernel` on seeded inputs; returns out, probs and the gradients of
    /// `Σ out ⊙ W` w.r.t. q, k, v.
    fn run(case: Case, kernel: AttentionKernel, seed: u64) -> [Tensor; 5] {
        let Dims { b, h, tq, tk, hd } = case.dims;
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mk = |t: usize, rng: &mut ChaCha8Rng| {
            Var::from_vec(
                rand_vec(b * h * t * hd, case.scale, rng),
                (b, h, t, hd),
                &dev,
            )
            .unwrap()
        };
        let (q, k, v) = (mk(tq, &mut rng), mk(tk, &mut rng), mk(tk, &mut rng));
        let w = Tensor::from_vec(
            rand_vec(b * h * tq * hd, 1.0, &mut rng),
            (b, h, tq, hd),
            &dev,
        )
        .unwrap();
        let ctx = Ctx::train(seed ^ 0xABCD);
        // Consume a stream first so the attention draws from a non-zero stream id.
        ctx.next_stream();
        let res = attend(
            &ctx,
            kernel,
            AttnCall {
                q: q.as_tensor(),
                k: k.as_tensor(),
                v: v.as_tensor(),
                causal_offset: case.causal,
                dropout: case.dropout,
                want_probs: true,
                want_lse: false,
            },
        )
        .unwrap();
        let loss = (&res.out * &w).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        [
            res.out.clone(),
            res.probs.unwrap(),
            g.get(q.as_tensor()).unwrap().clone(),
            g.get(k.as_tensor()).unwrap().clone(),
            g.get(v.as_tensor()).unwrap().clone(),
        ]
    }

    /// Worst relative error of fused vs plain over out, probs, dq, dk, dv.
    fn compare(case: Case) -> f64 {
        let plain = run(case, AttentionKernel::Plain, 42);
        let fused = run(case, AttentionKernel::Fused, 42);
        let names = ["out", "probs", "dq", "dk", "dv"];
        let mut worst = 0f64;
        for ((p, f), name) in plain.iter().zip(&fused).zip(names) {
            let e = rel_err(f, p);
            assert!(e < 1e-5, "{case:?}: {name} relative error {e:.3e}");
            worst = worst.max(e);
        }
        worst
    }

    fn dims(b: usize, h: usize, tq: usize, tk: usize, hd: usize) -> Dims {
        Dims { b, h, tq, tk, hd }
    }

    #[test]
    fn exp_approx_matches_std_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let (a, b) = (exp_approx(x) as f64, x.exp() as f64);
            worst = worst.max((a - b).abs() / b);
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "exp_approx relative error {worst:.3e}");
        let mut worst_fma = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let (a, b) = (exp_generic::<true>(x) as f64, x.exp() as f64);
            worst_fma = worst_fma.max((a - b).abs() / b);
            x += 0.001_37;
        }
        assert!(worst_fma < 3e-7, "FMA exp relative error {worst_fma:.3e}");
        assert_eq!(exp_approx(0.0), 1.0);
        assert!(exp_approx(-200.0) < 1.5e-38);
    }

    #[test]
    fn dropout_bits_match_ctx_keep() {
        for &p in &[0.0f32, 0.1, 0.25, 0.3, 0.5, 0.999, 1.0] {
            for (seed, stream) in [(0u64, 0u64), (7, 3), (u64::MAX, 12345)] {
                let d = FusedDropout::new(seed, stream, p);
                for idx in (0..20_000u64).chain([u64::MAX - 1, 1 << 40]) {
                    assert_eq!(
                        d.keep(idx),
                        keep(seed, stream, idx, p),
                        "p {p} seed {seed} stream {stream} idx {idx}"
                    );
                }
            }
        }
        assert_eq!(FusedDropout::new(1, 1, 1.0).scale, 0.0);
    }

    #[test]
    fn multipliers_match_keep_in_every_build() {
        use crate::model::simd::{best, with_simd, Simd};
        let d = FusedDropout::new(11, 3, 0.3);
        for level in [Simd::Portable, Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|&l| l <= best())
        {
            for (idx0, n) in [
                (0u64, 0usize),
                (0, 1),
                (5, 15),
                (7, 16),
                (1 << 33, 17),
                (3, 300),
            ] {
                let mut got = vec![f32::NAN; n + 1];
                with_simd(level, || d.multipliers(idx0, &mut got[..n]));
                for (i, g) in (idx0..).zip(&got[..n]) {
                    let want = if d.keep(i) { d.scale } else { 0.0 };
                    assert_eq!(g.to_bits(), want.to_bits(), "{level:?} index {i}");
                }
                assert!(got[n].is_nan(), "{level:?} wrote past the slice");
            }
        }
    }

    #[test]
    fn matches_plain_without_dropout() {
        let mut worst = 0f64;
        for causal in [false, true] {
            for d in [
                dims(1, 1, 1, 1, 1),
                dims(2, 3, 7, 5, 4),
                dims(2, 2, 5, 9, 10),
                dims(1, 2, 13, 13, 6),
                dims(3, 1, 17, 33, 5),
                dims(1, 1, 33, 17, 3),
            ] {
                worst = worst.max(compare(Case {
                    dims: d,
                    causal,
                    dropout: 0.0,
                    scale: 1.0,
                }));
            }
        }
        println!("no dropout: worst relative error {worst:.3e}");
    }

    #[test]
    fn every_simd_build_computes_the_same_attention() {
        use crate::model::simd::{best, with_simd, Simd};
        let case = Case {
            dims: dims(2, 3, 37, 300, 5),
            causal: true,
            dropout: 0.2,
            scale: 1.5,
        };
        let reference = with_simd(Simd::Portable, || run(case, AttentionKernel::Fused, 7));
        for level in [Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|&l| l <= best())
        {
            let got = with_simd(level, || run(case, AttentionKernel::Fused, 7));
            for (g, r) in got.iter().zip(&reference) {
                let e = rel_err(g, r);
                assert!(e < 1e-5, "{level:?}: relative error {e:.3e}");
            }
        }
    }

    #[test]
    fn matches_plain_for_every_head_width() {
        for hd in 1..=10 {
            for causal in [false, true] {
                compare(Case {
                    dims: dims(2, 2, 6, 11, hd),
                    causal,
                    dropout: 0.0,
                    scale: 1.5,
                });
            }
        }
    }

    #[test]
    fn matches_plain_with_dropout() {
        let mut worst = 0f64;
        for causal in [false, true] {
            for (d, p) in [
                (dims(2, 3, 7, 5, 4), 0.1),
                (dims(2, 2, 9, 23, 10), 0.3),
                (dims(1, 2, 19, 6, 5), 0.5),
            ] {
                worst = worst.max(compare(Case {
                    dims: d,
                    causal,
                    dropout: p,
                    scale: 1.0,
                }));
            }
        }
        println!("dropout: worst relative error {worst:.3e}");
    }

    #[test]
    fn matches_plain_across_key_blocks() {
        // T_k > 2·KEY_BLOCK (the AVX-512 forward's block) and large scores: the running
        // max grows across blocks, so the online rescaling is exercised in every build.
        let tk = 2 * KEY_BLOCK + 45;
        for causal in [false, true] {
            for (tq, p) in [(3, 0.0), (tk + 2, 0.2)] {
                compare(Case {
                    dims: dims(1, 2, tq, tk, 5),
                    causal,
                    dropout: p,
                    scale: 3.0,
                });
            }
        }
    }

    #[test]
    fn dropout_changes_the_output_and_eval_ignores_it() {
        let case = Case {
            dims: dims(1, 2, 8, 8, 4),
            causal: true,
            dropout: 0.5,
            scale: 1.0,
        };
        let with = run(case, AttentionKernel::Fused, 3);
        let without = run(
            Case {
                dropout: 0.0,
                ..case
            },
            AttentionKernel::Fused,
            3,
        );
        assert!(rel_err(&with[0], &without[0]) > 1e-2);
        // Probabilities are before dropout: identical.
        assert!(rel_err(&with[1], &without[1]) < 1e-7);
        // Eval mode: no dropout, no stream drawn.
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut mk = || Tensor::from_vec(rand_vec(64, 1.0, &mut rng), (1, 2, 8, 4), &dev).unwrap();
        let (q, k, v) = (mk(), mk(), mk());
        let eval = |p: f32| {
            let ctx = Ctx::eval();
            let call = AttnCall {
                q: &q,
                k: &k,
                v: &v,
                causal_offset: true,
                dropout: p,
                want_probs: false,
                want_lse: false,
            };
            let out = attend(&ctx, AttentionKernel::Fused, call).unwrap().out;
            (out, ctx.next_stream())
        };
        let ((a, sa), (b, sb)) = (eval(0.5), eval(0.0));
        assert_eq!(rel_err(&a, &b), 0.0);
        assert_eq!((sa, sb), (0, 0));
    }

    #[test]
    fn mask_zeroes_future_keys_and_rows_sum_to_one() {
        let case = Case {
            dims: dims(1, 1, 4, 6, 3),
            causal: true,
            dropout: 0.0,
            scale: 1.0,
        };
        let p: Vec<f32> = run(case, AttentionKernel::Fused, 5)[1]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..4 {
            let row = &p[i * 6..(i + 1) * 6];
            for (j, &x) in row.iter().enumerate() {
                // off = 2: query i sees keys j <= i + 2.
                assert_eq!(x == 0.0, j > i + 2, "row {i} key {j}: {x}");
            }
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-6, "row {i} sums to {s}");
        }
    }

    #[test]
    fn threads_give_identical_results() {
        let d = dims(3, 2, 9, 14, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let q = rand_vec(d.tasks() * d.tq * d.hd, 1.0, &mut rng);
        let k = rand_vec(d.tasks() * d.tk * d.hd, 1.0, &mut rng);
        let v = rand_vec(d.tasks() * d.tk * d.hd, 1.0, &mut rng);
        let g = rand_vec(d.tasks() * d.tq * (d.hd + 1), 1.0, &mut rng);
        let drop = Some(FusedDropout::new(1, 2, 0.2));
        let o1 = forward_all(1, d, true, drop, &q, &k, &v);
        let o3 = forward_all(3, d, true, drop, &q, &k, &v);
        assert_eq!(o1, o3);
        let b1 = backward_all(1, d, true, drop, &q, &k, &v, &o1, &g);
        let b4 = backward_all(4, d, true, drop, &q, &k, &v, &o1, &g);
        assert_eq!(b1, b4);
    }
}
