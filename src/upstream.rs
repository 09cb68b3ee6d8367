//! The OpenAI-compatible client that makes the shadow call.
//!
//! Owns the rewrite of the router's request (model swapped, streaming off) and
//! the HTTP call. It must never execute a tool call the model returns, never
//! log a body, and always come back with a [`Half`]: failures are recorded in
//! the half, not raised.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::record::{Half, Source};
use crate::routes::Route;

/// Header on every shadow request, so upstream billing and analytics can exclude it.
pub const SHADOW_HEADER: &str = "x-untaken-shadow";

/// Rewrites the router's request for the shadow route: `model` replaced,
/// streaming turned off. The caller has already checked it is a JSON object.
pub fn prepare_body(request_body: &[u8], model: &str) -> Result<Vec<u8>, serde_json::Error> {
    let mut v: Value = serde_json::from_slice(request_body)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".into(), Value::String(model.into()));
        obj.insert("stream".into(), Value::Bool(false));
        obj.remove("stream_options");
    }
    serde_json::to_vec(&v)
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    max_body_bytes: usize,
}

impl Client {
    pub fn new(max_body_bytes: usize) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("static reqwest configuration is valid");
        Self { http, max_body_bytes }
    }

    /// Sends the shadow request and waits for the answer (network; runs off the
    /// request path). Never fails: errors are recorded in the returned half.
    pub async fn call(&self, route: &Route, request_body: &Bytes, request_id: &str, traceparent: &str) -> Half {
        let start = Instant::now();
        let mut half = Half { body: Bytes::new(), status_code: 0, latency_ms: 0.0, error: String::new(), source: Source::Untaken };
        let prepared = if request_body.len() <= crate::INLINE_CPU_BYTES {
            prepare_body(request_body, &route.info.model)
        } else {
            // A big body takes milliseconds to rewrite: not on a runtime worker.
            let (raw, model) = (request_body.clone(), route.info.model.clone());
            tokio::task::spawn_blocking(move || prepare_body(&raw, &model)).await.expect("prepare_body does not panic")
        };
        let body = match prepared {
            Ok(b) => b,
            Err(e) => {
                half.error = format!("request body not JSON: {e}");
                return half;
            }
        };
        let mut req = self
            .http
            .post(&route.url)
            .timeout(route.timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(SHADOW_HEADER, "1")
            .header("x-request-id", request_id)
            .body(body);
        if !traceparent.is_empty() {
            req = req.header("traceparent", traceparent);
        }
        if let Some(key) = &route.api_key {
            req = req.bearer_auth(key.expose());
        }
        let result = async {
            let mut resp = req.send().await?;
            let status = resp.status().as_u16() as u32;
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if buf.len() + chunk.len() > self.max_body_bytes {
                    return Ok::<_, reqwest::Error>((status, Bytes::from(buf), true));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok((status, Bytes::from(buf), false))
        }
        .await;
        half.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok((status, body, truncated)) => {
                half.status_code = status;
                if truncated {
                    half.error = format!("response body over {} bytes, dropped", self.max_body_bytes);
                } else {
                    if !(200..300).contains(&status) {
                        half.error = format!("http status {status}");
                    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                        half.error = "response body is not JSON".into();
                    }
                    half.body = body;
                }
            }
            Err(e) => half.error = describe(&e),
        }
        half
    }
}

/// A short, body-free description of a transport error.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() || e.is_decode() {
        "response body error"
    } else {
        "request error"
    };
    // The source chain names the cause (reset, refused...) and never contains bodies.
    let mut cause = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() { kind.to_string() } else { format!("{kind}: {cause}") }
}

/// The outcome label for metrics.
pub fn outcome(half: &Half) -> &'static str {
    match (half.status_code, half.error.as_str()) {
        (_, "") => "ok",
        (0, e) if e.starts_with("timeout") => "timeout",
        (0, _) => "transport_error",
        (s, _) if !(200..300).contains(&s) => "http_error",
        _ => "invalid_body",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_swaps_model_and_turns_streaming_off() {
        let body = br#"{"model":"small","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#;
        let out: Value = serde_json::from_slice(&prepare_body(body, "big").unwrap()).unwrap();
        assert_eq!(out["model"], "big");
        assert_eq!(out["stream"], false);
        assert!(out.get("stream_options").is_none());
        assert_eq!(out["messages"][0]["content"], "x");
        assert_eq!(out["tools"][0]["type"], "function", "tools are passed through unchanged");
    }

    #[test]
    fn rewrite_rejects_non_json() {
        assert!(prepare_body(b"not json", "big").is_err());
    }
}
