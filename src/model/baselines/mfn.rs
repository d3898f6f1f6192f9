//! The Memory Fusion Network (Zadeh, Liang, Mazumder, Poria, Cambria, Morency: "Memory
//! Fusion Network for Multi-view Sequential Learning", AAAI 2018), the encoder of MFM's
//! discriminative factor and, with the Dynamic Fusion Graph in place of its attention,
//! Graph-MFN's body. Follows the `MFN` class of the official MFM code
//! (pliang279/factorized `mfm_model.py`, the same as pliang279/MFN); mica's own code.
//!
//! On word-aligned input `x_l`, `x_a`, `x_v` `[B, T, D_m]`, for every step `t`:
//! 1. **System of LSTHMs**: one LSTM cell per modality, `(h_m, c_m) ← LSTM_m(x_m[t], (h_m, c_m))`.
//! 2. **Delta-memory attention** (MFN): `c* = [c_{t-1}; c_t]` over the three modalities
//!    (previous cells then new cells), `a = softmax(att1(c*))`, fused `= a ⊙ c*`.
//!    **Dynamic Fusion Graph** (Graph-MFN, [`super::dfg`]): fused `= T` of the graph whose
//!    singleton vertices are the modalities' delta-memories `[c_{m,t-1}; c_{m,t}]`.
//! 3. **Multi-view gated memory**: `ĉ = tanh(att2(fused))`, `γ1 = σ(gamma1([fused; u]))`,
//!    `γ2 = σ(gamma2([fused; u]))`, `u ← γ1 ⊙ u + γ2 ⊙ ĉ`.
//!
//! Output: `[h_l; h_a; h_v; u]` after the last step. Every network is
//! `fc2(dropout(relu(fc1(·))))` ([`Mlp2`]). Left padding: the mask freezes every state
//! (LSTHM and memory) on padding steps, so a padded sample gives its unpadded result.

use super::dfg::Dfg;
use crate::model::ctx::Ctx;
use crate::model::layers::{softmax_last, Linear};
use crate::model::lstm::Lstm;
use crate::model::params::ParamSource;
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::ops::sigmoid;

/// `fc2(dropout(relu(fc1(x))))`, the official code's two-layer networks.
#[derive(Debug, Clone)]
pub struct Mlp2 {
    /// `{name}_fc1`.
    pub fc1: Linear,
    /// `{name}_fc2`.
    pub fc2: Linear,
    /// Dropout between them.
    pub dropout: f32,
}

impl Mlp2 {
    /// Builds `{name}_fc1` (`din → hidden`) and `{name}_fc2` (`hidden → dout`).
    pub fn new(
        p: &mut dyn ParamSource,
        name: &str,
        din: usize,
        hidden: usize,
        dout: usize,
        dropout: f32,
    ) -> Result<Self> {
        Ok(Mlp2 {
            fc1: Linear::torch_default(p, &format!("{name}_fc1"), din, hidden)?,
            fc2: Linear::torch_default(p, &format!("{name}_fc2"), hidden, dout)?,
            dropout,
        })
    }

    /// Applies the network to `[..., din]`.
    pub fn forward(&self, ctx: &Ctx, x: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&self.fc1.forward_relu_dropout(ctx, x, self.dropout)?)
    }
}

/// How an MFN fuses the modalities' delta-memories at each step.
#[derive(Debug, Clone)]
pub enum Fusion {
    /// MFN's delta-memory attention network (`att1`).
    Dman(Mlp2),
    /// Graph-MFN's Dynamic Fusion Graph.
    Dfg(Dfg),
}

/// Sizes of an MFN (`model.baselines.mfn_*`).
#[derive(Debug, Clone, Copy)]
pub struct MfnSizes {
    /// LSTHM hidden sizes (text, audio, vision).
    pub hidden: [usize; 3],
    /// Memory size.
    pub mem: usize,
    /// Hidden units of `att1` and `att2`.
    pub att_hidden: usize,
    /// Their dropout.
    pub att_dropout: f32,
    /// Hidden units of `gamma1` and `gamma2`.
    pub gamma_hidden: usize,
    /// Their dropout.
    pub gamma_dropout: f32,
}

impl MfnSizes {
    /// The sizes a config gives.
    pub fn of(b: &super::config::BaselineConfig) -> Self {
        MfnSizes {
            hidden: [b.mfn_hidden_l, b.mfn_hidden_a, b.mfn_hidden_v],
            mem: b.mfn_mem,
            att_hidden: b.mfn_att_hidden,
            att_dropout: b.mfn_att_dropout,
            gamma_hidden: b.mfn_gamma_hidden,
            gamma_dropout: b.mfn_gamma_dropout,
        }
    }
}

/// A Memory Fusion Network (module docs).
#[derive(Debug, Clone)]
pub struct Mfn {
    /// `{prefix}lstm_l`, `lstm_a`, `lstm_v`: the LSTHMs.
    pub lstms: [Lstm; 3],
    /// `{prefix}att1` or `{prefix}dfg`.
    pub fusion: Fusion,
    /// `{prefix}att2`: the memory proposal network.
    pub att2: Mlp2,
    /// `{prefix}gamma1`: the retain gate network.
    pub gamma1: Mlp2,
    /// `{prefix}gamma2`: the update gate network.
    pub gamma2: Mlp2,
    /// Its sizes.
    pub sizes: MfnSizes,
}

