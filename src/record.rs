//! Builds and encodes the paired-answer record (`untaken.v1.PairRecord`).
//!
//! Pure: a record is a function of the pair's metadata, its two halves and the
//! clock reading passed in. Publishing is the sinks' business, not this module's.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message;

use crate::config::Encoding;
use crate::proto::v1::{AnswerRecord, PairKind, PairRecord, PairStatus, RouteRef};
use crate::usage::{read, BodyKind, Usage};

/// Bumped on incompatible changes to `PairRecord`; also sent as a Kafka header.
pub const SCHEMA_VERSION: u32 = 2;
pub const SCHEMA_NAME: &str = "untaken.v1.PairRecord";

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Router,
    Untaken,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Router => "router",
            Source::Untaken => "untaken",
        }
    }
}

/// One route's answer before it is put into a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Half {
    pub body: Bytes,
    /// HTTP status; 0 when no response arrived.
    pub status_code: u32,
    pub latency_ms: f64,
    /// Empty on success.
    pub error: String,
    pub source: Source,
}

/// A route as the record names it, with the prices its cost is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInfo {
    pub name: String,
    pub model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

/// Everything known about a sampled request when `Mirror` accepts it.
#[derive(Debug, Clone)]
pub struct PairMeta {
    pub pair_id: String,
    pub request_id: String,
    pub sampling_key: String,
    pub received_at: SystemTime,
    pub slice: String,
    pub labels: HashMap<String, String>,
    pub rate: f64,
    pub route_taken: RouteInfo,
    pub route_not_taken: RouteInfo,
    /// A JSON object: `Mirror` refuses any other body (`validate_request`), and
    /// redaction rewrites string values only, so it stays one.
    pub request_body: Bytes,
    pub traceparent: String,
    /// `Control` when the request was shadowed to the route taken itself.
    pub kind: PairKind,
}

/// Builds the record for a pair; a `None` half is marked missing with `status_reason`.
pub fn build(
    meta: &PairMeta,
    primary: Option<&Half>,
    counterfactual: Option<&Half>,
    status_reason: &str,
    now: SystemTime,
) -> PairRecord {
    let status = match (primary.is_some(), counterfactual.is_some()) {
        (true, true) => PairStatus::Complete,
        (false, _) => PairStatus::PrimaryMissing,
        (true, false) => PairStatus::CounterfactualMissing,
    };
    // Not parsed again: a JSON object by construction (see `PairMeta::request_body`).
    debug_assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&meta.request_body).is_ok(), "request_body is JSON, as Mirror checked it");
    let (request_json, request, request_is_text) = (utf8(&meta.request_body), None, false);
    PairRecord {
        schema_version: SCHEMA_VERSION,
        pair_id: meta.pair_id.clone(),
        request_id: meta.request_id.clone(),
        sampling_key: meta.sampling_key.clone(),
        received_at: Some(timestamp(meta.received_at)),
        published_at: Some(timestamp(now)),
        slice: meta.slice.clone(),
        labels: meta.labels.clone(),
        sampling_rate: meta.rate,
        sampling_weight: if meta.rate > 0.0 { 1.0 / meta.rate } else { 0.0 },
        route_taken: Some(route_ref(&meta.route_taken)),
        route_not_taken: Some(route_ref(&meta.route_not_taken)),
        request,
        request_json,
        request_is_text,
        primary: Some(answer(primary, &meta.route_taken)),
        counterfactual: Some(answer(counterfactual, &meta.route_not_taken)),
        status: status as i32,
        status_reason: if status == PairStatus::Complete { String::new() } else { status_reason.to_string() },
        traceparent: meta.traceparent.clone(),
        kind: meta.kind as i32,
    }
}

fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn route_ref(r: &RouteInfo) -> RouteRef {
    RouteRef { name: r.name.clone(), model: r.model.clone() }
}

