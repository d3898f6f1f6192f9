//! PEA on top of the fused attention (spec/kernels.md, "PEA on top of the fused kernel"):
//! the top-τ masks, their propagation and the masked distance with its gradient, computed
//! per (sample, head) without ever building a `[B, h, T_t, T_s]` tensor.
//!
//! Per task (one sample and head, spread over candle's threads):
//! 1. Recompute the task's probabilities `p_ij = exp(q_i·k_j − L_i)` from the attention's
//!    scaled queries, keys and row log-sum-exp (the very kernel of
//!    [`crate::kernels::attention::fused_probs`]) into a per-thread tile of `T_t × T_s` floats
//!    (≤ 1 MB at 500 × 500; the spec's alternative, a second recomputation, trades this
//!    tile for another sweep of `exp`).
//! 2. Threshold γ = the `k`-th largest eligible probability (query and key not padding,
//!    `p > 0`; `k` from [`keep_count`]): a 2048-bin histogram on the top bits
//!    of the f32 pattern (monotone for positive floats) finds the bin that holds the
//!    `k`-th value, and an exact selection inside that bin gives γ. Every eligible entry
//!    `≥ γ` is selected (ties at γ all kept) — the same rule as the composed `align::pea::top_tau_mask`.
//! 3. One sweep over the rows: the new mask row `V = W | V_prev` as f32 0/1 (and as bits
//!    for the next layer), then with unscaled `q̃ = q·sqrt(hd)`:
//!    `c_i = Σ_j V_ij`, `K_i = Σ_j V_ij k_j`, `r_j += V_ij`, `Q_j += V_ij q̃_i`,
//!    `d = Σ_i (c_i |q̃_i|² − 2 q̃_i·K_i) + Σ_j r_j |k_j|²`,
//!    `∂d/∂q̃_i = 2 (c_i q̃_i − K_i)`, `∂d/∂k_j = 2 (r_j k_j − Q_j)`.
//!
//! With AVX-512 the task runs in [`avx512`] instead: the same probabilities (bit for bit),
//! the same γ found by sampled brackets and vector passes instead of the histogram, and the
//! column sums of step 3 as one small GEMM over the 0/1 mask tile.
//!
//! The distance is returned as a scalar candle op whose backward scales the gradients
//! computed in the same sweep (the masks carry no gradient, so `d` is a quadratic form
//! with a fixed mask and this gradient is exact).

use super::precomputed::scalar_with_grads;
use crate::kernels::attention::{task_probs, Dims};
use crate::kernels::par::{for_each_task, transpose};
use crate::kernels::simd::{self, dot16 as dot, simd_dispatch, Simd};
use anyhow::{ensure, Result};
use candle_core::utils::get_num_threads;
use candle_core::Tensor;

/// Number of entries PEA keeps in one map: `ceil(τ · T_t · T_s)` over the valid lengths,
/// capped by the number of eligible (non-padding, probability > 0) entries.
pub fn keep_count(tau: f64, valid_q: usize, valid_k: usize, eligible: usize) -> usize {
    let k = (tau * (valid_q * valid_k) as f64).ceil() as usize;
    k.min(eligible)
}

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Histogram bins: `bits >> 20` of a positive f32 (sign 0, 8 exponent bits, 3 mantissa
/// bits) is below 2048.
const BINS: usize = 2048;

/// The propagated mask of one block as bits: `[B·h][T_t][words]`, `words = ceil(T_s/64)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskBits {
    /// Map shape.
    pub dims: Dims,
    /// `u64` words per row.
    pub words: usize,
    /// The bits.
    pub bits: Vec<u64>,
}

impl MaskBits {
    /// An empty mask of `dims`.
    pub fn empty(dims: Dims) -> Self {
        let words = dims.tk.div_ceil(64);
        MaskBits {
            dims,
            words,
            bits: vec![0; dims.tasks() * dims.tq * words],
        }
    }
    /// Bit `(task, i, j)`.
    #[inline]
    pub fn get(&self, task: usize, i: usize, j: usize) -> bool {
        let w = self.bits[(task * self.dims.tq + i) * self.words + j / 64];
        (w >> (j % 64)) & 1 == 1
    }
    /// Number of set bits.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// As booleans in `[B, h, T_t, T_s]` order.
    pub fn to_bools(&self) -> Vec<bool> {
        let d = self.dims;
        let mut out = Vec::with_capacity(d.tasks() * d.tq * d.tk);
        for t in 0..d.tasks() {
            for i in 0..d.tq {
                for j in 0..d.tk {
                    out.push(self.get(t, i, j));
                }
            }
        }
        out
    }
}

