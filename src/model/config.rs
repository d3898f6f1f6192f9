//! The model part of mica's config: one typed struct (serde) for MulT and MICA, plus the
//! reader of the official MulT hyper-parameter JSON used by `mica import-mult`.

use super::attention::AttentionKernel;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Which architecture to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The official MulT (crossmodal encoders, memory encoders of width 2d).
    Mult,
    /// MICA's backbone (per-layer bidirectional crossmodal blocks + gates).
    Mica,
    /// Early-fusion LSTM baseline (audio/vision resampled onto the text grid, one LSTM).
    #[serde(rename = "ef-lstm")]
    #[value(name = "ef-lstm")]
    EfLstm,
    /// Late-fusion LSTM baseline (one LSTM per modality, last states concatenated).
    #[serde(rename = "lf-lstm")]
    #[value(name = "lf-lstm")]
    LfLstm,
    /// RAVEN (Wang et al., AAAI 2019): nonverbal sub-networks shift each word's
    /// representation; word-level LSTM (`baselines::raven`).
    Raven,
    /// MCTN (Pham et al., AAAI 2019): hierarchical cyclic seq2seq translation from text
    /// (`baselines::mctn`).
    Mctn,
    /// MFM (Tsai et al., ICLR 2019): factorized multimodal representations, MFN encoder
    /// of the discriminative factor, LSTM decoders (`baselines::mfm`). Word-aligned input.
    Mfm,
    /// Graph-MFN (Zadeh et al., ACL 2018): MFN with the Dynamic Fusion Graph
    /// (`baselines::gmfn`). Word-aligned input.
    Gmfn,
}

impl Arch {
    /// The name in configs and on the command line (`ef-lstm`, `mfm`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mult => "mult",
            Arch::Mica => "mica",
            Arch::EfLstm => "ef-lstm",
            Arch::LfLstm => "lf-lstm",
            Arch::Raven => "raven",
            Arch::Mctn => "mctn",
            Arch::Mfm => "mfm",
            Arch::Gmfn => "gmfn",
        }
    }

    /// True for the recurrent baselines (no crossmodal attention, no conv front end).
    pub fn is_lstm(self) -> bool {
        matches!(self, Arch::EfLstm | Arch::LfLstm)
    }

    /// True for the architectures with crossmodal attention (MulT, MICA): the only ones
    /// alignment losses apply to.
    pub fn has_attention(self) -> bool {
        matches!(self, Arch::Mult | Arch::Mica)
    }
}

/// Default EF-LSTM hidden size.
fn default_lstm_hidden() -> usize {
    64
}

/// Default LF-LSTM hidden size per modality.
fn default_lstm_mod_hidden() -> usize {
    32
}

/// Default dropout on the LSTM baselines' last hidden states.
fn default_lstm_dropout() -> f32 {
    0.1
}

/// Partial modes of MulT: use only one target modality's encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Partial {
    /// All three targets (the default).
    #[default]
    All,
    /// Only the language target (`lonly`).
    Lonly,
    /// Only the acoustic target (`aonly`).
    Aonly,
    /// Only the visual target (`vonly`).
    Vonly,
}

impl Partial {
    /// Which targets (L, A, V) are used.
    pub fn targets(self) -> [bool; 3] {
        match self {
            Partial::All => [true; 3],
            Partial::Lonly => [true, false, false],
            Partial::Aonly => [false, true, false],
            Partial::Vonly => [false, false, true],
        }
    }
}

/// Where MICA's crossmodal blocks take keys/values from (spec/mica.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KvSource {
    /// The source's current `Z_s[i]` (all streams updated each layer).
    #[default]
    Layerwise,
    /// MulT's choice: always the source's layer-0 features `Z_s[0]`.
    Lowlevel,
}

/// Shape of MICA's gate bias (spec/mica.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GateBias {
    /// `b_t` is `[T_t, d]` (as the paper writes; needs fixed lengths).
    #[default]
    PerPosition,
    /// `b_t` is `[d]` (works for any length).
    Shared,
}

