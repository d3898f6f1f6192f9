//! Exact re-implementations of the metric sets the papers report.
//!
//! * `mult`: MulT's `src/eval_metrics.py` (`eval_mosei_senti(.., exclude_zero=True)` for
//!   MOSI / MOSEI, `eval_iemocap` for IEMOCAP).
//! * `mmsa`: MMSA 2.2.1's `utils/metricsTop.py` (`__eval_mosei_regression`, used for MOSI
//!   and MOSEI alike). MMSA rounds every value with Python's `round(x, 4)`; the values
//!   here are UNROUNDED, [`round4`] reproduces MMSA's rounding.
//!
//! Inputs are `f64` slices holding the model's `f32` outputs widened to `f64` (what numpy
//! sees after `tensor.numpy()` and the implicit casts of the reference code). Every metric
//! is computed in `f64`, except MAE, which MulT and MMSA compute in `f32`
//! (`np.mean` of a float32 array): [`mae_f32`] casts to `f32` and reproduces numpy's
//! float32 pairwise summation bit for bit, then widens the float32 mean to `f64`.
//!
//! Degenerate inputs follow numpy's arithmetic rather than raising: an empty subset gives
//! `NaN` accuracies / F1, a constant prediction vector gives `NaN` correlation (serialised
//! as JSON `null`).

use super::numpy::*;
use super::table::{flatten_json, render_table, Row};
pub use crate::config::Task;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The emotion order of IEMOCAP predictions and labels (MulT's `eval_iemocap`).
pub const EMOTIONS: [&str; 4] = ["Neutral", "Happy", "Sad", "Angry"];

impl std::str::FromStr for Task {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mosi" => Ok(Task::Mosi),
            "mosei" => Ok(Task::Mosei),
            "iemocap" => Ok(Task::Iemocap),
            other => Err(MetricsError::UnknownTask(other.to_string())),
        }
    }
}

/// Errors of the metric functions (shape problems only; numbers never fail).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    /// Prediction and label counts disagree with each other or with the task's widths.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An IEMOCAP label is neither 0 nor 1.
    #[error("emotion label at index {index} is {value}, expected 0 or 1")]
    BadLabel {
        /// Flat index into the label slice.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The task name is not one of mosi, mosei, iemocap.
    #[error("unknown task {0:?} (expected mosi, mosei or iemocap)")]
    UnknownTask(String),
    /// A prediction or label is NaN or infinite.
    #[error("{what} at index {index} is {value}: metrics need finite values (non-finite predictions come from a model whose weights or inputs hold NaN or infinity)")]
    NonFinite {
        /// `prediction` or `label`.
        what: &'static str,
        /// Flat index into the slice.
        index: usize,
        /// The offending value.
        value: f64,
    },
}

// ---------------------------------------------------------------------------------------
// Metric sets
// ---------------------------------------------------------------------------------------

/// MulT's sentiment metrics (`eval_mosei_senti(.., exclude_zero=True)`); field names are
/// the official JSON keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MultSentiment {
    /// Mean absolute error, computed in float32 (see [`mae_f32`]).
    pub mae: f64,
    /// Pearson correlation (f64).
    pub corr: f64,
    /// 7-class accuracy: round(clip(., -3, 3)), half to even.
    pub mult_acc_7: f64,
    /// 5-class accuracy: round(clip(., -2, 2)), half to even.
    pub mult_acc_5: f64,
    /// Weighted F1 over non-zero labels with MulT's SWAPPED arguments
    /// (`f1_score(preds > 0, truth > 0)`: class weights from predicted counts).
    pub f1: f64,
    /// Binary accuracy of (p > 0) vs (t > 0) over non-zero labels ("Non0").
    pub acc_2: f64,
}

