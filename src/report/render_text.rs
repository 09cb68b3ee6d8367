//! The terminal report.
