//! The admin HTTP port:
//! - `GET /live`: 200 while the process runs.
//! - `GET /ready`: 200 while the process takes work (`Mirror` calls, or pairs for the
//!   judge worker); 503 once draining, or once a background task died (see
//!   [`crate::supervise`]).
//! - `GET /metrics`: Prometheus text format.
//!
//! Shared by the sidecar and the judge worker through [`Admin`]. Never serves
//! request or answer content.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::sidecar::engine::Engine;
use crate::supervise::Supervisor;

/// What the admin port reports on.
pub trait Admin: Send + Sync + 'static {
    /// `Err(why)` when `/ready` must answer 503.
    fn readiness(&self) -> Result<(), &'static str>;
    /// The Prometheus text exposition.
    fn render_metrics(&self) -> String;
}

/// The sidecar's view: the engine and the supervisor of its background tasks.
pub struct Sidecar {
    pub engine: Arc<Engine>,
    pub supervisor: Supervisor,
}

impl Admin for Sidecar {
    fn readiness(&self) -> Result<(), &'static str> {
        if self.engine.is_draining() {
            Err("draining")
        } else if self.supervisor.any_failed() {
            Err("a background task died (see untaken_background_task_failures_total)")
        } else {
            Ok(())
        }
    }
    fn render_metrics(&self) -> String {
        self.engine.metrics().render()
    }
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready<A: Admin>(State(target): State<Arc<A>>) -> impl IntoResponse {
    match target.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics<A: Admin>(State(target): State<Arc<A>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], target.render_metrics())
}

pub async fn serve<A: Admin>(listener: TcpListener, engine: Arc<A>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready::<A>))
        .route("/metrics", get(metrics::<A>))
        .with_state(engine);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