/// MMSA's sentiment metrics (`MetricsTop`), UNROUNDED; serialised with MMSA's key names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MmsaSentiment {
    /// Accuracy of (p >= 0) vs (t >= 0) over all samples.
    #[serde(rename = "Has0_acc_2")]
    pub has0_acc_2: f64,
    /// Weighted F1, y_true = (t >= 0), y_pred = (p >= 0), all samples.
    #[serde(rename = "Has0_F1_score")]
    pub has0_f1_score: f64,
    /// Accuracy of (p > 0) vs (t > 0) over samples with t != 0.
    #[serde(rename = "Non0_acc_2")]
    pub non0_acc_2: f64,
    /// Weighted F1, y_true = (t > 0), y_pred = (p > 0), samples with t != 0.
    #[serde(rename = "Non0_F1_score")]
    pub non0_f1_score: f64,
    /// 5-class accuracy (as MulT's).
    #[serde(rename = "Mult_acc_5")]
    pub mult_acc_5: f64,
    /// 7-class accuracy (as MulT's).
    #[serde(rename = "Mult_acc_7")]
    pub mult_acc_7: f64,
    /// Mean absolute error (float32, as MulT's).
    #[serde(rename = "MAE")]
    pub mae: f64,
    /// Pearson correlation.
    #[serde(rename = "Corr")]
    pub corr: f64,
}

impl MmsaSentiment {
    /// Every value rounded with [`round4`], i.e. exactly what MMSA reports.
    pub fn rounded(&self) -> MmsaSentiment {
        MmsaSentiment {
            has0_acc_2: round4(self.has0_acc_2),
            has0_f1_score: round4(self.has0_f1_score),
            non0_acc_2: round4(self.non0_acc_2),
            non0_f1_score: round4(self.non0_f1_score),
            mult_acc_5: round4(self.mult_acc_5),
            mult_acc_7: round4(self.mult_acc_7),
            mae: round4(self.mae),
            corr: round4(self.corr),
        }
    }
}

/// Accuracy and weighted F1 of one emotion (official keys `f1`, `acc`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmotionScore {
    /// Weighted F1 (y_true = truth).
    pub f1: f64,
    /// Accuracy.
    pub acc: f64,
}

/// MulT's IEMOCAP metrics (`eval_iemocap`), keyed by emotion name as the official output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MultEmotion {
    /// Neutral.
    #[serde(rename = "Neutral")]
    pub neutral: EmotionScore,
    /// Happy.
    #[serde(rename = "Happy")]
    pub happy: EmotionScore,
    /// Sad.
    #[serde(rename = "Sad")]
    pub sad: EmotionScore,
    /// Angry.
    #[serde(rename = "Angry")]
    pub angry: EmotionScore,
}

impl MultEmotion {
    /// The four scores in [`EMOTIONS`] order.
    pub fn scores(&self) -> [EmotionScore; 4] {
        [self.neutral, self.happy, self.sad, self.angry]
    }

    /// Mean over the four emotions of accuracy and of F1.
    pub fn mean(&self) -> EmotionScore {
        let s = self.scores();
        EmotionScore {
            f1: s.iter().map(|e| e.f1).sum::<f64>() / 4.0,
            acc: s.iter().map(|e| e.acc).sum::<f64>() / 4.0,
        }
    }
}

/// The metrics of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Metrics {
    /// MOSI / MOSEI: both metric sets.
    Sentiment {
        /// MulT's set.
        mult: MultSentiment,
        /// MMSA's set (unrounded).
        mmsa: MmsaSentiment,
    },
    /// IEMOCAP: MulT's set (MMSA has none).
    Emotion {
        /// MulT's set.
        mult: MultEmotion,
    },
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), MetricsError> {
    if got == want {
        Ok(())
    } else {
        Err(MetricsError::Shape(format!(
            "{what}: {got} values, expected {want}"
        )))
    }
}