/// Every model hyper-parameter (MulT's names where MulT has them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Input feature dims (text, audio, vision).
    pub orig_d_l: usize,
    /// Acoustic input dim.
    pub orig_d_a: usize,
    /// Visual input dim.
    pub orig_d_v: usize,
    /// Padded input lengths (text, audio, vision); needed by MICA's per-position gate bias.
    pub l_len: usize,
    /// Acoustic input length.
    pub a_len: usize,
    /// Visual input length.
    pub v_len: usize,
    /// Common model width d (MulT's d_l = d_a = d_v).
    pub d: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Encoder depth (MulT: crossmodal layers; memory encoders get `max(layers, 3)`).
    pub layers: usize,
    /// Temporal conv kernel sizes (text, audio, vision); official MulT: 1.
    pub kernel_l: usize,
    /// Acoustic conv kernel.
    pub kernel_a: usize,
    /// Visual conv kernel.
    pub kernel_v: usize,
    /// Attention dropout for source L and the memory encoders.
    pub attn_dropout: f32,
    /// Attention dropout for source A.
    pub attn_dropout_a: f32,
    /// Attention dropout for source V.
    pub attn_dropout_v: f32,
    /// Dropout after `relu(fc1)`.
    pub relu_dropout: f32,
    /// Dropout on residual branches.
    pub res_dropout: f32,
    /// Dropout in the output head.
    pub out_dropout: f32,
    /// Dropout on the text input and on every encoder's input embedding.
    pub embed_dropout: f32,
    /// Causal-offset attention mask (official default: on).
    pub attn_mask: bool,
    /// Output width: 1 (sentiment, L1) or 8 (IEMOCAP, 4 x 2-way CE).
    pub output_dim: usize,
    /// MulT partial mode.
    #[serde(default)]
    pub partial: Partial,
    /// MICA: keys/values source.
    #[serde(default)]
    pub kv_source: KvSource,
    /// MICA: gate bias shape.
    #[serde(default)]
    pub gate_bias: GateBias,
    /// Attention implementation.
    #[serde(default)]
    pub attention: AttentionKernel,
    /// EF-LSTM: hidden size of its one LSTM.
    #[serde(default = "default_lstm_hidden")]
    pub lstm_hidden: usize,
    /// LF-LSTM: hidden size of each modality's LSTM (the head sees three times this).
    #[serde(default = "default_lstm_mod_hidden")]
    pub lstm_mod_hidden: usize,
    /// EF-/LF-LSTM: dropout on the last hidden state(s) before the head.
    #[serde(default = "default_lstm_dropout")]
    pub lstm_dropout: f32,
    /// What the sinusoidal positional embedding encodes: each modality's step index
    /// (MulT's, the default) or each element's real time (needs data with element times).
    #[serde(default)]
    pub positions: Positions,
    /// Seconds per position unit when `positions = time` (the table's fastest sinusoid has
    /// a period of 2π units: 63 ms at the default 0.01 s).
    #[serde(default = "default_time_step")]
    pub time_step: f32,
    /// Time-distance attention bias: 0 = off (MulT, the paper); σ > 0 adds
    /// `−(t_i − t_j)²/(2σ_h²)` to every attention score, head `h` with `σ_h = σ·2^h` seconds
    /// (see `model::time_bias`). Needs element times in the data.
    #[serde(default)]
    pub time_bias: f32,
    /// The classic baselines' options (CTC alignment, RAVEN, MCTN): `baselines.*`.
    #[serde(default)]
    pub baselines: super::baselines::config::BaselineConfig,
}

/// What the positional embedding of every encoder input encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// The step index in the padded sequence (MulT, the paper): step `t` gets row `t + 1`.
    /// Steps of different modalities with equal indices are NOT simultaneous.
    #[default]
    Index,
    /// The element's real time (midpoint of its interval, in `time_step` units), so that
    /// co-occurring elements of different modalities get the same position. Needs element
    /// times in the data (the built-in benchmark, `.csd` imports).
    Time,
}

