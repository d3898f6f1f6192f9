//! The AVX-512 build of the fused attention's chunk-major kernels (head widths up to
//! [`crate::kernels::attention::MAX_FAST_HD`]), written with `std::arch` intrinsics.
//!
//! The portable kernels of [`super`] are loops over 16-lane arrays that the compiler
//! vectorises; with AVX-512 it splits many of them into 256-bit halves, gathers and
//! spills. These are the same computations with every 16-key chunk in one `zmm`
//! register, and a backward in a different loop order:
//!
//! - Forward, per query row: as the portable kernel (online softmax over blocks of keys,
//!   here [`FORWARD_BLOCK`] = 2·[`KEY_BLOCK`] of them; output accumulated in `hd`
//!   registers).
//! - Backward, in two passes over one (batch, head) task:
//!   1. key-major: for each 16-key chunk, `dK` and `dV` of the chunk stay in registers
//!      while every query row that sees the chunk passes by (`p`, dropout, `dP`,
//!      `dS = p (dP − D)`); `dS` goes to a per-thread `[T_q, T_k]` tile, which stays in
//!      L2 and is never a tensor;
//!   2. row-major: `dQ_i = Σ_j dS_ij k_j` from the tile.
//!
//!   The portable kernel instead reads and writes every `dK`/`dV` chunk once per query
//!   row. `dK`, `dV` are summed over the rows in the same order as there, `dQ` over the
//!   chunks in the same order; only the final 16-lane sums are taken in another order.
//! - `exp` is the range reduction of [`crate::kernels::simd::exp_approx`] with a degree-5
//!   polynomial (relative error ≤ 3e-7, two FMAs fewer) and `vscalefps` for the `2^n`.
//! - Dropout keep bits are [`FusedDropout::keep`] on 8 u64 lanes at a time (`vpmullq`);
//!   `mix64`'s last xor-shift does not reach the top 24 bits, so it is skipped, and
//!   `h >> 40 ≥ t` is tested as `h ≥ t · 2^40`.

use super::{Dims, KEY_BLOCK};
use crate::kernels::rng::{avx512::KeepBits, FusedDropout};
use crate::kernels::simd::lanes_below;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// f32 lanes in a `zmm` register: the keys of one chunk.
const LANES: usize = 16;

/// `exp` on 16 lanes, bit for bit [`super`]'s `exp_generic::<true>` (the Cephes
/// polynomial; the probabilities PEA thresholds must not depend on the SIMD build).
#[inline(always)]
unsafe fn exp16_cephes(x: __m512) -> __m512 {
    let x = _mm512_max_ps(_mm512_set1_ps(-87.336_55), x);
    let x = _mm512_min_ps(_mm512_set1_ps(88.37), x);
    let round = _mm512_set1_ps(12_582_912.0);
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
    let n = _mm512_sub_ps(t, round);
    let ni = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B40_0000));
    // `fmadd(−n, c, x)` is `fnmadd(n, c, x)` exactly.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
    _mm512_mul_ps(y, _mm512_castsi512_ps(scale))
}

/// The probabilities of one task, `exp(q_i·k_j − L_i)` for the keys row `i` sees (the
/// rest of `dst` untouched): bit for bit the FMA build of [`super`]'s
/// `probs_task` (`q_0 k_0`, then one FMA per further dimension, then the Cephes `exp`),
/// 16 keys per register. `kt` is `[hd, T_k]`, `dst` `[T_q, T_k]`.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
pub(crate) unsafe fn probs_task(
    dims: Dims,
    causal: bool,
    q: &[f32],
    kt: &[f32],
    lse: &[f32],
    dst: &mut [f32],
) {
    let Dims { tq, tk, hd, .. } = dims;
    assert!(
        hd > 0
            && q.len() >= tq * hd
            && kt.len() >= hd * tk
            && lse.len() >= tq
            && dst.len() >= tq * tk
    );
    for i in 0..tq {
        let jend = dims.key_end(i, causal);
        let qi = &q[i * hd..(i + 1) * hd];
        let l = _mm512_set1_ps(lse[i]);
        for j0 in (0..jend).step_by(LANES) {
            let m = lanes_below(jend - j0);
            let k0 = _mm512_maskz_loadu_ps(m, kt.as_ptr().add(j0));
            let mut s = _mm512_mul_ps(_mm512_set1_ps(qi[0]), k0);
            for (d, &qd) in qi.iter().enumerate().skip(1) {
                let k = _mm512_maskz_loadu_ps(m, kt.as_ptr().add(d * tk + j0));
                s = _mm512_fmadd_ps(_mm512_set1_ps(qd), k, s);
            }
            let p = exp16_cephes(_mm512_sub_ps(s, l));
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i * tk + j0), m, p);
        }
    }
}