/// MulT's sentiment metrics over flattened predictions and labels (same length).
pub fn sentiment_mult(preds: &[f64], labels: &[f64]) -> Result<MultSentiment, MetricsError> {
    check_len("labels", labels.len(), preds.len())?;
    let (bp, bt) = nonzero_binary(preds, labels);
    Ok(MultSentiment {
        mae: mae_f32(preds, labels),
        corr: pearson(preds, labels),
        mult_acc_7: multiclass_acc(preds, labels, 3.0),
        mult_acc_5: multiclass_acc(preds, labels, 2.0),
        // MulT: f1_score((preds > 0), (truth > 0)): predictions passed as y_true.
        f1: weighted_f1(&bp, &bt),
        acc_2: accuracy(&bt, &bp),
    })
}

/// (p > 0, t > 0) over the samples with t != 0: (binary preds, binary truth).
fn nonzero_binary(preds: &[f64], labels: &[f64]) -> (Vec<bool>, Vec<bool>) {
    preds
        .iter()
        .zip(labels)
        .filter(|(_, &t)| t != 0.0)
        .map(|(&p, &t)| (p > 0.0, t > 0.0))
        .unzip()
}

/// MMSA's sentiment metrics (unrounded) over flattened predictions and labels.
pub fn sentiment_mmsa(preds: &[f64], labels: &[f64]) -> Result<MmsaSentiment, MetricsError> {
    check_len("labels", labels.len(), preds.len())?;
    let (bp, bt) = nonzero_binary(preds, labels);
    let hp: Vec<bool> = preds.iter().map(|&p| p >= 0.0).collect();
    let ht: Vec<bool> = labels.iter().map(|&t| t >= 0.0).collect();
    Ok(MmsaSentiment {
        has0_acc_2: accuracy(&ht, &hp),
        has0_f1_score: weighted_f1(&ht, &hp),
        non0_acc_2: accuracy(&bt, &bp),
        non0_f1_score: weighted_f1(&bt, &bp),
        mult_acc_5: multiclass_acc(preds, labels, 2.0),
        mult_acc_7: multiclass_acc(preds, labels, 3.0),
        mae: mae_f32(preds, labels),
        corr: pearson(preds, labels),
    })
}

/// MulT's IEMOCAP metrics: `preds` is `[N, 8]` row-major (viewed `[N, 4, 2]`), `labels`
/// is `[N, 4]` with values 0 or 1. Per emotion the prediction is the argmax of its two
/// logits (a tie gives class 0, like `np.argmax`).
pub fn emotion_mult(preds: &[f64], labels: &[f64]) -> Result<MultEmotion, MetricsError> {
    if !preds.len().is_multiple_of(8) {
        return Err(MetricsError::Shape(format!(
            "emotion predictions: {} values, not a multiple of 8",
            preds.len()
        )));
    }
    let n = preds.len() / 8;
    check_len("emotion labels", labels.len(), n * 4)?;
    if let Some((index, &value)) = labels
        .iter()
        .enumerate()
        .find(|(_, &v)| v != 0.0 && v != 1.0)
    {
        return Err(MetricsError::BadLabel { index, value });
    }
    let score = |e: usize| {
        let truth: Vec<u8> = (0..n).map(|i| labels[i * 4 + e] as u8).collect();
        let pred: Vec<u8> = (0..n)
            .map(|i| u8::from(preds[i * 8 + 2 * e + 1] > preds[i * 8 + 2 * e]))
            .collect();
        EmotionScore {
            f1: weighted_f1(&truth, &pred),
            acc: accuracy(&truth, &pred),
        }
    };
    Ok(MultEmotion {
        neutral: score(0),
        happy: score(1),
        sad: score(2),
        angry: score(3),
    })
}

