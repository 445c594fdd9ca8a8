//! Anonymous, curated public view: only sensors marked public, without
//! restricted fields (vessel identifiers) or gateway internals, with their
//! latest values and the status derived from the registry's thresholds.
//! Answers carry `Cache-Control` and an `ETag` (`If-None-Match` → 304), and
//! every public route is rate limited per client address.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pantau_ingest::LatestReading;
use pantau_model::derive::{rain_class, siaga_level, LosBands};
use pantau_model::{Sensor, SensorKind};
use serde::Serialize;
use serde_json::{json, Value as JsonValue};

use utoipa::ToSchema;

use crate::extract::Q;
use crate::live::{self, Filter};
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};

/// One public sensor in `/api/v1/public/conditions`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Condition {
    id: String,
    name: String,
    #[schema(value_type = String, example = "flood_gauge")]
    kind: SensorKind,
    district: String,
    lat: f64,
    lon: f64,
    /// Newest reading, if any arrived.
    latest: Option<Latest>,
    /// Derived status (flood Siaga level, traffic level of service, ...)
    /// with the thresholds it was derived from.
    #[schema(value_type = Option<Object>)]
    status: Option<JsonValue>,
}

/// A sensor's newest reading.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Latest {
    /// Observation time, RFC 3339.
    ts: String,
    /// Field values (numbers or booleans).
    #[schema(value_type = Object)]
    values: serde_json::Map<String, JsonValue>,
}

/// The derived status of a sensor's latest reading, with the thresholds
/// or bands it was derived from.
pub(crate) fn status(sensor: &Sensor, latest: &LatestReading, los: &LosBands) -> Option<JsonValue> {
    let num = |f: &str| latest.values.get(f).and_then(JsonValue::as_f64);
    match sensor.kind {
        SensorKind::FloodGauge => {
            let t = sensor.thresholds?;
            let (field, value) = ["water_level_cm", "inundation_depth_cm"]
                .into_iter()
                .find_map(|f| num(f).map(|v| (f, v)))?;
            let level = siaga_level(value, &t);
            let mut s = json!({
                "siaga_level": level.0,
                "label": level.label(),
                "field": field,
                "value": value,
                "thresholds": t,
            });
            if let Some(rain) = num("rain_mm") {
                // Readings carry rain per 10-minute window.
                s["rain_class"] = json!(rain_class(rain * 6.0));
            }
            Some(s)
        }
        SensorKind::TrafficCounter => {
            let cap = sensor.capacity_pcu_h?;
            let count = num("count_total")?;
            let window = num("window_s").filter(|w| *w > 0.0)?;
            let flow = count * 3600.0 / window;
            let vc = flow / cap;
            let speed = num("mean_speed_kmh");
            Some(json!({
                "level_of_service": los.grade(vc, speed),
                "by_volume_capacity": los.by_volume_capacity(vc),
                "by_speed": speed.map(|s| los.by_speed(s)),
                "flow_veh_h": flow.round(),
                "volume_capacity_ratio": (vc * 100.0).round() / 100.0,
                "mean_speed_kmh": speed,
                "capacity_pcu_h": cap,
                "bands": los,
            }))
        }
        _ => None,
    }
}

/// Only the fields the public may see.
fn public_values(
    sensor: &Sensor,
    values: serde_json::Map<String, JsonValue>,
) -> serde_json::Map<String, JsonValue> {
    values
        .into_iter()
        .filter(|(f, _)| sensor.kind.field(f).is_some_and(|spec| !spec.restricted))
        .collect()
}

/// A JSON answer that caches for `max_age_s` (the `etag` layer adds the
/// validator).
pub(crate) fn cached<T: Serialize>(body: &T, max_age_s: u32) -> Response {
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={max_age_s}"),
        )],
        Json(body),
    )
        .into_response()
}

/// Live conditions of every public sensor: latest values and derived status.
#[utoipa::path(get, path = "/api/v1/public/conditions", tag = "public", operation_id = "public_conditions",
    responses(
        (status = 200, description = "Public sensors with their latest values", body = Vec<Condition>,
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 429, description = "Rate limited", body = ErrorBody),
    ))]
pub(crate) async fn conditions(State(state): State<AppState>) -> Result<Response, ApiError> {
    // The answer changes only when a reading is logged or the registry is
    // edited: reuse the last one built while neither happened.
    let appended = (
        state.ingestor.log().appended(),
        state.ingestor.shared_registry().version(),
    );
    if let Some(body) = state.caches.conditions_if(appended) {
        return Ok(cached_bytes(body, 5));
    }
    let out = build_conditions(&state).await?;
    let body = axum::body::Bytes::from(serde_json::to_vec(&out)?);
    state.caches.set_conditions(appended, body.clone());
    Ok(cached_bytes(body, 5))
}

fn cached_bytes(body: axum::body::Bytes, max_age_s: u32) -> Response {
    (
        [
            (
                header::CACHE_CONTROL,
                format!("public, max-age={max_age_s}"),
            ),
            (header::CONTENT_TYPE, "application/json".to_string()),
        ],
        body,
    )
        .into_response()
}

