//! The Kafka grading worker: a consumer group on the pairs topic, a grade per pair
//! on the grades topic, offsets committed only once the grades are acknowledged.
//!
//! Flow: the main loop reads a record, notes its offset in the [`OffsetTracker`] and
//! spawns its grading (decode, skip if recently graded, judge, publish and wait for
//! Kafka's acknowledgement, retrying the send until it succeeds or the worker stops).
//! At most `limits.max_concurrency` gradings run at once; the rest of the window
//! waits undecoded, so memory grows with the window by the records' bytes only.
//! When a task ends its offset is complete; every `commit_interval` the contiguous
//! acknowledged prefix of each partition is committed. At least once: a crash or a
//! rebalance re-reads what was in flight, at most `in_flight` records per worker.
//!
//! When `in_flight` records are outstanding the loop stops taking records ([`Intake`]):
//! first it only holds off (librdkafka keeps what it prefetched, bounded by
//! `queued.max.messages.kbytes`, and stops fetching), and it reads on as soon as a
//! commit frees the window. Only a window full for [`HOLD_LIMIT`], a spent judge
//! budget or a judge endpoint that is down (its circuit is open) pause consumption
//! (librdkafka `pause`, while still polling so the group keeps the worker and
//! rebalances are served); pausing drops the prefetch, fetched again on resume.
//! Scaling out is Kafka's: more replicas with the same `group_id` split the
//! partitions, with no coordination of our own.
//!
//! Secret files (the judge's API key, Kafka's) are watched by a [`SecretWatch`]: a
//! rotated Kafka file rebuilds the grades producer and the consumer, which the main
//! loop switches to (`replace_consumer`).
//!
//! Never logs a pair's content: only ids, topics, partitions, offsets and errors.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::{JudgeConfig, StartFrom};
use super::dedup::RecentIds;
use super::grade::{self, Origin};
use super::grader::Grader;
use super::metrics::JudgeMetrics;
use super::offsets::{OffsetTracker, Ticket};
use super::{decode_pair, JudgeError};
use crate::config::Encoding;
use crate::librdkafka_log::LimitedLogs;
use crate::log_limit::LogLimit;
use crate::secrets::{SecretWatch, Version};
use crate::sink::kafka::KafkaSink;
use crate::sink::{Sink as _, SinkError};

/// librdkafka's consumer prefetch (`queued.max.messages.kbytes`, which also caps
/// `fetch.max.bytes`): about a default window of 1,024 records of 2 KiB.
const PREFETCH_KBYTES: &str = "2048";

/// How long the grades producer waits to batch grades (`linger.ms`).
const GRADES_LINGER_MS: &str = "50";

/// Commits come at most this often, even when the window fills faster.
const MIN_COMMIT_GAP: Duration = Duration::from_millis(20);

/// How often the lag gauge is recomputed (two broker round trips per partition set).
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// How long a full window only holds reading off before consumption is paused. While
/// holding, the consumer is not polled, so a rebalance waits for it at most this long
/// (far below librdkafka's `max.poll.interval.ms`, 300 s by default). With a judge
/// answering in seconds, a full window frees a quarter of itself well within this.
const HOLD_LIMIT: Duration = Duration::from_secs(5);

/// How the main loop takes records from the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intake {
    /// Reading records.
    Read,
    /// Not reading (the window is full); librdkafka keeps its prefetch and stops
    /// fetching once it is full, so nothing is fetched twice.
    Hold,
    /// Partitions paused (librdkafka drops its prefetch; resuming fetches it again),
    /// still polling for the group's events.
    Pause,
}

/// The next [`Intake`]: pause at once when `blocked` (the budget is spent or the judge
/// endpoint is down, which may last); read while the window has room; hold a full
/// window off for up to [`HOLD_LIMIT`], then pause. A paused window drains to three
/// quarters before reading resumes (each resume fetches the dropped prefetch again);
/// a held one reads again as soon as a record's room is free. Pure.
fn intake(current: Intake, held_for: Duration, uncommitted: usize, window: usize, blocked: bool) -> Intake {
    if blocked {
        return Intake::Pause;
    }
    match current {
        Intake::Pause if uncommitted > window * 3 / 4 => Intake::Pause,
        _ if uncommitted < window => Intake::Read,
        Intake::Hold if held_for >= HOLD_LIMIT => Intake::Pause,
        Intake::Pause => Intake::Pause,
        Intake::Read | Intake::Hold => Intake::Hold,
    }
}

