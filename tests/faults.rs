//! Fault injection against real peers: a real Kafka broker SIGKILLed mid-traffic
//! or down at start-up, the real binary SIGKILLed with a full spool or SIGTERMed
//! under load, shadow upstreams that hang, fail, answer garbage or reset, and
//! every shedding limit.
//!
//! Every test reconciles: each pair_id `Mirror` accepted (sampled=true) must be
//! read back from the topic. A missing pair always fails the test; duplicates
//! (at-least-once delivery) are counted and fail it past the bound the test's
//! fault can explain.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::app::{mirror_req, primary_answer};
use common::metrics::{interesting, metric, metric_sum, scrape, wait_metrics};
use common::kafka::{consume_async, create_topic_async, shared_bootstrap_async, Broker};
use common::proc::{dead_addr, Sidecar};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;
use untaken::app::Running;
use untaken::config::{Config, RouteConfig};
use untaken::proto::v1::mirror_client::MirrorClient;
use untaken::proto::v1::{MirrorRequest, MirrorResponse};
use untaken::simulate::{Behaviour, FakeUpstream};

// ----- config ----------------------------------------------------------------

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A route named `name` serving `{name}-model`, priced as the reasoning model.
fn route(name: &str, url: impl AsRef<str>) -> RouteConfig {
    RouteConfig { input_usd_per_mtok: 1.10, output_usd_per_mtok: 4.40, ..common::config::route(url.as_ref(), &format!("{name}-model")) }
}

/// The route catalog, by name.
fn routes<const N: usize>(list: [(&str, RouteConfig); N]) -> BTreeMap<String, RouteConfig> {
    list.into_iter().map(|(name, r)| (name.to_string(), r)).collect()
}

/// `fast` (the route taken) shadowed to `reasoning` (10 s timeout), a Kafka sink at
/// `brokers` with 2 s delivery and stall timeouts, a 64 MiB spool at `spool`. The base
/// config in `common::app` fixes its routes, so tests here start from this one.
fn config(fast: &FakeUpstream, reasoning: &FakeUpstream, brokers: &str, topic: &str, spool: &Path) -> Config {
    let mut c = common::config::base(brokers, topic, spool);
    c.routes = routes([
        ("fast", RouteConfig { counterfactual: Some("reasoning".into()), ..route("fast", fast.url()) }),
        ("reasoning", RouteConfig { timeout: secs(10), ..route("reasoning", reasoning.url()) }),
    ]);
    c.sink.kafka.delivery_timeout = secs(2);
    c.sink.kafka.stall_timeout = secs(2);
    c.spool.max_bytes = 64 * 1024 * 1024;
    c
}

/// The sidecar in-process, with a client.
struct InProc {
    app: Running,
    client: MirrorClient<Channel>,
}

async fn start_in_process(config: &Config) -> InProc {
    let app = common::app::start(config.clone(), None).await;
    let client = common::app::client(&app).await;
    InProc { app, client }
}

impl InProc {
    /// Drains; fails the test if the drain does not finish.
    async fn stop(self) {
        self.app.shutdown();
        tokio::time::timeout(Duration::from_secs(60), self.app.wait()).await.expect("in-process drain finishes");
    }
}

/// A broker of the test's own with a fresh topic named for `name`, then SIGKILLed:
/// Kafka down until the test restarts it.
async fn killed_broker(name: &str) -> (Broker, String, String) {
    let mut broker = Broker::start_async().await;
    let bootstrap = broker.bootstrap();
    let topic = common::app::topic(name);
    create_topic_async(&bootstrap, &topic, 1).await;
    tokio::task::block_in_place(|| broker.kill());
    (broker, bootstrap, topic)
}

async fn upstream(name: &str, behaviour: Behaviour) -> FakeUpstream {
    FakeUpstream::start(name, behaviour).await.unwrap()
}

fn answer(ms: u64) -> Behaviour {
    Behaviour::Answer { delay: Duration::from_millis(ms) }
}

/// A one-phase request taken by `fast`, shadowed to its counterfactual or to `shadow`.
fn req(id: &str, shadow: &str) -> MirrorRequest {
    let mut r = mirror_req(id, "fast", Some(primary_answer("primary says 41")));
    r.shadow_route = shadow.into();
    r
}

// ----- metrics ---------------------------------------------------------------

/// Sum of every `untaken_pairs_dropped_total{...}` series.
fn dropped(m: &str) -> f64 {
    metric_sum(m, "untaken_pairs_dropped_total")
}

