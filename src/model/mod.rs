//! Models: the front end, attention, encoder, MulT and the MICA backbone.
pub mod attention;
pub mod config;
pub mod ctx;
pub mod encoder;
pub mod import;
pub mod layers;
pub mod mult;
pub mod params;
