//! The biased multi-kernel MMD² of `align::mmd::mmd_biased_bw` as one fused CPU sweep:
//! value and gradient together, without any `[N, N]` tensor.
//!
//! With `z = [x; y]` (`N = n + m` rows), `d_ij = max(|z_i|² + |z_j|² − 2 z_i·z_j, 0)` and
//! the five Gaussian kernels `k_j(d) = exp(−d / (bw 2^(j−2)))`, the estimate is
//! `Σ_ij w_ij K(d_ij)`, `K = Σ_j k_j`, with `w = 1/n²` inside x, `1/m²` inside y and
//! `−1/(nm)` across. The bandwidths are powers of two apart, so with
//! `u = exp(−d / (4 bw))` the five kernels are `u, u², u⁴, u⁸, u¹⁶`: one `exp` and four
//! products per pair (the products add ≤ ~2e-6 relative rounding to the smallest kernel
//! values, where they are negligible). The gradient,
//! `∂/∂z_a = 4 Σ_j w_aj K'(d_aj) (z_a − z_j)` with `K'(d) = −Σ_j k_j / (bw 2^(j−2))`
//! (0 where the distance was clamped), is accumulated in the same sweep, one row of
//! pairs at a time, vectorised over the partner rows `j` from a transposed `[D, N]` copy.
//! With AVX-512 the products `z_i·z_j` and `Σ_j G_ij z_j` of a block of 16 rows are two
//! GEMMs ([`crate::kernels::gemm`]) instead, so each pass over the partner rows serves 16
//! rows.
//!
//! Without a fixed bandwidth, `bw` is the mean off-diagonal squared distance of the pooled
//! sample in closed form, `(2N Σ|z_i|² − 2|Σ z_i|²) / (N² − N)` in f64 (no gradient).

use super::gemm;
use super::par::{for_each_task, transpose};
use super::precomputed::scalar_with_grads;
use super::simd::{self, dot16 as dot, exp_approx, simd_dispatch};
use anyhow::{ensure, Result};
use candle_core::utils::get_num_threads;
use candle_core::Tensor;

/// Rows of pairs per parallel task.
const ROWS_PER_TASK: usize = 16;

/// Mean off-diagonal squared distance of the rows of `z` `[N, D]` (1 when degenerate).
pub fn closed_form_bandwidth(z: &[f32], n: usize, dim: usize) -> f64 {
    let mut sq = 0f64;
    let mut sum = vec![0f64; dim];
    for row in z.chunks(dim) {
        for (s, &v) in sum.iter_mut().zip(row) {
            sq += (v as f64) * (v as f64);
            *s += v as f64;
        }
    }
    let total = 2.0 * n as f64 * sq - 2.0 * sum.iter().map(|s| s * s).sum::<f64>();
    let pairs = (n * n - n).max(1) as f64;
    let bw = total / pairs;
    if bw > 0.0 && bw.is_finite() {
        bw
    } else {
        1.0
    }
}

/// Biased multi-kernel MMD² between the rows of `x` `[n, D]` and `y` `[m, D]` (f32, CPU)
/// as a scalar with gradient; `bw` fixes the bandwidth (None: pooled mean squared
/// distance, no gradient through it).
pub fn mmd_fused(x: &Tensor, y: &Tensor, bw: Option<f64>) -> Result<Tensor> {
    let (n, dim) = x.dims2()?;
    let (m, dim_y) = y.dims2()?;
    ensure!(n > 0 && m > 0, "MMD needs at least one element per side");
    ensure!(dim == dim_y, "MMD: rows of width {dim} and {dim_y}");
    let mut z: Vec<f32> = x.detach().flatten_all()?.to_vec1()?;
    z.extend(y.detach().flatten_all()?.to_vec1::<f32>()?);
    let total = n + m;
    let bw = bw.unwrap_or_else(|| closed_form_bandwidth(&z, total, dim));
    let (value, grad) = sweep_all(&z, n, m, dim, bw);
    let gy = grad[n * dim..].to_vec();
    let mut gx = grad;
    gx.truncate(n * dim);
    scalar_with_grads(x, y, value as f32, gx, gy)
}