fn shed(m: &str, reason: &str) -> f64 {
    metric(m, &format!(r#"untaken_mirror_requests_total{{decision="shed",reason="{reason}",slice="multi_step"}}"#))
}

/// Duplicates a broker failure (or a purge at the drain's deadline) may cause: the
/// records Kafka wrote but did not acknowledge. Traffic in these tests is one pair
/// every ~10 ms and acknowledgements take milliseconds, so a handful at most.
const MAX_DUPS_AT_A_KILL: usize = 10;

const SPOOLED: &str = "untaken_pairs_spooled_total";
const REPLAYED: &str = "untaken_pairs_replayed_total";
const SPOOL_RECORDS: &str = "untaken_spool_records";

// ----- reconciliation --------------------------------------------------------

/// What came back from the topic, by pair_id.
struct ReadBack {
    records: HashMap<String, Vec<Value>>,
    total: usize,
}

impl ReadBack {
    fn one(&self, pair_id: &str) -> &Value {
        &self.records[pair_id][0]
    }
}

/// Reads `topic` from the beginning until every accepted pair_id is there or
/// `timeout` passes. Duplicates count towards what is read, so each round asks
/// for as many more records as pairs are still missing.
async fn read_back(bootstrap: &str, topic: &str, accepted: &[String], timeout: Duration) -> ReadBack {
    let want: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(want.len(), accepted.len(), "Mirror handed out a pair_id twice");
    let deadline = Instant::now() + timeout;
    let mut expected = accepted.len();
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let got = consume_async(bootstrap, topic, expected, left).await;
        let mut records: HashMap<String, Vec<Value>> = HashMap::new();
        for c in &got {
            let v: Value = serde_json::from_slice(&c.payload).expect("record is JSON");
            let id = v["pair_id"].as_str().expect("record has a pair_id").to_string();
            assert_eq!(c.header("untaken-pair-id"), Some(id.as_bytes()), "header and payload name the same pair");
            records.entry(id).or_default().push(v);
        }
        let missing = want.iter().filter(|id| !records.contains_key(**id)).count();
        if missing == 0 || Instant::now() >= deadline {
            return ReadBack { records, total: got.len() };
        }
        expected = got.len() + missing;
    }
}

/// Fails on any accepted pair missing from the topic, any record nobody accepted,
/// or more than `max_dups` duplicate records (each test states what can cause one).
/// Returns the number of duplicate records.
fn reconcile(test: &str, accepted: &[String], rb: &ReadBack, max_dups: usize) -> usize {
    reconcile_allowing(test, accepted, rb, max_dups, |_| false)
}

/// [`reconcile`], tolerating (and printing) records nobody saw accepted for
/// which `lost_answer` holds: a call whose answer was lost on the wire may still
/// have been accepted.
fn reconcile_allowing(
    test: &str,
    accepted: &[String],
    rb: &ReadBack,
    max_dups: usize,
    lost_answer: impl Fn(&Value) -> bool,
) -> usize {
    let missing: Vec<&String> = accepted.iter().filter(|id| !rb.records.contains_key(*id)).collect();
    let acc: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let (tolerated, unexpected): (Vec<&String>, Vec<&String>) =
        rb.records.keys().filter(|id| !acc.contains(id.as_str())).partition(|id| lost_answer(&rb.records[*id][0]));
    if !tolerated.is_empty() {
        println!("[{test}] {} published pairs whose Mirror call failed on the wire: {tolerated:?}", tolerated.len());
    }
    let dups: BTreeMap<&String, usize> =
        rb.records.iter().filter(|(_, v)| v.len() > 1).map(|(k, v)| (k, v.len())).collect();
    let extra: usize = dups.values().map(|n| n - 1).sum();
    println!(
        "[{test}] reconcile: {} accepted, {} records read, {} unique, {} missing, {} duplicate records{}",
        accepted.len(),
        rb.total,
        rb.records.len(),
        missing.len(),
        extra,
        if dups.is_empty() { String::new() } else { format!(" (pair_id → copies: {dups:?})") }
    );
    assert!(missing.is_empty(), "[{test}] {} accepted pairs never reached the topic: {missing:?}", missing.len());
    assert!(unexpected.is_empty(), "[{test}] records on the topic that Mirror never accepted: {unexpected:?}");
    assert!(extra <= max_dups, "[{test}] {extra} duplicate records, more than the {max_dups} this fault can cause");
    extra
}

// ----- 1. broker SIGKILLed mid-traffic -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_traffic_loses_nothing() {
    let t0 = Instant::now();
    let mut broker = Broker::start_async().await;
    let bootstrap = broker.bootstrap();
    let topic = common::app::topic("broker-killed");
    create_topic_async(&bootstrap, &topic, 1).await;
    let (fast, reasoning) = (upstream("fast", answer(5)).await, upstream("reasoning", answer(5)).await);
    let spool = tempfile::tempdir().unwrap();
    let mut setup = config(&fast, &reasoning, &bootstrap, &topic, spool.path());

    setup.sink.kafka.delivery_timeout = secs(2);
    let mut s = start_in_process(&setup).await;
    let admin = s.app.admin_addr;

    let (n, kill_at) = (200, 70);
    let mut accepted = Vec::new();
    for i in 0..n {
        if i == kill_at {
            let m = scrape(admin).await;
            println!("[broker-killed] SIGKILL broker after {i} requests ({} published so far)", metric(&m, "untaken_pairs_published_total"));
            tokio::task::block_in_place(|| broker.kill());
        }
        let resp = s.client.mirror(req(&format!("bk-{i}"), "")).await.expect("Mirror answers while Kafka is down").into_inner();
        assert!(resp.sampled, "request {i}: {resp:?}");
        accepted.push(resp.pair_id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The broker stays down until the spool has been used.
    let m = wait_metrics(admin, "pairs spooled while the broker is down", Duration::from_secs(30), |m| metric(m, SPOOLED) > 0.0).await;
    println!("[broker-killed] all {n} sent; spooled so far {}; restarting the broker", metric(&m, SPOOLED));
    broker.restart_async().await;
    let m = wait_metrics(admin, "the spool replayed and empty", Duration::from_secs(90), |m| {
        metric(m, REPLAYED) > 0.0 && metric(m, SPOOL_RECORDS) == 0.0 && !m.is_empty()
    })
    .await;
    let rb = read_back(&bootstrap, &topic, &accepted, Duration::from_secs(60)).await;
    // A duplicate needs a record the broker wrote but never acknowledged (in flight at the
    // kill); each spooled record is replayed until delivered, and never again after that.
    reconcile("broker-killed", &accepted, &rb, MAX_DUPS_AT_A_KILL);
    let m2 = scrape(admin).await;
    println!("[broker-killed] metrics:\n{}", interesting(&m2));
    assert!(metric(&m, SPOOLED) > 0.0 && metric(&m, REPLAYED) > 0.0);
    assert_eq!(dropped(&m2), 0.0, "no pair may be dropped:\n{}", interesting(&m2));
    s.stop().await;
    println!("[broker-killed] took {:?}", t0.elapsed());
}

// ----- 2. sidecar SIGKILLed with a full spool ------------------------------------

/// Writes `setup` to `dir/untaken.toml` listening on port 0 and starts the binary;
/// its ports are read from its `untaken started` log line.
async fn spawn_binary(setup: &mut Config, dir: &Path, log: &str) -> Sidecar {
    setup.server.listen = "127.0.0.1:0".into();
    setup.server.admin_listen = "127.0.0.1:0".into();
    let path = dir.join("untaken.toml");
    common::config::write(setup, &path);
    let mut sc = Sidecar::spawn_on_port_0(&path, &dir.join(log), Duration::from_secs(30)).await;
    sc.wait_ready(Duration::from_secs(30)).await;
    sc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_spool_replays_on_restart() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let topic = common::app::topic("sigkill");
    let (fast, reasoning) = (upstream("fast", answer(5)).await, upstream("reasoning", answer(5)).await);
    let mut setup = config(&fast, &reasoning, &dead_addr(), &topic, &spool);

    setup.sink.kafka.delivery_timeout = secs(1);
    let first_run = Instant::now();
    let mut sc = spawn_binary(&mut setup, dir.path(), "first.log").await;
    let mut client = MirrorClient::connect(format!("http://{}", sc.grpc)).await.unwrap();

    let n = 40;
    let mut accepted = Vec::new();
    for i in 0..n {
        let resp = client.mirror(req(&format!("sk-{i}"), "")).await.unwrap().into_inner();
        assert!(resp.sampled, "{resp:?}");
        accepted.push(resp.pair_id);
    }
    let admin = sc.admin;
    let m = wait_metrics(admin, "every pair in the spool", Duration::from_secs(30), |m| metric(m, SPOOL_RECORDS) == n as f64).await;
    assert_eq!(metric(&m, "untaken_pairs_published_total"), 0.0, "nothing can reach a dead broker");
    let status = sc.sigkill();
    let first_run = first_run.elapsed();
    println!("[sigkill] {n} pairs spooled; SIGKILLed the sidecar ({status:?})");
    // Every delivery failed, but the log says so at most once a second, not once per pair.
    let failure_lines = sc.log_text().lines().filter(|l| l.contains("kafka delivery failed")).count();
    println!("[sigkill] {failure_lines} delivery-failure log lines in {first_run:?}");
    assert!(
        (1..=first_run.as_secs() as usize + 1).contains(&failure_lines),
        "{failure_lines} delivery-failure lines in {first_run:?}:\n{}",
        sc.log_tail(20)
    );
    drop(client);
    // What the dead process left on disk: every pair, no torn frame.
    let (disk, found) = untaken::sink::spool::Spool::open(&spool, setup.spool.max_bytes).unwrap();
    assert_eq!((found.records, found.corrupt), (n as u64, 0), "{found:?}");
    drop(disk);

    // Same spool, now a reachable broker.
    setup.sink.kafka.brokers = shared_bootstrap_async().await;
    let mut sc = spawn_binary(&mut setup, dir.path(), "second.log").await;
    assert!(sc.log_text().contains("spool holds records from an earlier run"), "{}", sc.log_tail(40));
    let rb = read_back(&setup.sink.kafka.brokers, &topic, &accepted, Duration::from_secs(60)).await;
    // Nothing reached Kafka before the SIGKILL, and the replay sends each record once.
    reconcile("sigkill", &accepted, &rb, 0);
    let m = wait_metrics(sc.admin, "the spool emptied", Duration::from_secs(30), |m| metric(m, SPOOL_RECORDS) == 0.0 && !m.is_empty()).await;
    assert!(metric(&m, REPLAYED) >= n as f64, "{}", interesting(&m));
    assert_eq!(dropped(&m), 0.0, "{}", interesting(&m));
    for id in &accepted {
        assert_eq!(rb.one(id)["status"], "PAIR_STATUS_COMPLETE", "spooled pairs are whole: {}", rb.one(id));
    }
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "clean exit after replay: {status:?}\n{}", sc.log_tail(30));
    println!("[sigkill] took {:?}", t0.elapsed());
}

// ----- 3. SIGTERM under load -----------------------------------------------------

struct Call {
    id: String,
    sent_at: Instant,
    shadow: &'static str,
    took: Duration,
    /// `None`: the call did not return within its 5 s bound (a hang).
    result: Option<Result<MirrorResponse, tonic::Status>>,
}

/// A Kafka outage under load spools every pair without a thread per record: spool
/// writes are blocking tasks that queue on the spool's lock, and the shadow runtime's
/// blocking pool used to grow a thread for each one waiting (523 threads after 45 s of
/// the benchmark's outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_under_load_does_not_grow_a_thread_per_spooled_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (fast, reasoning) = (upstream("fast", answer(0)).await, upstream("reasoning", answer(0)).await);
    let mut setup = config(&fast, &reasoning, &dead_addr(), &common::app::topic("threads"), &dir.path().join("spool"));
    setup.routes.get_mut("reasoning").unwrap().max_concurrency = Some(4096);
    let mut sc = spawn_binary(&mut setup, dir.path(), "sidecar.log").await;
    let client = MirrorClient::connect(format!("http://{}", sc.grpc)).await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..3000 {
        let mut c = client.clone();
        calls.spawn(async move { c.mirror(req(&format!("th-{i}"), "")).await.map(|r| r.into_inner().sampled).unwrap_or(false) });
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let sampled = calls.join_all().await.into_iter().filter(|s| *s).count();
    assert!(sampled >= 1000, "only {sampled} of 3000 sampled");
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", sc.pid())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse::<usize>().unwrap()
    };
    let spooled = loop {
        most.fetch_max(threads(), Ordering::Relaxed);
        let m = sc.metrics().await;
        if metric(&m, SPOOL_RECORDS) as usize >= sampled {
            break metric(&m, SPOOL_RECORDS) as usize;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let most = most.load(Ordering::Relaxed);
    println!("[threads] {sampled} pairs sampled, {spooled} spooled with Kafka down; at most {most} threads");
    assert_eq!(spooled, sampled, "every sampled pair is in the spool");
    assert!(most <= 40, "{most} threads while spooling {sampled} pairs");
    sc.sigkill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_exits_zero() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = shared_bootstrap_async().await;
    let topic = common::app::topic("sigterm");
    create_topic_async(&bootstrap, &topic, 1).await;
    let fast = upstream("fast", answer(5)).await;
    let reasoning = upstream("reasoning", answer(300)).await;
    // Every fifth request is shadowed to `cheap`, which never answers (its route
    // timeout is past the grace): those pairs are cut off by the drain.
    let cheap = upstream("cheap", Behaviour::Hang).await;
    let mut setup = config(&fast, &reasoning, &bootstrap, &topic, &dir.path().join("spool"));
    setup.server.shutdown_grace = secs(5);
    setup.routes.insert("cheap".into(), RouteConfig { timeout: secs(60), ..route("cheap", cheap.url()) });
    let mut sc = spawn_binary(&mut setup, dir.path(), "sidecar.log").await;
    let client = MirrorClient::connect(format!("http://{}", sc.grpc)).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut calls = tokio::task::JoinSet::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 1500 {
                let mut c = client.clone();
                let shadow = if i % 5 == 0 { "cheap" } else { "" };
                calls.spawn(async move {
                    let id = format!("st-{i}");
                    let sent_at = Instant::now();
                    let r = tokio::time::timeout(Duration::from_secs(5), c.mirror(req(&id, shadow))).await;
                    Call { id, sent_at, shadow, took: sent_at.elapsed(), result: r.ok().map(|r| r.map(|r| r.into_inner())) }
                });
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            calls.join_all().await
        })
    };
    // SIGTERM under load: once calls to the hanging route pile up.
    let m = wait_metrics(sc.admin, "hanging shadow calls in flight", Duration::from_secs(30), |m| metric(m, "untaken_shadow_inflight") >= 10.0).await;
    let inflight = metric(&m, "untaken_shadow_inflight");
    let term_at = Instant::now();
    sc.sigterm();
    let grace = Duration::from_secs(5);
    let status = sc.wait_exit(grace + Duration::from_secs(15)).await;
    let exit_after = term_at.elapsed();
    // Keep calling a little after the exit: those must fail fast too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let calls = load.await.unwrap();
    println!("[sigterm] {} shadow calls in flight at SIGTERM; exited {status:?} {exit_after:?} after SIGTERM", inflight);
    assert!(status.is_some(), "still running {exit_after:?} after SIGTERM (grace {grace:?}):\n{}", sc.log_tail(40));
    assert!(status.unwrap().success(), "exit status {status:?}:\n{}", sc.log_tail(40));
    assert!(sc.log_text().contains("drained"), "{}", sc.log_tail(40));

    let mut accepted = Vec::new();
    let mut cheap_ids = HashSet::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut after_exit = 0;
    let mut slowest_failure = Duration::ZERO;
    for c in &calls {
        let exited = c.sent_at > term_at + exit_after;
        match &c.result {
            None => panic!("a Mirror call sent {:?} after SIGTERM hung for 5 s", c.sent_at.saturating_duration_since(term_at)),
            Some(Ok(resp)) => {
                assert!(!exited, "a Mirror call sent after the process exited was answered: {resp:?}");
                assert!(resp.sampled, "{resp:?}");
                if c.shadow == "cheap" {
                    cheap_ids.insert(resp.pair_id.clone());
                }
                accepted.push(resp.pair_id.clone());
            }
            Some(Err(status)) => {
                assert!(
                    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
                    "Mirror after SIGTERM must fail UNAVAILABLE or with a connection error, got {status:?}"
                );
                let msg: String = status.message().chars().take(60).collect();
                *errors.entry(format!("{:?}: {msg}", status.code())).or_default() += 1;
                after_exit += usize::from(exited);
                slowest_failure = slowest_failure.max(c.took);
            }
        }
    }
    println!(
        "[sigterm] {} calls: {} accepted ({} to the hanging route), failures {errors:?} ({after_exit} after exit), slowest failure {slowest_failure:?}",
        calls.len(),
        accepted.len(),
        cheap_ids.len()
    );
    assert!(!cheap_ids.is_empty() && accepted.len() > cheap_ids.len(), "load reached both shadow routes");
    assert!(!errors.is_empty(), "calls after SIGTERM were refused");

    let failed: HashSet<&str> = calls.iter().filter(|c| matches!(c.result, Some(Err(_)))).map(|c| c.id.as_str()).collect();
    let rb = read_back(&bootstrap, &topic, &accepted, Duration::from_secs(60)).await;
    // A slow Kafka at the drain's deadline: records it wrote but had not acknowledged.
    reconcile_allowing("sigterm", &accepted, &rb, MAX_DUPS_AT_A_KILL, |r| failed.contains(r["request_id"].as_str().unwrap_or_default()));
    let mut cut_off = 0;
    for id in &accepted {
        let r = rb.one(id);
        let present = r["counterfactual"]["present"] == true;
        if !present {
            cut_off += 1;
            assert_eq!(r["status"], "PAIR_STATUS_COUNTERFACTUAL_MISSING", "{r}");
            let reason = r["status_reason"].as_str().unwrap_or_default();
            assert!(reason.contains("shut down"), "the reason names the shutdown: {reason}");
        }
        if cheap_ids.contains(id) {
            assert!(!present, "the hanging route never answered, yet: {r}");
        } else {
            // 300 ms shadow calls all finish well inside the 5 s grace.
            assert_eq!(r["status"], "PAIR_STATUS_COMPLETE", "{r}");
        }
    }
    println!("[sigterm] {cut_off} pairs published COUNTERFACTUAL_MISSING at shutdown; took {:?}", t0.elapsed());
}

