//! Wires the sidecar together and runs it: sink, spool, engine, publisher,
//! gRPC server, admin server, config reload; and the shutdown that drains them.
//!
//! Shutdown order (SIGTERM, SIGINT, or [`Running::shutdown`]): health says
//! NOT_SERVING and `Mirror` answers UNAVAILABLE; in-flight shadow calls get the
//! grace period; pairs still pending are published with the missing half named;
//! the publisher delivers or spools everything it holds; the Kafka producer is
//! flushed off the runtime (what it cannot deliver in time is purged back to us
//! and spooled, never dropped with the producer); the spool is fsynced.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::engine::Engine;
use crate::metrics::{Metrics, Reason};
use crate::proto::v1::mirror_server::MirrorServer;
use crate::publisher::Publisher;
use crate::server::MirrorService;
use crate::sink::spool::Spool;
use crate::sink::{Sink, SinkError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot open the sink: {0}")]
    Sink(#[from] SinkError),
    #[error("cannot open the spool: {0}")]
    Spool(#[from] crate::sink::spool::SpoolError),
    #[error("tls: {0}")]
    Tls(String),
}

/// A running sidecar.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub sink_description: String,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
}

impl Running {
    /// Starts the drain; returns at once. Await [`Running::wait`] for it to finish.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the drain has finished and everything is delivered or spooled.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr: addr.to_string(), source })
}

fn tls_config(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, StartError> {
    let Some(tls) = &config.server.tls else { return Ok(None) };
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| StartError::Tls(format!("{}: {e}", p.display())));
    let identity = tonic::transport::Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?);
    let mut t = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        t = t.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(t))
}

/// Starts everything on the configured addresses. Returns once both ports are
/// bound and `Mirror` answers; Kafka need not be reachable.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_budgets(config.routes.iter().map(|(name, r)| (name.as_str(), r.budget_usd_per_hour)));
    let grpc = bind(&config.server.listen).await?;
    let admin = bind(&config.server.admin_listen).await?;
    let tls = tls_config(&config)?;
    let token = config.server.auth_token()?;
    let sink = Arc::new(Sink::open(&config, metrics.clone())?);
    let spool = match &config.spool.dir {
        Some(dir) => {
            let (spool, found) = Spool::open(dir, config.spool.max_bytes)?;
            metrics.spool_max_bytes.set(config.spool.max_bytes as i64);
            if found.records > 0 || found.corrupt > 0 {
                tracing::warn!(records = found.records, bytes = found.bytes, corrupt = found.corrupt, "spool holds records from an earlier run; replaying");
            }
            if found.corrupt > 0 {
                metrics.pairs_dropped.get_or_create(&Reason { reason: "spool_corrupt" }).inc_by(found.corrupt);
            }
            metrics.spool_bytes.set(found.bytes as i64);
            metrics.spool_records.set(found.records as i64);
            Some(Arc::new(spool))
        }
        None => None,
    };
    if let Some(dir) = &config.spool.dir {
        let lost = read_pending_marker(dir);
        if lost > 0 {
            tracing::warn!(pairs = lost, "the previous run stopped without draining; pairs waiting for a half were lost");
            metrics.lost_in_crash.inc_by(lost);
        }
    }
    let encoding = sink.encoding(config.sink.encoding);
    let grace = config.server.shutdown_grace;
    let fsync = config.spool.fsync_interval;
    let delivery_timeout = config.sink.kafka.delivery_timeout;
    let (engine, channels) = Engine::new(config.clone(), encoding, metrics.clone())?;
    let stall = match sink.as_ref() {
        Sink::Kafka(_) => config.sink.kafka.stall_timeout,
        Sink::File(_) => Duration::from_secs(3600),
    };
    let publisher = Publisher::new(sink.clone(), spool, metrics.clone(), stall);

    let shutdown = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let stop_publisher = CancellationToken::new();
    let dispatcher = tokio::spawn(engine.clone().run_dispatcher(channels.jobs));
    let expiry = tokio::spawn(engine.clone().run_expiry(stop_background.clone()));
    let publishing = tokio::spawn(publisher.clone().run(channels.records, stop_publisher.clone()));
    let spooling = tokio::spawn(publisher.clone().run_spool(fsync, stop_background.clone()));
    let marker = config.spool.dir.clone().map(|dir| {
        tokio::spawn(pending_marker_loop(dir.clone(), metrics.clone(), stop_background.clone()));
        dir
    });
    if let Some(path) = config_path {
        tokio::spawn(reload_loop(engine.clone(), path, config.clone(), shutdown.clone()));
    }
    if let Sink::Kafka(k) = sink.as_ref() {
        let (brokers, topic) = (k.brokers().to_string(), k.topic().to_string());
        let cfg = config.sink.kafka.clone();
        tokio::task::spawn_blocking(move || check_topic(&cfg, &brokers, &topic));
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<MirrorServer<MirrorService>>().await;
    let grpc_addr = grpc.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen.clone(), source })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind { addr: config.server.admin_listen.clone(), source })?;

    let grpc_stop = CancellationToken::new();
    let grpc_task = tokio::spawn(crate::server::serve(
        grpc,
        engine.clone(),
        health,
        token,
        tls,
        grpc_stop.clone().cancelled_owned(),
    ));
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(crate::admin::serve(admin, engine.clone(), admin_stop.clone().cancelled_owned()));
    let sink_description = sink.describe();
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, sink = %sink_description, "untaken started");

    let done = {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let started = Instant::now();
            tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
            engine.start_drain();
            health_reporter.set_not_serving::<MirrorServer<MirrorService>>().await;
            // The gRPC server keeps running through the drain: `Mirror` answers
            // UNAVAILABLE, health says NOT_SERVING, and `Complete` still joins pairs
            // whose shadow call is finishing.
            engine.drain(grace).await;
            grpc_stop.cancel();
            let mut grpc_task = grpc_task;
            if tokio::time::timeout(Duration::from_secs(2), &mut grpc_task).await.is_err() {
                // A client holding a stream open (health watch, reflection) must not hold the exit.
                grpc_task.abort();
            }
            dispatcher.abort();
            stop_background.cancel();
            let _ = expiry.await;
            stop_publisher.cancel();
            // Deliveries still in flight (and a replay under way) wait for Kafka up to the
            // delivery timeout; past the grace, purge them so they come back as errors
            // and go to the spool.
            let budget = grace.saturating_sub(started.elapsed()).max(Duration::from_secs(1)).min(delivery_timeout);
            let mut finishing = tokio::spawn(async move {
                let _ = publishing.await;
                let _ = spooling.await;
            });
            if tokio::time::timeout(budget, &mut finishing).await.is_err() {
                tracing::warn!("kafka slow at shutdown; spooling what is still in flight");
                publisher.divert_to_spool();
                if let Sink::Kafka(k) = publisher.sink().as_ref() {
                    k.purge();
                }
                let _ = finishing.await;
            }
            // Only now is every record either acknowledged or in the spool: fsync it.
            if let Some(spool) = publisher.spool().cloned() {
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.sync()).await {
                    tracing::error!(error = %e, "final spool fsync failed");
                }
            }
            if let Some(dir) = &marker {
                // Everything was published or spooled: nothing is lost if we die from here on.
                write_pending_marker(dir, 0);
            }
            let s = publisher.sink().clone();
            let _ = tokio::task::spawn_blocking(move || s.flush_blocking(Duration::from_secs(5))).await;
            admin_stop.cancel();
            let _ = admin_task.await;
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained");
        })
    };
    Ok(Running { grpc_addr, admin_addr, engine, sink_description, shutdown, done })
}

