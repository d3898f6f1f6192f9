//! Models: the front end, attention, encoder, MulT, the MICA backbone and the LSTM
//! baselines.
pub mod attention;
pub mod baselines;
pub mod config;
pub mod ctx;
pub mod encoder;
pub mod front_end;
pub mod import;
pub mod io;
pub mod layers;
pub mod lstm;
pub mod memory;
pub mod mica;
pub mod mult;
pub mod params;
pub mod time_bias;

use anyhow::Result;
use config::{Arch, ModelConfig};
use ctx::Ctx;
use io::{ForwardOpts, ForwardOutput, Inputs};
use params::ParamSource;

/// Any mica model, behind one `forward`. (One model exists per run, so the size gap
/// between the variants costs nothing worth a box.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Model {
    /// The official MulT.
    Mult(mult::Mult),
    /// The MICA backbone.
    Mica(mica::Mica),
    /// The early-fusion LSTM baseline.
    EfLstm(lstm::EfLstm),
    /// The late-fusion LSTM baseline.
    LfLstm(lstm::LfLstm),
    /// The classic baselines of issue 20 (CTC-aligned LSTMs, RAVEN, MCTN, MFM, Graph-MFN).
    Baseline(Box<baselines::Baseline>),
}

impl Model {
    /// Builds the architecture `cfg.arch` from a parameter source.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        if baselines::Baseline::handles(cfg) {
            return Ok(Model::Baseline(Box::new(baselines::Baseline::new(p, cfg)?)));
        }
        Ok(match cfg.arch {
            Arch::Mult => Model::Mult(mult::Mult::new(p, cfg)?),
            Arch::Mica => Model::Mica(mica::Mica::new(p, cfg)?),
            Arch::EfLstm => Model::EfLstm(lstm::EfLstm::new(p, cfg)?),
            Arch::LfLstm => Model::LfLstm(lstm::LfLstm::new(p, cfg)?),
            Arch::Raven | Arch::Mctn | Arch::Mfm | Arch::Gmfn => {
                anyhow::bail!("{:?} is built by baselines::Baseline", cfg.arch)
            }
        })
    }

    /// Runs the model.
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        match self {
            Model::Mult(m) => m.forward(ctx, x, opts),
            Model::Mica(m) => m.forward(ctx, x, opts),
            Model::EfLstm(m) => m.forward(ctx, x, opts),
            Model::LfLstm(m) => m.forward(ctx, x, opts),
            Model::Baseline(m) => m.forward(ctx, x, opts),
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Mult(m) => &m.cfg,
            Model::Mica(m) => &m.cfg,
            Model::EfLstm(m) => &m.cfg,
            Model::LfLstm(m) => &m.cfg,
            Model::Baseline(m) => m.config(),
        }
    }
}