// ----- 4. Kafka unreachable at start-up -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_at_startup() {
    let t0 = Instant::now();
    let (mut broker, bootstrap, topic) = killed_broker("unreachable").await;

    let (fast, reasoning) = (upstream("fast", answer(5)).await, upstream("reasoning", answer(5)).await);
    let spool = tempfile::tempdir().unwrap();
    let mut setup = config(&fast, &reasoning, &bootstrap, &topic, spool.path());

    setup.sink.kafka.delivery_timeout = secs(1);
    let started = Instant::now();
    let mut s = start_in_process(&setup).await;
    let start_took = started.elapsed();
    let sent = Instant::now();
    let first = s.client.mirror(req("un-0", "")).await.expect("first Mirror answers").into_inner();
    let first_took = sent.elapsed();
    println!("[unreachable] start took {start_took:?}, first Mirror {first_took:?}");
    assert!(first.sampled, "{first:?}");
    assert!(first_took < Duration::from_secs(1), "Mirror does not wait for Kafka: {first_took:?}");
    let mut accepted = vec![first.pair_id];
    for i in 1..30 {
        let resp = s.client.mirror(req(&format!("un-{i}"), "")).await.unwrap().into_inner();
        assert!(resp.sampled);
        accepted.push(resp.pair_id);
    }
    let admin = s.app.admin_addr;
    let n = accepted.len() as f64;
    let m = wait_metrics(admin, "every pair spooled", Duration::from_secs(30), |m| metric(m, SPOOLED) >= n).await;
    assert_eq!(metric(&m, "untaken_pairs_published_total"), 0.0);
    println!("[unreachable] {} spooled; starting the broker", metric(&m, SPOOLED));
    broker.restart_async().await;
    let rb = read_back(&bootstrap, &topic, &accepted, Duration::from_secs(90)).await;
    // A record that timed out just as the broker came back may also have been written.
    reconcile("unreachable", &accepted, &rb, MAX_DUPS_AT_A_KILL);
    let m = wait_metrics(admin, "the spool emptied", Duration::from_secs(30), |m| metric(m, SPOOL_RECORDS) == 0.0 && !m.is_empty()).await;
    assert!(metric(&m, REPLAYED) >= n, "{}", interesting(&m));
    assert_eq!(dropped(&m), 0.0, "{}", interesting(&m));
    s.stop().await;
    println!("[unreachable] took {:?}", t0.elapsed());
}

