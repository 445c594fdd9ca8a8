//! Admin routes (tokens with the `admin` scope): register gateways and
//! sensors, set a sensor's thresholds. Sensor changes are written to
//! `state.db` first and then take effect at once for ingest (readings of a
//! new sensor are accepted), every view and the derived statuses; they
//! survive restarts and overlay the registry file. Each change is logged
//! with the token's name.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use pantau_model::{GatewayId, RegistryError, Sensor, SensorSpec, Thresholds};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agency::SensorView;
use crate::auth::Agency;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};

/// A JSON body, or a 413 / a 400 naming `body`.
pub(crate) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(Json(b)) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::TooLarge(crate::MAX_BODY))
        }
        Err(e) => Err(ApiError::BadParam {
            param: "body",
            message: e.body_text(),
        }),
    }
}

/// `POST /api/v1/admin/gateways` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGateway {
    /// Gateway id: lowercase letters, digits and '-', at most 64.
    #[schema(pattern = r"^[a-z0-9-]{1,64}$")]
    id: String,
}

/// A registered gateway's credentials (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GatewayCredentials {
    gateway: String,
    username: String,
    /// The token (the MQTT password); only its hash is kept.
    password: String,
}

/// Registers a gateway (admin); answers its token once.
#[utoipa::path(post, path = "/api/v1/admin/gateways", tag = "admin", request_body = NewGateway,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = GatewayCredentials),
        (status = 400, description = "A bad body or id", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 409, description = "Already registered", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ))]
pub(crate) async fn add_gateway(
    agency: Agency,
    State(state): State<AppState>,
    body: Result<Json<NewGateway>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let body = json_body(body)?;
    let id = GatewayId::new(&body.id).map_err(|e| ApiError::BadParam {
        param: "id",
        message: e.to_string(),
    })?;
    let db = state.state.clone();
    let gw = id.clone();
    let token = tokio::task::spawn_blocking(move || db.add_gateway(&gw))
        .await?
        .map_err(|e| match e {
            pantau_state::Error::DuplicateGateway(g) => {
                ApiError::Conflict(format!("gateway {g} is already registered"))
            }
            e => e.into(),
        })?;
    if let Some(hook) = &state.gateway_hook {
        if let Err(e) = hook.added(id.as_str(), &token).await {
            // Not in the broker: not registered either.
            let (db, gw) = (state.state.clone(), id.clone());
            let _ = tokio::task::spawn_blocking(move || db.revoke_gateway(&gw)).await;
            return Err(ApiError::Broker(format!(
                "gateway {id} not registered: the broker refused it: {e:#}"
            )));
        }
    }
    tracing::info!(gateway = %id, by = %agency.name, "Gateway registered through the API.");
    Ok((
        StatusCode::CREATED,
        Json(GatewayCredentials {
            gateway: id.to_string(),
            username: id.to_string(),
            password: token,
        }),
    ))
}

/// The gateway named in a path, or a 400.
fn path_gateway(id: &str) -> Result<GatewayId, ApiError> {
    GatewayId::new(id).map_err(|e| ApiError::BadParam {
        param: "id",
        message: e.to_string(),
    })
}

/// A state answer for a gateway: unknown → 404.
fn gateway_state<T>(r: Result<T, pantau_state::Error>) -> Result<T, ApiError> {
    r.map_err(|e| match e {
        pantau_state::Error::UnknownGateway(g) => ApiError::NotFound(format!("gateway {g}")),
        e => e.into(),
    })
}

/// A revoked gateway.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Revoked {
    gateway: String,
    revoked: bool,
}

/// Revokes a gateway (admin): its token and client certificates stop
/// working and its live connection ends within a second.
#[utoipa::path(post, path = "/api/v1/admin/gateways/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "Gateway id", pattern = r"^[a-z0-9-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 404, description = "No such gateway", body = ErrorBody),
    ))]
