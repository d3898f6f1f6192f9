//! Table 6 and Fig. 4 from a model's forward traces: per crossmodal block of one layer, the
//! proxy A-distance between its queries and keys, the correlation accuracy of its
//! head-averaged attention map, and single attention maps cropped to the real elements.
//!
//! Decisions (the paper leaves them open):
//! * Elements: only non-padding time steps count (the model's own `valid` flags, at its
//!   resolution after the temporal conv). Queries are the target's real steps, keys the
//!   source's real steps, pooled over all samples of the split.
//! * Element cap: each side of each block keeps at most `max_elements` vectors, drawn by
//!   seeded reservoir sampling (uniform over the split, independent of batching order).
//! * Conv front end: with kernel `k > 1` the model's time axis has `T - k + 1` steps and
//!   step `t` sees input frames `t..t+k-1`. Its interval is the HULL (earliest start,
//!   latest end) of the covered real frames' intervals (frames are contiguous, so this is
//!   their union up to jitter gaps); a step covering only padding has no interval.
//!   The effective kernel is read off the shapes (`T_in - T_model + 1`), so a modality
//!   whose conv is skipped (identity front end) maps frame for frame.
//! * Block averages are plain (macro) means over the blocks; the correlation-accuracy
//!   counts of every block are also kept for a pooled view.

use super::adistance::{proxy_a_distance, ADistanceConfig};
use super::corr_acc::{
    cooccurrence_from_intervals, correlation_accuracy, mean_over_heads, CorrAcc,
};
use crate::data::batch::{chunks, make_batch};
use crate::data::Split;
use crate::kernels::rng::mix64;
use crate::model::ctx::Ctx;
use crate::model::io::{BlockTrace, ForwardOpts, ForwardOutput};
use crate::model::Model;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Upper-case modality letters in mica's order (L, A, V).
pub const MOD_UPPER: [&str; 3] = ["L", "A", "V"];

/// Name of the block where `target` attends to `source`, written `SOURCE->TARGET`
/// (the paper's `Z_{s->t}`), e.g. `V->L`.
pub fn block_name(target: usize, source: usize) -> String {
    format!("{}->{}", MOD_UPPER[source], MOD_UPPER[target])
}

/// Parses one modality name: `l|a|v` or `text|audio|vision` (any case).
pub fn parse_modality(s: &str) -> Result<usize> {
    match s.trim().to_ascii_lowercase().as_str() {
        "l" | "text" | "language" => Ok(0),
        "a" | "audio" | "acoustic" => Ok(1),
        "v" | "vision" | "visual" | "video" => Ok(2),
        other => bail!("unknown modality `{other}`: expected L, A or V"),
    }
}

/// Parses a block `SOURCE->TARGET` (e.g. `V->L`: language attends to vision) into
/// `(target, source)`. `V-L` and `V:L` are accepted too (no shell quoting needed).
pub fn parse_block(s: &str) -> Result<(usize, usize)> {
    let (src, tgt) = s
        .split_once("->")
        .or_else(|| s.split_once(':'))
        .or_else(|| s.split_once('-'))
        .with_context(|| {
            format!("block `{s}`: expected SOURCE->TARGET, e.g. V->L (quoted in a shell) or V-L")
        })?;
    let (source, target) = (parse_modality(src)?, parse_modality(tgt)?);
    ensure!(
        source != target,
        "block `{s}`: source and target must differ (crossmodal blocks only)"
    );
    Ok((target, source))
}

/// Parses a user layer: `last` or a 1-based index; returns the 0-based index (`None` =
/// last).
pub fn parse_layer(s: &str) -> Result<Option<usize>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("last") {
        return Ok(None);
    }
    let n: usize = s
        .parse()
        .with_context(|| format!("layer `{s}`: expected a 1-based index or `last`"))?;
    ensure!(n >= 1, "layer `{s}`: layers are numbered from 1");
    Ok(Some(n - 1))
}

/// Maps one sample's frame intervals `[t, 2]` (NaN on padding) to a conv output of kernel
/// `k` (`[t - k + 1, 2]`): the hull of the covered real frames, NaN where none is real.
pub fn conv_intervals(iv: &[f32], k: usize) -> Vec<f32> {
    let t = iv.len() / 2;
    let k = k.max(1);
    let out_t = (t + 1).saturating_sub(k);
    let mut out = Vec::with_capacity(out_t * 2);
    for o in 0..out_t {
        let (mut s, mut e) = (f32::INFINITY, f32::NEG_INFINITY);
        for j in o..o + k {
            let (a, b) = (iv[2 * j], iv[2 * j + 1]);
            if a.is_nan() || b.is_nan() {
                continue;
            }
            s = s.min(a);
            e = e.max(b);
        }
        if s <= e {
            out.extend_from_slice(&[s, e]);
        } else {
            out.extend_from_slice(&[f32::NAN, f32::NAN]);
        }
    }
    out
}

