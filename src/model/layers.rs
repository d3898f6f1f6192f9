//! Basic layers written with composed candle ops, so every one has a backward.
//!
//! candle's fused `layer_norm` / `softmax_last_dim` have no backward (gradients would
//! silently stop): mica never uses them.

use super::params::{Init, ParamSource};
pub use crate::kernels::pointwise::sinusoidal_table;
use anyhow::Result;
use candle_core::{Device, Tensor, D};

/// `y = x W^T + b` over the last axis (PyTorch `nn.Linear`).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, if any.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A Linear with PyTorch's default init (weights and bias `U(±1/sqrt(in))`).
    pub fn torch_default(
        p: &mut dyn ParamSource,
        name: &str,
        din: usize,
        dout: usize,
    ) -> Result<Self> {
        let weight = p.param(
            &format!("{name}.weight"),
            &[dout, din],
            Init::FanInUniform(din),
        )?;
        let bias = p.param(&format!("{name}.bias"), &[dout], Init::FanInUniform(din))?;
        Ok(Linear {
            weight,
            bias: Some(bias),
        })
    }

    /// A Linear with Xavier-uniform weights and a zero bias (fairseq's `Linear`).
    pub fn xavier(p: &mut dyn ParamSource, name: &str, din: usize, dout: usize) -> Result<Self> {
        let weight = p.param(&format!("{name}.weight"), &[dout, din], Init::XavierUniform)?;
        let bias = p.param(&format!("{name}.bias"), &[dout], Init::Const(0.0))?;
        Ok(Linear {
            weight,
            bias: Some(bias),
        })
    }

    /// Applies the layer to `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref())
    }

    /// `ctx.relu_dropout(self.forward(x), p)` (one dropout draw when active); on f32 CPU
    /// tensors one op that keeps only its output (the same values and gradients).
    pub fn forward_relu_dropout(
        &self,
        ctx: &super::ctx::Ctx,
        x: &Tensor,
        p: f32,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let din = *dims.last().expect("linear on a scalar");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        if let Some(b) = &self.bias {
            let x2 = x.reshape((rows, din))?;
            if crate::kernels::linear::linear_applies(&x2, &self.weight, b)? {
                let d = ctx.dropout_active(p).then(|| ctx.next_dropout(p));
                let y = crate::kernels::linear::linear_relu_dropout(&x2, &self.weight, b, d)?;
                let mut out_dims = dims;
                *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
                return Ok(y.reshape(out_dims)?);
            }
        }
        ctx.relu_dropout(&self.forward(x)?, p)
    }

    /// `ctx.relu_dropout(self.forward(ln.forward(x)), p)`; on f32 CPU tensors one op that
    /// keeps only its output, the normalised rows included (the same values and gradients).
    pub fn forward_ln_relu_dropout(
        &self,
        ctx: &super::ctx::Ctx,
        ln: &LayerNorm,
        x: &Tensor,
        p: f32,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let din = *dims.last().expect("linear on a scalar");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        if let Some(b) = &self.bias {
            let x2 = x.reshape((rows, din))?;
            let draw = || ctx.dropout_active(p).then(|| ctx.next_dropout(p));
            let fused = crate::kernels::linear::ln_linear_relu_dropout(
                &x2,
                &ln.weight,
                &ln.bias,
                ln.eps,
                &self.weight,
                b,
                draw,
            )?;
            if let Some(y) = fused {
                let mut out_dims = dims;
                *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
                return Ok(y.reshape(out_dims)?);
            }
        }
        self.forward_relu_dropout(ctx, &ln.forward(x)?, p)
    }
}

/// `x W^T + b` for `x` of any rank (flattened to 2-D for one matmul).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let din = *dims.last().expect("linear on a scalar");
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, din))?;
    let y = match bias {
        // One op keeping only its output (CPU f32), else `add_bias(x Wᵀ, b)`.
        Some(b) => crate::kernels::linear::linear_bias(&x2, weight, b)?,
        None => x2.matmul(&weight.t()?)?,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = weight.dim(0)?;
    Ok(y.reshape(out_dims)?)
}

/// LayerNorm over the last axis (biased variance, affine), composed ops only.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale `[E]`.
    pub weight: Tensor,
    /// Shift `[E]`.
    pub bias: Tensor,
    /// Variance epsilon (PyTorch default 1e-5).
    pub eps: f64,
}

impl LayerNorm {
    /// A LayerNorm with weight 1, bias 0.
    pub fn new(p: &mut dyn ParamSource, name: &str, dim: usize) -> Result<Self> {
        let weight = p.param(&format!("{name}.weight"), &[dim], Init::Const(1.0))?;
        let bias = p.param(&format!("{name}.bias"), &[dim], Init::Const(0.0))?;
        Ok(LayerNorm {
            weight,
            bias,
            eps: 1e-5,
        })
    }

