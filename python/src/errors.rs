//! mica's errors as Python exceptions: the classes of `mica/_errors.py` (a `MicaError`
//! hierarchy), chosen by the error's type where the core exposes it, else by what was
//! being done; the message is mica's own (anyhow's chain, outermost first).

use mica::data::pickle::PickleErrorKind;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// Which `mica` exception to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any other failure.
    Mica,
    /// Data could not be read or does not fit (`DataError`).
    Data,
    /// A pickle asks for something it may not (`UnsafePickleError`, a `DataError`).
    UnsafePickle,
    /// Bad options or config (`ConfigError`).
    Config,
    /// A checkpoint could not be loaded (`CheckpointError`).
    Checkpoint,
    /// Predictions or labels the metrics refuse (`MetricsError`).
    Metrics,
    /// Training failed (`TrainingError`).
    Training,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::Mica => "MicaError",
            Kind::Data => "DataError",
            Kind::UnsafePickle => "UnsafePickleError",
            Kind::Config => "ConfigError",
            Kind::Checkpoint => "CheckpointError",
            Kind::Metrics => "MetricsError",
            Kind::Training => "TrainingError",
        }
    }
}

/// An exception of class `kind` with `message`.
pub fn py_error(kind: Kind, message: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("mica._errors")
            .and_then(|m| m.getattr(kind.class_name()))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(c) => PyErr::from_type(c, message),
            Err(_) => PyRuntimeError::new_err(message),
        }
    })
}

/// The kind of an error by its type, where the core exposes one.
fn kind_of(e: &anyhow::Error) -> Option<Kind> {
    for cause in e.chain() {
        if let Some(d) = cause.downcast_ref::<mica::data::DataError>() {
            if let mica::data::DataError::Pickle { error, .. } = d {
                if matches!(error.kind, PickleErrorKind::ForbiddenGlobal { .. }) {
                    return Some(Kind::UnsafePickle);
                }
            }
            return Some(Kind::Data);
        }
        if cause.downcast_ref::<mica::eval::MetricsError>().is_some()
            || cause.downcast_ref::<mica::eval::CsvError>().is_some()
        {
            return Some(Kind::Metrics);
        }
    }
    None
}

/// A Python exception for `e`: the class from the error's type, else `default` (what was
/// being done); the message is the whole chain.
pub fn to_py(e: anyhow::Error, default: Kind) -> PyErr {
    py_error(kind_of(&e).unwrap_or(default), format!("{e:#}"))
}

/// A [`mica::data::DataError`] as a Python exception.
pub fn from_data(e: mica::data::DataError) -> PyErr {
    to_py(anyhow::Error::new(e), Kind::Data)
}
