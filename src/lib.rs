//! mica: MICA / MulT for asynchronous multimodal sequences.
//!
//! Laid out by what the data passes through: `data` (formats, synthetic benchmark,
//! batching) → `model` (front end, attention, encoder, MulT, MICA) → `align` (MMD, PEA)
//! → `train` (loop, optimiser, schedule, checkpoints) → `eval` (metrics) → `analysis`
//! (A-distance, correlation accuracy, statistics, plots) → `sweep` (run manifests, locks,
//! local and Slurm executors) → `cli`.
pub mod align;
pub mod analysis;
pub mod cli;
pub mod config;
pub mod data;
pub mod durable;
pub mod eval;
pub mod model;
pub mod sweep;
pub mod train;
