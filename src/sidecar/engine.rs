//! The sidecar's decisions on the router's request path: `Mirror` (validate, opt-out,
//! sample, pick the shadow route, admit, store the pair, queue the shadow call) and
//! `Complete` (join the primary half); plus live reload and the drain.
//!
//! `mirror` and `complete` never wait on the network, a lock held across I/O, or a
//! full queue. This module owns the [`Engine`] and the pairing table's lock; the slow
//! parts live beside it: [`super::dispatch`] (shadow calls), [`super::expiry`] (timed
//! out pairs), [`super::finish`] (record building off the request path), all tracked
//! so the drain can wait for them. It never touches a sink.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, Encoding};
use crate::metrics::Metrics;
use crate::proto::v1::{CompleteRequest, CompleteResponse, MirrorRequest, MirrorResponse, PairKind};
use crate::record::{Encoded, PairMeta};
use crate::redact::Redactor;
use crate::routes::{Catalog, RouteError};
use crate::sampling::Sampler;
use crate::sidecar::admission::Admission;
use crate::sidecar::dispatch::Job;
use crate::sidecar::finish::RECORDS_CHANNEL;
use crate::sidecar::pairing::{self, InsertError, Table};
use crate::sidecar::validate::{check_request_id, half_from_answer, validate_request};
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
    pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
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

pub struct Engine {
    pub(super) live: ArcSwap<Live>,
    pub(super) table: Mutex<Table>,
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) records: mpsc::Sender<Encoded>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) client: upstream::Client,
    pub(super) encoding: Encoding,
    pub(super) draining: AtomicBool,
    /// Cancelled when the drain starts: the dispatcher stops gathering jobs into
    /// batches (`dispatch::GATHER`) and starts what is queued at once.
    pub(super) drain_started: CancellationToken,
    /// The runtime the shadow calls and record building run on (the shadow pipeline's
    /// own thread, see `app`), never the one `Mirror` and `Complete` are served on.
    pub(super) pipeline: Handle,
    /// Shadow calls; cancelled when the shutdown grace runs out.
    pub(super) shadow_tasks: TaskTracker,
    pub(super) shadow_cancel: CancellationToken,
    /// Record building and hand-off to the publisher; never cancelled.
    pub(super) finish_tasks: TaskTracker,
    /// Pairs out of the table but not yet taken by the publisher. They count against
    /// `pairing.max_pending`, so memory stays bounded while Kafka is slow.
    pub(super) finishing: AtomicUsize,
}

/// The receiving ends the engine feeds: shadow jobs (for [`Engine::run_dispatcher`])
/// and encoded records (for the publisher).
pub struct Channels {
    pub jobs: mpsc::Receiver<Job>,
    pub records: mpsc::Receiver<Encoded>,
}

impl Engine {
    /// `pipeline` is where shadow calls and record building are spawned.
    pub fn new(config: Config, encoding: Encoding, metrics: Arc<Metrics>, pipeline: Handle) -> Result<(Arc<Self>, Channels), ConfigError> {
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
            drain_started: CancellationToken::new(),
            pipeline,
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

    /// Rebuilds the state in force from its own config, so that the routes' API key
    /// files are read again (a rotated key). A config reload landing meanwhile is not
    /// undone: the rebuild starts over from it.
    pub fn reread_route_keys(&self) -> Result<(), ConfigError> {
        loop {
            let old = self.live.load_full();
            let live = Arc::new(Live::new(old.config.clone(), Some(&old))?);
            let before = self.live.compare_and_swap(&old, live);
            if Arc::ptr_eq(&before, &old) {
                return Ok(());
            }
        }
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
        let estimate = || crate::sidecar::admission::estimate_cost(body, prices.input_usd_per_mtok, prices.output_usd_per_mtok);
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
            // The gauge is also what the drain waits on: jobs queued and not yet spawned.
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

    /// Shutdown, step 1: refuse new `Mirror` calls.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.drain_started.cancel();
    }

    /// Shutdown, step 2: wait up to `grace` for shadow calls, cancel the rest, and
    /// publish every pair still pending with its missing half named. When this
    /// returns, every accepted pair has been handed to the publisher.
    pub async fn drain(self: &Arc<Self>, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        // A `Mirror` that passed the draining check holds the table lock until its job
        // is queued: once the lock is ours, no job is on its way into the queue.
        drop(self.table.lock().expect("pairing lock"));
        // Jobs queued before the drain started get their calls too: the dispatcher
        // stopped gathering and starts them at once. (A dispatcher that died with jobs
        // queued never starts them: this waits out the grace, and their pairs are
        // drained below with the counterfactual named missing.)
        // `queue_depth` counts them until they are spawned on the tracker closed below.
        while self.metrics.queue_depth.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Pairs with the dispatcher's release fence (see `dispatch::Engine::start`).
        std::sync::atomic::fence(Ordering::Acquire);
        self.shadow_tasks.close();
        let _ = tokio::time::timeout_at(deadline, self.shadow_tasks.wait()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::validate::tests::req;

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
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (engine, _channels) = Engine::new(config, Encoding::Json, Arc::new(Metrics::new()), runtime.handle().clone()).unwrap();
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
