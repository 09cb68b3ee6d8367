//! The sidecar's core behaviour behind the gRPC edge: validate, sample, admit,
//! hand off; run shadow calls; join halves; hand finished pairs to the publisher.
//!
//! `mirror` and `complete` run on the router's request path: they never wait on
//! the network, a lock held across I/O, or a full queue. Everything slow happens
//! in tasks this module spawns and tracks, so shutdown can drain them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::de::IgnoredAny;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Ticket};
use crate::config::{Config, ConfigError, Encoding};
use crate::metrics::{Metrics, RouteLabel, RouteOutcome, Status};
use crate::pairing::{self, InsertError, Ready, Table};
use crate::proto::v1::{Answer, CompleteRequest, CompleteResponse, MirrorRequest, MirrorResponse, PairKind, PairStatus};
use crate::record::{self, Encoded, Half, PairMeta, Source};
use crate::redact::Redactor;
use crate::routes::{Catalog, Route, RouteError};
use crate::sampling::Sampler;
use crate::upstream;

/// A request label that opts the request out: never shadowed, never published.
pub const OPT_OUT_LABEL: &str = "untaken.no_shadow";

/// Why `Mirror` or `Complete` refused a call. Mapped to a gRPC status in `server`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("request_id `{0}`: a pair for it is already pending")]
    AlreadyExists(String),
    #[error("request_id `{0}`: {1}")]
    NotFound(String, pairing::CompleteError),
    #[error("request_id `{0}`: the primary answer was already given")]
    PrimaryAlreadyGiven(String),
    #[error("untaken is shutting down")]
    Draining,
}

impl RequestError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        RequestError::InvalidArgument { field, message: message.into() }
    }
}

/// The settings that can change without a restart.
pub struct Live {
    pub config: Config,
    pub sampler: Sampler,
    pub catalog: Catalog,
    pub admission: Admission,
    pub redactor: Redactor,
}

impl Live {
    pub fn new(config: Config, previous: Option<&Live>) -> Result<Self, ConfigError> {
        Ok(Self {
            sampler: Sampler::new(&config.sampling),
            catalog: Catalog::from_config(&config)?,
            admission: Admission::new(&config, previous.map(|p| &p.admission)),
            redactor: Redactor::new(&config.redaction)?,
            config,
        })
    }
}

pub struct Job {
    request_id: String,
    route: Arc<Route>,
    body: Bytes,
    traceparent: String,
    ticket: Ticket,
}

pub struct Engine {
    live: ArcSwap<Live>,
    table: Mutex<Table>,
    jobs: mpsc::Sender<Job>,
    records: mpsc::Sender<Encoded>,
    metrics: Arc<Metrics>,
    client: upstream::Client,
    encoding: Encoding,
    draining: AtomicBool,
    /// Shadow calls; cancelled when the shutdown grace runs out.
    shadow_tasks: TaskTracker,
    shadow_cancel: CancellationToken,
    /// Record building and hand-off to the publisher; never cancelled.
    finish_tasks: TaskTracker,
    /// Pairs out of the table but not yet taken by the publisher. They count against
    /// `pairing.max_pending`, so memory stays bounded while Kafka is slow.
    finishing: AtomicUsize,
}

/// The receiving ends the engine feeds: shadow jobs (for [`Engine::run_dispatcher`])
/// and encoded records (for the publisher).
pub struct Channels {
    pub jobs: mpsc::Receiver<Job>,
    pub records: mpsc::Receiver<Encoded>,
}