/// A JSON body's text. `read` has validated it as JSON, and JSON is UTF-8.
fn utf8(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// A body that is not JSON, as a string value.
fn text_value(raw: &[u8]) -> pbjson_types::Value {
    String::from_utf8_lossy(raw).into_owned().into()
}

fn answer(half: Option<&Half>, route: &RouteInfo) -> AnswerRecord {
    let Some(half) = half else {
        return AnswerRecord { present: false, ..Default::default() };
    };
    let (body, body_json, usage) = match read(&half.body) {
        _ if half.body.is_empty() => (None, String::new(), Usage::default()),
        BodyKind::Object(usage) => (None, utf8(&half.body), usage),
        BodyKind::OtherJson => (None, utf8(&half.body), Usage::default()),
        BodyKind::Text => (Some(text_value(&half.body)), String::new(), Usage::default()),
    };
    AnswerRecord {
        present: true,
        body_is_text: body.is_some(),
        body,
        body_json,
        status_code: half.status_code,
        latency_ms: half.latency_ms,
        error: half.error.clone(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd: usage.cost_usd(route.input_usd_per_mtok, route.output_usd_per_mtok),
        tool_calls: usage.tool_calls,
        source: half.source.as_str().to_string(),
    }
}

/// A request or answer body as a JSON value, from either encoding: the JSON text
/// of a protobuf record, or the value of a JSON record. For consumers (the judge).
pub fn body_value(json_text: &str, value: Option<&pbjson_types::Value>) -> Option<serde_json::Value> {
    if !json_text.is_empty() {
        return serde_json::from_str(json_text).ok();
    }
    value.and_then(|v| serde_json::to_value(v).ok())
}

/// A record ready for a sink: key, headers and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub pair_id: String,
    /// Kafka key: the request id, so all records of a request share a partition.
    pub key: String,
    pub headers: Vec<(&'static str, String)>,
    pub payload: Vec<u8>,
    pub slice: String,
}

pub fn content_type(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Json => "application/json",
        Encoding::Protobuf => "application/x-protobuf",
    }
}

/// Encodes a record and its Kafka headers. JSON bodies are spliced into the JSON
/// encoding as their original text, never re-serialised.
pub fn encode(mut record: PairRecord, encoding: Encoding) -> Encoded {
    let payload = match encoding {
        Encoding::Json => json_payload(&mut record),
        Encoding::Protobuf => record.encode_to_vec(),
    };
    let route_taken = record.route_taken.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    Encoded {
        pair_id: record.pair_id.clone(),
        key: record.request_id.clone(),
        headers: vec![
            ("content-type", content_type(encoding).to_string()),
            ("untaken-schema", SCHEMA_NAME.to_string()),
            ("untaken-schema-version", SCHEMA_VERSION.to_string()),
            ("untaken-slice", record.slice.clone()),
            ("untaken-route-taken", route_taken),
        ],
        payload,
        slice: record.slice,
    }
}

/// The proto3 JSON mapping of `record`, with `request` and each `body` written as
/// the JSON text they arrived as. The record's JSON text fields are emptied.
fn json_payload(record: &mut PairRecord) -> Vec<u8> {
    let request = std::mem::take(&mut record.request_json);
    let halves = [record.primary.take(), record.counterfactual.take()];
    let mut out = Vec::with_capacity(request.len() + 1024 + halves.iter().flatten().map(|h| h.body_json.len()).sum::<usize>());
    out.push(b'{');
    if !request.is_empty() {
        field(&mut out, "request", request.as_bytes());
    }
    for (name, half) in ["primary", "counterfactual"].into_iter().zip(halves) {
        if let Some(mut half) = half {
            let body = std::mem::take(&mut half.body_json);
            let mut inner = vec![b'{'];
            if !body.is_empty() {
                field(&mut inner, "body", body.as_bytes());
            }
            close(&mut inner, &serde_json::to_vec(&half).expect("AnswerRecord always serializes"));
            field(&mut out, name, &inner);
        }
    }
    close(&mut out, &serde_json::to_vec(&*record).expect("PairRecord always serializes"));
    out
}

/// Appends `"name":value,` to an object being written.
fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value);
    out.push(b',');
}

