//! A pair record as the judge reads it ([`Pair`]): the record's own fields, and its
//! three bodies (the request and each answer) as plain JSON values, decoded once.
//!
//! JSON records (the sidecar's default encoding) are read straight into this by
//! [`from_json`]: each body becomes a `serde_json::Value` as it is parsed, where
//! decoding a `PairRecord` builds it as a `google.protobuf.Value` tree first (a
//! tree of hash maps) that the judge then converted, two trees a body. The result
//! is the same: a body's numbers become f64 as a `google.protobuf.Value` holds them
//! (an integer beyond 2^53 is an error), every field is checked as `PairRecord`
//! decoding checks it, and a record [`from_json`] does not take is left to that
//! decoding, whose answer (a pair, or the error) then stands. Only the order of the
//! keys of a body's objects differs: the record's order here, a hash map's there.
//! Protobuf records decode as `PairRecord` and convert ([`From`]).
//!
//! Pure. Nothing here logs: the bodies are prompt and answer content.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::features::to_json;
use crate::proto::v1::{AnswerRecord, PairKind, PairRecord, PairStatus, RouteRef};

/// A pair record with its bodies decoded to JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The record's fields, its bodies (`request`, `request_json`, each answer's
    /// `body` and `body_json`) left empty: they are the values below.
    pub record: PairRecord,
    /// The request; Null when absent or unreadable.
    pub request: Value,
    /// The primary's body: its text as a JSON string when `body_is_text`, else its
    /// JSON; Null when absent or unreadable.
    pub primary_body: Value,
    /// The counterfactual's body, as `primary_body`.
    pub counterfactual_body: Value,
}

impl From<PairRecord> for Pair {
    fn from(mut record: PairRecord) -> Self {
        let request = to_json(&std::mem::take(&mut record.request_json), record.request.take().as_ref());
        let body = |half: Option<&mut AnswerRecord>| match half {
            Some(a) => {
                let (json, value) = (std::mem::take(&mut a.body_json), a.body.take());
                // A text body is the value itself (what a JSON text would say is not read).
                to_json(if a.body_is_text { "" } else { &json }, value.as_ref())
            }
            None => Value::Null,
        };
        let primary_body = body(record.primary.as_mut());
        let counterfactual_body = body(record.counterfactual.as_mut());
        Self { record, request, primary_body, counterfactual_body }
    }
}

/// Reads a JSON pair record, or `None` when it is not one this reader takes (then
/// decode it as a `PairRecord`: it may still be one, spelled unusually, or the
/// error says why not).
pub fn from_json(payload: &[u8]) -> Option<Pair> {
    let MapOnly(r) = serde_json::from_slice::<MapOnly<PairJson>>(payload).ok()?;
    let answer = |a: Option<MapOnly<AnswerJson>>| {
        a.map(|MapOnly(a)| {
            let body = if a.body_is_text { a.body.map(|b| b.0) } else { body(&a.body_json, a.body) };
            let record = AnswerRecord {
                present: a.present,
                body: None,
                body_json: String::new(),
                body_is_text: a.body_is_text,
                status_code: a.status_code,
                latency_ms: a.latency_ms,
                error: a.error,
                input_tokens: a.input_tokens,
                output_tokens: a.output_tokens,
                cost_usd: a.cost_usd,
                tool_calls: a.tool_calls,
                source: a.source,
            };
            (record, body.unwrap_or(Value::Null))
        })
    };
    let (primary, primary_body) = answer(r.primary).unzip();
    let (counterfactual, counterfactual_body) = answer(r.counterfactual).unzip();
    let request = body(&r.request_json, r.request).unwrap_or(Value::Null);
    let record = PairRecord {
        schema_version: r.schema_version,
        pair_id: r.pair_id,
        request_id: r.request_id,
        sampling_key: r.sampling_key,
        received_at: r.received_at,
        published_at: r.published_at,
        slice: r.slice,
        labels: r.labels,
        sampling_rate: r.sampling_rate,
        sampling_weight: r.sampling_weight,
        route_taken: r.route_taken,
        route_not_taken: r.route_not_taken,
        request: None,
        request_json: String::new(),
        request_is_text: r.request_is_text,
        primary,
        counterfactual,
        status: r.status,
        status_reason: r.status_reason,
        traceparent: r.traceparent,
        kind: r.kind,
    };
    Some(Pair {
        record,
        request,
        primary_body: primary_body.unwrap_or(Value::Null),
        counterfactual_body: counterfactual_body.unwrap_or(Value::Null),
    })
}