impl Engine {
    pub fn new(config: Config, encoding: Encoding, metrics: Arc<Metrics>) -> Result<(Arc<Self>, Channels), ConfigError> {
        let (jobs_tx, jobs_rx) = mpsc::channel(config.queue.capacity);
        let (rec_tx, rec_rx) = mpsc::channel(RECORDS_CHANNEL);
        let table = Table::new(config.pairing.max_pending, config.pairing.timeout);
        let client = upstream::Client::new(config.server.max_body_bytes);
        let engine = Arc::new(Self {
            live: ArcSwap::from_pointee(Live::new(config, None)?),
            table: Mutex::new(table),
            jobs: jobs_tx,
            records: rec_tx,
            metrics,
            client,
            encoding,
            draining: AtomicBool::new(false),
            shadow_tasks: TaskTracker::new(),
            shadow_cancel: CancellationToken::new(),
            finish_tasks: TaskTracker::new(),
            finishing: AtomicUsize::new(0),
        });
        Ok((engine, Channels { jobs: jobs_rx, records: rec_rx }))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Swaps in a new validated config; in-flight work keeps the one it started with.
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let old = self.live.load_full();
        let live = Live::new(config, Some(&old))?;
        self.table
            .lock()
            .expect("pairing lock")
            .set_limits(live.config.pairing.max_pending, live.config.pairing.timeout);
        self.live.store(Arc::new(live));
        Ok(())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The `Mirror` RPC. Never waits: validation, a hash, a try-send, and return.
    pub fn mirror(&self, req: MirrorRequest, traceparent: &str) -> Result<MirrorResponse, RequestError> {
        let live = self.live.load();
        let result = self.mirror_inner(&live, req, traceparent);
        if let Err(e) = &result {
            let field = match e {
                RequestError::InvalidArgument { field, .. } => field,
                RequestError::AlreadyExists(_) => &"already_exists",
                RequestError::Draining => &"draining",
                _ => &"other",
            };
            self.metrics.mirror("rejected", field, "");
        }
        result
    }

    fn mirror_inner(&self, live: &Live, req: MirrorRequest, traceparent: &str) -> Result<MirrorResponse, RequestError> {
        if self.is_draining() {
            return Err(RequestError::Draining);
        }
        let limits = &live.config.server;
        validate_request(&req, limits.max_body_bytes, limits.max_labels, limits.max_label_bytes)?;
        let (taken, shadow) = live.catalog.resolve(&req.route_taken, &req.shadow_route).map_err(|e| match e {
            RouteError::UnknownShadowRoute(_) | RouteError::ShadowIsTaken(_) => {
                RequestError::invalid("shadow_route", e.to_string())
            }
            _ => RequestError::invalid("route_taken", e.to_string()),
        })?;
        let shadow_name = shadow.as_ref().map(|s| s.info.name.clone()).unwrap_or_default();
        let not = |reason: &'static str, rate: f64| MirrorResponse {
            sampled: false,
            pair_id: String::new(),
            reason: reason.to_string(),
            rate,
            shadow_route: shadow_name.clone(),
            control: false,
        };
        if req.labels.get(OPT_OUT_LABEL).is_some_and(|v| v == "true") {
            self.metrics.mirror("not_sampled", "opted_out", &req.slice);
            return Ok(not("opted_out", 0.0));
        }
        let key = if req.sampling_key.is_empty() { &req.request_id } else { &req.sampling_key };
        let decision = live.sampler.decide(key, &req.slice, &req.route_taken);
        if !decision.sampled {
            self.metrics.mirror("not_sampled", "not_sampled", &req.slice);
            return Ok(not("not_sampled", decision.rate));
        }
        // A control pair asks the route taken again: judged like any pair, it shows
        // what the comparison reports when there is no difference to find.
        let control = live.sampler.is_control(&req.request_id);
        let shadow = if control { Some(taken.clone()) } else { shadow };
        let Some(shadow) = shadow else {
            self.metrics.mirror("not_sampled", "no_counterfactual", &req.slice);
            return Ok(not("no_counterfactual", decision.rate));
        };
        let shadow_name = shadow.info.name.clone();
        let route_limits = live.admission.route(&shadow.info.name).expect("catalog and admission agree").clone();
        let (body, prices) = (&req.request_body, &shadow.info);
        let estimate = || crate::admission::estimate_cost(body, prices.input_usd_per_mtok, prices.output_usd_per_mtok);
        let ticket = match route_limits.admit(live.admission.minute(), estimate) {
            Ok(t) => t,
            Err(shed) => {
                self.metrics.mirror("shed", shed.reason(), &req.slice);
                return Ok(not(shed.reason(), decision.rate));
            }
        };
        let pair_id = uuid::Uuid::now_v7().to_string();
        let primary = req.primary.map(|a| half_from_answer(a, limits.max_body_bytes));
        let meta = PairMeta {
            pair_id: pair_id.clone(),
            request_id: req.request_id.clone(),
            sampling_key: key.clone(),
            received_at: SystemTime::now(),
            slice: req.slice.clone(),
            labels: req.labels,
            rate: decision.rate,
            route_taken: taken.info.clone(),
            route_not_taken: shadow.info.clone(),
            request_body: Bytes::from(req.request_body),
            traceparent: traceparent.to_string(),
            kind: if control { PairKind::Control } else { PairKind::Pair },
        };
        let job = Job {
            request_id: req.request_id.clone(),
            route: shadow,
            body: meta.request_body.clone(),
            traceparent: traceparent.to_string(),
            ticket,
        };
        {
            // Accept-or-refuse is atomic with the drain, which sets `draining` and then
            // empties the table under this lock: a pair inserted here is drained (published
            // with its missing half named), or the call is refused. The job is queued under
            // the lock too, so a pair the drain published was never answered `queue_full`.
            let mut table = self.table.lock().expect("pairing lock");
            if self.is_draining() {
                return Err(RequestError::Draining);
            }
            if table.len() + self.finishing.load(Ordering::Relaxed) >= live.config.pairing.max_pending {
                self.metrics.mirror("shed", "pairing_full", &req.slice);
                return Ok(not("pairing_full", decision.rate));
            }
            match table.insert(meta, primary, Instant::now()) {
                Ok(()) => {}
                Err(InsertError::Duplicate) => return Err(RequestError::AlreadyExists(req.request_id)),
                Err(InsertError::Full) => {
                    self.metrics.mirror("shed", "pairing_full", &req.slice);
                    return Ok(not("pairing_full", decision.rate));
                }
            }
            // Counted before the hand-off, so the dispatcher's decrement never runs first.
            self.metrics.queue_depth.inc();
            if self.jobs.try_send(job).is_err() {
                self.metrics.queue_depth.dec();
                table.remove(&req.request_id);
                self.metrics.mirror("shed", "queue_full", &req.slice);
                return Ok(not("queue_full", decision.rate));
            }
            self.metrics.pending_pairs.set(table.len() as i64);
        }
        self.metrics.mirror("sampled", if control { "control" } else { "" }, &req.slice);
        Ok(MirrorResponse { sampled: true, pair_id, reason: String::new(), rate: decision.rate, shadow_route: shadow_name, control })
    }

