//! Prediction files: CSV with a header naming the columns.
//!
//! * MOSI / MOSEI: `pred,label`.
//! * IEMOCAP: `pred_0,..,pred_7,label_0,..,label_3` (logits viewed `[4, 2]`, labels 0/1).
//!
//! Columns are found by name (any order); one optional `id` column is ignored. Every other
//! cell must be a finite number. Errors name the file, the 1-based line and the problem.
//! Fields follow RFC 4180: a field holding a comma, a double quote or a line break is
//! quoted (`"a,b"`, `"say ""hi"""`); [`csv_field`] writes them, the reader accepts them.

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
    let text = crate::durable::read_string_capped(path, crate::durable::CSV_CAP, "prediction CSV")
        .map_err(|e| CsvError {
            file: name.clone(),
            line: 0,
            message: format!("{e:#}")
                .strip_prefix(&format!("{name}: "))
                .map(str::to_string)
                .unwrap_or_else(|| format!("{e:#}")),
        })?;
    parse_predictions(&text, task, &name)
}

/// One CSV field per RFC 4180: quoted (inner quotes doubled) when it holds a comma, a
/// double quote or a line break, as is otherwise.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV record: the 1-based line it starts on and its fields.
type Record = (usize, Vec<String>);

/// Splits CSV text into records of fields (RFC 4180 quoting; CRLF or LF line ends), each
/// with the 1-based line it starts on. An unterminated quote is an error at its line.
fn records(text: &str) -> Result<Vec<Record>, (usize, String)> {
    let mut out = Vec::new();
    let (mut fields, mut field) = (Vec::new(), String::new());
    let (mut line, mut start, mut quoted, mut was_quoted) = (1usize, 1usize, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                out.push((start, std::mem::take(&mut fields)));
                was_quoted = false;
                line += 1;
                start = line;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err((start, "a quoted field is not closed".into()));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        out.push((start, fields));
    }
    Ok(out)
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
    let recs = records(text).map_err(|(line, m)| err(line, m))?;
    let mut lines = recs.into_iter();
    let (_, header) = lines
        .next()
        .ok_or_else(|| err(1, "empty file: expected a header line".into()))?;
    let header: Vec<&str> = header.iter().map(|c| c.trim()).collect();
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
        if line.len() == 1 && line[0].trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.iter().map(|c| c.trim()).collect();
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

#[cfg(test)]
mod quoting_tests {
    use super::*;

    #[test]
    fn quoted_ids_round_trip() {
        let ids = ["plain", "a,b", "say \"hi\"", "two\nlines", "cr\r\nlf"];
        let mut text = String::from("id,pred,label\r\n");
        for (i, id) in ids.iter().enumerate() {
            text.push_str(&format!("{},{}.5,{}\n", csv_field(id), i, i));
        }
        let (p, l) = parse_predictions(&text, Task::Mosi, "p.csv").unwrap();
        assert_eq!(p, vec![0.5, 1.5, 2.5, 3.5, 4.5]);
        assert_eq!(l, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        let recs = records(&text).unwrap();
        let got: Vec<&str> = recs[1..].iter().map(|(_, r)| r[0].as_str()).collect();
        assert_eq!(got, ids);
        // Line numbers count the line breaks inside quotes.
        let e = parse_predictions("id,pred,label\n\"a\nb\",x,1\n", Task::Mosi, "p.csv")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "p.csv:2: column 2 (pred): \"x\" is not a number");
        let e = parse_predictions("id,pred,label\n\"open,1,1\n", Task::Mosi, "p.csv")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "p.csv:2: a quoted field is not closed");
    }
}
