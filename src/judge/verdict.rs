//! Strict parsing of a judge's verdict. A verdict is "A", "B" or "tie", given either
//! as structured output (`{"verdict": "A"}`, the whole message) or as exactly one
//! marker line `[[VERDICT: A]]`. Anything else is malformed: retried by the client,
//! then recorded as a judge error. This module never guesses a verdict from prose.
//!
//! Pure.

use serde_json::Value;

/// What the judge preferred, as labelled in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    A,
    B,
    Tie,
}

impl Raw {
    pub fn as_str(self) -> &'static str {
        match self {
            Raw::A => "A",
            Raw::B => "B",
            Raw::Tie => "tie",
        }
    }

    fn parse(s: &str) -> Option<Raw> {
        match s {
            "A" => Some(Raw::A),
            "B" => Some(Raw::B),
            "tie" | "TIE" | "Tie" => Some(Raw::Tie),
            _ => None,
        }
    }
}

/// The marker the prompt asks for when the endpoint has no structured output.
pub const MARKER_PREFIX: &str = "[[VERDICT: ";

/// Why a judge answer is not a verdict (short, and free of the answer's text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("no verdict marker")]
    NoMarker,
    #[error("conflicting verdict markers")]
    Conflicting,
    #[error("verdict value not A, B or tie")]
    BadValue,
    #[error("structured verdict is not a JSON object with a `verdict` field")]
    NotStructured,
}

/// Parses structured output: the whole message is `{"verdict": "A"|"B"|"tie"}`.
pub fn parse_structured(content: &str) -> Result<Raw, Malformed> {
    let v: Value = serde_json::from_str(content.trim()).map_err(|_| Malformed::NotStructured)?;
    let s = v.get("verdict").and_then(Value::as_str).ok_or(Malformed::NotStructured)?;
    Raw::parse(s).ok_or(Malformed::BadValue)
}

/// Parses the marker format: `[[VERDICT: X]]` present, every occurrence agreeing.
pub fn parse_marker(content: &str) -> Result<Raw, Malformed> {
    let mut found: Option<Raw> = None;
    let mut rest = content;
    while let Some(i) = rest.find(MARKER_PREFIX) {
        let after = &rest[i + MARKER_PREFIX.len()..];
        let end = after.find("]]").ok_or(Malformed::BadValue)?;
        let raw = Raw::parse(after[..end].trim()).ok_or(Malformed::BadValue)?;
        if found.is_some_and(|f| f != raw) {
            return Err(Malformed::Conflicting);
        }
        found = Some(raw);
        rest = &after[end + 2..];
    }
    found.ok_or(Malformed::NoMarker)
}

/// Parses with the format the prompt asked for.
pub fn parse(content: &str, structured: bool) -> Result<Raw, Malformed> {
    if structured {
        parse_structured(content)
    } else {
        parse_marker(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_strictly() {
        assert_eq!(parse_marker("B is more complete.\n[[VERDICT: B]]"), Ok(Raw::B));
        assert_eq!(parse_marker("[[VERDICT: tie]]"), Ok(Raw::Tie));
        assert_eq!(parse_marker("[[VERDICT:A]] ... [[VERDICT: A]]"), Ok(Raw::A), "repeats that agree are fine");
        assert_eq!(parse_marker("Answer A is better."), Err(Malformed::NoMarker), "prose is never read as a verdict");
        assert_eq!(parse_marker("[[VERDICT: A]] no wait [[VERDICT: B]]"), Err(Malformed::Conflicting));
        assert_eq!(parse_marker("[[VERDICT: C]]"), Err(Malformed::BadValue));
        assert_eq!(parse_marker("[[VERDICT: A"), Err(Malformed::BadValue));
        assert_eq!(parse_marker("[[VERDICT: a]]"), Err(Malformed::BadValue), "labels are case-sensitive");
    }

    #[test]
    fn structured_output_parses_strictly() {
        assert_eq!(parse_structured(r#"{"verdict":"A"}"#), Ok(Raw::A));
        assert_eq!(parse_structured(" {\"verdict\": \"tie\", \"reason\": \"same\"}\n"), Ok(Raw::Tie));
        assert_eq!(parse_structured(r#"{"verdict":"C"}"#), Err(Malformed::BadValue));
        assert_eq!(parse_structured(r#"{"winner":"A"}"#), Err(Malformed::NotStructured));
        assert_eq!(parse_structured("[[VERDICT: A]]"), Err(Malformed::NotStructured));
        assert_eq!(parse("[[VERDICT: B]]", false), Ok(Raw::B));
    }
}
