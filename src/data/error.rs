//! The error type of every dataset reader and writer. Its message always names the file,
//! the place in it (byte offset, or split and key) and the problem.

use std::path::Path;

use super::pickle::PickleError;

/// A failure to read, validate or write a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The pickle could not be parsed (or asks for a forbidden global).
    #[error("{path}: {error}")]
    Pickle {
        /// The file.
        path: String,
        /// The parse error, with its byte offset.
        error: PickleError,
    },
    /// An I/O operation failed.
    #[error("{path}: {action}: {error}")]
    Io {
        /// The file or directory.
        path: String,
        /// What was being done.
        action: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The content does not have the expected layout.
    #[error("{path}: split '{split}', key '{key}': {problem}")]
    Layout {
        /// The file.
        path: String,
        /// The split (`train`, `valid`, `test`, or `-` for the top level).
        split: String,
        /// The key within the split.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A file-level problem (unknown format, bad manifest, truncated file, ...).
    #[error("{path}: {problem}")]
    Format {
        /// The file or directory.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A data file's sha256 differs from the manifest's.
    #[error(
        "{path}: checksum mismatch (sha256 {actual}, manifest says {expected}): the file is \
         corrupted or was modified; convert the dataset again"
    )]
    Checksum {
        /// The data file.
        path: String,
        /// sha256 recorded in the manifest.
        expected: String,
        /// sha256 of the file on disk.
        actual: String,
    },
}

impl DataError {
    /// An I/O error on `path` while doing `action`.
    pub fn io(path: &Path, action: &str, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.display().to_string(),
            action: action.to_string(),
            error: source,
        }
    }

    /// A layout error at `split` / `key` of `path`.
    pub fn layout(path: &Path, split: &str, key: &str, problem: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.display().to_string(),
            split: split.to_string(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    /// A file-level format error.
    pub fn format(path: &Path, problem: impl Into<String>) -> Self {
        DataError::Format {
            path: path.display().to_string(),
            problem: problem.into(),
        }
    }
}