    /// Normalises `[..., E]`.
    ///
    /// On f32 CPU tensors one op ([`crate::kernels::layer_norm::layer_norm`]) that keeps only its
    /// output and gives bit-identical values; elsewhere the composed ops below.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) =
            crate::kernels::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps)?
        {
            return Ok(y);
        }
        self.forward_composed(x)
    }

    /// The composed-ops LayerNorm (the reference of the fused op).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(crate::kernels::bias::scale_shift(
            &xn,
            &self.weight,
            &self.bias,
        )?)
    }
}

/// Temporal Conv1d without bias and padding 0 (MulT's front end), as unfold + matmul.
/// Input and output batch-first: `[B, T, D_in] -> [B, T - k + 1, d]`.
#[derive(Debug, Clone)]
pub struct Conv1d {
    /// PyTorch layout `[d_out, d_in, k]`.
    pub weight: Tensor,
    /// Kernel size.
    pub kernel: usize,
}

impl Conv1d {
    /// A Conv1d with PyTorch's default init (`U(±1/sqrt(d_in * k))`).
    pub fn new(
        p: &mut dyn ParamSource,
        name: &str,
        din: usize,
        dout: usize,
        kernel: usize,
    ) -> Result<Self> {
        let weight = p.param(
            &format!("{name}.weight"),
            &[dout, din, kernel],
            Init::FanInUniform(din * kernel),
        )?;
        Ok(Conv1d { weight, kernel })
    }

    /// Applies the convolution to `[B, T, D_in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_b, t, din) = x.dims3()?;
        let k = self.kernel;
        anyhow::ensure!(
            t >= k,
            "sequence of length {t} is shorter than the conv kernel {k}"
        );
        let dout = self.weight.dim(0)?;
        if k == 1 {
            let w = self.weight.reshape((dout, din))?;
            return linear(x, &w, None);
        }
        // Unfold: [B, T', k * D_in] with tap-major order, matching weight [d, k, D_in].
        let unfolded = unfold(x, k)?;
        let w = self
            .weight
            .transpose(1, 2)?
            .contiguous()?
            .reshape((dout, k * din))?;
        linear(&unfolded, &w, None)
    }
}

/// `[B, T, D]` → `[B, T − k + 1, k·D]`: row `t` holds input rows `t..t + k` one after the
/// other. On a contiguous f32 CPU tensor without gradient (the data a front end reads)
/// those `k` rows are already adjacent, so each output row is one copy; otherwise the
/// shifted views are concatenated.
fn unfold(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let tout = t - k + 1;
    if !x.track_op() && crate::kernels::pointwise::applies(&[x]) && x.is_contiguous() {
        let rows = crate::kernels::pointwise::with_f32(x, |v| {
            let mut out = Vec::with_capacity(b * tout * k * d);
            for bi in 0..b {
                for ti in 0..tout {
                    let at = (bi * t + ti) * d;
                    out.extend_from_slice(&v[at..at + k * d]);
                }
            }
            Ok(out)
        })?;
        return Ok(Tensor::from_vec(rows, (b, tout, k * d), x.device())?);
    }
    let taps: Vec<Tensor> = (0..k)
        .map(|j| x.narrow(1, j, tout))
        .collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&taps, 2)?)
}

/// ReLU whose gradient is 0 at exactly 0, as PyTorch's (candle's own `relu` passes the
/// gradient at 0, which differs on the exactly-zero rows that padding produces).
///
/// On f32 CPU tensors one op that keeps only its output (same values as the composed
/// `x * [x > 0]`, see [`crate::kernels::pointwise`]).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if crate::kernels::pointwise::applies(&[x]) {
        return Ok(crate::kernels::pointwise::relu_dropout(x, None)?);
    }
    relu_composed(x)
}

