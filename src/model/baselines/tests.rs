//! Shapes, padding invariance and finite-difference gradients of the CTC module, the
//! CTC-aligned LSTMs, RAVEN, MCTN, MFM and Graph-MFN on tiny sizes.

use super::*;
use crate::config::{Config, Preset, Task, Variant};
use crate::model::params::Initializer;
use crate::model::Model;
use candle_core::{DType, Device};

const DIMS: [usize; 3] = [3, 2, 4];
const LENS: [usize; 3] = [4, 7, 6];

fn tiny_cfg(variant: Variant, align: SeqAlign) -> Config {
    let mut c = Config::preset(Preset::SynthSmall, variant, Task::Mosi, DIMS, LENS);
    c.model.lstm_hidden = 5;
    c.model.lstm_mod_hidden = 3;
    let b = &mut c.model.baselines;
    b.align = align;
    b.raven_nonverbal_hidden = 3;
    b.raven_word_hidden = 4;
    b.mctn_hidden = 4;
    b.mctn_reg_hidden = 3;
    small_mfn(b);
    c.validate().unwrap();
    c
}

/// Tiny MFN / MFM / Graph-MFN sizes.
fn small_mfn(b: &mut config::BaselineConfig) {
    (b.mfn_hidden_l, b.mfn_hidden_a, b.mfn_hidden_v, b.mfn_mem) = (3, 2, 2, 3);
    (b.mfn_att_hidden, b.mfn_gamma_hidden, b.mfn_out_hidden) = (4, 3, 3);
    (b.gmfn_node, b.gmfn_dfg_hidden) = (3, 4);
    (b.mfm_zy, b.mfm_zl, b.mfm_za, b.mfm_zv) = (3, 3, 2, 2);
    (b.mfm_fy, b.mfm_fl, b.mfm_fa, b.mfm_fv) = (2, 3, 2, 2);
}

/// A left-padded batch; `lens[i]` real lengths (text, audio, vision), `extra` more padding.
fn batch(lens: &[[usize; 3]], first_id: usize, extra: usize, dev: &Device) -> Inputs {
    let mut out = Vec::new();
    for m in 0..3 {
        let t = LENS[m] + if m == 0 { 0 } else { extra };
        let mut v = Vec::new();
        for (i, l) in lens.iter().enumerate() {
            for s in 0..t {
                for k in 0..DIMS[m] {
                    let r = (s + l[m]) as f32 - t as f32;
                    v.push(if s + l[m] >= t {
                        (r * 1.1 + k as f32 * 0.6 + (i + first_id) as f32 * 0.9 + m as f32).cos()
                            + 0.2
                    } else {
                        0.0
                    });
                }
            }
        }
        out.push(Tensor::from_vec(v, (lens.len(), t, DIMS[m]), dev).unwrap());
    }
    Inputs {
        text: out[0].clone(),
        audio: out[1].clone(),
        vision: out[2].clone(),
        times: None,
    }
}

fn build(cfg: &Config, seed: u64) -> (Model, crate::model::params::ParamStore) {
    let mut init = Initializer::new(seed, &Device::Cpu);
    let model = Model::new(&mut init, &cfg.model).unwrap();
    (model, init.into_store())
}

fn run(model: &Model, x: &Inputs) -> (Vec<f32>, f32) {
    // With intermediates: MFM's auxiliary loss is computed in evaluation mode too.
    let opts = ForwardOpts {
        intermediates: true,
        ..Default::default()
    };
    let o = model.forward(&Ctx::eval(), x, opts).unwrap();
    let aux = o.intermediates[AUX_LOSS].to_scalar::<f32>().unwrap();
    (o.output.flatten_all().unwrap().to_vec1().unwrap(), aux)
}

fn cases() -> Vec<(Variant, SeqAlign)> {
    vec![
        (Variant::EfLstm, SeqAlign::Ctc),
        (Variant::LfLstm, SeqAlign::Ctc),
        (Variant::Raven, SeqAlign::Ctc),
        (Variant::Raven, SeqAlign::Nearest),
        (Variant::Mctn, SeqAlign::Ctc),
        (Variant::Mctn, SeqAlign::Nearest),
        (Variant::Mfm, SeqAlign::Nearest),
        (Variant::Mfm, SeqAlign::Ctc),
        (Variant::Gmfn, SeqAlign::Nearest),
        (Variant::Gmfn, SeqAlign::Ctc),
    ]
}