pub(crate) async fn revoke_gateway(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    agency.require_admin()?;
    let id = path_gateway(&id)?;
    let (db, gw) = (state.state.clone(), id.clone());
    gateway_state(tokio::task::spawn_blocking(move || db.revoke_gateway(&gw)).await?)?;
    if let Some(hook) = &state.gateway_hook {
        hook.revoked(id.as_str()).await.map_err(|e| {
            ApiError::Broker(format!(
                "gateway {id} is revoked in Pantau but the broker did not remove it (revoke it again): {e:#}"
            ))
        })?;
    }
    tracing::warn!(gateway = %id, by = %agency.name, "Gateway revoked through the API.");
    Ok(Json(Revoked {
        gateway: id.to_string(),
        revoked: true,
    }))
}

/// Gives a gateway a new token (admin); answers it once. The old token
/// stops working at once.
#[utoipa::path(post, path = "/api/v1/admin/gateways/{id}/rotate", tag = "admin",
    params(("id" = String, Path, description = "Gateway id", pattern = r"^[a-z0-9-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new credentials", body = GatewayCredentials),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 404, description = "No such gateway", body = ErrorBody),
    ))]
pub(crate) async fn rotate_gateway(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<GatewayCredentials>, ApiError> {
    agency.require_admin()?;
    let id = path_gateway(&id)?;
    let (db, gw) = (state.state.clone(), id.clone());
    let token = gateway_state(tokio::task::spawn_blocking(move || db.rotate_gateway(&gw)).await?)?;
    if let Some(hook) = &state.gateway_hook {
        hook.rotated(id.as_str(), &token).await.map_err(|e| {
            ApiError::Broker(format!(
                "gateway {id}: the broker did not take the new token (rotate again): {e:#}"
            ))
        })?;
    }
    tracing::info!(gateway = %id, by = %agency.name, "Gateway token rotated through the API.");
    Ok(Json(GatewayCredentials {
        gateway: id.to_string(),
        username: id.to_string(),
        password: token,
    }))
}

/// `POST /api/v1/admin/sensors` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSensor {
    /// Sensor id: lowercase letters, digits and '-', at most 64.
    #[schema(pattern = r"^[a-z0-9-]{1,64}$")]
    id: String,
    /// What it measures.
    #[schema(value_type = crate::openapi::RegisteredKindDoc)]
    kind: String,
    /// The only gateway allowed to report it.
    #[schema(pattern = r"^[a-z0-9-]{1,64}$")]
    gateway: String,
    /// Display name (not empty).
    name: String,
    /// Kecamatan (district), at most 100 characters.
    #[serde(default)]
    district: String,
    /// Latitude, WGS 84.
    #[schema(minimum = -90.0, maximum = 90.0)]
    lat: f64,
    /// Longitude, WGS 84.
    #[schema(minimum = -180.0, maximum = 180.0)]
    lon: f64,
    /// Owning agency (`pupr`, `bpbd`, `dishub`, `ksop`, ...).
    #[serde(default)]
    owner: String,
    /// Whether the public view may show it.
    #[serde(default)]
    public: bool,
    /// Flood thresholds (flood gauges only), rising from Siaga 3 to Siaga 1.
    #[serde(default)]
    thresholds: Option<ThresholdsBody>,
    /// Road capacity in passenger-car units per hour (traffic counters only).
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0)]
    capacity_pcu_h: Option<f64>,
}

/// Flood thresholds in cm: Siaga 3 < Siaga 2 < Siaga 1.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThresholdsBody {
    /// Alert (*Waspada*) from this value.
    siaga3: f64,
    /// Standby (*Siaga*) from this value.
    siaga2: f64,
    /// Evacuate (*Awas*) from this value.
    siaga1: f64,
}

impl From<ThresholdsBody> for Thresholds {
    fn from(t: ThresholdsBody) -> Self {
        Thresholds {
            siaga3: t.siaga3,
            siaga2: t.siaga2,
            siaga1: t.siaga1,
        }
    }
}

/// `PUT /api/v1/admin/sensors/{id}/thresholds` body: the flood thresholds
/// of a flood gauge, or the capacity of a traffic counter.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetThresholds {
    /// Flood thresholds (flood gauges).
    #[serde(default)]
    thresholds: Option<ThresholdsBody>,
    /// Road capacity in PCU per hour (traffic counters).
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0)]
    capacity_pcu_h: Option<f64>,
}