/// Result of PEA on one block.
#[derive(Debug, Clone)]
pub struct PeaBlock {
    /// `V` of this block (propagated when a previous mask was given).
    pub mask: MaskBits,
    /// Selected pairs (`|V|`).
    pub selected: usize,
    /// `Σ V_ij |q̃_i − k_j|²` over samples and heads (f64 accumulation).
    pub distance: f64,
    /// `∂d/∂qh` w.r.t. the SCALED queries `[B, h, T_t, hd]`.
    pub dq: Vec<f32>,
    /// `∂d/∂kh` `[B, h, T_s, hd]`.
    pub dk: Vec<f32>,
}

/// Inputs of [`pea_block`] besides the tensors.
#[derive(Debug, Clone, Copy)]
pub struct PeaParams<'a> {
    /// Causal-offset mask of the attention.
    pub causal: bool,
    /// Query (target) padding flags `[B·T_t]` (true = real element).
    pub valid_q: &'a [bool],
    /// Key (source) padding flags `[B·T_s]`.
    pub valid_k: &'a [bool],
    /// Share of entries kept per map.
    pub tau: f64,
    /// `V[l-1]` of the same block, for propagation.
    pub prev: Option<&'a MaskBits>,
}

/// PEA of one block from the attention's scaled queries `qh` `[B, h, T_t, hd]`, keys `kh`
/// `[B, h, T_s, hd]` and row log-sum-exp `lse` `[B, h, T_t]` (all read as constants).
pub fn pea_block(qh: &Tensor, kh: &Tensor, lse: &Tensor, p: PeaParams) -> Result<PeaBlock> {
    let (b, h, tq, hd) = qh.dims4()?;
    let (bk, hk, tk, hdk) = kh.dims4()?;
    ensure!(
        (b, h, hd) == (bk, hk, hdk) && lse.dims3()? == (b, h, tq),
        "PEA: q {:?}, k {:?}, lse {:?} do not fit together",
        qh.dims(),
        kh.dims(),
        lse.dims()
    );
    ensure!(
        p.valid_q.len() == b * tq && p.valid_k.len() == b * tk,
        "PEA: padding flags do not fit the maps"
    );
    let dims = Dims { b, h, tq, tk, hd };
    if let Some(prev) = p.prev {
        ensure!(prev.dims == dims, "PEA: propagated mask of another shape");
    }
    let read = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.detach().flatten_all()?.to_vec1()?) };
    let (qv, kv, lv) = (read(qh)?, read(kh)?, read(lse)?);
    let mut mask = MaskBits::empty(dims);
    let words = mask.words;
    let mut dq = vec![0f32; dims.tasks() * tq * hd];
    let mut dk = vec![0f32; dims.tasks() * tk * hd];
    let mut per_task = vec![(0f64, 0usize); dims.tasks()];
    let level = simd::current();
    let items: Vec<_> = mask
        .bits
        .chunks_mut(tq * words)
        .zip(dq.chunks_mut(tq * hd))
        .zip(dk.chunks_mut(tk * hd))
        .zip(per_task.iter_mut())
        .enumerate()
        .collect();
    for_each_task(get_num_threads(), items, |(t, (((bits, dq), dk), out))| {
        let bi = t / h;
        let task = TaskIn {
            dims,
            causal: p.causal,
            q: &qv[t * tq * hd..(t + 1) * tq * hd],
            k: &kv[t * tk * hd..(t + 1) * tk * hd],
            lse: &lv[t * tq..(t + 1) * tq],
            vq: &p.valid_q[bi * tq..(bi + 1) * tq],
            vk: &p.valid_k[bi * tk..(bi + 1) * tk],
            tau: p.tau,
            prev: p
                .prev
                .map(|m| &m.bits[t * tq * words..(t + 1) * tq * words]),
        };
        *out = run_task(level, &task, bits, dq, dk);
    });
    Ok(PeaBlock {
        mask,
        selected: per_task.iter().map(|x| x.1).sum(),
        distance: per_task.iter().map(|x| x.0).sum(),
        dq,
        dk,
    })
}

