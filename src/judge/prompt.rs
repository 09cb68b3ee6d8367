//! The pairwise judge's prompt: a fixed, versioned template with the rubric from
//! config, the conversation, and the two answers labelled A and B.
//!
//! `prompt_version` is the first 16 hex digits of the sha256 of the template
//! rendered with the rubric and the verdict format but empty slots, so any change
//! of wording, rubric or format starts a new version in the grades (and a report
//! never mixes verdicts from two prompts unknowingly). Pure.

use std::borrow::Cow;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::features::content_text;

const SYSTEM: &str = "You are an impartial judge comparing two answers to the same conversation.\n\
Criteria: {rubric}\n\
The answers are labelled A and B; their order is arbitrary and says nothing about quality. \
Do not let the length of an answer or the name of a model influence you. \
Think briefly, then give your verdict: A if answer A is better, B if answer B is better, tie if neither is.";

const USER: &str = "[Conversation]\n{conversation}\n[End of conversation]\n\n\
[Answer A]\n{answer_a}\n[End of answer A]\n\n\
[Answer B]\n{answer_b}\n[End of answer B]\n\n{format}";

const FORMAT_MARKER: &str =
    "End your reply with exactly one line of the form [[VERDICT: A]], [[VERDICT: B]] or [[VERDICT: tie]].";
const FORMAT_STRUCTURED: &str = "Reply with a JSON object {\"verdict\": \"A\" | \"B\" | \"tie\"}.";

/// One chat message of a judge request.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: Cow<'a, str>,
}

/// The prompt of one judge, ready to render pairs.
#[derive(Debug, Clone)]
pub struct Prompt {
    system: String,
    format: &'static str,
    version: String,
    max_answer_chars: usize,
}

impl Prompt {
    pub fn new(rubric: &str, structured: bool, max_answer_chars: usize) -> Self {
        let system = SYSTEM.replace("{rubric}", rubric.trim());
        let format = if structured { FORMAT_STRUCTURED } else { FORMAT_MARKER };
        let empty = render_user("", "", "", format);
        let mut h = Sha256::new();
        h.update(system.as_bytes());
        h.update([0u8]);
        h.update(empty.as_bytes());
        let version = hex::encode(h.finalize())[..16].to_string();
        Self { system, format, version, max_answer_chars }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Chat messages asking for a verdict on `answer_a` against `answer_b`.
    pub fn messages(&self, conversation: &str, answer_a: &str, answer_b: &str) -> [ChatMessage<'_>; 2] {
        let user = render_user(
            conversation,
            &clip(answer_a, self.max_answer_chars),
            &clip(answer_b, self.max_answer_chars),
            self.format,
        );
        [ChatMessage { role: "system", content: Cow::Borrowed(&self.system) }, ChatMessage { role: "user", content: Cow::Owned(user) }]
    }
}

fn render_user(conversation: &str, a: &str, b: &str, format: &str) -> String {
    // One pass per slot in a fixed order; a slot's value may contain `{...}` text
    // (answers often do), so fill the template slots first, the user's text last.
    let parts: Vec<&str> = USER.split('{').collect();
    let mut out = String::with_capacity(USER.len() + conversation.len() + a.len() + b.len());
    out.push_str(parts[0]);
    for p in &parts[1..] {
        let (slot, rest) = p.split_once('}').expect("template slots are closed");
        out.push_str(match slot {
            "conversation" => conversation,
            "answer_a" => a,
            "answer_b" => b,
            "format" => format,
            other => unreachable!("unknown template slot {other}"),
        });
        out.push_str(rest);
    }
    out
}

/// At most `max` characters, marked when cut (a copy only then).
fn clip(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((i, _)) => Cow::Owned(format!("{}\n[... answer cut at {max} characters]", &text[..i])),
        None => Cow::Borrowed(text),
    }
}

/// The request's conversation as the judge reads it: one block per message.
pub fn conversation(request: &Value) -> String {
    let mut out = String::new();
    for m in request.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let text = m.get("content").map(content_text).unwrap_or_default();
        if !out.is_empty() {
            out.push('\n');
        }
        for part in ["<", role, ">\n", &text, "\n</", role, ">"] {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_stable_and_tracks_rubric_and_format() {
        let p = Prompt::new("Be correct.", false, 100);
        assert_eq!(p.version().len(), 16);
        assert_eq!(p.version(), Prompt::new("Be correct.", false, 100).version(), "same inputs, same version");
        assert_eq!(p.version(), Prompt::new("Be correct.", false, 5).version(), "clipping is not the prompt");
        assert_ne!(p.version(), Prompt::new("Be concise.", false, 100).version());
        assert_ne!(p.version(), Prompt::new("Be correct.", true, 100).version());
        // Pinned: an unnoticed change of the template would silently mix prompt versions.
        assert_eq!(p.version(), PINNED_VERSION, "the template changed: update PINNED_VERSION deliberately");
    }
    const PINNED_VERSION: &str = "1f805b262e8befe2";

    #[test]
    fn messages_label_the_answers_and_keep_braces_in_answers() {
        let p = Prompt::new("R", false, 16);
        let m = p.messages("<user>\nq\n</user>", "{answer_b} one", "two two two two two");
        let user = &m[1].content;
        assert!(user.contains("[Answer A]\n{answer_b} one\n[End of answer A]"), "{user}");
        assert!(user.contains("[Answer B]\ntwo two two two \n[... answer cut at 16 characters]"), "{user}");
        assert!(user.ends_with("[[VERDICT: tie]]."));
        assert!(m[0].content.contains("Criteria: R"));
        assert_eq!((m[0].role, m[1].role), ("system", "user"));
    }

    #[test]
    fn conversation_renders_every_message() {
        use serde_json::json;
        let req = json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]});
        assert_eq!(conversation(&req), "<system>\ns\n</system>\n<user>\nq\n</user>");
    }
}
