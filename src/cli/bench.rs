//! `mica bench`: median wall time of one training step (forward, backward, clip, Adam)
//! and of one eval-mode forward at a fixed shape, peak RSS and thread count.
//!
//! The `bench` shape is the paper's MOSI setting at MulT's unaligned lengths: batch 24,
//! text 50×300, audio 375×74, vision 500×35, d = 40, 8 heads, 4 layers, conv kernels 3
//! (preset `mosi`). `mult` is the MulT architecture, `mica` the MICA backbone with
//! alpha 0.8, beta 0.5, tau 0.25 (MMD and PEA on). Inputs are seeded random values with
//! a random amount of left padding per sample and modality. Threads come from the
//! global `--threads` flag (CANDLE_NUM_THREADS / RAYON_NUM_THREADS).

use super::common::{parse_lav, ConfigArgs};
use crate::config::{Config, Preset, Task, Variant};
use crate::data::batch::Batch;
use crate::kernels::rng::mix64;
use crate::model::attention::AttentionKernel;
use crate::model::ctx::Ctx;
use crate::model::io::{ForwardOpts, Inputs};
use crate::model::params::Initializer;
use crate::model::Model;
use crate::train::optim::{clip_grad_norm, Adam, AdamConfig};
use crate::train::trainer::step_losses;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Instant;

/// Which model the benchmark trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchModel {
    /// The MulT architecture (no alignment losses).
    Mult,
    /// MICA: backbone + MMD (alpha 0.8) + PEA (beta 0.5, tau 0.25).
    Mica,
    /// MICA's backbone without alignment losses (to price L_m and L_e).
    Backbone,
    /// MICA's backbone + MMD only (alpha 0.8).
    Mmd,
}

/// Input and model size of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchShape {
    /// B = 24, text 50×300, audio 375×74, vision 500×35, d = 40, 8 heads, 4 layers.
    Bench,
    /// A tiny shape for smoke tests (B = 4, lengths 10/12/14, d = 16, 4 heads, 2 layers).
    Small,
}

/// `mica bench` options: a shape (`--shape`, or `--lens`/`--dims`/`--batch`) and any
/// configuration (`--preset`, `--d`, `--heads`, `--layers`, `--kernels`, `--config FILE`,
/// `--set`, ...: the options of `mica train`, same precedence).
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model: mult, mica, backbone or mmd (`--variant` wins when given).
    #[arg(long, value_enum, default_value = "mult")]
    pub model: BenchModel,
    /// Base shape: bench (the paper's MOSI setting, preset mosi) or small (preset
    /// synth-small); --lens, --dims, --batch and every config option override it.
    #[arg(long, value_enum, default_value = "bench")]
    pub shape: BenchShape,
    /// Input lengths as L,A,V (e.g. 30,120,150).
    #[arg(long)]
    pub lens: Option<String>,
    /// Input feature dims as L,A,V (e.g. 300,5,20 for MOSI's MulT files).
    #[arg(long)]
    pub dims: Option<String>,
    /// Timed repetitions of each measurement (after one untimed warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Print exactly one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Batch size of the timed step (default: the shape's, 24 or 4; `--batch-size` too).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Every model / loss / training option, as for `mica train`.
    #[command(flatten)]
    pub cfg: ConfigArgs,
}

/// Result of a benchmark (the JSON of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Median wall milliseconds of forward + backward + clip + Adam.
    pub train_step_ms: f64,
    /// Median wall milliseconds of an eval-mode forward of one batch.
    pub eval_batch_ms: f64,
    /// Peak resident set size of the process (VmHWM), MiB.
    pub peak_rss_mb: f64,
    /// Threads candle (and the fused kernel) use.
    pub threads: usize,
    /// `mult` or `mica`.
    pub model: BenchModel,
    /// What was measured: the resolved configuration.
    pub config: BenchSetting,
}

/// The configuration a benchmark ran, as its JSON names it.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSetting {
    /// Variant (architecture + losses).
    pub variant: String,
    /// Batch size.
    pub batch: usize,
    /// Input lengths (L, A, V).
    pub lens: [usize; 3],
    /// Input feature dims (L, A, V).
    pub dims: [usize; 3],
    /// Model width.
    pub d: usize,
    /// Attention heads.
    pub heads: usize,
    /// Crossmodal layers.
    pub layers: usize,
    /// Conv kernels (L, A, V).
    pub kernels: [usize; 3],
    /// Attention implementation.
    pub attention: AttentionKernel,
    /// MMD and PEA weights.
    pub alpha: f64,
    /// PEA weight.
    pub beta: f64,
}

