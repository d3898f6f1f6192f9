//! A scalar loss whose value and gradient were computed together by a fused CPU sweep
//! (PEA's distance, the MMD estimate), wrapped as a candle op so autograd carries the
//! gradient on to the model.

use anyhow::{ensure, Result};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

/// A scalar tensor with value `value` whose gradient w.r.t. `a` is `grad_a` and w.r.t.
/// `b` is `grad_b` (each times the incoming gradient). `grad_a`/`grad_b` are in the
/// row-major order of `a`/`b`. Correct only when `value` and the gradients were computed
/// from the current values of `a` and `b`, which the callers guarantee.
pub fn scalar_with_grads(
    a: &Tensor,
    b: &Tensor,
    value: f32,
    grad_a: Vec<f32>,
    grad_b: Vec<f32>,
) -> Result<Tensor> {
    ensure!(
        grad_a.len() == a.elem_count() && grad_b.len() == b.elem_count(),
        "precomputed gradients do not fit their tensors"
    );
    Ok(a.apply_op2(
        b,
        Precomputed {
            value,
            grad_a,
            grad_b,
        },
    )?)
}

struct Precomputed {
    value: f32,
    grad_a: Vec<f32>,
    grad_b: Vec<f32>,
}

impl CustomOp2 for Precomputed {
    fn name(&self) -> &'static str {
        "mica-precomputed-scalar"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.value]), Shape::from(())))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let scaled = |v: &[f32], like: &Tensor| {
            Tensor::from_vec(
                v.iter().map(|x| x * g).collect(),
                like.shape(),
                like.device(),
            )
        };
        Ok((
            Some(scaled(&self.grad_a, a)?),
            Some(scaled(&self.grad_b, b)?),
        ))
    }
}
