//! The OpenAI-compatible client that makes the shadow call.
//!
//! Owns the rewrite of the router's request (model swapped, streaming off) and
//! the HTTP call. It must never execute a tool call the model returns, never
//! log a body, and always come back with a [`Half`]: failures are recorded in
//! the half, not raised.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::http_client::{self, HttpClient};
use crate::record::{Half, Source};
use crate::routes::Route;

/// Header on every shadow request, so upstream billing and analytics can exclude it.
pub const SHADOW_HEADER: &str = "x-untaken-shadow";

/// Rewrites the router's request for the shadow route: `model` replaced,
/// streaming turned off (`stream: false`, `stream_options` removed). The caller has
/// already checked it is a JSON object.
///
/// One pass and no tree: every other member is copied as the exact text it arrived
/// as, in its place; `model` and `stream` keep their place, or are appended when absent.
pub fn prepare_body(request_body: &[u8], model: &str) -> Result<Vec<u8>, serde_json::Error> {
    let members: Members<'_> = serde_json::from_slice(request_body)?;
    let mut out = Vec::with_capacity(request_body.len() + model.len() + 32);
    let (mut wrote_model, mut wrote_stream) = (false, false);
    out.push(b'{');
    for (key, value) in &members.0 {
        match key.as_ref() {
            "model" if wrote_model => continue,
            "stream" if wrote_stream => continue,
            "stream_options" => continue,
            _ => {}
        }
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key.as_ref())?;
        out.push(b':');
        match key.as_ref() {
            "model" => {
                serde_json::to_writer(&mut out, model)?;
                wrote_model = true;
            }
            "stream" => {
                out.extend_from_slice(b"false");
                wrote_stream = true;
            }
            _ => out.extend_from_slice(value.get().as_bytes()),
        }
    }
    if !wrote_model {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"model\":");
        serde_json::to_writer(&mut out, model)?;
    }
    if !wrote_stream {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"stream\":false");
    }
    out.push(b'}');
    Ok(out)
}

/// A JSON object's members in order, each value as its raw text (validated, not built).
struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<CowKey<'de>>()? {
                    members.push((key.0, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// An object key, borrowed from the input unless it holds escapes.
struct CowKey<'a>(std::borrow::Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for CowKey<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = CowKey<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<CowKey<'de>, E> {
                Ok(CowKey(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CowKey<'de>, E> {
                Ok(CowKey(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visit)
    }
}

#[derive(Clone)]
pub struct Client {
    http: HttpClient,
    max_body_bytes: usize,
}

impl Client {
    pub fn new(max_body_bytes: usize) -> Self {
        Self { http: HttpClient::new(http_client::Options::default()), max_body_bytes }
    }

    /// Sends the shadow request and waits for the answer (network; runs off the
    /// request path). Never fails: errors are recorded in the returned half.
    pub async fn call(&self, route: &Route, request_body: &Bytes, request_id: &str, traceparent: &str) -> Half {
        let mut half = Half { body: Bytes::new(), status_code: 0, latency_ms: 0.0, error: String::new(), source: Source::Untaken };
        let prepared = if request_body.len() <= crate::INLINE_CPU_BYTES {
            prepare_body(request_body, &route.info.model)
        } else {
            // A big body takes milliseconds to rewrite: not on a runtime worker.
            let (raw, model) = (request_body.clone(), route.info.model.clone());
            tokio::task::spawn_blocking(move || prepare_body(&raw, &model)).await.expect("prepare_body does not panic")
        };
        let body = match prepared {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                half.error = format!("request body not JSON: {e}");
                return half;
            }
        };
        let headers = match shadow_headers(route, request_id, traceparent) {
            Ok(h) => h,
            Err(e) => {
                half.error = format!("request error: {e}");
                return half;
            }
        };
        let target = self.http.target(&route.url);
        // Timed from here: the upstream's latency, not our rewrite of a big body (which
        // may have waited for a blocking thread).
        let start = Instant::now();
        let result = self.http.post(&target, headers, body, route.timeout, self.max_body_bytes).await;
        half.latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(resp) => {
                half.status_code = u32::from(resp.status);
                if resp.truncated {
                    half.error = format!("response body over {} bytes, dropped", self.max_body_bytes);
                } else {
                    if !(200..300).contains(&resp.status) {
                        half.error = format!("http status {}", resp.status);
                    } else if serde_json::from_slice::<serde::de::IgnoredAny>(&resp.body).is_err() {
                        half.error = "response body is not JSON".into();
                    }
                    half.body = resp.body;
                }
            }
            Err(e) => half.error = e.to_string(),
        }
        half
    }
}

/// The shadow request's headers. Values come from the Mirror request (validated:
/// no control characters) and the route's key; one that is still not a valid header
/// value fails the call, named but not echoed.
fn shadow_headers(route: &Route, request_id: &str, traceparent: &str) -> Result<HeaderMap, &'static str> {
    let mut h = HeaderMap::with_capacity(5);
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
    h.insert("x-request-id", HeaderValue::from_str(request_id).map_err(|_| "request_id is not a valid header value")?);
    if !traceparent.is_empty() {
        h.insert("traceparent", HeaderValue::from_str(traceparent).map_err(|_| "traceparent is not a valid header value")?);
    }
    if let Some(key) = &route.api_key {
        h.insert(http::header::AUTHORIZATION, http_client::bearer(key.expose()).map_err(|_| "the route's api key is not a valid header value")?);
    }
    Ok(h)
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
    use serde_json::Value;

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
        assert!(prepare_body(b"[1,2]", "big").is_err());
        assert!(prepare_body(br#"{"messages":[1,}"#, "big").is_err());
    }

    #[test]
    fn rewrite_adds_missing_fields_and_keeps_the_rest_verbatim() {
        let out = prepare_body(br#"{"messages":[{"content":"caf\u00e9 \"x\""}],"temperature":0.20}"#, "b\"ig").unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text, r#"{"messages":[{"content":"caf\u00e9 \"x\""}],"temperature":0.20,"model":"b\"ig","stream":false}"#);
        assert_eq!(prepare_body(b" {} ", "m").unwrap(), br#"{"model":"m","stream":false}"#);
        // A key written with escapes is still recognised, and written back valid.
        let out: Value = serde_json::from_slice(&prepare_body(br#"{"mod\u0065l":"small","a\nb":1}"#, "big").unwrap()).unwrap();
        assert_eq!(out, serde_json::json!({"model": "big", "a\nb": 1, "stream": false}));
    }

    /// The one-pass rewrite means the same as a rewrite through a JSON tree, for any
    /// object (random keys, values, order, duplicates of the rewritten keys).
    #[test]
    fn rewrite_agrees_with_a_tree_rewrite() {
        use proptest::prelude::*;
        let key = prop::sample::select(vec!["model", "stream", "stream_options", "messages", "n", "x\"y", "é"]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\"\\\\ é\n]{0,8}".prop_map(Value::String),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        });
        proptest!(|(members in prop::collection::vec((key, value), 0..6))| {
            let text = format!(
                "{{{}}}",
                members.iter().map(|(k, v)| format!("{}:{}", Value::from(*k), v)).collect::<Vec<_>>().join(",")
            );
            let mut expected: Value = serde_json::from_str(&text).unwrap();
            let obj = expected.as_object_mut().unwrap();
            obj.insert("model".into(), Value::from("big"));
            obj.insert("stream".into(), Value::Bool(false));
            obj.remove("stream_options");
            let got: Value = serde_json::from_slice(&prepare_body(text.as_bytes(), "big").unwrap()).unwrap();
            prop_assert_eq!(got, expected);
        });
    }
}