/// Consumer callbacks: offsets of revoked partitions are committed before they go,
/// assigned partitions start a new epoch, librdkafka's lines are rate limited.
struct GroupContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: Arc<JudgeMetrics>,
    logs: LimitedLogs,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logs.log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else { return };
        self.metrics.rebalances.get_or_create(&crate::metrics::Reason { reason: "revoke" }).inc();
        let mut tracker = self.tracker.lock().expect("tracker lock");
        let mut commit = TopicPartitionList::new();
        for e in list.elements() {
            if let Some(o) = tracker.committable(e.topic(), e.partition()) {
                let _ = commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
            }
            tracker.revoke(e.topic(), e.partition());
        }
        self.metrics.assigned_partitions.set(tracker.assigned() as i64);
        if commit.count() > 0 {
            // Blocks the consumer's poll for one round trip: the offsets must be stored
            // before the partitions go to another worker.
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => {
                    self.metrics.offsets_committed.inc();
                }
                Err(e) => tracing::warn!(error = %e, "commit before revocation failed; those pairs will be graded again"),
            };
        }
        tracing::info!(partitions = list.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.metrics.rebalances.get_or_create(&crate::metrics::Reason { reason: "assign" }).inc();
                let mut tracker = self.tracker.lock().expect("tracker lock");
                for e in list.elements() {
                    tracker.assign(e.topic(), e.partition());
                }
                // Read by `/ready` (not ready before the first assignment).
                self.metrics.assigned_partitions.set(tracker.assigned() as i64);
                tracing::info!(partitions = list.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// What a grading task needs, shared by all of them.
struct Shared {
    grader: Grader,
    sink: KafkaSink,
    encoding: Encoding,
    dedup: Mutex<RecentIds>,
    stop: CancellationToken,
}

/// A record read and waiting to be graded (kept while consumption is paused).
struct Item {
    ticket: Ticket,
    payload: Vec<u8>,
    content_type: Option<String>,
}

/// What a worker did, for its caller (tests, logs).
#[derive(Debug, Default, Clone)]
pub struct WorkerSummary {
    pub pairs_read: u64,
    /// Records whose work is done (graded and acknowledged, undecodable or duplicate).
    pub records_completed: u64,
}

fn consumer_config(config: &JudgeConfig) -> Result<ClientConfig, SinkError> {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("client.id", "untaken-judge")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", match k.start_from {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        })
        // Only grades of committed (sidecar acks=all) records; no aborted transactions.
        .set("isolation.level", "read_committed")
        // librdkafka prefetches up to 64 MiB per consumer by default (and a fetch
        // response may be as large); the worker reads `in_flight` records ahead at most
        // and pausing drops what was prefetched, so a small buffer keeps RSS low and
        // spares fetching the same records again. `kafka.librdkafka` overrides it.
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
        // With a small prefetch the queue is often full, and librdkafka then waits
        // this long (1 s by default) before fetching again: after a resume the window
        // would stay empty for most of a second.
        .set("fetch.queue.backoff.ms", "50")
        // Incremental rebalancing: a replica joining or leaving moves only the partitions
        // that change owner; the others keep being graded, and what was read of them and
        // not yet committed is not graded again by someone else.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("reconnect.backoff.max.ms", "1000");
    crate::sink::kafka::apply_user_settings(&mut c, &k.client()).map_err(|e| SinkError::Config(e.to_string()))?;
    Ok(c)
}

/// The grades producer: the sidecar's producer settings, but batching for longer
/// (unless `kafka.librdkafka` says otherwise). A grade follows a judge call of
/// hundreds of milliseconds, so waiting a little more fills a produce request with
/// tens of grades, where the sidecar's 5 ms made librdkafka wake up and send a few
/// at a time (its producer thread was a tenth of the worker's CPU).
fn producer_config(config: &JudgeConfig) -> crate::config::KafkaConfig {
    let mut c = config.kafka.client();
    c.librdkafka.entry("linger.ms".into()).or_insert_with(|| GRADES_LINGER_MS.into());
    c
}

/// Runs the worker until `stop` is cancelled, then drains: in-flight grades get up
/// to `server.shutdown_grace` to be acknowledged, the producer is flushed, and what
/// is acknowledged is committed. Returns an error only for start-up failures.
pub async fn run(config: &JudgeConfig, metrics: Arc<JudgeMetrics>, sink_metrics: Arc<crate::metrics::Metrics>, stop: CancellationToken, ready: Arc<AtomicBool>) -> Result<WorkerSummary, JudgeError> {
    // What the secret files hold, taken before the clients and the grader read them.
    let key_file = config.judge.pairwise.as_ref().and_then(|p| p.api_key_file.clone());
    let key_since = key_file.as_ref().map(|p| Version::of(std::slice::from_ref(p)));
    let kafka_files = crate::secrets::kafka_files(&config.kafka.client());
    let kafka_since = Version::of(&kafka_files);
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let context = GroupContext { tracker: tracker.clone(), metrics: metrics.clone(), logs: LimitedLogs::default() };
    let consumer_errors = LogLimit::new(crate::librdkafka_log::PERIOD);
    let mut consumer: Arc<StreamConsumer<GroupContext>> =
        Arc::new(consumer_config(config)?.create_with_context(context).map_err(|e| crate::sink::kafka::refused(&producer_config(config), e))?);
    consumer.subscribe(&[&config.kafka.pairs_topic]).map_err(JudgeError::Kafka)?;
    let sink = KafkaSink::new(&producer_config(config), sink_metrics.clone())?;
    let grader = Grader::new(config, metrics.clone())?;
    let task_stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        grader,
        sink,
        encoding: config.kafka.encoding,
        dedup: Mutex::new(RecentIds::new(config.kafka.dedup_capacity)),
        stop: task_stop.clone(),
    });
    let mut secrets = SecretWatch::new(config.server.secret_poll_interval, sink_metrics);
    if let (Some(key), Some(path), Some(since)) = (shared.grader.api_key(), key_file, key_since) {
        secrets.add("judge.pairwise.api_key_file", vec![path], since, crate::secrets::store_text(key));
    }
    // Consumers built from rotated Kafka secret files, for the main loop to switch to.
    let (fresh_tx, mut fresh_rx) = tokio::sync::mpsc::unbounded_channel::<StreamConsumer<GroupContext>>();
    if !kafka_files.is_empty() {
        let (shared, producer, config) = (shared.clone(), producer_config(config), config.clone());
        let (tracker, metrics) = (tracker.clone(), metrics.clone());
        secrets.add("kafka", kafka_files, kafka_since, move |_| {
            // librdkafka reads these files itself, when a client is created: both clients
            // are built anew, the consumer first (nothing changes if librdkafka refuses it).
            let context = GroupContext { tracker: tracker.clone(), metrics: metrics.clone(), logs: LimitedLogs::default() };
            let fresh = consumer_config(&config)
                .map_err(|e| e.to_string())?
                .create_with_context(context)
                .map_err(|e| crate::sink::kafka::refused(&producer, e).to_string())?;
            shared.sink.rebuild(&producer).map_err(|e| e.to_string())?;
            fresh_tx.send(fresh).map_err(|_| "the worker is stopping".to_string())
        });
    }
    let secrets_stop = CancellationToken::new();
    let watching = (!secrets.is_empty()).then(|| tokio::spawn(secrets.run(secrets_stop.clone())));
    let window = config.kafka.in_flight;
    let grading = config.limits.max_concurrency as usize;
    // A finished task stays in the set (with its output) until joined, so completions
    // are read from the set itself: nothing accumulates.
    let mut tasks: JoinSet<Option<Ticket>> = JoinSet::new();
    let mut backlog: VecDeque<Item> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut state = Intake::Read;
    let mut hold_since: Option<tokio::time::Instant> = None;
    let mut summary = WorkerSummary::default();
    let mut tick = tokio::time::interval(config.kafka.commit_interval.min(Duration::from_millis(200)));
    let mut last_commit = tokio::time::Instant::now();
    let mut last_lag: Option<tokio::time::Instant> = None;
    let lag_busy = Arc::new(AtomicBool::new(false));
    ready.store(true, Ordering::SeqCst);
    tracing::info!(topic = %config.kafka.pairs_topic, group = %config.kafka.group_id, grades = %config.kafka.grades_topic, "judge worker started");

    loop {
        // Start what the budget allows, at most `grading` records at once: the others
        // wait as the bytes Kafka gave (a decoded pair and its prompts are larger, and
        // no more than `max_concurrency` judge calls can be under way anyway).
        while in_flight < grading && !shared.grader.limits().exhausted() {
            let Some(item) = backlog.pop_front() else { break };
            if !tracker.lock().expect("tracker lock").is_current(&item.ticket) {
                continue; // revoked while waiting: the new owner reads it again
            }
            in_flight += 1;
            let shared = shared.clone();
            tasks.spawn(async move { grade_one(item, &shared).await });
        }
        // The window counts every record read and not yet committed: exactly what a
        // crash now would have the next owner grade again.
        let (uncommitted, acknowledged) = {
            let t = tracker.lock().expect("tracker lock");
            metrics.assigned_partitions.set(t.assigned() as i64);
            (t.uncommitted(), t.done())
        };
        metrics.in_flight.set(uncommitted as i64);
        let since = last_commit.elapsed();
        if acknowledged > 0 && since >= MIN_COMMIT_GAP && (acknowledged >= window / 4 || since >= config.kafka.commit_interval) {
            commit(&consumer, &tracker, &metrics).await;
            last_commit = tokio::time::Instant::now();
            continue;
        }
        let exhausted = shared.grader.limits().exhausted();
        // The judge endpoint is down: read nothing more until a probe is answered (the
        // records already read wait in their calls; none becomes a judge error).
        let judge_down = shared.grader.judge_down();
        let held_for = hold_since.map_or(Duration::ZERO, |t| t.elapsed());
        let next = intake(state, held_for, uncommitted, window, exhausted || judge_down);
        if (next == Intake::Pause) != (state == Intake::Pause) {
            set_paused(&consumer, next == Intake::Pause);
        }
        hold_since = if next == Intake::Hold { hold_since.or_else(|| Some(tokio::time::Instant::now())) } else { None };
        state = next;
        metrics.paused.set(i64::from(exhausted || judge_down));
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                in_flight -= 1;
                if let Ok(Some(t)) = done {
                    if tracker.lock().expect("tracker lock").complete(&t) {
                        summary.records_completed += 1;
                    }
                }
            }
            Some(fresh) = fresh_rx.recv() => {
                consumer = replace_consumer(consumer, fresh, &config.kafka.pairs_topic, &tracker, &metrics).await;
                // The new consumer's partitions are paused again below if need be.
                state = Intake::Read;
                hold_since = None;
                last_commit = tokio::time::Instant::now();
            }
            _ = tick.tick() => {
                if state == Intake::Pause {
                    // Partitions assigned since the pause must be paused too.
                    set_paused(&consumer, true);
                }
                if last_lag.is_none_or(|t| t.elapsed() >= LAG_INTERVAL) {
                    last_lag = Some(tokio::time::Instant::now());
                    refresh_lag(&consumer, &metrics, &lag_busy);
                }
            }
            // Holding: the records stay in librdkafka's queue (the tick above wakes the
            // loop to pause once the hold has lasted too long).
            m = consumer.recv(), if state != Intake::Hold => match m {
                Ok(m) => {
                    metrics.pairs_consumed.inc();
                    summary.pairs_read += 1;
                    let ticket = tracker.lock().expect("tracker lock").begin(m.topic(), m.partition(), m.offset());
                    match ticket {
                        Some(ticket) => backlog.push_back(item(ticket, &m)),
                        None => tracing::warn!(partition = m.partition(), offset = m.offset(), "record from a partition not assigned; ignored"),
                    }
                }
                Err(e) => {
                    if let Some(held_back) = consumer_errors.allow() {
                        tracing::warn!(error = %e, held_back, "kafka consumer error");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }

    // Drain: stop reading, give in-flight grades the grace period, then give up on
    // the rest (their offsets stay uncommitted and are re-read later).
    ready.store(false, Ordering::SeqCst);
    secrets_stop.cancel();
    if let Some(w) = watching {
        let _ = w.await;
    }
    // A consumer built but not switched to is closed off the runtime.
    tokio::task::spawn_blocking(move || drop(fresh_rx)).await.ok();
    tracing::info!(in_flight, backlog = backlog.len(), "draining");
    let grace = tokio::time::sleep(config.server.shutdown_grace);
    tokio::pin!(grace);
    while in_flight > 0 {
        tokio::select! {
            _ = &mut grace => break,
            Some(done) = tasks.join_next() => {
                in_flight -= 1;
                if let Ok(Some(t)) = done {
                    if tracker.lock().expect("tracker lock").complete(&t) {
                        summary.records_completed += 1;
                    }
                }
            }
        }
    }
    // The rest stop at once (a stopped task returns no ticket: its offset stays open).
    task_stop.cancel();
    let mut abandoned = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Some(t)) if tracker.lock().expect("tracker lock").complete(&t) => summary.records_completed += 1,
            _ => abandoned += 1,
        }
    }
    let flush_shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || flush_shared.sink.flush_blocking(Duration::from_secs(5))).await;
    commit(&consumer, &tracker, &metrics).await;
    tracing::info!(pairs_read = summary.pairs_read, completed = summary.records_completed, abandoned, "judge worker stopped");
    // Closing the consumer leaves the group (revoking: offsets are already committed).
    tokio::task::spawn_blocking(move || drop(consumer)).await.ok();
    Ok(summary)
}