/// `exp` on 16 lanes: [`crate::kernels::simd::exp_approx`]'s clamps and round-to-nearest range
/// reduction by `ln 2` in two parts, then a shorter polynomial than its Cephes one,
/// `1 + r + r² q(r)` with `q` of degree 3 (least squares on `|r| ≤ ln 2 / 2`, relative
/// error ≤ 1.7e-7 there, ≤ 3e-7 with the f32 rounding: the softmax needs no more), and
/// `2^n` by `vscalefps`.
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    // `max(lo, x)` / `min(hi, x)` return `x` when it is NaN, as the scalar clamps do.
    let x = _mm512_max_ps(_mm512_set1_ps(-87.336_55), x);
    let x = _mm512_min_ps(_mm512_set1_ps(88.37), x);
    let round = _mm512_set1_ps(12_582_912.0);
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
    let n = _mm512_sub_ps(t, round);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    // `q` in Estrin's form, `(c0 + c1 r) + r² (c2 + c3 r)`: two FMAs deep instead of
    // three, a shorter chain per chunk (a few % in `cargo bench --bench attention`).
    let r2 = _mm512_mul_ps(r, r);
    let lo = _mm512_fmadd_ps(_mm512_set1_ps(EXP_Q[1]), r, _mm512_set1_ps(EXP_Q[0]));
    let hi = _mm512_fmadd_ps(_mm512_set1_ps(EXP_Q[3]), r, _mm512_set1_ps(EXP_Q[2]));
    let q = _mm512_fmadd_ps(hi, r2, lo);
    let y = _mm512_add_ps(_mm512_fmadd_ps(q, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(y, n)
}

/// Coefficients of `q` in [`exp16`] (`r⁰..r³`).
const EXP_Q: [f32; 4] = [0.499_991_42, 0.166_668_86, 0.041_898_58, 0.008_333_84];

/// Load of 16 lanes at `p` (unaligned).
#[inline(always)]
unsafe fn load(p: &[f32], at: usize) -> __m512 {
    debug_assert!(at + LANES <= p.len());
    _mm512_loadu_ps(p.as_ptr().add(at))
}

/// Scores of the chunk at `j0` for a query `q` (`HD` broadcasts): `Σ_d q[d] kt[d][j0..]`.
#[inline(always)]
unsafe fn chunk_dot<const HD: usize>(
    q: &[__m512; HD],
    kt: &[f32],
    tkp: usize,
    j0: usize,
) -> __m512 {
    let mut s = _mm512_mul_ps(q[0], load(kt, j0));
    for (d, qd) in q.iter().enumerate().skip(1) {
        s = _mm512_fmadd_ps(*qd, load(kt, d * tkp + j0), s);
    }
    s
}

/// `HD` broadcasts of `x[..HD]`.
#[inline(always)]
unsafe fn splat<const HD: usize>(x: &[f32]) -> [__m512; HD] {
    std::array::from_fn(|d| _mm512_set1_ps(x[d]))
}

/// The forward of one (batch, head) task, as [`super::portable::forward_task_hd`]:
/// `q` `[T_q, HD]` (scaled), `kt`/`vt` `[HD, tkp]` zero padded, `dst` `[T_q, HD + 1]`
/// (output row, then the row log-sum-exp).
///
/// # Safety
/// The CPU must support AVX-512 F/DQ (see [`super::simd::supported`]); `kt`/`vt` hold
/// `HD · tkp` values with `tkp ≥ T_k` a multiple of 16.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
pub unsafe fn forward_task<const HD: usize>(
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
    assert!(tkp.is_multiple_of(LANES) && tkp >= tk && kt.len() >= HD * tkp && vt.len() >= HD * tkp);
    assert!(q.len() >= tq * HD && dst.len() >= tq * (HD + 1));
    const BLOCK: usize = FORWARD_BLOCK / LANES;
    let keep = drop.as_ref().map(|d| KeepBits::new(d));
    let scale = _mm512_set1_ps(drop.map_or(1.0, |d| d.scale));
    let mut buf = [_mm512_setzero_ps(); BLOCK];
    for i in 0..tq {
        let qi = splat::<HD>(&q[i * HD..]);
        let jend = dims.key_end(i, causal);
        let chunks = jend.div_ceil(LANES);
        let row_base = ((task * tq + i) * tk) as u64;
        let mut m = f32::NEG_INFINITY;
        let mut lsum = _mm512_setzero_ps();
        let mut acc = [_mm512_setzero_ps(); HD];
        let mut c0 = 0;
        while c0 < chunks {
            let nc = BLOCK.min(chunks - c0);
            let mut bmax = _mm512_set1_ps(f32::NEG_INFINITY);
            for (c, s) in buf[..nc].iter_mut().enumerate() {
                let j0 = (c0 + c) * LANES;
                let mut x = chunk_dot::<HD>(&qi, kt, tkp, j0);
                if j0 + LANES > jend {
                    // The row's last chunk: hide the keys past `jend`.
                    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
                    x = _mm512_mask_blend_ps(lanes_below(jend - j0), ninf, x);
                }
                *s = x;
                bmax = _mm512_max_ps(bmax, x);
            }
            let m_new = m.max(_mm512_reduce_max_ps(bmax));
            if m_new > m {
                // First block: m = -inf, lsum and acc are still 0.
                let c = if m == f32::NEG_INFINITY {
                    0.0
                } else {
                    crate::kernels::simd::exp_approx(m - m_new)
                };
                let c = _mm512_set1_ps(c);
                lsum = _mm512_mul_ps(lsum, c);
                for a in acc.iter_mut() {
                    *a = _mm512_mul_ps(*a, c);
                }
                m = m_new;
            }
            let mv = _mm512_set1_ps(m);
            for (c, s) in buf[..nc].iter_mut().enumerate() {
                let j0 = (c0 + c) * LANES;
                let mut p = exp16(_mm512_sub_ps(*s, mv));
                if j0 + LANES > jend {
                    p = _mm512_maskz_mov_ps(lanes_below(jend - j0), p);
                }
                lsum = _mm512_add_ps(lsum, p);
                if let Some(k) = &keep {
                    p = _mm512_maskz_mul_ps(k.mask(row_base + j0 as u64), p, scale);
                }
                if HD <= FORWARD_WIDE_HD {
                    for (d, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(p, load(vt, d * tkp + j0), *a);
                    }
                } else {
                    *s = p;
                }
            }
            if HD > FORWARD_WIDE_HD {
                // Wide heads: the probabilities of the block stay in `buf`, and the output
                // accumulates `DIM_BLOCK` dimensions at a time over the chunks (in the same
                // order), so its accumulators stay in registers.
                for d0 in (0..HD).step_by(DIM_BLOCK) {
                    let n = DIM_BLOCK.min(HD - d0);
                    let mut a = [_mm512_setzero_ps(); DIM_BLOCK];
                    a[..n].copy_from_slice(&acc[d0..d0 + n]);
                    for (c, p) in buf[..nc].iter().enumerate() {
                        let j0 = (c0 + c) * LANES;
                        for (d, a) in a[..n].iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(*p, load(vt, (d0 + d) * tkp + j0), *a);
                        }
                    }
                    acc[d0..d0 + n].copy_from_slice(&a[..n]);
                }
            }
            c0 += nc;
        }
        let lsum = _mm512_reduce_add_ps(lsum);
        let row = &mut dst[i * (HD + 1)..(i + 1) * (HD + 1)];
        let inv = 1.0 / lsum;
        for (o, a) in row.iter_mut().zip(&acc) {
            *o = _mm512_reduce_add_ps(*a) * inv;
        }
        row[HD] = m + lsum.ln();
    }
}