#[test]
fn shapes_padding_invariance_and_no_leakage() {
    let dev = Device::Cpu;
    let lens = [[4, 7, 6], [3, 5, 4], [2, 2, 0]];
    for (variant, align) in cases() {
        let cfg = tiny_cfg(variant, align);
        let (model, _) = build(&cfg, 3);
        let x = batch(&lens, 0, 0, &dev);
        let o = model
            .forward(
                &Ctx::eval(),
                &x,
                ForwardOpts {
                    intermediates: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(o.output.dims(), &[3, 1], "{variant:?}");
        assert_eq!(o.valid[1].iter().filter(|v| **v).count(), 7 + 5 + 2);
        let aux = o.intermediates[AUX_LOSS].to_scalar::<f32>().unwrap();
        assert!(
            aux.is_finite() && aux >= 0.0,
            "{variant:?}/{align:?}: aux {aux}"
        );
        if align == SeqAlign::Ctc || matches!(variant, Variant::Mctn | Variant::Mfm) {
            assert!(aux > 0.0, "{variant:?}/{align:?}: aux loss 0");
        }
        // More audio/vision padding changes neither output nor auxiliary loss.
        let (a, la) = run(&model, &x);
        let (b, lb) = run(&model, &batch(&lens, 0, 3, &dev));
        for (p, q) in a.iter().zip(&b) {
            assert!(
                (p - q).abs() < 1e-5,
                "{variant:?}/{align:?}: {a:?} vs {b:?}"
            );
        }
        assert!((la - lb).abs() < 1e-4 * (1.0 + la.abs()), "{la} vs {lb}");
        // A sample alone gives its batch output.
        let (single, _) = run(&model, &batch(&lens[1..2], 1, 0, &dev));
        assert!((single[0] - a[1]).abs() < 1e-5, "{variant:?}/{align:?}");
        // Training mode runs.
        let t = model
            .forward(&Ctx::train(5), &x, ForwardOpts::default())
            .unwrap();
        assert_eq!(t.output.dims(), &[3, 1]);
    }
}

#[test]
fn pseudo_alignment_is_a_soft_assignment_onto_real_text_steps() {
    let dev = Device::Cpu;
    let mut init = Initializer::new(1, &dev);
    let pair = ctc::CtcPair::new(&mut init, DIMS, LENS[0]).unwrap();
    let x = batch(&[[4, 7, 6], [2, 3, 1]], 0, 0, &dev);
    let (a, v, loss) = pair.align(&x.text, &x.audio, &x.vision).unwrap();
    assert_eq!(a.dims(), &[2, 4, 2]);
    assert_eq!(v.dims(), &[2, 4, 4]);
    assert!(loss.to_scalar::<f32>().unwrap() > 0.0);
    // Sample 1 has 2 real text steps: its first 2 rows are padding (zero).
    let a1: Vec<f32> = a.get(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(a1[..4].iter().all(|x| *x == 0.0));
    assert!(a1[4..].iter().any(|x| *x != 0.0));
    // Each aligned row is a sub-convex combination of the real audio frames: its norm is
    // at most the largest frame norm.
    let max_frame = x
        .audio
        .sqr()
        .unwrap()
        .sum_keepdim(2)
        .unwrap()
        .sqrt()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let row_max = a
        .sqr()
        .unwrap()
        .sum_keepdim(2)
        .unwrap()
        .sqrt()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(row_max <= max_frame + 1e-5);
    // Text longer than the module was built for is refused, naming the option.
    let long = Tensor::ones((2, 6, 3), DType::F32, &dev).unwrap();
    let e = pair.align(&long, &x.audio, &x.vision).unwrap_err();
    assert!(e.to_string().contains("l_len"), "{e}");
}

/// Total training objective (task-free): a fixed read-out of the output plus the
/// auxiliary loss, so both paths' gradients are checked.
fn objective(model: &Model, x: &Inputs) -> Tensor {
    // With intermediates: MFM's generative path runs in evaluation mode too.
    let opts = ForwardOpts {
        intermediates: true,
        ..Default::default()
    };
    let o = model.forward(&Ctx::eval(), x, opts).unwrap();
    let w = Tensor::new(&[[0.7f32], [-1.3]], x.text.device()).unwrap();
    (o.output * w)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&o.intermediates[AUX_LOSS])
        .unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let lens = [[4, 7, 6], [3, 5, 4]];
    let x = batch(&lens, 0, 0, &dev);
    for (variant, align) in cases() {
        let cfg = tiny_cfg(variant, align);
        let (model, store) = build(&cfg, 11);
        let grads = objective(&model, &x).backward().unwrap();
        // A few entries of every parameter tensor (all of the small ones).
        let mut checked = 0;
        for (name, var) in &store.vars {
            let g: Vec<f32> = match grads.get(var.as_tensor()) {
                Some(g) => g.flatten_all().unwrap().to_vec1().unwrap(),
                None => panic!("{variant:?}/{align:?}: no gradient for {name}"),
            };
            let base = var.as_tensor().copy().unwrap();
            let v0: Vec<f32> = base.flatten_all().unwrap().to_vec1().unwrap();
            let step = (v0.len() / 3).max(1);
            for k in (0..v0.len()).step_by(step) {
                let at = |d: f32| {
                    let mut v = v0.clone();
                    v[k] += d;
                    var.set(&Tensor::from_vec(v, base.dims(), &dev).unwrap())
                        .unwrap();
                    let out = objective(&model, &x).to_scalar::<f32>().unwrap() as f64;
                    var.set(&base).unwrap();
                    out
                };
                let eps = 1e-2f32;
                let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let an = g[k] as f64;
                assert!(
                    (fd - an).abs() < 5e-3 * (1.0 + fd.abs()),
                    "{variant:?}/{align:?} {name}[{k}]: analytic {an} vs numeric {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "{variant:?}: only {checked} entries checked");
    }
}

#[test]
fn config_keys_presets_and_defaults() {
    let c = tiny_cfg(Variant::Raven, SeqAlign::Ctc);
    let mut c2 = c.clone();
    c2.set("model.baselines.raven_shift_beta=0.25").unwrap();
    c2.set("model.baselines.align=nearest").unwrap();
    assert_eq!(c2.model.baselines.raven_shift_beta, 0.25);
    assert_eq!(c2.model.baselines.align, SeqAlign::Nearest);
    c2.set("model.baselines.mctn_hidden=0").unwrap();
    let e = c2.validate().unwrap_err().to_string();
    assert!(e.contains("baselines.mctn_hidden"), "{e}");
    // RAVEN and MCTN default to the CTC module; the LSTMs keep resampling.
    let p = |v| Config::preset(Preset::Mosi, v, Task::Mosi, [300, 5, 20], [50, 375, 500]);
    assert_eq!(p(Variant::Raven).model.baselines.align, SeqAlign::Ctc);
    assert_eq!(p(Variant::Mctn).model.baselines.align, SeqAlign::Ctc);
    assert_eq!(p(Variant::Mctn).train.lr, 1e-4);
    assert_eq!(p(Variant::EfLstm).model.baselines.align, SeqAlign::Nearest);
    // MFM and Graph-MFN read word-aligned data as given; MFM's official Adam lr.
    let mfm = Config::preset(
        Preset::Mosi,
        Variant::Mfm,
        Task::Mosi,
        [300, 5, 20],
        [50; 3],
    );
    assert_eq!(mfm.model.baselines.align, SeqAlign::None);
    assert_eq!(mfm.train.lr, 1e-3);
    mfm.validate().unwrap();
    let mut g = mfm.clone();
    g.set("model.baselines.mfm_recon_a=0.5").unwrap();
    g.set("model.baselines.gmfn_node=7").unwrap();
    assert_eq!(
        (g.model.baselines.mfm_recon_a, g.model.baselines.gmfn_node),
        (0.5, 7)
    );
    g.set("model.baselines.mfn_att_dropout=1.0").unwrap();
    let e = g.validate().unwrap_err().to_string();
    assert!(e.contains("baselines.mfn_att_dropout"), "{e}");
    assert!(!Variant::Raven.has_attention());
    // Configs written before `baselines` existed still load with the defaults.
    let mut json = serde_json::to_value(&c).unwrap();
    json["model"].as_object_mut().unwrap().remove("baselines");
    let back: Config = serde_json::from_value(json).unwrap();
    assert_eq!(back.model.baselines, config::BaselineConfig::default());
}

/// An aligned batch: all three modalities `t` steps, sample `i` with `lens[i]` real words.
fn aligned_batch(lens: &[usize], first_id: usize, t: usize, dev: &Device) -> Inputs {
    let mut out = Vec::new();
    for (m, &dim) in DIMS.iter().enumerate() {
        let tt = t;
        let mut v = Vec::new();
        for (i, &l) in lens.iter().enumerate() {
            for s in 0..tt {
                for k in 0..dim {
                    let r = (s + l) as f32 - tt as f32;
                    v.push(if s + l >= tt {
                        (r * 0.7 + k as f32 * 0.5 + (i + first_id) as f32 * 1.3 + m as f32).sin()
                            + 0.1
                    } else {
                        0.0
                    });
                }
            }
        }
        out.push(Tensor::from_vec(v, (lens.len(), tt, dim), dev).unwrap());
    }
    Inputs {
        text: out[0].clone(),
        audio: out[1].clone(),
        vision: out[2].clone(),
        times: None,
    }
}

#[test]
fn mfm_and_gmfn_read_aligned_data_and_refuse_unaligned() {
    let dev = Device::Cpu;
    for variant in [Variant::Mfm, Variant::Gmfn] {
        // Their preset: the data as given.
        let mut c = Config::preset(Preset::SynthSmall, variant, Task::Mosi, DIMS, [5, 5, 5]);
        assert_eq!(c.model.baselines.align, SeqAlign::None);
        small_mfn(&mut c.model.baselines);
        c.validate().unwrap();
        let (model, _) = build(&c, 4);
        let x = aligned_batch(&[5, 3, 1], 0, 5, &dev);
        let (a, aux) = run(&model, &x);
        assert_eq!(a.len(), 3);
        assert!(aux.is_finite());
        // A sample alone (same padding) gives its batch output.
        let (single, _) = run(&model, &aligned_batch(&[3], 1, 5, &dev));
        assert!((single[0] - a[1]).abs() < 1e-5, "{variant:?}");
        // Unaligned data: refused, naming the options and commands that align it.
        let mut u = Config::preset(Preset::SynthSmall, variant, Task::Mosi, DIMS, LENS);
        small_mfn(&mut u.model.baselines);
        let e = u.validate().unwrap_err().to_string();
        let name = variant.name();
        assert_eq!(
            e,
            format!(
                "--variant {name} needs word-aligned input (text, audio and vision of one \
                 length), but this data's lengths are 4 / 7 / 6: train with `--align nearest` \
                 (nearest-time resampling onto the words) or `--align ctc` (MulT's CTC \
                 module), or give aligned data (`mica synth --aligned`, `mica import-csd \
                 --align words`, MulT's `*_data.pkl`)"
            )
        );
        u.set("model.baselines.align=nearest").unwrap();
        u.validate().unwrap();
    }
    // `--align none` means "as given" for every row that reads one grid.
    for variant in [Variant::EfLstm, Variant::Raven, Variant::Mctn] {
        let mut u = tiny_cfg(variant, SeqAlign::Nearest);
        u.model.baselines.align = SeqAlign::None;
        let e = u.validate().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--variant {} needs word-aligned", variant.name())),
            "{e}"
        );
    }
    let mut lf = tiny_cfg(Variant::LfLstm, SeqAlign::Nearest);
    lf.model.baselines.align = SeqAlign::None;
    lf.validate().unwrap();
}

#[test]
fn mfm_mmd_is_small_for_normal_codes_and_large_for_shifted_ones() {
    let dev = Device::Cpu;
    let ctx = Ctx::train(9);
    let z = mfm::normal_draws(&Ctx::train(123), 64, 4, &dev).unwrap();
    let near = mfm::mmd_to_normal(&ctx, &z)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let far = mfm::mmd_to_normal(&ctx, &(z + 3.0).unwrap())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((-1e-6..0.05).contains(&near), "{near}");
    assert!(far > 5.0 * near.max(0.01), "{near} vs {far}");
    // The draws are standard normal: mean ≈ 0, variance ≈ 1.
    let g: Vec<f32> = mfm::normal_draws(&ctx, 500, 4, &dev)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mean = g.iter().sum::<f32>() / g.len() as f32;
    let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / g.len() as f32;
    assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "{mean} {var}");
}
