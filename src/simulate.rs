//! Simulated peers for `untaken demo` and the integration tests: OpenAI-compatible
//! upstreams that answer, stall, fail or reset on demand, and a synthetic router.
//!
//! They speak real HTTP and gRPC on loopback; nothing here is used by `serve`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::proto::v1::mirror_client::MirrorClient;
use crate::proto::v1::{Answer, CompleteRequest, MirrorRequest};

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
    let prompt_chars: usize = request["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["content"].as_str()).map(str::len).sum())
        .unwrap_or(0);
    let content = format!("[{upstream}/{model}] considered {prompt_chars} characters and concluded: 42.");
    json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_chars / 4 + 8,
            "completion_tokens": content.len() / 4,
            "total_tokens": prompt_chars / 4 + 8 + content.len() / 4
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

/// The slices the synthetic router's queries fall into, with their share of traffic.
pub const SLICES: [(&str, u32); 4] = [("simple_qa", 70), ("multi_step", 15), ("ambiguous", 10), ("out_of_distribution", 5)];

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

pub fn slice_of(i: usize) -> &'static str {
    let total: u32 = SLICES.iter().map(|s| s.1).sum();
    let mut x = (crate::sampling::hash(b"slice", &i.to_string()) % u64::from(total)) as u32;
    for (name, share) in SLICES {
        if x < share {
            return name;
        }
        x -= share;
    }
    SLICES[0].0
}

/// What the synthetic router did.
#[derive(Debug, Default, Clone)]
pub struct RouterReport {
    pub requests: usize,
    pub sampled: usize,
    pub completed: usize,
    pub by_slice: HashMap<String, (usize, usize)>,
    pub reasons: HashMap<String, usize>,
    pub max_mirror_latency: Duration,
}

/// Sends `n` requests like a latency-tuned router: everything to `fast`, calling
/// `Mirror` for each; even requests use one-phase pairing, odd ones two-phase.
pub async fn run_router(grpc: SocketAddr, fast: &FakeUpstream, n: usize) -> Result<RouterReport, Box<dyn std::error::Error + Send + Sync>> {
    let mut client = MirrorClient::connect(format!("http://{grpc}")).await?;
    let http = reqwest::Client::new();
    let mut report = RouterReport::default();
    for i in 0..n {
        let slice = slice_of(i);
        let body = chat_request(i, slice, "fast-model");
        let request_id = format!("demo-{i:05}");
        let call_primary = || async {
            let started = Instant::now();
            let resp = http.post(fast.url()).header("content-type", "application/json").body(body.clone()).send().await?;
            let status = resp.status().as_u16() as u32;
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>(Answer {
                body: bytes.to_vec(),
                status_code: status,
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                error: String::new(),
            })
        };
        let one_phase = i % 2 == 0;
        let primary = if one_phase { Some(call_primary().await?) } else { None };
        let started = Instant::now();
        let resp = client
            .mirror(MirrorRequest {
                request_id: request_id.clone(),
                route_taken: "fast".into(),
                request_body: body.clone(),
                slice: slice.into(),
                labels: HashMap::from([("tenant".into(), format!("tenant-{}", i % 3)), ("router_version".into(), "demo-1".into())]),
                primary,
                ..Default::default()
            })
            .await?
            .into_inner();
        report.max_mirror_latency = report.max_mirror_latency.max(started.elapsed());
        report.requests += 1;
        let e = report.by_slice.entry(slice.to_string()).or_default();
        e.0 += 1;
        if resp.sampled {
            report.sampled += 1;
            e.1 += 1;
            if !one_phase {
                let answer = call_primary().await?;
                client.complete(CompleteRequest { request_id, primary: Some(answer) }).await?;
                report.completed += 1;
            }
        } else {
            *report.reasons.entry(resp.reason).or_default() += 1;
        }
    }
    Ok(report)
}