fn default_time_step() -> f32 {
    0.01
}

impl ModelConfig {
    /// Input dims in (L, A, V) order.
    pub fn orig_dims(&self) -> [usize; 3] {
        [self.orig_d_l, self.orig_d_a, self.orig_d_v]
    }
    /// Input lengths in (L, A, V) order.
    pub fn lens(&self) -> [usize; 3] {
        [self.l_len, self.a_len, self.v_len]
    }
    /// Conv kernels in (L, A, V) order.
    pub fn kernels(&self) -> [usize; 3] {
        [self.kernel_l, self.kernel_a, self.kernel_v]
    }
    /// Sequence lengths after the front-end conv (`T - k + 1`, or `T` when skipped).
    pub fn model_lens(&self) -> [usize; 3] {
        let (dims, lens, ks) = (self.orig_dims(), self.lens(), self.kernels());
        [0, 1, 2].map(|m| {
            if dims[m] == self.d {
                lens[m]
            } else {
                lens[m] + 1 - ks[m]
            }
        })
    }
    /// Attention dropout of blocks whose keys come from modality `source` (0 = L, 1 = A, 2 = V).
    pub fn attn_dropout_for_source(&self, source: usize) -> f32 {
        [self.attn_dropout, self.attn_dropout_a, self.attn_dropout_v][source]
    }

    /// Checks the values make a buildable model; errors name the option.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.d > 0, "model option `d` must be positive");
        ensure!(
            self.num_heads > 0,
            "model option `num_heads` must be positive"
        );
        ensure!(
            self.d.is_multiple_of(self.num_heads),
            "model option `d` ({}) must be divisible by `num_heads` ({})",
            self.d,
            self.num_heads
        );
        ensure!(self.layers > 0, "model option `layers` must be positive");
        ensure!(
            self.output_dim == 1 || self.output_dim == 8,
            "model option `output_dim` must be 1 (sentiment) or 8 (IEMOCAP), got {}",
            self.output_dim
        );
        for (name, k, len) in [
            ("kernel_l", self.kernel_l, self.l_len),
            ("kernel_a", self.kernel_a, self.a_len),
            ("kernel_v", self.kernel_v, self.v_len),
        ] {
            ensure!(k >= 1, "model option `{name}` must be at least 1");
            ensure!(
                len >= k,
                "model option `{name}` ({k}) is longer than the sequence ({len})"
            );
        }
        for (name, p) in [
            ("attn_dropout", self.attn_dropout),
            ("attn_dropout_a", self.attn_dropout_a),
            ("attn_dropout_v", self.attn_dropout_v),
            ("relu_dropout", self.relu_dropout),
            ("res_dropout", self.res_dropout),
            ("out_dropout", self.out_dropout),
            ("embed_dropout", self.embed_dropout),
            ("lstm_dropout", self.lstm_dropout),
        ] {
            ensure!(
                (0.0..1.0).contains(&p),
                "model option `{name}` must be in [0, 1), got {p}"
            );
        }
        if self.arch != Arch::Mult {
            ensure!(
                self.partial == Partial::All,
                "partial modes exist only for the `mult` architecture"
            );
        }
        ensure!(
            self.time_step.is_finite() && self.time_step > 0.0,
            "model option `time_step` must be a positive number of seconds, got {}",
            self.time_step
        );
        ensure!(
            self.time_bias.is_finite() && self.time_bias >= 0.0,
            "model option `time_bias` must be 0 (off) or a positive number of seconds, got {}",
            self.time_bias
        );
        ensure!(
            self.lstm_hidden > 0,
            "model option `lstm_hidden` must be positive"
        );
        ensure!(
            self.lstm_mod_hidden > 0,
            "model option `lstm_mod_hidden` must be positive"
        );
        self.baselines.validate()?;
        // `align = none` (the data as given) needs one grid; LF-LSTM has none to share.
        if matches!(
            self.arch,
            Arch::Mfm | Arch::Gmfn | Arch::Raven | Arch::Mctn | Arch::EfLstm
        ) {
            super::baselines::config::check_aligned(
                self.arch.name(),
                self.baselines.align,
                self.lens(),
            )?;
        }
        // The parameters must fit in memory (an absurd d or layer count, also from a
        // checkpoint's config.json, is refused here instead of aborting an allocation).
        super::memory::ensure_fits(self, None)
    }
}

