//! MFM, the Multimodal Factorization Model (Tsai, Liang, Zadeh, Morency, Salakhutdinov:
//! "Learning Factorized Multimodal Representations", ICLR 2019), as its official code
//! builds and trains it (pliang279/factorized: `mfm_model.py` class `MFM`, the `train_mfm`
//! objective of `mfm_mosi.py`, hyper-parameters of its `best_acc` configuration); mica's
//! own code.
//!
//! On word-aligned input `x_l`, `x_a`, `x_v` `[B, T, D_m]` (`baselines.align`: as given,
//! nearest-time resampling or the CTC module, see [`super`]):
//! 1. **Generative (modality-specific) factors**: `z_m = fc1(LSTM_m(x_m)_T)` (an LSTM over
//!    the modality, its last state, a linear layer; sizes `mfm_zl`, `mfm_za`, `mfm_zv`).
//! 2. **Discriminative (multimodal) factor**: `z_y = Linear(MFN(x_l, x_a, x_v))`
//!    (`mfm_zy`), the MFN of [`super::mfn`].
//! 3. **Factor decoders**: `f_y = relu(zy_to_fy(z_y))`, `f_m = relu(zm_to_fm(z_m))`, each a
//!    two-layer network with dropout (`mfm_*_dropout`).
//! 4. **Generation**: `x̂_m = decoder_m([f_y; f_m])`, an LSTM cell of width
//!    `|f_y| + |f_m|` run `T` steps (first input `[f_y; f_m]`, then its own last state),
//!    every state mapped to `D_m` by a linear layer.
//! 5. **Prediction**: `ŷ = fy_to_y(f_y)`.
//!
//! **Objective** (the auxiliary loss, [`super::AUX_LOSS`], added to the task loss):
//! `Σ_m λ_m MSE(x̂_m, x_m) + λ_mmd Σ_{z ∈ {z_l, z_a, z_v, z_y}} MMD(z, N(0, I))` (+ the
//! CTC loss with `--align ctc`). As in the official code the MSE averages over every
//! element, padding steps included, and the MMD is the biased estimate with the kernel
//! `k(x, y) = exp(-mean_k (x_k - y_k)² / dim)` against as many standard-normal draws as
//! the batch has samples (mica draws them from its counter-based stream, so a seed fixes
//! them). The official task loss is L1, mica's regression loss. The official code runs
//! the LSTMs over padding steps; mica's encoders and MFN freeze their states there (as its
//! other LSTM baselines), so padding does not change a prediction.

use super::ctc::CtcPair;
use super::mfn::{Mfn, MfnSizes, Mlp2};
use super::{onto_text_grid, raw_valid, AUX_LOSS};
use crate::kernels::rng::uniform01;
use crate::model::config::ModelConfig;
use crate::model::ctx::Ctx;
use crate::model::layers::{relu, Linear};
use crate::model::lstm::{length_mask, real_lengths, Lstm};
use crate::model::mult::{check_shapes, ForwardOpts, ForwardOutput, Inputs};
use crate::model::params::ParamSource;
use anyhow::Result;
use candle_core::{Device, Tensor, D};
use std::collections::BTreeMap;

/// One modality's generative path: encoder, factor network, decoder.
#[derive(Debug, Clone)]
pub struct Generative {
    /// `encoder_m.lstm`: `D_m → z_m`.
    pub enc: Lstm,
    /// `encoder_m.fc1`: `z_m → z_m`.
    pub enc_fc: Linear,
    /// `zm_to_fm`: `z_m → f_m → f_m`.
    pub to_f: Mlp2,
    /// `decoder_m.lstm`: width `f_y + f_m`.
    pub dec: Lstm,
    /// `decoder_m.fc1`: `f_y + f_m → D_m`.
    pub dec_fc: Linear,
}