impl Mfn {
    /// Builds an MFN over inputs of widths `dims`; `dfg = Some((node, hidden))` replaces
    /// the delta-memory attention by a Dynamic Fusion Graph (Graph-MFN).
    pub fn new(
        p: &mut dyn ParamSource,
        prefix: &str,
        dims: [usize; 3],
        s: MfnSizes,
        dfg: Option<(usize, usize)>,
    ) -> Result<Self> {
        let h = s.hidden;
        let lstms = [
            Lstm::new(p, &format!("{prefix}lstm_l"), dims[0], h[0])?,
            Lstm::new(p, &format!("{prefix}lstm_a"), dims[1], h[1])?,
            Lstm::new(p, &format!("{prefix}lstm_v"), dims[2], h[2])?,
        ];
        let cstar = 2 * h.iter().sum::<usize>();
        let (fusion, fused) = match dfg {
            None => (
                Fusion::Dman(Mlp2::new(
                    p,
                    &format!("{prefix}att1"),
                    cstar,
                    s.att_hidden,
                    cstar,
                    s.att_dropout,
                )?),
                cstar,
            ),
            Some((node, hidden)) => (
                Fusion::Dfg(Dfg::new(
                    p,
                    &format!("{prefix}dfg"),
                    h.map(|x| 2 * x),
                    node,
                    hidden,
                )?),
                node,
            ),
        };
        let mut net = |name: &str, din: usize, hidden: usize, drop: f32| {
            Mlp2::new(p, &format!("{prefix}{name}"), din, hidden, s.mem, drop)
        };
        let att2 = net("att2", fused, s.att_hidden, s.att_dropout)?;
        let gamma1 = net("gamma1", fused + s.mem, s.gamma_hidden, s.gamma_dropout)?;
        let gamma2 = net("gamma2", fused + s.mem, s.gamma_hidden, s.gamma_dropout)?;
        Ok(Mfn {
            lstms,
            fusion,
            att2,
            gamma1,
            gamma2,
            sizes: s,
        })
    }

    /// Width of the output `[h_l; h_a; h_v; u]`.
    pub fn out_width(&self) -> usize {
        self.sizes.hidden.iter().sum::<usize>() + self.sizes.mem
    }

    /// Runs over `xs` (`[B, T, D_m]`, one grid) with `mask` `[B, T]` (1 = real step);
    /// returns `[h_l; h_a; h_v; u]` `[B, out_width]`.
    pub fn forward(&self, ctx: &Ctx, xs: [&Tensor; 3], mask: &Tensor) -> Result<Tensor> {
        let (b, t, _) = xs[0].dims3()?;
        let (dtype, dev) = (xs[0].dtype(), xs[0].device());
        let mut xg = Vec::with_capacity(3);
        let mut h = Vec::with_capacity(3);
        for (lstm, x) in self.lstms.iter().zip(xs) {
            xg.push(lstm.input_gates(x)?);
            h.push(Tensor::zeros((b, lstm.hidden), dtype, dev)?);
        }
        let mut c = h.clone();
        let mut mem = Tensor::zeros((b, self.sizes.mem), dtype, dev)?;
        // old + m (new - old): exactly old where m = 0, exactly new where m = 1.
        let keep = |old: &Tensor, new: &Tensor, m: &Tensor| -> Result<Tensor> {
            Ok((old + (new - old)?.broadcast_mul(m)?)?)
        };
        for s in 0..t {
            let m = mask.narrow(1, s, 1)?;
            let mut hn = Vec::with_capacity(3);
            let mut cn = Vec::with_capacity(3);
            for k in 0..3 {
                let g = xg[k].narrow(1, s, 1)?.squeeze(1)?;
                let (hk, ck) = self.lstms[k].step(&g, &h[k], &c[k])?;
                hn.push(hk);
                cn.push(ck);
            }
            let fused = match &self.fusion {
                Fusion::Dman(att1) => {
                    let cstar = Tensor::cat(&[&c[0], &c[1], &c[2], &cn[0], &cn[1], &cn[2]], 1)?;
                    (softmax_last(&att1.forward(ctx, &cstar)?)? * cstar)?
                }
                Fusion::Dfg(g) => {
                    let v = (0..3)
                        .map(|k| Ok(Tensor::cat(&[&c[k], &cn[k]], 1)?))
                        .collect::<Result<Vec<_>>>()?;
                    g.forward(ctx, [&v[0], &v[1], &v[2]])?.0
                }
            };
            let chat = self.att2.forward(ctx, &fused)?.tanh()?;
            let both = Tensor::cat(&[&fused, &mem], 1)?;
            let g1 = sigmoid(&self.gamma1.forward(ctx, &both)?)?;
            let g2 = sigmoid(&self.gamma2.forward(ctx, &both)?)?;
            let mem_new = ((g1 * &mem)? + (g2 * chat)?)?;
            mem = keep(&mem, &mem_new, &m)?;
            for k in 0..3 {
                h[k] = keep(&h[k], &hn[k], &m)?;
                c[k] = keep(&c[k], &cn[k], &m)?;
            }
        }
        Ok(Tensor::cat(&[&h[0], &h[1], &h[2], &mem], 1)?)
    }
}
