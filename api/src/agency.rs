//! Agency (OPD) routes under `/api/v1/`, behind bearer tokens: sensors,
//! readings history, latest values, gateways and the agency live feed
//! (admin routes are in `admin.rs`). Every answer holds only what the
//! token's scopes allow: lists leave other kinds out, a named sensor of
//! another kind is a 403.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use pantau_ingest::LatestReading;
use pantau_model::derive::LosBands;
use pantau_model::{Sensor, SensorKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};

use utoipa::{IntoParams, ToSchema};

use crate::auth::Agency;
use crate::extract::Q;
use crate::history::{self, Limits};
use crate::live::{self, Filter};
use crate::openapi::ErrorBody;
use crate::public::status;
use crate::{ApiError, AppState};

/// A sensor as agencies see it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SensorView {
    id: String,
    name: String,
    #[schema(value_type = String, example = "flood_gauge")]
    kind: SensorKind,
    district: String,
    owner: String,
    gateway: String,
    public: bool,
    lat: f64,
    lon: f64,
    /// Fields with unit and plausible range.
    #[schema(value_type = Vec<Object>)]
    fields: Vec<JsonValue>,
    /// Flood thresholds (Siaga 3, 2, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    thresholds: Option<pantau_model::Thresholds>,
    /// Road capacity (traffic counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity_pcu_h: Option<f64>,
}

impl SensorView {
    pub(crate) fn of(s: &Sensor) -> Self {
        Self {
            id: s.id.to_string(),
            name: s.name.clone(),
            kind: s.kind,
            district: s.district.clone(),
            owner: s.owner.clone(),
            gateway: s.gateway.to_string(),
            public: s.public,
            lat: s.lat,
            lon: s.lon,
            fields: s
                .kind
                .fields()
                .iter()
                .map(|f| json!({"name": f.name, "unit": f.unit, "min": f.min, "max": f.max}))
                .collect(),
            thresholds: s.thresholds,
            capacity_pcu_h: s.capacity_pcu_h,
        }
    }
}

/// `GET /api/v1/sensors` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SensorFilter {
    /// Only this kind.
    #[param(value_type = Option<crate::openapi::KindDoc>)]
    kind: Option<String>,
    /// Only this district (kecamatan).
    district: Option<String>,
    /// Only this owning agency.
    owner: Option<String>,
}

fn parse_kind(s: &str) -> Result<SensorKind, ApiError> {
    SensorKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| ApiError::BadParam {
            param: "kind",
            message: format!("{s:?} is not a sensor kind"),
        })
}

/// Sensors the token may read, filtered by kind, district and owner.
#[utoipa::path(get, path = "/api/v1/sensors", tag = "agency", params(SensorFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Sensors", body = Vec<SensorView>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
    ))]
pub(crate) async fn sensors(
    agency: Agency,
    State(state): State<AppState>,
    Q(f): Q<SensorFilter>,
) -> Result<Json<Vec<SensorView>>, ApiError> {
    let kind = f.kind.as_deref().map(parse_kind).transpose()?;
    let registry = state.ingestor.registry();
    Ok(Json(
        registry
            .sensors()
            .filter(|s| agency.reads(s.kind))
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .filter(|s| f.district.as_ref().is_none_or(|d| &s.district == d))
            .filter(|s| f.owner.as_ref().is_none_or(|o| &s.owner == o))
            .map(SensorView::of)
            .collect(),
    ))
}

async fn latest_map(state: &AppState) -> Result<HashMap<String, LatestReading>, ApiError> {
    let log = state.ingestor.log().clone();
    let latest = tokio::task::spawn_blocking(move || log.latest_all()).await??;
    Ok(latest.into_iter().map(|l| (l.sensor.clone(), l)).collect())
}

fn latest_json(s: &Sensor, l: Option<&LatestReading>, los: &LosBands) -> JsonValue {
    match l {
        Some(l) => json!({
            "sensor": s.id.as_str(),
            "ts": l.ts.to_rfc3339(),
            "values": l.values,
            "status": status(s, l, los),
        }),
        None => json!({"sensor": s.id.as_str(), "ts": null, "values": null, "status": null}),
    }
}

/// One sensor with thresholds, latest values and derived status.
#[utoipa::path(get, path = "/api/v1/sensors/{id}", tag = "agency",
    params(("id" = String, Path, description = "Sensor id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The sensor and its latest reading", body = Object),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "The token may not read this kind", body = ErrorBody),
        (status = 404, description = "No such sensor", body = ErrorBody),
    ))]
pub(crate) async fn sensor(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    let registry = state.ingestor.registry();
    let s = registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("sensor {id:?}")))?;
    agency.require_read(s)?;
    let latest = latest_map(&state).await?;
    let mut v = serde_json::to_value(SensorView::of(s))?;
    v["latest"] = latest_json(s, latest.get(s.id.as_str()), &state.los);
    Ok(Json(v))
}

/// `GET /api/v1/latest?sensors=a,b,c`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LatestParams {
    /// Comma-separated sensor ids, at most 1000 (default: every readable sensor).
    #[param(pattern = r"^[a-z0-9-]{1,64}(,[a-z0-9-]{1,64})*$")]
    sensors: Option<String>,
    /// Only this kind.
    #[param(value_type = Option<crate::openapi::KindDoc>)]
    kind: Option<String>,
}

/// Most sensors one `latest` call may name.
const MAX_LATEST: usize = 1000;

/// Latest values (and derived status) of many sensors in one call.
#[utoipa::path(get, path = "/api/v1/latest", tag = "agency", params(LatestParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One entry per sensor", body = Vec<Object>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "A named sensor of a kind the token may not read", body = ErrorBody),
        (status = 404, description = "A named sensor does not exist", body = ErrorBody),
    ))]
