//! Redaction: regular expressions from config applied to request and answer
//! bodies before they leave the process.
//!
//! For JSON bodies the rules run on every string value (keys and structure are
//! kept, so a rule can never break the JSON); other bodies are treated as text.
//! Pure.

use bytes::Bytes;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Applied in order to every string in request and answer bodies.
    pub rules: Vec<RedactionRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedactionRule {
    /// Names the rule in the replacement: `[REDACTED:<name>]` unless `replacement` is set.
    pub name: String,
    /// A regular expression (Rust `regex` syntax).
    pub pattern: String,
    #[serde(default)]
    pub replacement: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    rules: Vec<(Regex, String)>,
}

impl Redactor {
    pub fn new(config: &RedactionConfig) -> Result<Self, ConfigError> {
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let re = Regex::new(&r.pattern)
                    .map_err(|e| ConfigError::new(format!("redaction.rules[{i}].pattern"), e.to_string()))?;
                Ok((re, r.replacement.clone().unwrap_or_else(|| format!("[REDACTED:{}]", r.name))))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn text(&self, s: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for (re, rep) in &self.rules {
            let cur = out.as_deref().unwrap_or(s);
            if re.is_match(cur) {
                out = Some(re.replace_all(cur, rep.as_str()).into_owned());
            }
        }
        out
    }

    fn walk(&self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => match self.text(s) {
                Some(new) => {
                    *s = new;
                    true
                }
                None => false,
            },
            Value::Array(a) => a.iter_mut().fold(false, |acc, x| self.walk(x) | acc),
            Value::Object(o) => o.values_mut().fold(false, |acc, x| self.walk(x) | acc),
            _ => false,
        }
    }

    /// The body with every match replaced. Returns the input untouched when nothing matched.
    pub fn apply(&self, body: &Bytes) -> Bytes {
        if self.rules.is_empty() || body.is_empty() {
            return body.clone();
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(mut v) => {
                if self.walk(&mut v) {
                    Bytes::from(serde_json::to_vec(&v).expect("a Value always serializes"))
                } else {
                    body.clone()
                }
            }
            Err(_) => match self.text(&String::from_utf8_lossy(body)) {
                Some(t) => Bytes::from(t),
                None => body.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules the README recommends, tested on real-looking PII.
    pub fn pii() -> Redactor {
        Redactor::new(&RedactionConfig {
            rules: vec![
                RedactionRule { name: "email".into(), pattern: r"[\w.+-]+@[\w-]+\.[\w.-]+".into(), replacement: None },
                RedactionRule { name: "card".into(), pattern: r"\b(?:\d[ -]?){13,19}\b".into(), replacement: None },
                RedactionRule {
                    name: "phone".into(),
                    pattern: r"\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}".into(),
                    replacement: None,
                },
            ],
        })
        .unwrap()
    }

    #[test]
    fn redacts_pii_inside_json_strings_and_keeps_the_json() {
        let body = Bytes::from(
            r#"{"messages":[{"role":"user","content":"I'm jane.doe+work@example.co.uk, card 4111 1111 1111 1111, call +1 (415) 555-0134"}],"n":4111111111111111}"#,
        );
        let out = pii().apply(&body);
        let v: Value = serde_json::from_slice(&out).expect("still JSON");
        let c = v["messages"][0]["content"].as_str().unwrap();
        assert!(!c.contains("jane.doe") && !c.contains("4111 1111") && !c.contains("555-0134"), "{c}");
        assert!(c.contains("[REDACTED:email]") && c.contains("[REDACTED:card]") && c.contains("[REDACTED:phone]"), "{c}");
        assert_eq!(v["n"], 4111111111111111u64, "numbers are not strings; rules apply to text only");
    }

    #[test]
    fn a_rewritten_body_keeps_its_key_order_and_integers() {
        let body = Bytes::from_static(br#"{"z":1,"messages":[{"content":"mail bob@example.com"}],"a":12345678901234567,"m":2}"#);
        let out = String::from_utf8(pii().apply(&body).to_vec()).unwrap();
        assert_eq!(out, r#"{"z":1,"messages":[{"content":"mail [REDACTED:email]"}],"a":12345678901234567,"m":2}"#);
    }

    #[test]
    fn untouched_when_nothing_matches_or_no_rules() {
        let body = Bytes::from_static(br#"{"content":"what is 2+2?"}"#);
        assert_eq!(pii().apply(&body), body);
        assert_eq!(Redactor::default().apply(&body), body);
    }

    #[test]
    fn non_json_bodies_are_redacted_as_text() {
        let out = pii().apply(&Bytes::from_static(b"error for bob@example.com"));
        assert_eq!(out, Bytes::from_static(b"error for [REDACTED:email]"));
    }

    #[test]
    fn bad_pattern_names_the_key() {
        let e = Redactor::new(&RedactionConfig {
            rules: vec![RedactionRule { name: "x".into(), pattern: "(".into(), replacement: None }],
        })
        .unwrap_err();
        assert_eq!(e.key, "redaction.rules[0].pattern");
    }
}
