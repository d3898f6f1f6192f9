//! mica: MICA / MulT for asynchronous multimodal sequences.
pub mod align;
pub mod cli;
pub mod config;
pub mod data;
pub mod model;
pub mod train;
