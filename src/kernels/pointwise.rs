//! Elementwise layer ops that keep only their output (spec/kernels.md).
//!
//! candle keeps every forward intermediate alive until the backward ends. Composed, a
//! dropout keeps an f32 mask tensor and the product, a ReLU its 0/1 mask and the
//! product, a residual `x + dropout(y)` three tensors, the input embedding four. These
//! custom ops compute the same values with the same f32 operations in the same order
//! (so results are bit-identical to the composed ops) but allocate only their output;
//! their backwards regenerate the dropout keep bits from the counter-based generator
//! ([`FusedDropout`], the same draws as the model's `Ctx::dropout_mask`) and the ReLU
//! mask from the op's input.
//!
//! Every op works on contiguous f32 CPU tensors; the public functions fall back to the
//! composed ops elsewhere (see [`applies`]).

use super::par::{fill, fill_rows};
use super::rng::{mask_blocks, FusedDropout};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor};

/// True when the fused ops apply: every tensor f32 on the CPU.
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: contiguous f32 inputs expected"),
    }
}

/// Runs `f` on the contiguous f32 values of `t` (borrowed in place when possible).
pub(crate) fn with_f32<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    {
        let (s, l) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*s, l.contiguous_offsets()) {
            return f(&v[a..b]);
        }
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    f(&v)
}

/// `out[i] = g[i] · m_i` (the dropout's backward, and its forward).
fn apply_mask(d: &FusedDropout, g: &[f32]) -> Vec<f32> {
    fill(g.len(), |i0, out| {
        let g = &g[i0..i0 + out.len()];
        mask_blocks(d, i0, out.len(), |o0, m| {
            let o = &mut out[o0..o0 + m.len()];
            for ((o, g), m) in o.iter_mut().zip(&g[o0..]).zip(m) {
                *o = *g * *m;
            }
        });
    })
}