/// Switches the pairs consumer to one built from rotated secret files (librdkafka reads
/// them only when a client is created). What is acknowledged is committed first; the
/// old consumer then leaves the group, its revocation committing again and forgetting
/// its partitions, so records read and not acknowledged are read again by whoever gets
/// them (at least once); then the new consumer joins. Network, on the blocking pool.
async fn replace_consumer(
    old: Arc<StreamConsumer<GroupContext>>,
    fresh: StreamConsumer<GroupContext>,
    topic: &str,
    tracker: &Arc<Mutex<OffsetTracker>>,
    metrics: &JudgeMetrics,
) -> Arc<StreamConsumer<GroupContext>> {
    commit(&old, tracker, metrics).await;
    // Closes it, unless the lag computation still holds it (it then closes when that ends).
    tokio::task::spawn_blocking(move || drop(old)).await.ok();
    match fresh.subscribe(&[topic]) {
        Ok(()) => tracing::info!("pairs consumer rebuilt with the new Kafka secret files"),
        Err(e) => tracing::error!(error = %e, "the rebuilt pairs consumer cannot subscribe"),
    }
    Arc::new(fresh)
}

fn item(ticket: Ticket, m: &BorrowedMessage<'_>) -> Item {
    let content_type = m.headers().and_then(|hs| {
        hs.iter().find(|h| h.key == "content-type").and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    });
    Item { ticket, payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(), content_type }
}

