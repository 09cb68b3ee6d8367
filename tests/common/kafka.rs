//! Real-Kafka test harness: a genuine Apache Kafka broker (KRaft, one node,
//! combined broker + controller) that the tests start themselves, plus small
//! blocking helpers to create topics and read records back.
//!
//! What it owns:
//! - `tests/kafka/pom.xml` names the broker jars; `tests/kafka/broker.sh
//!   fetch` resolves them once with Maven into a cache dir
//!   (`$UNTAKEN_KAFKA_CACHE`, default `~/.cache/untaken/kafka-<version>`) and
//!   later runs reuse it. `broker.sh props` writes server.properties (the same
//!   settings benches/ use), `broker.sh format` / `broker.sh run` format the
//!   KRaft storage and exec `java -cp "$LIBS/*" kafka.Kafka server.properties`.
//! - [`Broker`]: one broker in its own temp work dir (server.properties,
//!   `data/` = log.dirs, `broker.log`, `broker.out`) on two free loopback
//!   ports. [`Broker::kill`] SIGKILLs it, [`Broker::restart`] brings it back
//!   on the same ports and data dir (records survive a SIGKILL: they are in
//!   the page cache), [`Broker::stop`] shuts it down cleanly. Drop kills it
//!   and removes the work dir.
//! - [`shared_bootstrap`]: one broker per test process, started lazily on
//!   first use and kept for the life of the process; or, when
//!   `UNTAKEN_TEST_BROKERS` is set, that external cluster instead.
//! - [`create_topic`], [`consume`], [`record_count`]: blocking helpers.
//!
//! Failing to start a broker panics with the reason and the tail of the
//! broker log. Nothing is ever skipped silently.
//!
//! # Blocking and async tests
//!
//! Every function here is plain blocking code that needs no Tokio runtime,
//! so it can be called from anywhere, including inside `#[tokio::test]`.
//! But it blocks the calling thread (start: ~2-5 s; restart after a SIGKILL:
//! ~4-6 s; consume: up to its timeout). In a current-thread
//! `#[tokio::test]` that freezes every other task on the runtime, e.g. an
//! in-process sidecar under test. Where that matters, use the `*_async`
//! variants ([`Broker::start_async`], [`Broker::restart_async`],
//! [`shared_bootstrap_async`], [`create_topic_async`], [`consume_async`]),
//! which do the blocking parts on Tokio's blocking pool.
//!
//! # No broker outlives the tests
//!
//! A broker in a `static` (the shared one) is never dropped, and a test
//! process can die without unwinding. `PR_SET_PDEATHSIG` would not help: it
//! fires when the spawning *thread* exits, and libtest runs each test on its
//! own short-lived thread. Instead `broker.sh run` is given this process's
//! pid and, before it `exec`s java (so the child pid *is* the java pid and
//! `Child::kill` hits java directly), forks a tiny watcher that checks the
//! test process with `kill -0` once a second; when the test process is gone
//! it SIGKILLs the broker and deletes its work dir. So at most ~1 s after the
//! test binary exits, for whatever reason, its brokers are gone.

use std::fs;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};

/// Env var naming an external cluster (`host:port,...`) to use instead of
/// starting a broker in [`shared_bootstrap`].
pub const BROKERS_ENV: &str = "UNTAKEN_TEST_BROKERS";

/// How long [`Broker::start`] / [`Broker::restart`] wait for the broker to
/// answer metadata with every partition led.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long [`Broker::stop`] waits for a clean shutdown before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/broker.sh")
}

