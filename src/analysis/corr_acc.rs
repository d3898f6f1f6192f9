//! Correlation accuracy ("Corr. Acc", paper Table 6): the share of target elements whose
//! most-attended source element truly co-occurs with them.
//!
//! Inputs per sample: an attention map `[T_t, T_s]` (row-major f32, rows = target
//! elements = queries, columns = source elements = keys; pass a head-averaged map, see
//! [`mean_over_heads`]), which target rows and source columns are real (not padding), and
//! a ground-truth co-occurrence mask `[T_t, T_s]` (see [`cooccurrence_from_intervals`]).
//!
//! Decisions (documented because the paper leaves them open):
//! * Only valid source columns compete for the argmax; only valid target rows count.
//! * Target rows whose truth set is EMPTY among the valid sources (nothing co-occurs) are
//!   skipped: they count neither as hit nor miss, nor in the chance level (`skipped`).
//! * Ties: when several valid columns share the maximal weight exactly, the row scores the
//!   FRACTION of tied maxima that lie in its truth set (the expected hit of a uniformly
//!   random tie-break). A uniform map thus scores exactly the chance level, and a map
//!   without ties scores 0 or 1 per row, as the plain argmax would.
//! * Chance level: the expected score of a uniform map, `mean over counted rows of
//!   |truth set| / n_valid_sources`, computed analytically.

use serde::{Deserialize, Serialize};

/// Accumulated correlation-accuracy counts (add samples with `+=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CorrAcc {
    /// Sum over counted target rows of the hit (1, 0, or a tie fraction).
    pub hits: f64,
    /// Sum over counted target rows of `|truth set| / n_valid_sources`.
    pub chance_hits: f64,
    /// Number of counted target rows.
    pub count: usize,
    /// Valid target rows skipped because nothing co-occurs with them.
    pub skipped: usize,
}

impl CorrAcc {
    /// `hits / count` (`NaN` when nothing was counted).
    pub fn accuracy(&self) -> f64 {
        self.hits / self.count as f64
    }

    /// Chance level of a uniform map over the same rows, `chance_hits / count`.
    pub fn chance_level(&self) -> f64 {
        self.chance_hits / self.count as f64
    }
}

impl std::ops::AddAssign for CorrAcc {
    fn add_assign(&mut self, o: CorrAcc) {
        self.hits += o.hits;
        self.chance_hits += o.chance_hits;
        self.count += o.count;
        self.skipped += o.skipped;
    }
}

/// Errors of the correlation-accuracy functions.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CorrAccError {
    /// A buffer has the wrong length for `[T_t, T_s]`.
    #[error("{what} has {got} values, expected {want}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The expected length.
        want: usize,
    },
}

fn check(what: &'static str, got: usize, want: usize) -> Result<(), CorrAccError> {
    if got == want {
        Ok(())
    } else {
        Err(CorrAccError::Shape { what, got, want })
    }
}

/// Correlation accuracy of one sample's map, with its chance level (see the module docs).
/// `attn` and `truth` are `[t_t, t_s]`, `valid_targets` has `t_t` entries,
/// `valid_sources` has `t_s`.
pub fn correlation_accuracy(
    attn: &[f32],
    t_t: usize,
    t_s: usize,
    valid_targets: &[bool],
    valid_sources: &[bool],
    truth: &[bool],
) -> Result<CorrAcc, CorrAccError> {
    check("attention map", attn.len(), t_t * t_s)?;
    check("truth mask", truth.len(), t_t * t_s)?;
    check("valid_targets", valid_targets.len(), t_t)?;
    check("valid_sources", valid_sources.len(), t_s)?;
    let n_src = valid_sources.iter().filter(|&&v| v).count();
    let mut out = CorrAcc::default();
    for i in (0..t_t).filter(|&i| valid_targets[i]) {
        let row = &attn[i * t_s..(i + 1) * t_s];
        let tr = &truth[i * t_s..(i + 1) * t_s];
        let in_set = (0..t_s).filter(|&j| valid_sources[j] && tr[j]).count();
        if in_set == 0 {
            out.skipped += 1;
            continue;
        }
        out.count += 1;
        out.chance_hits += in_set as f64 / n_src as f64;
        out.hits += row_hit(row, tr, valid_sources);
    }
    Ok(out)
}

/// Hit of one row: share of the tied maxima (over valid columns) that are in the truth set.
/// A row whose valid weights are all NaN scores 0.
fn row_hit(row: &[f32], truth: &[bool], valid: &[bool]) -> f64 {
    let max = row
        .iter()
        .zip(valid)
        .filter(|(w, &v)| v && !w.is_nan())
        .map(|(w, _)| *w)
        .fold(f32::NEG_INFINITY, f32::max);
    let (mut tied, mut tied_hits) = (0usize, 0usize);
    for j in 0..row.len() {
        if valid[j] && row[j] == max {
            tied += 1;
            tied_hits += truth[j] as usize;
        }
    }
    if tied == 0 {
        0.0
    } else {
        tied_hits as f64 / tied as f64
    }
}

/// Chance level of one sample alone: mean over counted target rows of
/// `|truth set| / n_valid_sources` (what a uniform map scores); `NaN` when no row counts.
pub fn chance_level(
    t_t: usize,
    t_s: usize,
    valid_targets: &[bool],
    valid_sources: &[bool],
    truth: &[bool],
) -> Result<f64, CorrAccError> {
    let uniform = vec![1.0f32; t_t * t_s];
    Ok(
        correlation_accuracy(&uniform, t_t, t_s, valid_targets, valid_sources, truth)?
            .chance_level(),
    )
}

