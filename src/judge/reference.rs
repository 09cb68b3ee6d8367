//! The reference judge: each answer checked against a known answer the pair carries
//! (a label, or a JSON pointer into the request), by exact, normalised, numeric or
//! regex match. No model, so no cost and no noise: what tests, the demo and teams
//! with labelled traffic use.
//!
//! Pure.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use super::config::{MatchMethod, ReferenceConfig};
use crate::proto::v1::PairRecord;

/// The known answer of a pair: the label first, then the request pointer.
pub fn known_answer(pair: &PairRecord, request: &Value, config: &ReferenceConfig) -> Option<String> {
    if let Some(v) = config.label.as_ref().and_then(|l| pair.labels.get(l)) {
        return Some(v.clone());
    }
    let v = request.pointer(config.pointer.as_deref()?)?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// SQuAD-style normalisation: lowercase, punctuation and the articles a/an/the
/// removed, whitespace collapsed.
pub fn normalize(s: &str) -> String {
    let lowered: String = s.to_lowercase().chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' }).collect();
    lowered.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

fn number_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+").expect("static regex"))
}

fn parse_number(s: &str) -> Option<f64> {
    s.replace(',', "").parse().ok()
}

/// Whether `answer` matches `known` by `method`; an error when the known answer is
/// unusable (not a number for `numeric`, not a regex for `regex`).
pub fn is_correct(answer: &str, known: &str, method: MatchMethod, tolerance: f64) -> Result<bool, String> {
    Ok(match method {
        MatchMethod::Exact => answer.trim() == known.trim(),
        MatchMethod::Normalized => normalize(answer) == normalize(known),
        MatchMethod::Numeric => {
            let want = parse_number(known.trim()).ok_or("the known answer is not a number")?;
            // The last number: answers usually end with the result after their working.
            number_re().find_iter(answer).last().and_then(|m| parse_number(m.as_str())).is_some_and(|got| (got - want).abs() <= tolerance)
        }
        MatchMethod::Regex => Regex::new(known).map_err(|_| "the known answer is not a valid regex")?.is_match(answer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[test]
    fn exact_and_normalized() {
        assert!(is_correct(" Paris\n", "Paris", MatchMethod::Exact, 0.0).unwrap());
        assert!(!is_correct("paris", "Paris", MatchMethod::Exact, 0.0).unwrap());
        assert!(is_correct("The Eiffel  tower!", "eiffel tower", MatchMethod::Normalized, 0.0).unwrap());
        assert!(!is_correct("The Eiffel tower is in Paris", "eiffel tower", MatchMethod::Normalized, 0.0).unwrap());
        assert_eq!(normalize("Ça, c'est THE end."), "ça c est end");
    }

    #[test]
    fn numeric_takes_the_last_number_within_tolerance() {
        assert!(is_correct("3 apples plus 4 is 7.", "7", MatchMethod::Numeric, 0.0).unwrap());
        assert!(is_correct("total: 1,234.5", "1234.5", MatchMethod::Numeric, 1e-9).unwrap());
        assert!(is_correct("about 3.1416", "3.14159", MatchMethod::Numeric, 1e-4).unwrap());
        assert!(!is_correct("about 3.15", "3.14159", MatchMethod::Numeric, 1e-4).unwrap());
        assert!(!is_correct("no number", "1", MatchMethod::Numeric, 0.5).unwrap());
        assert!(is_correct("-2e3", "-2000", MatchMethod::Numeric, 0.0).unwrap());
        assert!(is_correct("x", "seven", MatchMethod::Numeric, 0.0).is_err());
    }

    #[test]
    fn regex_matches_and_bad_patterns_are_errors() {
        assert!(is_correct("The answer is 42.", r"\b42\b", MatchMethod::Regex, 0.0).unwrap());
        assert!(!is_correct("420", r"^42$", MatchMethod::Regex, 0.0).unwrap());
        assert!(is_correct("x", "(", MatchMethod::Regex, 0.0).is_err());
    }

    #[test]
    fn known_answer_from_label_then_pointer() {
        let cfg = ReferenceConfig { label: Some("expected_answer".into()), pointer: Some("/metadata/answer".into()), method: MatchMethod::Exact, tolerance: 0.0 };
        let req = json!({"metadata": {"answer": 12}});
        let mut pair = PairRecord { labels: HashMap::from([("expected_answer".into(), "Paris".into())]), ..Default::default() };
        assert_eq!(known_answer(&pair, &req, &cfg).as_deref(), Some("Paris"));
        pair.labels.clear();
        assert_eq!(known_answer(&pair, &req, &cfg).as_deref(), Some("12"));
        assert_eq!(known_answer(&pair, &json!({}), &cfg), None);
    }
}
