//! The Kafka grading worker: a consumer group on the pairs topic, a grade per pair
//! on the grades topic, offsets committed only once the grades are acknowledged.
//!
//! Flow: the main loop reads a record, notes its offset in the [`OffsetTracker`] and
//! spawns its grading (decode, skip if recently graded, judge, publish and wait for
//! Kafka's acknowledgement, retrying the send until it succeeds or the worker stops).
//! When a task ends its offset is complete; every `commit_interval` the contiguous
//! acknowledged prefix of each partition is committed. At least once: a crash or a
//! rebalance re-reads what was in flight, at most `in_flight` records per worker.
//!
//! Consumption pauses (librdkafka `pause`, while still polling so the group keeps
//! the worker) when `in_flight` records are outstanding or the judge budget is
//! spent; it resumes when both allow. Scaling out is Kafka's: more replicas with
//! the same `group_id` split the partitions, with no coordination of our own.
//!
//! Never logs a pair's content: only ids, topics, partitions, offsets and errors.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
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
use crate::sink::kafka::KafkaSink;
use crate::sink::{Sink as _, SinkError};

/// Commits come at most this often, even when the window fills faster.
const MIN_COMMIT_GAP: Duration = Duration::from_millis(20);

/// Consumer callbacks: offsets of revoked partitions are committed before they go,
/// assigned partitions start a new epoch, statistics feed the lag gauge.
struct GroupContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    metrics: Arc<JudgeMetrics>,
    topic: String,
}

impl ClientContext for GroupContext {
    fn stats(&self, stats: Statistics) {
        let lag: i64 = stats
            .topics
            .get(&self.topic)
            .map(|t| {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.hi_offset >= 0)
                    .map(|p| {
                        if p.committed_offset >= 0 {
                            (p.hi_offset - p.committed_offset).max(0)
                        } else {
                            p.consumer_lag.max(0)
                        }
                    })
                    .sum()
            })
            .unwrap_or(0);
        self.metrics.consumer_lag.set(lag);
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
        .set("statistics.interval.ms", "1000")
        // librdkafka prefetches up to 64 MiB per consumer by default; the worker reads
        // a few hundred records ahead at most, so a smaller buffer keeps RSS low.
        .set("queued.max.messages.kbytes", "8192")
        .set("reconnect.backoff.max.ms", "1000");
    crate::sink::kafka::apply_user_settings(&mut c, &k.client()).map_err(|e| SinkError::Config(e.to_string()))?;
    Ok(c)
}

/// Runs the worker until `stop` is cancelled, then drains: in-flight grades get up
/// to `server.shutdown_grace` to be acknowledged, the producer is flushed, and what
/// is acknowledged is committed. Returns an error only for start-up failures.
pub async fn run(config: &JudgeConfig, metrics: Arc<JudgeMetrics>, sink_metrics: Arc<crate::metrics::Metrics>, stop: CancellationToken, ready: Arc<std::sync::atomic::AtomicBool>) -> Result<WorkerSummary, JudgeError> {
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let context = GroupContext { tracker: tracker.clone(), metrics: metrics.clone(), topic: config.kafka.pairs_topic.clone() };
    let consumer: Arc<StreamConsumer<GroupContext>> =
        Arc::new(consumer_config(config)?.create_with_context(context).map_err(JudgeError::Kafka)?);
    consumer.subscribe(&[&config.kafka.pairs_topic]).map_err(JudgeError::Kafka)?;
    let sink = KafkaSink::new(&config.kafka.client(), sink_metrics)?;
    let grader = Grader::new(config, metrics.clone())?;
    let task_stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        grader,
        sink,
        encoding: config.kafka.encoding,
        dedup: Mutex::new(RecentIds::new(config.kafka.dedup_capacity)),
        stop: task_stop.clone(),
    });
    let window = config.kafka.in_flight;
    // A finished task stays in the set (with its output) until joined, so completions
    // are read from the set itself: nothing accumulates.
    let mut tasks: JoinSet<Option<Ticket>> = JoinSet::new();
    let mut backlog: VecDeque<Item> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut paused = false;
    let mut summary = WorkerSummary::default();
    let mut tick = tokio::time::interval(config.kafka.commit_interval.min(Duration::from_millis(200)));
    let mut last_commit = tokio::time::Instant::now();
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(topic = %config.kafka.pairs_topic, group = %config.kafka.group_id, grades = %config.kafka.grades_topic, "judge worker started");

    loop {
        // Start what the budget allows.
        while !shared.grader.limits().exhausted() {
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
        // Pausing drops what librdkafka prefetched (it is fetched again on resume), so
        // once full, the window drains to three quarters before reading resumes.
        let full = if paused { uncommitted > window * 3 / 4 } else { uncommitted >= window };
        let want_pause = full || exhausted;
        if want_pause != paused {
            set_paused(&consumer, want_pause);
            paused = want_pause;
        }
        metrics.paused.set(i64::from(exhausted));
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
            _ = tick.tick() => {
                if paused {
                    // Partitions assigned since the pause must be paused too.
                    set_paused(&consumer, true);
                }
            }
            m = consumer.recv() => match m {
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
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }

    // Drain: stop reading, give in-flight grades the grace period, then give up on
    // the rest (their offsets stay uncommitted and are re-read later).
    ready.store(false, std::sync::atomic::Ordering::SeqCst);
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

fn item(ticket: Ticket, m: &BorrowedMessage<'_>) -> Item {
    let content_type = m.headers().and_then(|hs| {
        hs.iter().find(|h| h.key == "content-type").and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    });
    Item { ticket, payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(), content_type }
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
    let t = &item.ticket;
    let pair = match decode_pair(&item.payload, item.content_type.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            metrics.pairs_undecodable.inc();
            tracing::warn!(topic = %t.topic, partition = t.partition, offset = t.offset, error = %e, "undecodable pair record skipped");
            return Some(item.ticket);
        }
    };
    // Remembered only once its grade is acknowledged: a pair read twice while the
    // first grading is in flight is graded twice rather than risk losing its grade.
    if shared.dedup.lock().expect("dedup lock").contains(&pair.pair_id) {
        metrics.pairs_duplicate.inc();
        tracing::debug!(pair_id = %pair.pair_id, "pair graded recently; skipped");
        return Some(item.ticket);
    }
    let origin = Origin { topic: t.topic.clone(), partition: t.partition, offset: t.offset };
    let g = tokio::select! {
        g = shared.grader.grade(&pair, &origin) => g,
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
                return Some(item.ticket);
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