/// All metric sets of `task` for flattened predictions and labels
/// (sentiment: N and N values; IEMOCAP: N*8 and N*4). A non-finite value is an error.
pub fn evaluate(task: Task, preds: &[f64], labels: &[f64]) -> Result<Metrics, MetricsError> {
    for (what, v) in [("prediction", preds), ("label", labels)] {
        if let Some(index) = v.iter().position(|x| !x.is_finite()) {
            return Err(MetricsError::NonFinite {
                what,
                index,
                value: v[index],
            });
        }
    }
    if task.is_sentiment() {
        Ok(Metrics::Sentiment {
            mult: sentiment_mult(preds, labels)?,
            mmsa: sentiment_mmsa(preds, labels)?,
        })
    } else {
        Ok(Metrics::Emotion {
            mult: emotion_mult(preds, labels)?,
        })
    }
}

/// The metrics as JSON: `{"mult": {..}, "mmsa": {..}}` for MOSI / MOSEI (keys as MulT's
/// and MMSA's outputs; MMSA values UNROUNDED, apply [`round4`] for MMSA's printed
/// numbers), and `{"mult": {"Neutral": {"f1", "acc"}, ..}, "mult_mean": {"f1", "acc"}}`
/// for IEMOCAP (no `mmsa`; `mult_mean` is the mean over the four emotions, kept outside
/// `mult` so that `mult` holds exactly the official keys).
pub fn metrics_json(task: Task, preds: &[f64], labels: &[f64]) -> Result<Value, MetricsError> {
    Ok(evaluate(task, preds, labels)?.to_json())
}

impl Metrics {
    /// JSON form, see [`metrics_json`].
    pub fn to_json(&self) -> Value {
        match self {
            Metrics::Sentiment { mult, mmsa } => serde_json::json!({ "mult": mult, "mmsa": mmsa }),
            Metrics::Emotion { mult } => {
                serde_json::json!({ "mult": mult, "mult_mean": mult.mean() })
            }
        }
    }

    /// Every number under a flat `set.key` name (e.g. `mult.mae`, `mmsa.Has0_acc_2`,
    /// `mult.Happy.f1`, `mult_mean.acc`), for aggregation over seeds.
    pub fn flat(&self) -> BTreeMap<String, f64> {
        flatten_json(&self.to_json())
    }

