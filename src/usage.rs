//! Token usage, tool calls and cost read from an OpenAI chat-completions answer.
//!
//! Pure. Tolerates both the chat-completions names (`prompt_tokens`,
//! `completion_tokens`) and the Responses API names (`input_tokens`,
//! `output_tokens`); a body without `usage` costs 0 and says so by having no tokens.

use serde_json::Value;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Tool calls the model asked for. untaken records them and never executes them.
    pub tool_calls: u32,
}

impl Usage {
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
    fn missing_usage_costs_nothing() {
        let u = Usage::from_json(&json!({"choices": []}));
        assert_eq!(u, Usage::default());
        assert_eq!(u.cost_usd(5.0, 5.0), 0.0);
    }
}
