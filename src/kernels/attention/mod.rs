//! Fused CPU attention (spec/kernels.md): `softmax(q kᵀ + M) (dropout) v` without ever
//! materialising a `[B, h, T_q, T_k]` map, with a backward that recomputes the
//! probabilities from the row log-sum-exp.
//!
//! Layout and design:
//! - One task per (batch, head) pair; tasks are spread over
//!   [`candle_core::utils::get_num_threads`] groups on the current rayon pool. A task owns its rows of the
//!   output and its `dK`/`dV` accumulators, so no reduction across threads is needed.
//! - Keys and values of a task are transposed to keys-major `[hd, T_k]` so every inner
//!   loop runs over keys (contiguous, vectorised 16 at a time); `hd` is the short outer
//!   loop, a compile-time constant for every width up to [`MAX_FAST_HD`] (the
//!   chunk-major builds, instantiated by one macro, `by_hd!`).
//! - Forward per query row: keys in blocks of [`KEY_BLOCK`], online softmax (running
//!   max `m`, running sum `l`, rescaling the accumulator when `m` grows), the causal-offset
//!   mask as an index bound (`j ≤ i + |T_k − T_q|`, so masked keys are never touched) and
//!   the dropout keep bits regenerated from the counter-based generator of
//!   [`crate::kernels::rng`] at the flat index `((b·h + head)·T_q + i)·T_k + j`: exactly the
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

use super::par::{for_each_task, transpose};
use super::pointwise::{f32_slice, with_f32};
use super::rng::FusedDropout;
use super::simd::{self, exp_generic, fmadd, Simd};
use candle_core::utils::get_num_threads;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// The AVX-512 build of the chunk-major kernels, written with intrinsics.
#[cfg(target_arch = "x86_64")]
pub mod avx512;

/// Calls kernel `name` in the SIMD build `level` (see [`super::simd`]).
macro_rules! dispatch {
    ($level:expr; $name:ident ( $($arg:expr),* $(,)? )) => {
        super::simd::simd_dispatch!($level, portable, $name($($arg),*))
    };
}

/// Keys processed per online-softmax block (a block of scores stays in L1).
pub const KEY_BLOCK: usize = 256;

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
/// [`super::linear::linear_bias_from_heads`]) saves the head-merging copy.
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
        return unsafe { avx512::probs_task(dims, causal, q, kt, lse, dst) };
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

/// Widest head with a chunk-major build (`portable::forward_task_hd`): every width
/// `1..=MAX_FAST_HD` has one (MulT's heads 4–12, the memory encoders' 2× widths and
/// the time bias's two extra columns on top); wider heads take the generic kernels.
pub const MAX_FAST_HD: usize = 34;

/// Whether head width `hd` has a chunk-major build.
#[inline]
pub fn fast_hd(hd: usize) -> bool {
    (1..=MAX_FAST_HD).contains(&hd)
}

/// Calls `$f::<HD>($args)` for `HD = $hd`, one arm per width `1..=`[`MAX_FAST_HD`]: the
/// single list of instantiated widths (also used by PEA's sweep).
macro_rules! by_hd {
    ($hd:expr, $f:ident $args:tt) => {
        $crate::kernels::attention::by_hd!(@arms $hd, $f, $args;
            1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29
            30 31 32 33 34)
    };
    (@arms $hd:expr, $f:ident, $args:tt; $($n:literal)*) => {
        match $hd {
            $($n => $f::<$n> $args,)*
            other => unreachable!("no chunk-major build for head width {other}"),
        }
    };
}
pub(crate) use by_hd;

/// `[rows, cols]` row-major to `[cols, stride]` (zero padded to `stride ≥ rows`).
fn transpose_padded(x: &[f32], rows: usize, cols: usize, stride: usize) -> Vec<f32> {
    if fast_hd(cols) && stride.is_multiple_of(16) && stride >= rows {
        return by_hd!(cols, transpose_padded_hd(x, rows, stride));
    }
    let mut t = vec![0f32; cols * stride];
    if rows == 0 || cols == 0 {
        return t;
    }
    // Column-major order: each output row is written contiguously.
    for (c, dst) in t.chunks_exact_mut(stride).enumerate() {
        for (d, src) in dst[..rows].iter_mut().zip(x[c..].iter().step_by(cols)) {
            *d = *src;
        }
    }
    t
}

/// [`transpose_padded`] for a head width `HD` with a chunk-major build (`stride` a multiple of 16):
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
            avx512::forward_task::<HD>(dims, causal, drop, task, q, kt, vt, tkp, dst)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 + FMA.
        Simd::Avx2 => unsafe {
            portable::hd::avx2::forward_task_hd::<HD>(dims, causal, drop, task, q, kt, vt, tkp, dst)
        },
        _ => portable::forward_task_hd::<false, HD>(dims, causal, drop, task, q, kt, vt, tkp, dst),
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
            avx512::backward_task::<HD>(
                dims, causal, drop, task, q, kt, vt, tkp, o, g, dq, dkt, dvt,
            )
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 + FMA.
        Simd::Avx2 => unsafe {
            portable::hd::avx2::backward_task_hd::<HD>(
                dims, causal, drop, task, q, kt, vt, tkp, o, g, dq, dkt, dvt,
            )
        },
        _ => portable::backward_task_hd::<false, HD>(
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
    let fast = fast_hd(hd);
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
    let fast = fast_hd(hd);
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

/// The per-task kernels, generic over FMA use; `avx2` holds the AVX2 + FMA builds.
mod portable;

#[cfg(test)]
mod tests;
