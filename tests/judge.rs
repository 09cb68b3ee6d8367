//! `untaken judge` against a real Kafka broker and a fake judge endpoint on loopback:
//! every pair graded (once in the normal case, at least once across a SIGKILL),
//! position bias cancelled, judge faults retried within bounds then recorded, the
//! budget pausing consumption, two workers sharing a group, file mode, check-config,
//! the judge key and the Kafka secret files rotated under a running worker.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use untaken::config::{Encoding, KafkaConfig};
use untaken::judge::fake::{FakeJudge, Mode, Preference};
use untaken::judge::config::{JudgeConfig, JudgeKind, JudgeSection, MatchMethod, PairwiseConfig, ReferenceConfig};
use untaken::judge::{JudgeError, WorkerSummary};
use untaken::proto::v1::{GradeOutcome, GradeRecord, PairKind, PairRecord};
use untaken::record::{self, Encoded, Half, PairMeta, RouteInfo, Source};
use untaken::simulate::SecretVolume;
use untaken::sink::kafka::KafkaSink;

use common::app::topic;
use common::metrics::metric;
use common::kafka::{consume_async, create_topic_async, shared_bootstrap_async};
use common::proc::{free_port, Sidecar};

const BIN: &str = env!("CARGO_BIN_EXE_untaken");

fn route(name: &str, model: &str) -> RouteInfo {
    RouteInfo { name: name.into(), model: model.into(), input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0 }
}

fn half(text: &str, status: u32) -> Half {
    let body = serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5}
    });
    Half {
        body: Bytes::from(body.to_string()),
        status_code: status,
        latency_ms: 30.0,
        error: if status == 200 { String::new() } else { format!("http status {status}") },
        source: Source::Untaken,
    }
}

/// A complete pair for request `i`: the answers' texts, the known answer label, the
/// counterfactual's HTTP status.
fn pair(i: usize, primary: &str, counterfactual: &str, expected: Option<&str>, cf_status: u32) -> PairRecord {
    let mut labels = HashMap::from([("tenant".to_string(), "acme".to_string())]);
    if let Some(e) = expected {
        labels.insert("expected_answer".into(), e.into());
    }
    let meta = PairMeta {
        pair_id: format!("pair-{i:05}"),
        request_id: format!("req-{i:05}"),
        sampling_key: format!("req-{i:05}"),
        received_at: SystemTime::now(),
        slice: if i % 2 == 0 { "even".into() } else { "odd".into() },
        labels,
        rate: 0.5,
        route_taken: route("fast", "small"),
        route_not_taken: route("reasoning", "big"),
        request_body: Bytes::from(format!(
            r#"{{"model":"small","messages":[{{"role":"user","content":"question {i}"}}],"tools":[{{"type":"function"}}]}}"#
        )),
        traceparent: String::new(),
        kind: PairKind::Pair,
    };
    record::build(&meta, Some(&half(primary, 200)), Some(&half(counterfactual, cf_status)), "", SystemTime::now())
}

async fn produce(bootstrap: &str, topic: &str, records: Vec<Encoded>) {
    let cfg = KafkaConfig { brokers: bootstrap.into(), topic: topic.into(), ..Default::default() };
    let sink = KafkaSink::new(&cfg, Arc::new(untaken::metrics::Metrics::new())).unwrap();
    let sink = &sink;
    let failures: Vec<_> = futures::stream::iter(records)
        .map(|r| async move { sink.send(&r).await.err() })
        .buffer_unordered(256)
        .filter_map(|e| async move { e })
        .collect()
        .await;
    assert!(failures.is_empty(), "producing pairs failed: {failures:?}");
}

fn encoded(pairs: &[PairRecord], encoding: Encoding) -> Vec<Encoded> {
    pairs.iter().map(|p| record::encode(p.clone(), encoding)).collect()
}

fn garbage(i: usize) -> Encoded {
    Encoded {
        pair_id: format!("garbage-{i}"),
        key: format!("garbage-{i}"),
        headers: vec![("content-type", "application/json".into())],
        payload: b"{\"pair_id\": 42, not json".to_vec(),
        slice: String::new(),
    }
}

/// The reference judge: the label `expected_answer`, compared normalised.
fn reference() -> JudgeSection {
    let reference = ReferenceConfig { label: Some("expected_answer".into()), pointer: None, method: MatchMethod::Normalized, tolerance: 1e-6 };
    JudgeSection { kind: JudgeKind::Reference, pairwise: None, reference: Some(reference) }
}

/// A judge worker config reading `pairs` in `group`, writing `grades` (see
/// [`common::config::judge`]).
fn judge_config(bootstrap: &str, pairs: &str, grades: &str, group: &str, judge: JudgeSection) -> JudgeConfig {
    common::config::judge(judge, bootstrap, pairs, grades, group)
}

/// The pairwise judge's settings in `config`.
fn pairwise_of(config: &mut JudgeConfig) -> &mut PairwiseConfig {
    config.judge.pairwise.as_mut().expect("a pairwise judge")
}

/// `config` with the secret files polled every 100 ms.
fn polling_secrets(mut config: JudgeConfig) -> JudgeConfig {
    config.server.secret_poll_interval = Duration::from_millis(100);
    config
}

/// The worker in-process.
struct Worker {
    stop: CancellationToken,
    handle: JoinHandle<Result<WorkerSummary, JudgeError>>,
    admin: SocketAddr,
}

impl Worker {
    async fn start(config: JudgeConfig) -> Worker {
        let w = Worker::spawn(config);
        w.wait_ready().await;
        w
    }

    /// The worker in-process, its admin port on a listener bound to 127.0.0.1:0
    /// (`server.admin_listen` is not used), without waiting for it to be ready.
    fn spawn(config: JudgeConfig) -> Worker {
        let cfg = common::config::validated_judge(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let admin = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move { untaken::judge::run_kafka_on(&cfg, listener, s).await });
        Worker { stop, handle, admin }
    }

