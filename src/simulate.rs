//! Simulated peers for `untaken demo` and the integration tests: OpenAI-compatible
//! upstreams that answer, stall, fail or reset on demand, or play a model of the demo's world.
//!
//! They speak real HTTP and gRPC on loopback; nothing here is used by `serve`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;


/// How a fake upstream answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// A chat completion after `delay`.
    Answer { delay: Duration },
    /// A chat completion after a delay drawn for each request, uniformly between
    /// `min` and `max` (real models' latencies vary, so their answers arrive spread).
    AnswerBetween { min: Duration, max: Duration },
    /// Never answers (until the client gives up).
    Hang,
    /// HTTP 500 with a JSON error.
    Status500,
    /// HTTP 200 with a body that is not JSON.
    NotJson,
    /// Answers the demo's arithmetic questions with a model's accuracy and latency.
    Model(crate::demo::world::Profile),
}

/// What a fake upstream saw of one request (for tests to assert on).
#[derive(Debug, Clone)]
pub struct Seen {
    pub headers: HashMap<String, String>,
    pub body: Value,
}

#[derive(Clone)]
struct UpstreamState {
    name: String,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Keep what each request was in `seen` (tests); off for a long-running load peer.
    record: bool,
}

/// An OpenAI chat-completions server on loopback.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeUpstream {
    pub async fn start(name: &str, behaviour: Behaviour) -> std::io::Result<Self> {
        Self::start_with(name, behaviour, true).await
    }

    /// `record = false`: [`seen`](Self::seen) stays empty, so a benchmark's peer does
    /// not grow (or spend CPU) with every request it answers.
    pub async fn start_with(name: &str, behaviour: Behaviour, record: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = UpstreamState {
            name: name.to_string(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            seen: Arc::new(Mutex::new(Vec::new())),
            record,
        };
        let app = Router::new().route("/v1/chat/completions", post(chat)).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, behaviour: state.behaviour, seen: state.seen })
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("behaviour lock") = behaviour;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

async fn chat(State(state): State<UpstreamState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if state.record {
        state.seen.lock().expect("seen lock").push(Seen {
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect(),
            body: parsed.clone(),
        });
    }
    let behaviour = state.behaviour.lock().expect("behaviour lock").clone();
    let delay = match behaviour {
        Behaviour::Answer { delay } => delay,
        Behaviour::AnswerBetween { min, max } if max > min => rand::rng().random_range(min..=max),
        Behaviour::AnswerBetween { min, .. } => min,
        _ => Duration::ZERO,
    };
    match behaviour {
        Behaviour::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behaviour::Status500 => {
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"message": "upstream exploded"}})))
                .into_response()
        }
        Behaviour::NotJson => (StatusCode::OK, "<html>gateway says hi</html>").into_response(),
        Behaviour::Model(profile) => {
            let model = parsed["model"].as_str().unwrap_or("unknown").to_string();
            let (content, ms) = crate::demo::world::answer(&profile, &model, &body, &parsed);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            axum::Json(completion_with(&model, &parsed, content)).into_response()
        }
        Behaviour::Answer { .. } | Behaviour::AnswerBetween { .. } => {
            tokio::time::sleep(delay).await;
            let answer = completion(&state.name, &parsed);
            if parsed["stream"] == json!(true) {
                let sse = stream_events(&answer, parsed["stream_options"]["include_usage"] == json!(true));
                ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], sse).into_response()
            } else {
                axum::Json(answer).into_response()
            }
        }
    }
}

/// A plausible chat completion: the answer names the model and the question size,
/// usage counts roughly 4 characters a token.
pub fn completion(upstream: &str, request: &Value) -> Value {
    let model = request["model"].as_str().unwrap_or("unknown");
    let content = format!("[{upstream}/{model}] considered {} characters and concluded: 42.", prompt_chars(request));
    completion_with(model, request, content)
}

/// `answer` as an OpenAI server streams it when the request says `"stream": true`:
/// server-sent events of `chat.completion.chunk`s (role, the content in a few
/// pieces, the finish reason, usage when asked for), then `data: [DONE]`.
pub fn stream_events(answer: &Value, include_usage: bool) -> String {
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"], "model": answer["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let mut rest = content;
    while !rest.is_empty() {
        // Pieces of up to 12 bytes, cut on a char boundary.
        let mut end = rest.len().min(12);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        events.push(chunk(json!({"content": &rest[..end]}), Value::Null));
        rest = &rest[end..];
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let mut last = chunk(json!({}), Value::Null);
        last["choices"] = json!([]);
        last["usage"] = answer["usage"].clone();
        events.push(last);
    }
    let mut out: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push_str("data: [DONE]\n\n");
    out
}

