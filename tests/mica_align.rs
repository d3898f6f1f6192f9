//! MICA's alignment losses on a real (tiny) model: gradients w.r.t. the query/key
//! projections against finite differences, propagated masks, the α = β = 0 identities.

use candle_core::{Device, Tensor, Var};
use mica::align::{alignment_losses, mmd, pea_loss, pea_masks};
use mica::config::{Config, Preset, Task, Variant};
use mica::data::batch::make_batch;
use mica::model::ctx::Ctx;
use mica::model::io::{ForwardOpts, Inputs};
use mica::model::params::{Initializer, ParamStore};
use mica::model::Model;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIMS: [usize; 3] = [5, 3, 4];
const LENS: [usize; 3] = [4, 7, 6];

fn tiny_cfg(variant: Variant) -> Config {
    let mut c = Config::preset(Preset::SynthSmall, variant, Task::Mosi, DIMS, LENS);
    c.model.d = 4;
    c.model.num_heads = 2;
    c.model.layers = 2;
    c.align.tau = 0.3;
    c.align.mmd_max_samples = 1000; // no subsampling: the loss is a fixed function
    c.model.time_bias = 0.0; // the paper's attention: these random inputs carry no times
    c
}

/// Random left-padded inputs (sample 1 starts with zero frames).
fn inputs(seed: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let mk = |rng: &mut ChaCha8Rng, t: usize, d: usize, pad: usize| {
        let mut v = Vec::with_capacity(2 * t * d);
        for b in 0..2 {
            for s in 0..t {
                for _ in 0..d {
                    v.push(if b == 1 && s < pad {
                        0.0
                    } else {
                        rng.gen_range(-1.0f32..1.0)
                    });
                }
            }
        }
        Tensor::from_vec(v, (2, t, d), &dev).unwrap()
    };
    Inputs {
        text: mk(&mut rng, LENS[0], DIMS[0], 1),
        audio: mk(&mut rng, LENS[1], DIMS[1], 2),
        vision: mk(&mut rng, LENS[2], DIMS[2], 2),
        times: None,
    }
}

fn build(cfg: &Config, seed: u64) -> (Model, ParamStore) {
    let mut init = Initializer::new(seed, &Device::Cpu);
    let m = Model::new(&mut init, &cfg.model).unwrap();
    (m, init.into_store())
}

