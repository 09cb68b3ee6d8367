//! The drain: what happens between SIGTERM (or [`super::Running::shutdown`]) and exit,
//! as one named type whose steps run in the order they read in [`Shutdown::run`].
//!
//! 1. stop accepting: `Mirror` answers UNAVAILABLE, gRPC health says NOT_SERVING;
//!    `Complete` keeps joining pairs whose shadow call is finishing;
//! 2. drain pending pairs: shadow calls get `shutdown_grace`, the rest are cancelled
//!    and every pair still pending is published with its missing half named;
//! 3. stop the gRPC server and the background tasks (dispatcher, expiry, markers);
//! 4. flush the publisher: every record is acknowledged by the sink or spooled;
//!    then the shadow pipeline's thread (`shadow_runtime`) stops, nothing left on it;
//! 5. fsync the spool, clear the pending-pairs marker, flush the Kafka producer;
//! 6. stop the admin server (last, so `/metrics` can be scraped during the drain).
//!
//! A deadline armed at step 1 bounds it all: one second past the grace, the
//! publisher spools every record it still holds and purges back (and spools) what
//! Kafka has not acknowledged, so a slow Kafka never holds the exit and nothing is
//! dropped with the producer. Owns no state of its own and never decides what a
//! record's fate is: the engine and the publisher do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::shadow_runtime::ShadowRuntime;
use crate::proto::v1::mirror_server::MirrorServer;
use crate::server::MirrorService;
use crate::sidecar::engine::Engine;
use crate::sidecar::publisher::Publisher;
use crate::sink::Sink as _;

/// How long after the shutdown grace Kafka may still take records before everything
/// left is spooled: pairs whose shadow call the grace cut short are built after it.
const KAFKA_AFTER_GRACE: Duration = Duration::from_secs(1);
/// How long a client holding a gRPC stream open (health watch, reflection) may hold
/// the server's exit once the drain is done with it.
const GRPC_CLOSE: Duration = Duration::from_secs(2);
/// How long the Kafka producer's final flush may take; everything it holds is
/// already acknowledged or spooled by then.
const SINK_FLUSH: Duration = Duration::from_secs(5);

/// A server task and the token that stops it.
pub(super) struct Served {
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

/// Everything the drain stops, each field in the step that stops it.
pub(super) struct Shutdown {
    /// Bounds steps 2 and the wait for Kafka (`server.shutdown_grace`).
    pub grace: Duration,
    pub engine: Arc<Engine>,
    pub health: tonic_health::server::HealthReporter,
    pub grpc: Served,
    /// Takes queued shadow jobs; aborted once the engine has drained.
    pub dispatcher: JoinHandle<()>,
    /// Stops the expiry sweeper, the spool replay and the pending-pairs marker.
    pub stop_background: CancellationToken,
    pub expiry: JoinHandle<()>,
    pub publisher: Arc<Publisher>,
    pub stop_publisher: CancellationToken,
    pub publishing: JoinHandle<()>,
    pub spooling: JoinHandle<()>,
    /// The thread the dispatcher, shadow calls, record building and publisher ran on.
    pub shadow: ShadowRuntime,
    /// The spool directory holding the pending-pairs marker, when there is a spool.
    pub marker: Option<PathBuf>,
    pub admin: Served,
}

impl Shutdown {
    /// Runs the drain once `signal` fires. When it returns, every accepted pair is
    /// acknowledged by the sink or in the fsynced spool.
    pub async fn run(self, signal: CancellationToken) {
        signal.cancelled().await;
        let started = Instant::now();
        tracing::info!(grace_ms = self.grace.as_millis() as u64, "draining");
        self.stop_accepting().await;
        let deadline = self.arm_deadline();
        self.engine.drain(self.grace).await;
        let grpc_closing = stop_grpc(self.grpc);
        self.dispatcher.abort();
        self.stop_background.cancel();
        let _ = self.expiry.await;
        flush_publisher(self.stop_publisher, self.publishing, self.spooling).await;
        self.shadow.stop().await;
        deadline.abort();
        let _ = grpc_closing.await;
        sync_spool(&self.publisher, self.marker.as_deref()).await;
        flush_sink(&self.publisher).await;
        self.admin.stop.cancel();
        let _ = self.admin.task.await;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained");
    }

    /// Step 1. The gRPC server keeps running: `Mirror` answers UNAVAILABLE, health
    /// says NOT_SERVING, and `Complete` still joins pairs whose shadow call is finishing.
    async fn stop_accepting(&self) {
        self.engine.start_drain();
        self.health.set_not_serving::<MirrorServer<MirrorService>>().await;
    }

    /// Past the grace (plus a second for the pairs the grace cut short), nothing waits
    /// for Kafka: the publisher spools what it holds and what Kafka has not acknowledged
    /// is purged back and spooled, again every 100 ms until the drain aborts this task.
    /// So the whole drain ends within the grace plus a fixed margin however slowly
    /// Kafka acknowledges (a throttled broker).
    fn arm_deadline(&self) -> JoinHandle<()> {
        let publisher = self.publisher.clone();
        let after = self.grace + KAFKA_AFTER_GRACE;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::warn!("shutdown grace over; spooling what Kafka has not acknowledged");
            loop {
                publisher.divert_to_spool();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// Step 3: stops the gRPC server, in the background so the publisher's flush does
/// not wait for it; a client holding a stream open is cut off after [`GRPC_CLOSE`].
fn stop_grpc(grpc: Served) -> JoinHandle<()> {
    grpc.stop.cancel();
    tokio::spawn(async move {
        let mut task = grpc.task;
        if tokio::time::timeout(GRPC_CLOSE, &mut task).await.is_err() {
            task.abort();
        }
    })
}

/// Step 4: the publisher takes what is left in its channel and returns once every
/// record is delivered, spooled or counted; the spool replay stops with it.
async fn flush_publisher(stop: CancellationToken, publishing: JoinHandle<()>, spooling: JoinHandle<()>) {
    stop.cancel();
    let _ = publishing.await;
    let _ = spooling.await;
}

/// Step 5a: only now is every record acknowledged or in the spool: fsync it, then
/// record that no pair is pending, so the next start reports no loss.
async fn sync_spool(publisher: &Publisher, marker: Option<&std::path::Path>) {
    if let Some(spool) = publisher.spool().cloned() {
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.sync()).await {
            tracing::error!(error = %e, "final spool fsync failed");
        }
    }
    if let Some(dir) = marker {
        super::write_pending_marker(dir, 0);
    }
}

/// Step 5b: flushes the producer off the runtime (it blocks).
async fn flush_sink(publisher: &Publisher) {
    let sink = publisher.sink().clone();
    let _ = tokio::task::spawn_blocking(move || sink.flush_blocking(SINK_FLUSH)).await;
}
