//! Fused linears `x Wᵀ + b` that keep only their output: optionally a LayerNorm prologue
//! (the normalised rows recomputed in the backward), a `dropout(relu(·))` epilogue, and the
//! attention's head layouts on the input (packed heads merged) or the output (heads split).

use super::bias::{add_bias, col_sums, f32_slice, vec_of};
use super::gemm;
use super::layer_norm::{ln_backward_rows, ln_forward_rows};
use super::par::{fill, fill_rows, for_chunks, threads_for};
use super::pointwise::with_f32;
use super::rng::{mask_blocks, FusedDropout};
use super::simd::{self, Simd};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Where a fused linear reads its input rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinearIn {
    /// `x` is `[rows, in]`.
    Rows,
    /// `x` is the fused attention's packed output `[B, h, T, hd + 1]`
    /// ([`super::attention::fused_attention_packed`]): the input rows are its heads merged,
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
    /// backward recomputes them, bit-identical to [`super::layer_norm::layer_norm`]'s output.
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

impl LinearBias {
    /// The incoming gradient as the rows `[rows, out]` after the bias (and epilogue):
    /// gathered from the heads layout (and scaled) when the output was split into heads.
    fn grad_rows(&self, grad: &Tensor, n: usize) -> candle_core::Result<Tensor> {
        Ok(match self.out {
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
        })
    }

    /// The gradient through the epilogue: `(g · m) · [out > 0]`, the composed ops'
    /// products (`res` is the op's output).
    fn grad_through_epilogue(&self, grad: Tensor, res: &Tensor) -> candle_core::Result<Tensor> {
        Ok(if self.relu || self.drop.is_some() {
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
        })
    }
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
        let grad = self.grad_rows(grad, n)?;
        let grad = self.grad_through_epilogue(grad, res)?;
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
    if ln_w.dims() != [k]
        || ln_b.dims() != [k]
        || !crate::kernels::pointwise::applies(&[ln_w, ln_b])
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
/// output ([`super::attention::fused_attention_packed`]) and `merge` joins its heads into
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
    if !(fits && crate::kernels::pointwise::applies(&[packed, w, b])) {
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