/// Uniform sample of at most `cap` vectors of dimension `dim` from a stream (Algorithm
/// R, seeded), so memory stays bounded whatever the split size.
#[derive(Debug, Clone)]
pub struct Reservoir {
    dim: usize,
    cap: usize,
    seen: u64,
    data: Vec<f32>,
    rng: ChaCha8Rng,
}

impl Reservoir {
    /// An empty reservoir of `cap` vectors of `dim` values.
    pub fn new(dim: usize, cap: usize, seed: u64) -> Self {
        Reservoir {
            dim,
            cap,
            seen: 0,
            data: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Offers one vector (`dim` values).
    pub fn push(&mut self, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        self.seen += 1;
        if self.rows() < self.cap {
            self.data.extend_from_slice(v);
            return;
        }
        let j = self.rng.gen_range(0..self.seen);
        if (j as usize) < self.cap {
            let j = j as usize;
            self.data[j * self.dim..(j + 1) * self.dim].copy_from_slice(v);
        }
    }

    /// Vectors kept.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Vectors offered.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The kept vectors, row-major `[rows, dim]`.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
}

/// Row-major f32 values of a tensor.
fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.contiguous()?.flatten_all()?.to_vec1::<f32>()?)
}

/// Ground-truth intervals of the samples of one batch at the model's resolution:
/// `[batch][modality]` → `[T_model, 2]`.
pub type BatchIntervals = Vec<[Vec<f32>; 3]>;

/// Model-resolution intervals of the samples `idx` of `split` (None without intervals).
/// `t_model[m]` is the model's time length of modality `m`.
pub fn batch_intervals(
    split: &Split,
    idx: &[usize],
    t_model: [usize; 3],
) -> Option<BatchIntervals> {
    let iv = split.intervals.as_ref()?;
    let mods = split.modalities();
    Some(
        idx.iter()
            .map(|&i| {
                std::array::from_fn(|m| {
                    let t_in = mods[m].t;
                    let sample = &iv.per_modality[m][i * t_in * 2..(i + 1) * t_in * 2];
                    conv_intervals(sample, (t_in + 1).saturating_sub(t_model[m]))
                })
            })
            .collect(),
    )
}

/// Per-modality model time length of a forward over `b` samples.
fn model_lengths(out: &ForwardOutput, b: usize) -> [usize; 3] {
    std::array::from_fn(|m| out.valid[m].len() / b.max(1))
}

/// What one crossmodal block collects over a split.
#[derive(Debug, Clone)]
pub struct BlockAccum {
    /// Target modality.
    pub target: usize,
    /// Source modality.
    pub source: usize,
    /// Sampled real queries.
    pub queries: Reservoir,
    /// Sampled real keys.
    pub keys: Reservoir,
    /// Correlation-accuracy counts (when the split has intervals).
    pub corr: CorrAcc,
    /// Sharpness and scale of the attention (collapse diagnostics).
    pub stats: AttnStats,
}

/// Running sums of the attention's scale and sharpness over the real elements of a block:
/// squared query / key norms and, per head and real query row, the entropy of its
/// distribution over the real keys divided by `ln(real keys)` (1 = uniform).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttnStats {
    /// Sum of `||q||²` over real queries.
    pub q_sq: f64,
    /// Real queries counted.
    pub n_q: u64,
    /// Sum of `||k||²` over real keys.
    pub k_sq: f64,
    /// Real keys counted.
    pub n_k: u64,
    /// Sum of normalised row entropies.
    pub entropy: f64,
    /// Rows counted in `entropy` (head × real query rows with ≥ 2 real keys).
    pub rows: u64,
}

impl AttnStats {
    /// Root mean squared query norm.
    pub fn q_rms(&self) -> f64 {
        (self.q_sq / self.n_q.max(1) as f64).sqrt()
    }
    /// Root mean squared key norm.
    pub fn k_rms(&self) -> f64 {
        (self.k_sq / self.n_k.max(1) as f64).sqrt()
    }
    /// Mean normalised entropy of the attention rows (`NaN` when none were seen).
    pub fn entropy(&self) -> f64 {
        self.entropy / self.rows as f64
    }
}

/// Normalised entropy `H(p) / ln(n)` of one attention row restricted to the `keep` columns
/// (renormalised over them); `None` with fewer than two kept columns.
pub fn normalised_entropy(row: &[f32], keep: &[bool]) -> Option<f64> {
    let n = keep.iter().filter(|&&k| k).count();
    if n < 2 {
        return None;
    }
    let total: f64 = row
        .iter()
        .zip(keep)
        .filter(|(_, &k)| k)
        .map(|(&p, _)| f64::from(p))
        .sum();
    if total <= 0.0 {
        return None;
    }
    let h: f64 = row
        .iter()
        .zip(keep)
        .filter(|(&p, &k)| k && p > 0.0)
        .map(|(&p, _)| {
            let p = f64::from(p) / total;
            -p * p.ln()
        })
        .sum();
    Some(h / (n as f64).ln())
}

