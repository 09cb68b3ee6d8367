//! The admin HTTP port:
//! - `GET /live`: 200 while the process runs.
//! - `GET /ready`: 200 while `Mirror` accepts calls, 503 once draining or once a
//!   background task died (see [`crate::supervise`]).
//! - `GET /metrics`: Prometheus text format.
//!
//! Never serves request or answer content.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::supervise::Supervisor;

#[derive(Clone)]
struct Admin {
    engine: Arc<Engine>,
    supervisor: Supervisor,
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.engine.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if admin.supervisor.any_failed() {
        (StatusCode::SERVICE_UNAVAILABLE, "a background task died (see untaken_background_task_failures_total)\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(Admin { engine, .. }): State<Admin>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        engine.metrics().render(),
    )
}

pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    supervisor: Supervisor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Admin { engine, supervisor });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