/// Averages a per-head map `[heads, t_t, t_s]` over heads into `[t_t, t_s]`.
pub fn mean_over_heads(attn: &[f32], heads: usize, t_t: usize, t_s: usize) -> Vec<f32> {
    let m = t_t * t_s;
    let mut out = vec![0.0f32; m];
    for h in 0..heads {
        for (o, v) in out.iter_mut().zip(&attn[h * m..(h + 1) * m]) {
            *o += v;
        }
    }
    out.iter_mut().for_each(|o| *o /= heads as f32);
    out
}

/// Ground-truth co-occurrence `[t_t, t_s]` from element intervals (`[t_t, 2]` and
/// `[t_s, 2]` as (start, end) seconds, as in `data::Intervals`): true where the two open
/// intervals overlap (`start_i < end_j && start_j < end_i`; touching ends do not count).
/// Padding elements hold NaN and never co-occur.
pub fn cooccurrence_from_intervals(target: &[f32], source: &[f32]) -> Vec<bool> {
    let (t_t, t_s) = (target.len() / 2, source.len() / 2);
    let mut out = vec![false; t_t * t_s];
    for i in 0..t_t {
        let (a0, a1) = (target[2 * i], target[2 * i + 1]);
        for j in 0..t_s {
            let (b0, b1) = (source[2 * j], source[2 * j + 1]);
            // NaN compares false, so padding never overlaps.
            out[i * t_s + j] = a0 < b1 && b0 < a1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 targets x 4 sources; target i co-occurs with sources {i, i+1}; source 3 is padding
    /// for nothing but target 2's set {2, 3}; all valid.
    fn truth() -> Vec<bool> {
        let mut t = vec![false; 12];
        for i in 0..3 {
            t[i * 4 + i] = true;
            t[i * 4 + i + 1] = true;
        }
        t
    }

    #[test]
    fn map_equal_to_truth_scores_one() {
        let tr = truth();
        // Row-normalised truth as the attention map: ties only among true cells.
        let map: Vec<f32> = tr.iter().map(|&b| if b { 0.5 } else { 0.0 }).collect();
        let r = correlation_accuracy(&map, 3, 4, &[true; 3], &[true; 4], &tr).unwrap();
        assert_eq!(r.count, 3);
        assert_eq!(r.accuracy(), 1.0);
        assert_eq!(r.chance_level(), 0.5); // each row: 2 of 4 sources
    }

    #[test]
    fn uniform_map_scores_chance_level() {
        let tr = truth();
        let valid_src = [true, true, true, false];
        let uniform = vec![0.25f32; 12];
        let r = correlation_accuracy(&uniform, 3, 4, &[true; 3], &valid_src, &tr).unwrap();
        // Valid sources {0,1,2}: rows have 2, 2, 1 true valid sources -> chance
        // (2/3 + 2/3 + 1/3) / 3 = 5/9; the uniform map's tie fractions are the same.
        assert!((r.chance_level() - 5.0 / 9.0).abs() < 1e-15);
        assert!((r.accuracy() - r.chance_level()).abs() < 1e-15);
        let c = chance_level(3, 4, &[true; 3], &valid_src, &tr).unwrap();
        assert!((c - 5.0 / 9.0).abs() < 1e-15);
    }

    #[test]
    fn argmax_outside_truth_misses_and_padding_is_ignored() {
        let tr = truth();
        let mut map = vec![0.0f32; 12];
        map[3] = 1.0; // row 0 -> source 3 (not in {0,1}): miss
        map[4 + 1] = 1.0; // row 1 -> source 1: hit
        map[8] = 0.9; // row 2 -> source 0 (miss) unless padded
        map[8 + 3] = 2.0; // source 3 is the max of row 2 but invalid below
        let valid_src = [true, true, true, false];
        let r = correlation_accuracy(&map, 3, 4, &[true, true, false], &valid_src, &tr).unwrap();
        // Row 0: max over valid {0,1,2} is a three-way tie at 0 -> 2/3 in set {0,1}.
        // Row 1: hit. Row 2: padding target, not counted.
        assert_eq!(r.count, 2);
        assert!((r.hits - (2.0 / 3.0 + 1.0)).abs() < 1e-15);
    }

    #[test]
    fn empty_truth_rows_are_skipped_and_counts_accumulate() {
        let tr = vec![true, false, false, false]; // 2x2: row 1 has no partner
        let map = [0.9f32, 0.1, 0.5, 0.5];
        let mut total = CorrAcc::default();
        total += correlation_accuracy(&map, 2, 2, &[true; 2], &[true; 2], &tr).unwrap();
        total += correlation_accuracy(&map, 2, 2, &[true; 2], &[true; 2], &tr).unwrap();
        assert_eq!((total.count, total.skipped), (2, 2));
        assert_eq!(total.accuracy(), 1.0);
        assert_eq!(total.chance_level(), 0.5);
        assert!(correlation_accuracy(&map, 2, 3, &[true; 2], &[true; 3], &tr).is_err());
    }

    #[test]
    fn intervals_and_heads() {
        // Targets [0,1), [1,2), padding; sources [0.5,1.5), [1.5,3).
        let target = [0.0, 1.0, 1.0, 2.0, f32::NAN, f32::NAN];
        let source = [0.5, 1.5, 1.5, 3.0];
        let m = cooccurrence_from_intervals(&target, &source);
        assert_eq!(m, vec![true, false, true, true, false, false]);
        let heads = [1.0f32, 0.0, 0.0, 1.0, 3.0, 2.0, 2.0, 1.0];
        assert_eq!(mean_over_heads(&heads, 2, 2, 2), vec![2.0, 1.0, 1.0, 1.0]);
    }
}