/// `x * [x > 0]` with composed ops (the reference of the fused ReLU).
pub fn relu_composed(x: &Tensor) -> Result<Tensor> {
    let mask = x.gt(0.0)?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// Numerically stable softmax over the last axis, composed ops (has a backward). The
/// max is detached: softmax is shift-invariant, so no gradient belongs to it.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Positional embedding of a batch-first projected input `x` `[B, T, E]`: a step is padding
/// iff its FIRST channel is exactly 0.0 (gets the zero vector); step `t` otherwise gets
/// table row `t + 1` (spec/mult.md). Returns a constant `[B, T, E]` tensor.
pub fn positional_embedding(x: &Tensor) -> Result<Tensor> {
    let (b, t, e) = x.dims3()?;
    let first: Vec<f32> = x.narrow(2, 0, 1)?.flatten_all()?.to_vec1()?;
    let table = sinusoidal_table(t + 1, e);
    let mut out = vec![0f32; b * t * e];
    for i in 0..b {
        for s in 0..t {
            if first[i * t + s] != 0.0 {
                let dst = (i * t + s) * e;
                out[dst..dst + e].copy_from_slice(&table[(s + 1) * e..(s + 2) * e]);
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, t, e), x.device())?)
}

/// Time positional embedding `[B, T_in - kernel + 1, e]` from element times `[B, T_in]`
/// (seconds, NaN for padding): output step `i` (after a conv of width `kernel`) takes the time
/// of input element `i + (kernel - 1) / 2` in units of `time_step` as a CONTINUOUS position
/// `p` and gets `[sin(p f_0..), cos(p f_0..)]` with [`sinusoidal_table`]'s frequencies (an
/// extra zero column for odd `e`); padding gets the zero vector. Co-occurring elements of
/// different modalities thus get equal positions, whatever their sampling rates.
pub fn time_positional_embedding(
    times: &Tensor,
    kernel: usize,
    e: usize,
    time_step: f32,
) -> Result<Tensor> {
    let (b, t_in) = times.dims2()?;
    anyhow::ensure!(
        kernel >= 1 && t_in >= kernel,
        "element times of length {t_in} are shorter than the conv kernel {kernel}"
    );
    let t_out = t_in - kernel + 1;
    let tv: Vec<f32> = times
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let half = e / 2;
    let step = if half > 1 {
        (10000f64).ln() / (half as f64 - 1.0)
    } else {
        0.0
    };
    let freqs: Vec<f64> = (0..half).map(|k| (k as f64 * -step).exp()).collect();
    let centre = (kernel - 1) / 2;
    let mut out = vec![0f32; b * t_out * e];
    for i in 0..b {
        for s in 0..t_out {
            let t = tv[i * t_in + s + centre];
            if !t.is_finite() {
                continue;
            }
            let pos = f64::from(t) / f64::from(time_step);
            let row = &mut out[(i * t_out + s) * e..(i * t_out + s + 1) * e];
            for (k, f) in freqs.iter().enumerate() {
                let a = pos * f;
                row[k] = a.sin() as f32;
                row[half + k] = a.cos() as f32;
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, t_out, e), times.device())?)
}

/// Additive causal-offset mask `[T_q, T_k]`: `-inf` where `j > i + |T_k - T_q|` (MulT's
/// `buffered_future_mask`), so the last query sees every key.
pub fn causal_offset_mask(tq: usize, tk: usize, device: &Device) -> Result<Tensor> {
    let off = tq.abs_diff(tk);
    let v: Vec<f32> = (0..tq)
        .flat_map(|i| (0..tk).map(move |j| if j > i + off { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(v, (tq, tk), device)?)
}

/// True where the causal-offset mask allows query `i` to see key `j`.
#[inline]
pub fn causal_offset_allows(i: usize, j: usize, tq: usize, tk: usize) -> bool {
    j <= i + tq.abs_diff(tk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time positions: equal times give equal rows whatever the modality's rate; the
    /// conv kernel shifts to the centre element; NaN (padding) gives zeros; the row of time
    /// `t` is the sinusoid of the continuous position `t / time_step`.
    #[test]
    fn time_positions_follow_the_element_times() {
        let dev = Device::Cpu;
        let times = Tensor::from_vec(
            vec![f32::NAN, 0.1, 0.35, 0.6, f32::NAN, 0.35, 0.36, 2.0],
            (2, 4),
            &dev,
        )
        .unwrap();
        let pe = time_positional_embedding(&times, 1, 6, 0.01).unwrap();
        let v: Vec<Vec<Vec<f32>>> = pe.to_vec3().unwrap();
        assert_eq!(v[0][0], vec![0.0; 6]);
        assert_eq!(v[0][2], v[1][1]);
        assert_ne!(v[1][1], v[1][2]);
        let f1 = (-(10000f64).ln() / 2.0).exp();
        let p = 0.1f64 / 0.01;
        let want = [p.sin(), (p * f1).sin(), (p * f1 * f1).sin(), p.cos()];
        for (g, w) in v[0][1].iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
        }
        // Kernel 3: output step 0 takes input element 1.
        let pe3 = time_positional_embedding(&times, 3, 6, 0.01).unwrap();
        assert_eq!(pe3.dims3().unwrap(), (2, 2, 6));
        let v3: Vec<Vec<Vec<f32>>> = pe3.to_vec3().unwrap();
        assert_eq!(v3[0][0], v[0][1]);
        assert!(time_positional_embedding(&times, 5, 6, 0.01).is_err());
    }

    #[test]
    fn unfold_copies_equal_the_shifted_views() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::arange(0f32, 42.0, &dev)
            .unwrap()
            .reshape((2, 7, 3))
            .unwrap();
        for k in [1, 2, 3, 7] {
            let fast = unfold(&x, k).unwrap();
            let taps: Vec<Tensor> = (0..k).map(|j| x.narrow(1, j, 8 - k).unwrap()).collect();
            let want = Tensor::cat(&taps, 2).unwrap();
            assert_eq!(fast.dims(), want.dims(), "k {k}");
            let a: Vec<f32> = fast.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "k {k}");
        }
        // A tracked input takes the composed path (same values).
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let slow = unfold(v.as_tensor(), 3).unwrap();
        let a: Vec<f32> = slow.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = unfold(&x, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
    }
}
