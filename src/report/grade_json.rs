//! A fast decoder for JSON grade lines: reads only the fields the report uses, borrowing
//! strings from the line, and skips the rest without building it. The report's input
//! rate depends on it (see BENCHMARKS.md, "Report").
//!
//! Owns: the mapping of the proto3 JSON form of `GradeRecord` (proto or lowerCamel field
//! names, enums by name or number) onto the record the accumulator reads. Whatever this
//! decoder does not accept — numbers written as strings, `NaN`, anything unexpected — is
//! handed to the generated pbjson decoder by [`decode`], so the two agree on every field the
//! report reads and the slow one decides the lines the fast one does not take. One
//! deliberate difference: fields the report does not read are skipped unchecked, so a line
//! whose only fault is there (a malformed `received_at`, say) is kept, where pbjson alone
//! would count it malformed. Must never drop a field the report uses (the tests compare
//! both decoders on the scenario's grades).
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::proto::v1::{GradeOutcome, GradeRecord, HalfSummary, JudgeInfo, PairKind, RequestFeatures, RouteRef, Verdict};

/// Decodes a JSON grade: the fast path, else the full pbjson decoder.
pub fn decode(bytes: &[u8]) -> Result<GradeRecord, String> {
    match serde_json::from_slice::<Grade>(bytes).ok().and_then(Grade::into_record) {
        Some(g) => Ok(g),
        None => serde_json::from_slice::<GradeRecord>(bytes).map_err(|e| describe(&e)),
    }
}

/// What went wrong and where, never the offending text: serde's own message quotes the
/// record's content (an unknown enum value, a string where a number belongs), and record
/// content (prompts, answers, labels) must not reach the report.
fn describe(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable input",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "valid JSON but not a grade record (a field of the wrong type or value)",
        serde_json::error::Category::Eof => "JSON cut short",
    };
    format!("{what} at line {}, column {}", e.line(), e.column())
}

/// A proto enum in JSON: its name or its number.
#[derive(Default)]
struct Enum<'a>(Option<Cow<'a, str>>, i32);

impl<'de: 'a, 'a> Deserialize<'de> for Enum<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Enum<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an enum name or number")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Enum(Some(Cow::Borrowed(v)), 0))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Enum(Some(Cow::Owned(v.to_string())), 0))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                i32::try_from(v).map(|v| Enum(None, v)).map_err(|_| E::custom("enum number out of range"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i32::try_from(v).map(|v| Enum(None, v)).map_err(|_| E::custom("enum number out of range"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Enum<'_> {
    fn value(&self, from_name: impl Fn(&str) -> Option<i32>) -> Option<i32> {
        match &self.0 {
            Some(name) => from_name(name),
            None => Some(self.1),
        }
    }
}

/// `map<string, string>` into a HashMap of owned strings, as the record holds it.
fn labels<'de, D: de::Deserializer<'de>>(d: D) -> Result<HashMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = HashMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = HashMap::with_capacity(m.size_hint().unwrap_or(4));
            while let Some((k, v)) = m.next_entry::<Cow<'de, str>, Cow<'de, str>>()? {
                out.insert(k.into_owned(), v.into_owned());
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(HashMap::new())
        }
    }
    d.deserialize_any(V)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Route<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Features {
    #[serde(alias = "promptTokens")]
    prompt_tokens: u32,
    #[serde(alias = "promptChars")]
    prompt_chars: u32,
    turns: u32,
    messages: u32,
    #[serde(alias = "toolsPresent")]
    tools_present: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Half<'a> {
    present: bool,
    failed: bool,
    #[serde(alias = "statusCode")]
    status_code: u32,
    #[serde(alias = "latencyMs")]
    latency_ms: f64,
    #[serde(alias = "inputTokens")]
    input_tokens: u32,
    #[serde(alias = "outputTokens")]
    output_tokens: u32,
    #[serde(alias = "costUsd")]
    cost_usd: f64,
    #[serde(alias = "answerChars")]
    answer_chars: u32,
    #[serde(borrow)]
    error: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Judge<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow, alias = "promptVersion")]
    prompt_version: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct VerdictLine<'a> {
    #[serde(borrow)]
    order: Cow<'a, str>,
    #[serde(borrow)]
    raw: Cow<'a, str>,
    #[serde(alias = "counterfactualResult")]
    counterfactual_result: i32,
    attempts: u32,
    #[serde(borrow)]
    error: Cow<'a, str>,
    #[serde(alias = "latencyMs")]
    latency_ms: f64,
    #[serde(alias = "costUsd")]
    cost_usd: f64,
}