/// Value and gradient `[N, D]` of the estimate on the pooled rows `z`.
fn sweep_all(z: &[f32], n: usize, m: usize, dim: usize, bw: f64) -> (f64, Vec<f32>) {
    let total = n + m;
    let zt = transpose(z, total, dim);
    let norms: Vec<f32> = z
        .chunks(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    let ctx = Sweep {
        z,
        zt: &zt,
        norms: &norms,
        n,
        total,
        dim,
        m4: (1.0 / (4.0 * bw)) as f32,
        w: [
            1.0 / (n * n) as f64,
            1.0 / (m * m) as f64,
            -1.0 / (n * m) as f64,
        ],
    };
    let mut grad = vec![0f32; total * dim];
    let mut values = vec![0f64; total.div_ceil(ROWS_PER_TASK)];
    let items: Vec<_> = grad
        .chunks_mut(ROWS_PER_TASK * dim)
        .zip(values.iter_mut())
        .enumerate()
        .collect();
    let level = simd::current();
    let use_gemm = gemm::preferred(level);
    for_each_task(get_num_threads(), items, |(t, (g, v))| {
        let first = t * ROWS_PER_TASK;
        if !use_gemm {
            *v = simd_dispatch!(level, builds, rows(&ctx, first, g));
            return;
        }
        // The products as GEMMs over a block of rows: `z_i·z_j`, then `Σ_j G_ij z_j`.
        let r = g.len() / dim;
        let zb = &z[first * dim..(first + r) * dim];
        // On this thread: the tasks already spread over the threads, and a nested split
        // of 16 rows over them would only shrink the GEMM tiles.
        let mut dots = gemm::matmul_serial(level, zb, &zt, r, dim, total);
        let mut gsums = vec![0f32; r];
        *v = simd_dispatch!(
            level,
            builds,
            rows_from_dots(&ctx, first, &mut dots, &mut gsums)
        );
        let cross = gemm::matmul_serial(level, &dots, z, r, total, dim);
        for (rr, (gr, gsum)) in g.chunks_mut(dim).zip(&gsums).enumerate() {
            let zi = &zb[rr * dim..(rr + 1) * dim];
            for ((gc, zc), x) in gr.iter_mut().zip(zi).zip(&cross[rr * dim..]) {
                *gc = 4.0 * (gsum * zc - x);
            }
        }
    });
    (values.iter().sum(), grad)
}

struct Sweep<'a> {
    z: &'a [f32],
    zt: &'a [f32],
    norms: &'a [f32],
    n: usize,
    total: usize,
    dim: usize,
    /// `1 / (4 bw)`.
    m4: f32,
    /// Pair weights: inside x, inside y, across.
    w: [f64; 3],
}

/// [`rows`] in each SIMD build (see [`crate::kernels::simd`]).
mod builds {
    use super::Sweep;

    crate::kernels::simd::simd_builds!(avx2, avx512; {
        /// [`super::super::rows`] in this build.
        pub fn rows(s: &Sweep, first: usize, grad: &mut [f32]) -> f64 {
            super::super::rows(s, first, grad)
        }

        /// [`super::super::rows_from_dots`] in this build.
        pub fn rows_from_dots(s: &Sweep, first: usize, dots: &mut [f32], gsums: &mut [f32]) -> f64 {
            super::super::rows_from_dots(s, first, dots, gsums)
        }
    });

    /// The portable build.
    #[inline(always)]
    pub fn rows<const F: bool>(s: &Sweep, first: usize, grad: &mut [f32]) -> f64 {
        super::rows(s, first, grad)
    }

    /// The portable build.
    #[inline(always)]
    pub fn rows_from_dots<const F: bool>(
        s: &Sweep,
        first: usize,
        dots: &mut [f32],
        gsums: &mut [f32],
    ) -> f64 {
        super::rows_from_dots(s, first, dots, gsums)
    }
}

