//! Pantau's HTTP API (axum): the public view (conditions, sensors, coarse
//! history, live feed; cached and rate limited per client), the agency
//! routes behind scoped bearer tokens (sensors, readings, latest values,
//! gateways, live feed; registration of gateways and sensors and their
//! thresholds for admins), health, readiness and
//! Prometheus metrics, and the web pages (public app and agency console).

#![forbid(unsafe_code)]

mod admin;
mod agency;
mod alerts;
mod auth;
pub mod broker_hooks;
mod error;
mod extract;
mod history;
mod listener;
mod live;
mod openapi;
mod public;
mod ratelimit;
mod rejected;
mod serve;
mod tokens;
mod web;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use pantau_ingest::health::PartState;
use pantau_ingest::{Health, Ingestor, Sink};
use pantau_state::presence::Presence;
use pantau_state::StateDb;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use listener::{ApiListener, HandshakeLimits};
pub use live::LiveGate;
pub use ratelimit::{PublicLimiter, TrustedProxies};
pub use serve::{ConnGate, ConnLimits, ConnMetrics};
pub use web::{Web, WebConfig};

/// Answers reused while nothing they depend on changed.
#[derive(Debug, Default)]
pub struct Caches {
    /// `/api/v1/public/conditions` and the log's append count and the
    /// registry version it was built at.
    conditions: std::sync::Mutex<Option<(CacheKey, axum::body::Bytes)>>,
}

/// The log's append count and the registry's version.
type CacheKey = (u64, u64);

impl Caches {
    fn conditions_if(&self, appended: CacheKey) -> Option<axum::body::Bytes> {
        let c = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        c.as_ref()
            .filter(|(at, _)| *at == appended)
            .map(|(_, b)| b.clone())
    }

    fn set_conditions(&self, appended: CacheKey, body: axum::body::Bytes) {
        *self.conditions.lock().unwrap_or_else(|p| p.into_inner()) = Some((appended, body));
    }
}

/// State shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Registry, ingest log (latest values) and live feed.
    pub ingestor: Arc<Ingestor>,
    /// The store history is read from.
    pub history: Sink,
    /// Every component's counters, rendered on `/metrics`.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// API tokens and registered gateways.
    pub state: Arc<StateDb>,
    /// Gateway presence (empty in a process without the broker).
    pub presence: Arc<Presence>,
    /// Per-client limiter of the public routes.
    pub public_limit: Arc<PublicLimiter>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Most live events per second and connection (the rest coalesce).
    pub live_max_per_s: u32,
    /// Caps on live streams (SSE and WebSocket).
    pub live_gate: Arc<LiveGate>,
    /// Readiness of the process's parts (`/readyz`).
    pub health: Health,
    /// Traffic level-of-service bands.
    pub los: Arc<pantau_model::derive::LosBands>,
    /// Reused answers.
    pub caches: Arc<Caches>,
    /// The alert engine (`None` in a process that runs none).
    pub alerts: Option<Arc<pantau_alerts::Engine>>,
    /// The web pages.
    pub web: Arc<Web>,
    /// Provisions gateways in an external broker cluster (`None` on the
    /// embedded broker, which reads the platform state itself).
    pub gateway_hook: Option<Arc<dyn GatewayHook>>,
    /// The secret an external broker's auth hooks present (`None`: the
    /// hooks are off).
    pub broker_hooks: Option<Arc<broker_hooks::BrokerHookSecret>>,
}

/// What an external broker must learn when a gateway is added, revoked or
/// given a new token (Mosquitto's dynamic security: its own client list).
pub trait GatewayHook: Send + Sync + std::fmt::Debug {
    /// Gateway `id` was registered with `password`.
    fn added<'a>(
        &'a self,
        id: &'a str,
        password: &'a str,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>>;
    /// Gateway `id` was revoked: refuse and disconnect it.
    fn revoked<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, anyhow::Result<()>>;
    /// Gateway `id` has a new `password`.
    fn rotated<'a>(
        &'a self,
        id: &'a str,
        password: &'a str,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>>;
}

