//! Per-feature bias and scale ops with a fast backward.
//!
//! Composed candle ops express `y + b` and `x ⊙ w + b` (per-feature `w`, `b` over the last
//! axis) as broadcasts; their backward sums the gradient over every leading axis, which
//! candle's CPU backend does element by element with two integer divisions each (its
//! fast path covers only reductions over the LAST axes). At the bench shape that was
//! ~12 % of a training step. These ops compute exactly the same values, in the same
//! order (rows summed one after the other, products formed the same way), so results
//! are bit-identical to the composed ops; only the column sums are done row-wise.

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

/// Column sums of a row-major `[rows, e]` buffer, rows added in order.
fn col_sums(g: &[f32], e: usize) -> Vec<f32> {
    let mut acc = vec![0f32; e];
    for row in g.chunks_exact(e) {
        for (a, x) in acc.iter_mut().zip(row) {
            *a += *x;
        }
    }
    acc
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
        let mut out = y.to_vec();
        for row in out.chunks_exact_mut(e) {
            for (o, b) in row.iter_mut().zip(b) {
                *o += *b;
            }
        }
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
        let mut out = vec![0f32; x.len()];
        for (o, x) in out.chunks_exact_mut(e).zip(x.chunks_exact(e)) {
            for c in 0..e {
                o[c] = x[c] * w[c] + b[c];
            }
        }
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
        let mut dx = vec![0f32; g.len()];
        let mut dw = vec![0f32; e];
        for ((dxr, gr), xr) in dx
            .chunks_exact_mut(e)
            .zip(g.chunks_exact(e))
            .zip(xv.chunks_exact(e))
        {
            for c in 0..e {
                dxr[c] = gr[c] * wv[c];
                dw[c] += gr[c] * xr[c];
            }
        }
        let db = col_sums(&g, e);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

/// `x Wᵀ + b` for 2-D `x` `[rows, in]`, `W` `[out, in]`, `b` `[out]`, keeping only the
/// output: the forward is candle's own CPU matmul on exactly the layouts
/// `x.matmul(&W.t())` uses, then the bias added in place, so the values are those of the
/// composed `add_bias(x.matmul(W.t()), b)` bit for bit; the backward forms the same
/// products as candle's matmul backward (`dx = dy W`, `dW = (xᵀ dy)ᵀ`, `db` column sums).
struct LinearBias;

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
        use candle_core::backend::BackendStorage;
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: x {:?} and W {:?} do not fit", l1.dims(), l2.dims())
        }
        let Some(b) = f32_slice(s3, l3).filter(|b| b.len() == n) else {
            candle_core::bail!("linear: contiguous f32 bias of length {n} expected")
        };
        let wt = l2.transpose(0, 1)?;
        let CpuStorage::F32(mut y) = s1.matmul(s2, (1, m, n, k), l1, &wt)? else {
            candle_core::bail!("linear: f32 inputs expected")
        };
        if n > 0 {
            for row in y.chunks_exact_mut(n) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += *b;
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // candle's Matmul backward on `x.matmul(&W.t())`: `dx = dy (Wᵀ)ᵀ`, and the
        // transpose's backward turns `xᵀ dy` into `dW`.
        let dx = if x.track_op() {
            Some(grad.matmul(&w.t()?.t()?)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.t()?.matmul(grad)?.t()?)
        } else {
            None
        };
        let db = if b.track_op() {
            let sums = crate::model::pointwise::with_f32(grad, |g| Ok(col_sums(g, b.dim(0)?)))?;
            Some(Tensor::from_vec(sums, b.shape(), b.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `x Wᵀ + b` for `x` `[rows, in]` (2-D), `W` `[out, in]`, `b` `[out]`: the same values and
/// gradients as `add_bias(&x.matmul(&W.t()?)?, b)`, keeping only the output on the CPU.
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let fits = x.rank() == 2 && w.rank() == 2 && b.dims() == [w.dim(0)?];
    if fits
        && x.device().is_cpu()
        && [x, w, b]
            .iter()
            .all(|t| t.dtype() == candle_core::DType::F32)
    {
        x.apply_op3(w, &b.contiguous()?, LinearBias)
    } else {
        add_bias(&x.matmul(&w.t()?)?, b)
    }
}

/// Row statistics of LayerNorm, computed exactly as the composed graph of
/// [`super::layers::LayerNorm`] does on the CPU: candle's row sum (`VecOps::vec_reduce_sum`),
/// `mean_keepdim`'s affine `sum · (1/E) + 0`, `x − mean`, its square, the same mean, then
/// `var · 1 + eps` and `sqrt`. Writes `x − mean` into `xc` and returns the std.
#[inline]
fn ln_row(x: &[f32], xc: &mut [f32], sq: &mut [f32], inv_n: f32, eps: f32) -> f32 {
    use candle_core::cpu::kernels::VecOps;
    let mut sum = 0f32;
    // SAFETY: `x` holds `x.len()` elements and `sum` is a valid f32.
    unsafe { f32::vec_reduce_sum(x.as_ptr(), &mut sum, x.len()) };
    let mean = sum * inv_n + 0.0;
    for ((c, s), x) in xc.iter_mut().zip(sq.iter_mut()).zip(x) {
        *c = *x - mean;
        *s = *c * *c;
    }
    let mut sum2 = 0f32;
    // SAFETY: as above, `sq` has `x.len()` elements.
    unsafe { f32::vec_reduce_sum(sq.as_ptr(), &mut sum2, sq.len()) };
    let var = sum2 * inv_n + 0.0;
    (var * 1.0 + eps).sqrt()
}

/// LayerNorm over the last axis (biased variance, affine) keeping only its output: the
/// backward recomputes the row statistics from the input.
struct LayerNormOp {
    eps: f64,
}

impl LayerNormOp {
    fn consts(&self, e: usize) -> (f32, f32) {
        // candle's affine converts its f64 factors with `T::from_f64`.
        ((1f64 / e as f64) as f32, self.eps as f32)
    }
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
        let e = w.len();
        let (inv_n, eps) = self.consts(e);
        let mut out = vec![0f32; x.len()];
        let mut xc = vec![0f32; e];
        let mut sq = vec![0f32; e];
        if e > 0 {
            for (o, xr) in out.chunks_exact_mut(e).zip(x.chunks_exact(e)) {
                let std = ln_row(xr, &mut xc, &mut sq, inv_n, eps);
                for c in 0..e {
                    o[c] = (xc[c] / std) * w[c] + b[c];
                }
            }
        }
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
        use crate::model::pointwise::with_f32;
        let e = w.dim(0)?;
        let (inv_n, eps) = self.consts(e);
        let wv = vec_of(w)?;
        let mut dx = vec![0f32; x.elem_count()];
        let mut dw = vec![0f32; e];
        let mut xc = vec![0f32; e];
        let mut sq = vec![0f32; e];
        let mut xn = vec![0f32; e];
        let mut gw = vec![0f32; e];
        with_f32(grad, |g| {
            with_f32(x, |xv| {
                for ((dxr, gr), xr) in dx
                    .chunks_exact_mut(e)
                    .zip(g.chunks_exact(e))
                    .zip(xv.chunks_exact(e))
                {
                    let std = ln_row(xr, &mut xc, &mut sq, inv_n, eps);
                    // dW exactly as ScaleShift's backward (xn bit-identical to the forward's).
                    let (mut s1, mut s2) = (0f64, 0f64);
                    for c in 0..e {
                        xn[c] = xc[c] / std;
                        dw[c] += gr[c] * xn[c];
                        gw[c] = gr[c] * wv[c];
                        s1 += gw[c] as f64;
                        s2 += gw[c] as f64 * xn[c] as f64;
                    }
                    // dx = (g' − mean(g') − x̂ mean(g' x̂)) / std with g' = g ⊙ w.
                    let (m1, m2) = (s1 / e as f64, s2 / e as f64);
                    let rstd = 1.0 / std as f64;
                    for c in 0..e {
                        dxr[c] = ((gw[c] as f64 - m1 - xn[c] as f64 * m2) * rstd) as f32;
                    }
                }
                Ok(())
            })
        })?;
        let db = with_f32(grad, |g| Ok(col_sums(g, e)))?;
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

    fn rand_var(shape: &[usize], rng: &mut ChaCha8Rng) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        vec_of(t).unwrap().iter().map(|x| x.to_bits()).collect()
    }

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

    fn vals(t: &Tensor) -> Vec<f32> {
        vec_of(t).unwrap()
    }

    fn rand_t(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
        rand_var(shape, rng).as_tensor().detach()
    }

    /// Largest |a − b| relative to the largest |b| (at least 1).
    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
    }

    /// Central finite differences of `f` at `entries` of `v` against `analytic`.
    fn check_fd(v: &Var, analytic: &[f32], entries: &[usize], f: impl Fn(&Tensor) -> f32) {
        let base = vals(v.as_tensor());
        let h = 1e-2f32;
        for &i in entries {
            let at = |d: f32| {
                let mut x = base.clone();
                x[i] += d;
                f(&Tensor::from_vec(x, v.shape(), &Device::Cpu).unwrap())
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - analytic[i]).abs() <= 2e-3 * (1.0 + fd.abs()),
                "entry {i}: finite differences {fd}, analytic {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn linear_bias_is_bit_identical_to_matmul_plus_bias() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (rows, din, dout) in [(7, 5, 3), (40, 12, 48), (1, 1, 1), (33, 20, 20)] {
            let x = rand_var(&[rows, din], &mut rng);
            // W and b as slices of packed parameters (MHA's in_proj), offsets included.
            let wp = rand_var(&[3 * dout, din], &mut rng);
            let bp = rand_var(&[3 * dout], &mut rng);
            let up = rand_t(&[rows, dout], &mut rng);
            let run = |fast: bool| {
                let xin = x.as_tensor().sqr().unwrap();
                let w = wp.as_tensor().narrow(0, dout, dout).unwrap();
                let b = bp.as_tensor().narrow(0, dout, dout).unwrap();
                let out = if fast {
                    linear_bias(&xin, &w, &b).unwrap()
                } else {
                    add_bias(&xin.matmul(&w.t().unwrap()).unwrap(), &b).unwrap()
                };
                let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
                (
                    bits(&out),
                    vals(g.get(x.as_tensor()).unwrap()),
                    vals(g.get(wp.as_tensor()).unwrap()),
                    vals(g.get(bp.as_tensor()).unwrap()),
                )
            };
            assert_eq!(run(true), run(false), "rows {rows} in {din} out {dout}");
        }
    }

    #[test]
    fn linear_bias_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = rand_var(&[6, 4], &mut rng);
        let w = rand_var(&[3, 4], &mut rng);
        let b = rand_var(&[3], &mut rng);
        let up = rand_t(&[6, 3], &mut rng);
        let loss = |x: &Tensor, w: &Tensor| {
            (linear_bias(x, w, b.as_tensor()).unwrap() * &up)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let g = loss(x.as_tensor(), w.as_tensor()).backward().unwrap();
        let gx = vals(g.get(x.as_tensor()).unwrap());
        let gw = vals(g.get(w.as_tensor()).unwrap());
        let f = |t: &Tensor| loss(t, w.as_tensor()).to_scalar::<f32>().unwrap();
        check_fd(&x, &gx, &(0..24).collect::<Vec<_>>(), f);
        let f = |t: &Tensor| loss(x.as_tensor(), t).to_scalar::<f32>().unwrap();
        check_fd(&w, &gw, &(0..12).collect::<Vec<_>>(), f);
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
}