/// Finishes an object being written with the fields of `rest`, itself a JSON object.
fn close(out: &mut Vec<u8>, rest: &[u8]) {
    let inner = &rest[1..]; // skip `{`; what is left ends with `}`
    if inner == b"}" {
        if out.last() == Some(&b',') {
            out.pop();
        }
        out.push(b'}');
    } else {
        out.extend_from_slice(inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::{Duration, UNIX_EPOCH};

    fn meta() -> PairMeta {
        PairMeta {
            pair_id: "p-1".into(),
            request_id: "req-1".into(),
            sampling_key: "user-9".into(),
            received_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            slice: "multi_step".into(),
            labels: HashMap::from([("tenant".into(), "acme".into())]),
            rate: 0.25,
            route_taken: RouteInfo {
                name: "fast".into(),
                model: "small".into(),
                input_usd_per_mtok: 0.15,
                output_usd_per_mtok: 0.60,
            },
            route_not_taken: RouteInfo {
                name: "reasoning".into(),
                model: "big".into(),
                input_usd_per_mtok: 1.10,
                output_usd_per_mtok: 4.40,
            },
            request_body: Bytes::from_static(br#"{"model":"small","messages":[{"role":"user","content":"hi"}]}"#),
            traceparent: String::new(),
            kind: PairKind::Pair,
        }
    }

    fn half(body: &str, source: Source) -> Half {
        Half { body: Bytes::from(body.to_string()), status_code: 200, latency_ms: 12.5, error: String::new(), source }
    }

    const SHADOW: &str = r#"{"choices":[{"message":{"role":"assistant","content":"42"}}],"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#;

    fn json_of(rec: &PairRecord) -> Value {
        serde_json::from_slice(&encode(rec.clone(), Encoding::Json).payload).unwrap()
    }

    #[test]
    fn json_record_has_bodies_as_objects_for_a_python_grader() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_001);
        let rec = build(&meta(), Some(&half("{\"choices\":[]}", Source::Router)), Some(&half(SHADOW, Source::Untaken)), "", now);
        let j = json_of(&rec);
        assert_eq!(j["counterfactual"]["body"]["choices"][0]["message"]["content"], "42");
        assert_eq!(j["request"]["messages"][0]["content"], "hi");
        assert_eq!(j["status"], "PAIR_STATUS_COMPLETE");
        assert_eq!(j["sampling_rate"], 0.25);
        assert_eq!(j["sampling_weight"], 4.0);
        assert_eq!(j["route_not_taken"]["model"], "big");
        assert_eq!(j["labels"]["tenant"], "acme");
        // RFC 3339 (pbjson prints the UTC offset as +00:00; every RFC 3339 parser reads it).
        assert_eq!(j["received_at"], "2023-11-14T22:13:20+00:00");
        assert_eq!(j["counterfactual"]["input_tokens"], 1000);
        assert!(j["counterfactual"].get("body_is_text").is_none());
        // 1000 × 1.10/M + 500 × 4.40/M
        assert!((j["counterfactual"]["cost_usd"].as_f64().unwrap() - 0.0033).abs() < 1e-12);
        assert_eq!(j["counterfactual"]["source"], "untaken");
    }

    #[test]
    fn body_that_is_not_json_is_kept_as_text_and_flagged() {
        let rec = build(&meta(), Some(&half("<html>502</html>", Source::Router)), None, "late", SystemTime::now());
        let j = json_of(&rec);
        assert_eq!(j["primary"]["body"], "<html>502</html>");
        assert_eq!(j["primary"]["body_is_text"], true);
    }

    #[test]
    fn missing_half_is_marked_with_reason() {
        let rec = build(&meta(), None, Some(&half(SHADOW, Source::Untaken)), "primary not reported within 2s", SystemTime::now());
        assert_eq!(rec.status(), PairStatus::PrimaryMissing);
        assert_eq!(rec.status_reason, "primary not reported within 2s");
        assert!(!rec.primary.as_ref().unwrap().present);
        let rec = build(&meta(), Some(&half(SHADOW, Source::Router)), None, "shutdown", SystemTime::now());
        assert_eq!(rec.status(), PairStatus::CounterfactualMissing);
        let rec = build(&meta(), Some(&half(SHADOW, Source::Router)), Some(&half(SHADOW, Source::Untaken)), "ignored", SystemTime::now());
        assert_eq!(rec.status_reason, "");
    }

    #[test]
    fn bodies_are_carried_verbatim() {
        let mut m = meta();
        let request = r#"{"seed":12345678901234567890,"n":-9223372036854775808,"z":1,"a":[1.50,2e3],"messages":[]}"#;
        m.request_body = Bytes::from_static(request.as_bytes());
        let answer = r#"{"id":"x","created":1700000000,"choices":[{"message":{"content":"42"}}],"usage":{"prompt_tokens":335,"completion_tokens":7}}"#;
        let rec = build(&m, Some(&half(answer, Source::Router)), None, "r", SystemTime::now());
        let text = String::from_utf8(encode(rec.clone(), Encoding::Json).payload).unwrap();
        assert!(text.contains(&format!("\"request\":{request}")), "request verbatim: {text}");
        assert!(text.contains(&format!("\"body\":{answer}")), "answer verbatim: {text}");
        let j: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["primary"]["input_tokens"], 335);
        assert_eq!(j["primary"]["status_code"], 200);
        assert!(j.get("request_json").is_none() && j["primary"].get("body_json").is_none());
        // Protobuf carries the same text.
        let back = PairRecord::decode(encode(rec, Encoding::Protobuf).payload.as_slice()).unwrap();
        assert_eq!(back.request_json, request);
        assert_eq!(back.primary.unwrap().body_json, answer);
    }

    #[test]
    fn deeply_nested_bodies_decode_from_protobuf() {
        let deep = format!("{}{}", "{\"a\":".repeat(60), "1".to_string() + &"}".repeat(60));
        let mut m = meta();
        m.request_body = Bytes::from(format!("{{\"messages\":[],\"x\":{deep}}}"));
        let rec = build(&m, Some(&half(&deep, Source::Router)), None, "r", SystemTime::now());
        let back = PairRecord::decode(encode(rec.clone(), Encoding::Protobuf).payload.as_slice()).expect("prost decodes it");
        assert_eq!(back.primary.as_ref().unwrap().body_json, deep);
        let j = json_of(&rec);
        assert_eq!(j["primary"]["body"].pointer(&format!("{}", "/a".repeat(60))).unwrap(), 1);
    }

    #[test]
    fn protobuf_round_trips_and_headers_name_the_record() {
        let rec = build(&meta(), Some(&half(SHADOW, Source::Router)), Some(&half(SHADOW, Source::Untaken)), "", SystemTime::now());
        let enc = encode(rec.clone(), Encoding::Protobuf);
        assert_eq!(PairRecord::decode(enc.payload.as_slice()).unwrap(), rec);
        assert_eq!(enc.key, "req-1");
        let h: HashMap<_, _> = enc.headers.iter().cloned().collect();
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["untaken-slice"], "multi_step");
        assert_eq!(h["untaken-route-taken"], "fast");
        assert_eq!(h["untaken-schema-version"], "2");
    }

    #[test]
    fn json_round_trips_through_the_proto3_mapping() {
        let rec = build(&meta(), Some(&half(SHADOW, Source::Router)), Some(&half(SHADOW, Source::Untaken)), "", SystemTime::now());
        let back: PairRecord = serde_json::from_slice(&encode(rec.clone(), Encoding::Json).payload).unwrap();
        // JSON carries bodies as values; everything else is the same record.
        let value = |text: &str| serde_json::from_str::<pbjson_types::Value>(text).unwrap();
        let mut expected = rec.clone();
        expected.request = Some(value(&std::mem::take(&mut expected.request_json)));
        for h in [expected.primary.as_mut().unwrap(), expected.counterfactual.as_mut().unwrap()] {
            h.body = Some(value(&std::mem::take(&mut h.body_json)));
        }
        assert_eq!(back, expected);
        // A consumer reads the body the same way from either encoding (a proto3 JSON
        // parser turns numbers into doubles; a plain JSON parser keeps the integers).
        for a in [back.counterfactual.as_ref().unwrap(), rec.counterfactual.as_ref().unwrap()] {
            let v = body_value(&a.body_json, a.body.as_ref()).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "42");
            assert_eq!(v["usage"]["prompt_tokens"].as_f64(), Some(1000.0));
        }
    }
}
