//! The admin HTTP port:
//! - `GET /live`: 200 while the process runs.
//! - `GET /ready`: 200 while `Mirror` accepts calls, 503 once draining.
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

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    if engine.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        engine.metrics().render(),
    )
}

pub async fn serve(listener: TcpListener, engine: Arc<Engine>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(engine);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