/// A body from its two spellings, as `record::body_value` reads them: the JSON text
/// when there is one (unreadable text is no body), else the value.
fn body(json_text: &str, value: Option<ProtoJson>) -> Option<Value> {
    if !json_text.is_empty() {
        return serde_json::from_str(json_text).ok();
    }
    value.map(|v| v.0)
}

// The fields of `PairRecord` and `AnswerRecord` in the proto3 JSON mapping, typed
// as the generated (pbjson) decoding types them: both spellings of a name, numbers
// as numbers or strings, enums by name or number, strings and booleans never null,
// messages null as absent. Fields the judge does not use are still read, so that a
// record is refused exactly when `PairRecord` decoding refuses it.

#[derive(serde::Deserialize)]
struct PairJson {
    #[serde(default, alias = "schemaVersion", deserialize_with = "number")]
    schema_version: u32,
    #[serde(default, alias = "pairId")]
    pair_id: String,
    #[serde(default, alias = "requestId")]
    request_id: String,
    #[serde(default, alias = "samplingKey")]
    sampling_key: String,
    #[serde(default, alias = "receivedAt")]
    received_at: Option<pbjson_types::Timestamp>,
    #[serde(default, alias = "publishedAt")]
    published_at: Option<pbjson_types::Timestamp>,
    #[serde(default)]
    slice: String,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default, alias = "samplingRate", deserialize_with = "number")]
    sampling_rate: f64,
    #[serde(default, alias = "samplingWeight", deserialize_with = "number")]
    sampling_weight: f64,
    #[serde(default, alias = "routeTaken")]
    route_taken: Option<RouteRef>,
    #[serde(default, alias = "routeNotTaken")]
    route_not_taken: Option<RouteRef>,
    #[serde(default)]
    request: Option<ProtoJson>,
    #[serde(default, alias = "requestJson")]
    request_json: String,
    #[serde(default, alias = "requestIsText")]
    request_is_text: bool,
    #[serde(default)]
    primary: Option<MapOnly<AnswerJson>>,
    #[serde(default)]
    counterfactual: Option<MapOnly<AnswerJson>>,
    #[serde(default, deserialize_with = "status")]
    status: i32,
    #[serde(default, alias = "statusReason")]
    status_reason: String,
    #[serde(default)]
    traceparent: String,
    #[serde(default, deserialize_with = "kind")]
    kind: i32,
}

#[derive(serde::Deserialize)]
struct AnswerJson {
    #[serde(default)]
    present: bool,
    #[serde(default)]
    body: Option<ProtoJson>,
    #[serde(default, alias = "bodyJson")]
    body_json: String,
    #[serde(default, alias = "bodyIsText")]
    body_is_text: bool,
    #[serde(default, alias = "statusCode", deserialize_with = "number")]
    status_code: u32,
    #[serde(default, alias = "latencyMs", deserialize_with = "number")]
    latency_ms: f64,
    #[serde(default)]
    error: String,
    #[serde(default, alias = "inputTokens", deserialize_with = "number")]
    input_tokens: u32,
    #[serde(default, alias = "outputTokens", deserialize_with = "number")]
    output_tokens: u32,
    #[serde(default, alias = "costUsd", deserialize_with = "number")]
    cost_usd: f64,
    #[serde(default, alias = "toolCalls", deserialize_with = "number")]
    tool_calls: u32,
    #[serde(default)]
    source: String,
}

/// A number as pbjson's `NumberDeserialize` reads it (a JSON number as `T` reads it,
/// or a string `T` parses), without its untagged enum: that buffers the value and
/// tries it as a string first, building (and formatting) a serde error for every
/// plain number, about ten a pair record.
fn number<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: FromStr + Deserialize<'de>,
    T::Err: fmt::Display,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T> Visitor<'de> for V<T>
    where
        T: FromStr + Deserialize<'de>,
        T::Err: fmt::Display,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, or a string holding one")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            T::deserialize(de::value::U64Deserializer::new(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            T::deserialize(de::value::I64Deserializer::new(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            T::deserialize(de::value::F64Deserializer::new(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.parse().map_err(E::custom)
        }
    }
    d.deserialize_any(V(PhantomData))
}