    /// A readable table in the papers' format (accuracies and F1 in percent with one
    /// decimal, MAE and Corr with three decimals), each metric set named, Acc2 variants
    /// labelled Has0 / Non0.
    pub fn table(&self) -> String {
        let rows: Vec<Row> = self
            .flat()
            .into_iter()
            .map(|(k, v)| {
                let (set, name) = k.split_once('.').unwrap_or(("", k.as_str()));
                (set.to_string(), name.to_string(), v, None)
            })
            .collect();
        render_table(&rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::predictions::read_predictions;
    use crate::eval::table::*;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    fn fixture(name: &str) -> (Value, Vec<f64>, Vec<f64>) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics");
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let task: Task = expected["task"].as_str().unwrap().parse().unwrap();
        let (p, l) = read_predictions(&dir.join(format!("{name}.csv")), task).unwrap();
        assert_eq!(
            p.len() / task.pred_width(),
            expected["n"].as_u64().unwrap() as usize
        );
        (expected, p, l)
    }

    /// Compares every number of `want` with the same path in `got`; returns the largest
    /// absolute difference and asserts each is within `tol(path)`.
    fn compare(want: &Value, got: &Value, path: &str, tol: &dyn Fn(&str) -> f64) -> f64 {
        match want {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    let child = got
                        .get(k)
                        .unwrap_or_else(|| panic!("missing key {path}.{k}"));
                    compare(v, child, &format!("{path}.{k}"), tol)
                })
                .fold(0.0, f64::max),
            Value::Number(n) => {
                let (w, g) = (n.as_f64().unwrap(), got.as_f64().unwrap());
                let d = (w - g).abs();
                assert!(
                    d <= tol(path),
                    "{path}: want {w:?}, got {g:?} (|diff| {d:e})"
                );
                d
            }
            other => panic!("{path}: unexpected {other}"),
        }
    }

    fn exact(_: &str) -> f64 {
        0.0
    }

    #[test]
    fn sentiment_fixtures_match_official_mult_exactly() {
        for name in ["sentiment_a", "sentiment_b"] {
            let (exp, p, l) = fixture(name);
            let m = sentiment_mult(&p, &l).unwrap();
            let got = serde_json::to_value(m).unwrap();
            // Every key of the official object, bit-exact except MAE, which MulT prints as
            // a float32 (8 significant digits): compare it as f32 and against the f64
            // widening recorded in `reimpl`.
            let mut official = exp["official"].clone();
            let mae_printed = official.as_object_mut().unwrap().remove("mae").unwrap();
            assert_eq!(compare(&official, &got, name, &exact), 0.0);
            let printed: f32 = mae_printed.to_string().parse().unwrap();
            assert_eq!(m.mae as f32, printed, "{name}: mae");
            assert_eq!(
                m.mae,
                exp["reimpl"]["mae"].as_f64().unwrap(),
                "{name}: mae f64"
            );
            assert_eq!(
                got.as_object().unwrap().len(),
                exp["official"].as_object().unwrap().len()
            );
        }
    }

    #[test]
    fn sentiment_fixtures_match_mmsa_after_round4() {
        for name in ["sentiment_a", "sentiment_b"] {
            let (exp, p, l) = fixture(name);
            let mmsa = sentiment_mmsa(&p, &l).unwrap();
            let rounded = serde_json::to_value(mmsa.rounded()).unwrap();
            assert_eq!(rounded, exp["mmsa"], "{name}");
            // Unrounded values lie within half a unit of the 4th decimal of MMSA's.
            let half = |_: &str| 5e-5 + 1e-12;
            compare(
                &exp["mmsa"],
                &serde_json::to_value(mmsa).unwrap(),
                name,
                &half,
            );
        }
    }

    #[test]
    fn emotion_fixture_matches_official_exactly() {
        let (exp, p, l) = fixture("emotion_a");
        let m = emotion_mult(&p, &l).unwrap();
        let got = serde_json::to_value(m).unwrap();
        assert_eq!(got, exp["official"]);
        let json = metrics_json(Task::Iemocap, &p, &l).unwrap();
        assert_eq!(json["mult"], exp["official"]);
        assert!(json.get("mmsa").is_none());
        let mean = m.mean();
        let acc: f64 = m.scores().iter().map(|s| s.acc).sum::<f64>() / 4.0;
        assert_eq!(json["mult_mean"]["acc"].as_f64().unwrap(), acc);
        assert_eq!(mean.acc, acc);
    }

    #[test]
    fn metrics_json_has_both_sets_with_official_keys() {
        let (exp, p, l) = fixture("sentiment_a");
        let json = metrics_json(Task::Mosi, &p, &l).unwrap();
        let keys = |v: &Value| {
            v.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(keys(&json["mult"]), keys(&exp["official"]));
        assert_eq!(keys(&json["mmsa"]), keys(&exp["mmsa"]));
        assert_eq!(
            keys(&json),
            ["mmsa", "mult"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn pairwise_sum_matches_numpy_beyond_one_block() {
        // Expected values from numpy 2.4.6 (OpenBLAS 0.3.31, Haswell kernels):
        //   i = np.arange(N); p = (((i*7919) % 1000)/333.0 - 1.5).astype(np.float32)
        //   t = ((((i*104729) % 61) - 30)/10.0).astype(np.float32)
        //   np.corrcoef(p, t)[0][1], np.mean(np.absolute(p - t))
        // N = 686 (MOSI test size) and 4659 (MOSEI test size) exercise the recursive
        // pairwise sum and the BLAS K blocking.
        for (n, corr, mae) in [
            (686usize, 0.04610856585556034, 1.619871973991394),
            (4659, 0.000387516172566746, 1.6492100954055786),
            (1000, 0.014905243880768174, 1.6390265226364136),
        ] {
            let p: Vec<f64> = (0..n as i64)
                .map(|i| ((((i * 7919) % 1000) as f64 / 333.0 - 1.5) as f32) as f64)
                .collect();
            let t: Vec<f64> = (0..n as i64)
                .map(|i| (((((i * 104729) % 61) - 30) as f64 / 10.0) as f32) as f64)
                .collect();
            assert_eq!(mae_f32(&p, &t), mae, "mae n={n}");
            assert_eq!(pearson(&p, &t), corr, "corr n={n}");
        }
    }

    #[test]
    fn round_decimals_is_python_round() {
        // Python: round(0.03125, 4) == 0.0312 (exact tie -> even), round(0.15625, 4) ==
        // 0.1562, round(0.00015, 4) == 0.0001 (0.00015 is below the tie in binary),
        // round(2.675, 2) == 2.67, round(0.5, 0) == 0.0, round(1.5, 0) == 2.0,
        // round(-0.03125, 4) == -0.0312, round(0.99996, 4) == 1.0, round(9.99995, 4) == 10.0
        // (9.99995 is above the tie in binary), round(-0.030285538, 4) == -0.0303.
        let cases = [
            (0.03125, 4, 0.0312),
            (0.15625, 4, 0.1562),
            (0.00015, 4, 0.0001),
            (2.675, 2, 2.67),
            (0.5, 0, 0.0),
            (1.5, 0, 2.0),
            (2.5, 0, 2.0),
            (-0.03125, 4, -0.0312),
            (0.99996, 4, 1.0),
            (9.99995, 4, 10.0),
            (-0.030285538038383443, 4, -0.0303),
            (0.5040227240268499, 4, 0.504),
        ];
        for (x, nd, want) in cases {
            assert_eq!(round_decimals(x, nd), want, "round({x}, {nd})");
        }
        assert!(round4(f64::NAN).is_nan());
        assert_eq!(round4(f64::INFINITY), f64::INFINITY);
        assert!(round4(-0.00001).is_sign_negative());
    }

    #[test]
    fn weighted_f1_follows_sklearn() {
        // y_true = [0,0,1,1,1], y_pred = [0,1,1,1,0]:
        // class 0: TP 1, FP 1, FN 1 -> F1 = 2/4 = 0.5, support 2
        // class 1: TP 2, FP 1, FN 1 -> F1 = 4/6, support 3
        // weighted = (2*0.5 + 3*4/6) / 5 = 3/5 = 0.6
        let f = weighted_f1(&[0u8, 0, 1, 1, 1], &[0, 1, 1, 1, 0]);
        assert!((f - 0.6).abs() < 1e-15);
        // Class only in y_pred: weight 0, but it is in the union (no effect on weights).
        // y_true all 0, y_pred = [0, 1]: class 0 F1 = 2/3, support 2 -> 2/3.
        assert!((weighted_f1(&[0u8, 0], &[0, 1]) - 2.0 / 3.0).abs() < 1e-15);
        // Swapped arguments change the weights.
        // y_true = [T,T,T,F], y_pred = [T,T,F,F]: F1_T = 4/5, F1_F = 2/3;
        // weights 3:1 -> (2.4 + 2/3) / 4; swapped, weights 2:2 -> (1.6 + 4/3) / 4.
        let a = weighted_f1(&[true, true, true, false], &[true, true, false, false]);
        let b = weighted_f1(&[true, true, false, false], &[true, true, true, false]);
        assert!((a - (2.4 + 2.0 / 3.0) / 4.0).abs() < 1e-15);
        assert!((b - (1.6 + 4.0 / 3.0) / 4.0).abs() < 1e-15);
        assert!(weighted_f1::<u8>(&[], &[]).is_nan());
    }

    #[test]
    fn rounding_is_half_to_even_and_zero_prediction_is_negative() {
        // p = [0.5, 1.5, 2.5, -2.5, 0.0], t = [0, 2, 2, -2, 1]
        // round(p) = [0, 2, 2, -2, 0] -> 4 of 5 equal to round(t) = [0, 2, 2, -2, 1].
        let p = [0.5, 1.5, 2.5, -2.5, 0.0];
        let t = [0.0, 2.0, 2.0, -2.0, 1.0];
        assert_eq!(multiclass_acc(&p, &t, 3.0), 0.8);
        let m = sentiment_mult(&p, &t).unwrap();
        // Non-zero labels: t = [2, 2, -2, 1]; p > 0: [T, T, F, F] vs t > 0: [T, T, F, T].
        assert_eq!(m.acc_2, 0.75);
        let mm = sentiment_mmsa(&p, &t).unwrap();
        // Has0: p >= 0 = [T,T,T,F,T], t >= 0 = [T,T,T,F,T] -> 1.0
        assert_eq!(mm.has0_acc_2, 1.0);
    }

    #[test]
    fn emotion_argmax_ties_go_to_class_zero() {
        // One sample, all logits equal -> predictions 0 for all four emotions.
        let p = [0.0; 8];
        let m = emotion_mult(&p, &[0.0, 0.0, 0.0, 1.0]).unwrap();
        assert_eq!(m.neutral.acc, 1.0);
        assert_eq!(m.angry.acc, 0.0);
        assert!(matches!(
            emotion_mult(&p, &[0.0, 2.0, 0.0, 0.0]),
            Err(MetricsError::BadLabel { index: 1, .. })
        ));
        assert!(matches!(
            emotion_mult(&p[..7], &[0.0; 4]),
            Err(MetricsError::Shape(_))
        ));
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        assert!(matches!(
            sentiment_mult(&[1.0, 2.0], &[1.0]),
            Err(MetricsError::Shape(_))
        ));
        assert!("nope".parse::<Task>().is_err());
        assert_eq!("MOSEI".parse::<Task>().unwrap(), Task::Mosei);
    }

    #[test]
    fn table_labels_sets_and_acc2_variants() {
        let (_, p, l) = fixture("sentiment_a");
        let table = evaluate(Task::Mosi, &p, &l).unwrap().table();
        assert!(table.contains("metric set: mult"));
        assert!(table.contains("metric set: mmsa"));
        assert!(table.contains("Acc2 (Has0"));
        assert!(table.contains("Acc2 (Non0"));
        // acc_2 = 25/26 = 96.15..% -> "96.2"; MAE 0.5918 -> "0.592"; corr -> "0.902".
        assert!(table.contains("96.2"));
        assert!(table.contains("0.592"));
        assert!(table.contains("0.902"));
    }

    #[test]
    fn aggregate_reports_population_and_sample_std() {
        let run = |x: f64| Metrics::Sentiment {
            mult: sentiment_mult(&[x, -1.0, 2.0], &[1.0, -1.0, 2.0]).unwrap(),
            mmsa: sentiment_mmsa(&[x, -1.0, 2.0], &[1.0, -1.0, 2.0]).unwrap(),
        };
        // mult.mae over the runs: |x - 1| / 3 for x = 1, 2, 4 -> 0, 1/3, 1.
        let agg = aggregate(&[run(1.0), run(2.0), run(4.0)]);
        let s = agg.stats["mult.mae"];
        let vals = [0.0f64, (1.0f32 / 3.0) as f64, 1.0];
        let mean = vals.iter().sum::<f64>() / 3.0;
        let ss: f64 = vals.iter().map(|v| (v - mean).powi(2)).sum();
        assert!((s.mean - mean).abs() < 1e-12);
        assert!((s.std - (ss / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.std_sample - (ss / 2.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.n, 3);
        let table = agg.table();
        assert!(table.contains("3 runs, mean ± population std"));
        assert!(table.contains(" ± "));
        assert!(agg.to_json()["mmsa.Has0_acc_2"]["std"].is_number());
    }
}
