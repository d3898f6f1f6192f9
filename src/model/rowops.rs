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
}