/// What [`row_terms`] needs of query row `i` for one key chunk.
struct RowTerms<'a> {
    /// `q_i` (scaled) and `dO_i`.
    q: &'a [f32],
    g: &'a [f32],
    /// `L_i` and `D_i = dO_i · o_i`.
    lse: f32,
    dd: f32,
    /// The chunk's keys the row sees.
    visible: __mmask16,
    /// Dropout keep bits of the chunk (`None`: no dropout).
    kept: Option<__mmask16>,
}

/// `dS = p (dP − D_i)` and `p·z/(1−r)` of one row and one 16-key chunk (`kc`, `vc` the
/// chunk's keys and values by dimension): `p = exp(q_i·k_j − L_i)` (zero past the keys
/// the row sees), `dP = z/(1−r) · dO_i·v_j`. The dot products run as two chains (even and
/// odd dimensions): the row's latency, not its arithmetic, bounds the loops around this.
#[inline(always)]
unsafe fn row_terms<const HD: usize>(
    r: &RowTerms,
    kc: &[__m512; HD],
    vc: &[__m512; HD],
    scale: __m512,
) -> (__m512, __m512) {
    let (s, dp) = row_dots::<HD>(r, kc, vc, 0..HD, _mm512_setzero_ps(), _mm512_setzero_ps());
    row_finish(r, s, dp, scale)
}