pub(crate) async fn latest(
    agency: Agency,
    State(state): State<AppState>,
    Q(p): Q<LatestParams>,
) -> Result<Json<Vec<JsonValue>>, ApiError> {
    let registry = state.ingestor.registry();
    let kind = p.kind.as_deref().map(parse_kind).transpose()?;
    let chosen: Vec<&Sensor> = match &p.sensors {
        Some(list) => {
            let ids: BTreeSet<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if ids.is_empty() || ids.len() > MAX_LATEST {
                return Err(ApiError::BadParam {
                    param: "sensors",
                    message: format!("1 to {MAX_LATEST} comma-separated sensor ids"),
                });
            }
            let mut out = Vec::new();
            for id in ids {
                let s = registry
                    .get(id)
                    .ok_or_else(|| ApiError::NotFound(format!("sensor {id:?}")))?;
                agency.require_read(s)?;
                out.push(s);
            }
            out
        }
        None => registry
            .sensors()
            .filter(|s| agency.reads(s.kind))
            .collect(),
    };
    let latest = latest_map(&state).await?;
    Ok(Json(
        chosen
            .into_iter()
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .map(|s| latest_json(s, latest.get(s.id.as_str()), &state.los))
            .collect(),
    ))
}

/// Readings history: raw samples (up to 1 day) or windows from 1 s, at
/// most 10 000 windows per answer.
#[utoipa::path(get, path = "/api/v1/sensors/{id}/readings", tag = "agency",
    params(("id" = String, Path, description = "Sensor id"), history::Params),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Series", body = history::History),
        (status = 400, description = "A bad parameter, named in `param`", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "The token may not read this kind", body = ErrorBody),
        (status = 404, description = "No such sensor", body = ErrorBody),
    ))]
pub(crate) async fn readings(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Q(p): Q<history::Params>,
) -> Result<Json<history::History>, ApiError> {
    let registry = state.ingestor.registry();
    let s = registry
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("sensor {id:?}")))?;
    agency.require_read(s)?;
    history::answer(&state, s, &p, Limits::AGENCY).await
}

/// Gateways carrying sensors the token reads (admins: all), with
/// presence and their last status (spool depth, dropped, source errors).
#[utoipa::path(get, path = "/api/v1/gateways", tag = "agency",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Gateways", body = Vec<Object>),
        (status = 401, description = "No usable token", body = ErrorBody),
    ))]
pub(crate) async fn gateways(
    agency: Agency,
    State(state): State<AppState>,
) -> Result<Json<Vec<JsonValue>>, ApiError> {
    let registry = state.ingestor.registry();
    // A gateway is visible when the token reads one of its sensors (admins
    // see every registered gateway).
    let visible: BTreeSet<String> = registry
        .sensors()
        .filter(|s| agency.reads(s.kind))
        .map(|s| s.gateway.to_string())
        .collect();
    let db = state.state.clone();
    let registered = tokio::task::spawn_blocking(move || db.gateways()).await??;
    let mut ids: BTreeSet<String> = registered.into_iter().map(|g| g.id).collect();
    ids.extend(registry.gateways().into_iter().map(|g| g.to_string()));
    Ok(Json(
        ids.into_iter()
            .filter(|id| agency.scopes.is_admin() || visible.contains(id))
            .map(|id| {
                let p = state.presence.get(&id).unwrap_or_default();
                let status = p
                    .last_status
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<JsonValue>(s).ok());
                json!({
                    "id": id,
                    "sensors": registry
                        .sensors()
                        .filter(|s| s.gateway.as_str() == id && agency.reads(s.kind))
                        .count(),
                    "connected": p.connected,
                    "last_connect": p.last_connect,
                    "last_seen": p.last_seen,
                    "last_disconnect": p.last_disconnect,
                    "last_disconnect_reason": p.last_disconnect_reason,
                    "spool": status.as_ref().map(|s| s["spool"].clone()),
                    "sources": status.as_ref().map(|s| s["sources"].clone()),
                    "clock_offset_ms": status.as_ref().map(|s| s["clock_offset_ms"].clone()),
                    "status": status,
                })
            })
            .collect(),
    ))
}

/// Live feed (Server-Sent Events) of readings the token may read: `reading`
/// events with every field and the derived `status`.
#[utoipa::path(get, path = "/api/v1/live", tag = "agency", params(live::Params),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 429, description = "Too many live streams from this address", body = ErrorBody),
        (status = 503, description = "Live feeds at capacity", body = ErrorBody),
    ))]
pub(crate) async fn live(
    agency: Agency,
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    Q(p): Q<live::Params>,
) -> Result<impl IntoResponse, ApiError> {
    let filter = Filter::parse(&p)?;
    let admitted = live::admit(&state, peer, &headers)?;
    Ok(live::sse(
        &state,
        admitted,
        filter,
        live::Audience::Agency(agency),
    ))
}

/// The agency live feed over a WebSocket (same filters and events as the
/// SSE feed, one JSON text message each).
#[utoipa::path(get, path = "/api/v1/live/ws", tag = "agency", params(live::Params),
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "A bad filter, or not a WebSocket upgrade", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 429, description = "Too many live streams from this address", body = ErrorBody),
        (status = 503, description = "Live feeds at capacity", body = ErrorBody),
    ))]
pub(crate) async fn live_ws(
    agency: Agency,
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    Q(p): Q<live::Params>,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<axum::response::Response, ApiError> {
    let filter = Filter::parse(&p)?;
    let ws = ws.map_err(|e| ApiError::BadParam {
        param: "upgrade",
        message: e.body_text(),
    })?;
    let admitted = live::admit(&state, peer, &headers)?;
    Ok(live::websocket(
        ws,
        &state,
        admitted,
        filter,
        live::Audience::Agency(agency),
    ))
}
