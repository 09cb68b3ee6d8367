//! Wires the sidecar together and runs it: sink, spool, engine, publisher,
//! gRPC server, admin server, config reload; and the shutdown that drains them.
//!
//! The shutdown (SIGTERM, SIGINT, or [`Running::shutdown`]) is `shutdown::Shutdown`:
//! its steps, in order, are listed in that module's header.
//!
//! [`start`] binds the configured addresses; [`start_on`] takes listeners already
//! bound (tests bind port 0 and never probe for a free port).

mod shadow_runtime;
mod shutdown;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::sidecar::engine::Engine;
use crate::metrics::{Metrics, Reason};
use crate::proto::v1::mirror_server::MirrorServer;
use crate::sidecar::publisher::Publisher;
use crate::server::MirrorService;
use crate::sink::spool::Spool;
use crate::sink::{ConfiguredSink, Sink, SinkError};
use crate::supervise::Supervisor;

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
    #[error("cannot start the shadow pipeline's thread: {0}")]
    ShadowThread(std::io::Error),
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

/// The two listeners the sidecar serves on, bound by the caller.
pub struct Listeners {
    /// Serves the `untaken.v1.Mirror` gRPC service and gRPC health.
    pub grpc: TcpListener,
    /// Serves `/live`, `/ready` and `/metrics`.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `server.listen` and `server.admin_listen`.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        Ok(Self { grpc: bind(&config.server.listen).await?, admin: bind(&config.server.admin_listen).await? })
    }

    /// Both on 127.0.0.1, port 0: the kernel picks free ports (tests).
    pub async fn loopback() -> std::io::Result<Self> {
        Ok(Self { grpc: TcpListener::bind("127.0.0.1:0").await?, admin: TcpListener::bind("127.0.0.1:0").await? })
    }
}

