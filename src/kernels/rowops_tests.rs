//! Tests of the row-wise kernels ([`super::bias`], [`super::linear`], [`super::layer_norm`])
//! against candle's composed ops and the model's layers.

use super::bias::*;
use super::layer_norm::*;
use super::linear::*;
use super::rng::FusedDropout;
use super::simd::Simd;
use candle_core::Tensor;
use candle_core::{Device, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kernels::pointwise::tests::{bits, rand_t, rand_var, vals};

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
    crate::kernels::pointwise::tests::check_fd(v, analytic, entries, f, 2e-3)
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
    use crate::kernels::simd::with_simd;
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
            let ffn =
                ln_linear_relu_dropout(&x2, lwt, lbt, 1e-5, w1.as_tensor(), b1.as_tensor(), draw)
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
    use crate::kernels::par::{with_threads, MIN_SPLIT};
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
            let ffn =
                ln_linear_relu_dropout(&x2, lwt, lbt, 1e-5, w1.as_tensor(), b1.as_tensor(), || {
                    drop
                })
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
