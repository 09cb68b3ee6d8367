//! What a grade says about a pair without its text: features of the request
//! (prompt size, turns, tools) and a summary of each half (status, latency,
//! tokens, cost, answer length), plus the answer text the judges read.
//!
//! Pure. Nothing here logs: the text it extracts is prompt and answer content.

use serde_json::Value;

use crate::proto::v1::{AnswerRecord, HalfSummary, RequestFeatures};

/// A request or answer body as plain JSON, from either record encoding (text in a
/// protobuf record, a value in a JSON record); Null when absent or unreadable.
pub fn to_json(json_text: &str, v: Option<&pbjson_types::Value>) -> Value {
    crate::record::body_value(json_text, v).unwrap_or(Value::Null)
}

/// The text of a message's `content`: a string, or the text parts of a content array.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The length in characters of [`content_text`]'s text, without building it.
pub fn content_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => {
            let texts = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()));
            let (n, chars) = texts.fold((0usize, 0usize), |(n, chars), t| (n + 1, chars + t.chars().count()));
            chars + n.saturating_sub(1) // the newlines joining the parts
        }
        _ => 0,
    }
}

/// The answer an upstream gave: `choices[0].message.content`, and when the model
/// asked for tools instead, its tool calls as JSON (so a judge can compare them).
pub fn answer_text(body: &Value) -> String {
    let message = body.pointer("/choices/0/message");
    let text = message.and_then(|m| m.get("content")).map(content_text).unwrap_or_default();
    match message.and_then(|m| m.get("tool_calls")).filter(|t| t.as_array().is_some_and(|a| !a.is_empty())) {
        Some(calls) if text.is_empty() => format!("[tool calls] {calls}"),
        Some(calls) => format!("{text}\n[tool calls] {calls}"),
        None => text,
    }
}

/// Request features, for slicing grades by cohorts nobody labelled.
pub fn request_features(request: &Value, primary_input_tokens: u32) -> RequestFeatures {
    let messages = request.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    let prompt_chars: usize = messages.iter().filter_map(|m| m.get("content")).map(content_chars).sum();
    let turns = messages.iter().filter(|m| m.get("role").and_then(Value::as_str) == Some("user")).count();
    let non_empty = |k: &str| request.get(k).is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()) || t.is_object());
    let prompt_tokens = if primary_input_tokens > 0 { primary_input_tokens } else { prompt_chars.div_ceil(4) as u32 };
    RequestFeatures {
        prompt_tokens,
        prompt_chars: prompt_chars as u32,
        turns: turns as u32,
        messages: messages.len() as u32,
        tools_present: non_empty("tools") || non_empty("functions"),
    }
}

/// True when a half arrived with an error or a non-2xx status.
pub fn failed(a: &AnswerRecord) -> bool {
    a.present && (!a.error.is_empty() || !(200..300).contains(&a.status_code))
}

/// A half summarised; `answer` is its text, when it has one.
pub fn half_summary(a: Option<&AnswerRecord>, answer: &str) -> HalfSummary {
    let Some(a) = a else { return HalfSummary::default() };
    HalfSummary {
        present: a.present,
        failed: failed(a),
        status_code: a.status_code,
        latency_ms: a.latency_ms,
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
        cost_usd: a.cost_usd,
        answer_chars: answer.chars().count() as u32,
        error: a.error.clone(),
    }
}

/// The answer text of a half with its `body` (a [`Pair`](super::pair::Pair)'s): the
/// message content of a JSON answer, the body itself when the answer was plain text
/// (`body_is_text`), empty when absent.
pub fn half_text(half: Option<&AnswerRecord>, body: Value) -> String {
    match half {
        Some(a) if a.present && a.body_is_text => match body {
            Value::String(text) => text,
            _ => String::new(),
        },
        Some(a) if a.present => answer_text(&body),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::PairRecord;
    use serde_json::json;

    #[test]
    fn a_plain_text_answer_is_judged_as_its_text_not_as_empty() {
        let text = AnswerRecord { present: true, body_is_text: true, body: Some("The result is 42.".to_string().into()), ..Default::default() };
        let json = AnswerRecord { present: true, body_json: r#"{"choices":[{"message":{"content":"41"}}]}"#.into(), ..Default::default() };
        let pair = super::super::pair::Pair::from(PairRecord { primary: Some(text), counterfactual: Some(json), ..Default::default() });
        assert_eq!(half_text(pair.record.primary.as_ref(), pair.primary_body), "The result is 42.");
        assert_eq!(half_text(pair.record.counterfactual.as_ref(), pair.counterfactual_body), "41");
    }

    #[test]
    fn features_count_turns_chars_and_tools() {
        let req = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "why?"}]}
        ], "tools": [{"type": "function"}]});
        let f = request_features(&req, 0);
        assert_eq!((f.turns, f.messages, f.prompt_chars), (2, 4, 8 + 5 + 2 + 4));
        assert!(f.tools_present);
        assert_eq!(f.prompt_tokens, 5, "19 chars / 4, rounded up");
        assert_eq!(request_features(&req, 120).prompt_tokens, 120, "the primary's usage wins");
        assert!(!request_features(&json!({"messages": [], "tools": []}), 0).tools_present);
    }

    #[test]
    fn content_chars_counts_what_content_text_builds() {
        for c in [json!("héllo"), json!([{"type": "text", "text": "a"}, "bç", {"type": "image"}, {"text": 3}, {"text": ""}]), json!([]), json!(null), json!({"text": "x"}), json!(["", ""])] {
            assert_eq!(content_chars(&c), content_text(&c).chars().count(), "{c}");
        }
    }

    #[test]
    fn answer_text_reads_content_and_tool_calls() {
        assert_eq!(answer_text(&json!({"choices": [{"message": {"content": "42"}}]})), "42");
        let t = answer_text(&json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": "a"}]}}]}));
        assert_eq!(t, r#"[tool calls] [{"id":"a"}]"#);
        assert_eq!(answer_text(&json!({"error": "x"})), "");
        assert_eq!(answer_text(&json!({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]})), "a\nb");
        assert_eq!(answer_text(&json!({"choices": [{"message": {"content": "let me", "tool_calls": [{"id": "a"}]}}]})), "let me\n[tool calls] [{\"id\":\"a\"}]");
    }

    #[test]
    fn failed_means_error_or_non_2xx() {
        let ok = AnswerRecord { present: true, status_code: 200, ..Default::default() };
        assert!(!failed(&ok));
        assert!(failed(&AnswerRecord { status_code: 500, ..ok.clone() }));
        assert!(failed(&AnswerRecord { error: "timeout".into(), status_code: 0, ..ok.clone() }));
        assert!(!failed(&AnswerRecord::default()), "an absent half is missing, not failed");
        let s = half_summary(Some(&ok), "héllo");
        assert_eq!(s.answer_chars, 5);
        assert!(s.present && !s.failed);
    }
}
