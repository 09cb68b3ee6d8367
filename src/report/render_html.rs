//! The `--html` page. PLACEHOLDER: the HTML engineer replaces this module with the
//! self-contained page (SVG forest plot, calibration chart). Must never fetch anything.
use super::model::Report;

/// Renders the report as one self-contained HTML page (placeholder: a minimal page).
pub fn render(report: &Report) -> String {
    format!(
        "<!doctype html><meta charset=\"utf-8\"><title>untaken report</title><p>{} grades, {} findings. The full page is not built yet.</p>\n",
        report.input.grades,
        report.findings.len()
    )
}
