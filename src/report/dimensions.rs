//! Which groupings ("dimensions") a grade belongs to, and its group in each.
//!
//! A slice is any grouping, because the loss hides in the cohort nobody made a slice
//! for: `all`, the router's `slice`, every label named in the config, the reasoning-
//! eligibility score in bands, and features computed from the request itself (prompt
//! length band, turns band, tools present). Direction (route taken → route not taken)
//! is kept separately by the accumulator.
//!
//! Owns: dimension names and band edges. Must never accumulate or judge anything.
use std::borrow::Cow;

use crate::proto::v1::GradeRecord;

/// The group of a grade whose label or feature is missing.
pub const MISSING: &str = "(none)";

/// The dimensions of one report, in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct Dimensions {
    /// Labels to group by, as named in the config / `--label`.
    pub labels: Vec<String>,
    /// Label carrying a reasoning-eligibility score in [0, 1], grouped in tenths.
    pub eligibility_label: Option<String>,
    /// Group by the computed request features too.
    pub features: bool,
}

impl Dimensions {
    /// The dimension names, in the order [`Dimensions::groups_of`] fills groups.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec!["all".to_string(), "slice".to_string()];
        names.extend(self.labels.iter().map(|l| format!("label:{l}")));
        if self.eligibility_label.is_some() {
            names.push("eligibility".to_string());
        }
        if self.features {
            names.extend(["prompt_tokens", "turns", "tools"].map(String::from));
        }
        names
    }

    /// Pushes the grade's group in every dimension onto `out` (cleared first).
    pub fn groups_of<'a>(&self, grade: &'a GradeRecord, out: &mut Vec<Cow<'a, str>>) {
        out.clear();
        out.push(Cow::Borrowed("all"));
        out.push(Cow::Borrowed(if grade.slice.is_empty() { MISSING } else { grade.slice.as_str() }));
        for label in &self.labels {
            out.push(Cow::Borrowed(grade.labels.get(label).map(String::as_str).filter(|v| !v.is_empty()).unwrap_or(MISSING)));
        }
        if let Some(e) = &self.eligibility_label {
            out.push(Cow::Borrowed(match grade.labels.get(e).and_then(|v| parse_unit(v)) {
                Some(score) => eligibility_band(score).1,
                None => MISSING,
            }));
        }
        if self.features {
            match &grade.features {
                Some(f) => {
                    out.push(Cow::Borrowed(prompt_band(f.prompt_tokens)));
                    out.push(Cow::Borrowed(turns_band(f.turns)));
                    out.push(Cow::Borrowed(if f.tools_present { "tools" } else { "no_tools" }));
                }
                None => out.extend([Cow::Borrowed(MISSING), Cow::Borrowed(MISSING), Cow::Borrowed(MISSING)]),
            }
        }
    }
}

/// Prompt length band by tokens: `<256`, `256-1k`, `1k-4k`, `4k-16k`, `>=16k`.
pub fn prompt_band(tokens: u32) -> &'static str {
    match tokens {
        0..256 => "<256",
        256..1024 => "256-1k",
        1024..4096 => "1k-4k",
        4096..16384 => "4k-16k",
        _ => ">=16k",
    }
}

/// Turns band by user turns: `1`, `2-3`, `4-7`, `>=8` (0, an unknown count, is `1`).
pub fn turns_band(turns: u32) -> &'static str {
    match turns {
        0 | 1 => "1",
        2..4 => "2-3",
        4..8 => "4-7",
        _ => ">=8",
    }
}

const ELIGIBILITY_BANDS: [&str; 10] =
    ["0.0-0.1", "0.1-0.2", "0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8", "0.8-0.9", "0.9-1.0"];

/// The tenth of [0, 1] a score falls in: (index 0–9, name); 1.0 falls in the last.
pub fn eligibility_band(score: f64) -> (usize, &'static str) {
    let i = ((score * 10.0).floor() as usize).min(9);
    (i, ELIGIBILITY_BANDS[i])
}

/// A label read as a number in [0, 1]; None when it is not one.
pub fn parse_unit(value: &str) -> Option<f64> {
    value.trim().parse::<f64>().ok().filter(|v| (0.0..=1.0).contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::RequestFeatures;

    #[test]
    fn every_grade_has_one_group_per_dimension() {
        let dims = Dimensions { labels: vec!["tenant".into(), "language".into()], eligibility_label: Some("elig".into()), features: true };
        let mut grade = GradeRecord { slice: "code".into(), ..Default::default() };
        grade.labels.insert("tenant".into(), "acme".into());
        grade.labels.insert("elig".into(), "0.93".into());
        grade.features = Some(RequestFeatures { prompt_tokens: 5000, turns: 3, tools_present: true, ..Default::default() });
        let mut out = Vec::new();
        dims.groups_of(&grade, &mut out);
        let names = dims.names();
        assert_eq!(names, ["all", "slice", "label:tenant", "label:language", "eligibility", "prompt_tokens", "turns", "tools"]);
        assert_eq!(out, ["all", "code", "acme", MISSING, "0.9-1.0", "4k-16k", "2-3", "tools"]);
    }

    #[test]
    fn bands_have_closed_lower_edges() {
        assert_eq!(prompt_band(255), "<256");
        assert_eq!(prompt_band(256), "256-1k");
        assert_eq!(prompt_band(16384), ">=16k");
        assert_eq!(turns_band(0), "1");
        assert_eq!(turns_band(8), ">=8");
        assert_eq!(eligibility_band(1.0), (9, "0.9-1.0"));
        assert_eq!(eligibility_band(0.1), (1, "0.1-0.2"));
        assert_eq!(parse_unit("1.5"), None);
        assert_eq!(parse_unit("x"), None);
    }
}