fn status<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    Ok(PairStatus::deserialize(d)? as i32)
}

fn kind<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    Ok(PairKind::deserialize(d)? as i32)
}

/// A message: a JSON object only (a derived struct would also take an array).
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = MapOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(MapOnly)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A body as a `google.protobuf.Value` reads it (numbers as f64, integers only
/// within ±2^53, a repeated key's last value), built directly as JSON.
struct ProtoJson(Value);

impl<'de> Deserialize<'de> for ProtoJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProtoJsonVisitor).map(ProtoJson)
    }
}

struct ProtoJsonVisitor;

/// 2^53: integers beyond are not exactly an f64, and `google.protobuf.Value` refuses them.
const EXACT_F64: u64 = 1 << f64::MANTISSA_DIGITS;

impl<'de> Visitor<'de> for ProtoJsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("google.protobuf.Value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if v.unsigned_abs() < EXACT_F64 {
            return Ok(Value::from(v as f64));
        }
        Err(E::custom("out of range integral type conversion attempted"))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if v < EXACT_F64 {
            return Ok(Value::from(v as f64));
        }
        Err(E::custom("out of range integral type conversion attempted"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(ProtoJson(v)) = seq.next_element()? {
            list.push(v);
        }
        Ok(Value::Array(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some((k, ProtoJson(v))) = map.next_entry::<String, ProtoJson>()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Encoding;
    use crate::proto::v1::GradeRecord;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    /// What the judge read before this module: the generated `PairRecord` decoding,
    /// then its bodies converted.
    fn generic(payload: &[u8]) -> Result<Pair, serde_json::Error> {
        serde_json::from_slice::<PairRecord>(payload).map(Pair::from)
    }

    fn text(rng: &mut StdRng) -> String {
        const PIECES: &[&str] = &["the answer", " is ", "42", "\n", "é", "日本", "\"quoted\"", "\\", "{answer_b}", "\t", "🙂", "3.50", "-7", " ", "\u{0}"];
        (0..rng.random_range(0..12)).map(|_| PIECES[rng.random_range(0..PIECES.len())]).collect()
    }

    /// A number as a body may hold it: small and large integers, fractions, exponents.
    fn number(rng: &mut StdRng) -> String {
        match rng.random_range(0..200) {
            0..60 => rng.random_range(-1000..1000).to_string(),
            60..110 => rng.random_range(0..u32::MAX).to_string(),
            110..170 => format!("{}", rng.random::<f64>() * 1e6),
            170..185 => "1e3".into(),
            185..198 => "9007199254740991".into(), // 2^53 - 1: still exact
            198 => "-9007199254740992".into(),     // -2^53: refused
            _ => "18446744073709551615".into(),
        }
    }

    /// A random JSON document (as text, so numbers keep their spelling).
    fn value(rng: &mut StdRng, depth: u32) -> String {
        match rng.random_range(0..if depth == 0 { 4 } else { 6 }) {
            0 => serde_json::to_string(&text(rng)).unwrap(),
            1 => number(rng),
            2 => ["true", "false", "null"][rng.random_range(0..3)].into(),
            3 => "{}".into(),
            4 => format!("[{}]", (0..rng.random_range(0..4)).map(|_| value(rng, depth - 1)).collect::<Vec<_>>().join(",")),
            _ => {
                let keys = ["a", "b", "id", "type", "text", "a"]; // a repeated key: the last one counts
                let n = rng.random_range(0..4);
                format!("{{{}}}", (0..n).map(|_| format!("\"{}\":{}", keys[rng.random_range(0..keys.len())], value(rng, depth - 1))).collect::<Vec<_>>().join(","))
            }
        }
    }

    fn content(rng: &mut StdRng) -> String {
        match rng.random_range(0..4) {
            0 => format!("[{{\"type\":\"text\",\"text\":{}}},{}]", serde_json::to_string(&text(rng)).unwrap(), value(rng, 2)),
            1 => value(rng, 2),
            _ => serde_json::to_string(&text(rng)).unwrap(),
        }
    }

    fn request(rng: &mut StdRng) -> String {
        let roles = ["system", "user", "assistant", "tool"];
        let messages: Vec<String> = (0..rng.random_range(0..5))
            .map(|_| format!("{{\"role\":\"{}\",\"content\":{}}}", roles[rng.random_range(0..roles.len())], content(rng)))
            .collect();
        let tools = if rng.random_bool(0.3) { format!(",\"tools\":{}", value(rng, 2)) } else { String::new() };
        format!("{{\"model\":\"m\",\"messages\":[{}],\"metadata\":{{\"answer\":{}}}{tools}}}", messages.join(","), value(rng, 1))
    }

    fn answer_body(rng: &mut StdRng) -> String {
        let calls = if rng.random_bool(0.3) { format!(",\"tool_calls\":[{{\"id\":\"c\",\"index\":{},\"function\":{}}}]", number(rng), value(rng, 2)) } else { String::new() };
        format!("{{\"id\":\"x\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{}{calls}}}}}],\"usage\":{{\"prompt_tokens\":{}}}}}", content(rng), number(rng))
    }

    fn half(rng: &mut StdRng) -> Option<AnswerRecord> {
        let body_is_text = rng.random_bool(0.15);
        rng.random_bool(0.9).then(|| AnswerRecord {
            present: rng.random_bool(0.9),
            body_is_text,
            body: body_is_text.then(|| text(rng).into()),
            body_json: if body_is_text || rng.random_bool(0.05) { String::new() } else { answer_body(rng) },
            status_code: [200, 200, 200, 429, 500][rng.random_range(0..5)],
            latency_ms: rng.random::<f64>() * 1000.0,
            error: if rng.random_bool(0.1) { text(rng) } else { String::new() },
            input_tokens: rng.random_range(0..5000),
            output_tokens: rng.random_range(0..5000),
            cost_usd: rng.random::<f64>() / 100.0,
            tool_calls: rng.random_range(0..3),
            source: ["upstream", "reported", ""][rng.random_range(0..3)].into(),
        })
    }

    /// A pair record as the sidecar writes it (`record::encode`, JSON).
    fn record(rng: &mut StdRng) -> Vec<u8> {
        let route = |rng: &mut StdRng| rng.random_bool(0.9).then(|| RouteRef { name: text(rng), model: ["m-a", "m-b", "judge"][rng.random_range(0..3)].into() });
        let pair = PairRecord {
            schema_version: 1,
            pair_id: format!("p{}", rng.random::<u32>()),
            request_id: text(rng),
            sampling_key: text(rng),
            received_at: rng.random_bool(0.8).then(|| pbjson_types::Timestamp { seconds: rng.random_range(0..2_000_000_000), nanos: rng.random_range(0..1_000_000_000) }),
            published_at: None,
            slice: text(rng),
            labels: (0..rng.random_range(0..3)).map(|i| (["expected_answer", "team", "x"][i].to_string(), text(rng))).collect(),
            sampling_rate: rng.random::<f64>(),
            sampling_weight: rng.random::<f64>() * 10.0,
            route_taken: route(rng),
            route_not_taken: route(rng),
            request: None,
            request_json: if rng.random_bool(0.95) { request(rng) } else { String::new() },
            request_is_text: false,
            primary: half(rng),
            counterfactual: half(rng),
            status: rng.random_range(0..4),
            status_reason: text(rng),
            traceparent: String::new(),
            kind: rng.random_range(0..2),
        };
        crate::record::encode(pair, Encoding::Json).payload
    }

    /// One change a writer other than the sidecar might make, or a broken record.
    fn mutate(rng: &mut StdRng, payload: &[u8]) -> Vec<u8> {
        let mut doc: Value = serde_json::from_slice(payload).unwrap();
        let fields = ["pair_id", "sampling_rate", "status", "kind", "labels", "received_at", "route_taken", "request", "primary", "traceparent", "schema_version", "request_is_text", "published_at"];
        let answer_fields = ["present", "status_code", "latency_ms", "body", "body_is_text", "error", "tool_calls", "source", "body_json"];
        let replacement = |rng: &mut StdRng| -> Value {
            let choices = [json!(null), json!("7"), json!("NaN"), json!(3), json!(-1), json!(2.5), json!(true), json!([1]), json!({"k": 1}), json!("PAIR_STATUS_COMPLETE"), json!("2026-01-01T00:00:00Z"), json!(1e300)];
            choices[rng.random_range(0..choices.len())].clone()
        };
        let obj = doc.as_object_mut().unwrap();
        match rng.random_range(0..6) {
            0 => {
                obj.insert(fields[rng.random_range(0..fields.len())].into(), replacement(rng));
            }
            1 => {
                if let Some(Value::Object(a)) = obj.get_mut(["primary", "counterfactual"][rng.random_range(0..2)]) {
                    a.insert(answer_fields[rng.random_range(0..answer_fields.len())].into(), replacement(rng));
                }
            }
            2 => {
                // camelCase spellings, which the proto3 JSON mapping allows
                let renamed: serde_json::Map<String, Value> = std::mem::take(obj)
                    .into_iter()
                    .map(|(k, v)| (if rng.random_bool(0.5) { pbjson_camel(&k) } else { k }, v))
                    .collect();
                *obj = renamed;
            }
            3 => {
                let bad = [r#"{"x":18446744073709551616}"#, "[1,2]", r#""text""#, r#"{"a":1e999}"#];
                obj.insert("request".into(), serde_json::from_str(bad[rng.random_range(0..bad.len())]).unwrap_or(Value::Null));
            }
            4 => {
                // a repeated field (camelCase and snake_case, or the same name twice)
                let text = String::from_utf8(serde_json::to_vec(&doc).unwrap()).unwrap();
                let dup = [r#""pairId":"d","#, r#""pair_id":"d","#, r#""kind":1,"#, r#""primary":null,"#][rng.random_range(0..4)];
                return format!("{{{dup}{}", &text[1..]).into_bytes();
            }
            _ => {
                let shapes = [json!([1, 2]), json!("x"), json!([true, {}, 3])];
                if rng.random_bool(0.5) {
                    return serde_json::to_vec(&shapes[rng.random_range(0..shapes.len())]).unwrap();
                }
                obj.insert("primary".into(), shapes[rng.random_range(0..shapes.len())].clone());
            }
        }
        serde_json::to_vec(&doc).unwrap()
    }

    fn pbjson_camel(k: &str) -> String {
        let mut out = String::new();
        let mut up = false;
        for c in k.chars() {
            match (c, up) {
                ('_', _) => up = true,
                (c, true) => {
                    out.extend(c.to_uppercase());
                    up = false;
                }
                (c, false) => out.push(c),
            }
        }
        out
    }

    /// Equal pairs, NaN equal to itself (as the JSON mapping writes both: "NaN").
    fn assert_same(a: &Pair, b: &Pair, payload: &[u8]) {
        fn json(p: &Pair) -> [Value; 4] {
            [serde_json::to_value(&p.record).unwrap(), p.request.clone(), p.primary_body.clone(), p.counterfactual_body.clone()]
        }
        assert_eq!(json(a), json(b), "{}", String::from_utf8_lossy(payload));
    }

    /// The reference judge's grade of `pair` as the grades topic gets it, the clock
    /// reading removed, read back as JSON: the bytes hold `labels` (a map) in an order
    /// that varies between any two decodings of one record, so they are compared as
    /// JSON objects (every byte of every value, any order of keys).
    fn grade(pair: Pair, encoding: Encoding) -> Value {
        let bytes = grade_bytes(pair, encoding);
        match encoding {
            Encoding::Json => serde_json::from_slice(&bytes).unwrap(),
            Encoding::Protobuf => serde_json::to_value(<GradeRecord as prost::Message>::decode(bytes.as_slice()).unwrap()).unwrap(),
        }
    }

    fn grade_bytes(pair: Pair, encoding: Encoding) -> Vec<u8> {
        let config = crate::judge::config::from_toml("[judge]\nkind = \"reference\"\n[judge.reference]\nlabel = \"expected_answer\"\npointer = \"/metadata/answer\"\nmethod = \"exact\"\n").unwrap();
        let metrics = std::sync::Arc::new(crate::judge::metrics::JudgeMetrics::new(&crate::metrics::Metrics::new()));
        let grader = crate::judge::grader::Grader::new(&config, metrics).unwrap();
        let origin = crate::judge::grade::Origin { topic: "t".into(), partition: 1, offset: 2 };
        let mut g: GradeRecord = futures::executor::block_on(grader.grade(pair, &origin));
        g.graded_at = None;
        crate::judge::grade::encode(&g, encoding).payload
    }

    #[test]
    fn sidecar_records_read_directly_equal_the_generic_decoding_and_grade_byte_for_byte() {
        let mut rng = StdRng::seed_from_u64(11);
        let (mut direct, mut answer_chars) = (0, 0);
        for _ in 0..3000 {
            let payload = record(&mut rng);
            let generic = generic(&payload);
            let Some(fast) = from_json(&payload) else {
                // Only a body the generic decoding refuses too (an integer beyond 2^53).
                assert!(generic.is_err(), "a sidecar record was not read directly: {}", String::from_utf8_lossy(&payload));
                continue;
            };
            direct += 1;
            let generic = generic.expect("read directly, so the generic decoding reads it too");
            assert_same(&fast, &generic, &payload);
            let json = grade(fast.clone(), Encoding::Json);
            assert_eq!(json, grade(generic.clone(), Encoding::Json));
            assert_eq!(grade(fast, Encoding::Protobuf), grade(generic, Encoding::Protobuf));
            answer_chars += usize::from(json["primary"]["answer_chars"].as_u64().is_some_and(|n| n > 0));
        }
        assert!(direct > 2000, "most sidecar records take the direct path ({direct} of 3000)");
        assert!(answer_chars > 1000, "grades summarise answers ({answer_chars})");
    }

    #[test]
    fn any_record_decodes_as_the_generic_decoding_decodes_it_or_fails_as_it_does() {
        let mut rng = StdRng::seed_from_u64(12);
        let (mut direct, mut refused) = (0, 0);
        for _ in 0..6000 {
            let sidecar = record(&mut rng);
            let payload = mutate(&mut rng, &sidecar);
            let generic = generic(&payload);
            match (super::super::decode_pair(&payload, None), &generic) {
                (Ok(p), Ok(g)) => assert_same(&p, g, &payload),
                (Err(e), Err(_)) => {
                    let generic = serde_json::from_slice::<PairRecord>(&payload).unwrap_err();
                    assert_eq!(e.to_string(), super::super::DecodeError::from(generic).to_string(), "the same error");
                    refused += 1;
                }
                (p, g) => panic!("{p:?} but generically {g:?}: {}", String::from_utf8_lossy(&payload)),
            }
            direct += usize::from(from_json(&payload).is_some());
        }
        assert!(direct > 2000 && refused > 1000, "both kinds covered: {direct} read directly, {refused} refused");
    }

    #[test]
    fn body_numbers_are_what_a_protobuf_value_holds() {
        let pair = from_json(br#"{"request":{"metadata":{"answer":12},"n":[1.5,-3,1e2]},"primary":{"present":true,"body":{"x":1}}}"#).unwrap();
        assert_eq!(pair.request["metadata"]["answer"].to_string(), "12.0", "an f64, as the generic decoding gives it");
        assert_eq!(pair.request["n"].to_string(), "[1.5,-3.0,100.0]");
        assert_eq!(pair.primary_body.to_string(), r#"{"x":1.0}"#);
        assert!(from_json(br#"{"request":{"big":9007199254740992}}"#).is_none(), "2^53 is not exactly an f64: refused");
        let text = from_json(br#"{"primary":{"present":true,"body_is_text":true,"body":"plain","body_json":"{}"}}"#).unwrap();
        assert_eq!(text.primary_body, json!("plain"), "a text body is the value");
        let spliced = from_json(br#"{"request_json":"{\"a\":1}","request":{"a":2}}"#).unwrap();
        assert_eq!(spliced.request, json!({"a": 1}), "the JSON text wins, its numbers as written");
    }
}
