//! The pairwise judge's HTTP calls: OpenAI-compatible chat completions, one verdict
//! per call, parsed strictly.
//!
//! Two bounded retry loops: a call that fails in transit (HTTP 429, 5xx, 408,
//! timeouts, connection errors, a body that is not a chat completion) is retried up
//! to `max_retries` times with exponential backoff and jitter (honouring a 429's
//! `Retry-After`); an answer that is not a verdict is asked again up to
//! `max_attempts` times. Past either bound the verdict is an error: never guessed.
//! Every call waits for admission ([`JudgeLimits`], reserving its estimated cost)
//! and settles its actual cost in the budget.
//!
//! Connection errors, timeouts and 5xx also feed the judge's [`Circuit`]: while it is
//! open calls wait for a probe to be answered, and a call out of retries is a judge
//! error only when the endpoint answers (else it waits out the outage and starts over).
//!
//! Never logs a prompt, an answer or the API key.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use rand::Rng;
use serde_json::{json, Value};

use super::breaker::{Circuit, Exhausted};
use super::budget::JudgeLimits;
use super::config::PairwiseConfig;
use super::metrics::JudgeMetrics;
use super::prompt::ChatMessage;
use super::verdict::{self, Raw};
use crate::http_client::{self, CallError, HttpClient, Target};
use crate::sidecar::admission::estimate_for;
use crate::secrets::LiveToken;
use crate::usage::{Usage, UsageView};

/// Longest wait between retries, whatever the backoff or `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A judge's answer is one short verdict: anything longer than this is not read.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// One verdict as the client got it.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictCall {
    pub raw: Result<Raw, String>,
    /// HTTP calls made, retries included.
    pub attempts: u32,
    pub latency_ms: f64,
    pub cost_usd: f64,
}

/// How one HTTP call ended.
enum Call {
    Content(String),
    /// Worth retrying: (metric label, description, server-requested delay).
    Transient(&'static str, String, Option<Duration>),
    /// Not worth retrying (e.g. 401, 400).
    Permanent(&'static str, String),
}

pub struct JudgeClient {
    http: HttpClient,
    config: PairwiseConfig,
    /// Where `config.url` is called, resolved once.
    target: Target,
    /// The key in force, loaded at each call: a rotated key file is used from the next call.
    api_key: Option<LiveToken>,
    /// The `response_format` asking for a structured verdict, when configured.
    response_format: Option<Value>,
    circuit: Circuit,
}

/// A chat-completions request, serialised without an intermediate JSON tree.
#[derive(serde::Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage<'a>],
    temperature: f64,
    max_tokens: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a Value>,
}

impl JudgeClient {
    /// `metrics` receives the circuit's state.
    pub fn new(config: &PairwiseConfig, api_key: Option<LiveToken>, metrics: &JudgeMetrics) -> Self {
        // Retries are ours (`call_with_retries`, counted and bounded); the client has none.
        let http = HttpClient::new(http_client::Options { pool_max_idle_per_host: 1024, ..Default::default() });
        let response_format = config.structured_output.then(|| {
            json!({
                "type": "json_schema",
                "json_schema": {
                    "name": "verdict",
                    "strict": true,
                    "schema": {
                        "type": "object",
                        "properties": {"verdict": {"type": "string", "enum": ["A", "B", "tie"]}},
                        "required": ["verdict"],
                        "additionalProperties": false
                    }
                }
            })
        });
        let circuit = Circuit::new(config.breaker(), metrics.circuit_open.clone(), metrics.circuit_opened.clone());
        let target = http.target(&config.url);
        Self { http, config: config.clone(), target, api_key, response_format, circuit }
    }

    /// True while the judge endpoint is considered down (calls wait for it).
    pub fn endpoint_down(&self) -> bool {
        self.circuit.is_open()
    }

    /// A one-token chat completion: true when the endpoint answers at all (anything
    /// but a connection error, a timeout or a 5xx). Charged like any call.
    async fn probe(&self, limits: &JudgeLimits, metrics: &JudgeMetrics) -> bool {
        let messages = [ChatMessage { role: "user", content: "Reply with OK.".into() }];
        let request = ChatRequest { model: &self.config.model, messages: &messages, temperature: 0.0, max_tokens: 1, stream: false, response_format: None };
        let body = Bytes::from(serde_json::to_vec(&request).expect("a chat request serializes"));
        let (call, cost) = self.call_once(&body).await;
        if cost > 0.0 {
            limits.charge(cost);
            metrics.judge_spend_usd.inc_by(cost);
        }
        let answered = !matches!(call, Call::Transient(label, ..) if endpoint_failure(label));
        metrics.call(if answered { "probe_answered" } else { "probe_failed" });
        answered
    }