/// The fields of `GradeRecord`; those the report does not read are skipped unbuilt.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Grade<'a> {
    #[serde(alias = "schemaVersion")]
    schema_version: u32,
    #[serde(borrow, alias = "pairId")]
    pair_id: Cow<'a, str>,
    #[serde(alias = "requestId")]
    request_id: IgnoredAny,
    #[serde(alias = "receivedAt")]
    received_at: IgnoredAny,
    #[serde(alias = "gradedAt")]
    graded_at: IgnoredAny,
    #[serde(borrow)]
    slice: Cow<'a, str>,
    #[serde(deserialize_with = "labels")]
    labels: HashMap<String, String>,
    #[serde(alias = "samplingRate")]
    sampling_rate: f64,
    #[serde(alias = "samplingWeight")]
    sampling_weight: f64,
    #[serde(borrow)]
    kind: Enum<'a>,
    #[serde(borrow, alias = "routeTaken")]
    route_taken: Option<Route<'a>>,
    #[serde(borrow, alias = "routeNotTaken")]
    route_not_taken: Option<Route<'a>>,
    features: Option<Features>,
    #[serde(borrow)]
    primary: Option<Half<'a>>,
    #[serde(borrow)]
    counterfactual: Option<Half<'a>>,
    #[serde(borrow)]
    outcome: Enum<'a>,
    #[serde(borrow)]
    judge: Option<Judge<'a>>,
    #[serde(borrow)]
    verdicts: Vec<VerdictLine<'a>>,
    reference: IgnoredAny,
    score: f64,
    #[serde(alias = "ordersAgree")]
    orders_agree: bool,
    error: IgnoredAny,
    #[serde(alias = "judgeCostUsd")]
    judge_cost_usd: IgnoredAny,
    #[serde(alias = "pairTopic")]
    pair_topic: IgnoredAny,
    #[serde(alias = "pairPartition")]
    pair_partition: IgnoredAny,
    #[serde(alias = "pairOffset")]
    pair_offset: IgnoredAny,
}

fn route(r: Option<Route<'_>>) -> Option<RouteRef> {
    r.map(|r| RouteRef { name: r.name.into_owned(), model: r.model.into_owned() })
}

fn half(h: Option<Half<'_>>) -> Option<HalfSummary> {
    h.map(|h| HalfSummary {
        present: h.present,
        failed: h.failed,
        status_code: h.status_code,
        latency_ms: h.latency_ms,
        input_tokens: h.input_tokens,
        output_tokens: h.output_tokens,
        cost_usd: h.cost_usd,
        answer_chars: h.answer_chars,
        error: h.error.into_owned(),
    })
}