// ----- 5. shadow upstream faults ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_upstream_faults_are_recorded() {
    let t0 = Instant::now();
    let bootstrap = shared_bootstrap_async().await;
    let topic = common::app::topic("upstream-faults");
    let fast = upstream("fast", answer(5)).await;
    let hang = upstream("hang", Behaviour::Hang).await;
    let s500 = upstream("s500", Behaviour::Status500).await;
    let notjson = upstream("notjson", Behaviour::NotJson).await;
    let reset = untaken::simulate::start_resetting_server().await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut setup = config(&fast, &hang, &bootstrap, &topic, spool.path());
    setup.server.shutdown_grace = secs(1);
    setup.routes = routes([
        ("fast", RouteConfig { counterfactual: Some("hang".into()), ..route("fast", fast.url()) }),
        ("hang", route("hang", hang.url())), // timeout 2s
        ("s500", route("s500", s500.url())),
        ("notjson", route("notjson", notjson.url())),
        ("reset", route("reset", format!("http://{reset}/v1/chat/completions"))),
        ("refused", route("refused", format!("http://{}/v1/chat/completions", dead_addr()))),
    ]);
    let mut s = start_in_process(&setup).await;
    let admin = s.app.admin_addr;

    let mut by_route: Vec<(&str, String, Duration)> = Vec::new();
    for shadow in ["hang", "s500", "notjson", "reset", "refused"] {
        let sent = Instant::now();
        let resp = s.client.mirror(req(&format!("uf-{shadow}"), shadow)).await.unwrap().into_inner();
        let took = sent.elapsed();
        assert!(resp.sampled && resp.shadow_route == shadow, "{resp:?}");
        by_route.push((shadow, resp.pair_id, took));
        if shadow == "hang" {
            // Mirror has returned and the shadow call is still running.
            wait_metrics(admin, "the hanging shadow call in flight", Duration::from_secs(2), |m| metric(m, "untaken_shadow_inflight") >= 1.0).await;
        }
    }
    for (shadow, _, took) in &by_route {
        println!("[upstream-faults] Mirror shadowing to {shadow}: {took:?}");
        // A sanity bound only; the real check is below: Mirror returned before the hang ended.
        assert!(*took < Duration::from_secs(1), "Mirror waited on the {shadow} upstream: {took:?}");
    }
    let accepted: Vec<String> = by_route.iter().map(|(_, id, _)| id.clone()).collect();
    let rb = read_back(&bootstrap, &topic, &accepted, Duration::from_secs(30)).await;
    reconcile("upstream-faults", &accepted, &rb, 0);
    for (shadow, id, took) in &by_route {
        let r = rb.one(id);
        let cf = &r["counterfactual"];
        let error = cf["error"].as_str().unwrap_or_default();
        let status = cf["status_code"].as_u64().unwrap_or(0);
        println!("[upstream-faults] {shadow}: status {status}, error {error:?}, latency {} ms", cf["latency_ms"]);
        assert_eq!(r["status"], "PAIR_STATUS_COMPLETE", "the shadow half is present, with its error: {r}");
        assert_eq!(cf["present"], true);
        assert_eq!(cf["source"], "untaken");
        match *shadow {
            "hang" => {
                assert!(error.starts_with("timeout"), "{error}");
                assert_eq!(status, 0);
                let latency = cf["latency_ms"].as_f64().unwrap();
                assert!(latency >= 1900.0, "cut off at the 2 s route timeout: {latency}");
                assert!(took.as_secs_f64() * 1000.0 < latency, "Mirror returned before the shadow call ended");
            }
            "s500" => {
                assert_eq!(error, "http status 500");
                assert_eq!(status, 500);
                assert_eq!(cf["body"]["error"]["message"], "upstream exploded", "the error body is kept");
            }
            "notjson" => {
                assert_eq!(error, "response body is not JSON");
                assert_eq!(status, 200);
                assert_eq!(cf["body_is_text"], true);
                assert_eq!(cf["body"], "<html>gateway says hi</html>");
            }
            "reset" => {
                assert_eq!(status, 0);
                assert!(!error.is_empty() && !error.starts_with("timeout"), "a reset is a transport error: {error}");
            }
            "refused" => {
                assert_eq!(status, 0);
                assert!(error.starts_with("connect error"), "{error}");
            }
            _ => unreachable!(),
        }
    }
    let m = scrape(admin).await;
    for (shadow, outcome) in [("hang", "timeout"), ("s500", "http_error"), ("notjson", "invalid_body"), ("reset", "transport_error"), ("refused", "transport_error")] {
        let series = format!(r#"untaken_shadow_calls_total{{route="{shadow}",outcome="{outcome}"}}"#);
        assert_eq!(metric(&m, &series), 1.0, "{series}\n{m}");
    }
    s.stop().await;
    println!("[upstream-faults] took {:?}", t0.elapsed());
}