    /// The chat-completions request body for `messages`.
    pub fn request_body(&self, messages: &[ChatMessage<'_>]) -> Bytes {
        let request = ChatRequest {
            model: &self.config.model,
            messages,
            temperature: self.config.temperature,
            max_tokens: self.config.max_tokens,
            stream: false,
            response_format: self.response_format.as_ref(),
        };
        // Sized for the messages up front (escaping adds little): not grown by doubling.
        let mut body = Vec::with_capacity(512 + messages.iter().map(|m| m.content.len()).sum::<usize>() * 9 / 8);
        serde_json::to_writer(&mut body, &request).expect("a chat request serializes");
        Bytes::from(body)
    }

    /// Asks for one verdict with a [`request_body`](Self::request_body) (network;
    /// waits for admission, retries within bounds).
    pub async fn verdict(&self, body: &Bytes, limits: &JudgeLimits, metrics: &JudgeMetrics) -> VerdictCall {
        let start = Instant::now();
        let mut out = VerdictCall { raw: Err(String::new()), attempts: 0, latency_ms: 0.0, cost_usd: 0.0 };
        let mut last_malformed = None;
        for _ in 0..self.config.max_attempts {
            match self.call_with_retries(body, limits, metrics, &mut out).await {
                Ok(content) => match verdict::parse(&content, self.config.structured_output) {
                    Ok(raw) => {
                        metrics.call("ok");
                        out.raw = Ok(raw);
                        break;
                    }
                    Err(e) => {
                        metrics.call("malformed");
                        last_malformed = Some(e);
                    }
                },
                Err(e) => {
                    out.raw = Err(e);
                    out.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
                    return out;
                }
            }
        }
        if let Some(e) = last_malformed.filter(|_| out.raw.is_err()) {
            out.raw = Err(format!("malformed verdict after {} attempts: {e}", self.config.max_attempts));
        }
        out.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        out
    }

    /// One answer's content, retrying transient failures; the error says what failed last.
    async fn call_with_retries(&self, body: &Bytes, limits: &JudgeLimits, metrics: &JudgeMetrics, out: &mut VerdictCall) -> Result<String, String> {
        let mut retry = 0;
        let probe = || self.probe(limits, metrics);
        // The request's size and its max_tokens (ours: no need to parse the body).
        let estimate = estimate_for(body.len(), self.config.max_tokens.into(), self.config.input_usd_per_mtok, self.config.output_usd_per_mtok);
        loop {
            self.circuit.ready(probe).await;
            out.attempts += 1;
            let admitted = limits.acquire(estimate).await;
            let started = Instant::now();
            let (call, cost) = self.call_once(body).await;
            metrics.judge_call_seconds.observe(started.elapsed().as_secs_f64());
            if cost > 0.0 {
                metrics.judge_spend_usd.inc_by(cost);
                out.cost_usd += cost;
            }
            // The cost replaces the reservation before the slot frees.
            admitted.settle(cost);
            let failed_at = match &call {
                Call::Transient(label, ..) if endpoint_failure(label) => Some(self.circuit.failed()),
                _ => {
                    self.circuit.answered();
                    None
                }
            };
            match call {
                Call::Content(c) => return Ok(c),
                Call::Permanent(label, e) => {
                    metrics.call(label);
                    return Err(e);
                }
                Call::Transient(label, e, after) => {
                    metrics.call(label);
                    if retry >= self.config.max_retries {
                        if let Some(t) = failed_at {
                            if self.circuit.verdict_on(t, probe).await == Exhausted::Retry {
                                // The endpoint was down and answers again: not this pair's fault.
                                retry = 0;
                                continue;
                            }
                        }
                        return Err(if retry == 0 { e } else { format!("{e} (after {retry} retries)") });
                    }
                    tokio::time::sleep(self.backoff(retry, after)).await;
                    retry += 1;
                }
            }
        }
    }

    fn backoff(&self, retry: u32, server_says: Option<Duration>) -> Duration {
        if let Some(d) = server_says {
            return d.min(MAX_BACKOFF);
        }
        let base = self.config.retry_backoff.saturating_mul(1 << retry.min(16)).min(MAX_BACKOFF);
        base.mul_f64(rand::rng().random_range(0.75..1.25))
    }

    async fn call_once(&self, body: &Bytes) -> (Call, f64) {
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = &self.api_key {
            match http_client::bearer(key.load().expose()) {
                Ok(v) => {
                    headers.insert(http::header::AUTHORIZATION, v);
                }
                Err(_) => return (Call::Permanent("client_error", "the judge's api key is not a valid header value".into()), 0.0),
            }
        }
        let resp = match self.http.post(&self.target, headers, body.clone(), self.config.timeout, MAX_ANSWER_BYTES).await {
            Ok(r) => r,
            Err(CallError::Timeout) => return (Call::Transient("timeout", "judge call timed out".into(), None), 0.0),
            Err(CallError::Body(e)) => return (Call::Transient("transport_error", format!("judge answer unreadable: {e}"), None), 0.0),
            Err(CallError::Connect(e) | CallError::Request(e)) => return (Call::Transient("transport_error", format!("judge call failed: {e}"), None), 0.0),
        };
        let status = resp.status;
        let retry_after = resp
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        match status {
            200..=299 if resp.truncated => return (Call::Transient("invalid_body", format!("judge answer over {MAX_ANSWER_BYTES} bytes"), None), 0.0),
            200..=299 => {}
            429 => return (Call::Transient("rate_limited", "judge answered http 429".into(), retry_after), 0.0),
            408 | 500..=599 => return (Call::Transient("server_error", format!("judge answered http {status}"), retry_after), 0.0),
            _ => return (Call::Permanent("client_error", format!("judge answered http {status}")), 0.0),
        }
        self.read_answer(&resp.body)
    }

    /// A 2xx answer's verdict text and cost. Typed: only the first choice's content
    /// and the usage are kept, not a JSON tree of the whole answer.
    fn read_answer(&self, bytes: &[u8]) -> (Call, f64) {
        let no_content = || Call::Transient("invalid_body", "judge answer has no choices[0].message.content".into(), None);
        // The usage typed (no JSON tree); one that is not an object with numbers (rare) is
        // read again as any JSON, which prices it as before.
        let (choices, usage) = match serde_json::from_slice::<Completion<Option<UsageView>>>(bytes) {
            Ok(a) => {
                let (input_tokens, output_tokens) = a.usage.as_ref().map_or((0, 0), UsageView::tokens);
                (a.choices, Usage { input_tokens, output_tokens, tool_calls: 0 })
            }
            Err(e) if e.is_data() => match serde_json::from_slice::<Completion<Value>>(bytes) {
                Ok(a) => (a.choices, Usage::from_json(&json!({ "usage": a.usage }))),
                Err(_) => return (no_content(), 0.0),
            },
            Err(_) => return (Call::Transient("invalid_body", "judge answer is not JSON".into(), None), 0.0),
        };
        let cost = usage.cost_usd(self.config.input_usd_per_mtok, self.config.output_usd_per_mtok);
        match choices.into_iter().next().and_then(|c| c.message).and_then(|m| m.content) {
            Some(Value::String(content)) => (Call::Content(content), cost),
            _ => (no_content(), cost),
        }
    }
}

/// A failure that says the endpoint is down (as opposed to answering, even badly).
fn endpoint_failure(label: &str) -> bool {
    matches!(label, "timeout" | "transport_error" | "server_error")
}

/// What the judge reads of a chat completion; anything else in it is skipped.
#[derive(serde::Deserialize)]
struct Completion<U> {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: U,
}

#[derive(serde::Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<Message>,
}

#[derive(serde::Deserialize)]
struct Message {
    /// A verdict is text: any other JSON here is no content.
    #[serde(default)]
    content: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> JudgeMetrics {
        JudgeMetrics::new(&crate::metrics::Metrics::new())
    }