fn f64_of(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

fn trace_opts() -> ForwardOpts {
    ForwardOpts {
        trace: true,
        probs: true,
        intermediates: false,
    }
}

/// Finite differences (central, f32 model) of `loss` w.r.t. entries of parameter `name`
/// against the autograd gradient.
fn check_fd(
    store: &ParamStore,
    name: &str,
    entries: &[usize],
    loss: &dyn Fn() -> Tensor,
    tol: f64,
) {
    let var: &Var = &store.vars[name];
    let l = loss();
    let grads = l.backward().unwrap();
    let g: Vec<f32> = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let set = |v: &[f32]| {
        var.set(&Tensor::from_slice(v, var.dims(), &Device::Cpu).unwrap())
            .unwrap()
    };
    let biggest = entries.iter().map(|&i| g[i].abs()).fold(0f32, f32::max);
    assert!(
        biggest > 1e-4,
        "{name}: gradients too small to check ({biggest})"
    );
    for &i in entries {
        let h = 2e-3f32;
        let mut p = orig.clone();
        p[i] += h;
        set(&p);
        let lp = f64_of(&loss());
        p[i] -= 2.0 * h;
        set(&p);
        let lm = f64_of(&loss());
        set(&orig);
        let fd = (lp - lm) / (2.0 * h as f64);
        let err = (g[i] as f64 - fd).abs();
        assert!(
            err <= tol * fd.abs().max(1.0),
            "{name}[{i}]: autograd {} vs finite difference {fd}",
            g[i]
        );
    }
}

#[test]
fn le_gradient_wrt_query_key_projections_matches_finite_differences() {
    let cfg = tiny_cfg(Variant::Mica);
    let (model, store) = build(&cfg, 3);
    let x = inputs(1);
    // Masks are chosen on the unperturbed model and held fixed (they carry no gradient):
    // the finite differences then see exactly the function autograd differentiates.
    let base = model.forward(&Ctx::eval(), &x, trace_opts()).unwrap();
    let masks = pea_masks(&base, &cfg.align).unwrap();
    let loss = || {
        let out = model.forward(&Ctx::eval(), &x, trace_opts()).unwrap();
        let now = pea_masks(&out, &cfg.align).unwrap();
        assert_eq!(
            now, masks,
            "the perturbation changed a PEA mask; use a smaller step"
        );
        pea_loss(&out, &cfg.align).unwrap()
    };
    assert!(f64_of(&loss()) > 0.0);
    // Rows 0..E of in_proj are W_Q, E..2E W_K (E = 4).
    check_fd(
        &store,
        "blocks.0.l_with_a.self_attn.in_proj_weight",
        &[0, 5, 17, 22, 30],
        &loss,
        2e-2,
    );
    check_fd(
        &store,
        "blocks.1.v_with_l.self_attn.in_proj_weight",
        &[1, 9, 20, 26],
        &loss,
        2e-2,
    );
    check_fd(
        &store,
        "blocks.0.a_with_v.self_attn.in_proj_bias",
        &[0, 3, 6],
        &loss,
        2e-2,
    );
}

#[test]
fn lm_gradient_wrt_query_key_projections_matches_finite_differences() {
    let cfg = tiny_cfg(Variant::Mmd);
    let (model, store) = build(&cfg, 4);
    let x = inputs(2);
    // The bandwidth carries no gradient by design: hold it at its unperturbed value.
    let base = model.forward(&Ctx::eval(), &x, trace_opts()).unwrap();
    let pick = |out: &mica::model::io::ForwardOutput| {
        out.blocks
            .iter()
            .find(|b| b.layer == 1 && b.target == 0 && b.source == 2)
            .unwrap()
            .clone()
    };
    let rows = |b: &mica::model::io::BlockTrace, valid: &[Vec<bool>; 3]| {
        let iq = mmd::sample_valid(&valid[b.target], 1000, 0);
        let ik = mmd::sample_valid(&valid[b.source], 1000, 0);
        (
            mmd::gather_rows(&b.attn.k, &ik).unwrap(),
            mmd::gather_rows(&b.attn.q, &iq).unwrap(),
        )
    };
    let (k0, q0) = rows(&pick(&base), &base.valid);
    let z = Tensor::cat(&[&k0, &q0], 0).unwrap();
    let bw = mmd::bandwidth(&mmd::pairwise_sq_dists(&z, &z).unwrap(), z.dim(0).unwrap()).unwrap();
    let loss = || {
        let out = model.forward(&Ctx::eval(), &x, trace_opts()).unwrap();
        let (k, q) = rows(&pick(&out), &out.valid);
        mmd::mmd_biased_bw(&k, &q, Some(bw)).unwrap()
    };
    assert!(f64_of(&loss()) > 0.0);
    check_fd(
        &store,
        "blocks.1.l_with_v.self_attn.in_proj_weight",
        &[0, 7, 18, 25],
        &loss,
        2e-2,
    );
    check_fd(
        &store,
        "blocks.1.l_with_v.layer_norms.0.weight",
        &[0, 2],
        &loss,
        2e-2,
    );
    // And the loss used in training is this very estimator summed over blocks.
    let full = alignment_losses(&base, &cfg.align, 0, true)
        .unwrap()
        .lm
        .unwrap();
    assert!(f64_of(&full) > 0.0 && f64_of(&full).is_finite());
}

#[test]
fn propagated_masks_are_unions_that_grow_with_depth_and_skip_padding() {
    let mut cfg = tiny_cfg(Variant::Mica);
    cfg.model.layers = 3;
    let (model, _) = build(&cfg, 5);
    let x = inputs(3);
    let out = model.forward(&Ctx::eval(), &x, trace_opts()).unwrap();
    let prop = pea_masks(&out, &cfg.align).unwrap();
    let mut flat_cfg = cfg.align.clone();
    flat_cfg.propagate = false;
    let single = pea_masks(&out, &flat_cfg).unwrap();
    for (&(layer, t, s), (dims, v)) in &prop {
        // V[l] = W[0] | .. | W[l]
        let mut union = vec![false; v.len()];
        for l in 0..=layer {
            for (u, w) in union.iter_mut().zip(&single[&(l, t, s)].1) {
                *u |= *w;
            }
        }
        assert_eq!(&union, v, "layer {layer} block {t}<-{s}");
        if layer > 0 {
            let prev = &prop[&(layer - 1, t, s)].1;
            assert!(
                prev.iter().zip(v).all(|(p, c)| !*p || *c),
                "masks only grow with depth"
            );
        }
        // Padding never selected.
        for b in 0..dims.b {
            for h in 0..dims.h {
                for i in 0..dims.tq {
                    for j in 0..dims.tk {
                        if v[((b * dims.h + h) * dims.tq + i) * dims.tk + j] {
                            assert!(out.valid[t][b * dims.tq + i] && out.valid[s][b * dims.tk + j]);
                        }
                    }
                }
            }
        }
    }
    // Sample 1 has padding in every modality, so the check above was exercised.
    assert!(out.valid[1].iter().any(|v| !v));
}

#[test]
fn zero_weights_give_exactly_the_backbone_loss() {
    let dev = Device::Cpu;
    let mut ds = mica::data::synth::generate(&{
        let mut c = mica::data::synth::SynthConfig::preset(mica::data::synth::SynthSize::Small, 1);
        (c.n_train, c.n_valid, c.n_test) = (4, 2, 2);
        c
    })
    .unwrap();
    let split = ds.splits.remove("train").unwrap();
    let (dims, lens) = (
        [split.text.d, split.audio.d, split.vision.d],
        [split.text.t, split.audio.t, split.vision.t],
    );
    let batch = make_batch(&split, &[0, 1, 2, 3], &dev).unwrap();
    let mut mica_cfg = Config::preset(Preset::SynthSmall, Variant::Mica, Task::Mosi, dims, lens);
    mica_cfg.align.alpha = 0.0;
    mica_cfg.align.beta = 0.0;
    let backbone_cfg = Config::preset(
        Preset::SynthSmall,
        Variant::Backbone,
        Task::Mosi,
        dims,
        lens,
    );
    let (model, _) = build(&mica_cfg, 9);
    let ctx = || Ctx::train(77);
    let a = mica::train::trainer::step_losses(&model, &mica_cfg, &batch, &ctx(), 1).unwrap();
    let b = mica::train::trainer::step_losses(&model, &backbone_cfg, &batch, &ctx(), 1).unwrap();
    assert_eq!(f64_of(&a.total).to_bits(), f64_of(&b.total).to_bits());
    assert_eq!((a.lm, a.le), (0.0, 0.0));
    // With the weights on, the total differs and both terms are reported.
    let full_cfg = Config::preset(Preset::SynthSmall, Variant::Mica, Task::Mosi, dims, lens);
    let c = mica::train::trainer::step_losses(&model, &full_cfg, &batch, &ctx(), 1).unwrap();
    assert!(c.lm > 0.0 && c.le > 0.0);
    assert!(
        (f64_of(&c.total) - (c.task + full_cfg.align.alpha * c.lm + full_cfg.align.beta * c.le))
            .abs()
            < 1e-4 * f64_of(&c.total)
    );
    assert_eq!(c.task.to_bits(), a.task.to_bits());
}

#[test]
fn mult_variant_with_zero_weights_is_the_official_mult() {
    let fx = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mult-parity/tiny");
    let dev = Device::Cpu;
    let (mcfg, _store, mult) = mica::model::import::import_official(
        &fx.join("weights.safetensors"),
        &fx.join("config.json"),
        &dev,
    )
    .unwrap();
    let inp = mica::model::import::read_safetensors(&fx.join("inputs.safetensors"), &dev).unwrap();
    let x = Inputs {
        text: inp["text"].clone(),
        audio: inp["audio"].clone(),
        vision: inp["vision"].clone(),
        times: None,
    };
    let cfg = Config {
        variant: Variant::Mult,
        task: Task::Mosi,
        model: mcfg,
        align: Default::default(),
        train: Default::default(),
    };
    let batch = mica::data::batch::Batch {
        inputs: x.clone(),
        labels: inp["labels"].clone(),
        indices: vec![0, 1, 2],
    };
    let model = Model::Mult(mult.clone());
    let via_trainer =
        mica::train::trainer::step_losses(&model, &cfg, &batch, &Ctx::eval(), 0).unwrap();
    let direct = mica::train::loss::l1_loss(
        &mult
            .forward(&Ctx::eval(), &x, ForwardOpts::default())
            .unwrap()
            .output,
        &inp["labels"],
    )
    .unwrap();
    assert_eq!(
        f64_of(&via_trainer.total).to_bits(),
        f64_of(&direct).to_bits()
    );
    assert!(
        (f64_of(&direct) - 1.876719355583191).abs() < 1e-5,
        "official loss of the fixture"
    );
    // The alignment losses also run on the MulT architecture (paper Table A2).
    let mut on = cfg.clone();
    on.align.alpha = 0.5;
    on.align.beta = 0.5;
    let l = mica::train::trainer::step_losses(&model, &on, &batch, &Ctx::eval(), 0).unwrap();
    assert!(l.lm > 0.0 && l.le > 0.0, "{l:?}");
}

/// The reference PEA of spec/mica.md on materialised maps: `softmax(q kᵀ + M)` with
/// composed ops, [`mica::align::pea::top_tau_mask`], propagation by OR, and
/// [`mica::align::pea::masked_sq_distance`] on the unscaled projections.
fn reference_pea(
    out: &mica::model::io::ForwardOutput,
    cfg: &mica::config::AlignConfig,
    heads: usize,
) -> (Tensor, mica::align::PeaMasks) {
    use mica::align::pea::{masked_sq_distance, top_tau_mask, MapDims};
    use mica::model::layers::{causal_offset_mask, softmax_last};
    let mut order: Vec<_> = out.blocks.iter().collect();
    order.sort_by_key(|b| (b.layer, b.target, b.source));
    let mut prop: std::collections::BTreeMap<(usize, usize), Vec<bool>> = Default::default();
    let mut masks = mica::align::PeaMasks::new();
    let mut total: Option<Tensor> = None;
    for block in order {
        let h = block.attn.heads.as_ref().unwrap();
        let (b, nh, tq, _) = h.qh.dims4().unwrap();
        let tk = h.kh.dim(2).unwrap();
        let mut s = h.qh.matmul(&h.kh.t().unwrap()).unwrap();
        if h.causal_offset {
            s = s
                .broadcast_add(&causal_offset_mask(tq, tk, &Device::Cpu).unwrap())
                .unwrap();
        }
        let p: Vec<f32> = softmax_last(&s)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let dims = MapDims { b, h: nh, tq, tk };
        let w = top_tau_mask(
            &p,
            dims,
            &out.valid[block.target],
            &out.valid[block.source],
            cfg.tau,
        )
        .unwrap();
        let v = if cfg.propagate {
            let acc = prop
                .entry((block.target, block.source))
                .or_insert_with(|| vec![false; w.len()]);
            acc.iter_mut().zip(&w).for_each(|(a, x)| *a |= *x);
            acc.clone()
        } else {
            w
        };
        let n = v.iter().filter(|x| **x).count();
        let m: Vec<f32> = v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
        let m = Tensor::from_vec(m, (b, nh, tq, tk), &Device::Cpu).unwrap();
        let d = masked_sq_distance(&block.attn.q, &block.attn.k, &m, heads).unwrap();
        let d = match cfg.le_reduction {
            mica::config::LeReduction::Sum => d,
            mica::config::LeReduction::Mean => (d / n.max(1) as f64).unwrap(),
        };
        total = Some(match total {
            None => d,
            Some(t) => (t + d).unwrap(),
        });
        masks.insert((block.layer, block.target, block.source), (dims, v));
    }
    (total.unwrap(), masks)
}

#[test]
fn fused_pea_matches_the_reference_on_materialised_maps() {
    use mica::model::attention::AttentionKernel;
    for (kernel, propagate, reduction, causal) in [
        (
            AttentionKernel::Fused,
            true,
            mica::config::LeReduction::Mean,
            false,
        ),
        (
            AttentionKernel::Fused,
            false,
            mica::config::LeReduction::Sum,
            true,
        ),
        (
            AttentionKernel::Plain,
            true,
            mica::config::LeReduction::Sum,
            true,
        ),
    ] {
        let mut cfg = tiny_cfg(Variant::Mica);
        cfg.model.layers = 3;
        cfg.model.attention = kernel;
        cfg.model.attn_mask = causal;
        cfg.align.propagate = propagate;
        cfg.align.le_reduction = reduction;
        let (model, store) = build(&cfg, 11);
        let x = inputs(4);
        let out = model
            .forward(
                &Ctx::train(5),
                &x,
                ForwardOpts {
                    trace: true,
                    probs: false,
                    intermediates: false,
                },
            )
            .unwrap();
        let (want, want_masks) = reference_pea(&out, &cfg.align, cfg.model.num_heads);
        let got = pea_loss(&out, &cfg.align).unwrap();
        assert_eq!(
            pea_masks(&out, &cfg.align).unwrap(),
            want_masks,
            "{kernel:?}"
        );
        let (g, w) = (f64_of(&got), f64_of(&want));
        assert!(
            w > 0.0 && (g - w).abs() <= 1e-5 * w,
            "{kernel:?}: {g} vs {w}"
        );
        let (gg, gw) = (got.backward().unwrap(), want.backward().unwrap());
        let mut checked = 0;
        for (name, var) in &store.vars {
            let (Some(a), Some(b)) = (gg.get(var.as_tensor()), gw.get(var.as_tensor())) else {
                assert!(
                    gg.get(var.as_tensor()).is_none() && gw.get(var.as_tensor()).is_none(),
                    "{name}: gradient on one side only"
                );
                continue;
            };
            let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-4 * scale,
                    "{kernel:?} {name}: {x} vs {y}"
                );
            }
            checked += 1;
        }
        assert!(
            checked > 10,
            "only {checked} parameters carry a PEA gradient"
        );
    }
}