// ----- 6. shedding ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedding_reasons() {
    let t0 = Instant::now();
    let bootstrap = shared_bootstrap_async().await;

    // (a) The pairing table (max 2) and the queue (capacity 1) fill while the shadow hangs.
    let topic_a = common::app::topic("shed-pairing");
    let fast = upstream("fast", answer(5)).await;
    let hang = upstream("reasoning", Behaviour::Hang).await;
    let spool_a = tempfile::tempdir().unwrap();
    let mut setup = config(&fast, &hang, &bootstrap, &topic_a, spool_a.path());
    setup.server.shutdown_grace = secs(1);
    setup.routes.get_mut("reasoning").unwrap().timeout = secs(2);
    setup.queue.capacity = 1;
    setup.pairing.max_pending = 2;
    let a = start_in_process(&setup).await;
    let mut accepted_a = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    // A concurrent burst, so the one-slot queue can fill as well as the table.
    let burst = (0..12).map(|i| {
        let mut c = a.client.clone();
        async move { c.mirror(req(&format!("pf-{i}"), "")).await.unwrap().into_inner() }
    });
    for resp in futures::future::join_all(burst).await {
        if resp.sampled {
            accepted_a.push(resp.pair_id);
        } else {
            *reasons.entry(resp.reason).or_default() += 1;
        }
    }
    println!("[shed] pairing/queue burst of 12: {} accepted, shed {reasons:?}", accepted_a.len());
    assert!((1..=2).contains(&accepted_a.len()), "at most max_pending = 2 pairs pending");
    assert!(reasons.keys().all(|r| r == "pairing_full" || r == "queue_full"), "{reasons:?}");
    // Then one at a time, once the queue is empty: the table (2 pending, shadows hanging
    // for 2 s) is what refuses.
    wait_metrics(a.app.admin_addr, "the queue emptied", Duration::from_secs(2), |m| {
        metric(m, "untaken_queue_depth") == 0.0 && !m.is_empty()
    })
    .await;
    let burst_accepted = accepted_a.len();
    let mut seq: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..4 {
        let resp = a.client.clone().mirror(req(&format!("ps-{i}"), "")).await.unwrap().into_inner();
        if resp.sampled {
            accepted_a.push(resp.pair_id);
        } else {
            *seq.entry(resp.reason).or_default() += 1;
        }
    }
    println!("[shed] then 4 in sequence: {} pending in all, shed {seq:?}", accepted_a.len());
    assert_eq!(accepted_a.len(), 2, "the table fills to max_pending = 2");
    assert_eq!(seq.keys().collect::<Vec<_>>(), vec!["pairing_full"], "one at a time, only the table refuses: {seq:?}");
    assert_eq!(seq["pairing_full"], 4 - (2 - burst_accepted));
    for (k, v) in seq {
        *reasons.entry(k).or_default() += v;
    }
    assert!(reasons.get("pairing_full").copied().unwrap_or(0) >= 3, "{reasons:?}");
    let m = scrape(a.app.admin_addr).await;
    assert_eq!(shed(&m, "pairing_full") as usize, reasons.get("pairing_full").copied().unwrap_or(0), "{}", interesting(&m));
    assert_eq!(shed(&m, "queue_full") as usize, reasons.get("queue_full").copied().unwrap_or(0), "{}", interesting(&m));
    assert_eq!(shed(&m, "pairing_full") + shed(&m, "queue_full"), (16 - accepted_a.len()) as f64);

    // (b) Route limits, one shadow route each.
    let topic_b = common::app::topic("shed-limits");
    let rl = upstream("rl", answer(5)).await;
    let budget = upstream("budget", answer(5)).await;
    let conc = upstream("conc", Behaviour::Hang).await;
    let spool_b = tempfile::tempdir().unwrap();
    let mut setup = config(&fast, &rl, &bootstrap, &topic_b, spool_b.path());
    setup.server.shutdown_grace = secs(1);
    setup.routes = routes([
        ("fast", RouteConfig { counterfactual: Some("rl".into()), ..route("fast", fast.url()) }),
        ("rl", RouteConfig { max_rps: Some(1), ..route("rl", rl.url()) }),
        // Room for one call's estimated cost ($0.00504: ~490 input tokens, 1,024 output),
        // and not for another once the first one's spend ($0.0004) is in.
        ("budget", RouteConfig { budget_usd_per_hour: Some(0.0052), ..route("budget", budget.url()) }),
        ("conc", RouteConfig { max_concurrency: Some(1), ..route("conc", conc.url()) }),
    ]);
    let b = start_in_process(&setup).await;
    let admin = b.app.admin_addr;
    let mut accepted_b = Vec::new();
    let send = |id: String, shadow: &'static str| {
        let mut c = b.client.clone();
        async move { c.mirror(req(&id, shadow)).await.unwrap().into_inner() }
    };
    let tally = |resps: Vec<MirrorResponse>, accepted: &mut Vec<String>| {
        let mut shed: BTreeMap<String, usize> = BTreeMap::new();
        for r in resps {
            if r.sampled {
                accepted.push(r.pair_id);
            } else {
                *shed.entry(r.reason).or_default() += 1;
            }
        }
        shed
    };
    // Rate: a burst of 10 at max_rps = 1.
    let mut resps = Vec::new();
    for i in 0..10 {
        resps.push(send(format!("rl-{i}"), "rl").await);
    }
    let before = accepted_b.len();
    let rl_shed = tally(resps, &mut accepted_b);
    let rl_ok = accepted_b.len() - before;
    println!("[shed] rate burst: {rl_ok} admitted, shed {rl_shed:?}");
    assert!((1..=2).contains(&rl_ok), "{rl_ok} admitted at 1 rps");
    assert_eq!(rl_shed.get("rate_limited").copied().unwrap_or(0), 10 - rl_ok, "{rl_shed:?}");
    // Concurrency: the first call holds the only slot while its upstream hangs.
    let mut resps = Vec::new();
    for i in 0..5 {
        resps.push(send(format!("cc-{i}"), "conc").await);
    }
    let before = accepted_b.len();
    let cc_shed = tally(resps, &mut accepted_b);
    println!("[shed] concurrency: {} admitted, shed {cc_shed:?}", accepted_b.len() - before);
    assert_eq!(accepted_b.len() - before, 1);
    assert_eq!(cc_shed.get("concurrency_limited").copied(), Some(4), "{cc_shed:?}");
    // Budget: the first call is admitted and charged; then the budget is spent.
    let first = send("bu-0".into(), "budget").await;
    assert!(first.sampled, "{first:?}");
    accepted_b.push(first.pair_id);
    wait_metrics(admin, "the budget route charged", Duration::from_secs(10), |m| {
        metric(m, r#"untaken_shadow_spend_usd_total{route="budget"}"#) > 0.0
    })
    .await;
    let mut resps = Vec::new();
    for i in 1..4 {
        resps.push(send(format!("bu-{i}"), "budget").await);
    }
    let bu_shed = tally(resps, &mut accepted_b);
    println!("[shed] budget: shed {bu_shed:?}");
    assert_eq!(bu_shed.get("budget_exhausted").copied(), Some(3), "{bu_shed:?}");
    let m = scrape(admin).await;
    assert_eq!(shed(&m, "rate_limited"), (10 - rl_ok) as f64, "{}", interesting(&m));
    assert_eq!(shed(&m, "concurrency_limited"), 4.0, "{}", interesting(&m));
    assert_eq!(shed(&m, "budget_exhausted"), 3.0, "{}", interesting(&m));

    // Everything admitted is published (the hanging ones after their 2 s timeout).
    let rb = read_back(&bootstrap, &topic_a, &accepted_a, Duration::from_secs(30)).await;
    reconcile("shed-pairing", &accepted_a, &rb, 0);
    let rb = read_back(&bootstrap, &topic_b, &accepted_b, Duration::from_secs(30)).await;
    reconcile("shed-limits", &accepted_b, &rb, 0);
    a.stop().await;
    b.stop().await;
    println!("[shed] took {:?}", t0.elapsed());
}