    /// The `Complete` RPC. Never waits: the record is built in a spawned task.
    pub fn complete(self: &Arc<Self>, req: CompleteRequest) -> Result<CompleteResponse, RequestError> {
        let outcome = self.complete_inner(req);
        let label = match &outcome {
            Ok(_) => "joined",
            Err(RequestError::NotFound(..)) => "not_found",
            Err(RequestError::PrimaryAlreadyGiven(_)) => "already_given",
            Err(_) => "invalid",
        };
        self.metrics.complete_requests.get_or_create(&crate::metrics::Reason { reason: label }).inc();
        outcome
    }

    fn complete_inner(self: &Arc<Self>, req: CompleteRequest) -> Result<CompleteResponse, RequestError> {
        check_request_id(&req.request_id)?;
        let Some(primary) = req.primary else {
            return Err(RequestError::invalid("primary", "is required"));
        };
        let max = self.live.load().config.server.max_body_bytes;
        let half = half_from_answer(primary, max);
        let (pair_id, ready) = {
            let mut table = self.table.lock().expect("pairing lock");
            let r = table.complete(&req.request_id, half).map_err(|e| match e {
                pairing::CompleteError::NotFound => RequestError::NotFound(req.request_id.clone(), e),
                pairing::CompleteError::AlreadyGiven => RequestError::PrimaryAlreadyGiven(req.request_id.clone()),
            })?;
            self.metrics.pending_pairs.set(table.len() as i64);
            r
        };
        if let Some(ready) = ready {
            self.finish(ready);
        }
        Ok(CompleteResponse { pair_id })
    }