/// `q_i·k_j` and `dO_i·v_j` of one row and chunk over the dimensions `dims`, added to
/// `s0` and `dp0`, in two chains (even and odd dimensions).
#[inline(always)]
unsafe fn row_dots<const HD: usize>(
    r: &RowTerms,
    kc: &[__m512; HD],
    vc: &[__m512; HD],
    dims: std::ops::Range<usize>,
    s0: __m512,
    dp0: __m512,
) -> (__m512, __m512) {
    let mut s2 = [s0, _mm512_setzero_ps()];
    let mut dp2 = [dp0, _mm512_setzero_ps()];
    for d in dims {
        s2[d % 2] = _mm512_fmadd_ps(_mm512_set1_ps(r.q[d]), kc[d], s2[d % 2]);
        dp2[d % 2] = _mm512_fmadd_ps(_mm512_set1_ps(r.g[d]), vc[d], dp2[d % 2]);
    }
    (_mm512_add_ps(s2[0], s2[1]), _mm512_add_ps(dp2[0], dp2[1]))
}

/// [`row_terms`] from the row's scores `s` and `dO_i·v_j` `dp`.
#[inline(always)]
unsafe fn row_finish(r: &RowTerms, s: __m512, dp: __m512, scale: __m512) -> (__m512, __m512) {
    let mut dp = dp;
    let p = _mm512_maskz_mov_ps(r.visible, exp16(_mm512_sub_ps(s, _mm512_set1_ps(r.lse))));
    let mut pz = p;
    if let Some(kept) = r.kept {
        pz = _mm512_maskz_mul_ps(kept, p, scale);
        dp = _mm512_maskz_mul_ps(kept, dp, scale);
    }
    let ds = _mm512_mul_ps(p, _mm512_sub_ps(dp, _mm512_set1_ps(r.dd)));
    (ds, pz)
}

/// What [`dot_pass`] needs besides the rows: the first row that sees the chunk, the `dS`
/// tile (`T_q × tkp`), the chunk's first key and the dropout scale.
struct PassIn<'a> {
    first: usize,
    tile: &'a mut [f32],
    tkp: usize,
    j0: usize,
    scale: __m512,
}

/// One pass of the wide backward over the rows that see a chunk: adds the dimensions
/// `dims` to each row's partial `q_i·k_j` (parked in the tile) and `dO_i·v_j` (in
/// `col`), starting from zero when `dims` starts at 0; the `last` pass turns them into
/// `dS` (tile) and `p·z` (column) as [`row_terms`]. Returns its input for the next pass.
#[inline(always)]
unsafe fn dot_pass<'a, const HD: usize>(
    p: PassIn<'a>,
    col: &mut [__m512],
    row: &impl Fn(usize) -> RowTerms<'a>,
    kc: &[__m512; HD],
    vc: &[__m512; HD],
    dims: std::ops::Range<usize>,
    last: bool,
) -> PassIn<'a> {
    let zero = _mm512_setzero_ps();
    for (i, c) in col.iter_mut().enumerate().skip(p.first) {
        let r = row(i);
        let at = i * p.tkp + p.j0;
        let (s0, dp0) = match dims.start {
            0 => (zero, zero),
            _ => (load(p.tile, at), *c),
        };
        let (s, dp) = row_dots::<HD>(&r, kc, vc, dims.clone(), s0, dp0);
        let (s, dp) = if last {
            row_finish(&r, s, dp, p.scale)
        } else {
            (s, dp)
        };
        _mm512_storeu_ps(p.tile.as_mut_ptr().add(at), s);
        *c = dp;
    }
    p
}