impl BenchSetting {
    /// The setting of `cfg` at batch `batch`.
    pub fn of(cfg: &Config, batch: usize) -> Self {
        let m = &cfg.model;
        BenchSetting {
            variant: cfg.variant.name().to_string(),
            batch,
            lens: m.lens(),
            dims: m.orig_dims(),
            d: m.d,
            heads: m.num_heads,
            layers: m.layers,
            kernels: m.kernels(),
            attention: m.attention,
            alpha: cfg.align.alpha,
            beta: cfg.align.beta,
        }
    }
}

/// The benchmark's config and batch size from its options.
pub fn resolve(args: &BenchArgs) -> Result<(Config, usize)> {
    let (preset, dims0, lens0, batch0) = match args.shape {
        BenchShape::Bench => (Preset::Mosi, [300, 74, 35], [50, 375, 500], 24),
        BenchShape::Small => (Preset::SynthSmall, [12, 6, 5], [10, 12, 14], 4),
    };
    let dims = match &args.dims {
        Some(s) => parse_lav("dims", s, true)?,
        None => dims0,
    };
    let lens = match &args.lens {
        Some(s) => parse_lav("lens", s, true)?,
        None => lens0,
    };
    let mut c = args.cfg.clone();
    c.variant = c.variant.or(Some(variant_of(args.model)));
    let mut cfg = c.build_for(preset, Task::Mosi, dims, lens, args.seed)?;
    let batch = args.batch.or(args.cfg.batch_size).unwrap_or(batch0);
    ensure!(batch >= 1, "--batch must be at least 1");
    cfg.train.batch_size = batch;
    Ok((cfg, batch))
}

fn variant_of(model: BenchModel) -> Variant {
    match model {
        BenchModel::Mult => Variant::Mult,
        BenchModel::Mica => Variant::Mica,
        BenchModel::Backbone => Variant::Backbone,
        BenchModel::Mmd => Variant::Mmd,
    }
}

/// Multiply-add FLOPs (2 per multiply-accumulate) of one forward pass of `cfg` at batch
/// `batch`, counting what PyTorch's `FlopCounterMode` counts: every matmul (convolution,
/// projections, attention scores and `p·v` over the full `T_q × T_k`, causal mask or
/// not, feed-forward, gates, head). Elementwise work is not counted. A training step is
/// taken as 3× the forward (the backward of a matmul is two matmuls).
pub fn forward_flops(cfg: &crate::model::config::ModelConfig, batch: usize) -> f64 {
    use crate::model::config::Arch;
    let b = batch as f64;
    let mm = |m: f64, k: f64, n: f64| 2.0 * m * k * n;
    let t = cfg.model_lens().map(|x| x as f64);
    let d = cfg.d as f64;
    let dims = cfg.orig_dims();
    let ks = cfg.kernels();
    // Front end: Conv1d (k taps) or identity when the input already has width d.
    let mut f: f64 = (0..3)
        .filter(|&m| dims[m] != cfg.d)
        .map(|m| mm(b * t[m], (ks[m] * dims[m]) as f64, d))
        .sum();
    // One pre-LN encoder layer of width e, tq queries over tk keys.
    let layer = |e: f64, tq: f64, tk: f64| {
        mm(b * tq, e, e) // q
            + 2.0 * mm(b * tk, e, e) // k, v
            + 2.0 * mm(b * tq, e, tk) // scores and p·v (all heads together)
            + mm(b * tq, e, e) // out_proj
            + 2.0 * mm(b * tq, e, 4.0 * e) // fc1, fc2
    };
    let pairs = [(0, [1, 2]), (1, [0, 2]), (2, [0, 1])];
    let n_self = cfg.layers.max(3) as f64;
    let l = cfg.layers as f64;
    match cfg.arch {
        Arch::Mult => {
            for (tt, ss) in pairs {
                for s in ss {
                    f += l * layer(d, t[tt], t[s]);
                }
                f += n_self * layer(2.0 * d, t[tt], t[tt]);
            }
            let c = 6.0 * d;
            f += mm(b, c, c) * 2.0 + mm(b, c, cfg.output_dim as f64);
        }
        Arch::Mica => {
            for (tt, ss) in pairs {
                for s in ss {
                    f += l * layer(d, t[tt], t[s]);
                }
                f += l * 2.0 * mm(b * t[tt], d, d); // gate W1, W2
                f += n_self * layer(d, t[tt], t[tt]);
            }
            let c = 3.0 * d;
            f += mm(b, c, c) * 2.0 + mm(b, c, cfg.output_dim as f64);
        }
        Arch::EfLstm | Arch::LfLstm | Arch::Raven | Arch::Mctn | Arch::Mfm | Arch::Gmfn => {
            return f64::NAN
        }
    }
    f
}