async fn build_conditions(state: &AppState) -> Result<Vec<Condition>, ApiError> {
    let log = state.ingestor.log().clone();
    let latest = tokio::task::spawn_blocking(move || log.latest_all()).await??;
    let mut by_sensor: HashMap<String, LatestReading> =
        latest.into_iter().map(|l| (l.sensor.clone(), l)).collect();
    let registry = state.ingestor.registry();
    let out: Vec<Condition> = registry
        .sensors()
        .filter(|s| s.public)
        .map(|s| {
            let l = by_sensor.remove(s.id.as_str());
            Condition {
                id: s.id.to_string(),
                name: s.name.clone(),
                kind: s.kind,
                district: s.district.clone(),
                lat: s.lat,
                lon: s.lon,
                status: l.as_ref().and_then(|l| status(s, l, &state.los)),
                latest: l.map(|l| Latest {
                    ts: l.ts.to_rfc3339(),
                    values: public_values(s, l.values),
                }),
            }
        })
        .collect();
    Ok(out)
}

/// One public sensor in `/api/v1/public/sensors`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PublicSensor {
    id: String,
    name: String,
    #[schema(value_type = String, example = "tide_gauge")]
    kind: SensorKind,
    district: String,
    owner: String,
    lat: f64,
    lon: f64,
    /// The fields the public view shows, with units.
    #[schema(value_type = Vec<Object>)]
    fields: Vec<JsonValue>,
    /// Flood thresholds (Siaga 3, 2, 1), flood gauges only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    thresholds: Option<pantau_model::Thresholds>,
}

/// The public sensors: where they are and what they report.
#[utoipa::path(get, path = "/api/v1/public/sensors", tag = "public", operation_id = "public_sensors",
    responses(
        (status = 200, description = "Public sensors", body = Vec<PublicSensor>,
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 429, description = "Rate limited", body = ErrorBody),
    ))]
pub(crate) async fn sensors(State(state): State<AppState>) -> Response {
    let registry = state.ingestor.registry();
    let out: Vec<PublicSensor> = registry
        .sensors()
        .filter(|s| s.public)
        .map(|s| PublicSensor {
            id: s.id.to_string(),
            name: s.name.clone(),
            kind: s.kind,
            district: s.district.clone(),
            owner: s.owner.clone(),
            lat: s.lat,
            lon: s.lon,
            fields: s
                .kind
                .fields()
                .iter()
                .filter(|f| !f.restricted)
                .map(|f| json!({"name": f.name, "unit": f.unit}))
                .collect(),
            thresholds: s.thresholds,
        })
        .collect();
    cached(&out, 60)
}

/// Live feed (Server-Sent Events) of public readings: `reading` events
/// (`sensor`, `kind`, `district`, `ts`, `values` and the derived `status`),
/// `lagged` when the connection missed some, heartbeats every 15 s.
#[utoipa::path(get, path = "/api/v1/public/live", tag = "public", operation_id = "public_live", params(live::Params),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 429, description = "Rate limited, or too many live streams from this address", body = ErrorBody),
        (status = 503, description = "Live feeds at capacity", body = ErrorBody),
    ))]
pub(crate) async fn live(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    Q(p): Q<live::Params>,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(&p)?;
    let admitted = live::admit(&state, peer, &headers)?;
    Ok(live::sse(&state, admitted, filter, live::Audience::Public).into_response())
}

/// A live reading as a latest value (JSON values), to derive its status.
pub(crate) fn latest_of(r: &pantau_ingest::LiveReading) -> LatestReading {
    LatestReading {
        sensor: r.sensor.clone(),
        ts: r.ts,
        values: r
            .values
            .iter()
            .map(|(f, v)| {
                (
                    f.clone(),
                    serde_json::to_value(v).unwrap_or(JsonValue::Null),
                )
            })
            .collect(),
    }
}

/// A public live event: public sensors only, no restricted field, with
/// the status the reading gives (as in `/api/v1/public/conditions`).
pub(crate) fn public_event(
    s: &Sensor,
    r: &pantau_ingest::LiveReading,
    los: &LosBands,
) -> Option<JsonValue> {
    s.public.then(|| {
        let latest = latest_of(r);
        let status = status(s, &latest, los);
        json!({
            "sensor": r.sensor,
            "kind": r.kind,
            "district": s.district,
            "ts": r.ts.to_rfc3339(),
            "values": public_values(s, latest.values),
            "status": status,
        })
    })
}

/// The public live feed over a WebSocket (same filters and events as the
/// SSE feed, one JSON text message each).
#[utoipa::path(get, path = "/api/v1/public/live/ws", tag = "public", operation_id = "public_live_ws",
    params(live::Params),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "A bad filter, or not a WebSocket upgrade", body = ErrorBody),
        (status = 429, description = "Rate limited, or too many live streams from this address", body = ErrorBody),
        (status = 503, description = "Live feeds at capacity", body = ErrorBody),
    ))]
pub(crate) async fn live_ws(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    Q(p): Q<live::Params>,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, ApiError> {
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
        live::Audience::Public,
    ))
}

/// Adds a weak `ETag` (a hash of the body) to successful JSON answers and
/// answers `304 Not Modified` when the client already has it.
pub(crate) async fn etag(req: Request, next: Next) -> Response {
    let known = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let resp = next.run(req).await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    let tag = format!("W/\"{:016x}\"", h.finish());
    let matches = known.is_some_and(|k| k.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        parts.headers.insert(header::ETAG, v);
    }
    if matches {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}