/// The distance and gradients of [`pea_block`] for a GIVEN mask instead of a selection:
/// `Σ mask_ij |q̃_i − k_j|²` over samples and heads, from the scaled queries `qh`
/// `[B, h, T_t, hd]` and keys `kh` `[B, h, T_s, hd]`. `mask` may come from maps of
/// another head width (the time bias's extended heads select the pairs, the distance is
/// that of the heads' own columns, see `align::pea_loss`); its sample, head and map
/// shape must be those of `qh` and `kh`. No probabilities are computed.
pub fn masked_distance(qh: &Tensor, kh: &Tensor, mask: &MaskBits) -> Result<PeaBlock> {
    let (b, h, tq, hd) = qh.dims4()?;
    let tk = kh.dim(2)?;
    let md = mask.dims;
    ensure!(
        (md.b, md.h, md.tq, md.tk) == (b, h, tq, tk),
        "PEA: a mask of maps {:?} for queries {:?} and keys {:?}",
        (md.b, md.h, md.tq, md.tk),
        qh.dims(),
        kh.dims()
    );
    let mask = MaskBits {
        dims: Dims { hd, ..md },
        words: mask.words,
        bits: mask.bits.clone(),
    };
    let lse = Tensor::zeros((b, h, tq), candle_core::DType::F32, qh.device())?;
    let all = |n: usize| vec![true; n];
    pea_block(
        qh,
        kh,
        &lse,
        PeaParams {
            causal: false,
            valid_q: &all(b * tq),
            valid_k: &all(b * tk),
            tau: 0.0,
            prev: Some(&mask),
        },
    )
}

/// The distance of a [`PeaBlock`] as a scalar tensor whose gradient w.r.t. `qh` and `kh`
/// is the one computed in the sweep (times the incoming gradient).
pub fn distance_tensor(qh: &Tensor, kh: &Tensor, block: PeaBlock) -> Result<Tensor> {
    scalar_with_grads(qh, kh, block.distance as f32, block.dq, block.dk)
}

struct TaskIn<'a> {
    dims: Dims,
    causal: bool,
    q: &'a [f32],
    k: &'a [f32],
    lse: &'a [f32],
    vq: &'a [bool],
    vk: &'a [bool],
    tau: f64,
    prev: Option<&'a [u64]>,
}

#[cfg(test)]
impl<'a> TaskIn<'a> {
    /// A task with only what the threshold reads (no queries, keys or log-sum-exp).
    fn for_threshold(dims: Dims, causal: bool, vq: &'a [bool], vk: &'a [bool], tau: f64) -> Self {
        TaskIn {
            dims,
            causal,
            q: &[],
            k: &[],
            lse: &[],
            vq,
            vk,
            tau,
            prev: None,
        }
    }
}

/// One task; returns (distance, selected). `bits` `[T_t][words]` is written, `dq`
/// `[T_t, hd]` and `dk` `[T_s, hd]` are written.
fn run_task(
    level: Simd,
    t: &TaskIn,
    bits: &mut [u64],
    dq: &mut [f32],
    dk: &mut [f32],
) -> (f64, usize) {
    #[cfg(target_arch = "x86_64")]
    if level == Simd::Avx512 {
        // SAFETY: AVX-512 was selected, so the CPU has it (and POPCNT with it).
        return unsafe { avx512::run_task(t, bits, dq, dk) };
    }
    let Dims { tq, tk, hd, .. } = t.dims;
    let kt = transpose(t.k, tk, hd);
    let mut probs = vec![0f32; tq * tk];
    if t.tau > 0.0 {
        task_probs(level, t.dims, t.causal, t.q, &kt, t.lse, &mut probs);
    }
    simd_dispatch!(level, sweeps, sweep(t, &kt, &probs, bits, dq, dk))
}

