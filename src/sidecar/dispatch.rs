//! Dispatch of shadow calls: takes queued jobs, runs one tracked task per call to the
//! route not taken (on the shadow pipeline's runtime, `Engine::pipeline`), settles its admission ticket with the actual cost, and joins the
//! answer into the pairing table.
//!
//! Owns the shadow-call tasks and their cancellation. Never runs on the router's
//! request path (`Mirror` only queues a [`Job`]), and never builds or publishes a
//! record itself: a joined pair goes to `Engine::finish` (in `finish`).

use std::sync::Arc;

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

impl Engine {
    /// Runs queued shadow jobs until the queue closes. One task per call; the
    /// admission ticket bounds how many run per route.
    pub async fn run_dispatcher(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            self.metrics.queue_depth.dec();
            let engine = self.clone();
            let cancel = self.shadow_cancel.clone();
            let call = async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = engine.clone().shadow(job) => {}
                }
            };
            self.shadow_tasks.spawn_on(call, &self.pipeline);
        }
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