/// Records of `partition` not yet committed: from the committed offset (the low
/// watermark when the group has none, or when retention deleted past it) to the
/// high watermark. Pure.
fn partition_lag(committed: Option<i64>, low: i64, high: i64) -> i64 {
    (high - committed.unwrap_or(low).max(low)).max(0)
}

/// Recomputes `consumer_lag` on the blocking pool (broker round trips, never on the
/// consumer's poll): the group's committed offsets and each assigned partition's
/// high watermark, asked of the broker so it keeps counting while consumption is
/// paused (librdkafka's statistics only learn watermarks from fetches). Skipped
/// while the previous computation still runs.
fn refresh_lag(consumer: &Arc<StreamConsumer<GroupContext>>, metrics: &Arc<JudgeMetrics>, busy: &Arc<AtomicBool>) {
    if busy.swap(true, Ordering::SeqCst) {
        return;
    }
    let (consumer, metrics, busy) = (consumer.clone(), metrics.clone(), busy.clone());
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(5);
        let lag = || -> Result<i64, rdkafka::error::KafkaError> {
            let assignment = consumer.assignment()?;
            if assignment.count() == 0 {
                return Ok(0);
            }
            let committed = consumer.committed_offsets(assignment, timeout)?;
            let mut total = 0;
            for e in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
                total += partition_lag(e.offset().to_raw().filter(|o| *o >= 0), low, high);
            }
            Ok(total)
        };
        match lag() {
            Ok(lag) => {
                metrics.consumer_lag.set(lag);
            }
            Err(e) => tracing::debug!(error = %e, "consumer lag not computed this time"),
        }
        busy.store(false, Ordering::SeqCst);
    });
}