/// Keys per online-softmax block of [`forward_task`]: twice the portable kernels'
/// [`KEY_BLOCK`], so every row of the bench shape (≤ 500 keys) is one block, with no
/// rescaling (−5% forward in `cargo bench --bench attention`); 32 registers of scores on
/// the stack.
const FORWARD_BLOCK: usize = 2 * KEY_BLOCK;

/// Head widths above this accumulate `dK`/`dV` (backward) and the output (forward)
/// [`DIM_BLOCK`] dimensions at a time: `2·HD` accumulators no longer fit in the 32
/// registers, and spilled ones cost a store and a reload per row.
const WIDE_HD: usize = 12;

/// Head widths above this accumulate the forward's output [`DIM_BLOCK`] dimensions at a
/// time (the forward holds fewer other registers than the backward).
const FORWARD_WIDE_HD: usize = 20;

/// Head widths above this compute a row's dot products in two passes over the rows (see
/// [`backward_task`]): `kc` and `vc` of all dimensions take `2·HD` registers.
const SPLIT_HD: usize = 15;

/// Head widths above this take three such passes instead of two.
const SPLIT3_HD: usize = 24;

/// Dimensions per accumulation block of wide heads (see [`WIDE_HD`]).
const DIM_BLOCK: usize = 8;

/// Dimensions per `dQ` block: one accumulator each, plus the loaded keys.
const DQ_BLOCK: usize = 24;

