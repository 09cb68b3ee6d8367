//! Token usage, tool calls and cost read from an OpenAI chat-completions answer.
//!
//! Pure. Tolerates both the chat-completions names (`prompt_tokens`,
//! `completion_tokens`) and the Responses API names (`input_tokens`,
//! `output_tokens`); a body without `usage` costs 0 and says so by having no tokens.
//! [`read`] parses a body once, without building a tree: it validates the JSON and
//! reads the usage in the same pass.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

/// What a body is, read in one pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BodyKind {
    /// A JSON object, with the usage it reports.
    Object(Usage),
    /// Valid JSON that is not an object (kept verbatim, no usage).
    OtherJson,
    /// Not JSON.
    Text,
}

#[derive(Deserialize)]
struct AnswerView {
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(default)]
    choices: Option<Vec<ChoiceView>>,
}

/// A `usage` object, typed: its token counts read as [`Usage::from_json`] reads them,
/// without building a JSON tree (a number is no allocation; other fields are skipped).
#[derive(Deserialize)]
pub struct UsageView {
    prompt_tokens: Option<Value>,
    completion_tokens: Option<Value>,
    input_tokens: Option<Value>,
    output_tokens: Option<Value>,
}

impl UsageView {
    /// (input, output) tokens: the chat-completions name, else the Responses API one.
    pub fn tokens(&self) -> (u32, u32) {
        let pick = |a: Option<&Value>, b: Option<&Value>| tokens(a).or(tokens(b)).unwrap_or(0);
        (pick(self.prompt_tokens.as_ref(), self.input_tokens.as_ref()), pick(self.completion_tokens.as_ref(), self.output_tokens.as_ref()))
    }
}

#[derive(Deserialize)]
struct ChoiceView {
    #[serde(default)]
    message: Option<MessageView>,
}

#[derive(Deserialize)]
struct MessageView {
    #[serde(default)]
    tool_calls: Option<Vec<IgnoredAny>>,
}

/// Parses `body` once: is it a JSON object, and what usage does it report?
pub fn read(body: &[u8]) -> BodyKind {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        if let Ok(view) = serde_json::from_slice::<AnswerView>(body) {
            return BodyKind::Object(Usage::from_view(&view));
        }
        // An object whose `usage` or `choices` has an unexpected shape: read it the slow way.
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            return BodyKind::Object(Usage::from_json(&value));
        }
        return BodyKind::Text;
    }
    if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
        BodyKind::OtherJson
    } else {
        BodyKind::Text
    }
}

fn tokens(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_u64).map(|t| u32::try_from(t).unwrap_or(u32::MAX))
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Tool calls the model asked for. untaken records them and never executes them.
    pub tool_calls: u32,
}

impl Usage {
    fn from_view(v: &AnswerView) -> Self {
        let (input_tokens, output_tokens) = v.usage.as_ref().map_or((0, 0), UsageView::tokens);
        let tool_calls: usize = v
            .choices
            .iter()
            .flatten()
            .filter_map(|c| c.message.as_ref()?.tool_calls.as_ref().map(Vec::len))
            .sum();
        Self {
            input_tokens,
            output_tokens,
            tool_calls: u32::try_from(tool_calls).unwrap_or(u32::MAX),
        }
    }

    pub fn from_json(body: &Value) -> Self {
        let usage = body.get("usage");
        let tokens = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| usage.and_then(|u| u.get(*n)).and_then(Value::as_u64))
                .map_or(0, |t| u32::try_from(t).unwrap_or(u32::MAX))
        };
        let tool_calls = body
            .get("choices")
            .and_then(Value::as_array)
            .map(|choices| {
                choices
                    .iter()
                    .filter_map(|c| c.pointer("/message/tool_calls").and_then(Value::as_array))
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .unwrap_or(0);
        Self {
            input_tokens: tokens(&["prompt_tokens", "input_tokens"]),
            output_tokens: tokens(&["completion_tokens", "output_tokens"]),
            tool_calls: u32::try_from(tool_calls).unwrap_or(u32::MAX),
        }
    }

    /// Cost in USD at the given prices (USD per million tokens).
    pub fn cost_usd(&self, input_usd_per_mtok: f64, output_usd_per_mtok: f64) -> f64 {
        (f64::from(self.input_tokens) * input_usd_per_mtok + f64::from(self.output_tokens) * output_usd_per_mtok)
            / 1_000_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_chat_completions_usage_and_tool_calls() {
        let body = json!({
            "choices": [{"message": {"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "rm", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
            ]}}],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
        });
        let u = Usage::from_json(&body);
        assert_eq!(u, Usage { input_tokens: 1200, output_tokens: 300, tool_calls: 2 });
        // 1200 × $1.10/M + 300 × $4.40/M = $0.00132 + $0.00132
        assert!((u.cost_usd(1.10, 4.40) - 0.00264).abs() < 1e-12);
    }

    #[test]
    fn reads_responses_api_names() {
        let u = Usage::from_json(&json!({"usage": {"input_tokens": 7, "output_tokens": 9}}));
        assert_eq!((u.input_tokens, u.output_tokens), (7, 9));
    }

    #[test]
    fn one_pass_read_agrees_with_the_tree() {
        let bodies = [
            json!({"choices": [{"message": {"tool_calls": [{"id": "a"}]}}, {"message": {"content": "x"}}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 3}}),
            json!({"usage": {"input_tokens": 7, "output_tokens": 9}}),
            json!({"usage": {"prompt_tokens": "many"}, "choices": "odd"}),
            json!({"usage": {"prompt_tokens": 5_000_000_000u64}}),
            json!({}),
        ];
        for b in bodies {
            let raw = serde_json::to_vec(&b).unwrap();
            assert_eq!(read(&raw), BodyKind::Object(Usage::from_json(&b)), "{b}");
        }
        assert_eq!(read(b"[1, 2]"), BodyKind::OtherJson);
        assert_eq!(read(b"\"text\""), BodyKind::OtherJson);
        assert_eq!(read(b"<html>"), BodyKind::Text);
        assert_eq!(read(b"{\"a\": 1"), BodyKind::Text, "truncated JSON is text");
        assert_eq!(read(b""), BodyKind::Text);
    }

    #[test]
    fn missing_usage_costs_nothing() {
        let u = Usage::from_json(&json!({"choices": []}));
        assert_eq!(u, Usage::default());
        assert_eq!(u.cost_usd(5.0, 5.0), 0.0);
    }
}