/// γ of one task (`f32::INFINITY` when nothing is to be selected).
#[inline(always)]
fn threshold(t: &TaskIn, probs: &[f32]) -> f32 {
    let Dims { tq, tk, .. } = t.dims;
    let nq = t.vq.iter().filter(|x| **x).count();
    let nk = t.vk.iter().filter(|x| **x).count();
    // Histogram key of each entry: 1 + the bin of an eligible probability, 0 otherwise
    // (computed branch-free a row at a time, then counted into four interleaved
    // histograms so consecutive increments do not wait on each other).
    let vk: Vec<u32> = t.vk.iter().map(|&v| v as u32).collect();
    let keys = |row: &[f32], out: &mut [u32]| {
        for ((o, &p), &v) in out.iter_mut().zip(row).zip(&vk) {
            let elig = (p > 0.0) as u32 & v;
            *o = elig * ((p.to_bits() >> 20) + 1);
        }
    };
    let mut key = vec![0u32; tk];
    let mut hist = vec![[0u32; 4]; BINS + 1];
    for i in (0..tq).filter(|&i| t.vq[i]) {
        keys(&probs[i * tk..(i + 1) * tk], &mut key);
        let mut quads = key.chunks_exact(4);
        for q in quads.by_ref() {
            for (lane, &k) in q.iter().enumerate() {
                hist[k as usize][lane] += 1;
            }
        }
        for &k in quads.remainder() {
            hist[k as usize][0] += 1;
        }
    }
    let count = |b: usize| hist[b].iter().sum::<u32>() as usize;
    let eligible: usize = (1..=BINS).map(count).sum();
    let k = keep_count(t.tau, nq, nk, eligible);
    if k == 0 {
        return f32::INFINITY;
    }
    // The key holding the k-th largest value, and how many values lie above it.
    let mut above = 0usize;
    let mut bin = BINS;
    loop {
        let c = count(bin);
        if above + c >= k {
            break;
        }
        above += c;
        bin -= 1; // k ≤ eligible, so the loop stops at or before key 1.
    }
    // The values of that bin, gathered branch-free: every value is written at the next
    // free slot, which only advances past a match (the bin's count is known, plus one
    // slot for the writes after the last match).
    let n_in = count(bin);
    let mut inside = vec![0f32; n_in + 1];
    let mut n = 0usize;
    for i in (0..tq).filter(|&i| t.vq[i]) {
        let row = &probs[i * tk..(i + 1) * tk];
        keys(row, &mut key);
        for (&kk, &p) in key.iter().zip(row) {
            inside[n.min(n_in)] = p;
            n += (kk as usize == bin) as usize;
        }
    }
    assert_eq!(
        n, n_in,
        "PEA threshold: bin count and gathered values disagree"
    );
    inside.truncate(n_in);
    // (k − above)-th largest inside the bin = index len − (k − above) ascending.
    let idx = inside.len() - (k - above);
    let (_, g, _) = inside.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
    *g
}

/// The sweep in each SIMD build (see [`crate::kernels::simd`]).
mod sweeps {
    use super::TaskIn;

    crate::kernels::simd::simd_builds!(avx2, avx512; {
        /// Threshold and sweep in this build.
        pub fn sweep(
            t: &TaskIn,
            kt: &[f32],
            probs: &[f32],
            bits: &mut [u64],
            dq: &mut [f32],
            dk: &mut [f32],
        ) -> (f64, usize) {
            let gamma = super::super::threshold(t, probs);
            super::super::sweep(t, kt, probs, gamma, bits, dq, dk)
        }
    });

    /// The portable build.
    #[inline(always)]
    pub fn sweep<const F: bool>(
        t: &TaskIn,
        kt: &[f32],
        probs: &[f32],
        bits: &mut [u64],
        dq: &mut [f32],
        dk: &mut [f32],
    ) -> (f64, usize) {
        let gamma = super::threshold(t, probs);
        super::sweep(t, kt, probs, gamma, bits, dq, dk)
    }
}

