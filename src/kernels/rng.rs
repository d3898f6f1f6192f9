//! The one dropout stream: a counter-based generator (spec/kernels.md).
//!
//! candle's CPU RNG cannot be seeded, so mica draws every dropout mask from its own
//! counter-based generator: element `i` of the `s`-th dropout call of a step keeps its
//! value iff `hash(seed, s, i)` falls above the drop rate. A fused kernel can therefore
//! regenerate exactly the same mask, and a seed fixes every draw. [`FusedDropout`] is one
//! draw with the per-stream hash hoisted; [`mask_blocks`] makes its multipliers a block at a
//! time; [`avx512::KeepBits`] gives its keep bits 16 at a time.

use crate::kernels::simd::{self, Simd};

/// SplitMix64 finaliser: a strong 64-bit mix, used as a counter-based RNG.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform value in [0, 1) for element `index` of stream `stream` under `seed`.
#[inline]
pub fn uniform01(seed: u64, stream: u64, index: u64) -> f32 {
    let h = mix64(mix64(seed ^ mix64(stream)) ^ index);
    (h >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Keep indicator `z` of a dropout with rate `p` (keep iff `u >= p`).
#[inline]
pub fn keep(seed: u64, stream: u64, index: u64, p: f32) -> bool {
    uniform01(seed, stream, index) >= p
}

/// Attention dropout as the fused kernel regenerates it: element `idx` is kept iff
/// `mix64(base ^ idx) >> 40 >= threshold`, which is exactly
/// [`keep`]`(seed, stream, idx, p)` (see [`FusedDropout::new`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedDropout {
    /// `mix64(seed ^ mix64(stream))`.
    pub base: u64,
    /// Smallest kept 24-bit draw: `ceil(p · 2^24)`.
    pub threshold: u64,
    /// Multiplier of kept entries, `1/(1−p)` (0 when `p ≥ 1`).
    pub scale: f32,
}

impl FusedDropout {
    /// The dropout of rate `p` drawn from stream `stream` under `seed`.
    ///
    /// [`uniform01`] is `(h >> 40) · 2^-24` (exact in f32), so `u ≥ p` ⇔
    /// `(h >> 40) ≥ p · 2^24` ⇔ `(h >> 40) ≥ ceil(p · 2^24)` (the product is exact in f64).
    pub fn new(seed: u64, stream: u64, p: f32) -> Self {
        let threshold = if p <= 0.0 {
            0
        } else {
            ((p as f64) * (1u64 << 24) as f64)
                .ceil()
                .min((1u64 << 24) as f64) as u64
        };
        let scale = if p >= 1.0 { 0.0 } else { 1.0 / (1.0 - p) };
        FusedDropout {
            base: mix64(seed ^ mix64(stream)),
            threshold,
            scale,
        }
    }

    /// Keep indicator of flat element `idx`.
    #[inline]
    pub fn keep(&self, idx: u64) -> bool {
        (mix64(self.base ^ idx) >> 40) >= self.threshold
    }

    /// The multipliers (`scale` if kept, else 0) of the flat indices
    /// `idx0..idx0 + out.len()`, 16 at a time on AVX-512 CPUs (the same values).
    pub fn multipliers(&self, idx0: u64, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd::current() == Simd::Avx512 {
            // SAFETY: `Simd::Avx512` is only selected when the CPU has the features.
            unsafe { avx512::multipliers(self, idx0, out) };
            return;
        }
        for (i, o) in (idx0..).zip(out) {
            *o = if self.keep(i) { self.scale } else { 0.0 };
        }
    }
}

/// Block of dropout multipliers [`mask_blocks`] makes at a time.
const MASK_BLOCK: usize = 256;

/// Calls `f(o0, m)` on consecutive blocks covering `0..n`: `m` holds the dropout
/// multipliers (`1/(1-p)` if kept, else 0: exactly the values of
/// the model's `Ctx::dropout_mask`) of the flat indices `i0 + o0 ..`, made
/// [`MASK_BLOCK`] at a time by the vectorised [`FusedDropout::multipliers`], so that the
/// caller's loop over a block vectorises too.
pub(crate) fn mask_blocks(d: &FusedDropout, i0: usize, n: usize, mut f: impl FnMut(usize, &[f32])) {
    let mut buf = [0f32; MASK_BLOCK];
    let mut o0 = 0;
    while o0 < n {
        let len = MASK_BLOCK.min(n - o0);
        d.multipliers((i0 + o0) as u64, &mut buf[..len]);
        f(o0, &buf[..len]);
        o0 += len;
    }
}

/// The AVX-512 build of the generator.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::FusedDropout;
    use crate::kernels::simd::lanes_below;
    use std::arch::x86_64::*;

    /// f32 lanes in a `zmm` register.
    const LANES: usize = 16;

    /// The dropout generator of one call, on 16 consecutive flat indices at a time.
    #[derive(Clone, Copy)]
    pub(crate) struct KeepBits {
        base: __m512i,
        /// `threshold · 2^40`: `mix64(..) >> 40 ≥ threshold` ⇔ `mix64(..) ≥ this`.
        min_hash: __m512i,
        /// Lane offsets 0..8 and 8..16.
        lo: __m512i,
        hi: __m512i,
    }

    impl KeepBits {
        #[inline(always)]
        pub(crate) unsafe fn new(d: &FusedDropout) -> Self {
            KeepBits {
                base: _mm512_set1_epi64(d.base as i64),
                min_hash: _mm512_set1_epi64((d.threshold << 40) as i64),
                lo: _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
                hi: _mm512_setr_epi64(8, 9, 10, 11, 12, 13, 14, 15),
            }
        }

        /// `mix64(base ^ idx)` without the last xor-shift (it does not change bits 40..64).
        #[inline(always)]
        pub(crate) unsafe fn hash8(&self, idx: __m512i) -> __m512i {
            let mut z = _mm512_add_epi64(
                _mm512_xor_si512(self.base, idx),
                _mm512_set1_epi64(0x9E37_79B9_7F4A_7C15u64 as i64),
            );
            z = _mm512_xor_si512(z, _mm512_srli_epi64::<30>(z));
            z = _mm512_mullo_epi64(z, _mm512_set1_epi64(0xBF58_476D_1CE4_E5B9u64 as i64));
            z = _mm512_xor_si512(z, _mm512_srli_epi64::<27>(z));
            _mm512_mullo_epi64(z, _mm512_set1_epi64(0x94D0_49BB_1331_11EBu64 as i64))
        }

        /// Keep bits of the 16 flat indices from `idx0`.
        #[inline(always)]
        pub(crate) unsafe fn mask(&self, idx0: u64) -> __mmask16 {
            let i0 = _mm512_set1_epi64(idx0 as i64);
            let a = self.hash8(_mm512_add_epi64(i0, self.lo));
            let b = self.hash8(_mm512_add_epi64(i0, self.hi));
            let ka = _mm512_cmpge_epu64_mask(a, self.min_hash) as u16;
            let kb = _mm512_cmpge_epu64_mask(b, self.min_hash) as u16;
            ka | (kb << 8)
        }
    }

    /// [`FusedDropout::multipliers`]: `scale` or 0 for the flat indices from `idx0`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/DQ.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
    pub unsafe fn multipliers(d: &FusedDropout, idx0: u64, out: &mut [f32]) {
        let keep = KeepBits::new(d);
        let scale = _mm512_set1_ps(d.scale);
        for (c, chunk) in out.chunks_mut(LANES).enumerate() {
            let kept = keep.mask(idx0 + (c * LANES) as u64);
            let m = _mm512_maskz_mov_ps(kept, scale);
            _mm512_mask_storeu_ps(chunk.as_mut_ptr(), lanes_below(chunk.len()), m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_rate_matches_p() {
        let p = 0.3;
        let kept = (0..100_000u64).filter(|&i| keep(7, 3, i, p)).count();
        let rate = kept as f64 / 100_000.0;
        assert!((rate - 0.7).abs() < 0.01, "keep rate {rate}");
    }

    #[test]
    fn streams_and_seeds_differ_and_repeat() {
        let a: Vec<bool> = (0..64).map(|i| keep(1, 0, i, 0.5)).collect();
        let b: Vec<bool> = (0..64).map(|i| keep(1, 1, i, 0.5)).collect();
        let c: Vec<bool> = (0..64).map(|i| keep(2, 0, i, 0.5)).collect();
        let a2: Vec<bool> = (0..64).map(|i| keep(1, 0, i, 0.5)).collect();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, a2);
    }
}