/// Adds one batch's trace of one block: real queries / keys into the reservoirs and,
/// with `truth` intervals and probabilities, the correlation-accuracy counts.
pub fn accumulate_block(
    acc: &mut BlockAccum,
    block: &BlockTrace,
    valid: &[Vec<bool>; 3],
    truth: Option<&BatchIntervals>,
) -> Result<()> {
    let (t, s) = (block.target, block.source);
    let (b, tq, e) = block.attn.q.dims3()?;
    let (_, tk, _) = block.attn.k.dims3()?;
    ensure!(
        valid[t].len() == b * tq && valid[s].len() == b * tk,
        "block {}: valid flags do not match the trace shapes",
        block_name(t, s)
    );
    let q = to_vec(&block.attn.q)?;
    let k = to_vec(&block.attn.k)?;
    let sq = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
    for row in 0..b * tq {
        if valid[t][row] {
            acc.queries.push(&q[row * e..(row + 1) * e]);
            acc.stats.q_sq += sq(&q[row * e..(row + 1) * e]);
            acc.stats.n_q += 1;
        }
    }
    for row in 0..b * tk {
        if valid[s][row] {
            acc.keys.push(&k[row * e..(row + 1) * e]);
            acc.stats.k_sq += sq(&k[row * e..(row + 1) * e]);
            acc.stats.n_k += 1;
        }
    }
    if let Some(probs) = &block.attn.probs {
        let p = to_vec(probs)?;
        let heads = probs.dim(1)?;
        for bi in 0..b {
            let keep = &valid[s][bi * tk..(bi + 1) * tk];
            for hi in 0..heads {
                for r in 0..tq {
                    if !valid[t][bi * tq + r] {
                        continue;
                    }
                    let o = ((bi * heads + hi) * tq + r) * tk;
                    if let Some(h) = normalised_entropy(&p[o..o + tk], keep) {
                        acc.stats.entropy += h;
                        acc.stats.rows += 1;
                    }
                }
            }
        }
    }
    if let (Some(truth), Some(probs)) = (truth, &block.attn.probs) {
        let heads = probs.dim(1)?;
        let p = to_vec(probs)?;
        let per = heads * tq * tk;
        for (bi, sample_iv) in truth.iter().enumerate().take(b) {
            let map = mean_over_heads(&p[bi * per..(bi + 1) * per], heads, tq, tk);
            let gt = cooccurrence_from_intervals(&sample_iv[t], &sample_iv[s]);
            acc.corr += correlation_accuracy(
                &map,
                tq,
                tk,
                &valid[t][bi * tq..(bi + 1) * tq],
                &valid[s][bi * tk..(bi + 1) * tk],
                &gt,
            )?;
        }
    }
    Ok(())
}

/// Settings of [`analyze_split`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalyzeOptions {
    /// 0-based layer to analyse (`None`: the last).
    pub layer: Option<usize>,
    /// At most this many queries and this many keys per block (seeded reservoir).
    pub max_elements: usize,
    /// Seed of the element sampling and of the A-distance split.
    pub seed: u64,
    /// Forward batch size.
    pub batch_size: usize,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            layer: None,
            max_elements: 2000,
            seed: 0,
            batch_size: 32,
        }
    }
}

/// Table 6 numbers of one crossmodal block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockAlignment {
    /// `SOURCE->TARGET`, e.g. `V->L`.
    pub block: String,
    /// Target modality letter.
    pub target: String,
    /// Source modality letter.
    pub source: String,
    /// Proxy A-distance between the block's queries and keys (raw, not clamped).
    pub a_distance: f64,
    /// Test error of the domain classifier behind the A-distance.
    pub domain_test_error: f64,
    /// Real queries seen / used.
    pub queries_seen: u64,
    /// Real keys seen.
    pub keys_seen: u64,
    /// Queries used (after the cap).
    pub queries_used: usize,
    /// Keys used (after the cap).
    pub keys_used: usize,
    /// Correlation accuracy (share of counted target rows whose most-attended real
    /// source step truly co-occurs); `None` without intervals.
    pub corr_acc: Option<f64>,
    /// What a uniform map would score on the same rows; `None` without intervals.
    pub corr_chance: Option<f64>,
    /// The raw counts; `None` without intervals.
    pub corr_counts: Option<CorrAcc>,
    /// Root mean squared norm of the real queries (unscaled, all heads).
    #[serde(default)]
    pub q_rms: f64,
    /// Root mean squared norm of the real keys.
    #[serde(default)]
    pub k_rms: f64,
    /// Mean normalised entropy of the attention rows over the real keys, per head
    /// (1 = uniform attention, 0 = one key).
    #[serde(default)]
    pub attn_entropy: f64,
}

