//! Prediction files: CSV with a header naming the columns.
//!
//! * MOSI / MOSEI: `pred,label`.
//! * IEMOCAP: `pred_0,..,pred_7,label_0,..,label_3` (logits viewed `[4, 2]`, labels 0/1).
//!
//! Columns are found by name (any order); one optional `id` column is ignored. Every other
//! cell must be a finite number. Errors name the file, the 1-based line and the problem.

use super::metrics::Task;
use std::path::Path;

/// A problem in a prediction file, shown as `file:line: message` (`file: message` when
/// the file could not be read).
#[derive(Debug, PartialEq)]
pub struct CsvError {
    /// The file as given.
    pub file: String,
    /// 1-based line number (0 when the file could not be read at all).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CsvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for CsvError {}

/// Column names a task needs, in the order their values are returned:
/// predictions first, then labels.
pub fn expected_columns(task: Task) -> (Vec<String>, Vec<String>) {
    if task.is_sentiment() {
        (vec!["pred".into()], vec!["label".into()])
    } else {
        (
            (0..8).map(|i| format!("pred_{i}")).collect(),
            (0..4).map(|i| format!("label_{i}")).collect(),
        )
    }
}

/// Reads a prediction CSV from disk, see [`parse_predictions`].
pub fn read_predictions(path: &Path, task: Task) -> Result<(Vec<f64>, Vec<f64>), CsvError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CsvError {
        file: name.clone(),
        line: 0,
        message: format!("cannot read file: {e}"),
    })?;
    parse_predictions(&text, task, &name)
}

/// Parses prediction CSV text (`file` only names it in errors). Returns the flattened
/// predictions (`N * task.pred_width()`) and labels (`N * task.label_width()`).
pub fn parse_predictions(
    text: &str,
    task: Task,
    file: &str,
) -> Result<(Vec<f64>, Vec<f64>), CsvError> {
    let err = |line: usize, message: String| CsvError {
        file: file.to_string(),
        line,
        message,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let (_, header) = lines
        .next()
        .ok_or_else(|| err(1, "empty file: expected a header line".into()))?;
    let header: Vec<&str> = header.split(',').map(|c| c.trim()).collect();
    let (pred_cols, label_cols) = expected_columns(task);
    let wanted: Vec<&String> = pred_cols.iter().chain(&label_cols).collect();
    let expected_header = wanted
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let ignored = header.iter().filter(|c| **c == "id").count();
    if header.len() - ignored != wanted.len() || ignored > 1 {
        return Err(err(
            1,
            format!(
                "header has {} columns ({}), task {} expects {} columns: {} (plus an optional id)",
                header.len(),
                header.join(","),
                task,
                wanted.len(),
                expected_header
            ),
        ));
    }
    let mut index = Vec::with_capacity(wanted.len());
    for w in &wanted {
        let pos = header.iter().position(|c| c == w).ok_or_else(|| {
            err(
                1,
                format!(
                    "header lacks column {w:?} (header: {}; task {} expects {})",
                    header.join(","),
                    task,
                    expected_header
                ),
            )
        })?;
        index.push(pos);
    }
    let (mut preds, mut labels) = (Vec::new(), Vec::new());
    let mut rows = 0usize;
    for (no, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(|c| c.trim()).collect();
        if cells.len() != header.len() {
            return Err(err(
                no,
                format!("{} cells, the header has {}", cells.len(), header.len()),
            ));
        }
        for (k, &pos) in index.iter().enumerate() {
            let cell = cells[pos];
            let v: f64 = cell.parse().map_err(|_| {
                err(
                    no,
                    format!(
                        "column {} ({}): {cell:?} is not a number",
                        pos + 1,
                        header[pos]
                    ),
                )
            })?;
            if !v.is_finite() {
                return Err(err(
                    no,
                    format!(
                        "column {} ({}): {cell:?} is not finite",
                        pos + 1,
                        header[pos]
                    ),
                ));
            }
            if k < pred_cols.len() {
                preds.push(v);
            } else if !task.is_sentiment() && v != 0.0 && v != 1.0 {
                return Err(err(
                    no,
                    format!(
                        "column {} ({}): {cell:?} is not 0 or 1",
                        pos + 1,
                        header[pos]
                    ),
                ));
            } else {
                labels.push(v);
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(err(1, "no data rows after the header".into()));
    }
    Ok((preds, labels))
}