/// MFM (module docs).
#[derive(Debug, Clone)]
pub struct Mfm {
    /// Its configuration.
    pub cfg: ModelConfig,
    /// `ctc_a.*`, `ctc_v.*` when `baselines.align = ctc`.
    pub ctc: Option<CtcPair>,
    /// The text, audio and vision generative paths (`l`, `a`, `v` in the names).
    pub gen: [Generative; 3],
    /// `mfn_encoder.*`.
    pub mfn: Mfn,
    /// `last_to_zy_fc1`: MFN output → `z_y`.
    pub to_zy: Linear,
    /// `zy_to_fy`.
    pub zy_to_fy: Mlp2,
    /// `fy_to_y`: `f_y → f_y → output_dim`.
    pub fy_to_y: Mlp2,
}

impl Mfm {
    /// Builds the CTC modules (if any), the generative paths, the MFN and the heads.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let b = &cfg.baselines;
        let dims = cfg.orig_dims();
        let ctc = CtcPair::for_config(p, cfg)?;
        let z = [b.mfm_zl, b.mfm_za, b.mfm_zv];
        let f = [b.mfm_fl, b.mfm_fa, b.mfm_fv];
        let drop = [b.mfm_zl_dropout, b.mfm_za_dropout, b.mfm_zv_dropout];
        let mut gen = Vec::with_capacity(3);
        for (m, tag) in ["l", "a", "v"].into_iter().enumerate() {
            let w = b.mfm_fy + f[m];
            gen.push(Generative {
                enc: Lstm::new(p, &format!("encoder_{tag}.lstm"), dims[m], z[m])?,
                enc_fc: Linear::torch_default(p, &format!("encoder_{tag}.fc1"), z[m], z[m])?,
                to_f: Mlp2::new(p, &format!("z{tag}_to_f{tag}"), z[m], f[m], f[m], drop[m])?,
                dec: Lstm::new(p, &format!("decoder_{tag}.lstm"), w, w)?,
                dec_fc: Linear::torch_default(p, &format!("decoder_{tag}.fc1"), w, dims[m])?,
            });
        }
        let gen: [Generative; 3] = gen.try_into().expect("three modalities");
        let mfn = Mfn::new(p, "mfn_encoder.", dims, MfnSizes::of(b), None)?;
        let to_zy = Linear::torch_default(p, "last_to_zy_fc1", mfn.out_width(), b.mfm_zy)?;
        let zy_to_fy = Mlp2::new(
            p,
            "zy_to_fy",
            b.mfm_zy,
            b.mfm_fy,
            b.mfm_fy,
            b.mfm_zy_dropout,
        )?;
        let fy_to_y = Mlp2::new(
            p,
            "fy_to_y",
            b.mfm_fy,
            b.mfm_fy,
            cfg.output_dim,
            b.mfm_y_dropout,
        )?;
        Ok(Mfm {
            cfg: cfg.clone(),
            ctc,
            gen,
            mfn,
            to_zy,
            zy_to_fy,
            fy_to_y,
        })
    }

    /// The forward pass; intermediates always hold [`AUX_LOSS`] (reconstruction + MMD +
    /// CTC; in evaluation mode without `intermediates` only the CTC loss, the generative
    /// path being skipped), and with `intermediates` also `zy`, `recon_l|a|v`
    /// (`[B, T, D_m]`) and `mmd`.
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        check_shapes(&self.cfg, x)?;
        let (audio, vision, ctc) = onto_text_grid(&self.cfg, self.ctc.as_ref(), x)?;
        let xs = [&x.text, &audio, &vision];
        let (_, t, _) = x.text.dims3()?;
        let lens = real_lengths(&x.text)?;
        let mask = length_mask(&lens, t, x.text.device())?;
        let b = &self.cfg.baselines;
        let zy = self.to_zy.forward(&self.mfn.forward(ctx, xs, &mask)?)?;
        let fy = relu(&self.zy_to_fy.forward(ctx, &zy)?)?;
        let output = self.fy_to_y.forward(ctx, &fy)?;
        let mut inter = BTreeMap::new();
        let mut aux = match ctc {
            Some(l) => l,
            None => Tensor::zeros((), x.text.dtype(), x.text.device())?,
        };
        if !ctx.train && !opts.intermediates {
            // Evaluation reads the prediction only: the generative path (the auxiliary
            // loss's) is skipped; the prediction depends on f_y alone.
            inter.insert(AUX_LOSS.to_string(), aux);
            return Ok(ForwardOutput {
                output,
                last_hs: fy,
                blocks: Vec::new(),
                valid: raw_valid(x)?,
                intermediates: inter,
            });
        }
        let mut mmd = mmd_to_normal(ctx, &zy)?;
        let weights = [b.mfm_recon_l, b.mfm_recon_a, b.mfm_recon_v];
        for (m, (g, tag)) in self.gen.iter().zip(["l", "a", "v"]).enumerate() {
            let zm = g.enc_fc.forward(&g.enc.forward(xs[m], Some(&mask))?)?;
            mmd = (mmd + mmd_to_normal(ctx, &zm)?)?;
            let fm = relu(&g.to_f.forward(ctx, &zm)?)?;
            let recon = decode(g, &Tensor::cat(&[&fy, &fm], 1)?, t)?;
            let mse = (&recon - xs[m])?.sqr()?.mean_all()?;
            aux = (aux + (mse * weights[m])?)?;
            if opts.intermediates {
                inter.insert(format!("recon_{tag}"), recon);
            }
        }
        aux = (aux + (&mmd * b.mfm_mmd_weight)?)?;
        inter.insert(AUX_LOSS.to_string(), aux);
        if opts.intermediates {
            inter.insert("zy".into(), zy);
            inter.insert("mmd".into(), mmd);
        }
        Ok(ForwardOutput {
            output,
            last_hs: fy,
            blocks: Vec::new(),
            valid: raw_valid(x)?,
            intermediates: inter,
        })
    }
}

