//! The portable per-task kernels of fused attention, generic over FMA use, and their
//! `#[target_feature]` builds (`avx2`, `avx512`; `avx2_hd`: the AVX2 build of the
//! chunk-major kernels, whose AVX-512 build is [`super::avx512`]).

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
                for (j, ((pz, dp), p)) in pz.iter_mut().zip(dp.iter_mut()).zip(p.iter()).enumerate()
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

crate::kernels::simd::simd_builds!(avx2, avx512; {
    /// [`super::forward_task`] in this build.
    #[allow(clippy::too_many_arguments)]
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
});

/// The chunk-major kernels' AVX2 + FMA build, `hd::avx2` (their AVX-512 build is
/// [`crate::kernels::attention::avx512`], written with intrinsics).
pub mod hd {
    #[allow(unused_imports)]
    use super::*;
    crate::kernels::simd::simd_builds!(avx2; {
        /// [`super::super::forward_task_hd`] in this build.
        #[allow(clippy::too_many_arguments)]
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
            super::super::forward_task_hd::<true, HD>(dims, causal, drop, task, q, kt, vt, tkp, dst)
        }

        /// [`super::super::backward_task_hd`] in this build.
        #[allow(clippy::too_many_arguments)]
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
            super::super::backward_task_hd::<true, HD>(
                dims, causal, drop, task, q, kt, vt, tkp, o, g, dq, dkt, dvt,
            )
        }
    });
}