/// A budget with calls in flight: a slow upstream (1 s) and a burst of 20 sampled
/// requests, all arriving before any answer. Admission reserves each call's
/// estimated cost, so the route's spend ends within its budget plus the estimate
/// error of a call; counting only finished calls, every call of the burst was let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_holds_with_calls_in_flight() {
    let bootstrap = shared_bootstrap_async().await;
    let topic = common::app::topic("budget-inflight");
    let fast = upstream("fast", answer(5)).await;
    let slow = upstream("slow", answer(1000)).await;
    let spool = tempfile::tempdir().unwrap();
    let budget = 0.005;
    let mut setup = config(&fast, &slow, &bootstrap, &topic, spool.path());
    setup.routes = routes([
        ("fast", RouteConfig { counterfactual: Some("slow".into()), ..route("fast", fast.url()) }),
        ("slow", RouteConfig { budget_usd_per_hour: Some(budget), ..route("slow", slow.url()) }),
    ]);
    let s = start_in_process(&setup).await;
    let mut body: Value = serde_json::from_slice(&common::app::chat(1)).unwrap();
    body["max_tokens"] = 50.into();
    let body = serde_json::to_vec(&body).unwrap();
    let estimate = untaken::sidecar::admission::estimate_cost(&body, 1.10, 4.40);

    let burst = (0..20).map(|i| {
        let (mut c, body) = (s.client.clone(), body.clone());
        async move {
            let mut r = req(&format!("bud-{i}"), "");
            r.request_body = body;
            c.mirror(r).await.unwrap().into_inner()
        }
    });
    let resps = futures::future::join_all(burst).await;
    let admitted = resps.iter().filter(|r| r.sampled).count();
    let shed = resps.iter().filter(|r| r.reason == "budget_exhausted").count();
    assert_eq!(admitted + shed, 20, "{resps:?}");
    let m = wait_metrics(s.app.admin_addr, "every admitted call answered", Duration::from_secs(30), |m| {
        metric(m, r#"untaken_shadow_calls_total{route="slow",outcome="ok"}"#) == admitted as f64
    })
    .await;
    let spend = metric(&m, r#"untaken_shadow_spend_usd_total{route="slow"}"#);
    let per_call = spend / admitted as f64;
    println!("[budget] {admitted} admitted, {shed} shed; spend {spend:.6} of {budget} (a call: {per_call:.6}, estimated {estimate:.6})");
    assert!(admitted >= 1, "a budget of {budget} fits at least one call estimated at {estimate}");
    assert!(shed > 0, "the burst costs more than the budget");
    assert!(spend <= budget + (per_call - estimate).max(0.0), "spend {spend} passed the budget {budget} by more than a call's estimate error");
    s.stop().await;
}

/// Bytes in the spool's segment files (`*.seg`) in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_drops_are_counted_and_the_spool_stays_bounded() {
    let t0 = Instant::now();
    let topic = common::app::topic("spool-full");
    let (fast, reasoning) = (upstream("fast", answer(5)).await, upstream("reasoning", answer(5)).await);
    let spool = tempfile::tempdir().unwrap();
    let mut setup = config(&fast, &reasoning, &dead_addr(), &topic, spool.path());
    setup.server.shutdown_grace = secs(1);
    setup.sink.kafka.delivery_timeout = secs(1);
    setup.spool.max_bytes = 4096;
    let mut s = start_in_process(&setup).await;
    let admin = s.app.admin_addr;

    // Watch the spool directory the whole time.
    let max_seen = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (max_seen, watching, dir) = (max_seen.clone(), watching.clone(), spool.path().to_path_buf());
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                max_seen.fetch_max(dir_bytes(&dir), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let n = 12;
    let mut accepted = Vec::new();
    for i in 0..n {
        // Small bodies, so a few records fit in 4 KiB and the rest do not.
        let mut r = req(&format!("sf-{i}"), "");
        r.request_body = br#"{"model":"fast-model","messages":[{"role":"user","content":"hi"}]}"#.to_vec();
        let resp = s.client.mirror(r).await.unwrap().into_inner();
        assert!(resp.sampled);
        accepted.push(resp.pair_id);
    }
    let full = r#"untaken_pairs_dropped_total{reason="spool_full"}"#;
    let m = wait_metrics(admin, "every pair spooled or dropped", Duration::from_secs(30), |m| {
        metric(m, SPOOLED) + metric(m, full) == n as f64
    })
    .await;
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    let max = max_seen.load(Ordering::Relaxed).max(dir_bytes(spool.path()));
    println!(
        "[spool-full] {n} accepted: {} spooled, {} dropped (spool_full); spool at most {max} bytes on disk, gauge {}",
        metric(&m, SPOOLED),
        metric(&m, full),
        metric(&m, "untaken_spool_bytes")
    );
    assert!(metric(&m, full) > 0.0, "{}", interesting(&m));
    assert!(metric(&m, SPOOLED) > 0.0, "a small record fits in 4 KiB: {}", interesting(&m));
    assert!(max <= 4096, "spool grew to {max} bytes, past max_bytes = 4096");
    assert!(metric(&m, "untaken_spool_bytes") <= 4096.0);
    assert_eq!(dropped(&m), metric(&m, full), "no other drops: {}", interesting(&m));
    s.stop().await;
    println!("[spool-full] took {:?}", t0.elapsed());
}

// ----- regressions ------------------------------------------------------------------
//
// Each of these failed against an earlier src/ (a refused spool write stalled delivery;
// the shutdown replay was unbounded; the runtime waited on the start-up metadata probe).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_refusal_does_not_block_delivery_after_kafka_recovers() {
    let (mut broker, bootstrap, topic) = killed_broker("spool-refusal").await;
    let (fast, reasoning) = (upstream("fast", answer(5)).await, upstream("reasoning", answer(5)).await);
    let spool = tempfile::tempdir().unwrap();
    let mut setup = config(&fast, &reasoning, &bootstrap, &topic, spool.path());

    setup.sink.kafka.delivery_timeout = secs(3);
    setup.spool.max_bytes = 4096;
    let mut s = start_in_process(&setup).await;
    let admin = s.app.admin_addr;
    // One pair too big for the 4 KiB spool, while Kafka is down: failed, refused, dropped (counted).
    let mut big = req("big-0", "");
    big.request_body =
        serde_json::to_vec(&serde_json::json!({"model": "fast-model", "messages": [{"role": "user", "content": "x".repeat(5000)}]})).unwrap();
    assert!(s.client.mirror(big).await.unwrap().into_inner().sampled);
    wait_metrics(admin, "the big pair dropped", Duration::from_secs(30), |m| metric(m, r#"untaken_pairs_dropped_total{reason="spool_full"}"#) == 1.0).await;
    // Kafka comes back; pairs from now on must reach it.
    broker.restart_async().await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        let resp = s.client.mirror(req(&format!("after-{i}"), "")).await.unwrap().into_inner();
        assert!(resp.sampled);
        accepted.push(resp.pair_id);
    }
    let rb = read_back(&bootstrap, &topic, &accepted, Duration::from_secs(30)).await;
    let m = scrape(admin).await;
    println!("[spool-refusal] metrics:\n{}", interesting(&m));
    reconcile("spool-refusal", &accepted, &rb, MAX_DUPS_AT_A_KILL);
    assert_eq!(dropped(&m), 1.0, "only the oversized pair is lost: {}", interesting(&m));
    s.stop().await;
}

/// An outage long enough to fill the spool, then Kafka back: pairs from then on go to
/// Kafka while the spool drains, instead of meeting the full spool (`spool_full`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_fills_the_spool_new_pairs_reach_kafka_while_it_drains() {
    let t0 = Instant::now();
    let (mut broker, bootstrap, topic) = killed_broker("full-then-back").await;
    let (fast, reasoning) = (upstream("fast", answer(5)).await, upstream("reasoning", answer(5)).await);
    let spool = tempfile::tempdir().unwrap();
    // Long enough for librdkafka to reconnect to the restarted broker.
    let mut setup = config(&fast, &reasoning, &bootstrap, &topic, spool.path());

    setup.sink.kafka.delivery_timeout = secs(5);
    setup.spool.max_bytes = 32 * 1024;
    let mut s = start_in_process(&setup).await;
    let admin = s.app.admin_addr;
    let full = r#"untaken_pairs_dropped_total{reason="spool_full"}"#;

    let n = 40;
    for i in 0..n {
        assert!(s.client.mirror(req(&format!("out-{i}"), "")).await.unwrap().into_inner().sampled);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = wait_metrics(admin, "every outage pair spooled or dropped", Duration::from_secs(60), |m| {
        metric(m, SPOOLED) + metric(m, full) == n as f64
    })
    .await;
    let dropped_in_outage = metric(&m, full);
    println!("[full-then-back] outage: {} spooled, {dropped_in_outage} dropped (spool full)", metric(&m, SPOOLED));
    assert!(dropped_in_outage > 0.0, "the outage must fill the 32 KiB spool: {}", interesting(&m));

    broker.restart_async().await;
    let back = Instant::now();
    let mut accepted = Vec::new();
    for i in 0..60 {
        let resp = s.client.mirror(req(&format!("back-{i}"), "")).await.unwrap().into_inner();
        assert!(resp.sampled);
        accepted.push(resp.pair_id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rb = read_back(&bootstrap, &topic, &accepted, Duration::from_secs(60)).await;
    let m = wait_metrics(admin, "the spool drained", Duration::from_secs(60), |m| metric(m, SPOOL_RECORDS) == 0.0 && !m.is_empty()).await;
    println!("[full-then-back] {} pairs in the {:?} after Kafka came back; metrics:\n{}", accepted.len(), back.elapsed(), interesting(&m));
    let missing = accepted.iter().filter(|id| !rb.records.contains_key(*id)).count();
    assert_eq!(missing, 0, "pairs accepted after Kafka came back were lost: {}", interesting(&m));
    assert_eq!(metric(&m, full), dropped_in_outage, "no pair is dropped as spool_full once Kafka is back: {}", interesting(&m));
    s.stop().await;
    println!("[full-then-back] took {:?}", t0.elapsed());
}

/// What the drain may add to `shutdown_grace` when Kafka is slow: a second for the
/// pairs the grace cut short, up to 2 s for the gRPC server to close, and the disk
/// writes of spooling what is left (the Kubernetes manifests give grace + 10 s).
const DRAIN_MARGIN: Duration = Duration::from_secs(6);

/// SIGTERM while a real broker throttles the sidecar's producer with Kafka's own
/// client quota (`producer_byte_rate`): acknowledgements keep coming, slowly, so the
/// stall detection does not take over, and more pairs are waiting than the delivery
/// window (4,096) and the publisher's hand-off queue hold. The drain must still end
/// within the grace plus a fixed margin, every accepted pair on the topic or in the
/// fsynced spool, and duplicates (topic and spool both) bounded by what Kafka can
/// have had in flight when the rest was purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_throttled_kafka_spools_the_rest_within_grace_plus_margin() {
    let t0 = Instant::now();
    let broker = Broker::start_async().await;
    let bootstrap = broker.bootstrap();
    let topic = common::app::topic("throttled");
    create_topic_async(&bootstrap, &topic, 1).await;
    // The sidecar's producer has client.id "untaken": 50 KB/s, some 10 pairs a second,
    // so however slowly this machine sends the load, most of it is still waiting.
    common::kafka::set_producer_byte_rate_async(&bootstrap, "untaken", 50_000).await;
    let (fast, reasoning) = (upstream("fast", answer(1)).await, upstream("reasoning", answer(1)).await);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Throttled acknowledgements come in bursts seconds apart: a stall timeout past them
    // keeps the records in memory (the case a drain without a deadline never finished).
    // And a delivery timeout past the test, so no record times out into the spool first.
    let mut setup = config(&fast, &reasoning, &bootstrap, &topic, &spool);

    setup.server.shutdown_grace = secs(2);

    setup.sink.kafka.delivery_timeout = secs(600);

    setup.sink.kafka.stall_timeout = secs(600);
    setup.spool.max_bytes = 512 * 1024 * 1024;
    let n = 7000;
    // Every request is to be sampled: room for all of them in flight at once, since the
    // shadow calls (one thread) may fall behind 32 senders on a loaded machine.
    setup.routes.get_mut("reasoning").unwrap().max_concurrency = Some(n as u32);
    setup.queue.capacity = 16384;
    setup.pairing.max_pending = 50000;
    let mut sc = spawn_binary(&mut setup, dir.path(), "sidecar.log").await;
    let client = MirrorClient::connect(format!("http://{}", sc.grpc)).await.unwrap();

    let next = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..32)
        .map(|_| {
            let (mut c, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return accepted;
                    }
                    let resp = c.mirror(req(&format!("th-{i}"), "")).await.expect("Mirror answers").into_inner();
                    assert!(resp.sampled, "{resp:?}");
                    accepted.push(resp.pair_id);
                }
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for s in senders {
        accepted.extend(s.await.unwrap());
    }
    // Every pair built, so the records wait in the sidecar (or its spool), not in the engine.
    let m = wait_metrics(sc.admin, "every pair built", Duration::from_secs(120), |m| metric_sum(m, "untaken_pairs_built_total") == n as f64).await;
    let (published, spooled) = (metric(&m, "untaken_pairs_published_total"), metric(&m, SPOOLED));
    println!(
        "[throttled] {n} accepted in {:?}; at SIGTERM {published} published, {spooled} spooled, {} waiting in memory",
        t0.elapsed(),
        n as f64 - published - spooled
    );
    let window = (untaken::sidecar::publisher::MAX_IN_FLIGHT + untaken::sidecar::finish::RECORDS_CHANNEL) as f64;
    assert!(n as f64 - published - spooled > window, "more must wait than the delivery window holds: {}", interesting(&m));

    let term = Instant::now();
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(120)).await;
    let took = term.elapsed();
    println!("[throttled] exit {status:?} {took:?} after SIGTERM (grace 2 s)");
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", sc.log_tail(30));
    assert!(took <= Duration::from_secs(2) + DRAIN_MARGIN, "the drain took {took:?}, past grace + {DRAIN_MARGIN:?}:\n{}", sc.log_tail(30));

    // Everything is on the topic or in the spool the next start will replay.
    let on_topic = tokio::task::block_in_place(|| common::kafka::record_count(&bootstrap, &topic)) as usize;
    let got = consume_async(&bootstrap, &topic, on_topic, Duration::from_secs(60)).await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    let mut smallest = usize::MAX;
    for c in &got {
        let v: Value = serde_json::from_slice(&c.payload).unwrap();
        *copies.entry(v["pair_id"].as_str().unwrap().to_string()).or_default() += 1;
        smallest = smallest.min(c.payload.len());
    }
    let (disk, found) = untaken::sink::spool::Spool::open(&spool, setup.spool.max_bytes).unwrap();
    assert_eq!(found.corrupt, 0, "{found:?}");
    while let Some(batch) = disk.oldest().unwrap() {
        for r in &batch.records {
            *copies.entry(r.pair_id.clone()).or_default() += 1;
            smallest = smallest.min(r.payload.len());
        }
        disk.mark_delivered(&batch, 0..batch.records.len());
        disk.remove(batch).unwrap();
    }
    let missing = accepted.iter().filter(|id| !copies.contains_key(*id)).count();
    let dups: usize = copies.values().map(|c| c - 1).sum();
    println!(
        "[throttled] {} on the topic, {} in the spool; {missing} missing, {dups} duplicates; took {:?} in all",
        got.len(),
        found.records,
        t0.elapsed()
    );
    assert_eq!(missing, 0, "accepted pairs neither on the topic nor in the spool");
    assert_eq!(copies.len(), n as usize, "only accepted pairs");
    // A duplicate is a record Kafka wrote whose acknowledgement the purge cut off: at most
    // what the producer had in flight, 5 requests (max.in.flight with idempotence) of at
    // most 1 MiB (batch.size) each.
    let in_flight_bound = 5 * 1024 * 1024 / smallest.max(1);
    assert!(dups <= in_flight_bound, "{dups} duplicates, more than Kafka can have had in flight ({in_flight_bound})");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_kafka_down_exits_within_grace_plus_margin() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let topic = common::app::topic("term-kafka-down");
    let (fast, reasoning) = (upstream("fast", answer(5)).await, upstream("reasoning", answer(5)).await);
    // First run: fill the spool, then SIGKILL.
    let mut setup = config(&fast, &reasoning, &dead_addr(), &topic, &spool);

    setup.sink.kafka.delivery_timeout = secs(1);
    let mut sc = spawn_binary(&mut setup, dir.path(), "first.log").await;
    let mut client = MirrorClient::connect(format!("http://{}", sc.grpc)).await.unwrap();
    for i in 0..5 {
        assert!(client.mirror(req(&format!("kd-{i}"), "")).await.unwrap().into_inner().sampled);
    }
    wait_metrics(sc.admin, "5 pairs spooled", Duration::from_secs(30), |m| metric(m, SPOOL_RECORDS) == 5.0).await;
    sc.sigkill();
    // Second run: Kafka still down, the production delivery timeout; replay starts at once
    // and its sends wait for Kafka. SIGTERM once start-up's metadata probe (10 s) is over.
    setup.sink.kafka.delivery_timeout = secs(30);
    setup.server.shutdown_grace = secs(1);
    let started = Instant::now();
    let mut sc = spawn_binary(&mut setup, dir.path(), "second.log").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sc.log_text().contains("kafka not reachable yet") {
        assert!(Instant::now() < deadline, "start-up's metadata probe never gave up:\n{}", sc.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("[term-kafka-down] metadata probe over {:?} after start", started.elapsed());
    let term = Instant::now();
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(40)).await;
    let took = term.elapsed();
    println!("[term-kafka-down] exit {status:?} {took:?} after SIGTERM (grace 1 s)");
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", sc.log_tail(20));
    // The deployment's contract: terminationGracePeriodSeconds >= shutdown_grace + 10 s.
    assert!(took <= Duration::from_secs(11), "exit took {took:?}, past grace + 10 s:\n{}", sc.log_tail(20));
    let (_, found) = untaken::sink::spool::Spool::open(&spool, 64 * 1024 * 1024).unwrap();
    assert_eq!((found.records, found.corrupt), (5, 0), "the spool still holds every pair");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_sigterm_with_kafka_down_exits_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let topic = common::app::topic("early-term");
    let (fast, reasoning) = (upstream("fast", answer(5)).await, upstream("reasoning", answer(5)).await);
    let mut setup = config(&fast, &reasoning, &dead_addr(), &topic, &dir.path().join("spool"));

    setup.server.shutdown_grace = secs(1);
    let mut sc = spawn_binary(&mut setup, dir.path(), "sidecar.log").await;
    let term = Instant::now();
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(30)).await;
    let took = term.elapsed();
    println!("[early-term] exit {status:?} {took:?} after SIGTERM");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // Nothing to drain: grace (1 s) plus the 5 s producer flush bound is generous.
    assert!(took <= Duration::from_secs(6), "idle drain took {took:?}:\n{}", sc.log_tail(10));
}
