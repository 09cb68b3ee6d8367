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
use serde_json::{json, Value};
use tokio::net::TcpListener;


/// How a fake upstream answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// A chat completion after `delay`.
    Answer { delay: Duration },
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
}

/// An OpenAI chat-completions server on loopback.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeUpstream {
    pub async fn start(name: &str, behaviour: Behaviour) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = UpstreamState {
            name: name.to_string(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            seen: Arc::new(Mutex::new(Vec::new())),
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
    state.seen.lock().expect("seen lock").push(Seen {
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
        body: parsed.clone(),
    });
    let behaviour = state.behaviour.lock().expect("behaviour lock").clone();
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
        Behaviour::Answer { delay } => {
            tokio::time::sleep(delay).await;
            axum::Json(completion(&state.name, &parsed)).into_response()
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
    serde_json::to_vec(&json!({
        "model": model,
        "stream": true,
        "temperature": 0.2,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]
    }))
    .expect("static JSON")
}