/// Table 6 of one model on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitAlignment {
    /// 1-based layer analysed.
    pub layer: usize,
    /// Layers of the model.
    pub layers: usize,
    /// Samples of the split.
    pub samples: usize,
    /// Per block, in the model's block order.
    pub blocks: Vec<BlockAlignment>,
    /// Mean A-distance over the blocks.
    pub mean_a_distance: f64,
    /// Mean correlation accuracy over the blocks; `None` without intervals.
    pub mean_corr_acc: Option<f64>,
    /// Mean chance level over the blocks; `None` without intervals.
    pub mean_corr_chance: Option<f64>,
    /// Why Corr. Acc is missing, when it is.
    pub corr_acc_unavailable: Option<String>,
    /// Mean over the blocks of the normalised attention entropy (1 = uniform).
    #[serde(default)]
    pub mean_attn_entropy: f64,
    /// Mean over the blocks of the rms query and key norms.
    #[serde(default)]
    pub mean_qk_rms: [f64; 2],
}

/// The explanation printed and saved when the data has no ground-truth timing.
pub const NO_INTERVALS: &str = "Corr. Acc unavailable: the data has no element intervals \
(ground-truth timing of words and frames), so which source elements truly co-occur with a \
target element is unknown. Use the built-in synthetic benchmark or a mica-format dataset \
with *_intervals arrays (`mica synth --format mica` and `mica import-csd` keep them; MulT/MMSA \
pickles have none).";

/// Plain mean of the finite values (`None` when there are none).
fn finite_mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v.filter(|x| x.is_finite()) {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// The layer to use among `layers` (0-based `want`, `None` = last), or an error.
fn pick_layer(want: Option<usize>, layers: usize) -> Result<usize> {
    ensure!(layers > 0, "the model has no crossmodal blocks to analyse");
    match want {
        None => Ok(layers - 1),
        Some(l) if l < layers => Ok(l),
        Some(l) => bail!("layer {} requested, the model has {layers}", l + 1),
    }
}

/// Number of layers in a forward's traces.
fn trace_layers(out: &ForwardOutput) -> usize {
    out.blocks.iter().map(|b| b.layer + 1).max().unwrap_or(0)
}

/// Table 6 of `model` on `split`: per crossmodal block of the chosen layer, A-distance
/// between real queries and keys, and (with intervals) correlation accuracy.
pub fn analyze_split(
    model: &Model,
    split: &Split,
    opts: &AnalyzeOptions,
) -> Result<SplitAlignment> {
    let device = Device::Cpu;
    let with_truth = split.intervals.is_some();
    // Probabilities are recomputed only for the analysed layer's blocks (below): every
    // block of every layer would hold `[B, h, T_q, T_k]` maps at once.
    let fopts = ForwardOpts {
        trace: true,
        probs: false,
        intermediates: false,
    };
    let order: Vec<usize> = (0..split.len()).collect();
    let mut accs: Vec<BlockAccum> = Vec::new();
    let mut layer_info: Option<(usize, usize)> = None;
    for idx in chunks(&order, opts.batch_size.max(1)) {
        let batch = make_batch(split, &idx, &device)?;
        let out = model.forward(&Ctx::eval(), &batch.inputs, fopts)?;
        let (layer, _) = match layer_info {
            Some(v) => v,
            None => {
                let layers = trace_layers(&out);
                let v = (pick_layer(opts.layer, layers)?, layers);
                layer_info = Some(v);
                v
            }
        };
        let truth = batch_intervals(split, &idx, model_lengths(&out, idx.len()));
        for block in out.blocks.iter().filter(|b| b.layer == layer) {
            let pos = accs
                .iter()
                .position(|a| a.target == block.target && a.source == block.source);
            let pos = match pos {
                Some(p) => p,
                None => {
                    let e = block.attn.q.dim(2)?;
                    let n = accs.len() as u64;
                    let seed = |side: u64| mix64(opts.seed ^ mix64(n * 2 + side + 1));
                    accs.push(BlockAccum {
                        target: block.target,
                        source: block.source,
                        queries: Reservoir::new(e, opts.max_elements, seed(0)),
                        keys: Reservoir::new(e, opts.max_elements, seed(1)),
                        corr: CorrAcc::default(),
                        stats: AttnStats::default(),
                    });
                    accs.len() - 1
                }
            };
            let block = BlockTrace {
                attn: block.attn.clone().with_probs()?,
                ..block.clone()
            };
            accumulate_block(&mut accs[pos], &block, &out.valid, truth.as_ref())?;
        }
    }
    let (layer, layers) = layer_info.context("the split is empty")?;
    let blocks = accs
        .iter()
        .enumerate()
        .map(|(i, a)| finish_block(a, with_truth, opts.seed ^ i as u64))
        .collect::<Result<Vec<_>>>()?;
    Ok(summarise(
        blocks,
        layer + 1,
        layers,
        split.len(),
        with_truth,
    ))
}

/// Turns one block's accumulator into its Table 6 numbers.
fn finish_block(a: &BlockAccum, with_truth: bool, seed: u64) -> Result<BlockAlignment> {
    let name = block_name(a.target, a.source);
    let cfg = ADistanceConfig {
        seed,
        ..Default::default()
    };
    let ad = proxy_a_distance(a.queries.data(), a.keys.data(), a.queries.dim, &cfg)
        .with_context(|| format!("A-distance of block {name}"))?;
    Ok(BlockAlignment {
        block: name,
        target: MOD_UPPER[a.target].into(),
        source: MOD_UPPER[a.source].into(),
        a_distance: ad.a_distance,
        domain_test_error: ad.test_error,
        queries_seen: a.queries.seen(),
        keys_seen: a.keys.seen(),
        queries_used: a.queries.rows(),
        keys_used: a.keys.rows(),
        corr_acc: with_truth.then(|| a.corr.accuracy()),
        corr_chance: with_truth.then(|| a.corr.chance_level()),
        corr_counts: with_truth.then_some(a.corr),
        q_rms: a.stats.q_rms(),
        k_rms: a.stats.k_rms(),
        attn_entropy: a.stats.entropy(),
    })
}

/// Block means and the unavailability note.
fn summarise(
    blocks: Vec<BlockAlignment>,
    layer: usize,
    layers: usize,
    samples: usize,
    with_truth: bool,
) -> SplitAlignment {
    let mean_a_distance = finite_mean(blocks.iter().map(|b| b.a_distance)).unwrap_or(f64::NAN);
    let mean_attn_entropy = finite_mean(blocks.iter().map(|b| b.attn_entropy)).unwrap_or(f64::NAN);
    let mean_qk_rms = [
        finite_mean(blocks.iter().map(|b| b.q_rms)).unwrap_or(f64::NAN),
        finite_mean(blocks.iter().map(|b| b.k_rms)).unwrap_or(f64::NAN),
    ];
    let (mean_corr_acc, mean_corr_chance) = if with_truth {
        (
            finite_mean(blocks.iter().filter_map(|b| b.corr_acc)),
            finite_mean(blocks.iter().filter_map(|b| b.corr_chance)),
        )
    } else {
        (None, None)
    };
    SplitAlignment {
        layer,
        layers,
        samples,
        blocks,
        mean_a_distance,
        mean_corr_acc,
        mean_corr_chance,
        corr_acc_unavailable: (!with_truth).then(|| NO_INTERVALS.to_string()),
        mean_attn_entropy,
        mean_qk_rms,
    }
}

/// One sample's attention map of one block and layer, cropped to the real steps.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMap {
    /// Real target steps (rows), in time order.
    pub rows: usize,
    /// Real source steps (columns), in time order.
    pub cols: usize,
    /// `[rows, cols]` probabilities (one head, or the mean over heads).
    pub matrix: Vec<f32>,
    /// `[rows, cols]` ground-truth co-occurrence, when the data has intervals.
    pub truth: Option<Vec<bool>>,
    /// This sample's correlation accuracy on this map, when the data has intervals.
    pub corr: Option<CorrAcc>,
    /// Layers of the model.
    pub layers: usize,
    /// 1-based layer shown.
    pub layer: usize,
    /// Heads of the block.
    pub heads: usize,
}

