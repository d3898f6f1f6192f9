//! mica: MICA / MulT for asynchronous multimodal sequences.
pub mod analysis;
pub mod cli;
pub mod data;
pub mod eval;
pub mod model;
