//! Pantau's HTTP API (axum): the public live-conditions view, its live
//! feed (Server-Sent Events), coarse public history, health and Prometheus
//! metrics. Agency
//! (token-scoped) routes, history and OpenAPI are the API issue's work.

#![forbid(unsafe_code)]

mod error;
mod history;
mod public;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use pantau_ingest::{Ingestor, Sink};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

/// State shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Registry, ingest log (latest values) and live feed.
    pub ingestor: Arc<Ingestor>,
    /// The store history is read from.
    pub history: Sink,
    /// Every component's counters, rendered on `/metrics`.
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/public/conditions", get(public::conditions))
        .route("/api/v1/public/live", get(public::live))
        .route("/api/v1/public/sensors/{id}/history", get(history::history))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` fires.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &state.metrics)
        .map_err(|e| ApiError::Internal(format!("metrics encoding: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    ))
}
