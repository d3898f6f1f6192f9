//! LayerNorm as one op keeping only its output, bit-identical to candle's composed ops
//! (the same row sums in the same order), with its row loops compiled per SIMD build.

use super::bias::{applies, col_dot, col_sums, f32_slice, vec_of};
use super::par::{fill_rows, for_chunks2, threads_for};
use super::pointwise::with_f32;
use super::simd::{self, simd_dispatch};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// candle's f32 row sum (`VecOps::vec_reduce_sum`, its AVX `vec_sum`) with the same f32
/// additions in the same order, so it can be inlined: 32-element steps into four 8-lane
/// sums, those reduced pairwise (`0+1`, `2+3`, then together), the 8 lanes by halves and
/// two horizontal adds, then the tail one by one.
#[inline(always)]
pub(super) fn candle_row_sum(x: &[f32]) -> f32 {
    let np = x.len() & !31;
    let mut acc = [[0f32; 8]; 4];
    for step in x[..np].chunks_exact(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            for l in 0..8 {
                a[l] += step[8 * j + l];
            }
        }
    }
    let mut s01 = [0f32; 8];
    let mut s23 = [0f32; 8];
    for l in 0..8 {
        s01[l] = acc[0][l] + acc[1][l];
        s23[l] = acc[2][l] + acc[3][l];
    }
    let mut s = [0f32; 8];
    for l in 0..8 {
        s[l] = s01[l] + s23[l];
    }
    let t: [f32; 4] = std::array::from_fn(|l| s[l] + s[l + 4]);
    let mut y = (t[0] + t[1]) + (t[2] + t[3]);
    for v in &x[np..] {
        y += *v;
    }
    y
}

/// Row statistics of LayerNorm, computed exactly as the composed graph of
/// the model's `LayerNorm` does on the CPU: candle's row sum ([`candle_row_sum`]),
/// `mean_keepdim`'s affine `sum · (1/E) + 0`, `x − mean`, its square, the same mean, then
/// `var · 1 + eps` and `sqrt`. Writes `x − mean` into `xc` and returns the std.
#[inline(always)]
fn ln_row(x: &[f32], xc: &mut [f32], sq: &mut [f32], inv_n: f32, eps: f32) -> f32 {
    let mean = candle_row_sum(x) * inv_n + 0.0;
    for ((c, s), x) in xc.iter_mut().zip(sq.iter_mut()).zip(x) {
        *c = *x - mean;
        *s = *c * *c;
    }
    let var = candle_row_sum(sq) * inv_n + 0.0;
    (var * 1.0 + eps).sqrt()
}

/// candle's affine factors for LayerNorm over `e` features: `1/E` and `eps` as f32
/// (`T::from_f64`).
fn ln_consts(e: usize, eps: f64) -> (f32, f32) {
    ((1f64 / e as f64) as f32, eps as f32)
}

/// The LayerNorm row loops, compiled portable and with AVX2 / AVX-512 (see
/// [`super::simd`]): the same f32 operations in every build (no FMA contraction), so
/// the values do not depend on the build.
mod ln_kernels {
    use super::ln_row;

    /// Rows of `x` (`w.len()` features each) normalised into `out`: `(x − mean) / std · w + b`.
    #[inline(always)]
    pub fn forward<const F: bool>(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], k: (f32, f32)) {
        let e = w.len();
        let (mut xc, mut sq) = (vec![0f32; e], vec![0f32; e]);
        for (o, xr) in out.chunks_exact_mut(e).zip(x.chunks_exact(e)) {
            let std = ln_row(xr, &mut xc, &mut sq, k.0, k.1);
            for (((o, xc), w), b) in o.iter_mut().zip(&xc).zip(w).zip(b) {
                *o = (*xc / std) * *w + *b;
            }
        }
    }

    /// LayerNorm's input gradient on rows: `dx = (g' − mean(g') − x̂ mean(g' x̂)) / std`
    /// with `g' = g ⊙ w` and its row sums in f64 (eight partial sums); the normalised
    /// rows go to `xn` (`dw` needs them). With `dw` given, `dw += g ⊙ x̂` row by row.
    #[inline(always)]
    pub fn backward<const F: bool>(
        x: &[f32],
        g: &[f32],
        w: &[f32],
        k: (f32, f32),
        dx: &mut [f32],
        xn: &mut [f32],
        mut dw: Option<&mut [f32]>,
    ) {
        let e = w.len();
        let (mut xc, mut sq, mut gw) = (vec![0f32; e], vec![0f32; e], vec![0f32; e]);
        let rows = dx
            .chunks_exact_mut(e)
            .zip(g.chunks_exact(e))
            .zip(x.chunks_exact(e));
        // One normalised row at a time when `xn` is a single row (the serial path).
        let per_row = xn.len() == e;
        for (r, ((dxr, gr), xr)) in rows.enumerate() {
            let xn = if per_row {
                &mut xn[..]
            } else {
                &mut xn[r * e..(r + 1) * e]
            };
            let std = ln_row(xr, &mut xc, &mut sq, k.0, k.1);
            let (mut a1, mut a2) = ([0f64; 8], [0f64; 8]);
            for (((xn, gw), (xc, g)), w) in xn
                .iter_mut()
                .zip(gw.iter_mut())
                .zip(xc.iter().zip(gr))
                .zip(w)
            {
                *xn = *xc / std;
                *gw = *g * *w;
            }
            let (mut cg, mut cx) = (gw.chunks_exact(8), xn.chunks_exact(8));
            for (g8, x8) in cg.by_ref().zip(cx.by_ref()) {
                for l in 0..8 {
                    a1[l] += g8[l] as f64;
                    a2[l] += g8[l] as f64 * x8[l] as f64;
                }
            }
            for (l, (g, x)) in cg.remainder().iter().zip(cx.remainder()).enumerate() {
                a1[l] += *g as f64;
                a2[l] += *g as f64 * *x as f64;
            }
            if let Some(dw) = dw.as_deref_mut() {
                for ((dw, g), xn) in dw.iter_mut().zip(gr).zip(xn.iter()) {
                    *dw += *g * *xn;
                }
            }
            let (s1, s2): (f64, f64) = (a1.iter().sum(), a2.iter().sum());
            let (m1, m2) = (s1 / e as f64, s2 / e as f64);
            let rstd = 1.0 / std as f64;
            for ((dx, gw), xn) in dxr.iter_mut().zip(&gw).zip(xn.iter()) {
                *dx = ((*gw as f64 - m1 - *xn as f64 * m2) * rstd) as f32;
            }
        }
    }

    crate::kernels::simd::simd_builds!(avx2, avx512; {
        /// [`super::forward`] in this build.
        pub fn forward(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], k: (f32, f32)) {
            super::forward::<true>(x, out, w, b, k)
        }

        /// [`super::backward`] in this build.
        pub fn backward(
            x: &[f32],
            g: &[f32],
            w: &[f32],
            k: (f32, f32),
            dx: &mut [f32],
            xn: &mut [f32],
            dw: Option<&mut [f32]>,
        ) {
            super::backward::<true>(x, g, w, k, dx, xn, dw)
        }
    });
}