    /// Builds, encodes and hands a finished pair to the publisher, in a tracked task.
    fn finish(self: &Arc<Self>, ready: Ready) {
        self.finishing.fetch_add(1, Ordering::Relaxed);
        let engine = self.clone();
        self.finish_tasks.spawn(async move {
            // Build and encode first, then wait for the publisher holding only the encoded
            // record: the halves, the metadata and the config snapshot are freed before the wait.
            // Redaction, building and encoding are CPU work. A big pair goes off the
            // runtime's workers, so it never stalls a `Mirror` queued behind it; a small
            // one is cheaper to build here than to hand to another thread.
            let builder = engine.clone();
            let built = if is_small(&ready) {
                builder.encode_caught(ready)
            } else {
                tokio::task::spawn_blocking(move || builder.encode_caught(ready)).await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "building a record failed; the pair is lost");
                    engine.metrics.pairs_dropped.get_or_create(&crate::metrics::Reason { reason: "build_failed" }).inc();
                    None
                })
            };
            if let Some(encoded) = built {
                engine.hand_over(encoded).await;
            }
            engine.finishing.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// [`Engine::finish`] for a caller that is itself a background task (the shadow call,
    /// never a request path): a small pair is built right here and handed over at once
    /// when the publisher has room, which spares a task and a wake-up per pair. Nothing
    /// here awaits, so cancelling the caller cannot cut it short.
    fn finish_here(self: &Arc<Self>, ready: Ready) {
        if !is_small(&ready) {
            return self.finish(ready);
        }
        self.finishing.fetch_add(1, Ordering::Relaxed);
        if let Some(encoded) = self.encode_caught(ready) {
            match self.records.try_send(encoded) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(encoded)) => {
                    // The publisher is busy: wait for it in a tracked task, as `finish` does.
                    self.finishing.fetch_add(1, Ordering::Relaxed);
                    let engine = self.clone();
                    self.finish_tasks.spawn(async move {
                        engine.hand_over(encoded).await;
                        engine.finishing.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.publisher_closed(),
            }
        }
        self.finishing.fetch_sub(1, Ordering::Relaxed);
    }

    /// [`Engine::encode`], with a panic counted as a lost pair instead of unwinding.
    fn encode_caught(&self, ready: Ready) -> Option<Encoded> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.encode(ready))) {
            Ok(encoded) => Some(encoded),
            Err(_) => {
                tracing::error!("building a record panicked; the pair is lost");
                self.metrics.pairs_dropped.get_or_create(&crate::metrics::Reason { reason: "build_failed" }).inc();
                None
            }
        }
    }

    /// Waits for the publisher to take a record.
    async fn hand_over(&self, encoded: Encoded) {
        // The publisher only stops after every finish task is done, so this cannot fail
        // while a record is in hand; if it ever did, count it rather than lose it silently.
        if self.records.send(encoded).await.is_err() {
            self.publisher_closed();
        }
    }

    fn publisher_closed(&self) {
        self.metrics.pairs_dropped.get_or_create(&crate::metrics::Reason { reason: "publisher_closed" }).inc();
    }

    /// Redacts, builds and encodes a finished pair (CPU only).
    fn encode(&self, ready: Ready) -> Encoded {
        let live = self.live.load();
        let redactor = &live.redactor;
        let mut meta = ready.meta;
        meta.request_body = redactor.apply(&meta.request_body);
        let redact = |h: Option<Half>| {
            h.map(|mut h| {
                h.body = redactor.apply(&h.body);
                h
            })
        };
        let (primary, counterfactual) = (redact(ready.primary), redact(ready.counterfactual));
        let rec = record::build(&meta, primary.as_ref(), counterfactual.as_ref(), &ready.reason, SystemTime::now());
        let status = match rec.status() {
            PairStatus::Complete => "complete",
            PairStatus::PrimaryMissing => "primary_missing",
            PairStatus::CounterfactualMissing => "counterfactual_missing",
            PairStatus::Unspecified => "unspecified",
        };
        self.metrics.pairs_built.get_or_create(&Status { status }).inc();
        record::encode(rec, self.encoding)
    }

    /// Runs queued shadow jobs until the queue closes. One task per call; the
    /// admission ticket bounds how many run per route.
    pub async fn run_dispatcher(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            self.metrics.queue_depth.dec();
            let engine = self.clone();
            let cancel = self.shadow_cancel.clone();
            self.shadow_tasks.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = engine.clone().shadow(job) => {}
                }
            });
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

    /// Publishes pairs whose other half did not arrive in time. Runs until cancelled.
    pub async fn run_expiry(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let expired = {
                let mut table = self.table.lock().expect("pairing lock");
                let e = table.expire(Instant::now());
                self.metrics.pending_pairs.set(table.len() as i64);
                e
            };
            for ready in expired {
                self.finish(ready);
            }
        }
    }

    /// Shutdown, step 1: refuse new `Mirror` calls.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Shutdown, step 2: wait up to `grace` for shadow calls, cancel the rest, and
    /// publish every pair still pending with its missing half named. When this
    /// returns, every accepted pair has been handed to the publisher.
    pub async fn drain(self: &Arc<Self>, grace: Duration) {
        self.shadow_tasks.close();
        let _ = tokio::time::timeout(grace, self.shadow_tasks.wait()).await;
        self.shadow_cancel.cancel();
        self.shadow_tasks.wait().await;
        let left = self.table.lock().expect("pairing lock").drain("untaken shut down before it arrived");
        for ready in left {
            self.finish(ready);
        }
        self.finish_tasks.close();
        self.finish_tasks.wait().await;
    }
}

