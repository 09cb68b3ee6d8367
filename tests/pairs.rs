//! The core loop against real peers: a tonic client calls Mirror/Complete on the
//! running sidecar, fake OpenAI upstreams answer over HTTP, and the pairs are read
//! back from a real Kafka broker.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::app::{chat, metrics, mirror_req, primary_answer, spawn_app};
use common::metrics::metric;
use common::kafka::{consume_async, record_count};
use prost::Message;
use serde_json::Value;
use tonic::Code;
use untaken::config::{Encoding, SamplingConfig, SamplingRule};
use untaken::proto::v1::{CompleteRequest, MirrorRequest, PairRecord};

fn json(c: &common::kafka::Consumed) -> Value {
    serde_json::from_slice(&c.payload).expect("record is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_pair_reaches_kafka_with_both_answers() {
    let mut t = spawn_app("one-phase", |_| {}).await;
    let mut req = tonic::Request::new(mirror_req("req-1", "fast", Some(primary_answer("fast says 41"))));
    req.metadata_mut().insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    let resp = t.client.mirror(req).await.unwrap().into_inner();
    assert!(resp.sampled, "{resp:?}");
    assert_eq!((resp.rate, resp.shadow_route.as_str()), (1.0, "reasoning"));

    let got = consume_async(&t.bootstrap, &t.topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "one pair on the topic");
    let r = json(&got[0]);
    assert_eq!(got[0].key.as_deref(), Some(&b"req-1"[..]));
    assert_eq!(got[0].header("content-type"), Some(&b"application/json"[..]));
    assert_eq!(got[0].header("untaken-slice"), Some(&b"multi_step"[..]));
    assert_eq!(got[0].header("untaken-route-taken"), Some(&b"fast"[..]));
    assert_eq!(got[0].header("untaken-schema-version"), Some(&b"2"[..]));
    assert_eq!(r["pair_id"], resp.pair_id);
    assert_eq!(r["status"], "PAIR_STATUS_COMPLETE");
    assert_eq!(r["primary"]["body"]["choices"][0]["message"]["content"], "fast says 41");
    let shadow = r["counterfactual"]["body"]["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(shadow.starts_with("[reasoning/reasoning-model]"), "{shadow}");
    assert_eq!(r["route_not_taken"]["model"], "reasoning-model");
    assert!(r["counterfactual"]["body"]["usage"]["prompt_tokens"].is_u64(), "bodies verbatim: integers stay integers");
    assert!(r["counterfactual"]["body"]["created"].is_u64());
    assert_eq!(r["request"]["model"], "fast-model", "the record keeps the router's request as sent");
    assert_eq!(r["labels"]["tenant"], "acme");
    assert_eq!(r["sampling_weight"], 1.0);
    assert!(r["counterfactual"]["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(r["counterfactual"]["latency_ms"].as_f64().unwrap() >= 5.0);
    assert_eq!(r["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

    // What the reasoning upstream received: model swapped, streaming off, marked as shadow.
    let seen = t.reasoning.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["model"], "reasoning-model");
    assert_eq!(seen[0].body["stream"], false);
    assert_eq!(seen[0].headers["x-untaken-shadow"], "1");
    assert_eq!(seen[0].headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert!(t.fast.seen().is_empty(), "the route taken is never called by untaken");
    t.app.shutdown();
    t.app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_pair_joins_on_complete() {
    let mut t = spawn_app("two-phase", |_| {}).await;
    let resp = t.client.mirror(mirror_req("req-2", "fast", None)).await.unwrap().into_inner();
    assert!(resp.sampled);
    let done = t
        .client
        .complete(CompleteRequest { request_id: "req-2".into(), primary: Some(primary_answer("late primary")) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.pair_id, resp.pair_id);
    let again = t
        .client
        .complete(CompleteRequest { request_id: "req-2".into(), primary: Some(primary_answer("again")) })
        .await
        .unwrap_err();
    // Either still waiting for the shadow (ALREADY_EXISTS) or already published (NOT_FOUND).
    assert!(matches!(again.code(), Code::AlreadyExists | Code::NotFound), "{again:?}");
    let unknown = t
        .client
        .complete(CompleteRequest { request_id: "never-mirrored".into(), primary: Some(primary_answer("x")) })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let got = consume_async(&t.bootstrap, &t.topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let r = json(&got[0]);
    assert_eq!(r["status"], "PAIR_STATUS_COMPLETE");
    assert_eq!(r["primary"]["body"]["choices"][0]["message"]["content"], "late primary");
    assert_eq!(r["primary"]["source"], "router");
    assert_eq!(r["counterfactual"]["source"], "untaken");
    t.app.shutdown();
    t.app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_half_is_published_when_the_pairing_timeout_expires() {
    let mut t = spawn_app("timeout", |c| c.pairing.timeout = Duration::from_secs(1)).await;
    let resp = t.client.mirror(mirror_req("req-3", "fast", None)).await.unwrap().into_inner();
    assert!(resp.sampled);
    let got = consume_async(&t.bootstrap, &t.topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let r = json(&got[0]);
    assert_eq!(r["status"], "PAIR_STATUS_PRIMARY_MISSING");
    assert!(r["status_reason"].as_str().unwrap().contains("primary not reported within 1s"), "{r}");
    assert!(r["primary"].get("present").is_none(), "present=false is omitted in proto3 JSON");
    assert_eq!(r["counterfactual"]["present"], true);
    let late = t
        .client
        .complete(CompleteRequest { request_id: "req-3".into(), primary: Some(primary_answer("too late")) })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::NotFound, "expired pairs are not found");
    t.app.shutdown();
    t.app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_fraction_matches_the_documented_hash_and_every_sample_is_published() {
    let sampling = SamplingConfig {
        salt: "fraction-test".into(),
        default_rate: 0.2,
        rules: vec![SamplingRule { slice: Some("ood".into()), route_taken: None, rate: 1.0 }],
        ..Default::default()
    };
    let sampler = untaken::sampling::Sampler::new(&sampling);
    let mut t = spawn_app("fraction", |c| c.sampling = sampling).await;
    let n = 400;
    let mut expected = 0;
    for i in 0..n {
        let slice = if i % 10 == 0 { "ood" } else { "chat" };
        let mut req = mirror_req(&format!("frac-{i}"), "fast", Some(primary_answer("p")));
        req.slice = slice.into();
        let resp = t.client.mirror(req).await.unwrap().into_inner();
        let predicted = sampler.decide(&format!("frac-{i}"), slice, "fast");
        assert_eq!(resp.sampled, predicted.sampled, "request {i}: replicas must agree with the documented hash");
        assert_eq!(resp.rate, predicted.rate);
        if slice == "ood" {
            assert!(resp.sampled, "a rate-1.0 rule samples everything");
        } else if !resp.sampled {
            assert_eq!(resp.reason, "not_sampled");
        }
        expected += usize::from(resp.sampled);
    }
    // 40 ood always + ~20% of 360: binomial bounds, 5 sd.
    let others = (expected - 40) as f64;
    assert!((others - 72.0).abs() < 5.0 * (360.0f64 * 0.2 * 0.8).sqrt(), "{others} of 360 sampled at 0.2");
    let got = consume_async(&t.bootstrap, &t.topic, expected, Duration::from_secs(60)).await;
    assert_eq!(got.len(), expected);
    let weights: Vec<f64> = got.iter().map(|c| json(c)["sampling_weight"].as_f64().unwrap()).collect();
    assert!(weights.iter().all(|w| *w == 1.0 || *w == 5.0), "weights are 1/rate");
    t.app.shutdown();
    t.app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counterfactual_follows_the_catalog_and_the_override() {
    let mut t = spawn_app("routes", |_| {}).await;
    let a = t.client.mirror(mirror_req("r-reasoning", "reasoning", Some(primary_answer("slow")))).await.unwrap().into_inner();
    assert_eq!(a.shadow_route, "fast");
    let mut req = mirror_req("r-override", "fast", Some(primary_answer("fast")));
    req.shadow_route = "cheap".into();
    let b = t.client.mirror(req).await.unwrap().into_inner();
    assert_eq!(b.shadow_route, "cheap");
    let c = t.client.mirror(mirror_req("r-cheap", "cheap", Some(primary_answer("cheap")))).await.unwrap().into_inner();
    assert!(!c.sampled);
    assert_eq!(c.reason, "no_counterfactual");

    let got = consume_async(&t.bootstrap, &t.topic, 2, Duration::from_secs(30)).await;
    let by_id: HashMap<String, Value> = got.iter().map(|c| (json(c)["request_id"].as_str().unwrap().to_string(), json(c))).collect();
    assert_eq!(by_id["r-reasoning"]["route_not_taken"]["name"], "fast");
    assert_eq!(by_id["r-override"]["route_not_taken"]["name"], "cheap");
    assert_eq!(t.fast.seen()[0].body["model"], "fast-model");
    assert_eq!(t.cheap.seen()[0].body["model"], "cheap-model");
    assert!(t.reasoning.seen().is_empty());
    t.app.shutdown();
    t.app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_records_decode_with_the_published_schema() {
    let mut t = spawn_app("protobuf", |c| c.sink.encoding = Encoding::Protobuf).await;
    t.client.mirror(mirror_req("pb-1", "fast", Some(primary_answer("p")))).await.unwrap();
    let got = consume_async(&t.bootstrap, &t.topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("content-type"), Some(&b"application/x-protobuf"[..]));
    let rec = PairRecord::decode(got[0].payload.as_slice()).expect("valid protobuf PairRecord");
    assert_eq!(rec.request_id, "pb-1");
    assert_eq!(rec.route_not_taken.unwrap().model, "reasoning-model");
    // Schema version 2: JSON bodies travel as their original text.
    assert_eq!(got[0].header("untaken-schema-version"), Some(&b"2"[..]));
    let request: Value = serde_json::from_str(&rec.request_json).expect("request_json is the request's JSON");
    assert_eq!(request["model"], "fast-model");
    let body: Value = serde_json::from_str(&rec.counterfactual.unwrap().body_json).expect("body_json is the answer's JSON");
    assert!(body["choices"][0]["message"]["content"].as_str().unwrap().contains("reasoning-model"));
    assert!(body["usage"]["prompt_tokens"].is_u64(), "integers stay integers: {body}");
    t.app.shutdown();
    t.app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field_and_nothing_is_published() {
    let mut t = spawn_app("bad-input", |c| {
        c.server.max_body_bytes = 4096;
        c.server.max_labels = 4;
    }).await;
    let ok = || mirror_req("bad", "fast", Some(primary_answer("p")));
    let cases: Vec<(MirrorRequest, &str)> = vec![
        (MirrorRequest { request_id: String::new(), ..ok() }, "request_id"),
        (MirrorRequest { route_taken: "turbo".into(), ..ok() }, "route_taken"),
        (MirrorRequest { shadow_route: "turbo".into(), ..ok() }, "shadow_route"),
        (MirrorRequest { request_body: b"definitely not json".to_vec(), ..ok() }, "request_body"),
        (MirrorRequest { request_body: [chat(1), vec![b' '; 4096]].concat(), ..ok() }, "request_body"),
        (MirrorRequest { labels: (0..5).map(|i| (format!("k{i}"), "v".into())).collect(), ..ok() }, "labels"),
    ];
    for (req, field) in cases {
        let err = t.client.mirror(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(field), "message names {field}: {}", err.message());
    }
    // The sidecar is still healthy: a good request goes through, and it is the only record.
    t.client.mirror(mirror_req("good", "fast", Some(primary_answer("p")))).await.unwrap();
    let got = consume_async(&t.bootstrap, &t.topic, 2, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 1, "bad requests publish nothing");
    assert_eq!(json(&got[0])["request_id"], "good");
    assert_eq!(record_count(&t.bootstrap, &t.topic), 1);
    let m = metrics(&t.app).await;
    assert_eq!(metric(&m, r#"untaken_mirror_requests_total{decision="rejected",reason="request_body",slice=""}"#), 2.0, "{m}");
    assert_eq!(metric(&m, r#"untaken_mirror_requests_total{decision="rejected",reason="labels",slice=""}"#), 1.0);
    t.app.shutdown();
    t.app.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_pairs_ask_the_route_taken_again() {
    let mut t = spawn_app("control", |c| c.sampling.control_rate = 0.5).await;
    let n = 60;
    let mut control_ids = Vec::new();
    for i in 0..n {
        let id = format!("ctl-{i}");
        let resp = t.client.mirror(mirror_req(&id, "fast", Some(primary_answer("fast says 41")))).await.unwrap().into_inner();
        assert!(resp.sampled, "{resp:?}");
        // The documented rule, recomputed here: an independent draw on the request id.
        let expected = (untaken::sampling::hash(b"untaken/control", &id) as u128) < untaken::sampling::threshold(0.5);
        assert_eq!(resp.control, expected, "{id}");
        assert_eq!(resp.shadow_route, if expected { "fast" } else { "reasoning" });
        if expected {
            control_ids.push(id);
        }
    }
    assert!(!control_ids.is_empty() && control_ids.len() < n, "some but not all are controls: {}", control_ids.len());
    let got = consume_async(&t.bootstrap, &t.topic, n, Duration::from_secs(30)).await;
    assert_eq!(got.len(), n);
    for c in &got {
        let r = json(c);
        let id = r["request_id"].as_str().unwrap();
        let is_control = control_ids.iter().any(|c| c == id);
        if is_control {
            assert_eq!(r["kind"], "PAIR_KIND_CONTROL", "{r}");
            assert_eq!(r["route_not_taken"]["name"], "fast");
            let shadow = r["counterfactual"]["body"]["choices"][0]["message"]["content"].as_str().unwrap();
            assert!(shadow.starts_with("[fast/fast-model]"), "{shadow}");
        } else {
            assert!(r.get("kind").is_none(), "PAIR is the default and omitted: {r}");
            assert_eq!(r["route_not_taken"]["name"], "reasoning");
        }
    }
    assert_eq!(t.fast.seen().len(), control_ids.len(), "the route taken is called once per control pair, and only then");
    assert_eq!(metric(&metrics(&t.app).await, "untaken_mirror_requests_total{decision=\"sampled\",reason=\"control\",slice=\"multi_step\"}"), control_ids.len() as f64);
    t.app.shutdown();
    t.app.wait().await;
}