impl Grade<'_> {
    /// The record, with the fields the report does not read left at their defaults.
    /// An enum name the proto does not know makes the line go to the full decoder instead.
    fn into_record(self) -> Option<GradeRecord> {
        Some(GradeRecord {
            schema_version: self.schema_version,
            pair_id: self.pair_id.into_owned(),
            slice: self.slice.into_owned(),
            labels: self.labels,
            sampling_rate: self.sampling_rate,
            sampling_weight: self.sampling_weight,
            kind: self.kind.value(|n| PairKind::from_str_name(n).map(|k| k as i32))?,
            route_taken: route(self.route_taken),
            route_not_taken: route(self.route_not_taken),
            features: self.features.map(|f| RequestFeatures { prompt_tokens: f.prompt_tokens, prompt_chars: f.prompt_chars, turns: f.turns, messages: f.messages, tools_present: f.tools_present }),
            primary: half(self.primary),
            counterfactual: half(self.counterfactual),
            outcome: self.outcome.value(|n| GradeOutcome::from_str_name(n).map(|k| k as i32))?,
            judge: self.judge.map(|j| JudgeInfo { kind: j.kind.into_owned(), model: j.model.into_owned(), prompt_version: j.prompt_version.into_owned() }),
            verdicts: self
                .verdicts
                .into_iter()
                .map(|v| Verdict { order: v.order.into_owned(), raw: v.raw.into_owned(), counterfactual_result: v.counterfactual_result, attempts: v.attempts, error: v.error.into_owned(), latency_ms: v.latency_ms, cost_usd: v.cost_usd })
                .collect(),
            score: self.score,
            orders_agree: self.orders_agree,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::report::scenario::Scenario;

    /// What the report reads of a record: everything but the fields it ignores.
    fn report_view(mut g: GradeRecord) -> GradeRecord {
        g.request_id.clear();
        g.received_at = None;
        g.graded_at = None;
        g.reference = None;
        g.error.clear();
        g.judge_cost_usd = 0.0;
        g.pair_topic.clear();
        g.pair_partition = 0;
        g.pair_offset = 0;
        g
    }

    #[test]
    fn the_fast_decoder_reads_what_the_full_one_reads() {
        let mut scenario = Scenario::essay();
        scenario.human_share = 0.5;
        let mut n = 0;
        scenario.generate(&mut StdRng::seed_from_u64(1), |mut g| {
            // Make every field the report reads non-default somewhere.
            if n % 3 == 0 {
                g.verdicts = vec![
                    Verdict { order: "primary_first".into(), raw: "B".into(), counterfactual_result: 1, attempts: 2, latency_ms: 12.5, cost_usd: 0.001, ..Default::default() },
                    Verdict { order: "counterfactual_first".into(), error: "timeout".into(), ..Default::default() },
                ];
                g.orders_agree = true;
                g.outcome = GradeOutcome::JudgeError as i32;
                g.error = "judge timed out".into();
                g.primary.as_mut().unwrap().failed = true;
                g.primary.as_mut().unwrap().error = "http 500".into();
                g.received_at = Some(pbjson_types::Timestamp { seconds: 1_700_000_000, nanos: 5 });
                g.judge_cost_usd = 0.002;
                g.pair_offset = 41;
            }
            n += 1;
            let line = serde_json::to_vec(&g).unwrap();
            let fast = serde_json::from_slice::<Grade>(&line).expect("the fast path takes the judge's own lines").into_record().unwrap();
            let full = serde_json::from_slice::<GradeRecord>(&line).unwrap();
            assert_eq!(fast, report_view(full));
        });
        assert!(n > 500);
    }

    #[test]
    fn camel_case_numbers_as_strings_and_unknown_values_agree_with_the_full_decoder() {
        let camel = r#"{"pairId":"p1","slice":"a","samplingRate":0.5,"routeTaken":{"name":"fast"},"features":{"promptTokens":300,"toolsPresent":true},"outcome":"GRADE_OUTCOME_GRADED","kind":1,"score":0.5,"ordersAgree":true}"#;
        let as_string = r#"{"pair_id":"p1","slice":"a","score":"0.5","sampling_rate":"0.5","outcome":1}"#;
        for line in [camel, as_string] {
            let full = report_view(serde_json::from_str::<GradeRecord>(line).unwrap());
            assert_eq!(decode(line.as_bytes()).unwrap(), full, "{line}");
        }
        assert_eq!(decode(camel.as_bytes()).unwrap().features.unwrap().prompt_tokens, 300);
        for bad in [r#"{"outcome":"GRADE_OUTCOME_NOPE"}"#, "{", r#"{"score":true}"#] {
            assert!(decode(bad.as_bytes()).is_err(), "{bad}");
        }
        // A field added by a newer judge is ignored (protobuf's rule for unknown fields):
        // the full decoder takes the line the fast one declines, with nothing lost.
        let newer = r#"{"pair_id":"p1","score":0.5,"added_by_a_newer_judge":{"x":[1]}}"#;
        assert!(serde_json::from_slice::<Grade>(newer.as_bytes()).is_err(), "the fast path declines it");
        assert_eq!(decode(newer.as_bytes()).unwrap(), decode(br#"{"pair_id":"p1","score":0.5}"#).unwrap());
        // The deliberate difference: a field the report never reads is not checked.
        let bad_time = r#"{"pair_id":"p","received_at":"yesterday","score":1}"#;
        assert!(serde_json::from_str::<GradeRecord>(bad_time).is_err());
        assert_eq!(decode(bad_time.as_bytes()).unwrap().score, 1.0);
    }

    #[test]
    fn a_malformed_record_is_described_without_its_content() {
        let secret = "the user asked about diabetes";
        for (bad, what) in [
            (format!(r#"{{"schema_version":1,"kind":"{secret}","score":0.5}}"#), "not a grade record"),
            (format!(r#"{{"schema_version":1,"score":"{secret}"}}"#), "not a grade record"),
            (format!(r#"{{"slice":"{secret}" "score":1}}"#), "not valid JSON"),
            (format!(r#"{{"slice":"{secret}""#), "JSON cut short"),
        ] {
            let message = decode(bad.as_bytes()).unwrap_err();
            assert!(message.contains(what) && message.contains("line 1, column"), "{message}");
            assert!(!message.contains("diabetes"), "the message quotes the record: {message}");
        }
    }
}
