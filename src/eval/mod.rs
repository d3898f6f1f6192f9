//! Evaluation: the published metric sets (MulT's `eval_metrics.py`, MMSA's `MetricsTop`),
//! computed exactly as the reference code does (see `spec/metrics.md`), their JSON form,
//! readable tables and multi-seed aggregation.

pub mod metrics;

pub use metrics::{
    aggregate, emotion_mult, evaluate, metrics_json, round4, round_decimals, sentiment_mmsa,
    sentiment_mult, weighted_f1, Aggregate, EmotionScore, Metrics, MetricsError, MmsaSentiment,
    MultEmotion, MultSentiment, SeedStat, Task, EMOTIONS,
};
pub mod predictions;

pub use predictions::{parse_predictions, read_predictions, CsvError};