/// Dropout `x ⊙ m` with the mask regenerated from `(seed, stream, flat index)`.
struct Dropout(FusedDropout);

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "mica-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dropout")?;
        Ok((CpuStorage::F32(apply_mask(&self.0, x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let dx = with_f32(grad, |g| Ok(apply_mask(&self.0, g)))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `relu(x) ⊙ m` (`m` = 1 without dropout). The ReLU is `x · [x > 0]`, as
/// the model's `layers::relu`: its gradient is 0 at exactly 0.
struct ReluDropout(Option<FusedDropout>);

impl CustomOp1 for ReluDropout {
    fn name(&self) -> &'static str {
        "mica-relu-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "relu-dropout")?;
        let relu = |x: f32| x * if x > 0.0 { 1.0 } else { 0.0 };
        let out = fill(x.len(), |i0, out| {
            let x = &x[i0..i0 + out.len()];
            match &self.0 {
                Some(d) => mask_blocks(d, i0, out.len(), |o0, m| {
                    let o = &mut out[o0..o0 + m.len()];
                    for ((o, x), m) in o.iter_mut().zip(&x[o0..]).zip(m) {
                        *o = relu(*x) * *m;
                    }
                }),
                None => out.iter_mut().zip(x).for_each(|(o, x)| *o = relu(*x)),
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let dx = with_f32(grad, |g| {
            with_f32(x, |xv| {
                let r = |x: f32| if x > 0.0 { 1.0 } else { 0.0 };
                Ok(fill(g.len(), |i0, out| {
                    let (g, xv) = (&g[i0..i0 + out.len()], &xv[i0..i0 + out.len()]);
                    match &self.0 {
                        Some(d) => mask_blocks(d, i0, out.len(), |o0, m| {
                            let o = &mut out[o0..o0 + m.len()];
                            let src = g[o0..].iter().zip(&xv[o0..]);
                            for ((o, (g, x)), m) in o.iter_mut().zip(src).zip(m) {
                                *o = (*g * *m) * r(*x);
                            }
                        }),
                        None => {
                            let src = out.iter_mut().zip(g.iter().zip(xv));
                            src.for_each(|(o, (g, x))| *o = *g * r(*x));
                        }
                    }
                }))
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `residual + y ⊙ m`.
struct ResidualDropout(FusedDropout);

impl CustomOp2 for ResidualDropout {
    fn name(&self) -> &'static str {
        "mica-residual-dropout"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let r = f32_slice(s1, l1, "residual-dropout")?;
        let y = f32_slice(s2, l2, "residual-dropout")?;
        if r.len() != y.len() {
            candle_core::bail!("residual-dropout: {} and {} values", r.len(), y.len())
        }
        let out = fill(r.len(), |i0, out| {
            let (r, y) = (&r[i0..i0 + out.len()], &y[i0..i0 + out.len()]);
            mask_blocks(&self.0, i0, out.len(), |o0, m| {
                let o = &mut out[o0..o0 + m.len()];
                for ((o, (r, y)), m) in o.iter_mut().zip(r[o0..].iter().zip(&y[o0..])).zip(m) {
                    *o = *r + *y * *m;
                }
            });
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        r: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dr = r.track_op().then(|| grad.clone());
        let dy = if y.track_op() {
            let v = with_f32(grad, |g| Ok(apply_mask(&self.0, g)))?;
            Some(Tensor::from_vec(v, y.shape(), y.device())?)
        } else {
            None
        };
        Ok((dr, dy))
    }
}

/// MulT's input embedding `dropout(scale · x + PE(x))` on `[B, T, E]`, with the positional
/// embedding of the model's `layers::positional_embedding` computed in place.
struct Embed {
    scale: f32,
    drop: Option<FusedDropout>,
}

impl CustomOp1 for Embed {
    fn name(&self) -> &'static str {
        "mica-embed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "embed")?;
        let (_b, t, e) = l.shape().dims3()?;
        if x.is_empty() {
            return Ok((CpuStorage::F32(vec![]), l.shape().clone()));
        }
        let table = sinusoidal_table(t + 1, e);
        let zeros = vec![0f32; e];
        let out = fill_rows(x.len(), e, |r0, out| {
            let xs = &x[r0 * e..r0 * e + out.len()];
            for (row, (o, xr)) in (r0..).zip(out.chunks_exact_mut(e).zip(xs.chunks_exact(e))) {
                let s = row % t;
                // Padding (first channel exactly 0) gets the zero vector, step s row s + 1.
                let pe = if xr[0] != 0.0 {
                    &table[(s + 1) * e..(s + 2) * e]
                } else {
                    &zeros[..]
                };
                for c in 0..e {
                    // The composed graph: `x * scale` is candle's affine (`v * mul + 0`).
                    o[c] = (xr[c] * self.scale + 0.0) + pe[c];
                }
            }
            if let Some(d) = &self.drop {
                mask_blocks(d, r0 * e, out.len(), |o0, m| {
                    for (o, m) in out[o0..o0 + m.len()].iter_mut().zip(m) {
                        *o *= *m;
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let dx = with_f32(grad, |g| {
            Ok(fill(g.len(), |i0, out| {
                let g = &g[i0..i0 + out.len()];
                match &self.drop {
                    Some(d) => mask_blocks(d, i0, out.len(), |o0, m| {
                        let o = &mut out[o0..o0 + m.len()];
                        for ((o, g), m) in o.iter_mut().zip(&g[o0..]).zip(m) {
                            *o = (*g * *m) * self.scale + 0.0;
                        }
                    }),
                    None => out
                        .iter_mut()
                        .zip(g)
                        .for_each(|(o, g)| *o = *g * self.scale + 0.0),
                }
            }))
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Dropout of `x` with the keep bits of `d` (f32 CPU tensors only; see [`applies`]).
pub fn dropout(x: &Tensor, d: FusedDropout) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Dropout(d))
}

/// `dropout(relu(x))` (`None`: ReLU only) as one op (f32 CPU tensors only).
pub fn relu_dropout(x: &Tensor, d: Option<FusedDropout>) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(ReluDropout(d))
}

/// `residual + dropout(y)` as one op (f32 CPU tensors of one shape only).
pub fn residual_dropout(
    residual: &Tensor,
    y: &Tensor,
    d: FusedDropout,
) -> candle_core::Result<Tensor> {
    if residual.shape() != y.shape() {
        candle_core::bail!(
            "residual-dropout: shapes {:?} and {:?} differ",
            residual.dims(),
            y.dims()
        )
    }
    residual
        .contiguous()?
        .apply_op2(&y.contiguous()?, ResidualDropout(d))
}

/// `dropout(scale · x + PE(x))` for `x` `[B, T, E]` as one op (f32 CPU tensors only).
/// `scale` is applied as candle's `x * scale` does (an f32 multiplier).
pub fn embed(x: &Tensor, scale: f64, d: Option<FusedDropout>) -> candle_core::Result<Tensor> {
    x.dims3()?;
    x.contiguous()?.apply_op1(Embed {
        scale: scale as f32,
        drop: d,
    })
}

/// Sinusoidal table `[n_rows, dim]` of fairseq / tensor2tensor (computed in f32 as the
/// official code does): row `p = [sin(p f_0..), cos(p f_0..)]`, `f_k = exp(-k ln(1e4)/(h-1))`,
/// an extra zero column for odd `dim`, row 0 (padding) all zero.
pub fn sinusoidal_table(n_rows: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = if half > 1 {
        (10000f64).ln() / (half as f64 - 1.0)
    } else {
        0.0
    };
    let step = step as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (k as f32 * -step).exp()).collect();
    let mut table = vec![0f32; n_rows * dim];
    for p in 1..n_rows {
        let row = &mut table[p * dim..(p + 1) * dim];
        for (k, f) in freqs.iter().enumerate() {
            let a = p as f32 * f;
            row[k] = a.sin();
            row[half + k] = a.cos();
        }
    }
    table
}

#[cfg(test)]
pub(crate) mod tests;