const PENDING_MARKER: &str = "pending-pairs";

/// Pairs pending at the last check of a run that did not drain; 0 when none.
fn read_pending_marker(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join(PENDING_MARKER)).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

fn write_pending_marker(dir: &std::path::Path, pending: u64) {
    let tmp = dir.join(format!("{PENDING_MARKER}.tmp"));
    if std::fs::write(&tmp, pending.to_string()).and_then(|_| std::fs::rename(&tmp, dir.join(PENDING_MARKER))).is_err() {
        tracing::debug!("could not write the pending-pairs marker");
    }
}

/// Records, once a second, how many pairs wait in memory, so that the next start
/// after a crash can say how many were lost (to within a second of traffic).
async fn pending_marker_loop(dir: PathBuf, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut last = u64::MAX;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = metrics.pending_pairs.get().max(0) as u64;
        if now != last {
            let d = dir.clone();
            let _ = tokio::task::spawn_blocking(move || write_pending_marker(&d, now)).await;
            last = now;
        }
    }
}

/// Logs whether the topic exists; never blocks start-up (runs on a blocking thread).
fn check_topic(cfg: &crate::config::KafkaConfig, brokers: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Ok(c) = crate::sink::kafka::client_config(cfg) else { return };
    let consumer: Result<BaseConsumer, _> = c.create();
    let Ok(consumer) = consumer else { return };
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(md) => {
            let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
            tracing::info!(brokers, topic, partitions, "kafka reachable");
        }
        Err(e) => tracing::warn!(brokers, topic, error = %e, "kafka not reachable yet; pairs will be spooled until it is"),
    }
}

/// Settings that only take effect after a restart: everything but sampling, routes,
/// pairing and redaction.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let mut v = Vec::new();
    if differs(&old.server, &new.server) {
        v.push("server (listen addresses, TLS, auth token, limits, shutdown_grace)");
    }
    if differs(&old.sink, &new.sink) {
        v.push("sink");
    }
    if differs(&old.spool, &new.spool) {
        v.push("spool");
    }
    if differs(&old.queue, &new.queue) {
        v.push("queue");
    }
    if differs(&old.log, &new.log) {
        v.push("log");
    }
    v
}

/// Reloads on SIGHUP and when the file changes (a ConfigMap update swaps it).
async fn reload_loop(engine: Arc<Engine>, path: PathBuf, mut current: Config, stop: CancellationToken) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = mtime(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let hup_fired = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup_fired => true,
            _ = tick.tick() => false,
        };
        let now = mtime(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        let metrics = engine.metrics().clone();
        match crate::config::load(Some(&path)).and_then(|c| engine.reload(c.clone()).map(|_| c)) {
            Ok(new) => {
                for key in restart_only_changes(&current, &new) {
                    tracing::warn!(key, "changed in the config file but only takes effect after a restart");
                }
                metrics.set_budgets(new.routes.iter().map(|(name, r)| (name.as_str(), r.budget_usd_per_hour)));
                current = new;
                metrics.config_reloads.get_or_create(&Reason { reason: "ok" }).inc();
                tracing::info!(path = %path.display(), "config reloaded");
            }
            Err(e) => {
                metrics.config_reloads.get_or_create(&Reason { reason: "invalid" }).inc();
                tracing::error!(path = %path.display(), key = %e.key, error = %e.message, "config reload rejected; keeping the previous config");
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}
