//! The AVX-512 build of one PEA task (threshold, masks, distance and gradient), with
//! intrinsics. Same results as the portable build of the parent module: the same γ (an
//! exact selection either way), the same masks, and the distance and gradients up to the
//! order of the final 16-lane sums.
//!
//! - **Threshold without a histogram.** The portable build counts every entry into a
//!   2048-bin histogram one scalar increment at a time (about 2 cycles per entry). Here a
//!   sample of the eligible probabilities brackets the `k`-th largest, `lo ≤ γ ≤ hi`,
//!   and one vector pass over the map counts the eligible entries and those above `hi`
//!   and compress-stores those inside `[lo, hi]`; the selection then narrows the bracket
//!   the same way on that (much shorter) list until an exact `select_nth` is cheap. A
//!   bracket that misses `k` (an unlucky sample) falls back to the whole list, so the
//!   result is always exact; the sample only decides the speed.
//! - **Sweep on masks.** Each 16-key chunk's mask `V = W | V_prev` is one `__mmask16`,
//!   which is stored as bits, drives masked adds for `K_i` and overwrites the chunk's
//!   probabilities with 0/1; the column sums `Q_j` and `r_j` are then one small GEMM
//!   over that 0/1 tile instead of a read-modify-write of `T_s`-long rows per query.

use super::{keep_count, key_terms, sweep as portable_sweep, TaskIn};
use crate::kernels::attention::{by_hd, fast_hd, task_probs, Dims};
use crate::kernels::gemm;
use crate::kernels::par::transpose;
use crate::kernels::simd::lanes_below;
use crate::kernels::simd::Simd;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// f32 lanes in a `zmm` register.
const LANES: usize = 16;
/// Sampled probabilities per bracket.
const SAMPLE: usize = 512;
/// Lists this short are selected from directly.
const DIRECT: usize = 4096;

