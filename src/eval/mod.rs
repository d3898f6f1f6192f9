//! Evaluation: the published metric sets (MulT's `eval_metrics.py`, MMSA's `MetricsTop`),
//! computed exactly as the reference code does (see `spec/metrics.md`), their JSON form,
//! readable tables and multi-seed aggregation.
//!
//! - [`numpy`]: numpy / sklearn / Python arithmetic reproduced exactly.
//! - [`metrics`]: the metric sets built from it, and their JSON.
//! - [`table`]: the one flattening of a metrics JSON, tables, multi-seed aggregation.
//! - [`predictions`]: reading prediction files.

pub mod metrics;
pub mod numpy;
pub mod table;

pub use metrics::{
    emotion_mult, evaluate, metrics_json, sentiment_mmsa, sentiment_mult, EmotionScore, Metrics,
    MetricsError, MmsaSentiment, MultEmotion, MultSentiment, Task, EMOTIONS,
};
pub use numpy::{round4, round_decimals, weighted_f1};
pub use table::{aggregate, flatten_json, Aggregate, SeedStat};
pub mod predictions;

pub use predictions::{parse_predictions, read_predictions, CsvError};