    /// `/ready`'s status and body; `None` while the admin port does not answer.
    async fn ready(&self) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://{}/ready", self.admin)).await.ok()?;
        Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
    }

    async fn wait_ready(&self) {
        common::metrics::wait_ready_status(self.admin, 200, Duration::from_secs(30)).await;
    }

    async fn metrics(&self) -> String {
        common::metrics::scrape(self.admin).await
    }

    async fn stop(self) -> WorkerSummary {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle).await.expect("worker stops within 30 s").unwrap().unwrap()
    }
}


fn published(metrics: &str) -> f64 {
    ["graded", "primary_failed", "counterfactual_failed", "both_failed", "incomplete", "judge_error", "no_reference"]
        .iter()
        .map(|o| metric(metrics, &format!("untaken_judge_grades_published_total{{outcome=\"{o}\"}}")))
        .sum()
}

/// Every grade in `topic`, read until `expected` arrived or `timeout` passed.
async fn grades(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<GradeRecord> {
    consume_async(bootstrap, topic, expected, timeout)
        .await
        .into_iter()
        .map(|m| {
            assert_eq!(m.header("untaken-schema"), Some(&b"untaken.v1.GradeRecord"[..]));
            let g: GradeRecord = serde_json::from_slice(&m.payload).expect("grade is GradeRecord JSON");
            assert_eq!(m.key.as_deref(), Some(g.request_id.as_bytes()), "key is the request id");
            assert_eq!(m.header("untaken-pair-id"), Some(g.pair_id.as_bytes()));
            g
        })
        .collect()
}

/// Waits until `n` distinct pairs are graded; returns every grade (duplicates too).
async fn all_graded(bootstrap: &str, topic: &str, n: usize, timeout: Duration) -> Vec<GradeRecord> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = grades(bootstrap, topic, usize::MAX, Duration::from_secs(3)).await;
        let distinct: HashSet<_> = got.iter().map(|g| g.pair_id.clone()).collect();
        if distinct.len() >= n || Instant::now() >= deadline {
            assert_eq!(distinct.len(), n, "distinct pairs graded within {timeout:?}");
            return got;
        }
    }
}

fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements().iter().map(|e| e.offset().to_raw().unwrap_or(0).max(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_judge_grades_a_thousand_pairs_once_and_skips_undecodable_records() {
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic, group) = (topic("j-pairs"), topic("j-grades"), topic("j-group"));
    create_topic_async(&bootstrap, &pairs_topic, 3).await;
    create_topic_async(&bootstrap, &grades_topic, 3).await;
    // Counterfactual right and primary wrong on multiples of 3, both right otherwise;
    // every 50th counterfactual failed (HTTP 500), every 97th pair has no known answer.
    let pairs: Vec<PairRecord> = (0..1000)
        .map(|i| {
            let primary = if i % 3 == 0 { "Lyon." } else { "The Paris" };
            let expected = if i % 97 == 0 { None } else { Some("paris") };
            pair(i, primary, "Paris!", expected, if i % 50 == 0 { 500 } else { 200 })
        })
        .collect();
    // Half JSON, half protobuf (told apart by the content-type header), and garbage.
    let (json, proto) = pairs.split_at(500);
    let mut records = encoded(json, Encoding::Json);
    records.extend(encoded(proto, Encoding::Protobuf));
    records.extend((0..5).map(garbage));
    produce(&bootstrap, &pairs_topic, records).await;

    let worker = Worker::start(judge_config(&bootstrap, &pairs_topic, &grades_topic, &group, reference())).await;
    let got = grades(&bootstrap, &grades_topic, 1000, Duration::from_secs(90)).await;
    assert_eq!(got.len(), 1000, "1,000 pairs in, 1,000 grades out");
    let extra = grades(&bootstrap, &grades_topic, 1001, Duration::from_secs(3)).await;
    assert_eq!(extra.len(), 1000, "no pair graded twice");
    let by_id: HashMap<_, _> = got.iter().map(|g| (g.pair_id.clone(), g)).collect();
    assert_eq!(by_id.len(), 1000);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..1000 {
        let g = by_id[&format!("pair-{i:05}")];
        let want = if i % 50 == 0 {
            GradeOutcome::CounterfactualFailed
        } else if i % 97 == 0 {
            GradeOutcome::NoReference
        } else {
            GradeOutcome::Graded
        };
        assert_eq!(g.outcome(), want, "pair {i}");
        *outcomes.entry(g.outcome().as_str_name()).or_default() += 1;
        if want == GradeOutcome::Graded {
            let r = g.reference.as_ref().unwrap();
            assert_eq!((r.primary_correct, r.counterfactual_correct), (i % 3 != 0, true), "pair {i}");
            assert_eq!(g.score, if i % 3 == 0 { 1.0 } else { 0.0 });
        }
        // What a report needs, without the pair.
        assert_eq!(g.request_id, format!("req-{i:05}"));
        assert_eq!(g.sampling_weight, 2.0);
        assert_eq!(g.labels["tenant"], "acme");
        assert_eq!(g.route_not_taken.as_ref().unwrap().model, "big");
        let f = g.features.as_ref().unwrap();
        assert!(f.tools_present && f.turns == 1 && f.prompt_tokens == 12);
        let cf = g.counterfactual.as_ref().unwrap();
        assert_eq!((cf.answer_chars, cf.output_tokens, cf.failed), (6, 5, i % 50 == 0));
        assert_eq!(g.judge.as_ref().unwrap().kind, "reference");
        assert_eq!(g.pair_topic, pairs_topic);
    }
    eprintln!("outcomes: {outcomes:?}");

    // Undecodable records are counted and skipped, and their offsets committed too.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut m = worker.metrics().await;
    while (metric(&m, "untaken_judge_pairs_consumed_total") < 1005.0 || published(&m) < 1000.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = worker.metrics().await;
    }
    assert_eq!(metric(&m, "untaken_judge_pairs_consumed_total"), 1005.0, "{m}");
    assert_eq!(metric(&m, "untaken_judge_pairs_undecodable_total"), 5.0);
    assert_eq!(published(&m), 1000.0);
    assert_eq!(metric(&m, r#"untaken_judge_grades_published_total{outcome="counterfactual_failed"}"#), 20.0);
    assert!(m.contains("untaken_judge_consumer_lag"), "{m}");
    assert!(metric(&m, "untaken_judge_grade_delivery_seconds_count") >= 1000.0, "{m}");
    let summary = worker.stop().await;
    assert_eq!(summary.pairs_read, 1005);
    let (b, g, t) = (bootstrap.clone(), group.clone(), pairs_topic.clone());
    let committed = tokio::task::spawn_blocking(move || committed(&b, &g, &t, 3)).await.unwrap();
    assert_eq!(committed, 1005, "every offset, the undecodable ones included, is committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_grades_every_pair_at_least_once() {
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic, group) = (topic("k-pairs"), topic("k-grades"), topic("k-group"));
    create_topic_async(&bootstrap, &pairs_topic, 3).await;
    create_topic_async(&bootstrap, &grades_topic, 3).await;
    let judge = FakeJudge::start(Preference::Longer, Duration::from_millis(20), false).await.unwrap();
    let pairs: Vec<_> = (0..1000).map(|i| pair(i, "short", "a longer answer", None, 200)).collect();
    produce(&bootstrap, &pairs_topic, encoded(&pairs, Encoding::Json)).await;

    let window = 64;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("judge.toml");
    // The binary, killed and restarted, must come back on the same admin port.
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &group, common::config::pairwise(&judge.url()));
    cfg.server.admin_listen = admin.to_string();
    cfg.limits.max_concurrency = 32;
    cfg.kafka.in_flight = window;
    // The killed worker stays in the group until its session times out; only then
    // does the restarted one get partitions (and become ready): keep that short.
    cfg.kafka.librdkafka = serde_json::from_value(serde_json::json!({"session.timeout.ms": "6000"})).unwrap();
    common::config::write_judge(&cfg, &config);
    let log = dir.path().join("judge.log");
    let mut first = Sidecar::spawn_judge(&config, admin, &log);
    first.wait_ready(Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = published(&first.metrics().await);
        if done >= 200.0 {
            assert!(done < 1000.0, "the kill must come mid-stream (graded {done} already)");
            break;
        }
        assert!(Instant::now() < deadline, "no progress before the kill:\n{}", first.log_tail(40));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.sigkill();

    let mut second = Sidecar::spawn_judge(&config, admin, &log);
    second.wait_ready(Duration::from_secs(30)).await;
    let got = all_graded(&bootstrap, &grades_topic, 1000, Duration::from_secs(120)).await;
    let duplicates = got.len() - 1000;
    eprintln!("after a SIGKILL mid-stream: {} grades for 1000 pairs, {duplicates} duplicates (window {window})", got.len());
    assert!(duplicates <= window, "{duplicates} duplicates exceed the in-flight window {window}");
    assert!(got.iter().all(|g| g.outcome() == GradeOutcome::Graded && g.score == 1.0), "every grade is complete");
    second.sigterm();
    let status = second.wait_exit(Duration::from_secs(30)).await.expect("exits on SIGTERM");
    assert!(status.success(), "exit 0 after SIGTERM: {status}\n{}", second.log_tail(20));
    let log_text = second.log_text();
    assert!(!log_text.contains("a longer answer") && !log_text.contains("question 1"), "no answer or prompt text in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_bias_cancels_out_and_a_length_preference_shows_in_the_grades() {
    let bootstrap = shared_bootstrap_async().await;
    let pairs_topic = topic("pos-pairs");
    create_topic_async(&bootstrap, &pairs_topic, 2).await;
    // The counterfactual is the longer answer on even pairs, the shorter on odd ones.
    let pairs: Vec<_> = (0..40)
        .map(|i| if i % 2 == 0 { pair(i, "brief", "much more elaborate", None, 200) } else { pair(i, "much more elaborate", "brief", None, 200) })
        .collect();
    produce(&bootstrap, &pairs_topic, encoded(&pairs, Encoding::Protobuf)).await;
    let always_a = FakeJudge::start(Preference::AlwaysA, Duration::from_millis(5), false).await.unwrap();
    let longer = FakeJudge::start(Preference::Longer, Duration::from_millis(5), true).await.unwrap();
    let mut results = Vec::new();
    for (name, judge, structured) in [("a", &always_a, false), ("long", &longer, true)] {
        let grades_topic = topic(&format!("pos-grades-{name}"));
        create_topic_async(&bootstrap, &grades_topic, 1).await;
        let mut cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &topic("pos-group"), common::config::pairwise(&judge.url()));
        let pw = pairwise_of(&mut cfg);
        (pw.input_usd_per_mtok, pw.output_usd_per_mtok, pw.structured_output) = (2.0, 8.0, structured);
        cfg.kafka.encoding = Encoding::Json;
        let worker = Worker::start(cfg).await;
        let got = grades(&bootstrap, &grades_topic, 40, Duration::from_secs(60)).await;
        assert_eq!(got.len(), 40);
        let m = worker.metrics().await;
        assert_eq!(metric(&m, r#"untaken_judge_calls_total{outcome="ok"}"#), 80.0, "two judge calls a pair:\n{m}");
        // 1000 prompt tokens at $2/M + 100 completion tokens at $8/M, 80 calls.
        assert!((metric(&m, "untaken_judge_spend_usd_total") - 80.0 * 0.0028).abs() < 1e-9, "{m}");
        worker.stop().await;
        results.push(got);
    }
    for g in &results[0] {
        assert_eq!(g.outcome(), GradeOutcome::Graded);
        assert_eq!(g.score, 0.0, "an always-A judge says nothing about the arms");
        assert!(!g.orders_agree);
        let raws: Vec<_> = g.verdicts.iter().map(|v| (v.order.as_str(), v.raw.as_str())).collect();
        assert_eq!(raws, [("primary_first", "A"), ("counterfactual_first", "A")]);
        assert!((g.judge_cost_usd - 0.0056).abs() < 1e-12);
        let j = g.judge.as_ref().unwrap();
        assert_eq!((j.kind.as_str(), j.model.as_str(), j.prompt_version.len()), ("pairwise", "judge-model", 16));
    }
    for g in &results[1] {
        let i: usize = g.pair_id.trim_start_matches("pair-").parse().unwrap();
        assert_eq!(g.score, if i % 2 == 0 { 1.0 } else { -1.0 }, "pair {i}: the longer answer wins in both orders");
        assert!(g.orders_agree);
    }
    assert_ne!(results[0][0].judge.as_ref().unwrap().prompt_version, results[1][0].judge.as_ref().unwrap().prompt_version, "marker and structured prompts are different versions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_faults_are_retried_within_bounds_then_recorded_never_guessed() {
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic) = (topic("f-pairs"), topic("f-grades"));
    create_topic_async(&bootstrap, &pairs_topic, 1).await;
    create_topic_async(&bootstrap, &grades_topic, 1).await;
    let judge = FakeJudge::start(Preference::Longer, Duration::ZERO, false).await.unwrap();
    let mut cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &topic("f-group"), common::config::pairwise(&judge.url()));
    let pw = pairwise_of(&mut cfg);
    (pw.max_attempts, pw.max_retries, pw.timeout) = (2, 1, Duration::from_millis(300));
    let worker = Worker::start(cfg).await;
    let mut n = 0;
    // One pair at a time, under a given judge behaviour; returns its grade.
    let mut grade_one = |p: PairRecord| {
        n += 1;
        let (bootstrap, pairs_topic, grades_topic, expect) = (bootstrap.clone(), pairs_topic.clone(), grades_topic.clone(), n);
        async move {
            produce(&bootstrap, &pairs_topic, encoded(&[p], Encoding::Json)).await;
            let got = grades(&bootstrap, &grades_topic, expect, Duration::from_secs(30)).await;
            assert_eq!(got.len(), expect);
            got.last().unwrap().clone()
        }
    };
    let attempts = |g: &GradeRecord| g.verdicts.iter().map(|v| v.attempts).sum::<u32>();

    judge.script(&[Mode::Malformed]);
    let g = grade_one(pair(0, "x", "longer", None, 200)).await;
    assert_eq!((g.outcome(), g.score, attempts(&g)), (GradeOutcome::Graded, 1.0, 3), "a malformed verdict is asked again");

    judge.set_steady(Mode::Malformed);
    let g = grade_one(pair(1, "x", "longer", None, 200)).await;
    assert_eq!((g.outcome(), g.score, attempts(&g)), (GradeOutcome::JudgeError, 0.0, 4));
    assert!(g.error.contains("malformed verdict after 2 attempts: no verdict marker"), "{}", g.error);
    assert!(g.verdicts.iter().all(|v| v.raw.is_empty()), "never guessed");

    judge.set_steady(Mode::Verdict);
    judge.script(&[Mode::TooMany, Mode::ServerError]);
    let g = grade_one(pair(2, "x", "longer", None, 200)).await;
    assert_eq!((g.outcome(), attempts(&g)), (GradeOutcome::Graded, 4), "429 and 500 are retried");

    // Faults of this pair's calls only (the endpoint answers the circuit's probe):
    // retried within bounds, then a judge error. An endpoint that fails everything is
    // an outage instead (see judge_outage_pauses_...).
    judge.script(&[Mode::ServerError; 4]);
    let g = grade_one(pair(3, "x", "longer", None, 200)).await;
    assert_eq!((g.outcome(), attempts(&g)), (GradeOutcome::JudgeError, 4));
    assert!(g.error.contains("judge answered http 500 (after 1 retries)"), "{}", g.error);

    judge.script(&[Mode::Hang; 4]);
    let g = grade_one(pair(4, "x", "longer", None, 200)).await;
    assert_eq!(g.outcome(), GradeOutcome::JudgeError);
    assert!(g.error.contains("timed out"), "{}", g.error);

    // Not sent to the judge: a failed half, or a pair the judge model is an arm of.
    judge.set_steady(Mode::Verdict);
    let calls = judge.calls();
    let g = grade_one(pair(5, "x", "longer", None, 503)).await;
    assert_eq!((g.outcome(), g.error.as_str()), (GradeOutcome::CounterfactualFailed, "http status 503"));
    let mut own = pair(6, "x", "longer", None, 200);
    own.route_not_taken.as_mut().unwrap().model = "judge-model".into();
    let g = grade_one(own).await;
    assert_eq!(g.outcome(), GradeOutcome::JudgeError);
    assert!(g.error.contains("allow_self_judging"), "{}", g.error);
    assert_eq!(judge.calls(), calls, "neither pair reached the judge");

    let m = worker.metrics().await;
    for outcome in ["ok", "malformed", "rate_limited", "server_error", "timeout", "probe_answered"] {
        assert!(metric(&m, &format!("untaken_judge_calls_total{{outcome=\"{outcome}\"}}")) > 0.0, "{outcome}:\n{m}");
    }
    assert_eq!(metric(&m, r#"untaken_judge_grades_published_total{outcome="judge_error"}"#), 4.0, "{m}");
    assert_eq!(metric(&m, "untaken_judge_circuit_opened_total"), 0.0, "isolated faults never open the circuit");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_pauses_consumption_until_the_window_allows_and_skips_nothing() {
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic) = (topic("b-pairs"), topic("b-grades"));
    create_topic_async(&bootstrap, &pairs_topic, 1).await;
    create_topic_async(&bootstrap, &grades_topic, 1).await;
    let judge = FakeJudge::start(Preference::Longer, Duration::from_millis(20), false).await.unwrap();
    // 100 completion tokens at $10,000/M: $1 a call, $2 a pair; $3 per 6 s window.
    // max_tokens = 100 at the same price: each call is estimated at $1 up front.
    let mut cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &topic("b-group"), common::config::pairwise(&judge.url()));
    let pw = pairwise_of(&mut cfg);
    (pw.output_usd_per_mtok, pw.max_tokens) = (10000.0, 100);
    cfg.limits.max_concurrency = 2;
    cfg.limits.budget_usd_per_hour = Some(3.0);
    cfg.limits.budget_window = Duration::from_secs(6);
    let worker = Worker::start(cfg).await;
    let start = Instant::now();
    let pairs: Vec<_> = (0..6).map(|i| pair(i, "x", "longer", None, 200)).collect();
    produce(&bootstrap, &pairs_topic, encoded(&pairs, Encoding::Json)).await;

    // Three calls fit the budget: calls in flight reserve their estimate, so a fourth
    // never starts inside the window and the spend never passes the budget.
    let got = grades(&bootstrap, &grades_topic, 1, Duration::from_secs(20)).await;
    assert!(!got.is_empty());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m = worker.metrics().await;
    assert_eq!(metric(&m, "untaken_judge_paused"), 1.0, "paused while the budget is spent:\n{m}");
    assert_eq!(metric(&m, "untaken_judge_spend_usd_total"), 3.0, "exactly the budget, no overshoot:\n{m}");
    assert_eq!(metric(&m, r#"untaken_judge_calls_total{outcome="ok"}"#), 3.0, "{m}");
    let at_pause = published(&m);
    assert!(at_pause <= 1.0, "three calls grade one pair at most: {at_pause}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(published(&worker.metrics().await), at_pause, "nothing graded while paused");
    assert!(start.elapsed() < Duration::from_secs(6), "checked inside the first window");

    // The window moves on: everything is graded in the end, nothing skipped.
    let got = grades(&bootstrap, &grades_topic, 6, Duration::from_secs(40)).await;
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|g| g.outcome() == GradeOutcome::Graded));
    assert!(start.elapsed() >= Duration::from_secs(6), "the last pairs waited for the window");
    let m = worker.metrics().await;
    assert_eq!(metric(&m, "untaken_judge_spend_usd_total"), 12.0, "{m}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_one_group_split_the_partitions_and_grade_everything_once() {
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic, group) = (topic("g-pairs"), topic("g-grades"), topic("g-group"));
    create_topic_async(&bootstrap, &pairs_topic, 4).await;
    create_topic_async(&bootstrap, &grades_topic, 4).await;
    let cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &group, reference());
    let a = Worker::start(cfg.clone()).await;
    let b = Worker::start(cfg).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ma, mb) = (a.metrics().await, b.metrics().await);
        let (pa, pb) = (metric(&ma, "untaken_judge_assigned_partitions"), metric(&mb, "untaken_judge_assigned_partitions"));
        if pa > 0.0 && pb > 0.0 && pa + pb == 4.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the group did not split the partitions: {pa} + {pb}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pairs: Vec<_> = (0..400).map(|i| pair(i, "Paris", "Lyon", Some("Paris"), 200)).collect();
    produce(&bootstrap, &pairs_topic, encoded(&pairs, Encoding::Json)).await;
    let got = grades(&bootstrap, &grades_topic, 401, Duration::from_secs(30)).await;
    let distinct: HashSet<_> = got.iter().map(|g| g.pair_id.as_str()).collect();
    assert_eq!((got.len(), distinct.len()), (400, 400), "everything graded exactly once");
    assert!(got.iter().all(|g| g.score == -1.0));
    let (ga, gb) = (published(&a.metrics().await), published(&b.metrics().await));
    assert!(ga > 0.0 && gb > 0.0 && ga + gb == 400.0, "both workers graded: {ga} + {gb}");
    a.stop().await;
    b.stop().await;
}

#[test]
fn check_config_accepts_the_example_and_names_a_bad_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/judge.toml");
    let out = Command::new(BIN).args(["check-config", example]).env("JUDGE_API_KEY", "sk-test").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (judge pairwise"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("judge.toml");
    std::fs::write(&bad, "[judge]\nkind = \"reference\"\n[judge.reference]\nlabel = \"x\"\nmethod = \"fuzzy\"\n").unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("judge.reference.method"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN).arg("judge").arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "judge refuses a bad config too");
}

#[test]
fn file_mode_grades_a_pairs_file_without_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let (config, pairs_file, grades_file) = (dir.path().join("judge.toml"), dir.path().join("pairs.jsonl"), dir.path().join("grades.jsonl"));
    common::config::write_judge(&JudgeConfig { judge: reference(), ..JudgeConfig::default() }, &config);
    let mut lines = String::new();
    for i in 0..20 {
        let p = pair(i, "Paris", if i < 5 { "Paris" } else { "Rome" }, Some("paris"), 200);
        lines.push_str(std::str::from_utf8(&record::encode(p.clone(), Encoding::Json).payload).unwrap());
        lines.push('\n');
        if i == 3 {
            lines.push_str("this line is not a pair\n\n");
        }
    }
    std::fs::write(&pairs_file, lines).unwrap();
    let out = Command::new(BIN)
        .arg("judge")
        .arg("--config")
        .arg(&config)
        .arg("--pairs")
        .arg(&pairs_file)
        .arg("--grades")
        .arg(&grades_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("undecodable pair record skipped") && !stderr.contains("Rome"), "{stderr}");
    let grades: Vec<GradeRecord> =
        std::fs::read_to_string(&grades_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(grades.len(), 20);
    let scores: Vec<f64> = grades.iter().map(|g| g.score).collect();
    assert_eq!(scores, [vec![0.0; 5], vec![-1.0; 15]].concat(), "in input order");
}

#[tokio::test]
async fn run_file_is_the_library_entry_point_the_demo_uses() {
    let dir = tempfile::tempdir().unwrap();
    let (pairs_file, grades_file) = (dir.path().join("pairs.jsonl"), dir.path().join("grades.jsonl"));
    let p = pair(1, "41", "42", Some("42"), 200);
    let line = String::from_utf8(record::encode(p.clone(), Encoding::Json).payload).unwrap();
    std::fs::write(&pairs_file, format!("{line}\n{line}\n{{}}oops\n")).unwrap();
    let cfg = common::config::validated_judge(JudgeConfig { judge: reference(), ..JudgeConfig::default() });
    let s = untaken::judge::run_file(&cfg, &pairs_file, &grades_file).await.unwrap();
    assert_eq!((s.pairs_read, s.grades_written, s.undecodable, s.duplicates), (3, 1, 1, 1));
    assert_eq!(s.outcomes.get("graded"), Some(&1));
    let missing = untaken::judge::run_file(&cfg, &dir.path().join("nope.jsonl"), &grades_file).await.unwrap_err();
    assert!(missing.to_string().contains("nope.jsonl"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_a_partition_is_assigned() {
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic, group) = (topic("r-pairs"), topic("r-grades"), topic("r-group"));
    // One partition: a second replica in the group gets nothing to consume.
    create_topic_async(&bootstrap, &pairs_topic, 1).await;
    create_topic_async(&bootstrap, &grades_topic, 1).await;
    let cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &group, reference());
    let first = Worker::start(cfg.clone()).await;
    assert_eq!(metric(&first.metrics().await, "untaken_judge_assigned_partitions"), 1.0, "ready means assigned");
    let second = Worker::spawn(cfg);
    // The group rebalances: one replica keeps the partition, the other gets nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (assigned, idle) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(Instant::now() < deadline, "the group did not settle");
        let Some(_) = second.ready().await else { continue };
        let (a, b) = (first.metrics().await, second.metrics().await);
        // Joined: the first replica was assigned again, or the second saw an assignment.
        let assigns = |m: &str| metric(m, "untaken_judge_rebalances_total{reason=\"assign\"}");
        let joined = assigns(&a) >= 2.0 || assigns(&b) >= 1.0;
        match (metric(&a, "untaken_judge_assigned_partitions"), metric(&b, "untaken_judge_assigned_partitions")) {
            (1.0, 0.0) if joined => break (first, second),
            (0.0, 1.0) => break (second, first),
            _ => {}
        }
    };
    // The replica without a partition answers 503, with why, as long as it has none.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (status, body) = idle.ready().await.unwrap();
        assert_eq!((status, body.trim()), (503, "no partition of the pairs topic assigned"));
        assert_eq!(assigned.ready().await.unwrap().0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The assigned replica leaves: the partition moves, and the other becomes ready.
    assigned.stop().await;
    idle.wait_ready().await;
    assert_eq!(metric(&idle.metrics().await, "untaken_judge_assigned_partitions"), 1.0);
    idle.stop().await;
}

/// Polls the worker's metrics until `ok` holds (30 s at most).
async fn wait_metrics(w: &Worker, what: &str, ok: impl Fn(&str) -> bool) -> String {
    common::metrics::wait_metrics(w.admin, what, Duration::from_secs(30), ok).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_outage_pauses_consumption_and_resumes_when_it_answers_without_skipping_a_pair() {
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic) = (topic("o-pairs"), topic("o-grades"));
    create_topic_async(&bootstrap, &pairs_topic, 2).await;
    create_topic_async(&bootstrap, &grades_topic, 1).await;
    // Nothing listens on the judge's port yet: connection refused.
    let judge_addr = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{judge_addr}/v1/chat/completions");
    let mut cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &topic("o-group"), common::config::pairwise(&url));
    let pw = pairwise_of(&mut cfg);
    (pw.max_retries, pw.breaker_failures, pw.timeout) = (1, 3, Duration::from_secs(2));
    (pw.breaker_probe_interval, pw.breaker_max_probe_interval) = (Duration::from_millis(100), Duration::from_millis(400));
    let worker = Worker::start(cfg).await;
    let pairs: Vec<_> = (0..40).map(|i| pair(i, "x", "longer", None, 200)).collect();
    produce(&bootstrap, &pairs_topic, encoded(&pairs[..10], Encoding::Json)).await;

    let open = |m: &str| metric(m, "untaken_judge_circuit_open") == 1.0 && metric(m, "untaken_judge_paused") == 1.0;
    let m = wait_metrics(&worker, "the circuit opens and consumption pauses", open).await;
    assert!(metric(&m, r#"untaken_judge_calls_total{outcome="transport_error"}"#) >= 3.0, "{m}");
    let (status, body) = worker.ready().await.unwrap();
    assert_eq!((status, body.trim()), (503, "judge endpoint down (circuit open): consumption paused"));
    // More pairs arrive during the outage; nothing is graded, nothing skipped.
    produce(&bootstrap, &pairs_topic, encoded(&pairs[10..30], Encoding::Json)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = worker.metrics().await;
    assert!(open(&m), "still open while the endpoint is down:\n{m}");
    assert_eq!(published(&m), 0.0, "no grade while the judge is down:\n{m}");
    assert!(metric(&m, r#"untaken_judge_calls_total{outcome="probe_failed"}"#) >= 2.0, "probed with backoff:\n{m}");
    // The lag counts what arrived while paused (a "judge lag growing" alert works now).
    wait_metrics(&worker, "lag of the 30 ungraded pairs", |m| metric(m, "untaken_judge_consumer_lag") == 30.0).await;

    // The judge comes up: a probe closes the circuit, every pair is graded.
    let judge = FakeJudge::start_on(&judge_addr, Preference::Longer, Duration::from_millis(5), false).await.unwrap();
    let got = grades(&bootstrap, &grades_topic, 30, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 30);
    assert!(got.iter().all(|g| g.outcome() == GradeOutcome::Graded && g.score == 1.0), "no pair became a judge error");
    wait_metrics(&worker, "no lag once graded", |m| metric(m, "untaken_judge_consumer_lag") == 0.0).await;
    let m = wait_metrics(&worker, "the circuit closes", |m| metric(m, "untaken_judge_circuit_open") == 0.0 && metric(m, "untaken_judge_paused") == 0.0).await;
    assert_eq!(worker.ready().await.unwrap().0, 200, "{m}");

    // Every call answers 500 for a while: the same.
    judge.set_steady(Mode::ServerError);
    produce(&bootstrap, &pairs_topic, encoded(&pairs[30..], Encoding::Json)).await;
    let m = wait_metrics(&worker, "the circuit opens on 5xx", |m| open(m) && metric(m, "untaken_judge_circuit_opened_total") >= 2.0).await;
    assert_eq!(published(&m), 30.0, "{m}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    judge.set_steady(Mode::Verdict);
    let got = grades(&bootstrap, &grades_topic, 40, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 40);
    assert!(got.iter().all(|g| g.outcome() == GradeOutcome::Graded), "no pair became a judge error");
    let distinct: HashSet<_> = got.iter().map(|g| g.pair_id.as_str()).collect();
    assert_eq!(distinct.len(), 40, "each pair graded once");
    let m = worker.metrics().await;
    assert_eq!(metric(&m, r#"untaken_judge_grades_published_total{outcome="judge_error"}"#), 0.0, "{m}");
    worker.stop().await;
}

#[test]
fn file_mode_streams_a_pipe_grading_pairs_as_they_arrive() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (config, fifo, grades_file) = (dir.path().join("judge.toml"), dir.path().join("pairs.pipe"), dir.path().join("grades.jsonl"));
    common::config::write_judge(&JudgeConfig { judge: reference(), ..JudgeConfig::default() }, &config);
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo (coreutils) runs");
    assert!(made.success());
    let mut child = Command::new(BIN)
        .arg("judge")
        .arg("--config")
        .arg(&config)
        .arg("--pairs")
        .arg(&fifo)
        .arg("--grades")
        .arg(&grades_file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = |i: usize| {
        let p = pair(i, "Paris", "Rome", Some("paris"), 200);
        let mut l = record::encode(p, Encoding::Json).payload;
        l.push(b'\n');
        l
    };
    // Opening blocks until the judge opens the pipe to read it.
    let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    for i in 0..10 {
        pipe.write_all(&line(i)).unwrap();
    }
    pipe.flush().unwrap();
    // The pipe stays open: a worker that reads the whole input first grades nothing yet.
    let graded = |n: usize| std::fs::read_to_string(&grades_file).map(|t| t.lines().count() >= n).unwrap_or(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !graded(10) {
        assert!(Instant::now() < deadline, "the first 10 pairs were not graded while the input stayed open");
        assert!(child.try_wait().unwrap().is_none(), "the judge exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 10..20 {
        pipe.write_all(&line(i)).unwrap();
    }
    drop(pipe);
    let status = child.wait().unwrap();
    assert!(status.success());
    let grades: Vec<GradeRecord> =
        std::fs::read_to_string(&grades_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<String> = grades.iter().map(|g| g.pair_id.clone()).collect();
    assert_eq!(ids, (0..20).map(|i| format!("pair-{i:05}")).collect::<Vec<_>>(), "all, in input order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_logged_a_few_times_a_minute_not_per_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (config, log) = (dir.path().join("judge.toml"), dir.path().join("judge.log"));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker = common::proc::dead_addr();
    let mut cfg = judge_config(&broker, "pairs", "grades", "g", reference());
    cfg.server.admin_listen = admin.to_string();
    common::config::write_judge(&cfg, &config);
    let mut judge = Sidecar::spawn_judge(&config, admin, &log);
    // The admin port answers; the worker never gets a partition.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("http://{admin}/live")).await.is_err() {
        assert!(Instant::now() < deadline, "admin port never answered:\n{}", judge.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let r = reqwest::get(format!("http://{admin}/ready")).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    judge.sigkill();
    let text = judge.log_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // librdkafka retries the broker many times a second (consumer and producer): the
    // worker says so once per client and period, with how many lines it held back.
    assert!(lines.iter().any(|l| l.contains(&broker) || l.contains("Connection refused")), "the outage is logged:\n{text}");
    assert!(lines.len() <= 12, "{} lines in 8 s:\n{text}", lines.len());
}

/// The judge endpoint's key file rotates the way Kubernetes updates a mounted Secret
/// while pairs are graded: the next calls carry the new key, and once the provider
/// revokes the old one grading goes on. An empty key file is rejected and counted, and
/// the key in force stays. Every pair is graded, none becomes a judge error (a call
/// with a revoked key would: the fake judge answers it 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_judge_key_is_used_from_the_next_call_and_a_broken_one_is_rejected() {
    let log = common::logs::capture();
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic) = (topic("sk-pairs"), topic("sk-grades"));
    create_topic_async(&bootstrap, &pairs_topic, 2).await;
    create_topic_async(&bootstrap, &grades_topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let volume = SecretVolume::new(dir.path());
    volume.update(&[("api-key", b"sk-first\n")]);
    let judge = FakeJudge::start(Preference::Longer, Duration::from_millis(50), false).await.unwrap();
    judge.accept_keys(&["sk-first"]);
    let mut cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &topic("sk-group"), common::config::pairwise(&judge.url()));
    pairwise_of(&mut cfg).api_key_file = Some(volume.path("api-key"));
    cfg.limits.max_concurrency = 8;
    let worker = Worker::start(polling_secrets(cfg)).await;
    let ok = r#"untaken_judge_secret_reloads_total{secret="judge.pairwise.api_key_file",outcome="ok"}"#;
    let rejected = r#"untaken_judge_secret_reloads_total{secret="judge.pairwise.api_key_file",outcome="rejected"}"#;
    let stuck = r#"untaken_judge_secret_file_rejected{secret="judge.pairwise.api_key_file"}"#;
    let pairs: Vec<_> = (0..350).map(|i| pair(i, "x", "longer", None, 200)).collect();

    // Mid-stream: the provider accepts both keys while the new one is rolled out.
    produce(&bootstrap, &pairs_topic, encoded(&pairs[..300], Encoding::Json)).await;
    wait_metrics(&worker, "50 grades before the rotation", |m| published(m) >= 50.0).await;
    judge.accept_keys(&["sk-first", "sk-second"]);
    volume.update(&[("api-key", b"sk-second\n")]);
    let m = wait_metrics(&worker, "the new key in force", |m| metric(m, ok) == 1.0).await;
    assert!(published(&m) < 300.0, "pairs were still being graded at the rotation:\n{m}");
    wait_metrics(&worker, "the first 300 pairs graded", |m| published(m) == 300.0).await;

    // The old key is revoked; a broken key file leaves the new one in force.
    judge.accept_keys(&["sk-second"]);
    volume.update(&[("api-key", b"  \n")]);
    let m = wait_metrics(&worker, "the empty key file rejected", |m| metric(m, rejected) == 1.0).await;
    assert_eq!(metric(&m, stuck), 1.0, "the rejection stays visible until fixed:\n{m}");
    produce(&bootstrap, &pairs_topic, encoded(&pairs[300..], Encoding::Json)).await;
    let m = wait_metrics(&worker, "all 350 pairs graded", |m| published(m) == 350.0).await;
    assert_eq!(metric(&m, r#"untaken_judge_calls_total{outcome="client_error"}"#), 0.0, "no call was refused:\n{m}");
    assert_eq!(metric(&m, ok), 1.0);

    let got = all_graded(&bootstrap, &grades_topic, 350, Duration::from_secs(30)).await;
    assert!(got.iter().all(|g| g.outcome() == GradeOutcome::Graded), "no pair became a judge error");
    let keys = judge.calls_by_key();
    assert_eq!(keys.keys().map(String::as_str).collect::<Vec<_>>(), ["sk-first", "sk-second"], "only the keys in force were sent: {keys:?}");
    assert!(keys["sk-second"] >= 100, "the last 50 pairs (2 calls each) and more carried the new key: {keys:?}");
    worker.stop().await;
    let text = log.text();
    assert!(text.lines().any(|l| l.contains("judge.pairwise.api_key_file") && l.contains("rejected")), "the rejection is logged, naming the setting");
    for secret in ["sk-first", "sk-second"] {
        assert!(!text.contains(secret), "the judge key {secret} reached the log");
    }
}

/// The judge's Kafka secret files rotate while pairs are graded. Each valid version
/// builds a new grades producer and a new consumer in the same group, which take over
/// (shown by rotating to a `security.protocol` that cannot reach the broker: the worker
/// then holds no partition until a working version is rotated in); a version
/// librdkafka refuses is rejected and counted, the clients in force stay; every pair
/// is graded at least once. The test broker has no SASL listener, so the password
/// itself is not checked by a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_kafka_secret_files_rebuild_both_clients_and_every_pair_is_graded() {
    let log = common::logs::capture();
    let bootstrap = shared_bootstrap_async().await;
    let (pairs_topic, grades_topic) = (topic("sr-pairs"), topic("sr-grades"));
    create_topic_async(&bootstrap, &pairs_topic, 2).await;
    create_topic_async(&bootstrap, &grades_topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let volume = SecretVolume::new(dir.path());
    let rotate = |password: &str, protocol: &str| volume.update(&[("password", password.as_bytes()), ("protocol", protocol.as_bytes())]);
    rotate("first-password", "plaintext");
    let judge = FakeJudge::start(Preference::Longer, Duration::from_millis(50), false).await.unwrap();
    let mut cfg = judge_config(&bootstrap, &pairs_topic, &grades_topic, &topic("sr-group"), common::config::pairwise(&judge.url()));
    cfg.limits.max_concurrency = 8;
    cfg.kafka.sasl_password_file = Some(volume.path("password"));
    cfg.kafka.delivery_timeout = Duration::from_secs(2);
    cfg.kafka.librdkafka_files.insert("security.protocol".into(), volume.path("protocol"));
    let worker = Worker::start(polling_secrets(cfg)).await;
    let ok = r#"untaken_judge_secret_reloads_total{secret="kafka",outcome="ok"}"#;
    let rejected = r#"untaken_judge_secret_reloads_total{secret="kafka",outcome="rejected"}"#;
    let retries = "untaken_judge_grade_send_retries_total";
    let pairs: Vec<_> = (0..220).map(|i| pair(i, "x", "longer", None, 200)).collect();

    // A new password mid-stream: the replaced producer is flushed, no grade fails.
    produce(&bootstrap, &pairs_topic, encoded(&pairs[..200], Encoding::Json)).await;
    wait_metrics(&worker, "30 grades before the rotation", |m| published(m) >= 30.0).await;
    rotate("second-password", "plaintext");
    let m = wait_metrics(&worker, "both clients rebuilt", |m| metric(m, ok) == 1.0).await;
    assert!(published(&m) < 200.0, "pairs were still being graded at the rotation:\n{m}");
    let m = wait_metrics(&worker, "the first 200 pairs graded", |m| published(m) >= 200.0).await;
    assert_eq!(metric(&m, retries), 0.0, "no grade failed across the rebuild:\n{m}");
    let assigned = |m: &str| metric(m, "untaken_judge_assigned_partitions");
    wait_metrics(&worker, "the new consumer holds the partitions", |m| assigned(m) == 2.0).await;

    // Clients that cannot reach the broker: the old consumer left the group, the new one cannot join.
    rotate("second-password", "ssl");
    wait_metrics(&worker, "the second rebuild", |m| metric(m, ok) == 2.0).await;
    wait_metrics(&worker, "no partition held by an unreachable consumer", |m| assigned(m) == 0.0).await;
    produce(&bootstrap, &pairs_topic, encoded(&pairs[200..], Encoding::Json)).await;

    // A value librdkafka refuses: rejected, the clients in force stay.
    rotate("third-password", "carrier-pigeon");
    wait_metrics(&worker, "the refused version rejected", |m| metric(m, rejected) == 1.0).await;

    // Back to a working protocol: the new consumer joins and the waiting pairs are graded.
    rotate("third-password", "plaintext");
    wait_metrics(&worker, "the third rebuild", |m| metric(m, ok) == 3.0).await;
    let got = all_graded(&bootstrap, &grades_topic, 220, Duration::from_secs(60)).await;
    assert!(got.iter().all(|g| g.outcome() == GradeOutcome::Graded), "every pair graded");
    let m = wait_metrics(&worker, "all 220 grades acknowledged", |m| published(m) >= 220.0).await;
    assert_eq!(metric(&m, rejected), 1.0, "{m}");
    assert_eq!(assigned(&m), 2.0, "{m}");
    worker.stop().await;
    let text = log.text();
    let rejections: Vec<&str> = text.lines().filter(|l| l.contains("rejected")).collect();
    assert!(rejections.iter().any(|l| l.contains("kafka")), "the refused version is logged: {rejections:?}");
    for secret in ["first-password", "second-password", "third-password", "carrier-pigeon"] {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret} reached the log: {leaks:?}");
    }
}
