//! The admin HTTP port:
//! - `GET /live`: 200 while the process runs.
//! - `GET /ready`: 200 while the process takes work (`Mirror` calls, or pairs for the
//!   judge worker), 503 once draining.
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

use crate::engine::Engine;

/// What the admin port reports on.
pub trait Admin: Send + Sync + 'static {
    /// False once draining: `/ready` answers 503.
    fn is_ready(&self) -> bool;
    /// The Prometheus text exposition.
    fn render_metrics(&self) -> String;
}

impl Admin for Engine {
    fn is_ready(&self) -> bool {
        !self.is_draining()
    }
    fn render_metrics(&self) -> String {
        self.metrics().render()
    }
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready<A: Admin>(State(target): State<Arc<A>>) -> impl IntoResponse {
    if target.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
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