/// The benchmark's config and batch size.
pub fn bench_config(
    model: BenchModel,
    shape: BenchShape,
    attention: AttentionKernel,
) -> (Config, usize) {
    let variant = variant_of(model);
    let (preset, dims, lens, batch) = match shape {
        BenchShape::Bench => (Preset::Mosi, [300, 74, 35], [50, 375, 500], 24),
        BenchShape::Small => (Preset::SynthSmall, [12, 6, 5], [10, 12, 14], 4),
    };
    let mut cfg = Config::preset(preset, variant, Task::Mosi, dims, lens);
    if model == BenchModel::Mica {
        cfg.align.alpha = 0.8;
        cfg.align.beta = 0.5;
        cfg.align.tau = 0.25;
    }
    cfg.model.attention = attention;
    cfg.train.batch_size = batch;
    (cfg, batch)
}

/// Seconds each sample of [`random_batch`] spans when it carries element times.
pub const SYNTHETIC_SPAN_S: f32 = 10.0;

/// Seeded random inputs `[B, T, D]` with left padding (0 to a third of `T` zero frames
/// per sample and modality) and sentiment labels `[B, 1]`. When the model needs element
/// times (`time_bias > 0`, `positions = time`) each modality's real elements get synthetic times, evenly
/// spread over [`SYNTHETIC_SPAN_S`] seconds per sample (NaN for padding).
pub fn random_batch(cfg: &Config, batch: usize, seed: u64, device: &Device) -> Result<Batch> {
    use crate::model::config::Positions;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let m = &cfg.model;
    let mut modality = |t: usize, d: usize| -> Result<(Tensor, Tensor)> {
        let mut v = vec![0f32; batch * t * d];
        let mut times = vec![f32::NAN; batch * t];
        for b in 0..batch {
            let pad = rng.gen_range(0..=t / 3);
            for s in pad..t {
                for x in &mut v[(b * t + s) * d..(b * t + s + 1) * d] {
                    *x = rng.gen_range(-1.0..1.0);
                }
                let at = (s - pad) as f32 + 0.5;
                times[b * t + s] = at * SYNTHETIC_SPAN_S / (t - pad) as f32;
            }
        }
        Ok((
            Tensor::from_vec(v, (batch, t, d), device)?,
            Tensor::from_vec(times, (batch, t), device)?,
        ))
    };
    let (text, tl) = modality(m.l_len, m.orig_d_l)?;
    let (audio, ta) = modality(m.a_len, m.orig_d_a)?;
    let (vision, tv) = modality(m.v_len, m.orig_d_v)?;
    let inputs = Inputs {
        text,
        audio,
        vision,
        times: (m.time_bias > 0.0 || m.positions == Positions::Time).then_some([tl, ta, tv]),
    };
    let labels: Vec<f32> = (0..batch).map(|_| rng.gen_range(-3.0..3.0)).collect();
    Ok(Batch {
        inputs,
        labels: Tensor::from_vec(labels, (batch, 1), device)?,
        indices: (0..batch).collect(),
    })
}