/// Largest request body accepted (admin JSON bodies are small).
pub(crate) const MAX_BODY: usize = 16 * 1024;

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let cached = Router::new()
        .route("/api/v1/public/conditions", get(public::conditions))
        .route("/api/v1/public/sensors", get(public::sensors))
        .route("/api/v1/public/sensors/{id}/history", get(history::history))
        .route_layer(axum::middleware::from_fn(public::etag));
    let public = cached
        .route("/api/v1/public/live", get(public::live))
        .route("/api/v1/public/live/ws", get(public::live_ws))
        .route("/api/v1/public/warnings", get(alerts::warnings))
        .route("/api/v1/public/warnings.cap", get(alerts::warnings_cap))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ));
    Router::new()
        .route("/", get(web::serve))
        .route("/console", get(web::serve))
        .route("/console/", get(web::serve))
        .route("/sw.js", get(web::serve))
        .route("/manifest.webmanifest", get(web::serve))
        .route("/assets/{file}", get(web::serve))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(public)
        .route("/api/v1/sensors", get(agency::sensors))
        .route("/api/v1/sensors/{id}", get(agency::sensor))
        .route("/api/v1/sensors/{id}/readings", get(agency::readings))
        .route("/api/v1/latest", get(agency::latest))
        .route("/api/v1/gateways", get(agency::gateways))
        .route("/api/v1/live", get(agency::live))
        .route("/api/v1/live/ws", get(agency::live_ws))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/live", get(alerts::live))
        .route("/api/v1/alerts/{id}", get(alerts::get_one))
        .route("/api/v1/alerts/{id}/ack", post(alerts::ack))
        .route("/api/v1/alerts/{id}/assign", post(alerts::assign))
        .route("/api/v1/alerts/{id}/notes", post(alerts::notes))
        .route("/api/v1/alerts/{id}/resolve", post(alerts::resolve))
        .route(
            "/api/v1/admin/alert-rules",
            get(alerts::rules).post(alerts::put_rule),
        )
        .route(
            "/api/v1/admin/alert-rules/{id}",
            axum::routing::delete(alerts::delete_rule),
        )
        .route(
            "/api/v1/admin/webhooks",
            get(alerts::webhooks).post(alerts::add_webhook),
        )
        .route(
            "/api/v1/admin/webhooks/{id}",
            axum::routing::delete(alerts::delete_webhook),
        )
        .route(
            "/api/v1/admin/silences",
            get(alerts::silences).post(alerts::add_silence),
        )
        .route(
            "/api/v1/admin/silences/{id}",
            axum::routing::delete(alerts::cancel_silence),
        )
        .route(
            "/api/v1/admin/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route("/api/v1/admin/tokens/{name}/revoke", post(tokens::revoke))
        .route("/api/v1/admin/gateways", post(admin::add_gateway))
        .route(
            "/api/v1/admin/gateways/{id}/revoke",
            post(admin::revoke_gateway),
        )
        .route(
            "/api/v1/admin/gateways/{id}/rotate",
            post(admin::rotate_gateway),
        )
        .route("/api/v1/admin/sensors", post(admin::add_sensor))
        .route(
            "/api/v1/admin/sensors/{id}/thresholds",
            put(admin::set_thresholds),
        )
        .route("/api/v1/admin/rejected", get(rejected::list))
        .route("/api/v1/admin/rejected/replay", post(rejected::replay))
        .route("/broker/v1/emqx/authn", post(broker_hooks::emqx_authn))
        .route("/broker/v1/emqx/authz", post(broker_hooks::emqx_authz))
        .route("/broker/v1/vernemq/{hook}", post(broker_hooks::vernemq))
        .route("/api/v1/openapi.json", get(openapi::document))
        .merge(openapi::docs_page())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .with_state(state)
}

/// Refuses a body announced larger than [`MAX_BODY`] before reading any
/// of it (a client that sent `Expect: 100-continue` never uploads it; the
/// body limit still guards bodies without a length).
async fn refuse_oversized(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return ApiError::TooLarge(MAX_BODY).into_response();
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}

/// Ready when every part of the process is (storage, drain, and the broker
/// or, for an ingest worker, its consumer connected and subscribed).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: `{\"ready\":true,\"parts\":{\"storage\":{\"ready\":true},...}}`", body = Object),
        (status = 503, description = "Not ready; each part down says why", body = Object),
    ))]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ready = state.health.is_ready();
    let parts: serde_json::Map<String, serde_json::Value> = state
        .health
        .parts()
        .into_iter()
        .map(|(part, s)| {
            let v = match s {
                PartState::Up => serde_json::json!({"ready": true}),
                PartState::Down(reason) => serde_json::json!({"ready": false, "reason": reason}),
            };
            (part.as_str().to_owned(), v)
        })
        .collect();
    let body = axum::Json(serde_json::json!({ "ready": ready, "parts": parts }));
    if ready {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

/// Serves the API on `listener` until `shutdown` fires, then lets every
/// connection finish (within a bound) before returning.
pub async fn run(
    state: AppState,
    mut listener: ApiListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            (io, peer, slot) = listener.accept() => serve::spawn_connection(
                &tracker,
                io,
                peer,
                slot,
                app.clone(),
                listener.gate.clone(),
                shutdown.clone(),
            ),
            _ = shutdown.cancelled() => break,
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = Object)))]
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Prometheus metrics (OpenMetrics text). Open to clients on loopback
/// (a local Prometheus or agent); any other client — also one forwarded by
/// a trusted reverse proxy — needs an admin token.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "Off loopback: no usable token", body = openapi::ErrorBody),
        (status = 403, description = "Off loopback: not an admin token", body = openapi::ErrorBody),
    ))]
async fn metrics(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    agency: Result<auth::Agency, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    if !state
        .trusted_proxies
        .client(peer.ip(), &headers)
        .is_loopback()
    {
        agency?.require_admin()?;
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &state.metrics)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    ))
}
