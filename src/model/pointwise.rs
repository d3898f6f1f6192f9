//! Elementwise layer ops that keep only their output (spec/kernels.md).
//!
//! candle keeps every forward intermediate alive until the backward ends. Composed, a
//! dropout keeps an f32 mask tensor and the product, a ReLU its 0/1 mask and the
//! product, a residual `x + dropout(y)` three tensors, the input embedding four. These
//! custom ops compute the same values with the same f32 operations in the same order
//! (so results are bit-identical to the composed ops) but allocate only their output;
//! their backwards regenerate the dropout keep bits from the counter-based generator
//! ([`FusedDropout`], the same draws as [`super::ctx::Ctx::dropout_mask`]) and the ReLU
//! mask from the op's input.
//!
//! Every op works on contiguous f32 CPU tensors; the public functions fall back to the
//! composed ops elsewhere (see [`applies`]).

use super::fused::FusedDropout;
use super::layers::sinusoidal_table;
use super::par::{fill, fill_rows};
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

/// Block of dropout multipliers [`mask_blocks`] makes at a time.
const MASK_BLOCK: usize = 256;

/// Calls `f(o0, m)` on consecutive blocks covering `0..n`: `m` holds the dropout
/// multipliers (`1/(1-p)` if kept, else 0: exactly the values of
/// [`super::ctx::Ctx::dropout_mask`]) of the flat indices `i0 + o0 ..`, made
/// [`MASK_BLOCK`] at a time by the vectorised [`FusedDropout::multipliers`], so that the
/// caller's loop over a block vectorises too.
pub(crate) fn mask_blocks(d: &FusedDropout, i0: usize, n: usize, mut f: impl FnMut(usize, &[f32])) {
    let mut buf = [0f32; MASK_BLOCK];
    let mut o0 = 0;
    while o0 < n {
        let len = MASK_BLOCK.min(n - o0);
        d.multipliers((i0 + o0) as u64, &mut buf[..len]);
        f(o0, &buf[..len]);
        o0 += len;
    }
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
/// [`super::layers::relu`]: its gradient is 0 at exactly 0.
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
/// embedding of [`super::layers::positional_embedding`] computed in place.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::ctx::Ctx;
    use crate::model::encoder::{embed as embed_layer, embed_composed};
    use crate::model::layers::relu_composed;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rand_vec(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
    }

    pub(crate) fn rand_var(shape: &[usize], rng: &mut ChaCha8Rng) -> Var {
        let n: usize = shape.iter().product();
        Var::from_vec(rand_vec(n, rng), shape, &Device::Cpu).unwrap()
    }

    pub(crate) fn rand_t(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(rand_vec(n, rng), shape, &Device::Cpu).unwrap()
    }

    pub(crate) fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    pub(crate) fn bits(t: &Tensor) -> Vec<u32> {
        vals(t).iter().map(|x| x.to_bits()).collect()
    }

    /// Loss `Σ out ⊙ up` and the gradient of each var.
    fn grads(out: &Tensor, up: &Tensor, vars: &[&Var]) -> Vec<Vec<f32>> {
        let g = (out * up).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .map(|v| vals(g.get(v.as_tensor()).expect("a gradient")))
            .collect()
    }

    /// Central finite differences of `f` (a scalar function of `v`'s values) at a few
    /// entries, compared with `analytic`.
    pub(crate) fn check_fd(
        v: &Var,
        analytic: &[f32],
        entries: &[usize],
        f: impl Fn(&Tensor) -> f32,
        tol: f32,
    ) {
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
                (fd - analytic[i]).abs() <= tol * (1.0 + fd.abs()),
                "entry {i}: finite differences {fd}, analytic {}",
                analytic[i]
            );
        }
    }

    const P: f32 = 0.3;

    #[test]
    fn dropout_uses_the_ctx_mask_and_matches_the_composed_op() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for shape in [vec![4, 7, 5], vec![1, 1], vec![3, 130]] {
            let x = rand_var(&shape, &mut rng);
            let up = rand_t(&shape, &mut rng);
            // Stream 2 of seed 11, as the third dropout of a pass.
            let ctx = Ctx::train(11);
            ctx.next_stream();
            ctx.next_stream();
            let fast = ctx.dropout(x.as_tensor(), P).unwrap();
            let ctx = Ctx::train(11);
            ctx.next_stream();
            ctx.next_stream();
            let mask = ctx.dropout_mask(&shape, P, &Device::Cpu).unwrap();
            let slow = x.as_tensor().mul(&mask).unwrap();
            assert_eq!(bits(&fast), bits(&slow), "shape {shape:?}");
            assert_eq!(grads(&fast, &up, &[&x]), grads(&slow, &up, &[&x]));
            // The mask values themselves: 0 or 1/(1-p), keep bits of stream 2.
            let m = vals(&mask);
            let d = FusedDropout::new(11, 2, P);
            for (i, m) in m.iter().enumerate() {
                assert_eq!(*m, if d.keep(i as u64) { d.scale } else { 0.0 });
            }
        }
    }

    #[test]
    fn dropout_is_identity_for_p0_and_eval_and_draws_no_stream() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let x = rand_t(&[3, 4], &mut rng);
        let train = Ctx::train(5);
        let eval = Ctx::eval();
        for (ctx, p) in [(&train, 0.0), (&eval, P)] {
            assert_eq!(bits(&ctx.dropout(&x, p).unwrap()), bits(&x));
            let r = ctx.relu_dropout(&x, p).unwrap();
            assert_eq!(bits(&r), bits(&relu_composed(&x).unwrap()));
            let y = rand_t(&[3, 4], &mut rng);
            let s = ctx.residual_dropout(&x, &y, p).unwrap();
            assert_eq!(bits(&s), bits(&(&x + &y).unwrap()));
        }
        // Nothing drew a stream: the next draw is stream 0.
        assert_eq!(train.next_stream(), 0);
        // The op with p = 0 (threshold 0, scale 1) keeps everything too.
        let d = FusedDropout::new(5, 0, 0.0);
        assert_eq!(bits(&dropout(&x, d).unwrap()), bits(&x));
    }

    #[test]
    fn relu_dropout_matches_the_composed_ops() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let shape = [5, 6, 8];
        let mut v = rand_vec(240, &mut rng);
        // Exact zeros (padding rows): gradient 0 there, as PyTorch's.
        for i in (0..240).step_by(7) {
            v[i] = 0.0;
        }
        v[3] = -0.0;
        let x = Var::from_vec(v, &shape[..], &Device::Cpu).unwrap();
        let up = rand_t(&shape, &mut rng);
        for p in [0.0, P] {
            let fast = Ctx::train(9).relu_dropout(x.as_tensor(), p).unwrap();
            let ctx = Ctx::train(9);
            let slow = ctx
                .dropout(&relu_composed(x.as_tensor()).unwrap(), p)
                .unwrap();
            assert_eq!(bits(&fast), bits(&slow), "p {p}");
            let gf = grads(&fast, &up, &[&x]);
            assert_eq!(gf, grads(&slow, &up, &[&x]), "p {p}");
            for (i, g) in gf[0].iter().enumerate().step_by(7) {
                assert_eq!(*g, 0.0, "gradient at the zero input {i}");
            }
        }
    }

    #[test]
    fn relu_dropout_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let shape = [3, 10];
        // Inputs away from the kink.
        let v: Vec<f32> = rand_vec(30, &mut rng)
            .into_iter()
            .map(|x| if x.abs() < 0.1 { x + 0.5 } else { x })
            .collect();
        let x = Var::from_vec(v, &shape[..], &Device::Cpu).unwrap();
        let up = rand_t(&shape, &mut rng);
        let f = |x: &Tensor| {
            let y = Ctx::train(3).relu_dropout(x, P).unwrap();
            (y * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let out = Ctx::train(3).relu_dropout(x.as_tensor(), P).unwrap();
        let g = grads(&out, &up, &[&x]);
        check_fd(&x, &g[0], &(0..30).collect::<Vec<_>>(), f, 1e-3);
    }

    #[test]
    fn residual_dropout_matches_the_composed_ops_and_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let shape = [2, 9, 6];
        let r = rand_var(&shape, &mut rng);
        let y = rand_var(&shape, &mut rng);
        let up = rand_t(&shape, &mut rng);
        let ctx = Ctx::train(21);
        ctx.next_stream();
        let fast = ctx
            .residual_dropout(r.as_tensor(), y.as_tensor(), P)
            .unwrap();
        let ctx = Ctx::train(21);
        ctx.next_stream();
        let slow = (r.as_tensor() + ctx.dropout(y.as_tensor(), P).unwrap()).unwrap();
        assert_eq!(bits(&fast), bits(&slow));
        let gf = grads(&fast, &up, &[&r, &y]);
        assert_eq!(gf, grads(&slow, &up, &[&r, &y]));
        let f = |yv: &Tensor| {
            let out = residual_dropout(r.as_tensor(), yv, FusedDropout::new(21, 1, P)).unwrap();
            (out * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        check_fd(&y, &gf[1], &[0, 5, 17, 50, 107], f, 1e-3);
    }

    #[test]
    fn embed_matches_the_composed_ops() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let shape = [3, 7, 6];
        let mut v = rand_vec(126, &mut rng);
        // Padding steps (first channel exactly 0) get no positional embedding.
        for s in [0, 1, 9, 20] {
            v[s * 6] = 0.0;
        }
        let x = Var::from_vec(v, &shape[..], &Device::Cpu).unwrap();
        let up = rand_t(&shape, &mut rng);
        for p in [0.0, P] {
            for train in [true, false] {
                let mk = || if train { Ctx::train(8) } else { Ctx::eval() };
                let fast = embed_layer(&mk(), x.as_tensor(), 6, p).unwrap();
                let slow = embed_composed(&mk(), x.as_tensor(), 6, p).unwrap();
                assert_eq!(bits(&fast), bits(&slow), "p {p} train {train}");
                assert_eq!(
                    grads(&fast, &up, &[&x]),
                    grads(&slow, &up, &[&x]),
                    "p {p} train {train}"
                );
            }
        }
    }

    /// The pointwise ops, forward and backward, on a tensor large enough to split
    /// ([`crate::model::par::MIN_SPLIT`]): bit-identical on 1, 2 and 3 threads.
    #[test]
    fn pointwise_ops_are_bit_identical_on_any_thread_count() {
        use crate::model::par::{with_threads, MIN_SPLIT};
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let shape = [5, 97, 136];
        let n: usize = shape.iter().product();
        assert!(n >= MIN_SPLIT);
        let mut v = rand_vec(n, &mut rng);
        for s in (0..n).step_by(136 * 11) {
            v[s] = 0.0; // padding steps
        }
        let x = Var::from_vec(v, &shape[..], &Device::Cpu).unwrap();
        let y = rand_var(&shape, &mut rng);
        let up = rand_t(&shape, &mut rng);
        let run = |threads: usize| {
            with_threads(threads, || {
                let xin = x.as_tensor().sqr().unwrap();
                let d = |s| FusedDropout::new(4, s, P);
                let outs = [
                    dropout(&xin, d(0)).unwrap(),
                    relu_dropout(&(&xin - 1.0).unwrap(), Some(d(1))).unwrap(),
                    relu_dropout(&(&xin - 1.0).unwrap(), None).unwrap(),
                    residual_dropout(&xin, y.as_tensor(), d(2)).unwrap(),
                    embed(&xin, 3.5, Some(d(3))).unwrap(),
                    embed(&xin, 3.5, None).unwrap(),
                ];
                let mut loss = outs[0].zeros_like().unwrap().sum_all().unwrap();
                for o in &outs {
                    loss = (loss + (o * &up).unwrap().sum_all().unwrap()).unwrap();
                }
                let g = loss.backward().unwrap();
                let mut all: Vec<Vec<u32>> = outs.iter().map(bits).collect();
                for v in [&x, &y] {
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