fn prompt_chars(request: &Value) -> usize {
    request["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["content"].as_str()).map(str::len).sum())
        .unwrap_or(0)
}

/// A chat completion carrying `content`, usage counted at about 4 characters a token.
pub fn completion_with(model: &str, request: &Value, content: String) -> Value {
    let prompt_tokens = prompt_chars(request) / 4 + 8;
    json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": content.len() / 4,
            "total_tokens": prompt_tokens + content.len() / 4
        }
    })
}

/// A server that accepts connections and resets them (RST) without answering.
pub async fn start_resetting_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
        }
    });
    Ok(addr)
}

/// A chat-completions request for query `i`, about 2 KB like a real one with a system prompt.
pub fn chat_request(i: usize, slice: &str, model: &str) -> Vec<u8> {
    let system = "You are a careful assistant for an online retailer. Answer concisely, cite the policy section \
                  you rely on, refuse to guess order numbers, and ask a clarifying question when the request is \
                  ambiguous. "
        .repeat(6);
    let question = match slice {
        "multi_step" => format!("Order {i} shipped in two parcels; one was lost. Work out the refund, then the reshipment date, then the loyalty credit."),
        "ambiguous" => format!("Can I change it? (ticket {i})"),
        "out_of_distribution" => format!("Translate the return policy into Old Norse runes, request {i}."),
        _ => format!("What is the return window for order {i}?"),
    };
    chat_body(&system, &question, model)
}

/// A streaming chat-completions request: a system prompt and one user question.
pub fn chat_body(system: &str, question: &str, model: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": model,
        "stream": true,
        "temperature": 0.2,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]
    }))
    .expect("static JSON")
}

/// A directory laid out and updated the way the kubelet updates a mounted Secret: the
/// files live in a timestamped directory, `..data` links to it, and each name is a
/// link through `..data`. An update writes a new directory and renames a new `..data`
/// link over the old one (atomic), then removes the old directory.
pub struct SecretVolume {
    dir: std::path::PathBuf,
}

impl SecretVolume {
    pub fn new(dir: &std::path::Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// The path a program is configured with for the key `name`.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// Replaces the volume's contents with `files` in one atomic swap (writes files).
    pub fn update(&self, files: &[(&str, &[u8])]) {
        let data = self.dir.join("..data");
        let old = std::fs::read_link(&data).ok();
        let version = format!("..{}", uuid::Uuid::now_v7().simple());
        let new = self.dir.join(&version);
        std::fs::create_dir(&new).expect("create the version directory");
        for (name, content) in files {
            std::fs::write(new.join(name), content).expect("write a secret file");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("link ..data_tmp");
        std::fs::rename(&tmp, &data).expect("swap ..data");
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(std::path::Path::new("..data").join(name), &link).expect("link a key");
            }
        }
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_pieces_reassemble_into_the_answer() {
        let answer = completion_with("m", &json!({"messages": [{"content": "héllo wörld, a question"}]}), "Ünïcode answer, long enough to split".into());
        let sse = stream_events(&answer, true);
        assert!(sse.ends_with("data: [DONE]\n\n"));
        let chunks: Vec<Value> = sse
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, answer["choices"][0]["message"]["content"].as_str().unwrap());
        assert!(chunks.len() > 4, "the content comes in several pieces");
        assert_eq!(chunks.last().unwrap()["usage"], answer["usage"]);
        assert!(!stream_events(&answer, false).contains("usage"));
    }

    /// Answers spread over the range: none before `min`, and not all at once.
    #[tokio::test]
    async fn spread_answers_arrive_between_min_and_max() {
        let (min, max) = (Duration::from_millis(50), Duration::from_millis(250));
        let up = FakeUpstream::start_with("s", Behaviour::AnswerBetween { min, max }, false).await.unwrap();
        let client = reqwest::Client::new();
        let t0 = std::time::Instant::now();
        let calls = (0..20).map(|_| {
            let (client, url) = (client.clone(), up.url());
            async move {
                let r = client.post(url).json(&json!({"model": "m", "messages": []})).send().await.unwrap();
                assert!(r.status().is_success());
                t0.elapsed()
            }
        });
        let took = futures::future::join_all(calls).await;
        let (first, last) = (took.iter().min().unwrap(), took.iter().max().unwrap());
        assert!(*first >= min, "an answer came before the minimum delay: {first:?}");
        assert!(*last - *first >= Duration::from_millis(50), "20 answers within 50 ms of each other: not spread ({first:?}..{last:?})");
    }
}
