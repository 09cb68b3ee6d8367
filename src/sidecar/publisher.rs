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
use crate::sink::{Sink, SinkError};

/// Records sent to the sink at once; bounds the memory held by deliveries in flight.
/// (512 held a single Kafka producer to 0.4× of kcat's rate; see BENCHMARKS.md.)
pub const MAX_IN_FLIGHT: usize = 4096;
/// Bytes of records sent to the sink at once, whatever their size: with
/// [`MAX_IN_FLIGHT`], what deliveries in flight can hold (4,096 small records fit).
pub const MAX_IN_FLIGHT_BYTES: usize = 32 * 1024 * 1024;
const KIB: usize = 1024;

pub struct Publisher {
    sink: Arc<Sink>,
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
}

impl Publisher {
    pub fn new(sink: Arc<Sink>, spool: Option<Arc<Spool>>, metrics: Arc<Metrics>, stall_timeout: Duration) -> Arc<Self> {
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

    pub fn sink(&self) -> &Arc<Sink> {
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
        if let Sink::Kafka(k) = self.sink.as_ref() {
            k.purge();
        }
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
