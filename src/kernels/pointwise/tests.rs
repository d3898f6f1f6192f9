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
/// ([`crate::kernels::par::MIN_SPLIT`]): bit-identical on 1, 2 and 3 threads.
#[test]
fn pointwise_ops_are_bit_identical_on_any_thread_count() {
    use crate::kernels::par::{with_threads, MIN_SPLIT};
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
