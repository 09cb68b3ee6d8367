//! Delivers accepted pair records: to the sink while it is healthy, to the disk
//! spool while it is not, and from the spool back to the sink, oldest first,
//! once it recovers.
//!
//! From the moment a record reaches this module it is never dropped silently:
//! each one ends acknowledged by the sink, written to the spool, or counted in
//! `untaken_pairs_dropped_total` with a reason (spool full, permanent rejection).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::log_limit::LogLimit;
use crate::metrics::{Metrics, Reason};
use crate::record::Encoded;
use crate::sink::spool::{Spool, SpoolError};
use crate::sink::{ConfiguredSink, Sink, SinkError};

/// Records sent to the sink at once; bounds the memory held by deliveries in flight.
/// (512 held a single Kafka producer to 0.4× of kcat's rate; see BENCHMARKS.md.)
pub const MAX_IN_FLIGHT: usize = 4096;
/// Bytes of records sent to the sink at once, whatever their size: with
/// [`MAX_IN_FLIGHT`], what deliveries in flight can hold (4,096 small records fit).
pub const MAX_IN_FLIGHT_BYTES: usize = 32 * 1024 * 1024;
const KIB: usize = 1024;

/// Generic over the [`Sink`] so its tests can drive it with a fake one (acks,
/// failures, stalls); the sidecar runs it on the [`ConfiguredSink`].
pub struct Publisher<S: Sink = ConfiguredSink> {
    sink: Arc<S>,
    spool: Option<Arc<Spool>>,
    metrics: Arc<Metrics>,
    /// False after a failed delivery, until a replay succeeds: new records go
    /// straight to the spool instead of waiting out a delivery timeout each.
    healthy: AtomicBool,
    /// Set when the shutdown's grace is over: nothing waits for Kafka any more, every
    /// record goes to the spool.
    diverted: AtomicBool,
    in_flight: Arc<Semaphore>,
    /// [`MAX_IN_FLIGHT_BYTES`], in KiB permits.
    in_flight_kib: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Stall detection: deliveries outstanding, and when one last made progress.
    outstanding: AtomicUsize,
    last_progress_ms: AtomicU64,
    stall_timeout: Duration,
    epoch: Instant,
    /// Drop messages: at most one log line a second (a full spool must not flood the logs).
    drop_log: LogLimit,
    /// One spool write at a time. Writes serialise on the spool's lock anyway; without
    /// this, each record Kafka failed (up to `MAX_IN_FLIGHT` at once in an outage) was a
    /// blocking task waiting on that lock, and the blocking pool grew a thread for each:
    /// ~520 threads in the benchmark's Kafka outage. Waiting here costs no thread.
    spool_writes: Semaphore,
}