/// Step 3 of the module doc for one task.
#[inline(always)]
fn sweep(
    t: &TaskIn,
    kt: &[f32],
    probs: &[f32],
    gamma: f32,
    bits: &mut [u64],
    dq: &mut [f32],
    dk: &mut [f32],
) -> (f64, usize) {
    let Dims { tq, tk, hd, .. } = t.dims;
    let words = tk.div_ceil(64);
    let unscale = (hd as f32).sqrt();
    let vk: Vec<f32> = t.vk.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
    let mut row = vec![0f32; tk];
    let mut r = vec![0f32; tk];
    let mut qt = vec![0f32; hd * tk]; // Q_j transposed: [hd, T_s]
    let mut qi = vec![0f32; hd];
    let mut ki = vec![0f32; hd];
    let mut dist = 0f64;
    let mut selected = 0usize;
    for i in 0..tq {
        let prow = &probs[i * tk..(i + 1) * tk];
        let vq = if t.vq[i] { 1.0f32 } else { 0.0 };
        // W_ij = vq_i vk_j [p_ij ≥ γ] (p ≥ γ > 0 implies p > 0).
        for ((m, &p), &v) in row.iter_mut().zip(prow).zip(&vk) {
            *m = if p >= gamma { vq * v } else { 0.0 };
        }
        if let Some(prev) = t.prev {
            // `row[j] = 1` where the previous layer's mask has bit j (branch-free, so it
            // vectorises: the propagated masks are dense).
            for (chunk, &word) in row.chunks_mut(64).zip(&prev[i * words..(i + 1) * words]) {
                for (b, m) in chunk.iter_mut().enumerate() {
                    *m = if (word >> b) & 1 != 0 { 1.0 } else { *m };
                }
            }
        }
        let brow = &mut bits[i * words..(i + 1) * words];
        for (w, chunk) in brow.iter_mut().zip(row.chunks(64)) {
            let mut x = 0u64;
            for (b, &m) in chunk.iter().enumerate() {
                x |= ((m != 0.0) as u64) << b;
            }
            *w = x;
        }
        let c: u32 = brow.iter().map(|w| w.count_ones()).sum();
        let dqi = &mut dq[i * hd..(i + 1) * hd];
        if c == 0 {
            dqi.iter_mut().for_each(|x| *x = 0.0);
            continue;
        }
        selected += c as usize;
        let c = c as f32;
        for (d, (q, k)) in qi.iter_mut().zip(ki.iter_mut()).enumerate() {
            *q = t.q[i * hd + d] * unscale;
            let krow = &kt[d * tk..(d + 1) * tk];
            *k = dot(&row, krow);
        }
        for (rj, m) in r.iter_mut().zip(&row) {
            *rj += m;
        }
        for (d, &q) in qi.iter().enumerate() {
            for (qj, m) in qt[d * tk..(d + 1) * tk].iter_mut().zip(&row) {
                *qj += q * m;
            }
        }
        let mut di = 0f64;
        for d in 0..hd {
            let (q, k) = (qi[d] as f64, ki[d] as f64);
            di += c as f64 * q * q - 2.0 * q * k;
            // ∂d/∂qh = sqrt(hd) ∂d/∂q̃.
            dqi[d] = 2.0 * (c * qi[d] - ki[d]) * unscale;
        }
        dist += di;
    }
    dist += key_terms(kt, &r, &qt, hd, dk);
    (dist, selected)
}

/// The key side of the sweep, from the column sums `r_j` and `Q_j` (`qt` `[hd, T_s]`):
/// writes `∂d/∂k_j = 2 (r_j k_j − Q_j)` into `dk` `[T_s, hd]` and returns
/// `Σ_j r_j |k_j|²` (f64).
#[inline(always)]
fn key_terms(kt: &[f32], r: &[f32], qt: &[f32], hd: usize, dk: &mut [f32]) -> f64 {
    let tk = r.len();
    let mut sum = 0f64;
    for j in 0..tk {
        let mut kn = 0f64;
        for d in 0..hd {
            let k = kt[d * tk + j];
            kn += (k as f64) * (k as f64);
            dk[j * hd + d] = 2.0 * (r[j] * k - qt[d * tk + j]);
        }
        sum += r[j] as f64 * kn;
    }
    sum
}

#[cfg(test)]
mod tests;
