//! Analyses the paper reports (spec/mica.md "Analyses"): paired significance tests over
//! seeds, proxy A-distance between queries and keys, correlation accuracy of attention
//! maps, and the plots (loss curves, sweeps, attention heatmaps). Pure functions over
//! plain slices, so they serve the training loop, the CLI and tests alike.

pub mod ablation;
pub mod adistance;
pub mod alignment;
pub mod corr_acc;
// The plotting primitives live below every layer (`crate::plots`); re-exported here.
pub use crate::plots;
pub mod report;
pub mod stats;
pub mod sweep;

pub use adistance::{proxy_a_distance, ADistance, ADistanceConfig, ADistanceError};
pub use corr_acc::{
    chance_level, cooccurrence_from_intervals, correlation_accuracy, mean_over_heads, CorrAcc,
    CorrAccError,
};
pub use plots::{
    heatmap, line_plot, line_plot_with_errors, side_by_side, ErrorPoint, HeatmapPanel,
};
pub use stats::{
    inc_beta, ln_gamma, mean, paired_t_test, std_pop, std_sample, student_t_cdf, TTest,
};