/// Peak resident set size of this process in MiB (`VmHWM`), 0 when unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the benchmark.
pub fn run_bench(args: &BenchArgs) -> Result<BenchReport> {
    ensure!(args.steps >= 1, "--steps must be at least 1");
    let device = Device::Cpu;
    let (cfg, batch) = resolve(args)?;
    cfg.validate()?;
    let mut init = Initializer::new(args.seed, &device);
    let model = Model::new(&mut init, &cfg.model)?;
    let store = init.into_store();
    let data = random_batch(&cfg, batch, mix64(args.seed ^ 0xBE7C), &device)?;
    let mut adam = Adam::new(AdamConfig {
        lr: cfg.train.lr,
        ..Default::default()
    });
    let mut train_ms = Vec::with_capacity(args.steps);
    for step in 0..=args.steps {
        let t0 = Instant::now();
        let seed = mix64(args.seed ^ mix64(step as u64));
        let ctx = Ctx::train(seed);
        let losses = step_losses(&model, &cfg, &data, &ctx, mix64(seed))?;
        let mut grads = losses.total.backward()?;
        clip_grad_norm(&store, &mut grads, cfg.train.clip)?;
        adam.step(&store, &grads)?;
        if step > 0 {
            train_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut eval_ms = Vec::with_capacity(args.steps);
    for step in 0..=args.steps {
        let t0 = Instant::now();
        let out = model.forward(&Ctx::eval(), &data.inputs, ForwardOpts::default())?;
        // Force the result (candle is eager, but read it as a consumer would).
        let _: Vec<f32> = out.output.flatten_all()?.to_vec1()?;
        if step > 0 {
            eval_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(BenchReport {
        train_step_ms: median(train_ms),
        eval_batch_ms: median(eval_ms),
        peak_rss_mb: peak_rss_mb(),
        threads: candle_core::utils::get_num_threads(),
        model: args.model,
        config: BenchSetting::of(&cfg, batch),
    })
}

/// `mica bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let r = run_bench(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let c = &r.config;
        println!(
            "{} (d {}, {} heads, {} layers, kernels {:?}), batch {}, lens {:?}, dims {:?}, \
             attention {:?}, threads {}, {} timed steps",
            c.variant,
            c.d,
            c.heads,
            c.layers,
            c.kernels,
            c.batch,
            c.lens,
            c.dims,
            c.attention,
            r.threads,
            args.steps
        );
        let (cfg, batch) = resolve(args)?;
        let fwd = forward_flops(&cfg.model, batch);
        println!(
            "matmul FLOPs: {:.2} GFLOP per forward, {:.2} GFLOP per training step (3x)",
            fwd / 1e9,
            3.0 * fwd / 1e9
        );
        println!(
            "train step (median): {:.1} ms ({:.1} GFLOP/s)",
            r.train_step_ms,
            3.0 * fwd / r.train_step_ms / 1e6
        );
        println!(
            "eval batch (median): {:.1} ms ({:.1} GFLOP/s)",
            r.eval_batch_ms,
            fwd / r.eval_batch_ms / 1e6
        );
        println!("peak RSS: {:.0} MiB", r.peak_rss_mb);
    }
    if resolve(args)?.0.model.time_bias > 0.0 {
        eprintln!(
            "note: model.time_bias needs element times; the bench inputs carry synthetic ones \
             (each sample's real elements evenly spread over {SYNTHETIC_SPAN_S} s)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_runs_and_reports() {
        for model in [BenchModel::Mult, BenchModel::Mica] {
            let r = run_bench(&small_args(model)).unwrap();
            assert!(r.train_step_ms > 0.0 && r.eval_batch_ms > 0.0);
            assert!(r.peak_rss_mb > 0.0);
            assert!(r.threads >= 1);
            let v: serde_json::Value = serde_json::to_value(&r).unwrap();
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(
                keys.len(),
                6,
                "exactly train_step_ms, eval_batch_ms, peak_rss_mb, threads, model, config: {keys:?}"
            );
            assert_eq!(v["config"]["lens"], serde_json::json!([10, 12, 14]));
            assert_eq!(v["config"]["batch"], 4);
            assert_eq!(
                v["model"],
                if model == BenchModel::Mult {
                    "mult"
                } else {
                    "mica"
                }
            );
        }
    }

    fn small_args(model: BenchModel) -> BenchArgs {
        BenchArgs {
            model,
            shape: BenchShape::Small,
            lens: None,
            dims: None,
            steps: 1,
            json: true,
            seed: 1,
            batch: None,
            cfg: ConfigArgs {
                attention: Some(AttentionKernel::Fused),
                ..Default::default()
            },
        }
    }

    /// Any configuration: the official MulT defaults at short MOSI lengths, named in the
    /// report; bad shapes are refused by option name.
    #[test]
    fn any_configuration_resolves_and_is_named() {
        let mut a = small_args(BenchModel::Mult);
        a.shape = BenchShape::Bench;
        a.lens = Some("30,120,150".into());
        a.dims = Some("300,5,20".into());
        a.cfg.preset = Some(Preset::MultOfficial);
        let (c, b) = resolve(&a).unwrap();
        let s = BenchSetting::of(&c, b);
        assert_eq!((s.d, s.heads, s.layers, s.kernels), (30, 5, 5, [1, 1, 1]));
        assert_eq!(
            (s.lens, s.dims, s.batch),
            ([30, 120, 150], [300, 5, 20], 24)
        );
        assert_eq!(s.variant, "mult");
        a.cfg.d = Some(24);
        a.cfg.heads = Some(6);
        a.batch = Some(3);
        a.model = BenchModel::Mica;
        let (c, b) = resolve(&a).unwrap();
        let s = BenchSetting::of(&c, b);
        assert_eq!(
            (s.d, s.heads, s.batch, s.variant.as_str()),
            (24, 6, 3, "mica")
        );
        assert_eq!((s.alpha, s.beta), (0.8, 0.5));
        a.lens = Some("30,120".into());
        let e = resolve(&a).unwrap_err().to_string();
        assert_eq!(e, "--lens `30,120`: expected three positive integers L,A,V");
        a.lens = Some("30,x,5".into());
        assert!(resolve(&a)
            .unwrap_err()
            .to_string()
            .starts_with("--lens `30,x,5`"));
    }

    #[test]
    fn bench_shape_is_the_papers_mosi_setting() {
        let (c, b) = bench_config(BenchModel::Mica, BenchShape::Bench, AttentionKernel::Fused);
        let m = &c.model;
        assert_eq!(b, 24);
        assert_eq!((m.l_len, m.a_len, m.v_len), (50, 375, 500));
        assert_eq!((m.orig_d_l, m.orig_d_a, m.orig_d_v), (300, 74, 35));
        assert_eq!((m.d, m.num_heads, m.layers), (40, 8, 4));
        assert_eq!((c.align.alpha, c.align.beta, c.align.tau), (0.8, 0.5, 0.25));
        assert_eq!(m.attention, AttentionKernel::Fused);
        let (c, _) = bench_config(BenchModel::Mult, BenchShape::Bench, AttentionKernel::Plain);
        assert_eq!(c.model.arch, crate::model::config::Arch::Mult);
        assert_eq!((c.align.alpha, c.align.beta), (0.0, 0.0));
    }

    #[test]
    fn flop_count_matches_a_hand_count_of_a_tiny_mult() {
        let (mut c, _) = bench_config(BenchModel::Mult, BenchShape::Small, AttentionKernel::Plain);
        // d 16, 2 layers (memory encoders 3), lengths 10/12/14 after conv kernels.
        let m = &mut c.model;
        m.d = 2;
        m.layers = 1;
        (m.orig_d_l, m.orig_d_a, m.orig_d_v) = (2, 2, 2); // identity front end
        (m.l_len, m.a_len, m.v_len) = (1, 2, 3);
        m.output_dim = 1;
        let b = 1.0;
        let layer = |e: f64, tq: f64, tk: f64| {
            2.0 * (tq * e * e
                + 2.0 * tk * e * e
                + 2.0 * tq * e * tk
                + tq * e * e
                + 8.0 * tq * e * e)
        };
        let t = [1.0, 2.0, 3.0];
        let mut want = 0.0;
        for (tt, ss) in [(0, [1, 2]), (1, [0, 2]), (2, [0, 1])] {
            for s in ss {
                want += layer(2.0, t[tt], t[s]);
            }
            want += 3.0 * layer(4.0, t[tt], t[tt]);
        }
        want += b * 2.0 * (2.0 * 12.0 * 12.0 + 12.0);
        assert_eq!(forward_flops(&c.model, 1), want);
    }

    #[test]
    fn padding_is_left_and_zero() {
        let (c, b) = bench_config(BenchModel::Mult, BenchShape::Small, AttentionKernel::Plain);
        let batch = random_batch(&c, b, 3, &Device::Cpu).unwrap();
        let v: Vec<Vec<Vec<f32>>> = batch.inputs.audio.to_vec3().unwrap();
        for sample in &v {
            let first_real = sample.iter().position(|r| r.iter().any(|x| *x != 0.0));
            let first_real = first_real.expect("some real frames");
            assert!(sample[first_real..]
                .iter()
                .all(|r| r.iter().all(|x| *x != 0.0)));
        }
    }
}