/// The official MulT hyper-parameters (`hyp_params` names), as in the fixtures' `config.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficialMultConfig {
    orig_d_l: usize,
    orig_d_a: usize,
    orig_d_v: usize,
    l_len: usize,
    a_len: usize,
    v_len: usize,
    d_l: usize,
    d_a: usize,
    d_v: usize,
    num_heads: usize,
    layers: usize,
    attn_dropout: f32,
    attn_dropout_a: f32,
    attn_dropout_v: f32,
    relu_dropout: f32,
    res_dropout: f32,
    out_dropout: f32,
    embed_dropout: f32,
    attn_mask: bool,
    output_dim: usize,
    partial: String,
    /// The seed the official model was created with (informational).
    #[serde(default)]
    #[allow(dead_code)]
    seed: Option<u64>,
}

impl OfficialMultConfig {
    /// Parses the official JSON: either the hyper-parameter object itself or a whole
    /// fixture `config.json` holding it under `"model"`. Unknown or missing keys are errors
    /// that name the key.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{origin}: not valid JSON"))?;
        let obj = match value.get("model") {
            Some(m) if m.is_object() => m.clone(),
            _ => value,
        };
        serde_json::from_value(obj).with_context(|| format!("{origin}: bad MulT config"))
    }

    /// Converts to mica's config; conv kernels come from the weights (official: 1).
    pub fn to_model_config(&self, kernels: [usize; 3]) -> Result<ModelConfig> {
        if self.d_l != self.d_a || self.d_l != self.d_v {
            bail!(
                "MulT needs d_l == d_a == d_v (its crossmodal encoders mix them), got {}/{}/{}",
                self.d_l,
                self.d_a,
                self.d_v
            );
        }
        let partial = match self.partial.as_str() {
            "" | "all" => Partial::All,
            "lonly" | "l" => Partial::Lonly,
            "aonly" | "a" => Partial::Aonly,
            "vonly" | "v" => Partial::Vonly,
            other => bail!("config key `partial`: unknown value `{other}` (expected \"\", lonly, aonly, vonly)"),
        };
        let cfg = ModelConfig {
            arch: Arch::Mult,
            orig_d_l: self.orig_d_l,
            orig_d_a: self.orig_d_a,
            orig_d_v: self.orig_d_v,
            l_len: self.l_len,
            a_len: self.a_len,
            v_len: self.v_len,
            d: self.d_l,
            num_heads: self.num_heads,
            layers: self.layers,
            kernel_l: kernels[0],
            kernel_a: kernels[1],
            kernel_v: kernels[2],
            attn_dropout: self.attn_dropout,
            attn_dropout_a: self.attn_dropout_a,
            attn_dropout_v: self.attn_dropout_v,
            relu_dropout: self.relu_dropout,
            res_dropout: self.res_dropout,
            out_dropout: self.out_dropout,
            embed_dropout: self.embed_dropout,
            attn_mask: self.attn_mask,
            output_dim: self.output_dim,
            partial,
            kv_source: KvSource::Lowlevel,
            gate_bias: GateBias::Shared,
            attention: AttentionKernel::Plain,
            lstm_hidden: default_lstm_hidden(),
            lstm_mod_hidden: default_lstm_mod_hidden(),
            lstm_dropout: default_lstm_dropout(),
            positions: Positions::Index,
            time_step: default_time_step(),
            time_bias: 0.0,
            baselines: Default::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