/// Keeps the rows and columns of a row-major `[r, c]` matrix flagged in `keep_r` / `keep_c`.
pub fn crop<T: Copy>(m: &[T], c: usize, keep_r: &[bool], keep_c: &[bool]) -> Vec<T> {
    let mut out = Vec::new();
    for (i, _) in keep_r.iter().enumerate().filter(|(_, &k)| k) {
        for (j, _) in keep_c.iter().enumerate().filter(|(_, &k)| k) {
            out.push(m[i * c + j]);
        }
    }
    out
}

/// The attention map of sample `sample` of `split`, block `target` ← `source`, 0-based
/// `layer` (`None`: last), head `head` (`None`: mean over heads), cropped to real steps.
pub fn attention_map(
    model: &Model,
    split: &Split,
    sample: usize,
    layer: Option<usize>,
    target: usize,
    source: usize,
    head: Option<usize>,
) -> Result<AttentionMap> {
    ensure!(
        sample < split.len(),
        "sample {sample} out of range (the split has {})",
        split.len()
    );
    let batch = make_batch(split, &[sample], &Device::Cpu)?;
    let fopts = ForwardOpts {
        trace: true,
        probs: true,
        intermediates: false,
    };
    let out = model.forward(&Ctx::eval(), &batch.inputs, fopts)?;
    let layers = trace_layers(&out);
    let layer = pick_layer(layer, layers)?;
    let block = out
        .blocks
        .iter()
        .find(|b| b.layer == layer && b.target == target && b.source == source)
        .with_context(|| format!("the model has no block {}", block_name(target, source)))?;
    let probs = block
        .attn
        .probs
        .as_ref()
        .context("the model kept no probabilities")?;
    let (_, heads, tq, tk) = probs.dims4()?;
    let p = to_vec(probs)?;
    let map = match head {
        None => mean_over_heads(&p, heads, tq, tk),
        Some(h) => {
            ensure!(
                h < heads,
                "head {h} out of range (the block has {heads} heads, 0-based)"
            );
            p[h * tq * tk..(h + 1) * tq * tk].to_vec()
        }
    };
    let (vt, vs) = (&out.valid[target], &out.valid[source]);
    let truth = batch_intervals(split, &[sample], model_lengths(&out, 1))
        .map(|iv| cooccurrence_from_intervals(&iv[0][target], &iv[0][source]));
    let corr = match &truth {
        Some(gt) => Some(correlation_accuracy(&map, tq, tk, vt, vs, gt)?),
        None => None,
    };
    Ok(AttentionMap {
        rows: vt.iter().filter(|&&v| v).count(),
        cols: vs.iter().filter(|&&v| v).count(),
        matrix: crop(&map, tk, vt, vs),
        truth: truth.map(|gt| crop(&gt, tk, vt, vs)),
        corr,
        layers,
        layer: layer + 1,
        heads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::encoder::AttnTrace;

    #[test]
    fn conv_intervals_take_the_hull_and_skip_padding() {
        let nan = f32::NAN;
        // 4 frames, the first is padding.
        let iv = [nan, nan, 0.0, 1.0, 1.0, 2.0, 2.1, 3.0];
        assert_eq!(conv_intervals(&iv, 1)[2..], iv[2..]);
        let c = conv_intervals(&iv, 2);
        assert_eq!(c.len(), 6);
        assert_eq!(&c[..4], &[0.0, 1.0, 0.0, 2.0]);
        assert_eq!(&c[4..], &[1.0, 3.0]);
        let all_pad = conv_intervals(&[nan, nan, nan, nan], 2);
        assert!(all_pad.iter().all(|x| x.is_nan()) && all_pad.len() == 2);
        assert!(conv_intervals(&iv, 5).is_empty());
    }

    #[test]
    fn reservoir_is_bounded_seeded_and_keeps_everything_under_the_cap() {
        let mut small = Reservoir::new(2, 10, 1);
        for i in 0..4 {
            small.push(&[i as f32, 0.0]);
        }
        assert_eq!(small.rows(), 4);
        assert_eq!(small.data()[6], 3.0);
        let fill = |seed| {
            let mut r = Reservoir::new(1, 50, seed);
            for i in 0..1000 {
                r.push(&[i as f32]);
            }
            r
        };
        let (a, b) = (fill(7), fill(7));
        assert_eq!(a.rows(), 50);
        assert_eq!(a.seen(), 1000);
        assert_eq!(a.data(), b.data());
        // Roughly uniform: the kept values are spread over the stream, not the first 50.
        let late = a.data().iter().filter(|&&v| v >= 500.0).count();
        assert!(
            (10..=40).contains(&late),
            "{late} of 50 from the second half"
        );
    }

    #[test]
    fn block_parsing_and_names_round_trip() {
        assert_eq!(parse_block("V->L").unwrap(), (0, 2));
        assert_eq!(parse_block("audio->vision").unwrap(), (2, 1));
        assert_eq!(parse_block("V-L").unwrap(), (0, 2));
        assert_eq!(parse_block("a:v").unwrap(), (2, 1));
        assert_eq!(block_name(0, 2), "V->L");
        assert!(parse_block("L->L").is_err());
        assert!(parse_block("VL").is_err());
        assert_eq!(parse_layer("last").unwrap(), None);
        assert_eq!(parse_layer("4").unwrap(), Some(3));
        assert!(parse_layer("0").is_err());
    }

    fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A hand-made trace of one V->L block (1 sample, 2 heads, 3 text steps of which the
    /// first is padding, 4 vision steps of which the first is padding), with known
    /// intervals: correlation accuracy must count exactly the rows whose head-averaged
    /// argmax over REAL columns lies in the true co-occurrence set.
    #[test]
    fn correlation_accuracy_from_a_hand_made_trace() {
        let nan = f32::NAN;
        // Text steps: pad, [0, 1), [1, 2). Vision steps: pad, [0, .5), [.5, 1.5), [1.5, 2).
        let text_iv = vec![nan, nan, 0.0, 1.0, 1.0, 2.0];
        let vis_iv = vec![nan, nan, 0.0, 0.5, 0.5, 1.5, 1.5, 2.0];
        let truth: BatchIntervals = vec![[text_iv, vec![], vis_iv]];
        // Head maps [3, 4]. Padding column 0 holds the largest weight in row 1 of head 0
        // (it must not win). Row 1 (text [0,1)) truth = {1, 2}; row 2 (text [1,2)) = {2, 3}.
        let h0 = [
            0.25, 0.25, 0.25, 0.25, //
            0.9, 0.0, 0.1, 0.0, // real argmax col 2 -> hit
            0.0, 0.8, 0.1, 0.1, // argmax col 1 -> miss
        ];
        let h1 = [
            0.25, 0.25, 0.25, 0.25, //
            0.9, 0.0, 0.1, 0.0, //
            0.0, 0.6, 0.2, 0.2, // mean row 2: col1 .7, col2 .15, col3 .15 -> miss
        ];
        let probs = t([h0, h1].concat(), &[1, 2, 3, 4]);
        let block = BlockTrace {
            target: 0,
            source: 2,
            layer: 0,
            attn: AttnTrace {
                q: t((0..3 * 2).map(|x| x as f32).collect(), &[1, 3, 2]),
                k: t((0..4 * 2).map(|x| -(x as f32)).collect(), &[1, 4, 2]),
                probs: Some(probs),
                heads: None,
            },
        };
        let valid = [
            vec![false, true, true],
            vec![],
            vec![false, true, true, true],
        ];
        let mut acc = BlockAccum {
            target: 0,
            source: 2,
            queries: Reservoir::new(2, 100, 0),
            keys: Reservoir::new(2, 100, 0),
            corr: CorrAcc::default(),
            stats: AttnStats::default(),
        };
        accumulate_block(&mut acc, &block, &valid, Some(&truth)).unwrap();
        assert_eq!(acc.corr.count, 2);
        assert_eq!(acc.corr.skipped, 0);
        assert!((acc.corr.accuracy() - 0.5).abs() < 1e-12);
        // Chance: each counted row has 2 true of 3 real columns.
        assert!((acc.corr.chance_level() - 2.0 / 3.0).abs() < 1e-12);
        // Only real elements reach the A-distance pools.
        assert_eq!(acc.queries.data(), &[2.0, 3.0, 4.0, 5.0]);
        assert_eq!(acc.keys.rows(), 3);
        assert_eq!(acc.keys.data()[..2], [-2.0, -3.0]);

        // Flip row 2 of both heads towards column 3: both rows hit.
        let mut h0b = h0;
        h0b[8..].copy_from_slice(&[0.0, 0.1, 0.1, 0.8]);
        let block2 = BlockTrace {
            attn: AttnTrace {
                probs: Some(t([h0b, h0b].concat(), &[1, 2, 3, 4])),
                ..block.attn.clone()
            },
            ..block.clone()
        };
        let mut acc2 = BlockAccum {
            corr: CorrAcc::default(),
            ..acc.clone()
        };
        accumulate_block(&mut acc2, &block2, &valid, Some(&truth)).unwrap();
        assert_eq!(acc2.corr.accuracy(), 1.0);
    }

    /// Correlation accuracy and element counts of [`analyze_split`] on a real (randomly
    /// initialised) MICA model equal a direct computation from one forward's traces:
    /// naive argmax of the head-averaged map over the real source steps, truth from the
    /// synthetic generator's own co-occurrence lists (`synth::cooccur`, on the input time
    /// axis; a vision step of the kernel-3 conv co-occurs when any covered frame does).
    #[test]
    fn split_analysis_matches_a_direct_computation_on_model_traces() {
        use crate::config::{Config, Preset, Task, Variant};
        use crate::data::synth::{cooccur, generate, SynthConfig, SynthSize};
        use crate::model::params::Initializer;
        let mut sc = SynthConfig::preset(SynthSize::Small, 3);
        (sc.n_train, sc.n_valid, sc.n_test) = (2, 2, 5);
        let ds = generate(&sc).unwrap();
        let split = &ds.splits["test"];
        let dims = [split.text.d, split.audio.d, split.vision.d];
        let lens = [split.text.t, split.audio.t, split.vision.t];
        let mut cfg = Config::preset(Preset::SynthSmall, Variant::Mica, Task::Mosi, dims, lens);
        cfg.model.d = 8; // audio has 8 features: its front end is the identity
        cfg.model.num_heads = 2;
        cfg.model.kernel_v = 3;
        let mut init = Initializer::new(1, &Device::Cpu);
        let model = Model::new(&mut init, &cfg.model).unwrap();
        let opts = AnalyzeOptions {
            max_elements: 100_000,
            batch_size: 2,
            ..Default::default()
        };
        let res = analyze_split(&model, split, &opts).unwrap();
        assert_eq!((res.layer, res.layers, res.blocks.len()), (2, 2, 6));

        let n = split.len();
        let all: Vec<usize> = (0..n).collect();
        let batch = make_batch(split, &all, &Device::Cpu).unwrap();
        let fo = ForwardOpts {
            trace: true,
            probs: true,
            intermediates: false,
        };
        let out = model.forward(&Ctx::eval(), &batch.inputs, fo).unwrap();
        let t_model = model_lengths(&out, n);
        assert_eq!(t_model, [lens[0], lens[1], lens[2] - 2]);
        let ks = [1, 1, 3];
        let iv = split.intervals.as_ref().unwrap();
        let mods = split.modalities();
        for block in out.blocks.iter().filter(|b| b.layer == 1) {
            let (t, s) = (block.target, block.source);
            let (tq, tk) = (t_model[t], t_model[s]);
            let p = to_vec(block.attn.probs.as_ref().unwrap()).unwrap();
            let heads = cfg.model.num_heads;
            let (mut hits, mut count, mut queries) = (0f64, 0usize, 0u64);
            for b in 0..n {
                // Real steps = steps covering a real frame (left padding).
                let real = |m: usize, step: usize| step + ks[m] > mods[m].t - mods[m].lengths[b];
                let sets = cooccur(iv, n, t, s, b);
                for i in (0..tq).filter(|&i| real(t, i)) {
                    queries += 1;
                    // Target modalities here have kernel 1 except vision.
                    let covered: Vec<usize> = (i..i + ks[t]).collect();
                    let in_truth = |j: usize| {
                        covered
                            .iter()
                            .any(|&ti| sets[ti].iter().any(|&sj| sj >= j && sj < j + ks[s]))
                    };
                    if !(0..tk).any(|j| real(s, j) && in_truth(j)) {
                        continue;
                    }
                    // Head mean in the same summation order as `mean_over_heads`.
                    let w = |j: usize| {
                        let mut acc = 0.0f32;
                        for h in 0..heads {
                            acc += p[((b * heads + h) * tq + i) * tk + j];
                        }
                        acc / heads as f32
                    };
                    let reals: Vec<usize> = (0..tk).filter(|&j| real(s, j)).collect();
                    let max = reals
                        .iter()
                        .map(|&j| w(j))
                        .fold(f32::NEG_INFINITY, f32::max);
                    // Ties (e.g. the causal-offset mask zeroing every real source of an
                    // early row) score the share of tied maxima in the truth set.
                    let tied: Vec<usize> = reals.into_iter().filter(|&j| w(j) == max).collect();
                    count += 1;
                    hits +=
                        tied.iter().filter(|&&j| in_truth(j)).count() as f64 / tied.len() as f64;
                }
            }
            let name = block_name(t, s);
            let got = res.blocks.iter().find(|x| x.block == name).unwrap();
            let c = got.corr_counts.unwrap();
            assert_eq!(got.queries_seen, queries, "{name}");
            assert_eq!(c.count, count, "{name}");
            assert!((c.hits - hits).abs() < 1e-9, "{name}: {} vs {hits}", c.hits);
            assert!(count > 0, "{name}");
        }
        assert!(res.mean_corr_acc.is_some() && res.corr_acc_unavailable.is_none());
    }

    #[test]
    fn crop_keeps_flagged_rows_and_columns() {
        let m: Vec<u32> = (0..12).collect();
        let c = crop(&m, 4, &[false, true, true], &[false, true, false, true]);
        assert_eq!(c, vec![5, 7, 9, 11]);
    }

    #[test]
    fn normalised_entropy_is_one_for_uniform_and_zero_for_one_key() {
        let keep = [false, true, true, true, true];
        let u = normalised_entropy(&[0.0, 0.25, 0.25, 0.25, 0.25], &keep).unwrap();
        assert!((u - 1.0).abs() < 1e-12, "{u}");
        assert_eq!(
            normalised_entropy(&[0.0, 0.0, 1.0, 0.0, 0.0], &keep),
            Some(0.0)
        );
        // Mass on a padding column is ignored and the rest renormalised.
        let r = normalised_entropy(&[0.5, 0.125, 0.125, 0.125, 0.125], &keep).unwrap();
        assert!((r - 1.0).abs() < 1e-12, "{r}");
        // Two of four keys with equal mass: ln 2 / ln 4 = 0.5.
        let h = normalised_entropy(&[0.0, 0.5, 0.5, 0.0, 0.0], &keep).unwrap();
        assert!((h - 0.5).abs() < 1e-12, "{h}");
        assert_eq!(normalised_entropy(&[1.0, 0.0], &[true, false]), None);
    }

    #[test]
    fn summary_means_and_unavailability() {
        let b = |a: f64, c: Option<f64>| BlockAlignment {
            block: "A->L".into(),
            target: "L".into(),
            source: "A".into(),
            a_distance: a,
            domain_test_error: 0.0,
            queries_seen: 1,
            keys_seen: 1,
            queries_used: 1,
            keys_used: 1,
            corr_acc: c,
            corr_chance: c.map(|_| 0.25),
            corr_counts: None,
            q_rms: 2.0,
            k_rms: a,
            attn_entropy: 0.5 * a,
        };
        let s = summarise(vec![b(1.0, Some(0.5)), b(2.0, Some(1.0))], 2, 2, 10, true);
        assert_eq!(s.mean_a_distance, 1.5);
        assert_eq!(s.mean_corr_acc, Some(0.75));
        assert_eq!(s.mean_attn_entropy, 0.75);
        assert_eq!(s.mean_qk_rms, [2.0, 1.5]);
        assert!(s.corr_acc_unavailable.is_none());
        let s = summarise(vec![b(1.0, None)], 1, 1, 10, false);
        assert_eq!(s.mean_corr_acc, None);
        assert!(s.corr_acc_unavailable.unwrap().contains("unavailable"));
    }
}