/// A Kafka broker process owned by the test. See the module docs.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    controller_port: u16,
    // Declared last: dropped after `Drop::drop` has killed the process.
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a dedicated broker on fresh loopback ports and waits (up to
    /// [`READY_TIMEOUT`]) until it serves metadata. Panics with the broker
    /// log tail if it cannot.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Like [`Broker::start`], with extra `server.properties` lines (later
    /// keys override the defaults), e.g. `("message.max.bytes", "200000")`.
    pub fn start_with(props: &[(&str, &str)]) -> Broker {
        fetch_jars();
        let mut last_err = String::new();
        // Free ports are picked by binding port 0 and closing again, so
        // another process can take one before the broker binds it; then
        // start over on new ports (up to 3 times).
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new()
                .prefix("untaken-kafka-")
                .tempdir()
                .expect("kafka harness: cannot create a temp dir for the broker");
            let (port, controller_port) = free_port_pair();
            let mut broker = Broker {
                child: None,
                port,
                controller_port,
                dir,
            };
            broker.write_config(props);
            broker.format();
            broker.spawn();
            match broker.wait_ready(READY_TIMEOUT) {
                Ok(()) => return broker,
                Err(e) => {
                    let port_clash = broker.log_tail(200).contains("Address already in use");
                    last_err = broker.failure_report("start", &e);
                    broker.kill();
                    if !(port_clash && attempt < 3) {
                        break;
                    }
                    eprintln!("kafka harness: port clash on attempt {attempt}, retrying");
                }
            }
        }
        panic!("{last_err}");
    }

    /// [`Broker::start`] on Tokio's blocking pool.
    pub async fn start_async() -> Broker {
        tokio::task::spawn_blocking(Broker::start)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// `127.0.0.1:<port>` of the PLAINTEXT listener. Stable across restarts.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The PLAINTEXT port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The work dir: server.properties, data/ (log.dirs), broker.log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log4j log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// The pid of the java process, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the broker process is alive (it may not be ready).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs the broker and reaps it. No-op if it is not running. The
    /// data dir is kept for [`Broker::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Clean shutdown: SIGTERM, wait up to 30 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        self.kill();
    }

    /// Starts the broker again on the same ports and data dir (killing it
    /// first if it is still running) and waits until it serves metadata with
    /// every existing partition led. After a SIGKILL this takes a few
    /// seconds longer than a first start: the controller first has to expire
    /// the dead broker's session (broker.session.timeout.ms=3000).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(e) = self.wait_ready(READY_TIMEOUT) {
            let report = self.failure_report("restart", &e);
            self.kill();
            panic!("{report}");
        }
    }

    /// [`Broker::restart`] without blocking the async runtime.
    pub async fn restart_async(&mut self) {
        self.kill();
        self.spawn();
        let deadline = Instant::now() + READY_TIMEOUT;
        let bootstrap = self.bootstrap();
        let probe = Arc::new(probe_client(&bootstrap));
        let mut last;
        loop {
            if let Some(e) = self.exited() {
                let report = self.failure_report("restart", &e);
                self.kill();
                panic!("{report}");
            }
            let p = probe.clone();
            let answer = tokio::task::spawn_blocking(move || probe_once(&p))
                .await
                .expect("kafka harness: readiness probe panicked");
            match answer {
                Ok(()) => return,
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                let e = format!("not ready after {READY_TIMEOUT:?}; last probe: {last}");
                let report = self.failure_report("restart", &e);
                self.kill();
                panic!("{report}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last `lines` lines of the broker log (and of java's own
    /// stdout/stderr, where JVM-level failures land).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["broker.out", "broker.log"] {
            let tail = tail_file(&self.dir.path().join(name), lines);
            if !tail.trim().is_empty() {
                out.push_str(&format!(
                    "----- {name} (last {lines} lines) -----\n{tail}\n"
                ));
            }
        }
        out
    }

    /// server.properties from `broker.sh props`: the settings the benchmarks use too
    /// (benches/common.sh), with `extra` replacing or adding keys.
    fn write_config(&self, extra: &[(&str, &str)]) {
        let mut args = vec![
            "props".to_string(),
            self.dir.path().display().to_string(),
            self.port.to_string(),
            self.controller_port.to_string(),
        ];
        args.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        self.broker_sh(&args, "writing server.properties");
    }

    fn format(&self) {
        let args = ["format".to_string(), self.dir.path().display().to_string(), cluster_id()];
        self.broker_sh(&args, "formatting KRaft storage");
    }

    /// Runs `broker.sh ARGS...` to completion; panics with its output and the broker
    /// log tail if it fails.
    fn broker_sh(&self, args: &[String], what: &str) {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kafka harness: cannot run bash tests/kafka/broker.sh");
        if !out.status.success() {
            panic!(
                "kafka harness: {what} failed ({}):\n{}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "kafka harness: broker already running"
        );
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.out"))
            .expect("kafka harness: cannot open broker.out");
        let err = out
            .try_clone()
            .expect("kafka harness: cannot dup broker.out");
        let child = Command::new("bash")
            .arg(script())
            .arg("run")
            .arg(self.dir.path())
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("kafka harness: cannot spawn bash tests/kafka/broker.sh run");
        self.child = Some(child);
    }

    /// `Some(reason)` if the process has exited.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("broker process exited early ({status})")),
            Ok(None) => None,
            Err(e) => Some(format!("cannot query broker process: {e}")),
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let probe = probe_client(&self.bootstrap());
        let mut last;
        loop {
            if let Some(e) = self.exited() {
                return Err(e);
            }
            match probe_once(&probe) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after {timeout:?}; last probe: {last}"));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn failure_report(&self, what: &str, err: &str) -> String {
        format!(
            "kafka harness: broker {what} failed on {} (work dir {}): {err}\n{}",
            self.bootstrap(),
            self.dir.path().display(),
            self.log_tail(60)
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The external cluster from `UNTAKEN_TEST_BROKERS`, if set and non-empty.
pub fn external_bootstrap() -> Option<String> {
    std::env::var(BROKERS_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Bootstrap servers for tests that just need *a* broker: the external
/// cluster from `UNTAKEN_TEST_BROKERS` if set, else one broker per test
/// process, started on first call and kept until the process exits (then
/// the watcher in broker.sh kills it). Tests sharing it must use their own
/// topic names. Tests that kill or restart the broker need their own
/// [`Broker::start`]. If starting fails, every caller panics with the same
/// report (no repeated 90 s attempts).
pub fn shared_bootstrap() -> String {
    if let Some(b) = external_bootstrap() {
        return b;
    }
    static SHARED: OnceLock<Result<Broker, String>> = OnceLock::new();
    let shared = SHARED
        .get_or_init(|| std::panic::catch_unwind(Broker::start).map_err(|p| panic_message(&*p)));
    match shared {
        Ok(b) => b.bootstrap(),
        Err(msg) => panic!("kafka harness: shared broker unavailable: {msg}"),
    }
}

/// [`shared_bootstrap`] on Tokio's blocking pool.
pub async fn shared_bootstrap_async() -> String {
    tokio::task::spawn_blocking(shared_bootstrap)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Creates `topic` with `partitions` partitions (replication factor 1) and
/// waits until every partition has a leader. An existing topic is fine.
/// Panics on other errors or after 30 s.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .expect("kafka harness: cannot create AdminClient");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics([&new], &opts))
        .unwrap_or_else(|e| panic!("kafka harness: create_topics({topic}) failed: {e}"));
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => panic!("kafka harness: cannot create topic {name}: {code}"),
        }
    }
    let probe = probe_client(bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = probe.fetch_metadata(Some(topic), Duration::from_secs(5));
        let ready = match &md {
            Ok(md) => topic_ready(md, topic).is_some_and(|n| n >= partitions),
            Err(_) => false,
        };
        if ready {
            return;
        }
        if Instant::now() >= deadline {
            panic!("kafka harness: topic {topic} not ready after 30 s (last metadata: {md:?})");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// [`create_topic`] on Tokio's blocking pool.
pub async fn create_topic_async(bootstrap: &str, topic: &str, partitions: i32) {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || create_topic(&b, &t, partitions))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// One record read back by [`consume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// In record order; a null header value reads as empty.
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
    /// Record timestamp (ms since the epoch), if any.
    pub timestamp_ms: Option<i64>,
}

impl Consumed {
    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The payload as UTF-8 (panics if it is not).
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("kafka harness: payload is not UTF-8")
    }
}

/// Reads `topic` from the beginning of every partition (fresh group id, no
/// commits, read_committed) until `expected` records arrived or `timeout`
/// passed, and returns what it got, in arrival order (ordered within a
/// partition). The caller asserts. Waits for the topic to appear within the
/// same timeout. To check that there are no *extra* records, compare with
/// [`record_count`] or consume with a larger `expected` and a short timeout.
pub fn consume(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Consumed> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", format!("untaken-test-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .expect("kafka harness: cannot create consumer");
    let mut out = Vec::new();

    // Assign all partitions explicitly (no group rebalance to wait for).
    let partitions = loop {
        let now = Instant::now();
        if now >= deadline {
            return out;
        }
        let left = (deadline - now).min(Duration::from_secs(5));
        if let Ok(md) = consumer.fetch_metadata(Some(topic), left) {
            if let Some(n) = topic_ready(&md, topic).filter(|n| *n > 0) {
                break n;
            }
        }
        thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("kafka harness: bad partition offset");
    }
    consumer.assign(&tpl).expect("kafka harness: assign failed");

    while out.len() < expected {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = (deadline - now).min(Duration::from_millis(500));
        match consumer.poll(wait) {
            Some(Ok(m)) => out.push(Consumed {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
            }),
            // Transient errors (broker restarting, ...): keep polling.
            Some(Err(_)) | None => {}
        }
    }
    out
}

/// [`consume`] on Tokio's blocking pool.
pub async fn consume_async(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || consume(&b, &t, expected, timeout))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Number of records in `topic` (sum over partitions of high - low
/// watermark). Counts transaction markers too, so it equals the number of
/// records only for non-transactional producers. 0 if the topic is absent.
pub fn record_count(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = client_config(bootstrap)
        .create()
        .expect("kafka harness: cannot create consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("kafka harness: metadata for {topic} failed: {e}"));
    let Some(n) = topic_ready(&md, topic) else {
        return 0;
    };
    (0..n)
        .map(|p| {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("kafka harness: watermarks {topic}/{p}: {e}"));
            hi - lo
        })
        .sum()
}

// ----- internals -----------------------------------------------------------

/// Runs `broker.sh fetch` once per process (Maven, first time only).
/// Sets Kafka's own client quota `producer_byte_rate` (bytes a second) for producers
/// with `client.id` = `client_id`, with the kafka-configs tool (Admin API), and waits
/// until the broker reports it. The broker then throttles them: they are acknowledged,
/// slowly, as by a broker under load.
pub fn set_producer_byte_rate(bootstrap: &str, client_id: &str, bytes_per_second: u64) {
    fetch_jars();
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(script())
            .arg("configs")
            .arg(bootstrap)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kafka harness: cannot run kafka-configs: {e}"));
        assert!(out.status.success(), "kafka harness: kafka-configs {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let quota = format!("producer_byte_rate={bytes_per_second}");
    run(&["--alter", "--add-config", &quota, "--entity-type", "clients", "--entity-name", client_id]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = run(&["--describe", "--entity-type", "clients", "--entity-name", client_id]);
        if described.contains(&quota) {
            return;
        }
        assert!(Instant::now() < deadline, "kafka harness: quota {quota} for {client_id} not in force: {described}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// [`set_producer_byte_rate`] on Tokio's blocking pool.
pub async fn set_producer_byte_rate_async(bootstrap: &str, client_id: &str, bytes_per_second: u64) {
    let (b, c) = (bootstrap.to_string(), client_id.to_string());
    tokio::task::spawn_blocking(move || set_producer_byte_rate(&b, &c, bytes_per_second))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
}

fn fetch_jars() {
    static LIBS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let libs = LIBS.get_or_init(|| {
        let out = Command::new("bash")
            .arg(script())
            .arg("fetch")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run bash {}: {e}", script().display()))?;
        if !out.status.success() {
            return Err(format!(
                "`{} fetch` failed ({}):\n{}",
                script().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(PathBuf::from(stdout.lines().last().unwrap_or("").trim()))
    });
    if let Err(e) = libs {
        panic!("kafka harness: cannot get the Kafka broker jars: {e}");
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        // Reconnect quickly while a broker (re)starts.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500");
    c
}

fn probe_client(bootstrap: &str) -> BaseConsumer {
    client_config(bootstrap)
        .create()
        .expect("kafka harness: cannot create metadata probe client")
}

/// Ready = the broker answers metadata, lists itself, and every partition of
/// every existing topic has a leader (so after a restart, producing to and
/// reading from the old topics works at once).
fn probe_once(probe: &BaseConsumer) -> Result<(), String> {
    let md = probe
        .fetch_metadata(None, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    if md.brokers().is_empty() {
        return Err("metadata lists no broker".into());
    }
    for t in md.topics() {
        if topic_ready(&md, t.name()).is_none() {
            return Err(format!("topic {} not ready: {:?}", t.name(), t));
        }
    }
    Ok(())
}

/// `Some(partition count)` if `topic` is in `md` without errors and every
/// partition has a leader.
fn topic_ready(md: &Metadata, topic: &str) -> Option<i32> {
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    let led = t
        .partitions()
        .iter()
        .all(|p| p.error().is_none() && p.leader() >= 0);
    led.then_some(t.partitions().len() as i32)
}

/// Two distinct free loopback ports, chosen *below* the kernel's ephemeral
/// range when possible. A port from that range could, while the broker is
/// down between kill() and restart(), be taken as the source port of some
/// client's reconnect attempt (even a TCP self-connect to that very port),
/// and the restarted broker would then fail to bind it.
fn free_port_pair() -> (u16, u16) {
    let ephemeral_lo = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_lo > 12_000 {
        for _ in 0..200 {
            let a = rand::random_range(10_000..ephemeral_lo - 1);
            let b = a + 1;
            if let (Ok(la), Ok(lb)) = (
                TcpListener::bind(("127.0.0.1", a)),
                TcpListener::bind(("127.0.0.1", b)),
            ) {
                drop((la, lb));
                return (a, b);
            }
        }
    }
    let a = TcpListener::bind("127.0.0.1:0").expect("kafka harness: cannot bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("kafka harness: cannot bind 127.0.0.1:0");
    let ports = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    drop((a, b));
    ports
}

/// A KRaft cluster id: 16 random bytes, base64url without padding, never starting
/// with `-` (kafka-storage's argument parser would read it as an option: 1 start in 64
/// used to fail with a usage message).
fn cluster_id() -> String {
    loop {
        let id = random_cluster_id();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn random_cluster_id() -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 16] = rand::random();
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = String::with_capacity(22);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ABC[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ABC[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out
}

fn tail_file(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "broker start panicked".into())
}

/// Minimal executor for rdkafka's admin futures, which need no runtime (they
/// complete from librdkafka's own thread), so blocking helpers work inside
/// and outside Tokio alike.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}
