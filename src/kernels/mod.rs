//! The bottom layer: mica's hand-written CPU kernels, candle custom ops with their own
//! backwards. They import only candle, rayon and std (nothing else of mica); the model
//! and the losses above call them.
//!
//! - [`simd`]: which SIMD build runs, the per-ISA build macro, `fmadd`, `exp` variants.
//! - [`par`]: splitting work over candle's threads on the rayon pool.
//! - [`rng`]: the one dropout stream (counter-based generator, keep bits, mask blocks).
//! - [`attention`]: fused attention (portable and AVX-512 builds).
//! - [`gemm`]: the packed GEMMs.
//! - [`linear`]: fused linears (LayerNorm prologue, ReLU/dropout epilogue, head layouts);
//!   [`layer_norm`]: LayerNorm; [`bias`]: per-feature bias and scale with a fast backward.
//! - [`pointwise`]: elementwise ops keeping only their output (dropout, ReLU, residual,
//!   embedding).
//! - [`mmd`], [`pea`]: the alignment losses' fused sweeps; [`precomputed`] wraps their
//!   value and gradient as a candle op.
pub mod attention;
pub mod bias;
pub mod gemm;
pub mod layer_norm;
pub mod linear;
pub mod mmd;
pub(crate) mod par;
pub mod pea;
pub mod pointwise;
pub mod precomputed;
pub mod rng;
#[cfg(test)]
mod rowops_tests;
pub mod simd;