/// Opens the spool when one is configured, reporting what an earlier run left in it
/// and how many pairs a crash lost (the pending-pairs marker).
fn open_spool(config: &Config, metrics: &Metrics) -> Result<Option<Arc<Spool>>, StartError> {
    let spool = match &config.spool.dir {
        Some(dir) => {
            let (spool, found) = Spool::open(dir, config.spool.max_bytes)?;
            metrics.spool_max_bytes.set(config.spool.max_bytes as i64);
            if found.records > 0 || found.corrupt > 0 {
                // Corrupt regions are skipped on replay and counted when their segment is deleted.
                tracing::warn!(
                    records = found.records,
                    bytes = found.bytes,
                    corrupt_regions = found.corrupt,
                    corrupt_bytes = found.corrupt_bytes,
                    "spool holds records from an earlier run; replaying"
                );
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
    Ok(spool)
}

/// Starts everything on the configured addresses. Returns once both ports are
/// bound and `Mirror` answers; Kafka need not be reachable.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, StartError> {
    let listeners = Listeners::bind(&config).await?;
    start_on(config, config_path, listeners).await
}

/// [`start`] on listeners the caller bound; `server.listen` and `server.admin_listen`
/// are ignored. Returns once `Mirror` answers; Kafka need not be reachable.
pub async fn start_on(config: Config, config_path: Option<PathBuf>, listeners: Listeners) -> Result<Running, StartError> {
    let Listeners { grpc, admin } = listeners;
    let metrics = Arc::new(Metrics::new());
    metrics.set_budgets(config.routes.iter().map(|(name, r)| (name.as_str(), r.budget_usd_per_hour)));
    let sink = Arc::new(ConfiguredSink::open(&config, metrics.clone())?);
    let spool = open_spool(&config, &metrics)?;
    let encoding = sink.encoding(config.sink.encoding);
    let grace = config.server.shutdown_grace;
    let fsync = config.spool.fsync_interval;
    let shadow = shadow_runtime::ShadowRuntime::start().map_err(StartError::ShadowThread)?;
    let pipeline = shadow.handle().clone();
    let (engine, channels) = Engine::new(config.clone(), encoding, metrics.clone(), pipeline.clone())?;
    let stall = sink.stall_timeout(&config);
    let publisher = Publisher::new(sink.clone(), spool, metrics.clone(), stall);
    // The token, TLS and Kafka/route secret files, re-read when they rotate (read before any task starts).
    let secrets = crate::secrets::Secrets::load(&config, engine.clone(), sink.clone())?;
    let (token, tls) = (secrets.token(), secrets.tls());

    let shutdown = CancellationToken::new();
    let supervisor = Supervisor::new(metrics.clone(), shutdown.clone());
    let stop_background = CancellationToken::new();
    let stop_publisher = CancellationToken::new();
    // The shadow pipeline on its own thread; `Mirror`, `Complete` and the rest stay here.
    supervisor.spawn("shadow_thread", shadow.exited());
    let dispatcher = supervisor.spawn_on("dispatcher", &pipeline, engine.clone().run_dispatcher(channels.jobs));
    let expiry = supervisor.spawn("expiry", engine.clone().run_expiry(stop_background.clone()));
    let publishing = supervisor.spawn_on("publisher", &pipeline, publisher.clone().run(channels.records, stop_publisher.clone()));
    let spooling = supervisor.spawn_on("spool", &pipeline, publisher.clone().run_spool(fsync, stop_background.clone()));
    let marker = config.spool.dir.clone().inspect(|dir| {
        supervisor.spawn("pending_marker", pending_marker_loop(dir.clone(), metrics.clone(), stop_background.clone()));
    });
    supervisor.spawn("secrets", secrets.watch(shutdown.clone()));
    if let Some(path) = config_path {
        supervisor.spawn("reload", reload_loop(engine.clone(), path, config.clone(), shutdown.clone()));
    }
    if let ConfiguredSink::Kafka(k) = sink.as_ref() {
        let (brokers, topic) = (k.brokers().to_string(), k.topic().to_string());
        let cfg = config.sink.kafka.clone();
        tokio::task::spawn_blocking(move || check_topic(&cfg, &brokers, &topic));
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<MirrorServer<MirrorService>>().await;
    {
        // A dead background task makes the readiness probe (gRPC health) fail, as /ready does.
        let (supervisor, reporter, shutdown) = (supervisor.clone(), health_reporter.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = supervisor.failed() => reporter.set_not_serving::<MirrorServer<MirrorService>>().await,
                _ = shutdown.cancelled() => {}
            }
        });
    }
    let grpc_addr = grpc.local_addr().map_err(|source| StartError::Bind { addr: "the gRPC listener".into(), source })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind { addr: "the admin listener".into(), source })?;

    let grpc_stop = CancellationToken::new();
    let grpc_serve = crate::server::serve(grpc, engine.clone(), health, token, tls, grpc_stop.clone().cancelled_owned());
    let grpc_task = supervisor.spawn("grpc_server", async move {
        if let Err(e) = grpc_serve.await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    let admin_stop = CancellationToken::new();
    let sidecar = Arc::new(crate::admin::Sidecar { engine: engine.clone(), supervisor: supervisor.clone() });
    let admin_serve = crate::admin::serve(admin, sidecar, admin_stop.clone().cancelled_owned());
    let admin_task = supervisor.spawn("admin_server", async move {
        if let Err(e) = admin_serve.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    let sink_description = sink.describe();
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, sink = %sink_description, "untaken started");

    let drain = shutdown::Shutdown {
        grace,
        engine: engine.clone(),
        health: health_reporter,
        grpc: shutdown::Served { stop: grpc_stop, task: grpc_task },
        dispatcher,
        stop_background,
        expiry,
        publisher,
        stop_publisher,
        publishing,
        spooling,
        shadow,
        marker,
        admin: shutdown::Served { stop: admin_stop, task: admin_task },
    };
    let done = tokio::spawn(drain.run(shutdown.clone()));
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

/// `file` with the restart-only sections of `running`: what a reload applies, so that
/// a restart-only key (e.g. `server.max_body_bytes`, which `Mirror` reads live) keeps
/// its running value until a restart, as the reload's log line says.
fn keep_restart_only(running: &Config, file: Config) -> Config {
    Config {
        server: running.server.clone(),
        sink: running.sink.clone(),
        spool: running.spool.clone(),
        queue: running.queue.clone(),
        log: running.log.clone(),
        ..file
    }
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
        let loaded = crate::config::load(Some(&path)).map(|file| {
            for key in restart_only_changes(&current, &file) {
                tracing::warn!(key, "changed in the config file but only takes effect after a restart");
            }
            keep_restart_only(&current, file)
        });
        match loaded.and_then(|c| engine.reload(c.clone()).map(|_| c)) {
            Ok(new) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_every_section_it_says_needs_a_restart() {
        let base = "[routes.r]\nurl = \"http://127.0.0.1:1/\"\nmodel = \"m\"\n";
        let running = crate::config::from_toml(base).unwrap();
        let file = crate::config::from_toml(&format!(
            "{base}[server]\nmax_body_bytes = 100\n[log]\nlevel = \"debug\"\n[queue]\ncapacity = 7\n\
             [sink.file]\npath = \"other.jsonl\"\n[spool]\nmax_bytes = 8192\n[sampling]\ndefault_rate = 0.5\n"
        ))
        .unwrap();
        assert_eq!(restart_only_changes(&running, &file).len(), 5);
        let applied = keep_restart_only(&running, file.clone());
        assert!(restart_only_changes(&running, &applied).is_empty(), "every section named in the warning keeps its value");
        assert_eq!(applied.sampling.default_rate, 0.5, "the rest is applied");
    }
}