fn set_paused(consumer: &StreamConsumer<GroupContext>, pause: bool) {
    let Ok(assignment) = consumer.assignment() else { return };
    if assignment.count() == 0 {
        return;
    }
    let r = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    if let Err(e) = r {
        tracing::warn!(error = %e, pause, "pause/resume failed");
    }
}

/// Commits the acknowledged prefixes and waits for Kafka to store them (network, on
/// the blocking pool); only stored offsets stop counting against the window.
async fn commit(consumer: &Arc<StreamConsumer<GroupContext>>, tracker: &Arc<Mutex<OffsetTracker>>, metrics: &JudgeMetrics) {
    let offsets = tracker.lock().expect("tracker lock").to_commit();
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in &offsets {
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    let c = consumer.clone();
    match tokio::task::spawn_blocking(move || c.commit(&list, CommitMode::Sync)).await {
        Ok(Ok(())) => {
            metrics.offsets_committed.inc();
            tracker.lock().expect("tracker lock").mark_committed(&offsets);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "offset commit failed; retried with the next commit"),
        Err(e) => tracing::warn!(error = %e, "offset commit task failed"),
    }
}

/// Grades one record and publishes its grade; `Some(ticket)` once the record needs
/// nothing more (graded and acknowledged, undecodable, or a duplicate), `None` when
/// the worker stopped first.
async fn grade_one(item: Item, shared: &Shared) -> Option<Ticket> {
    let metrics = shared.grader.metrics();
    let Item { ticket, payload, content_type } = item;
    let t = &ticket;
    let decoded = decode_pair(&payload, content_type.as_deref());
    drop(payload); // the raw bytes are not kept while the judge answers
    let pair = match decoded {
        Ok(p) => p,
        Err(e) => {
            metrics.pairs_undecodable.inc();
            tracing::warn!(topic = %t.topic, partition = t.partition, offset = t.offset, error = %e, "undecodable pair record skipped");
            return Some(ticket);
        }
    };
    // Remembered only once its grade is acknowledged: a pair read twice while the
    // first grading is in flight is graded twice rather than risk losing its grade.
    if shared.dedup.lock().expect("dedup lock").contains(&pair.record.pair_id) {
        metrics.pairs_duplicate.inc();
        tracing::debug!(pair_id = %pair.record.pair_id, "pair graded recently; skipped");
        return Some(ticket);
    }
    let origin = Origin { topic: t.topic.to_string(), partition: t.partition, offset: t.offset };
    let g = tokio::select! {
        g = shared.grader.grade(pair, &origin) => g,
        _ = shared.stop.cancelled() => return None,
    };
    let encoded = grade::encode(&g, shared.encoding);
    let mut backoff = Duration::from_millis(100);
    loop {
        let sent = tokio::select! {
            r = shared.sink.send(&encoded) => r,
            _ = shared.stop.cancelled() => return None,
        };
        match sent {
            Ok(()) => {
                metrics.published(g.outcome());
                shared.dedup.lock().expect("dedup lock").insert(&g.pair_id);
                return Some(ticket);
            }
            Err(e) => {
                // Kafka did not take the grade: retry (the offset waits), never drop it.
                metrics.grade_send_retries.inc();
                tracing::warn!(pair_id = %g.pair_id, error = %e, "grade not acknowledged; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.stop.cancelled() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{intake, partition_lag, Intake, HOLD_LIMIT};
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    #[test]
    fn a_full_window_holds_reading_off_and_pauses_only_when_it_stays_full() {
        let (w, none) = (1024, Duration::ZERO);
        assert_eq!(intake(Intake::Read, none, 1023, w, false), Intake::Read);
        assert_eq!(intake(Intake::Read, none, 1024, w, false), Intake::Hold, "full: stop reading, keep the prefetch");
        assert_eq!(intake(Intake::Hold, HOLD_LIMIT / 2, 1024, w, false), Intake::Hold);
        assert_eq!(intake(Intake::Hold, HOLD_LIMIT / 2, 1023, w, false), Intake::Read, "a held window reads on at once");
        assert_eq!(intake(Intake::Hold, HOLD_LIMIT, 1024, w, false), Intake::Pause, "full for too long: pause, keep polling");
        assert_eq!(intake(Intake::Pause, none, 769, w, false), Intake::Pause, "a resume refetches: drain to 3/4 first");
        assert_eq!(intake(Intake::Pause, none, 768, w, false), Intake::Read);
        for current in [Intake::Read, Intake::Hold, Intake::Pause] {
            assert_eq!(intake(current, none, 0, w, true), Intake::Pause, "budget spent or judge down: pause at once");
        }
    }

    /// Simulation (fixed seed): a worker whose window fills and drains at random. It
    /// never reads with the window full, pauses only after holding for HOLD_LIMIT (or
    /// when blocked), and never stops reading with room in the window unless paused.
    #[test]
    fn random_window_levels_read_only_with_room_and_hold_at_most_the_limit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (w, step) = (64usize, Duration::from_millis(200));
        let (mut state, mut held, mut uncommitted) = (Intake::Read, Duration::ZERO, 0usize);
        let (mut pauses, mut holds) = (0, 0);
        for _ in 0..100_000 {
            let blocked = rng.random_bool(0.01);
            let next = intake(state, held, uncommitted, w, blocked);
            match next {
                Intake::Read => assert!(uncommitted < w, "reading with a full window"),
                Intake::Hold => assert!(uncommitted >= w && !blocked && held < HOLD_LIMIT, "holding too long"),
                Intake::Pause => {
                    assert!(blocked || state == Intake::Pause || held >= HOLD_LIMIT, "paused without cause");
                    pauses += u32::from(state != Intake::Pause);
                }
            }
            holds += u32::from(next == Intake::Hold && state != Intake::Hold);
            held = if next == Intake::Hold { held + step } else { Duration::ZERO };
            state = next;
            // Reading adds up to a few records; commits free a random number of them.
            if state == Intake::Read {
                // (capped here: `intake` only decides; the window itself is bounded by the reader)
                uncommitted = (uncommitted + rng.random_range(1..8)).min(w);
            }
            if rng.random_bool(0.05) {
                uncommitted -= rng.random_range(0..=uncommitted);
            }
        }
        assert!(holds > 100 && pauses > 100, "both states are exercised: {holds} holds, {pauses} pauses");
    }

    #[test]
    fn lag_counts_from_the_committed_offset_or_the_start_of_what_is_retained() {
        assert_eq!(partition_lag(Some(40), 0, 70), 30);
        assert_eq!(partition_lag(None, 10, 70), 60, "nothing committed: all that is retained");
        assert_eq!(partition_lag(Some(5), 10, 70), 60, "committed offset deleted by retention");
        assert_eq!(partition_lag(Some(70), 0, 70), 0);
        assert_eq!(partition_lag(Some(71), 0, 70), 0, "never negative");
    }
}
