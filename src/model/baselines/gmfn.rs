//! Graph-MFN, the Graph Memory Fusion Network (Zadeh, Liang, Vanbriesen, Poria, Tong,
//! Cambria, Chen, Morency: "Multimodal Language Analysis in the Wild: CMU-MOSEI Dataset and
//! Interpretable Dynamic Fusion Graph", ACL 2018, Section 4): MFN's System of LSTHMs and
//! Multi-view Gated Memory with the Dynamic Fusion Graph in place of the delta-memory
//! attention. The graph follows the CMU-MultimodalSDK's `DynamicFusionGraph`
//! (A2Zadeh/CMU-MultimodalSDK, `mmsdk/mmmodelsdk/fusion/dynamic_fusion_graph/model.py`,
//! [`super::dfg`]), the MFN around it the official MFN code (pliang279/MFN, the same class
//! in pliang279/factorized `mfm_model.py`, [`super::mfn`]); mica's own code.
//!
//! At every word the graph's singleton vertices are the three modalities' delta-memories
//! `[c_{m,t-1}; c_{m,t}]` (what MFN's attention reads), its top vertex `T` replaces the
//! attended delta-memory in the memory update (`ĉ = tanh(att2(T))`, gates over `[T; u]`).
//! Prediction: `out(dropout(relu(out_fc1([h_l; h_a; h_v; u]))))` after the last word
//! (`mfn_out_hidden`, `mfn_out_dropout`). Sizes: `model.baselines.mfn_*` and `gmfn_node`,
//! `gmfn_dfg_hidden`. Word-aligned input as MFM ([`super`]); the CTC loss (with
//! `--align ctc`) is the auxiliary loss.

use super::ctc::CtcPair;
use super::mfn::{Mfn, MfnSizes, Mlp2};
use super::{onto_text_grid, raw_valid, AUX_LOSS};
use crate::model::config::ModelConfig;
use crate::model::ctx::Ctx;
use crate::model::lstm::{length_mask, real_lengths};
use crate::model::mult::{check_shapes, ForwardOpts, ForwardOutput, Inputs};
use crate::model::params::ParamSource;
use anyhow::Result;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Graph-MFN (module docs).
#[derive(Debug, Clone)]
pub struct Gmfn {
    /// Its configuration.
    pub cfg: ModelConfig,
    /// `ctc_a.*`, `ctc_v.*` when `baselines.align = ctc`.
    pub ctc: Option<CtcPair>,
    /// The MFN with its Dynamic Fusion Graph (`lstm_*`, `dfg.*`, `att2`, `gamma*`).
    pub mfn: Mfn,
    /// `out_fc1`, `out_fc2`.
    pub out: Mlp2,
}

impl Gmfn {
    /// Builds the CTC modules (if any), the MFN with its graph, and the output network.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let b = &cfg.baselines;
        let dims = cfg.orig_dims();
        let ctc = CtcPair::for_config(p, cfg)?;
        let mfn = Mfn::new(
            p,
            "",
            dims,
            MfnSizes::of(b),
            Some((b.gmfn_node, b.gmfn_dfg_hidden)),
        )?;
        let out = Mlp2::new(
            p,
            "out",
            mfn.out_width(),
            b.mfn_out_hidden,
            cfg.output_dim,
            b.mfn_out_dropout,
        )?;
        Ok(Gmfn {
            cfg: cfg.clone(),
            ctc,
            mfn,
            out,
        })
    }

    /// The forward pass; intermediates always hold [`AUX_LOSS`] (the CTC loss, or 0), and
    /// with `intermediates` also `mfn` (`[h_l; h_a; h_v; u]`).
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        check_shapes(&self.cfg, x)?;
        let (audio, vision, ctc) = onto_text_grid(&self.cfg, self.ctc.as_ref(), x)?;
        let (_, t, _) = x.text.dims3()?;
        let lens = real_lengths(&x.text)?;
        let mask = length_mask(&lens, t, x.text.device())?;
        let last = self.mfn.forward(ctx, [&x.text, &audio, &vision], &mask)?;
        let output = self.out.forward(ctx, &last)?;
        let mut inter = BTreeMap::new();
        let aux = match ctc {
            Some(l) => l,
            None => Tensor::zeros((), x.text.dtype(), x.text.device())?,
        };
        inter.insert(AUX_LOSS.to_string(), aux);
        if opts.intermediates {
            inter.insert("mfn".into(), last.clone());
        }
        Ok(ForwardOutput {
            output,
            last_hs: last,
            blocks: Vec::new(),
            valid: raw_valid(x)?,
            intermediates: inter,
        })
    }
}
