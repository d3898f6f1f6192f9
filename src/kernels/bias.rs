//! Per-feature bias and scale ops with a fast backward.
//!
//! Composed candle ops express `y + b` and `x ⊙ w + b` (per-feature `w`, `b` over the last
//! axis) as broadcasts; their backward sums the gradient over every leading axis, which
//! candle's CPU backend does element by element with two integer divisions each (its
//! fast path covers only reductions over the LAST axes). At the bench shape that was
//! ~12 % of a training step. These ops compute exactly the same values, in the same
//! order (rows summed one after the other, products formed the same way), so results
//! are bit-identical to the composed ops; only the column sums are done row-wise.

use super::par::{col_reduce, fill_rows};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Option<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Some(&v[a..b]),
        _ => None,
    }
}

pub(super) fn vec_of(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Column sums of a row-major `[rows, e]` buffer, rows added in order (split over
/// columns for large buffers: each column's order unchanged).
pub(super) fn col_sums(g: &[f32], e: usize) -> Vec<f32> {
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
pub(super) fn col_dot(a: &[f32], b: &[f32], e: usize) -> Vec<f32> {
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
pub(super) fn applies(x: &Tensor, params: &[&Tensor]) -> bool {
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