    fn cfg(structured: bool) -> PairwiseConfig {
        let text = format!(
            "[judge]\nkind = \"pairwise\"\n[judge.pairwise]\nurl = \"http://127.0.0.1:9/v1/chat/completions\"\nmodel = \"j\"\nstructured_output = {structured}\n"
        );
        super::super::config::from_toml(&text).unwrap().judge.pairwise.unwrap()
    }

    #[test]
    fn structured_output_asks_for_a_json_schema_verdict() {
        let c = JudgeClient::new(&cfg(true), None, &metrics());
        let m = [ChatMessage { role: "user", content: "hi".into() }];
        let b: Value = serde_json::from_slice(&c.request_body(&m)).unwrap();
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["schema"]["properties"]["verdict"]["enum"], json!(["A", "B", "tie"]));
        assert_eq!(b["model"], "j");
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(b["stream"], false);
        let plain: Value = serde_json::from_slice(&JudgeClient::new(&cfg(false), None, &metrics()).request_body(&m)).unwrap();
        assert!(plain.get("response_format").is_none());
    }

    #[test]
    fn an_answer_is_the_first_choice_text_priced_by_its_usage() {
        let c = JudgeClient::new(&cfg(false), None, &metrics());
        let mut priced = cfg(false);
        (priced.input_usd_per_mtok, priced.output_usd_per_mtok) = (1.0, 4.0);
        let p = JudgeClient::new(&priced, None, &metrics());
        let ok = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"[[VERDICT: A]]","tool_calls":[]}},{"message":{"content":"B"}}],"usage":{"prompt_tokens":1000,"completion_tokens":100}}"#;
        match p.read_answer(ok) {
            (Call::Content(text), cost) => {
                assert_eq!(text, "[[VERDICT: A]]");
                assert!((cost - (1000.0 * 1.0 + 100.0 * 4.0) / 1e6).abs() < 1e-12, "{cost}");
            }
            _ => panic!("a chat completion with content is content"),
        }
        let no_content = |body: &[u8]| match c.read_answer(body) {
            (Call::Transient("invalid_body", e, None), _) => e,
            _ => panic!("{} is not a verdict", String::from_utf8_lossy(body)),
        };
        for body in [&br#"{"choices":[]}"#[..], br#"{"choices":[{"message":{"content":null}}]}"#, br#"{"choices":[{"message":{"content":[1]}}]}"#, br#"{"choices":"A"}"#, br#"{}"#] {
            assert_eq!(no_content(body), "judge answer has no choices[0].message.content");
        }
        assert_eq!(no_content(b"<html>busy</html>"), "judge answer is not JSON");
        let (_, cost) = p.read_answer(br#"{"choices":[{"message":{}}],"usage":{"prompt_tokens":10}}"#);
        assert!(cost > 0.0, "an answer without content is still paid for");
    }

    /// Simulation (fixed seed): answers with usage of every shape (numbers of all kinds,
    /// strings, null, both naming schemes, duplicate keys, not an object) are priced
    /// exactly as reading the usage as any JSON prices them, and keep their verdict.
    #[test]
    fn typed_usage_prices_every_answer_as_the_json_tree_does() {
        use rand::{Rng, SeedableRng};
        let mut priced = cfg(false);
        (priced.input_usd_per_mtok, priced.output_usd_per_mtok) = (1.5, 4.0);
        let c = JudgeClient::new(&priced, None, &metrics());
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let values = ["1000", "0", "-3", "12.5", "1e3", "5000000000", "18446744073709551615", "\"77\"", "null", "true", "[1]", "{\"n\":1}"];
        let names = ["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "total_tokens", "x"];
        let (mut typed_priced, mut slow) = (0, 0);
        for _ in 0..5_000 {
            let usage = match rng.random_range(0..10) {
                0 => "5".to_string(),
                1 => "\"many\"".to_string(),
                2 => "[]".to_string(),
                3 => "null".to_string(),
                _ => {
                    let fields: Vec<String> = (0..rng.random_range(0..6))
                        .map(|_| format!("\"{}\":{}", names[rng.random_range(0..names.len())], values[rng.random_range(0..values.len())]))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }
            };
            let usage_field = if rng.random_bool(0.1) { String::new() } else { format!(",\"usage\":{usage}") };
            let body = format!(r#"{{"choices":[{{"message":{{"content":"[[VERDICT: B]]"}}}}]{usage_field}}}"#);
            let tree: Value = serde_json::from_str(&body).unwrap();
            let expected = Usage::from_json(&json!({ "usage": tree.get("usage").cloned().unwrap_or(Value::Null) })).cost_usd(1.5, 4.0);
            match c.read_answer(body.as_bytes()) {
                (Call::Content(text), cost) => {
                    assert_eq!(text, "[[VERDICT: B]]", "{body}");
                    assert_eq!(cost, expected, "{body}");
                    let typed = serde_json::from_str::<Completion<Option<UsageView>>>(&body).is_ok();
                    typed_priced += usize::from(typed && cost > 0.0);
                    slow += usize::from(!typed);
                }
                _ => panic!("{body} is a verdict"),
            }
        }
        assert!(typed_priced > 300 && slow > 300, "both paths are exercised: {typed_priced} typed and priced, {slow} read as any JSON");
    }

    #[test]
    fn backoff_doubles_within_the_cap_and_honours_retry_after() {
        let c = JudgeClient::new(&cfg(false), None, &metrics());
        let b0 = c.backoff(0, None);
        assert!(b0 >= Duration::from_millis(187) && b0 <= Duration::from_millis(313), "{b0:?}");
        let b3 = c.backoff(3, None);
        assert!(b3 >= Duration::from_millis(1500) && b3 <= Duration::from_millis(2500), "{b3:?}");
        assert!(c.backoff(30, None) <= MAX_BACKOFF.mul_f64(1.25));
        assert_eq!(c.backoff(0, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(c.backoff(0, Some(Duration::from_secs(600))), MAX_BACKOFF);
    }
}
