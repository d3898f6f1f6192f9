//! mica: MICA / MulT for asynchronous multimodal sequences.
pub mod cli;
pub mod data;
pub mod model;
