//! Minimal pickle writer (placeholder).