/// Rows `first..first + grad.len() / D` of the sweep; returns their share of the value.
#[inline(always)]
fn rows(s: &Sweep, first: usize, grad: &mut [f32]) -> f64 {
    let (total, dim) = (s.total, s.dim);
    let mut dist = vec![0f32; total];
    let mut kval = vec![0f32; total];
    let mut value = 0f64;
    for (r, g) in grad.chunks_mut(dim).enumerate() {
        let i = first + r;
        let zi = &s.z[i * dim..(i + 1) * dim];
        // d_ij = |z_i|² + |z_j|² − 2 z_i·z_j, clamped at 0.
        for (d, &nj) in dist.iter_mut().zip(s.norms) {
            *d = s.norms[i] + nj;
        }
        for (c, &zc) in zi.iter().enumerate() {
            let a = -2.0 * zc;
            for (d, &zj) in dist.iter_mut().zip(&s.zt[c * total..(c + 1) * total]) {
                *d += a * zj;
            }
        }
        let (v, gsum) = pair_row(s, i, &mut dist, &mut kval);
        value += v;
        for (c, gc) in g.iter_mut().enumerate() {
            let cross = dot(&dist, &s.zt[c * total..(c + 1) * total]);
            *gc = 4.0 * (gsum * zi[c] - cross);
        }
    }
    value
}

/// [`rows`] with the products from GEMMs: `dots` `[r, N]` holds `z_i·z_j` of rows
/// `first..first + r` on entry and their coefficients `G_ij` on return; `gsums` `[r]`
/// gets `Σ_j G_ij`. Returns the rows' share of the value.
#[inline(always)]
fn rows_from_dots(s: &Sweep, first: usize, dots: &mut [f32], gsums: &mut [f32]) -> f64 {
    let total = s.total;
    let mut kval = vec![0f32; total];
    let mut value = 0f64;
    for (r, (dist, gs)) in dots.chunks_mut(total).zip(gsums.iter_mut()).enumerate() {
        let i = first + r;
        for (d, &nj) in dist.iter_mut().zip(s.norms) {
            *d = (s.norms[i] + nj) - 2.0 * *d;
        }
        let (v, gsum) = pair_row(s, i, dist, &mut kval);
        value += v;
        *gs = gsum;
    }
    value
}

/// One row `i` of pairs from its distances `dist` (unclamped): returns its share of the
/// value and `Σ_j G_ij`, and leaves `G_ij = w_ij K'(d_ij)` in `dist` (`kval` scratch).
#[inline(always)]
fn pair_row(s: &Sweep, i: usize, dist: &mut [f32], kval: &mut [f32]) -> (f64, f32) {
    let n = s.n;
    // K and the coefficient K'(d_ij) (in place of the distance), clamped at 0.
    for (d, k) in dist.iter_mut().zip(kval.iter_mut()) {
        let clamped = *d <= 0.0;
        let dd = if clamped { 0.0 } else { *d };
        let k4 = exp_approx(-dd * s.m4);
        let k3 = k4 * k4;
        let k2 = k3 * k3;
        let k1 = k2 * k2;
        let k0 = k1 * k1;
        *k = (((k0 + k1) + k2) + k3) + k4;
        let dk = -s.m4 * (16.0 * k0 + 8.0 * k1 + 4.0 * k2 + 2.0 * k3 + k4);
        *d = if clamped { 0.0 } else { dk };
    }
    let (w_same, w_cross) = if i < n {
        (s.w[0], s.w[2])
    } else {
        (s.w[1], s.w[2])
    };
    let (sx, sy) = (sum(&kval[..n]) as f64, sum(&kval[n..]) as f64);
    let (gx, gy) = (sum(&dist[..n]), sum(&dist[n..]));
    let value = if i < n {
        w_same * sx + w_cross * sy
    } else {
        w_cross * sx + w_same * sy
    };
    // Scale the coefficients by the pair weights: G_ij = w_ij K'(d_ij).
    let (wx, wy) = if i < n {
        (w_same as f32, w_cross as f32)
    } else {
        (w_cross as f32, w_same as f32)
    };
    for d in dist[..n].iter_mut() {
        *d *= wx;
    }
    for d in dist[n..].iter_mut() {
        *d *= wy;
    }
    (value, wx * gx + wy * gy)
}

/// `Σ a_j` in 16 lanes.
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let mut c = a.chunks_exact(L);
    for x in c.by_ref() {
        for l in 0..L {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + c.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests;
