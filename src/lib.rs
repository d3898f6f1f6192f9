//! mica: MICA / MulT for asynchronous multimodal sequences.
//!
//! Laid out by what the data passes through, on top of `kernels` (the hand-written CPU
//! ops, importing nothing of mica): `data` (formats, synthetic benchmark,
//! batching) → `model` (front end, attention, encoder, MulT, MICA) → `align` (MMD, PEA)
//! → `eval` (metrics) → `train` (loop, optimiser, schedule, checkpoints) → `analysis`
//! (A-distance, correlation accuracy, statistics, plots) → `sweep` (run manifests, locks,
//! local and Slurm executors) → `cli`.
pub mod align;
pub mod analysis;
pub mod cli;
pub mod config;
pub mod data;
pub mod durable;
pub mod eval;
pub mod kernels;
pub mod model;
pub mod plots;
pub mod sweep;
pub mod train;