/// The official `decoderLSTM`: `T` steps of an LSTM cell from the zero state, input
/// `f` at the first step and its own previous state after, every state through `dec_fc`.
fn decode(g: &Generative, f: &Tensor, t: usize) -> Result<Tensor> {
    let mut h = f.zeros_like()?;
    let mut c = h.clone();
    let mut input = f.clone();
    let mut out = Vec::with_capacity(t);
    for _ in 0..t {
        (h, c) = g.dec.cell(&input, &h, &c)?;
        out.push(h.clone());
        input = h.clone();
    }
    g.dec_fc.forward(&Tensor::stack(&out, 1)?)
}

/// `n × d` standard-normal draws from the pass's counter-based stream (Box–Muller).
pub fn normal_draws(ctx: &Ctx, n: usize, d: usize, dev: &Device) -> Result<Tensor> {
    let stream = ctx.next_stream();
    // A seed distinct from the dropout draws' (same counter, different generator).
    let seed = ctx.seed ^ 0x6d66_6d5f_6e6f_726d;
    let v: Vec<f32> = (0..n * d)
        .map(|i| {
            let u1 = 1.0 - uniform01(seed, stream, 2 * i as u64) as f64;
            let u2 = uniform01(seed, stream, 2 * i as u64 + 1) as f64;
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, (n, d), dev)?)
}

/// The official `compute_kernel`: `exp(-mean_k (x_k - y_k)² / dim)` for every pair of rows
/// of `x` `[n, d]` and `y` `[m, d]`, `[n, m]`.
fn kernel(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let d = x.dim(1)? as f64;
    let xx = x.sqr()?.sum_keepdim(D::Minus1)?;
    let yy = y.sqr()?.sum_keepdim(D::Minus1)?.t()?;
    let xy = x.matmul(&y.t()?)?;
    let sq = (xx.broadcast_add(&yy)? - (xy * 2.0)?)?;
    Ok((sq * (-1.0 / (d * d)))?.exp()?)
}

/// The official `loss_MMD`: biased MMD between the rows of `z` `[n, d]` and `n` fresh
/// standard-normal draws.
pub fn mmd_to_normal(ctx: &Ctx, z: &Tensor) -> Result<Tensor> {
    let (n, d) = z.dims2()?;
    let g = normal_draws(ctx, n, d, z.device())?;
    let gg = kernel(&g, &g)?.mean_all()?;
    let zz = kernel(z, z)?.mean_all()?;
    let gz = kernel(&g, z)?.mean_all()?;
    Ok(((gg + zz)? - (gz * 2.0)?)?)
}
