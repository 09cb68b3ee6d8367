//! Dispatch of shadow calls: takes queued jobs, runs one tracked task per call to the
//! route not taken (on the shadow pipeline's runtime, `Engine::pipeline`), settles its admission ticket with the actual cost, and joins the
//! answer into the pairing table.
//!
//! Owns the shadow-call tasks and their cancellation. Never runs on the router's
//! request path (`Mirror` only queues a [`Job`]), and never builds or publishes a
//! record itself: a joined pair goes to `Engine::finish` (in `finish`).
//!
//! Jobs are taken in batches: after starting every queued job the dispatcher lets
//! the queue gather for [`GATHER`] before it looks again. While it gathers it does
//! not wait on the queue, so a `Mirror` that queues a job then wakes nobody (waking
//! the shadow thread from the request path was a system call and a cross-CPU
//! wake-up per sampled request, ~3.5 µs of the router's worker each, BENCHMARKS.md):
//! at most one wake-up per batch, the first job after the queue ran empty. Below a
//! few hundred sampled requests a second that is still one per job, as before. The
//! cost is at most [`GATHER`] (plus the timer's 1 ms tick) before a shadow call
//! starts, which no pair measures: a half's latency is timed from its own call. The
//! drain stops the gathering: what is queued when it starts is started at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::metrics::{RouteLabel, RouteOutcome};
use crate::routes::Route;
use crate::sidecar::admission::Ticket;
use crate::sidecar::engine::Engine;
use crate::upstream;

/// A sampled request waiting for its shadow call.
pub struct Job {
    pub(super) request_id: String,
    pub(super) route: Arc<Route>,
    pub(super) body: Bytes,
    pub(super) traceparent: String,
    pub(super) ticket: Ticket,
}

/// How long queued jobs gather between two batches (see the module comment). The
/// queue must hold what arrives meanwhile, ~3 ms with the timer's 1 ms tick:
/// `queue.capacity` (1,024 by default) is that much of 341,000 sampled requests a second.
pub const GATHER: Duration = Duration::from_millis(2);

impl Engine {
    /// Runs queued shadow jobs until the queue closes, in batches ([`GATHER`]). One
    /// task per call; the admission ticket bounds how many run per route.
    pub async fn run_dispatcher(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            self.start(job);
            while let Ok(job) = jobs.try_recv() {
                self.start(job);
            }
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = self.drain_started.cancelled() => {}
            }
        }
    }

    fn start(self: &Arc<Self>, job: Job) {
        let engine = self.clone();
        let cancel = self.shadow_cancel.clone();
        let call = async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = engine.shadow(job) => {}
            }
        };
        self.shadow_tasks.spawn_on(call, &self.pipeline);
        // After the spawn: the drain waits for this gauge to reach 0 before it closes
        // the tracker, so no job is ever between the queue and the tracker. The gauge
        // is a relaxed atomic: this fence, with the drain's acquire fence, orders the
        // spawn before the drain's close.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.metrics.queue_depth.dec();
    }

    async fn shadow(self: Arc<Self>, job: Job) {
        let route = &job.route.info.name;
        // Lowered on drop, so a call the drain cancels mid-flight is not counted forever.
        let in_flight = GaugeHeld::raise(&self.metrics.shadow_inflight);
        let half = self.client.call(&job.route, &job.body, &job.request_id, &job.traceparent).await;
        drop(in_flight);
        let outcome = upstream::outcome(&half);
        self.metrics.shadow_calls.get_or_create(&RouteOutcome { route: route.clone(), outcome }).inc();
        self.metrics.shadow_latency.get_or_create(&RouteLabel { route: route.clone() }).observe(half.latency_ms / 1000.0);
        let prices = (job.route.info.input_usd_per_mtok, job.route.info.output_usd_per_mtok);
        let cost = match crate::usage::read(&half.body) {
            crate::usage::BodyKind::Object(usage) => Some(usage.cost_usd(prices.0, prices.1)),
            _ => None,
        };
        // The actual cost replaces the estimate reserved at admission (nothing when the
        // answer carries no usage), and the concurrency slot is freed.
        job.ticket.settle(cost.unwrap_or(0.0), self.live.load().admission.minute());
        if let Some(cost) = cost {
            self.metrics.shadow_cost.get_or_create(&RouteLabel { route: route.clone() }).observe(cost);
            self.metrics.shadow_cost_total.get_or_create(&RouteLabel { route: route.clone() }).inc_by(cost);
        }
        tracing::debug!(request_id = %job.request_id, route = %route, outcome, latency_ms = half.latency_ms, "shadow call done");
        let ready = {
            let mut table = self.table.lock().expect("pairing lock");
            let ready = table.counterfactual(&job.request_id, half);
            let late = ready.is_none() && !table.contains(&job.request_id);
            self.metrics.pending_pairs.set(table.len() as i64);
            if late {
                self.metrics.late_counterfactuals.inc();
            }
            ready
        };
        if let Some(ready) = ready {
            self.finish_here(ready);
        }
    }
}

/// One unit of a gauge, held until dropped.
struct GaugeHeld<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> GaugeHeld<'a> {
    fn raise(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeHeld<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