/// LayerNorm of the rows of `x` (`w.len()` features each), bit-identical to the composed
/// ops: `(x − mean) / std · w + b`.
pub(super) fn ln_forward_rows(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
    let e = w.len();
    let k = ln_consts(e, eps);
    if e == 0 {
        return vec![0f32; x.len()];
    }
    let level = simd::current();
    fill_rows(x.len(), e, |r0, out| {
        let x = &x[r0 * e..r0 * e + out.len()];
        simd_dispatch!(level, ln_kernels, forward(x, out, w, b, k))
    })
}

/// LayerNorm's backward on rows: `(dx, dw, db)` from the input rows `x` and the output
/// gradient `g`. `dw`, `db` are formed exactly as ScaleShift's backward (the normalised
/// rows bit-identical to the forward's), `dx` = `(g' − mean(g') − x̂ mean(g' x̂)) / std`
/// with `g' = g ⊙ w`, its row sums in f64.
pub(super) fn ln_backward_rows(
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let e = w.len();
    let k = ln_consts(e, eps);
    let mut dx = vec![0f32; x.len()];
    if e == 0 {
        return (dx, vec![], vec![]);
    }
    let level = simd::current();
    let threads = threads_for(x.len());
    if threads <= 1 {
        // One pass, `dw` accumulated row by row (the same sums as the split path's).
        let mut dw = vec![0f32; e];
        let mut xn = vec![0f32; e];
        simd_dispatch!(
            level,
            ln_kernels,
            backward(x, g, w, k, &mut dx, &mut xn, Some(&mut dw))
        );
        return (dx, dw, col_sums(g, e));
    }
    // Row-wise: `dx` and the normalised rows `x̂` (kept for `dw`), one chunk of rows per
    // thread.
    let mut xn = vec![0f32; x.len()];
    for_chunks2(threads, &mut dx, e, &mut xn, e, |r0, dx, xn| {
        let (x, g) = (&x[r0 * e..r0 * e + dx.len()], &g[r0 * e..r0 * e + dx.len()]);
        simd_dispatch!(level, ln_kernels, backward(x, g, w, k, dx, xn, None))
    });
    // `dw[c] += g[r, c] · x̂[r, c]` over the rows in order, split over columns.
    let dw = col_dot(g, &xn, e);
    (dx, dw, col_sums(g, e))
}

/// LayerNorm over the last axis (biased variance, affine) keeping only its output: the
/// backward recomputes the row statistics from the input.
struct LayerNormOp {
    eps: f64,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "mica-layer-norm"
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
        let (Some(x), Some(w), Some(b)) = (f32_slice(s1, l1), f32_slice(s2, l2), f32_slice(s3, l3))
        else {
            candle_core::bail!("layer norm: contiguous f32 inputs expected")
        };
        let out = ln_forward_rows(x, w, b, self.eps);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let wv = vec_of(w)?;
        let (dx, dw, db) = with_f32(grad, |g| {
            with_f32(x, |xv| Ok(ln_backward_rows(xv, g, &wv, self.eps)))
        })?;
        let dev = x.device();
        Ok((
            x.track_op()
                .then(|| Tensor::from_vec(dx, x.shape(), dev))
                .transpose()?,
            w.track_op()
                .then(|| Tensor::from_vec(dw, w.shape(), dev))
                .transpose()?,
            b.track_op()
                .then(|| Tensor::from_vec(db, b.shape(), dev))
                .transpose()?,
        ))
    }
}

/// LayerNorm of `x` `[..., E]` with weight `w` and bias `b` `[E]` as one op keeping only its
/// output (f32 CPU tensors); the forward values are bit-identical to the composed ops of
/// the model's `LayerNorm::forward`. `None` when the op does not apply.
pub fn layer_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    if !applies(x, &[w, b]) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps },
    )?))
}