impl<S: Sink> Publisher<S> {
    pub fn new(sink: Arc<S>, spool: Option<Arc<Spool>>, metrics: Arc<Metrics>, stall_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            sink,
            spool,
            metrics,
            healthy: AtomicBool::new(true),
            diverted: AtomicBool::new(false),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            in_flight_kib: Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES / KIB)),
            tasks: TaskTracker::new(),
            outstanding: AtomicUsize::new(0),
            last_progress_ms: AtomicU64::new(0),
            stall_timeout,
            epoch: Instant::now(),
            spool_writes: Semaphore::new(1),
            drop_log: LogLimit::new(Duration::from_secs(1)),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Deliveries are outstanding and none made progress within the stall timeout.
    fn stalled(&self) -> bool {
        self.outstanding.load(Ordering::Relaxed) > 0
            && self.now_ms().saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)) > self.stall_timeout.as_millis() as u64
    }

    pub fn sink(&self) -> &Arc<S> {
        &self.sink
    }

    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }

    /// Shutdown, once the grace is over: every record from now on goes straight to the
    /// spool, and deliveries still waiting for Kafka are purged back (and spooled).
    /// Call again to purge deliveries that started in between.
    pub fn divert_to_spool(&self) {
        self.diverted.store(true, Ordering::SeqCst);
        self.healthy.store(false, Ordering::Relaxed);
        self.sink.purge();
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Receives records until `stop` fires, then takes what is left in the channel.
    /// Returns once every received record is delivered, spooled or counted.
    pub async fn run(self: Arc<Self>, mut records: mpsc::Receiver<Encoded>, stop: CancellationToken) {
        loop {
            let rec = tokio::select! {
                biased;
                r = records.recv() => match r { Some(r) => r, None => break },
                _ = stop.cancelled() => break,
            };
            self.dispatch(rec).await;
        }
        records.close();
        while let Ok(rec) = records.try_recv() {
            self.dispatch(rec).await;
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn dispatch(self: &Arc<Self>, mut rec: Encoded) {
        if self.diverted.load(Ordering::SeqCst) {
            self.to_spool(rec).await;
            return;
        }
        if let Some(spool) = self.spool.clone().filter(|_| !self.is_healthy() || self.stalled()) {
            if self.is_healthy() {
                tracing::warn!(stall_ms = self.stall_timeout.as_millis() as u64, "kafka stalled; spooling new records");
                self.healthy.store(false, Ordering::Relaxed);
            }
            match self.append_to_spool(spool, rec).await {
                None => return,
                // The spool is full, but Kafka may be back already (the replay has not caught
                // up): try it rather than drop. If Kafka fails too, the record is dropped then,
                // as `spool_full`; the in-flight bound holds memory meanwhile.
                Some(full) => rec = full,
            }
        }
        let permit = self.in_flight.clone().acquire_owned().await.expect("semaphore never closed");
        // A record larger than the whole window takes all of it.
        let kib = rec.payload.len().div_ceil(KIB).clamp(1, MAX_IN_FLIGHT_BYTES / KIB) as u32;
        let bytes_permit = self.in_flight_kib.clone().acquire_many_owned(kib).await.expect("semaphore never closed");
        if self.diverted.load(Ordering::SeqCst) {
            // The grace ran out while this record waited for a delivery slot.
            self.to_spool(rec).await;
            return;
        }
        if self.outstanding.fetch_add(1, Ordering::Relaxed) == 0 {
            // Idle until now: the stall clock starts with this delivery.
            self.last_progress_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        let me = self.clone();
        self.tasks.spawn(async move {
            let _permits = (permit, bytes_permit);
            let result = me.sink.send(&rec).await;
            if result.is_ok() {
                me.last_progress_ms.store(me.now_ms(), Ordering::Relaxed);
            }
            me.outstanding.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    me.metrics.pairs_published.inc();
                }
                Err(e) => me.failed(rec, e).await,
            }
        });
    }

    async fn failed(&self, rec: Encoded, e: SinkError) {
        if let SinkError::Permanent(_) = e {
            self.drop_counted("rejected_permanently");
            return;
        }
        if self.spool.is_some() {
            self.healthy.store(false, Ordering::Relaxed);
        }
        self.to_spool(rec).await;
    }

    /// Spools a record Kafka did not take; drops it, counted, when that fails.
    async fn to_spool(&self, rec: Encoded) {
        let Some(spool) = self.spool.clone() else {
            self.drop_counted("no_spool");
            return;
        };
        if let Some(rec) = self.append_to_spool(spool, rec).await {
            if let Some(held_back) = self.drop_log.allow() {
                let pair_id = &rec.pair_id;
                tracing::error!(pair_id, held_back, "spool full, pairs dropped (logged at most once a second; see untaken_pairs_dropped_total)");
            }
            self.drop_counted("spool_full");
        }
    }

    /// Writes a record to the spool (on a blocking thread). A full spool hands the
    /// record back, uncounted; an i/o error drops it, counted.
    async fn append_to_spool(&self, spool: Arc<Spool>, rec: Encoded) -> Option<Encoded> {
        let _one_at_a_time = self.spool_writes.acquire().await.expect("semaphore never closed");
        let (rec, result) = tokio::task::spawn_blocking(move || {
            let r = spool.append(&rec);
            (rec, r)
        })
        .await
        .expect("spool task panicked");
        self.update_gauges();
        match result {
            Ok(()) => {
                self.metrics.pairs_spooled.inc();
                None
            }
            Err(SpoolError::Full { .. }) => Some(rec),
            Err(SpoolError::Io(e)) => {
                if let Some(held_back) = self.drop_log.allow() {
                    tracing::error!(pair_id = rec.pair_id, held_back, error = %e, "spool write failed, pairs dropped (logged at most once a second)");
                }
                self.drop_counted("spool_io");
                None
            }
        }
    }

    fn drop_counted(&self, reason: &'static str) {
        self.metrics.pairs_dropped.get_or_create(&Reason { reason }).inc();
    }

    fn update_gauges(&self) {
        if let Some(s) = &self.spool {
            self.metrics.spool_bytes.set(s.used_bytes() as i64);
            self.metrics.spool_records.set(s.records() as i64);
        }
    }

    /// Replays the spool, oldest segment first, whenever it has records; fsyncs
    /// on `fsync_interval`. Runs until `stop` fires.
    pub async fn run_spool(self: Arc<Self>, fsync_interval: Duration, stop: CancellationToken) {
        let Some(spool) = self.spool.clone() else { return };
        let mut tick = tokio::time::interval(fsync_interval.min(Duration::from_millis(500)));
        let mut since_sync = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            since_sync += tick.period();
            if since_sync >= fsync_interval {
                since_sync = Duration::ZERO;
                let s = spool.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || s.sync()).await.expect("sync task") {
                    tracing::error!(error = %e, "spool fsync failed");
                }
            }
            // Also when unhealthy with an empty spool (a refused spool write): the replay
            // finds nothing and marks the sink healthy again, so delivery resumes.
            if spool.records() > 0 || !self.is_healthy() {
                self.replay_once(&spool, &stop).await;
            }
        }
    }

    /// Sends the oldest segment's undelivered records; marks each one Kafka took, so
    /// a retry resends only the rest; deletes the segment once all are delivered.
    async fn replay_once(&self, spool: &Arc<Spool>, stop: &CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let s = spool.clone();
            let batch = match tokio::task::spawn_blocking(move || s.oldest()).await.expect("spool task") {
                Ok(Some(b)) => b,
                Ok(None) => {
                    self.healthy.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool read failed");
                    return;
                }
            };
            if batch.undecodable > 0 {
                tracing::error!(records = batch.undecodable, "spooled records could not be decoded and are dropped");
                self.metrics.pairs_dropped.get_or_create(&Reason { reason: "spool_corrupt" }).inc_by(batch.undecodable);
            }
            let results = futures::future::join_all(batch.records.iter().map(|r| self.sink.send(r))).await;
            let mut delivered = Vec::with_capacity(results.len());
            for (i, r) in results.iter().enumerate() {
                match r {
                    Ok(()) => {
                        self.metrics.pairs_replayed.inc();
                        delivered.push(i);
                    }
                    Err(SinkError::Permanent(_)) => {
                        self.drop_counted("rejected_permanently");
                        delivered.push(i);
                    }
                    Err(_) => {}
                }
            }
            let all_delivered = delivered.len() == results.len();
            let (regions, skipped) = (batch.corrupt_regions, batch.corrupt_bytes);
            let s = spool.clone();
            let removed = tokio::task::spawn_blocking(move || {
                s.mark_delivered(&batch, delivered);
                if all_delivered {
                    s.remove(batch).map(|_| true)
                } else {
                    Ok(false)
                }
            })
            .await
            .expect("spool task");
            self.update_gauges();
            match removed {
                Ok(true) => {}
                Ok(false) => {
                    // Kafka is still unhealthy: keep the rest of the segment and try later.
                    self.healthy.store(false, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not delete a replayed spool segment; its records stay marked delivered until a restart");
                    return;
                }
            }
            // A whole segment went through: Kafka is taking records again, so new ones go
            // to it directly while the rest of the spool drains (not into a full spool).
            self.healthy.store(true, Ordering::Relaxed);
            if regions > 0 {
                // Torn or corrupted frames, now deleted with their segment: each region held
                // at least one record.
                tracing::error!(regions, bytes = skipped, "a replayed spool segment had corrupt regions; the records in them are lost");
                self.metrics.pairs_dropped.get_or_create(&Reason { reason: "spool_corrupt" }).inc_by(regions);
                self.metrics.spool_corrupt_bytes.inc_by(skipped);
            }
            tracing::info!(records = results.len(), "replayed a spool segment");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The publisher against a fake sink whose every send acks, fails (transiently or
    //! permanently) or stalls until told otherwise or purged, with a real spool on disk.
    use super::*;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use std::sync::Mutex;
    use tokio::sync::watch;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Mode {
        Ack,
        Fail,
        Reject,
        Stall,
    }

    /// Answers every send as `mode` says when it is made; a stalled send waits for the
    /// mode to change or for a purge (which fails it, as Kafka's purge does).
    struct FakeSink {
        mode: watch::Sender<Mode>,
        purged: CancellationToken,
        acked: Mutex<Vec<String>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    impl FakeSink {
        fn new(mode: Mode) -> Arc<Self> {
            Arc::new(Self {
                mode: watch::Sender::new(mode),
                purged: CancellationToken::new(),
                acked: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            })
        }

        fn set(&self, mode: Mode) {
            self.mode.send_replace(mode);
        }

        fn acked_sorted(&self) -> Vec<String> {
            let mut v = self.acked.lock().unwrap().clone();
            v.sort();
            v
        }
    }

    struct Counted<'a>(&'a AtomicUsize);

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Sink for FakeSink {
        async fn send(&self, record: &Encoded) -> Result<(), SinkError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let _counted = Counted(&self.in_flight);
            let mut mode = self.mode.subscribe();
            loop {
                let current = *mode.borrow_and_update();
                match current {
                    Mode::Ack => {
                        self.acked.lock().unwrap().push(record.pair_id.clone());
                        return Ok(());
                    }
                    Mode::Fail => return Err(SinkError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure))),
                    Mode::Reject => return Err(SinkError::Permanent(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))),
                    Mode::Stall => tokio::select! {
                        _ = self.purged.cancelled() => return Err(SinkError::Kafka(KafkaError::Canceled)),
                        _ = mode.changed() => {}
                    },
                }
            }
        }

        fn purge(&self) {
            self.purged.cancel();
        }

        fn flush_blocking(&self, _timeout: Duration) -> Result<(), SinkError> {
            Ok(())
        }

        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn record(i: usize) -> Encoded {
        Encoded {
            pair_id: format!("p{i:05}"),
            key: format!("r{i}"),
            headers: vec![("untaken-slice", "s".into())],
            payload: vec![b'x'; 200],
            slice: "s".into(),
        }
    }

    fn ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| record(i).pair_id).collect()
    }

    struct Setup {
        sink: Arc<FakeSink>,
        publisher: Arc<Publisher<FakeSink>>,
        metrics: Arc<Metrics>,
        _dir: Option<tempfile::TempDir>,
    }

    fn setup(mode: Mode, spool: bool, stall_timeout: Duration) -> Setup {
        let sink = FakeSink::new(mode);
        let metrics = Arc::new(Metrics::new());
        let dir = spool.then(|| tempfile::tempdir().unwrap());
        let spool = dir.as_ref().map(|d| Arc::new(Spool::open(d.path(), 1 << 30).unwrap().0));
        let publisher = Publisher::new(sink.clone(), spool, metrics.clone(), stall_timeout);
        Setup { sink, publisher, metrics, _dir: dir }
    }

    impl Setup {
        fn spooled(&self) -> u64 {
            self.publisher.spool().map_or(0, |s| s.records())
        }

        fn dropped(&self, reason: &'static str) -> u64 {
            self.metrics.pairs_dropped.get_or_create(&Reason { reason }).get()
        }

        /// Feeds `records` to [`Publisher::run`] and closes the channel: returns once
        /// every one is delivered, spooled or counted.
        async fn publish_all(&self, records: std::ops::Range<usize>) {
            let (tx, rx) = mpsc::channel(records.len().max(1));
            for i in records {
                tx.try_send(record(i)).unwrap();
            }
            drop(tx);
            let run = self.publisher.clone().run(rx, CancellationToken::new());
            tokio::time::timeout(Duration::from_secs(30), run).await.expect("the publisher finishes");
        }
    }

    /// Polls `done` every 5 ms; fails the test naming `what` after 20 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_records_are_published_once_and_never_spooled() {
        let s = setup(Mode::Ack, true, Duration::from_secs(2));
        s.publish_all(0..300).await;
        assert_eq!(s.sink.acked_sorted(), ids(0..300), "each record reached the sink exactly once");
        assert_eq!(s.metrics.pairs_published.get(), 300);
        assert_eq!((s.metrics.pairs_spooled.get(), s.spooled()), (0, 0));
        assert!(s.publisher.is_healthy());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_records_are_spooled_then_replayed_once_the_sink_recovers() {
        let s = setup(Mode::Fail, true, Duration::from_secs(2));
        s.publish_all(0..200).await;
        assert!(s.sink.acked_sorted().is_empty());
        assert_eq!((s.metrics.pairs_spooled.get(), s.spooled()), (200, 200), "every failed record is in the spool");
        assert!(!s.publisher.is_healthy(), "after a failure new records go straight to the spool");

        s.sink.set(Mode::Ack);
        let stop = CancellationToken::new();
        let replay = tokio::spawn(s.publisher.clone().run_spool(Duration::from_millis(20), stop.clone()));
        until("the spool to replay", || s.spooled() == 0 && s.publisher.is_healthy()).await;
        stop.cancel();
        replay.await.unwrap();
        assert_eq!(s.sink.acked_sorted(), ids(0..200), "each spooled record replayed exactly once");
        assert_eq!(s.metrics.pairs_replayed.get(), 200);
        assert_eq!(s.metrics.pairs_published.get(), 0, "nothing was acknowledged on the first try");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permanent_rejections_and_failures_without_a_spool_are_counted_as_dropped() {
        let s = setup(Mode::Reject, true, Duration::from_secs(2));
        s.publish_all(0..20).await;
        assert_eq!(s.dropped("rejected_permanently"), 20, "a record Kafka can never take is not retried");
        assert_eq!(s.spooled(), 0);

        let s = setup(Mode::Fail, false, Duration::from_secs(2));
        s.publish_all(0..20).await;
        assert_eq!(s.dropped("no_spool"), 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stall_past_the_stall_timeout_sends_new_records_to_the_spool() {
        let stall_timeout = Duration::from_millis(100);
        let s = setup(Mode::Stall, true, stall_timeout);
        let (tx, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let run = tokio::spawn(s.publisher.clone().run(rx, stop.clone()));
        for i in 0..5 {
            tx.send(record(i)).await.unwrap();
        }
        until("5 sends waiting on the sink", || s.sink.in_flight.load(Ordering::SeqCst) == 5).await;
        // What is under test is a timeout: no acknowledgement for longer than it.
        tokio::time::sleep(stall_timeout + Duration::from_millis(50)).await;
        tx.send(record(5)).await.unwrap();
        until("the new record to be spooled", || s.spooled() == 1).await;
        assert_eq!(s.sink.in_flight.load(Ordering::SeqCst), 5, "the new record did not join the stalled sends");

        s.sink.set(Mode::Ack);
        let replay = tokio::spawn(s.publisher.clone().run_spool(Duration::from_millis(20), stop.clone()));
        until("the stalled sends and the spool to deliver", || s.sink.acked.lock().unwrap().len() == 6).await;
        drop(tx);
        stop.cancel();
        run.await.unwrap();
        replay.await.unwrap();
        assert_eq!(s.sink.acked_sorted(), ids(0..6));
        assert_eq!(s.spooled(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_sink_holds_at_most_the_window_and_the_shutdown_deadline_spools_everything() {
        let s = setup(Mode::Stall, true, Duration::from_secs(3600));
        let total = MAX_IN_FLIGHT + 100;
        let (tx, rx) = mpsc::channel(total);
        for i in 0..total {
            tx.try_send(record(i)).unwrap();
        }
        let stop = CancellationToken::new();
        let run = tokio::spawn(s.publisher.clone().run(rx, stop.clone()));
        until("the delivery window to fill", || s.sink.in_flight.load(Ordering::SeqCst) == MAX_IN_FLIGHT).await;
        // What the shutdown does once its grace is over: purge and spool.
        s.publisher.divert_to_spool();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), run).await.expect("the drain ends despite the stall").unwrap();
        assert_eq!(s.sink.max_in_flight.load(Ordering::SeqCst), MAX_IN_FLIGHT, "never more sends waiting than the window");
        assert_eq!(s.spooled(), total as u64, "every record, sent or waiting, is in the spool");
        assert_eq!(s.dropped("spool_full") + s.dropped("spool_io") + s.dropped("no_spool"), 0);
        drop(tx);
    }
}