thread_local! {
    /// Each thread's `dS` tile for [`backward_task`], kept between calls.
    static DS_TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The backward of one (batch, head) task, as [`super::portable::backward_task_hd`]:
/// `o`, `g` `[T_q, HD + 1]` (the forward's packed output and its gradient), `dq`
/// `[T_q, HD]` written, `dkt`/`dvt` `[HD, tkp]` written (chunks no row sees: zeros).
///
/// # Safety
/// As [`forward_task`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
pub unsafe fn backward_task<const HD: usize>(
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
    assert!(tkp.is_multiple_of(LANES) && tkp >= tk && kt.len() >= HD * tkp && vt.len() >= HD * tkp);
    assert!(dkt.len() >= HD * tkp && dvt.len() >= HD * tkp);
    assert!(q.len() >= tq * HD && dq.len() >= tq * HD);
    assert!(o.len() >= tq * (HD + 1) && g.len() >= tq * (HD + 1));
    // Per row: the log-sum-exp, `D_i = dO_i · o_i`, and the last key it sees.
    let lse: Vec<f32> = (0..tq).map(|i| o[i * (HD + 1) + HD]).collect();
    let dd: Vec<f32> = (0..tq)
        .map(|i| {
            let (gi, oi) = (&g[i * (HD + 1)..i * (HD + 1) + HD], &o[i * (HD + 1)..]);
            gi.iter().zip(oi).map(|(a, b)| a * b).sum()
        })
        .collect();
    let jend: Vec<usize> = (0..tq).map(|i| dims.key_end(i, causal)).collect();
    let keep = drop.as_ref().map(|d| KeepBits::new(d));
    let scale = _mm512_set1_ps(drop.map_or(1.0, |d| d.scale));
    DS_TILE.with(|tile| {
        let mut tile = tile.borrow_mut();
        if tile.len() < tq * tkp {
            tile.resize(tq * tkp, 0.0);
        }
        let tile = &mut tile[..tq * tkp];
        // Pass 1, key-major: dK, dV of one chunk in registers, dS into the tile.
        let mut pz_col = vec![_mm512_setzero_ps(); if HD > 5 { tq } else { 0 }];
        for j0 in (0..tkp).step_by(LANES) {
            let kc: [__m512; HD] = std::array::from_fn(|d| load(kt, d * tkp + j0));
            let vc: [__m512; HD] = std::array::from_fn(|d| load(vt, d * tkp + j0));
            let mut dk = [_mm512_setzero_ps(); HD];
            let mut dv = [_mm512_setzero_ps(); HD];
            // `key_end` grows with the row: the rows that see this chunk are a suffix.
            let first = jend.partition_point(|&e| e <= j0);
            let row = |i: usize| RowTerms {
                q: &q[i * HD..(i + 1) * HD],
                g: &g[i * (HD + 1)..i * (HD + 1) + HD],
                lse: lse[i],
                dd: dd[i],
                visible: lanes_below(jend[i].saturating_sub(j0)),
                kept: keep
                    .as_ref()
                    .map(|k| k.mask(((task * tq + i) * tk + j0) as u64)),
            };
            if HD > 5 {
                // Wide heads: `kc`, `vc`, `dK`, `dV` would be 4·HD ≥ 32 registers and
                // LLVM would spill the accumulators (a store and a reload per row). So
                // first `dS` and `p·z` of every row (into the tile and a column), then
                // the accumulation from there, in the same row order.
                if HD <= SPLIT_HD {
                    for (i, pz_i) in pz_col.iter_mut().enumerate().skip(first) {
                        let (ds, pz) = row_terms::<HD>(&row(i), &kc, &vc, scale);
                        _mm512_storeu_ps(tile.as_mut_ptr().add(i * tkp + j0), ds);
                        *pz_i = pz;
                    }
                } else {
                    // Wider: `kc` and `vc` alone would spill, and every row would reload
                    // them. The dot products go in two or three passes over the rows, a
                    // part of the dimensions each (the partial sums parked in the tile and
                    // the column).
                    let three = HD > SPLIT3_HD;
                    let cut = if three {
                        [HD / 3, 2 * HD / 3]
                    } else {
                        [HD / 2, HD / 2]
                    };
                    let pass = PassIn {
                        first,
                        tile: &mut *tile,
                        tkp,
                        j0,
                        scale,
                    };
                    let pass = dot_pass::<HD>(pass, &mut pz_col, &row, &kc, &vc, 0..cut[0], false);
                    let pass = if three {
                        dot_pass::<HD>(pass, &mut pz_col, &row, &kc, &vc, cut[0]..cut[1], false)
                    } else {
                        pass
                    };
                    dot_pass::<HD>(pass, &mut pz_col, &row, &kc, &vc, cut[1]..HD, true);
                }
                if HD <= WIDE_HD {
                    for i in first..tq {
                        let (qi, gi) = (&q[i * HD..(i + 1) * HD], &g[i * (HD + 1)..]);
                        let ds = load(tile, i * tkp + j0);
                        for d in 0..HD {
                            dv[d] = _mm512_fmadd_ps(_mm512_set1_ps(gi[d]), pz_col[i], dv[d]);
                            dk[d] = _mm512_fmadd_ps(_mm512_set1_ps(qi[d]), ds, dk[d]);
                        }
                    }
                } else {
                    // Wider still: `dK`, `dV` of all dimensions would not fit in the
                    // registers either; a block of `DIM_BLOCK` dimensions at a time, each
                    // over the rows in the same order (the same sums).
                    for d0 in (0..HD).step_by(DIM_BLOCK) {
                        let n = DIM_BLOCK.min(HD - d0);
                        let mut bk = [_mm512_setzero_ps(); DIM_BLOCK];
                        let mut bv = [_mm512_setzero_ps(); DIM_BLOCK];
                        for (i, pz) in pz_col.iter().enumerate().skip(first) {
                            let (qi, gi) = (&q[i * HD + d0..], &g[i * (HD + 1) + d0..]);
                            let ds = load(tile, i * tkp + j0);
                            for d in 0..n {
                                bv[d] = _mm512_fmadd_ps(_mm512_set1_ps(gi[d]), *pz, bv[d]);
                                bk[d] = _mm512_fmadd_ps(_mm512_set1_ps(qi[d]), ds, bk[d]);
                            }
                        }
                        dk[d0..d0 + n].copy_from_slice(&bk[..n]);
                        dv[d0..d0 + n].copy_from_slice(&bv[..n]);
                    }
                }
            } else {
                for i in first..tq {
                    let r = row(i);
                    let (ds, pz) = row_terms::<HD>(&r, &kc, &vc, scale);
                    for d in 0..HD {
                        dv[d] = _mm512_fmadd_ps(_mm512_set1_ps(r.g[d]), pz, dv[d]);
                        dk[d] = _mm512_fmadd_ps(_mm512_set1_ps(r.q[d]), ds, dk[d]);
                    }
                    _mm512_storeu_ps(tile.as_mut_ptr().add(i * tkp + j0), ds);
                }
            }
            for d in 0..HD {
                _mm512_storeu_ps(dkt.as_mut_ptr().add(d * tkp + j0), dk[d]);
                _mm512_storeu_ps(dvt.as_mut_ptr().add(d * tkp + j0), dv[d]);
            }
        }
        // Pass 2, row-major: dQ_i = Σ_j dS_ij k_j over the chunks row i sees (the tile
        // entries pass 1 wrote).
        for i in 0..tq {
            // A block of at most `DQ_BLOCK` dimensions at a time (all of them up to that
            // width), so the accumulators stay in registers.
            for d0 in (0..HD).step_by(DQ_BLOCK) {
                let n = DQ_BLOCK.min(HD - d0);
                let mut acc = [_mm512_setzero_ps(); DQ_BLOCK];
                for j0 in (0..jend[i]).step_by(LANES) {
                    let ds = load(tile, i * tkp + j0);
                    for (d, a) in acc[..n].iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(ds, load(kt, (d0 + d) * tkp + j0), *a);
                    }
                }
                for (x, a) in dq[i * HD + d0..i * HD + d0 + n].iter_mut().zip(&acc) {
                    *x = _mm512_reduce_add_ps(*a);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probs_are_bit_identical_to_the_avx2_build() {
        use crate::kernels::attention::task_probs;
        use crate::kernels::simd::{supported, Simd};
        if !supported(Simd::Avx512) {
            return;
        }
        let mut state = 3u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        };
        for (tq, tk, hd, causal) in [(37, 53, 5, true), (50, 19, 10, false), (9, 70, 3, true)] {
            let dims = Dims {
                b: 1,
                h: 1,
                tq,
                tk,
                hd,
            };
            let q: Vec<f32> = (0..tq * hd).map(|_| next()).collect();
            let kt: Vec<f32> = (0..hd * tk).map(|_| next()).collect();
            // Large and tiny arguments too (clamps, underflow to 0).
            let lse: Vec<f32> = (0..tq)
                .map(|i| next() * [1.0, 30.0, -30.0][i % 3])
                .collect();
            let run = |level| {
                let mut dst = vec![-1f32; tq * tk];
                task_probs(level, dims, causal, &q, &kt, &lse, &mut dst);
                dst
            };
            let (got, want) = (run(Simd::Avx512), run(Simd::Avx2));
            for (x, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{tq}x{tk} hd {hd}: entry {x}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn exp16_is_within_3e_7_of_exp() {
        if !crate::kernels::simd::supported(crate::kernels::simd::Simd::Avx512) {
            return;
        }
        let mut worst = 0f64;
        // Softmax arguments are ≤ 0; cover them densely, and a few positive ones.
        let xs: Vec<f32> = (0..200_000).map(|i| -87.0 + i as f32 * 0.000_45).collect();
        for c in xs.chunks_exact(16) {
            let mut out = [0f32; 16];
            // SAFETY: AVX-512 was checked above; `c` and `out` hold 16 values.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(c.as_ptr()))) };
            for (x, y) in c.iter().zip(out) {
                let want = (*x as f64).exp();
                worst = worst.max((y as f64 - want).abs() / want);
            }
        }
        assert!(worst <= 3e-7, "worst relative error {worst:.3e}");
        // Masked scores (-inf) give ~0, never NaN.
        let mut out = [1f32; 16];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_set1_ps(f32::NEG_INFINITY))) };
        assert!(out.iter().all(|y| (0.0..1e-37).contains(y)), "{out:?}");
    }
}
