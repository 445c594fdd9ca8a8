//! Admin routes for the readings validation refused: every one is kept in
//! the ingest log with its reason (a sensor not yet registered, a sensor
//! moved to another gateway, a gateway clock ahead, a value out of range,
//! ...); an admin lists them and, once the cause is fixed, re-ingests them:
//! those that pass now are stored (and counted as replayed), the others
//! stay kept with their current reason.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use pantau_ingest::log::{KeptRejection, RejectedFilter};
use pantau_ingest::ReplayReport;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Agency;
use crate::extract::Q;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};

/// Most kept readings one call lists or re-ingests.
const MAX_LIMIT: usize = 10_000;

/// Which kept readings (every filter optional).
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectedParams {
    /// Only this gateway's.
    #[param(pattern = r"^[a-z0-9-]{1,64}$")]
    #[schema(pattern = r"^[a-z0-9-]{1,64}$")]
    gateway: Option<String>,
    /// Only this sensor's.
    #[param(pattern = r"^[a-z0-9-]{1,64}$")]
    #[schema(pattern = r"^[a-z0-9-]{1,64}$")]
    sensor: Option<String>,
    /// Only those refused for this reason (`unknown_sensor`,
    /// `sensor_of_other_gateway`, `future_timestamp`, ...).
    #[param(pattern = r"^[a-z_]{1,40}$")]
    #[schema(pattern = r"^[a-z_]{1,40}$")]
    reason: Option<String>,
    /// At most this many, oldest first (default and most: 10 000).
    #[param(minimum = 1, maximum = 10000)]
    #[schema(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

impl RejectedParams {
    fn filter(self) -> Result<RejectedFilter, ApiError> {
        let limit = self.limit.unwrap_or(MAX_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadParam {
                param: "limit",
                message: format!("1 to {MAX_LIMIT}"),
            });
        }
        let id = |param: &'static str, v: Option<String>| {
            v.map(|v| match pantau_model::id::check_id(&v) {
                Ok(_) => Ok(v),
                Err(e) => Err(ApiError::BadParam {
                    param,
                    message: e.to_string(),
                }),
            })
            .transpose()
        };
        let reason = self
            .reason
            .map(|r| {
                let ok = (1..=40).contains(&r.len())
                    && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                if ok {
                    Ok(r)
                } else {
                    Err(ApiError::BadParam {
                        param: "reason",
                        message: "a reason code: 1 to 40 of a-z and _".into(),
                    })
                }
            })
            .transpose()?;
        Ok(RejectedFilter {
            gateway: id("gateway", self.gateway)?,
            sensor: id("sensor", self.sensor)?,
            reason,
            limit,
        })
    }
}

/// One kept reading.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeptView {
    id: i64,
    /// When it was refused (RFC 3339).
    at: String,
    gateway: String,
    sensor: Option<String>,
    /// The rule it broke.
    reason: String,
    /// Why, in words.
    message: String,
    /// The reading as received.
    #[schema(value_type = Object)]
    reading: serde_json::Value,
}

impl From<KeptRejection> for KeptView {
    fn from(k: KeptRejection) -> Self {
        Self {
            id: k.id,
            at: pantau_model::Timestamp(k.at_ms).to_rfc3339(),
            gateway: k.gateway,
            sensor: k.sensor,
            reason: k.reason,
            message: k.message,
            reading: serde_json::from_str(&k.reading)
                .unwrap_or(serde_json::Value::String(k.reading)),
        }
    }
}

/// The kept readings and how many there are in all.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeptList {
    /// Kept readings in all (whatever the filter).
    total: u64,
    rejected: Vec<KeptView>,
}

/// Lists the rejected readings kept for re-ingestion (admin).
#[utoipa::path(get, path = "/api/v1/admin/rejected", tag = "admin", params(RejectedParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Kept readings, oldest first", body = KeptList),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
    ))]
pub(crate) async fn list(
    agency: Agency,
    State(state): State<AppState>,
    Q(p): Q<RejectedParams>,
) -> Result<Json<KeptList>, ApiError> {
    agency.require_admin()?;
    let filter = p.filter()?;
    let log = state.ingestor.log().clone();
    let rows = tokio::task::spawn_blocking(move || log.rejected(&filter)).await??;
    Ok(Json(KeptList {
        total: state.ingestor.log().rejected_count(),
        rejected: rows.into_iter().map(KeptView::from).collect(),
    }))
}

/// What a re-ingestion did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayView {
    /// Readings that passed now and were stored.
    replayed: usize,
    /// Readings still refused (kept, with their current reason).
    still_rejected: usize,
}

impl From<ReplayReport> for ReplayView {
    fn from(r: ReplayReport) -> Self {
        Self {
            replayed: r.replayed,
            still_rejected: r.still_rejected,
        }
    }
}

/// Re-ingests kept rejected readings matching the body's filters (admin),
/// e.g. after registering the sensor they belong to.
#[utoipa::path(post, path = "/api/v1/admin/rejected/replay", tag = "admin",
    request_body = RejectedParams,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Re-ingested", body = ReplayView),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ))]
pub(crate) async fn replay(
    agency: Agency,
    State(state): State<AppState>,
    body: Result<Json<RejectedParams>, JsonRejection>,
) -> Result<Json<ReplayView>, ApiError> {
    agency.require_admin()?;
    let filter = crate::admin::json_body(body)?.filter()?;
    let report = state.ingestor.replay_rejected(filter).await?;
    tracing::info!(
        by = %agency.name,
        replayed = report.replayed,
        still_rejected = report.still_rejected,
        "Rejected readings re-ingested through the API."
    );
    Ok(Json(report.into()))
}