/// A registry rule broken, as a 400 naming the field.
fn invalid(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Invalid { field, message, .. } => ApiError::BadParam {
            param: field,
            message,
        },
        other => ApiError::BadParam {
            param: "body",
            message: other.to_string(),
        },
    }
}

/// Applies `change` to the registry: validated, stored in `state.db`, then
/// in effect. `change` gets the current sensor of `id` (if any) and returns
/// the new spec.
async fn change_sensor(
    state: &AppState,
    agency: &Agency,
    id: String,
    change: impl FnOnce(Option<&Sensor>) -> Result<SensorSpec, ApiError> + Send + 'static,
) -> Result<Sensor, ApiError> {
    let shared = state.ingestor.shared_registry().clone();
    let db = state.state.clone();
    let by = agency.name.clone();
    tokio::task::spawn_blocking(move || {
        shared.edit(|current| {
            let spec = change(current.get(&id))?;
            let sensor = Sensor::from_spec(spec.clone()).map_err(invalid)?;
            db.save_sensor(&spec, &by)?;
            let mut next = current.clone();
            next.upsert(sensor.clone());
            Ok((next, sensor))
        })
    })
    .await?
}

/// Registers a sensor (admin). It takes effect at once: its gateway's
/// readings of it are accepted and every view lists it.
#[utoipa::path(post, path = "/api/v1/admin/sensors", tag = "admin", request_body = NewSensor,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = SensorView),
        (status = 400, description = "A bad body or field; `param` names it", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 409, description = "A sensor with this id exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ))]
pub(crate) async fn add_sensor(
    agency: Agency,
    State(state): State<AppState>,
    body: Result<Json<NewSensor>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let b = json_body(body)?;
    let spec = SensorSpec {
        id: b.id,
        kind: b.kind,
        gateway: b.gateway,
        name: b.name,
        district: b.district,
        lat: b.lat,
        lon: b.lon,
        owner: b.owner,
        public: b.public,
        thresholds: b.thresholds.map(Thresholds::from),
        capacity_pcu_h: b.capacity_pcu_h,
    };
    let sensor = change_sensor(
        &state,
        &agency,
        spec.id.clone(),
        move |existing| match existing {
            Some(s) => Err(ApiError::Conflict(format!("sensor {} exists", s.id))),
            None => Ok(spec),
        },
    )
    .await?;
    tracing::info!(sensor = %sensor.id, kind = %sensor.kind, gateway = %sensor.gateway, by = %agency.name, "Sensor registered through the API.");
    Ok((StatusCode::CREATED, Json(SensorView::of(&sensor))))
}

/// Sets a sensor's thresholds (admin): a flood gauge's Siaga levels or a
/// traffic counter's capacity. Derived statuses follow at once.
#[utoipa::path(put, path = "/api/v1/admin/sensors/{id}/thresholds", tag = "admin",
    params(("id" = String, Path, description = "Sensor id")),
    request_body = SetThresholds,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The sensor as it is now", body = SensorView),
        (status = 400, description = "A bad body, or thresholds that do not fit the sensor; `param` names the field", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 404, description = "No such sensor", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ))]
pub(crate) async fn set_thresholds(
    agency: Agency,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<SetThresholds>, JsonRejection>,
) -> Result<Json<SensorView>, ApiError> {
    agency.require_admin()?;
    let b = json_body(body)?;
    if b.thresholds.is_none() && b.capacity_pcu_h.is_none() {
        return Err(ApiError::BadParam {
            param: "body",
            message: "nothing to set: give thresholds or capacity_pcu_h".into(),
        });
    }
    let sensor = change_sensor(&state, &agency, id.clone(), move |existing| {
        let mut spec = existing
            .ok_or_else(|| ApiError::NotFound(format!("sensor {id:?}")))?
            .spec();
        if let Some(t) = b.thresholds {
            spec.thresholds = Some(t.into());
        }
        if let Some(c) = b.capacity_pcu_h {
            spec.capacity_pcu_h = Some(c);
        }
        Ok(spec)
    })
    .await?;
    tracing::info!(sensor = %sensor.id, thresholds = ?sensor.thresholds, capacity_pcu_h = ?sensor.capacity_pcu_h, by = %agency.name, "Sensor thresholds set through the API.");
    Ok(Json(SensorView::of(&sensor)))
}