/// Per-thread buffers, reused across tasks: the probability tile and two lists for the
/// selection.
#[derive(Default)]
struct Scratch {
    probs: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `v` grown to at least `n` values (contents unspecified).
fn at_least(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// One task in the AVX-512 build; see [`super::run_task`].
///
/// # Safety
/// The CPU must support AVX-512 F, DQ, VL, BW and POPCNT.
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,popcnt")]
pub(super) unsafe fn run_task(
    t: &TaskIn,
    bits: &mut [u64],
    dq: &mut [f32],
    dk: &mut [f32],
) -> (f64, usize) {
    let Dims { tq, tk, hd, .. } = t.dims;
    let kt = transpose(t.k, tk, hd);
    SCRATCH.with_borrow_mut(|s| {
        let probs = at_least(&mut s.probs, tq * tk);
        if t.tau > 0.0 {
            task_probs(Simd::Avx512, t.dims, t.causal, t.q, &kt, t.lse, probs);
            // `task_probs` leaves the keys past a row's causal end alone: zero them.
            for i in 0..tq {
                probs[i * tk + t.dims.key_end(i, t.causal)..(i + 1) * tk].fill(0.0);
            }
        } else {
            // Nothing to select (only the propagated mask): no probabilities needed.
            probs.fill(0.0);
        }
        let vkb = key_bits(t.vk);
        let gamma = threshold(t, probs, &vkb, &mut s.a, &mut s.b);
        if fast_hd(hd) {
            by_hd!(hd, sweep(t, &kt, probs, gamma, &vkb, bits, dq, dk))
        } else {
            portable_sweep(t, &kt, probs, gamma, bits, dq, dk)
        }
    })
}

/// The key padding flags as bits (`ceil(T_s/64)` words, zero past `T_s`).
fn key_bits(vk: &[bool]) -> Vec<u64> {
    let mut w = vec![0u64; vk.len().div_ceil(64)];
    for (j, &v) in vk.iter().enumerate() {
        w[j / 64] |= (v as u64) << (j % 64);
    }
    w
}

/// The 16 bits of chunk `c` (keys `16c..16c+16`) of a bit row.
#[inline(always)]
fn chunk_bits(words: &[u64], c: usize) -> __mmask16 {
    (words[c / 4] >> (16 * (c % 4))) as __mmask16
}

/// γ of one task: the `k`-th largest eligible probability (`f32::INFINITY` when nothing
/// is to be selected); the same value as the portable [`super::threshold`].
#[inline(always)]
unsafe fn threshold(
    t: &TaskIn,
    probs: &[f32],
    vkb: &[u64],
    a: &mut Vec<f32>,
    b: &mut Vec<f32>,
) -> f32 {
    let Dims { tq, tk, .. } = t.dims;
    let nq = t.vq.iter().filter(|x| **x).count();
    let nk = t.vk.iter().filter(|x| **x).count();
    let want = keep_count(t.tau, nq, nk, usize::MAX);
    if want == 0 {
        return f32::INFINITY;
    }
    let (lo, hi) = sample_bracket(t, probs, want);
    let (eligible, above, inside) = map_pass(t, probs, vkb, lo, hi, at_least(a, tq * tk + LANES));
    let k = want.min(eligible);
    if k == 0 {
        return f32::INFINITY;
    }
    if above < k && k <= above + inside {
        return kth_largest(&mut a[..inside], k - above, b);
    }
    // The sample missed: select among all eligible values.
    let (_, _, all) = map_pass(
        t,
        probs,
        vkb,
        0.0,
        f32::INFINITY,
        at_least(a, tq * tk + LANES),
    );
    kth_largest(&mut a[..all], k, b)
}

/// `i`-th point of a low-discrepancy sequence in `0..n` (golden-ratio Weyl sequence).
#[inline(always)]
fn sample_at(i: usize, n: usize) -> usize {
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ((x * n as u64) >> 32) as usize
}

/// Bounds `lo ≤ hi` that likely hold the `k`-th largest value, from the sorted values at
/// ranks about `k·m/n ± 4σ` of a sample of `m` out of `n` (σ the binomial spread of a
/// sample rank); `(0, ∞)` (everything) when the sample is too small to narrow anything.
#[inline(always)]
fn bracket(sample: &mut [f32], k: usize, n: usize) -> (f32, f32) {
    let m = sample.len();
    if m < 32 || n == 0 {
        return (0.0, f32::INFINITY);
    }
    let f = (k as f64 / n as f64).clamp(0.0, 1.0);
    let rank = f * m as f64; // expected sample rank (from the top) of the k-th value
    let spread = 4.0 * (m as f64 * f * (1.0 - f)).sqrt() + 4.0;
    let top = (rank - spread).floor();
    let bottom = (rank + spread).ceil();
    let desc = |a: &f32, b: &f32| b.total_cmp(a);
    let lo = if bottom >= m as f64 {
        0.0
    } else {
        let idx = bottom as usize;
        *sample.select_nth_unstable_by(idx, desc).1
    };
    let hi = if top < 0.0 {
        f32::INFINITY
    } else {
        // After the selection above, ranks below `bottom` sit in front of it.
        let idx = top as usize;
        let head = if bottom < m as f64 {
            &mut sample[..bottom as usize]
        } else {
            &mut sample[..]
        };
        *head.select_nth_unstable_by(idx, desc).1
    };
    (lo, hi)
}

/// [`bracket`] for the map of one task: the sample is the eligible entries at `SAMPLE`
/// spread positions of the `T_t × T_s` tile.
#[inline(always)]
fn sample_bracket(t: &TaskIn, probs: &[f32], k: usize) -> (f32, f32) {
    let Dims { tq, tk, .. } = t.dims;
    let n = tq * tk;
    let mut sample = [0f32; SAMPLE];
    let mut m = 0;
    for s in 0..SAMPLE {
        let x = sample_at(s, n);
        let (i, j) = (x / tk, x % tk);
        let p = probs[x];
        if t.vq[i] && t.vk[j] && p > 0.0 {
            sample[m] = p;
            m += 1;
        }
    }
    // The eligible share of the sample estimates the eligible count.
    let eligible = (n as f64 * m as f64 / SAMPLE as f64).round() as usize;
    bracket(&mut sample[..m], k, eligible.max(1))
}

/// One pass over the valid rows of a task's map: the number of eligible entries (key
/// and query valid, `p > 0`), the number of them above `hi`, and those in `[lo, hi]`
/// compress-stored at the front of `out` (`T_t·T_s + 16` long: the stores are whole
/// registers), whose count is the third value.
#[inline(always)]
unsafe fn map_pass(
    t: &TaskIn,
    probs: &[f32],
    vkb: &[u64],
    lo: f32,
    hi: f32,
    out: &mut [f32],
) -> (usize, usize, usize) {
    let Dims { tq, tk, .. } = t.dims;
    assert!(probs.len() >= tq * tk && out.len() >= tq * tk + LANES);
    let (zero, vlo, vhi) = (_mm512_setzero_ps(), _mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let (mut eligible, mut above, mut n) = (0usize, 0usize, 0usize);
    for i in (0..tq).filter(|&i| t.vq[i]) {
        let row = probs.as_ptr().add(i * tk);
        for c in 0..tk.div_ceil(LANES) {
            let j0 = c * LANES;
            let p = _mm512_maskz_loadu_ps(lanes_below(tk - j0), row.add(j0));
            let e = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(chunk_bits(vkb, c), p, zero);
            let up = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(e, p, vhi);
            let mid = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(e & !up, p, vlo);
            eligible += e.count_ones() as usize;
            above += up.count_ones() as usize;
            // Compressed in a register and stored whole (a compress-store to memory is
            // slow on Zen 4/5); `n + 16 ≤ out.len()` since each entry adds at most one.
            _mm512_storeu_ps(out.as_mut_ptr().add(n), _mm512_maskz_compress_ps(mid, p));
            n += mid.count_ones() as usize;
        }
    }
    (eligible, above, n)
}

/// The `k`-th largest (1-based) of `list`, narrowing the list by sampled brackets (into
/// `spare` and back) until it is short enough for a direct selection.
#[inline(always)]
unsafe fn kth_largest(list: &mut [f32], k: usize, spare: &mut Vec<f32>) -> f32 {
    assert!(
        k >= 1 && k <= list.len(),
        "PEA threshold: rank {k} of {}",
        list.len()
    );
    let spare = at_least(spare, list.len() + LANES);
    let (mut cur, mut next): (&mut [f32], &mut [f32]) = (list, spare);
    let mut k = k;
    while cur.len() > DIRECT {
        let n = cur.len();
        let mut sample = [0f32; SAMPLE];
        for (s, x) in sample.iter_mut().enumerate() {
            *x = cur[sample_at(s, n)];
        }
        let (lo, hi) = bracket(&mut sample, k, n);
        let (above, inside) = list_pass(cur, lo, hi, next);
        // The lists swap roles, so the next one must be 16 shorter than this one.
        if !(above < k && k <= above + inside) || inside + LANES > n {
            break; // the sample missed (or barely narrowed): select directly
        }
        k -= above;
        let (a, b) = (next, cur);
        cur = &mut a[..inside];
        next = b;
    }
    let idx = cur.len() - k;
    *cur.select_nth_unstable_by(idx, |a, b| a.total_cmp(b)).1
}

/// Count of `list` above `hi`, and the values in `[lo, hi]` compress-stored at the front
/// of `out` (16 longer than `list`: the stores are whole registers; count returned
/// second).
#[inline(always)]
unsafe fn list_pass(list: &[f32], lo: f32, hi: f32, out: &mut [f32]) -> (usize, usize) {
    assert!(out.len() >= list.len() + LANES);
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let (mut above, mut n) = (0usize, 0usize);
    for j0 in (0..list.len()).step_by(LANES) {
        let tail = lanes_below(list.len() - j0);
        let p = _mm512_maskz_loadu_ps(tail, list.as_ptr().add(j0));
        let up = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(tail, p, vhi);
        let mid = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(tail & !up, p, vlo);
        above += up.count_ones() as usize;
        _mm512_storeu_ps(out.as_mut_ptr().add(n), _mm512_maskz_compress_ps(mid, p));
        n += mid.count_ones() as usize;
    }
    (above, n)
}

/// Step 3 of the parent module's doc for one task of head width `HD`, in two parts:
/// 1. per row, each 16-key chunk's mask `V = W | V_prev` (`W = [p ≥ γ]` on valid query
///    and key) is stored as bits, counted into `c_i`, drives masked adds of
///    `K_i = Σ_j V_ij k_j`, and overwrites the chunk's probabilities as 0/1 (the tile
///    becomes `V`);
/// 2. `[Q_jᵀ; r_j] = [q̃ᵀ; 1] · V` is one small GEMM (`HD + 1` rows): each element the
///    FMA chain over `i` in order, so the same sums as the portable build's row-by-row
///    adds.
///
/// Then the distance and the gradients as in the portable build.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn sweep<const HD: usize>(
    t: &TaskIn,
    kt: &[f32],
    probs: &mut [f32],
    gamma: f32,
    vkb: &[u64],
    bits: &mut [u64],
    dq: &mut [f32],
    dk: &mut [f32],
) -> (f64, usize) {
    let Dims { tq, tk, .. } = t.dims;
    let words = tk.div_ceil(64);
    let chunks = tk.div_ceil(LANES);
    assert!(
        probs.len() >= tq * tk
            && kt.len() == HD * tk
            && bits.len() == tq * words
            && dq.len() == tq * HD
            && dk.len() == tk * HD
            && t.q.len() == tq * HD
            && vkb.len() == words
            && t.prev.is_none_or(|p| p.len() == tq * words)
    );
    let unscale = (HD as f32).sqrt();
    let (one, vgamma) = (_mm512_set1_ps(1.0), _mm512_set1_ps(gamma));
    let mut dist = 0f64;
    let mut selected = 0usize;
    for i in 0..tq {
        let prow = probs.as_mut_ptr().add(i * tk);
        let valid_row: __mmask16 = if t.vq[i] { 0xFFFF } else { 0 };
        let mut kacc = [_mm512_setzero_ps(); HD];
        let mut count = 0u32;
        let mut word = 0u64;
        for c in 0..chunks {
            let j0 = c * LANES;
            let tail = lanes_below(tk - j0);
            let p = _mm512_maskz_loadu_ps(tail, prow.add(j0));
            let w =
                _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(chunk_bits(vkb, c) & valid_row, p, vgamma);
            let m = match t.prev {
                Some(prev) => w | (chunk_bits(&prev[i * words..(i + 1) * words], c) & tail),
                None => w,
            };
            word |= (m as u64) << (16 * (c % 4));
            if c % 4 == 3 || c + 1 == chunks {
                bits[i * words + c / 4] = word;
                word = 0;
            }
            count += m.count_ones();
            _mm512_mask_storeu_ps(prow.add(j0), tail, _mm512_maskz_mov_ps(m, one));
            for (d, acc) in kacc.iter_mut().enumerate() {
                let k = _mm512_maskz_loadu_ps(tail, kt.as_ptr().add(d * tk + j0));
                *acc = _mm512_mask_add_ps(*acc, m, *acc, k);
            }
        }
        let dqi = &mut dq[i * HD..(i + 1) * HD];
        if count == 0 {
            dqi.fill(0.0);
            continue;
        }
        selected += count as usize;
        let c = count as f32;
        let mut di = 0f64;
        for d in 0..HD {
            let k = _mm512_reduce_add_ps(kacc[d]);
            let q = t.q[i * HD + d] * unscale;
            di += c as f64 * (q as f64) * (q as f64) - 2.0 * (q as f64) * (k as f64);
            // ∂d/∂qh = sqrt(hd) ∂d/∂q̃.
            dqi[d] = 2.0 * (c * q - k) * unscale;
        }
        dist += di;
    }
    // `[q̃ᵀ; 1]` `[HD + 1, T_t]` times `V` `[T_t, T_s]`.
    let mut a = vec![1f32; (HD + 1) * tq];
    for i in 0..tq {
        for d in 0..HD {
            a[d * tq + i] = t.q[i * HD + d] * unscale;
        }
    }
    let qr = gemm::matmul_serial(Simd::Avx512, &a, &probs[..tq * tk], HD + 1, tq, tk);
    let (qt, r) = qr.split_at(HD * tk);
    dist += key_terms(kt, r, qt, HD, dk);
    (dist, selected)
}

#[cfg(test)]
mod tests;
