"""mica's exceptions. Every error the Rust core reports arrives as one of these, with
mica's own message (it names the file, option or value and the problem)."""

from __future__ import annotations


class MicaError(Exception):
    """Base class of every error raised by mica."""


class DataError(MicaError, ValueError):
    """A dataset could not be read, or its arrays do not fit (shapes, dtypes, labels)."""


class UnsafePickleError(DataError):
    """A pickle asks for a global that mica does not allow (e.g. ``os.system``): it is
    refused before anything in it is executed."""


class ConfigError(MicaError, ValueError):
    """Bad options: an unknown or invalid training option, preset, task or size."""


class CheckpointError(MicaError):
    """A checkpoint could not be loaded (missing, corrupted, non-finite weights)."""


class MetricsError(MicaError, ValueError):
    """Predictions or labels the metrics refuse (shapes, non-finite values)."""


class TrainingError(MicaError):
    """Training failed (e.g. a non-finite loss); the last good checkpoint is kept."""


__all__ = [
    "MicaError",
    "DataError",
    "UnsafePickleError",
    "ConfigError",
    "CheckpointError",
    "MetricsError",
    "TrainingError",
]