/// Whether a pair's bodies are small enough to build on a runtime worker
/// ([`crate::INLINE_CPU_BYTES`]); a bigger one is built on the blocking pool.
fn is_small(ready: &Ready) -> bool {
    let bytes = ready.meta.request_body.len()
        + [&ready.primary, &ready.counterfactual].iter().filter_map(|h| h.as_ref()).map(|h| h.body.len()).sum::<usize>();
    bytes <= crate::INLINE_CPU_BYTES
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

fn half_from_answer(a: Answer, max_body_bytes: usize) -> Half {
    let mut half = Half {
        body: Bytes::from(a.body),
        status_code: a.status_code,
        latency_ms: a.latency_ms,
        error: a.error,
        source: Source::Router,
    };
    if half.body.len() > max_body_bytes {
        half.error = format!("{} (answer body over {max_body_bytes} bytes, dropped)", half.error).trim().to_string();
        half.body = Bytes::new();
    }
    half
}

/// Encoded records handed to the publisher and not yet taken. Records waiting beyond
/// it wait in their finish task, counted against `pairing.max_pending`.
pub const RECORDS_CHANNEL: usize = 16;

/// Longest request_id or sampling_key accepted.
pub const MAX_ID_BYTES: usize = 512;
/// Longest route name or slice accepted (slices become Kafka headers and metric labels).
pub const MAX_NAME_BYTES: usize = 128;

/// A request_id is the Kafka key and the shadow call's `x-request-id` header: not
/// empty, bounded, and free of control characters (which no header may carry).
fn check_request_id(id: &str) -> Result<(), RequestError> {
    if id.is_empty() {
        return Err(RequestError::invalid("request_id", "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(RequestError::invalid("request_id", format!("longer than {MAX_ID_BYTES} bytes")));
    }
    if id.chars().any(char::is_control) {
        return Err(RequestError::invalid("request_id", "must not contain control characters"));
    }
    Ok(())
}

/// Checks a `Mirror` request; the error names the field.
pub fn validate_request(
    req: &MirrorRequest,
    max_body_bytes: usize,
    max_labels: usize,
    max_label_bytes: usize,
) -> Result<(), RequestError> {
    check_request_id(&req.request_id)?;
    for (field, value, max) in [
        ("sampling_key", &req.sampling_key, MAX_ID_BYTES),
        ("route_taken", &req.route_taken, MAX_NAME_BYTES),
        ("shadow_route", &req.shadow_route, MAX_NAME_BYTES),
        ("slice", &req.slice, MAX_NAME_BYTES),
    ] {
        if value.len() > max {
            return Err(RequestError::invalid(field, format!("longer than {max} bytes")));
        }
    }
    if req.request_body.len() > max_body_bytes {
        return Err(RequestError::invalid(
            "request_body",
            format!("{} bytes is over the limit of {max_body_bytes}", req.request_body.len()),
        ));
    }
    let first = req.request_body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') || serde_json::from_slice::<IgnoredAny>(&req.request_body).is_err() {
        return Err(RequestError::invalid("request_body", "must be a JSON object (an OpenAI chat-completions request)"));
    }
    if req.labels.len() > max_labels {
        return Err(RequestError::invalid("labels", format!("{} labels is over the limit of {max_labels}", req.labels.len())));
    }
    if let Some((k, _)) = req.labels.iter().find(|(k, v)| k.len() > max_label_bytes || v.len() > max_label_bytes) {
        let shown: String = k.chars().take(64).collect();
        return Err(RequestError::invalid("labels", format!("label `{shown}` is longer than {max_label_bytes} bytes")));
    }
    if let Some(p) = &req.primary {
        if p.body.len() > max_body_bytes {
            return Err(RequestError::invalid(
                "primary.body",
                format!("{} bytes is over the limit of {max_body_bytes}", p.body.len()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn req() -> MirrorRequest {
        MirrorRequest {
            request_id: "r1".into(),
            route_taken: "fast".into(),
            request_body: br#"{"messages":[]}"#.to_vec(),
            ..Default::default()
        }
    }

    fn field(r: MirrorRequest) -> &'static str {
        match validate_request(&r, 100, 2, 8) {
            Err(RequestError::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_input_names_its_field() {
        assert!(validate_request(&req(), 100, 2, 8).is_ok());
        assert_eq!(field(MirrorRequest { request_id: String::new(), ..req() }), "request_id");
        assert_eq!(field(MirrorRequest { request_body: b"not json".to_vec(), ..req() }), "request_body");
        assert_eq!(field(MirrorRequest { request_body: b"[1,2]".to_vec(), ..req() }), "request_body");
        assert_eq!(field(MirrorRequest { request_body: b"{\"a\":".to_vec(), ..req() }), "request_body");
        assert_eq!(field(MirrorRequest { request_body: vec![b' '; 101], ..req() }), "request_body");
        let many: HashMap<String, String> = (0..3).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(field(MirrorRequest { labels: many, ..req() }), "labels");
        let long = HashMap::from([("tenant".to_string(), "x".repeat(9))]);
        assert_eq!(field(MirrorRequest { labels: long, ..req() }), "labels");
        let long_key = HashMap::from([("k".repeat(1 << 20), "v".to_string())]);
        match validate_request(&MirrorRequest { labels: long_key, ..req() }, 100, 2, 8) {
            Err(e @ RequestError::InvalidArgument { field: "labels", .. }) => {
                assert!(e.to_string().len() < 200, "a huge key is not echoed back whole")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(field(MirrorRequest { slice: "s".repeat(129), ..req() }), "slice");
        assert_eq!(field(MirrorRequest { route_taken: "r".repeat(129), ..req() }), "route_taken");
        assert_eq!(field(MirrorRequest { sampling_key: "k".repeat(513), ..req() }), "sampling_key");
        assert_eq!(field(MirrorRequest { request_id: "i".repeat(513), ..req() }), "request_id");
        // It travels as an HTTP header to the shadow upstream, where a control character
        // would fail every call.
        assert_eq!(field(MirrorRequest { request_id: "r1\r\nx-evil: 1".into(), ..req() }), "request_id");
        assert_eq!(field(MirrorRequest { request_id: "r\u{7f}".into(), ..req() }), "request_id");
    }

    /// A `Mirror` that raced the drain: it was on its way when the drain set `draining`
    /// and emptied the table (which the drain does under the table lock, held here).
    /// It must come out refused, or with its pair among those the drain took; it used
    /// to pass the draining check first and insert into the emptied table afterwards,
    /// a pair accepted and never published.
    #[test]
    fn a_mirror_racing_the_drain_is_refused_or_drained() {
        let config = crate::config::from_toml(
            "[sampling]\ndefault_rate = 1.0\n\
             [routes.fast]\nurl = \"http://127.0.0.1:9/\"\nmodel = \"f\"\ncounterfactual = \"slow\"\n\
             [routes.slow]\nurl = \"http://127.0.0.1:9/\"\nmodel = \"s\"\n",
        )
        .unwrap();
        let (engine, _channels) = Engine::new(config, Encoding::Json, Arc::new(Metrics::new())).unwrap();
        let mut table = engine.table.lock().unwrap();
        let call = std::thread::spawn({
            let engine = engine.clone();
            move || engine.mirror(req(), "")
        });
        // Let the call run up to the table lock (there is no signal for "blocked on a lock").
        std::thread::sleep(Duration::from_millis(200));
        engine.start_drain();
        let drained: Vec<String> = table.drain("shutdown").into_iter().map(|r| r.meta.pair_id).collect();
        drop(table);
        match call.join().unwrap() {
            Err(RequestError::Draining) => {}
            Ok(r) if r.sampled => assert!(drained.contains(&r.pair_id), "accepted {} after the table was drained", r.pair_id),
            other => panic!("{other:?}"),
        }
        assert!(engine.table.lock().unwrap().is_empty(), "nothing is left behind the drain");
    }
}
