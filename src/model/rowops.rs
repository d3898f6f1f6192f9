//! Per-feature bias and scale ops with a fast backward.
//!
//! Composed candle ops express `y + b` and `x ⊙ w + b` (per-feature `w`, `b` over the last
//! axis) as broadcasts; their backward sums the gradient over every leading axis, which
//! candle's CPU backend does element by element with two integer divisions each (its
//! fast path covers only reductions over the LAST axes). At the bench shape that was
//! ~12 % of a training step. These ops compute exactly the same values, in the same
//! order (rows summed one after the other, products formed the same way), so results
//! are bit-identical to the composed ops; only the column sums are done row-wise.

use super::fused::FusedDropout;
use super::gemm;
use super::par::{col_reduce, fill, fill_rows, for_chunks, for_chunks2, threads_for};
use super::pointwise::{mask_blocks, with_f32};
use super::simd::{self, simd_dispatch, Simd};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Option<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Some(&v[a..b]),
        _ => None,
    }
}

fn vec_of(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Column sums of a row-major `[rows, e]` buffer, rows added in order (split over
/// columns for large buffers: each column's order unchanged).
fn col_sums(g: &[f32], e: usize) -> Vec<f32> {
    if e == 0 {
        return vec![];
    }
    col_reduce(g.len(), e, |c0, acc| {
        let c1 = c0 + acc.len();
        for row in g.chunks_exact(e) {
            for (a, x) in acc.iter_mut().zip(&row[c0..c1]) {
                *a += *x;
            }
        }
    })
}

/// Column sums of the products `a ⊙ b` of two row-major `[rows, e]` buffers, rows added
/// in order: `acc[c] += a[r, c] · b[r, c]` (split over columns for large buffers).
fn col_dot(a: &[f32], b: &[f32], e: usize) -> Vec<f32> {
    if e == 0 {
        return vec![];
    }
    col_reduce(a.len(), e, |c0, acc| {
        let c1 = c0 + acc.len();
        for (ar, br) in a.chunks_exact(e).zip(b.chunks_exact(e)) {
            for ((s, x), y) in acc.iter_mut().zip(&ar[c0..c1]).zip(&br[c0..c1]) {
                *s += *x * *y;
            }
        }
    })
}

/// True when the fast op applies: f32 on the CPU, `p` a vector as long as `x`'s last axis.
fn applies(x: &Tensor, params: &[&Tensor]) -> bool {
    let e = x.dims().last().copied().unwrap_or(0);
    x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && params
            .iter()
            .all(|p| p.dims() == [e] && p.dtype() == candle_core::DType::F32)
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "mica-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some(y), Some(b)) = (f32_slice(s1, l1), f32_slice(s2, l2)) else {
            candle_core::bail!("bias add: contiguous f32 inputs expected")
        };
        let e = b.len();
        if e == 0 {
            return Ok((CpuStorage::F32(y.to_vec()), l1.shape().clone()));
        }
        let out = fill_rows(y.len(), e, |r0, o| {
            let y = &y[r0 * e..r0 * e + o.len()];
            for (o, y) in o.chunks_exact_mut(e).zip(y.chunks_exact(e)) {
                for c in 0..e {
                    o[c] = y[c] + b[c];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = vec_of(grad)?;
        let db = Tensor::from_vec(col_sums(&g, b.dim(0)?), b.shape(), b.device())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

struct ScaleShift;

impl CustomOp3 for ScaleShift {
    fn name(&self) -> &'static str {
        "mica-scale-shift"
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
            candle_core::bail!("scale-shift: contiguous f32 inputs expected")
        };
        let e = w.len();
        if e == 0 {
            return Ok((CpuStorage::F32(vec![]), l1.shape().clone()));
        }
        let out = fill_rows(x.len(), e, |r0, o| {
            let x = &x[r0 * e..r0 * e + o.len()];
            for (o, x) in o.chunks_exact_mut(e).zip(x.chunks_exact(e)) {
                for c in 0..e {
                    o[c] = x[c] * w[c] + b[c];
                }
            }
        });
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
        let e = w.dim(0)?;
        let g = vec_of(grad)?;
        let xv = vec_of(x)?;
        let wv = vec_of(w)?;
        let dx = if e == 0 {
            vec![]
        } else {
            fill_rows(g.len(), e, |r0, dx| {
                let g = &g[r0 * e..r0 * e + dx.len()];
                for (dxr, gr) in dx.chunks_exact_mut(e).zip(g.chunks_exact(e)) {
                    for c in 0..e {
                        dxr[c] = gr[c] * wv[c];
                    }
                }
            })
        };
        let dw = col_dot(&g, &xv, e);
        let db = col_sums(&g, e);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

/// Where a fused linear reads its input rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinearIn {
    /// `x` is `[rows, in]`.
    Rows,
    /// `x` is the fused attention's packed output `[B, h, T, hd + 1]`
    /// ([`super::fused::fused_attention_packed`]): the input rows are its heads merged,
    /// row `(b, t)` = `[x[b, 0, t, ..hd], .., x[b, h−1, t, ..hd]]`, exactly what
    /// `x.narrow(3, 0, hd).transpose(1, 2).contiguous().reshape((B·T, h·hd))` holds.
    MergeHeads,
}

/// How a fused linear lays out its output.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LinearOut {
    /// `[rows, out]`.
    Rows,
    /// Split into heads, `[B, h, T, out/h]` with `rows = B·T`, each value first multiplied
    /// by `scale` as candle's `y * scale` does (`v · s + 0`), when given: the layout of
    /// `(y * scale).reshape((B, T, h, hd)).transpose(1, 2).contiguous()`.
    Heads {
        batch: usize,
        heads: usize,
        scale: Option<f32>,
    },
}

/// `x Wᵀ + b` with `W` `[out, in]`, `b` `[out]`, keeping only the output, optionally
/// followed by `dropout(relu(·))` and with its input / output in the attention's head
/// layouts ([`LinearIn`], [`LinearOut`]).
///
/// The forward forms `x Wᵀ`, then adds the bias in place (and the epilogue, scale,
/// permutation, each with the f32 operations of the composed ops). The backward forms the
/// products of candle's matmul backward (`dx = dy W`, `dW = dyᵀ x`, `db` column sums) on
/// the same incoming gradient. With AVX-512 the three products come from mica's GEMM
/// ([`super::gemm`]), which sums each element in its own order: values and gradients agree
/// with the composed ops to f32 rounding (tested within 1e-6 of the largest value), not bit
/// for bit. Without AVX-512 they come from candle's matmul on the layouts the composed ops
/// use, and match them bit for bit. Either way the results do not depend on the thread
/// count. ReLU's mask comes from the output (`out > 0` iff the pre-activation is positive
/// wherever the dropout keeps it), dropout's from its generator.
#[derive(Debug, Clone, Copy)]
struct LinearBias {
    input: LinearIn,
    out: LinearOut,
    relu: bool,
    drop: Option<FusedDropout>,
    /// A LayerNorm (this eps) applied to the input rows first: the third input is then
    /// `[ln_w, ln_b, b]` (`2·in + out` values). The normalised rows are never kept: the
    /// backward recomputes them, bit-identical to [`LayerNormOp`]'s output.
    ln: Option<f64>,
}

/// `(B, h, T, hd)` of a packed attention output `[B, h, T, hd + 1]`.
fn packed_dims(shape: &Shape) -> candle_core::Result<(usize, usize, usize, usize)> {
    let (b, h, t, hd1) = shape.dims4()?;
    if hd1 == 0 {
        candle_core::bail!("linear: empty packed attention output")
    }
    Ok((b, h, t, hd1 - 1))
}

/// `dst.copy_from_slice(src)` for one head's few values: fixed-size moves for the usual
/// head widths instead of a `memcpy` call per head (the layout shuffles copy one head
/// at a time).
#[inline(always)]
fn copy_head(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = dst.try_into().unwrap();
        *d = src.try_into().unwrap();
    }
    match dst.len() {
        4 => fixed::<4>(dst, src),
        5 => fixed::<5>(dst, src),
        8 => fixed::<8>(dst, src),
        10 => fixed::<10>(dst, src),
        16 => fixed::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Heads of a packed `[B, h, T, hd + 1]` buffer merged into rows `[B·T, h·hd]`.
fn merge_heads(x: &[f32], (b, h, t, hd): (usize, usize, usize, usize)) -> Vec<f32> {
    let n = h * hd;
    if b * t * n == 0 {
        return vec![];
    }
    // Output row r = (bi, ti), one chunk of rows per thread.
    fill_rows(b * t * n, n, |r0, out| {
        for (r, row) in (r0..).zip(out.chunks_exact_mut(n)) {
            let (bi, ti) = (r / t, r % t);
            for hi in 0..h {
                let src = ((bi * h + hi) * t + ti) * (hd + 1);
                copy_head(&mut row[hi * hd..(hi + 1) * hd], &x[src..src + hd]);
            }
        }
    })
}

/// Rows `[B·T, h·hd]` scattered back to a packed `[B, h, T, hd + 1]` buffer (last column 0).
fn unmerge_heads(y: &[f32], (b, h, t, hd): (usize, usize, usize, usize)) -> Vec<f32> {
    let unit = t * (hd + 1);
    if b * h * unit == 0 {
        return vec![0f32; b * h * unit];
    }
    // Output block u = (bi, hi) `[T, hd + 1]`, one chunk of blocks per thread.
    fill_rows(b * h * unit, unit, |u0, out| {
        for (u, blk) in (u0..).zip(out.chunks_exact_mut(unit)) {
            let (bi, hi) = (u / h, u % h);
            for ti in 0..t {
                let dst = ti * (hd + 1);
                let src = (bi * t + ti) * h * hd + hi * hd;
                copy_head(&mut blk[dst..dst + hd], &y[src..src + hd]);
            }
        }
    })
}

impl LinearBias {
    fn plain() -> Self {
        LinearBias {
            input: LinearIn::Rows,
            out: LinearOut::Rows,
            relu: false,
            drop: None,
            ln: None,
        }
    }

    /// The input rows as a `[rows, in]` tensor (the packed heads merged, for `MergeHeads`).
    fn input_rows(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.input {
            LinearIn::Rows => Ok(x.clone()),
            LinearIn::MergeHeads => {
                let d = packed_dims(x.shape())?;
                let rows = with_f32(x, |v| Ok(merge_heads(v, d)))?;
                Tensor::from_vec(rows, (d.0 * d.2, d.1 * d.3), x.device())
            }
        }
    }
}

/// `x Wᵀ` `[m, n]` for `x` `[m, k]`, `W` `[n, k]` (any layouts), then
/// `epilogue(first_row, rows)` on blocks of its rows: mica's GEMM where it is
/// [`gemm::preferred`] and both operands are contiguous (the epilogue on each block while
/// it is in cache), else candle's CPU matmul (the epilogue in a second pass).
fn linear_forward(
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    (m, k, n): (usize, usize, usize),
    epilogue: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> candle_core::Result<Vec<f32>> {
    use candle_core::backend::BackendStorage;
    let level = simd::current();
    if gemm::preferred(level) {
        if let (Some(x), Some(w)) = (f32_slice(xs, xl), f32_slice(ws, wl)) {
            return Ok(gemm::matmul_bt_then(level, x, w, (m, k, n), epilogue));
        }
    }
    let CpuStorage::F32(mut y) = xs.matmul(ws, (1, m, n, k), xl, &wl.transpose(0, 1)?)? else {
        candle_core::bail!("linear: f32 inputs expected")
    };
    if n > 0 {
        for_chunks(threads_for(y.len()), &mut y, n, epilogue);
    }
    Ok(y)
}

/// The input gradient `dy W` `[rows, in]` of `x Wᵀ` from `dy` `[rows, out]` and `W`
/// `[out, in]`: mica's GEMM at `level` where [`gemm::preferred`], else candle's matmul
/// (exactly the product of candle's matmul backward).
fn linear_dx(level: Simd, dy: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if !gemm::preferred(level) {
        return dy.matmul(&w.t()?.t()?);
    }
    let ((rows, n), k) = (dy.dims2()?, w.dim(1)?);
    let dx = with_f32(dy, |g| {
        with_f32(w, |w| Ok(gemm::matmul(level, g, w, rows, n, k)))
    })?;
    Tensor::from_vec(dx, (rows, k), dy.device())
}

/// The weight gradient `dyᵀ x` `[out, in]` of `x Wᵀ` from the input rows `x` `[rows, in]`
/// and `dy` `[rows, out]`: mica's GEMM at `level` where [`gemm::preferred`], else candle's
/// matmul (`(xᵀ dy)ᵀ`, the product of candle's matmul backward).
fn linear_dw(level: Simd, x: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
    if !gemm::preferred(level) {
        return x.t()?.matmul(dy)?.t();
    }
    let ((rows, n), k) = (dy.dims2()?, x.dim(1)?);
    let dw = with_f32(dy, |g| {
        with_f32(x, |x| Ok(gemm::matmul_at(level, g, x, rows, n, k)))
    })?;
    Tensor::from_vec(dw, (n, k), dy.device())
}

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "mica-linear"
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
        let merged;
        let (n, k) = l2.shape().dims2()?;
        let Some(p) = f32_slice(s3, l3) else {
            candle_core::bail!("linear: contiguous f32 bias expected")
        };
        let (xs, xl, b) = match (self.input, self.ln) {
            (LinearIn::Rows, None) => (s1, l1.clone(), p),
            (LinearIn::Rows, Some(eps)) => {
                let (Some(x), true) = (f32_slice(s1, l1), p.len() == 2 * k + n) else {
                    candle_core::bail!("linear: contiguous f32 x and [ln_w, ln_b, b] expected")
                };
                merged = CpuStorage::F32(ln_forward_rows(x, &p[..k], &p[k..2 * k], eps));
                (&merged, Layout::contiguous(l1.shape()), &p[2 * k..])
            }
            (LinearIn::MergeHeads, Some(_)) => {
                candle_core::bail!("linear: no LayerNorm on packed heads")
            }
            (LinearIn::MergeHeads, None) => {
                let Some(x) = f32_slice(s1, l1) else {
                    candle_core::bail!("linear: contiguous f32 packed heads expected")
                };
                let d = packed_dims(l1.shape())?;
                merged = CpuStorage::F32(merge_heads(x, d));
                (&merged, Layout::contiguous((d.0 * d.2, d.1 * d.3)), p)
            }
        };
        let (m, k2) = xl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: x {:?} and W {:?} do not fit", xl.dims(), l2.dims())
        }
        if b.len() != n {
            candle_core::bail!("linear: bias of length {n} expected")
        }
        let scale = match self.out {
            LinearOut::Rows => None,
            LinearOut::Heads {
                batch,
                heads,
                scale,
            } => {
                if batch == 0 || m % batch != 0 || heads == 0 || n % heads != 0 {
                    candle_core::bail!(
                        "linear: cannot split [{m}, {n}] into {batch} x {heads} heads"
                    )
                }
                scale
            }
        };
        // The epilogue on whole rows, each value through the composed ops' steps in order:
        // bias, ReLU, dropout, scale.
        let (relu, drop) = (self.relu, self.drop);
        let epilogue = |r0: usize, rows: &mut [f32]| {
            for row in rows.chunks_exact_mut(n) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += *b;
                }
            }
            if relu {
                // `x * [x > 0]`, as layers::relu.
                for v in rows.iter_mut() {
                    *v *= if *v > 0.0 { 1.0 } else { 0.0 };
                }
            }
            if let Some(d) = &drop {
                mask_blocks(d, r0 * n, rows.len(), |o0, m| {
                    for (v, m) in rows[o0..o0 + m.len()].iter_mut().zip(m) {
                        *v *= *m;
                    }
                });
            }
            if let Some(s) = scale {
                for v in rows.iter_mut() {
                    *v = *v * s + 0.0;
                }
            }
        };
        let y = linear_forward((xs, &xl), (s2, l2), (m, k, n), epilogue)?;
        match self.out {
            LinearOut::Rows => Ok((CpuStorage::F32(y), Shape::from((m, n)))),
            LinearOut::Heads { batch, heads, .. } => {
                let (t, hd) = (m / batch, n / heads);
                let unit = t * hd;
                if m * n == 0 {
                    return Ok((CpuStorage::F32(y), Shape::from((batch, heads, t, hd))));
                }
                // Output block u = (bi, hi) `[T, hd]`, one chunk of blocks per thread.
                let out = fill_rows(m * n, unit, |u0, out| {
                    for (u, blk) in (u0..).zip(out.chunks_exact_mut(unit)) {
                        let (bi, hi) = (u / heads, u % heads);
                        for ti in 0..t {
                            let src = (bi * t + ti) * n + hi * hd;
                            copy_head(&mut blk[ti * hd..(ti + 1) * hd], &y[src..src + hd]);
                        }
                    }
                });
                Ok((CpuStorage::F32(out), Shape::from((batch, heads, t, hd))))
            }
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = w.dim(0)?;
        // The gradient w.r.t. the rows `[rows, out]` after bias (and epilogue).
        let grad = match self.out {
            LinearOut::Rows => grad.clone(),
            LinearOut::Heads { scale, .. } => {
                let (bb, h, t, hd) = grad.dims4()?;
                let g = if bb * t * n == 0 {
                    vec![]
                } else {
                    with_f32(grad, |gv| {
                        // Row r = (bi, ti) gathered from the heads, one chunk of rows
                        // per thread.
                        Ok(fill_rows(bb * t * n, n, |r0, g| {
                            for (r, row) in (r0..).zip(g.chunks_exact_mut(n)) {
                                let (bi, ti) = (r / t, r % t);
                                for hi in 0..h {
                                    let src = ((bi * h + hi) * t + ti) * hd;
                                    copy_head(&mut row[hi * hd..(hi + 1) * hd], &gv[src..src + hd]);
                                }
                            }
                            if let Some(s) = scale {
                                // The backward of candle's affine: `g · s + 0`.
                                for v in g.iter_mut() {
                                    *v = *v * s + 0.0;
                                }
                            }
                        }))
                    })?
                };
                Tensor::from_vec(g, (bb * t, n), grad.device())?
            }
        };
        // Through the epilogue: `(g · m) · [out > 0]`, the composed ops' products.
        let grad = if self.relu || self.drop.is_some() {
            let g = with_f32(&grad, |g| {
                with_f32(res, |out| {
                    Ok(fill(g.len(), |i0, dst| {
                        let src = g[i0..i0 + dst.len()].iter().zip(&out[i0..]);
                        let relu = |v: f32, o: f32| {
                            if self.relu {
                                v * if o > 0.0 { 1.0 } else { 0.0 }
                            } else {
                                v
                            }
                        };
                        match &self.drop {
                            Some(dr) => {
                                let (g, out) = (&g[i0..i0 + dst.len()], &out[i0..i0 + dst.len()]);
                                mask_blocks(dr, i0, dst.len(), |o0, m| {
                                    let d = &mut dst[o0..o0 + m.len()];
                                    let src = g[o0..].iter().zip(&out[o0..]);
                                    for ((d, (g, o)), m) in d.iter_mut().zip(src).zip(m) {
                                        *d = relu(*g * *m, *o);
                                    }
                                });
                            }
                            None => {
                                for (d, (g, o)) in dst.iter_mut().zip(src) {
                                    *d = relu(*g, *o);
                                }
                            }
                        }
                    }))
                })
            })?;
            Tensor::from_vec(g, grad.shape(), grad.device())?
        } else {
            grad
        };
        // The products of candle's Matmul backward on `x.matmul(&W.t())`: `dx = dy W` and
        // `dW = dyᵀ x`. On detached operands: a product with a tracked `x` or `W` would
        // carry an op holding `dy`, and a weight's gradient (never detached by candle's
        // backward) would keep it alive to the end.
        let (x_in, w_in) = (x.detach(), w.detach());
        let k = w.dim(1)?;
        let level = simd::current();
        let ln = match self.ln {
            Some(eps) => Some((eps, vec_of(b)?)),
            None => None,
        };
        // The gradient w.r.t. the matmul's input rows, and with a LayerNorm, its backward.
        let mut ln_grads = None;
        let dx = if x.track_op() || (ln.is_some() && b.track_op()) {
            let dx = linear_dx(level, &grad, &w_in)?;
            match (&ln, self.input) {
                (Some((eps, p)), _) => {
                    let (dx, dlw, dlb) = with_f32(&dx, |g| {
                        with_f32(&x_in, |xv| Ok(ln_backward_rows(xv, g, &p[..k], *eps)))
                    })?;
                    ln_grads = Some((dlw, dlb));
                    Some(Tensor::from_vec(dx, x.shape(), x.device())?)
                }
                (None, LinearIn::Rows) => Some(dx),
                (None, LinearIn::MergeHeads) => {
                    let d = packed_dims(x.shape())?;
                    let v = with_f32(&dx, |v| Ok(unmerge_heads(v, d)))?;
                    Some(Tensor::from_vec(v, x.shape(), x.device())?)
                }
            }
        } else {
            None
        };
        let dx = dx.filter(|_| x.track_op());
        let dw = if w.track_op() {
            let rows = match &ln {
                Some((eps, p)) => {
                    let v = with_f32(&x_in, |xv| {
                        Ok(ln_forward_rows(xv, &p[..k], &p[k..2 * k], *eps))
                    })?;
                    Tensor::from_vec(v, x.shape(), x.device())?
                }
                None => self.input_rows(&x_in)?,
            };
            Some(linear_dw(level, &rows, &grad)?)
        } else {
            None
        };
        let db = if b.track_op() {
            let mut sums = with_f32(&grad, |g| Ok(col_sums(g, n)))?;
            if let Some((dlw, mut dlb)) = ln_grads {
                // `[d ln_w, d ln_b, db]`, the packed third input's gradient.
                let mut all = dlw;
                all.append(&mut dlb);
                all.append(&mut sums);
                sums = all;
            }
            Some(Tensor::from_vec(sums, b.shape(), b.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// True when the fused linear ops apply to `x` `[rows, in]` (2-D), `W`, `b`: f32 on the
/// CPU, `W` 2-D and `b` as long as `W` has rows.
pub fn linear_applies(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<bool> {
    Ok(x.rank() == 2
        && w.rank() == 2
        && b.dims() == [w.dim(0)?]
        && [x, w, b]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32))
}

/// `x Wᵀ + b` for `x` `[rows, in]` (2-D), `W` `[out, in]`, `b` `[out]`: the values and
/// gradients of `add_bias(&x.matmul(&W.t()?)?, b)` (to f32 rounding where mica's GEMM,
/// [`super::gemm`], forms the products: with AVX-512), keeping only the output on the CPU.
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if linear_applies(x, w, b)? {
        x.apply_op3(w, &b.contiguous()?, LinearBias::plain())
    } else {
        add_bias(&x.matmul(&w.t()?)?, b)
    }
}

/// `dropout(relu(x Wᵀ + b))` for 2-D `x` as one op keeping only its output (the FFN's
/// first layer); `drop` `None`: no dropout. The values and gradients of
/// `relu_dropout(linear_bias(x, W, b))`. Only where [`linear_applies`].
pub fn linear_relu_dropout(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    drop: Option<FusedDropout>,
) -> candle_core::Result<Tensor> {
    if !linear_applies(x, w, b)? {
        candle_core::bail!("fused linear: f32 CPU x [rows, in], W [out, in], b [out] expected")
    }
    let op = LinearBias {
        relu: true,
        drop,
        ..LinearBias::plain()
    };
    x.apply_op3(w, &b.contiguous()?, op)
}

/// `[ln_w, ln_b, b]`, the third input of a linear with a LayerNorm prologue, when the
/// LayerNorm's parameters fit `W` `[out, in]` (f32 CPU, `[in]` each).
fn ln_params(
    ln_w: &Tensor,
    ln_b: &Tensor,
    w: &Tensor,
    b: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let k = w.dim(1)?;
    if ln_w.dims() != [k] || ln_b.dims() != [k] || !crate::model::pointwise::applies(&[ln_w, ln_b])
    {
        return Ok(None);
    }
    Ok(Some(Tensor::cat(&[ln_w, ln_b, b], 0)?))
}

/// `dropout(relu(LN(x) Wᵀ + b))` for 2-D `x` as one op keeping only its output: the values
/// and gradients of `linear_relu_dropout(layer_norm(x, ln_w, ln_b, eps), W, b, drop)`
/// without the normalised rows. `None` when the op does not apply (then nothing is drawn
/// from `drop`).
#[allow(clippy::too_many_arguments)]
pub fn ln_linear_relu_dropout(
    x: &Tensor,
    ln_w: &Tensor,
    ln_b: &Tensor,
    eps: f64,
    w: &Tensor,
    b: &Tensor,
    drop: impl FnOnce() -> Option<FusedDropout>,
) -> candle_core::Result<Option<Tensor>> {
    if !linear_applies(x, w, b)? {
        return Ok(None);
    }
    let Some(params) = ln_params(ln_w, ln_b, w, b)? else {
        return Ok(None);
    };
    let op = LinearBias {
        relu: true,
        drop: drop(),
        ln: Some(eps),
        ..LinearBias::plain()
    };
    Ok(Some(x.contiguous()?.apply_op3(w, &params, op)?))
}

/// [`linear_bias_to_heads`] of `LN(x)` as one op: the values and gradients of
/// `linear_bias_to_heads(layer_norm(x, ln_w, ln_b, eps), ..)` without the normalised rows.
/// `None` when the op does not apply.
#[allow(clippy::too_many_arguments)]
pub fn ln_linear_to_heads(
    x: &Tensor,
    ln_w: &Tensor,
    ln_b: &Tensor,
    eps: f64,
    w: &Tensor,
    b: &Tensor,
    heads: usize,
    scale: Option<f64>,
) -> candle_core::Result<Option<Tensor>> {
    let (bb, t, din) = x.dims3()?;
    let x2 = x.reshape((bb * t, din))?;
    if !linear_applies(&x2, w, b)? || heads == 0 || w.dim(0)? % heads != 0 || bb == 0 {
        return Ok(None);
    }
    let Some(params) = ln_params(ln_w, ln_b, w, b)? else {
        return Ok(None);
    };
    let op = LinearBias {
        out: LinearOut::Heads {
            batch: bb,
            heads,
            scale: scale.map(|s| s as f32),
        },
        ln: Some(eps),
        ..LinearBias::plain()
    };
    Ok(Some(x2.contiguous()?.apply_op3(w, &params, op)?))
}

/// `x Wᵀ + b` for `x` `[B, T, in]`, split into `heads` heads `[B, h, T, out/h]` and
/// multiplied by `scale` (as `(y * scale)` does) when given: the values and gradients of
/// `(linear(x) * scale).reshape((B, T, h, hd)).transpose(1, 2).contiguous()` without its
/// intermediates. `None` when the op does not apply.
pub fn linear_bias_to_heads(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    heads: usize,
    scale: Option<f64>,
) -> candle_core::Result<Option<Tensor>> {
    let (bb, t, din) = x.dims3()?;
    let x2 = x.reshape((bb * t, din))?;
    if !linear_applies(&x2, w, b)? || heads == 0 || w.dim(0)? % heads != 0 || bb == 0 {
        return Ok(None);
    }
    let op = LinearBias {
        out: LinearOut::Heads {
            batch: bb,
            heads,
            scale: scale.map(|s| s as f32),
        },
        ..LinearBias::plain()
    };
    Ok(Some(x2.apply_op3(w, &b.contiguous()?, op)?))
}

/// `merge(packed) Wᵀ + b` where `packed` `[B, h, T, hd + 1]` is the fused attention's packed
/// output ([`super::fused::fused_attention_packed`]) and `merge` joins its heads into
/// `[B·T, h·hd]` rows: the values and gradients of
/// `linear(packed.narrow(3, 0, hd).transpose(1, 2).contiguous().reshape((B·T, h·hd)))`
/// without the merged copy (the backward merges again). Returns `[B·T, out]`; `None` when
/// the op does not apply.
pub fn linear_bias_from_heads(
    packed: &Tensor,
    w: &Tensor,
    b: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let (_, h, _, hd) = packed_dims(packed.shape())?;
    let fits = w.rank() == 2 && b.dims() == [w.dim(0)?] && w.dim(1)? == h * hd;
    if !(fits && crate::model::pointwise::applies(&[packed, w, b])) {
        return Ok(None);
    }
    let op = LinearBias {
        input: LinearIn::MergeHeads,
        ..LinearBias::plain()
    };
    Ok(Some(packed.contiguous()?.apply_op3(
        w,
        &b.contiguous()?,
        op,
    )?))
}

/// candle's f32 row sum (`VecOps::vec_reduce_sum`, its AVX `vec_sum`) with the same f32
/// additions in the same order, so it can be inlined: 32-element steps into four 8-lane
/// sums, those reduced pairwise (`0+1`, `2+3`, then together), the 8 lanes by halves and
/// two horizontal adds, then the tail one by one.
#[inline(always)]
fn candle_row_sum(x: &[f32]) -> f32 {
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
/// [`super::layers::LayerNorm`] does on the CPU: candle's row sum ([`candle_row_sum`]),
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

    macro_rules! builds {
        ($($module:ident: $features:literal),*) => {$(
            /// The row loops in this build.
            #[cfg(target_arch = "x86_64")]
            pub mod $module {
                /// [`super::forward`] in this build.
                #[target_feature(enable = $features)]
                pub fn forward(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], k: (f32, f32)) {
                    super::forward::<true>(x, out, w, b, k)
                }

                /// [`super::backward`] in this build.
                #[target_feature(enable = $features)]
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
            }
        )*};
    }
    builds!(
        avx2: "avx2,fma",
        avx512: "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"
    );
}

/// LayerNorm of the rows of `x` (`w.len()` features each), bit-identical to the composed
/// ops: `(x − mean) / std · w + b`.
fn ln_forward_rows(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
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
fn ln_backward_rows(x: &[f32], g: &[f32], w: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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
/// [`super::layers::LayerNorm::forward`]. `None` when the op does not apply.
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

/// `y + b` with `b` `[E]` broadcast over the leading axes of `y` `[..., E]`; the same values
/// (and gradients) as `y.broadcast_add(b)`, with a fast backward on the CPU.
pub fn add_bias(y: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if applies(y, &[b]) {
        y.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)
    } else {
        y.broadcast_add(b)
    }
}

/// `x ⊙ w + b` with `w`, `b` `[E]` broadcast over the leading axes of `x` `[..., E]`; the
/// same values (and gradients) as `x.broadcast_mul(w)?.broadcast_add(b)`, with a fast
/// backward on the CPU.
pub fn scale_shift(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if applies(x, &[w, b]) {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, ScaleShift)
    } else {
        x.broadcast_mul(w)?.broadcast_add(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use crate::model::pointwise::tests::{bits, rand_t, rand_var, vals};

    #[test]
    fn bias_add_is_bit_identical_to_broadcast_add() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for shape in [vec![7, 5], vec![3, 11, 6], vec![1, 1]] {
            let e = *shape.last().unwrap();
            let y = rand_var(&shape, &mut rng);
            let b = rand_var(&[e], &mut rng);
            let w = Tensor::from_vec(
                (0..y.elem_count())
                    .map(|_| rng.gen_range(-1.0f32..1.0))
                    .collect::<Vec<_>>(),
                shape.as_slice(),
                &Device::Cpu,
            )
            .unwrap();
            let run = |fast: bool| {
                let out = if fast {
                    add_bias(y.as_tensor(), b.as_tensor()).unwrap()
                } else {
                    y.as_tensor().broadcast_add(b.as_tensor()).unwrap()
                };
                let g = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
                (
                    bits(&out),
                    bits(g.get(y.as_tensor()).unwrap()),
                    bits(g.get(b.as_tensor()).unwrap()),
                )
            };
            assert_eq!(run(true), run(false), "shape {shape:?}");
        }
    }

    #[test]
    fn scale_shift_is_bit_identical_to_broadcast_mul_add() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for shape in [vec![9, 4], vec![2, 13, 10], vec![1, 3]] {
            let e = *shape.last().unwrap();
            let x = rand_var(&shape, &mut rng);
            let w = rand_var(&[e], &mut rng);
            let b = rand_var(&[e], &mut rng);
            let up = Tensor::from_vec(
                (0..x.elem_count())
                    .map(|_| rng.gen_range(-1.0f32..1.0))
                    .collect::<Vec<_>>(),
                shape.as_slice(),
                &Device::Cpu,
            )
            .unwrap();
            let run = |fast: bool| {
                // A non-trivial graph before the op (x²) so x's gradient is accumulated.
                let xin = x.as_tensor().sqr().unwrap();
                let out = if fast {
                    scale_shift(&xin, w.as_tensor(), b.as_tensor()).unwrap()
                } else {
                    xin.broadcast_mul(w.as_tensor())
                        .unwrap()
                        .broadcast_add(b.as_tensor())
                        .unwrap()
                };
                let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
                (
                    bits(&out),
                    bits(g.get(x.as_tensor()).unwrap()),
                    bits(g.get(w.as_tensor()).unwrap()),
                    bits(g.get(b.as_tensor()).unwrap()),
                )
            };
            assert_eq!(run(true), run(false), "shape {shape:?}");
        }
    }

    /// Largest |a − b| relative to the largest |b| (at least 1).
    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    /// Central finite differences of `f` at `entries` of `v` against `analytic`.
    fn check_fd(v: &Var, analytic: &[f32], entries: &[usize], f: impl Fn(&Tensor) -> f32) {
        crate::model::pointwise::tests::check_fd(v, analytic, entries, f, 2e-3)
    }

    /// Largest |a − b| relative to the largest |b|.
    fn rel_to_max(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b
            .iter()
            .fold(f64::MIN_POSITIVE, |m, x| m.max(x.abs() as f64));
        let err = a
            .iter()
            .zip(b)
            .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
        err / scale
    }

    /// Asserts that each of `got` is within `tol` of the same entry of `want`, relative to
    /// the largest |value| of `want` (the linear ops' GEMM sums in another order than
    /// candle's matmul: [`super::gemm`]).
    fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let d = rel_to_max(g, w);
            assert!(
                d <= tol,
                "{what}: value {i} differs by {d} (relative to max |value|)"
            );
        }
    }

    /// Output and gradients of `Σ (x² Wᵀ + b) ⊙ up` in f64 from the f32 values of `x`
    /// `[rows, din]`, `W` `[dout, din]`, `b`, `up` `[rows, dout]`: `[out, dx, dW, db]`
    /// rounded to f32.
    fn linear_exact(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        up: &[f32],
        (rows, din, dout): (usize, usize, usize),
    ) -> [Vec<f32>; 4] {
        let xin: Vec<f64> = x.iter().map(|v| (v * v) as f64).collect();
        let f = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (w, b, up) = (f(w), f(b), f(up));
        let (mut out, mut dx) = (vec![0f64; rows * dout], vec![0f64; rows * din]);
        let (mut dw, mut db) = (vec![0f64; dout * din], vec![0f64; dout]);
        for r in 0..rows {
            for o in 0..dout {
                let g = up[r * dout + o];
                out[r * dout + o] = b[o];
                db[o] += g;
                for c in 0..din {
                    out[r * dout + o] += xin[r * din + c] * w[o * din + c];
                    // d(x²)/dx = 2x.
                    dx[r * din + c] += g * w[o * din + c] * 2.0 * x[r * din + c] as f64;
                    dw[o * din + c] += g * xin[r * din + c];
                }
            }
        }
        [out, dx, dw, db].map(|v| v.iter().map(|&v| v as f32).collect())
    }

    /// `[out, dx, dW, db]` of `Σ linear(x², W, b) ⊙ up` for `W`, `b` the middle thirds of
    /// packed parameters `wp`, `bp` (MHA's in_proj: slices with offsets), by the fused op
    /// (`fast`) or by the composed `add_bias(x² · Wᵀ, b)`.
    fn linear_run(x: &Var, wp: &Var, bp: &Var, up: &Tensor, fast: bool) -> [Vec<f32>; 4] {
        let dout = up.dim(1).unwrap();
        let xin = x.as_tensor().sqr().unwrap();
        let w = wp.as_tensor().narrow(0, dout, dout).unwrap();
        let b = bp.as_tensor().narrow(0, dout, dout).unwrap();
        let out = if fast {
            linear_bias(&xin, &w, &b).unwrap()
        } else {
            add_bias(&xin.matmul(&w.t().unwrap()).unwrap(), &b).unwrap()
        };
        let g = (&out * up).unwrap().sum_all().unwrap().backward().unwrap();
        let middle = |v: &Var| {
            let g = g.get(v.as_tensor()).unwrap();
            vals(&g.narrow(0, dout, dout).unwrap())
        };
        [
            vals(&out),
            vals(g.get(x.as_tensor()).unwrap()),
            middle(wp),
            middle(bp),
        ]
    }

    #[test]
    fn linear_bias_matches_matmul_plus_bias_and_exact_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for rows in [1, 7, 33] {
            for din in [1, 5, 40, 41, 80, 160] {
                for dout in [1, 5, 40, 41, 80, 160] {
                    let x = rand_var(&[rows, din], &mut rng);
                    let wp = rand_var(&[3 * dout, din], &mut rng);
                    let bp = rand_var(&[3 * dout], &mut rng);
                    let up = rand_t(&[rows, dout], &mut rng);
                    let fast = linear_run(&x, &wp, &bp, &up, true);
                    let composed = linear_run(&x, &wp, &bp, &up, false);
                    let middle = |v: &Var| vals(&v.as_tensor().narrow(0, dout, dout).unwrap());
                    let exact = linear_exact(
                        &vals(x.as_tensor()),
                        &middle(&wp),
                        &middle(&bp),
                        &vals(&up),
                        (rows, din, dout),
                    );
                    let at = format!("rows {rows} in {din} out {dout}");
                    assert_close(&fast, &composed, 1e-6, &format!("{at}, vs composed"));
                    assert_close(&fast, &exact, 1e-6, &format!("{at}, vs f64"));
                }
            }
        }
    }

    #[test]
    fn linear_bias_is_bit_identical_to_matmul_plus_bias_below_avx512() {
        // Without AVX-512 the op forms its products with candle's matmul, on the layouts
        // the composed ops use: the same bits.
        use crate::model::simd::with_simd;
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for (rows, din, dout) in [(7, 5, 3), (40, 12, 48), (1, 1, 1), (33, 41, 40)] {
            let x = rand_var(&[rows, din], &mut rng);
            let wp = rand_var(&[3 * dout, din], &mut rng);
            let bp = rand_var(&[3 * dout], &mut rng);
            let up = rand_t(&[rows, dout], &mut rng);
            for level in [Simd::Portable, Simd::Avx2] {
                let fast = with_simd(level, || linear_run(&x, &wp, &bp, &up, true));
                let bits = |v: &[Vec<f32>; 4]| {
                    v.clone()
                        .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                };
                let composed = linear_run(&x, &wp, &bp, &up, false);
                assert_eq!(
                    bits(&fast),
                    bits(&composed),
                    "rows {rows} in {din} out {dout}"
                );
            }
        }
    }

    #[test]
    fn linear_bias_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // A tiny shape (every entry), and one with masked column tails and a row tail in
        // the GEMM's tiles (a spread of entries).
        for (rows, din, dout) in [(6, 4, 3), (9, 41, 40)] {
            let x = rand_var(&[rows, din], &mut rng);
            let w = rand_var(&[dout, din], &mut rng);
            let b = rand_var(&[dout], &mut rng);
            let up = rand_t(&[rows, dout], &mut rng);
            let loss = |x: &Tensor, w: &Tensor| {
                (linear_bias(x, w, b.as_tensor()).unwrap() * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let g = loss(x.as_tensor(), w.as_tensor()).backward().unwrap();
            let gx = vals(g.get(x.as_tensor()).unwrap());
            let gw = vals(g.get(w.as_tensor()).unwrap());
            let spread = |n: usize| {
                (0..n)
                    .step_by(n.div_ceil(24))
                    .chain([n - 1])
                    .collect::<Vec<_>>()
            };
            let f = |t: &Tensor| loss(t, w.as_tensor()).to_scalar::<f32>().unwrap();
            check_fd(&x, &gx, &spread(rows * din), f);
            let f = |t: &Tensor| loss(x.as_tensor(), t).to_scalar::<f32>().unwrap();
            check_fd(&w, &gw, &spread(dout * din), f);
        }
    }

    #[test]
    fn linear_relu_dropout_matches_the_composed_ops() {
        use crate::model::ctx::Ctx;
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (rows, din, dout) = (30, 8, 32);
        let x = rand_var(&[rows, din], &mut rng);
        let w = rand_var(&[dout, din], &mut rng);
        let mut bv = vals(rand_var(&[dout], &mut rng).as_tensor());
        // A zero weight row + zero bias: exact-zero pre-activations (ReLU gradient 0).
        bv[3] = 0.0;
        let b = Var::from_vec(bv, dout, &Device::Cpu).unwrap();
        let w = {
            let mut v = vals(w.as_tensor());
            v[3 * din..4 * din].fill(0.0);
            Var::from_vec(v, (dout, din), &Device::Cpu).unwrap()
        };
        let up = rand_t(&[rows, dout], &mut rng);
        for p in [0.0, 0.3] {
            let run = |fast: bool| {
                let ctx = Ctx::train(13);
                ctx.next_stream();
                let xin = x.as_tensor().sqr().unwrap();
                let out = if fast {
                    let d = ctx.dropout_active(p).then(|| ctx.next_dropout(p));
                    linear_relu_dropout(&xin, w.as_tensor(), b.as_tensor(), d).unwrap()
                } else {
                    let y = add_bias(
                        &xin.matmul(&w.as_tensor().t().unwrap()).unwrap(),
                        b.as_tensor(),
                    )
                    .unwrap();
                    let r = crate::model::layers::relu_composed(&y).unwrap();
                    let mask = ctx.dropout_mask(&[rows, dout], p, &Device::Cpu);
                    match ctx.dropout_active(p) {
                        true => r.mul(&mask.unwrap()).unwrap(),
                        false => r,
                    }
                };
                let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
                vec![
                    vals(&out),
                    vals(g.get(x.as_tensor()).unwrap()),
                    vals(g.get(w.as_tensor()).unwrap()),
                    vals(g.get(b.as_tensor()).unwrap()),
                ]
            };
            assert_close(&run(true), &run(false), 1e-6, &format!("p {p}"));
        }
    }

    #[test]
    fn linear_to_heads_is_bit_identical_to_split_heads() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (bb, t, e, h) = (3, 7, 12, 4);
        let x = rand_var(&[bb, t, e], &mut rng);
        let wp = rand_var(&[3 * e, e], &mut rng);
        let bp = rand_var(&[3 * e], &mut rng);
        let up = rand_t(&[bb, h, t, e / h], &mut rng);
        for scale in [None, Some(0.5f64.sqrt())] {
            let run = |fast: bool| {
                let xin = x.as_tensor().sqr().unwrap();
                let w = wp.as_tensor().narrow(0, e, e).unwrap();
                let b = bp.as_tensor().narrow(0, e, e).unwrap();
                let out = if fast {
                    linear_bias_to_heads(&xin, &w, &b, h, scale)
                        .unwrap()
                        .expect("applies")
                } else {
                    let y = crate::model::layers::linear(&xin, &w, Some(&b)).unwrap();
                    let y = match scale {
                        Some(s) => (y * s).unwrap(),
                        None => y,
                    };
                    y.reshape((bb, t, h, e / h))
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                };
                assert_eq!(out.dims(), [bb, h, t, e / h]);
                let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
                (
                    bits(&out),
                    vals(g.get(x.as_tensor()).unwrap()),
                    vals(g.get(wp.as_tensor()).unwrap()),
                    vals(g.get(bp.as_tensor()).unwrap()),
                )
            };
            assert_eq!(run(true), run(false), "scale {scale:?}");
        }
    }

    #[test]
    fn linear_from_packed_heads_is_bit_identical_to_merging_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (bb, h, t, hd, dout) = (2, 3, 5, 4, 7);
        let packed = rand_var(&[bb, h, t, hd + 1], &mut rng);
        let w = rand_var(&[dout, h * hd], &mut rng);
        let b = rand_var(&[dout], &mut rng);
        let up = rand_t(&[bb * t, dout], &mut rng);
        let run = |fast: bool| {
            let pin = packed.as_tensor().sqr().unwrap();
            let out = if fast {
                linear_bias_from_heads(&pin, w.as_tensor(), b.as_tensor())
                    .unwrap()
                    .expect("applies")
            } else {
                let merged = pin
                    .narrow(3, 0, hd)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .reshape((bb * t, h * hd))
                    .unwrap();
                crate::model::layers::linear(&merged, w.as_tensor(), Some(b.as_tensor())).unwrap()
            };
            let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (
                bits(&out),
                vals(g.get(packed.as_tensor()).unwrap()),
                vals(g.get(w.as_tensor()).unwrap()),
                vals(g.get(b.as_tensor()).unwrap()),
            )
        };
        let fast = run(true);
        assert_eq!(fast, run(false));
        // The log-sum-exp column gets no gradient.
        for (i, g) in fast.1.iter().enumerate() {
            if i % (hd + 1) == hd {
                assert_eq!(*g, 0.0);
            }
        }
    }

    #[test]
    fn head_layout_linears_match_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (bb, t, e, h) = (2, 3, 6, 2);
        let x = rand_var(&[bb, t, e], &mut rng);
        let w = rand_var(&[e, e], &mut rng);
        let b = rand_var(&[e], &mut rng);
        let w2 = rand_var(&[4, e], &mut rng);
        let b2 = rand_var(&[4], &mut rng);
        let up = rand_t(&[bb * t, 4], &mut rng);
        // heads → fake packed output (an lse column of zeros) → out-projection.
        let loss = |x: &Tensor| {
            let qh = linear_bias_to_heads(x, w.as_tensor(), b.as_tensor(), h, Some(0.7))
                .unwrap()
                .unwrap();
            let zeros = qh.narrow(3, 0, 1).unwrap().zeros_like().unwrap();
            let packed = Tensor::cat(&[&qh, &zeros], 3).unwrap();
            let y = linear_bias_from_heads(&packed, w2.as_tensor(), b2.as_tensor())
                .unwrap()
                .unwrap();
            (y * &up).unwrap().sum_all().unwrap()
        };
        let g = loss(x.as_tensor()).backward().unwrap();
        let gx = vals(g.get(x.as_tensor()).unwrap());
        let f = |t: &Tensor| loss(t).to_scalar::<f32>().unwrap();
        check_fd(&x, &gx, &(0..36).collect::<Vec<_>>(), f);
    }

    #[test]
    fn layer_norm_prologue_is_bit_identical_to_a_layer_norm_op_first() {
        use crate::model::ctx::Ctx;
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let (bb, t, e, h, dout) = (2, 6, 8, 2, 24);
        let x = rand_var(&[bb, t, e], &mut rng);
        let lw = rand_var(&[e], &mut rng);
        let lb = rand_var(&[e], &mut rng);
        let wp = rand_var(&[3 * e, e], &mut rng);
        let bp = rand_var(&[3 * e], &mut rng);
        let w1 = rand_var(&[dout, e], &mut rng);
        let b1 = rand_var(&[dout], &mut rng);
        let up_h = rand_t(&[bb, h, t, e / h], &mut rng);
        let up_f = rand_t(&[bb * t, dout], &mut rng);
        let run = |fast: bool| {
            let ctx = Ctx::train(5);
            let xin = x.as_tensor().sqr().unwrap();
            let (lwt, lbt) = (lw.as_tensor(), lb.as_tensor());
            let w = wp.as_tensor().narrow(0, e, e).unwrap();
            let b = bp.as_tensor().narrow(0, e, e).unwrap();
            let x2 = xin.reshape((bb * t, e)).unwrap();
            let (heads, ffn) = if fast {
                let heads = ln_linear_to_heads(&xin, lwt, lbt, 1e-5, &w, &b, h, Some(0.3))
                    .unwrap()
                    .expect("applies");
                let draw = || Some(ctx.next_dropout(0.25));
                let ffn = ln_linear_relu_dropout(
                    &x2,
                    lwt,
                    lbt,
                    1e-5,
                    w1.as_tensor(),
                    b1.as_tensor(),
                    draw,
                )
                .unwrap()
                .expect("applies");
                (heads, ffn)
            } else {
                let n = layer_norm(&xin, lwt, lbt, 1e-5).unwrap().unwrap();
                let heads = linear_bias_to_heads(&n, &w, &b, h, Some(0.3))
                    .unwrap()
                    .unwrap();
                // Its own LayerNorm: each fused op normalises for one consumer only.
                let n2 = layer_norm(&x2, lwt, lbt, 1e-5).unwrap().unwrap();
                let d = Some(ctx.next_dropout(0.25));
                let ffn = linear_relu_dropout(&n2, w1.as_tensor(), b1.as_tensor(), d).unwrap();
                (heads, ffn)
            };
            let loss = ((&heads * &up_h).unwrap().sum_all().unwrap()
                + (&ffn * &up_f).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            let mut all = vec![bits(&heads), bits(&ffn)];
            for v in [&x, &lw, &lb, &wp, &bp, &w1, &b1] {
                all.push(bits(g.get(v.as_tensor()).unwrap()));
            }
            all
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn layer_norm_prologue_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (bb, t, e, h) = (2, 3, 6, 3);
        let x = rand_var(&[bb, t, e], &mut rng);
        let lw = rand_var(&[e], &mut rng);
        let lb = rand_var(&[e], &mut rng);
        let w = rand_var(&[e, e], &mut rng);
        let b = rand_var(&[e], &mut rng);
        let up = rand_t(&[bb, h, t, e / h], &mut rng);
        let loss = |x: &Tensor, lw: &Tensor| {
            let y = ln_linear_to_heads(
                x,
                lw,
                lb.as_tensor(),
                1e-5,
                w.as_tensor(),
                b.as_tensor(),
                h,
                None,
            )
            .unwrap()
            .unwrap();
            (y * &up).unwrap().sum_all().unwrap()
        };
        let g = loss(x.as_tensor(), lw.as_tensor()).backward().unwrap();
        let gx = vals(g.get(x.as_tensor()).unwrap());
        let glw = vals(g.get(lw.as_tensor()).unwrap());
        let f = |t: &Tensor| loss(t, lw.as_tensor()).to_scalar::<f32>().unwrap();
        check_fd(&x, &gx, &(0..36).collect::<Vec<_>>(), f);
        let f = |t: &Tensor| loss(x.as_tensor(), t).to_scalar::<f32>().unwrap();
        check_fd(&lw, &glw, &(0..6).collect::<Vec<_>>(), f);
    }

    fn layer_norm_ref() -> (Var, Var, Var, Tensor, crate::model::layers::LayerNorm) {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let shape = [3, 9, 10];
        let mut v: Vec<f32> = vals(rand_var(&shape, &mut rng).as_tensor());
        // A constant row (variance 0) and an all-zero row (padding).
        for c in 0..10 {
            v[20 + c] = 0.75;
            v[50 + c] = 0.0;
        }
        let x = Var::from_vec(v, &shape[..], &Device::Cpu).unwrap();
        let w = rand_var(&[10], &mut rng);
        let b = rand_var(&[10], &mut rng);
        let up = rand_t(&shape, &mut rng);
        let ln = crate::model::layers::LayerNorm {
            weight: w.as_tensor().clone(),
            bias: b.as_tensor().clone(),
            eps: 1e-5,
        };
        (x, w, b, up, ln)
    }

    #[test]
    fn row_sum_is_candles_bit_for_bit() {
        use candle_core::cpu::kernels::VecOps;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in (0..100).chain([160, 320, 333]) {
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let mut want = 0f32;
            // SAFETY: `x` holds `n` values.
            unsafe { f32::vec_reduce_sum(x.as_ptr(), &mut want, n) };
            assert_eq!(candle_row_sum(&x).to_bits(), want.to_bits(), "length {n}");
        }
    }

    #[test]
    fn layer_norm_matches_the_composed_ops() {
        let (x, w, b, up, ln) = layer_norm_ref();
        let run = |fast: bool| {
            // A non-trivial graph before the op (x²) so x's gradient is accumulated.
            let xin = (x.as_tensor() * 0.5).unwrap().sqr().unwrap();
            let out = if fast {
                ln.forward(&xin).unwrap()
            } else {
                ln.forward_composed(&xin).unwrap()
            };
            let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (
                bits(&out),
                vals(g.get(x.as_tensor()).unwrap()),
                vals(g.get(w.as_tensor()).unwrap()),
                vals(g.get(b.as_tensor()).unwrap()),
            )
        };
        let (fo, fx, fw, fb) = run(true);
        let (so, sx, sw, sb) = run(false);
        assert_eq!(fo, so, "forward values");
        assert_eq!(fw, sw, "weight gradient");
        assert_eq!(fb, sb, "bias gradient");
        let d = rel_diff(&fx, &sx);
        assert!(d <= 1e-6, "input gradient differs by {d}");
    }

    #[test]
    fn layer_norm_gradient_matches_finite_differences() {
        let (x, w, _b, up, ln) = layer_norm_ref();
        let out = ln.forward(x.as_tensor()).unwrap();
        let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = vals(g.get(x.as_tensor()).unwrap());
        let gw = vals(g.get(w.as_tensor()).unwrap());
        let f = |t: &Tensor| {
            (ln.forward(t).unwrap() * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        check_fd(&x, &gx, &[0, 3, 11, 19, 37, 61, 99, 200, 269], f);
        let f = |t: &Tensor| {
            let ln2 = crate::model::layers::LayerNorm {
                weight: t.clone(),
                ..ln.clone()
            };
            (ln2.forward(x.as_tensor()).unwrap() * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        check_fd(&w, &gw, &(0..10).collect::<Vec<_>>(), f);
    }

    /// Every row op, forward and backward, on tensors large enough to split
    /// ([`super::super::par::MIN_SPLIT`]): bit-identical outputs and gradients on 1, 2 and
    /// 3 threads (3: uneven chunks).
    #[test]
    fn row_ops_are_bit_identical_on_any_thread_count() {
        use crate::model::par::{with_threads, MIN_SPLIT};
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let (bb, t, e, h, dout) = (4, 131, 128, 8, 160);
        assert!(bb * t * e >= MIN_SPLIT);
        let x = rand_var(&[bb, t, e], &mut rng);
        let lw = rand_var(&[e], &mut rng);
        let lb = rand_var(&[e], &mut rng);
        let w = rand_var(&[e, e], &mut rng);
        let b = rand_var(&[e], &mut rng);
        let w1 = rand_var(&[dout, e], &mut rng);
        let b1 = rand_var(&[dout], &mut rng);
        let up = rand_t(&[bb, t, e], &mut rng);
        let up_h = rand_t(&[bb, h, t, e / h], &mut rng);
        let up_f = rand_t(&[bb * t, dout], &mut rng);
        let run = |threads: usize| {
            with_threads(threads, || {
                let xin = x.as_tensor().sqr().unwrap();
                let x2 = xin.reshape((bb * t, e)).unwrap();
                let (lwt, lbt) = (lw.as_tensor(), lb.as_tensor());
                let ln = layer_norm(&xin, lwt, lbt, 1e-5).unwrap().unwrap();
                let biased = add_bias(&xin, b.as_tensor()).unwrap();
                let ss = scale_shift(&xin, lwt, lbt).unwrap();
                let heads = ln_linear_to_heads(
                    &xin,
                    lwt,
                    lbt,
                    1e-5,
                    w.as_tensor(),
                    b.as_tensor(),
                    h,
                    Some(0.3),
                )
                .unwrap()
                .unwrap();
                let drop = Some(FusedDropout::new(3, 1, 0.25));
                let ffn = ln_linear_relu_dropout(
                    &x2,
                    lwt,
                    lbt,
                    1e-5,
                    w1.as_tensor(),
                    b1.as_tensor(),
                    || drop,
                )
                .unwrap()
                .unwrap();
                // Heads packed with a zero log-sum-exp column, projected back to rows.
                let zeros = heads.narrow(3, 0, 1).unwrap().zeros_like().unwrap();
                let packed = Tensor::cat(&[&heads, &zeros], 3).unwrap();
                let merged = linear_bias_from_heads(&packed, w.as_tensor(), b.as_tensor())
                    .unwrap()
                    .unwrap();
                let rows = ((ln + biased).unwrap() + ss).unwrap();
                let rows = (rows.reshape((bb * t, e)).unwrap() + merged).unwrap();
                let loss = ((rows.reshape((bb, t, e)).unwrap() * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    + (&heads * &up_h).unwrap().sum_all().unwrap()
                    + (&ffn * &up_f).unwrap().sum_all().unwrap())
                .unwrap();
                let g = loss.backward().unwrap();
                let mut all = vec![bits(&rows), bits(&heads), bits(&ffn)];
                for v in [&x, &lw, &lb, &w, &b, &w1, &b1] {
                    all.push(bits(g.get(v.as_tensor()).unwrap()));
                }
                all
            })
        };
        let one = run(1);
        assert_eq!(one, run(2), "2 threads");
        assert_eq!(one, run(3), "3 threads");
    }
}
