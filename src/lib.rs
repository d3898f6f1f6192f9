//! mica: MICA / MulT for asynchronous multimodal sequences.
pub mod data;
pub mod cli;
pub mod model;
