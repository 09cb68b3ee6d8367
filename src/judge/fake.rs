//! A fake LLM judge: an OpenAI chat-completions server on loopback that answers with
//! a verdict chosen by a [`Preference`], after a delay, or misbehaves on demand
//! (malformed answers, 429, 500, hanging). For the integration tests, the benchmark
//! and demos; the worker never uses it.
//!
//! It reads the two answers back out of the prompt it receives (between the
//! `[Answer A]` / `[Answer B]` markers the real prompt uses). The circuit breaker's
//! probes (one-token completions) answer by the steady mode, never from the script:
//! a script is faults of graded calls, the steady mode the endpoint's state.
//!
//! It counts calls by the bearer key they carry and, once told which keys are valid,
//! answers HTTP 401 to any other, as a provider does once a rotated-out key is revoked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Which answer the fake judge prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    /// Always "A", whatever the answers: pure position bias.
    AlwaysA,
    /// The longer answer; "tie" when equally long.
    Longer,
    /// Always "tie".
    Tie,
}

/// How the fake judge answers a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A verdict by `Preference`.
    Verdict,
    /// Prose without a marker (a malformed verdict).
    Malformed,
    /// HTTP 429 with `Retry-After: 0`.
    TooMany,
    /// HTTP 500.
    ServerError,
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct FakeState {
    preference: Preference,
    delay: Duration,
    /// Modes for the next calls, in order; then `Mode::Verdict`.
    script: Arc<Mutex<Vec<Mode>>>,
    /// Mode once the script is used up.
    steady: Arc<Mutex<Mode>>,
    calls: Arc<AtomicU64>,
    structured: bool,
    usage: (u64, u64),
    /// Calls by the bearer key they carried (`""` without one): one entry per key.
    keys: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Keys answered; any other gets 401. `None`: every call is answered.
    accepted: Arc<Mutex<Option<Vec<String>>>>,
}

pub struct FakeJudge {
    pub addr: SocketAddr,
    state: FakeState,
}

impl FakeJudge {
    /// Starts on 127.0.0.1:0. `structured` answers `{"verdict": ...}` instead of a marker.
    pub async fn start(preference: Preference, delay: Duration, structured: bool) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", preference, delay, structured).await
    }

    /// Starts on `addr` (a loopback address; port 0 picks one).
    pub async fn start_on(addr: &str, preference: Preference, delay: Duration, structured: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = FakeState {
            preference,
            delay,
            script: Arc::new(Mutex::new(Vec::new())),
            steady: Arc::new(Mutex::new(Mode::Verdict)),
            calls: Arc::new(AtomicU64::new(0)),
            structured,
            usage: (1000, 100),
            keys: Arc::default(),
            accepted: Arc::default(),
        };
        let app = Router::new().route("/v1/chat/completions", post(chat)).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state })
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    /// The next calls answer in these modes, in order.
    pub fn script(&self, modes: &[Mode]) {
        *self.state.script.lock().expect("script lock") = modes.iter().rev().copied().collect();
    }

    /// Every call after the script answers in `mode`.
    pub fn set_steady(&self, mode: Mode) {
        *self.state.steady.lock().expect("mode lock") = mode;
    }

    /// From now on only calls carrying one of `keys` as their bearer key are answered;
    /// any other gets HTTP 401.
    pub fn accept_keys(&self, keys: &[&str]) {
        *self.state.accepted.lock().expect("accepted lock") = Some(keys.iter().map(|k| k.to_string()).collect());
    }

    /// Calls received so far (probes and refused calls included) by the bearer key they
    /// carried (`""` for none).
    pub fn calls_by_key(&self) -> BTreeMap<String, u64> {
        self.state.keys.lock().expect("keys lock").clone()
    }

    /// Calls received so far (probes included).
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    text.split_once(start).and_then(|(_, rest)| rest.split_once(end)).map_or("", |(inner, _)| inner)
}

/// The client's circuit probe: a one-token completion.
fn is_probe(body: &[u8]) -> bool {
    body.windows(15).any(|w| w == br#""max_tokens":1,"#)
}

async fn chat(State(state): State<FakeState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = auth.strip_prefix("Bearer ").unwrap_or(auth).to_string();
    let refused = state.accepted.lock().expect("accepted lock").as_ref().is_some_and(|ok| !ok.contains(&key));
    *state.keys.lock().expect("keys lock").entry(key).or_default() += 1;
    if refused {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid api key"}))).into_response();
    }
    let steady = *state.steady.lock().expect("mode lock");
    // Probes see the endpoint's steady state: the script is for graded calls.
    let mode = if is_probe(&body) { steady } else { state.script.lock().expect("script lock").pop().unwrap_or(steady) };
    tokio::time::sleep(state.delay).await;
    let verdict = match mode {
        Mode::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::TooMany => return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], "slow down").into_response(),
        Mode::ServerError => return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": "boom"}))).into_response(),
        Mode::Malformed => None,
        Mode::Verdict => {
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let prompt = request.pointer("/messages/1/content").and_then(Value::as_str).unwrap_or("");
            let (a, b) = (between(prompt, "[Answer A]\n", "\n[End of answer A]"), between(prompt, "[Answer B]\n", "\n[End of answer B]"));
            Some(match state.preference {
                Preference::AlwaysA => "A",
                Preference::Tie => "tie",
                Preference::Longer if a.chars().count() > b.chars().count() => "A",
                Preference::Longer if b.chars().count() > a.chars().count() => "B",
                Preference::Longer => "tie",
            })
        }
    };
    let content = match (verdict, state.structured) {
        (Some(v), true) => json!({"verdict": v}).to_string(),
        (Some(v), false) => format!("Both answers were read carefully.\n[[VERDICT: {v}]]"),
        (None, _) => "I think the first one is somewhat better overall.".to_string(),
    };
    axum::Json(json!({
        "id": "chatcmpl-fake-judge",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": state.usage.0, "completion_tokens": state.usage.1, "total_tokens": state.usage.0 + state.usage.1}
    }))
    .into_response()
}
