//! History: `/api/v1/public/sensors/{id}/history` (coarse on purpose —
//! windows of at least 5 minutes over at most 7 days, public sensors only)
//! and `/api/v1/sensors/{id}/readings` for agencies (raw samples over up to a
//! day, windows from 1 s, at most 10 000 windows per answer).

use axum::extract::{Path, State};
use axum::Json;
use pantau_ingest::history::{Agg, HistoryError, HistoryQuery, Series};
use pantau_model::{FieldType, Sensor, Timestamp};
use serde::{Deserialize, Serialize};

use crate::extract::Q;
use crate::{ApiError, AppState};

/// What a caller may ask for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Smallest window.
    min_every_ms: i64,
    /// Default window when none is given (`None`: raw samples).
    default_every_ms: Option<i64>,
    /// Longest range.
    max_range_ms: i64,
    /// Longest range of raw samples.
    max_raw_range_ms: i64,
    /// Most windows in one answer.
    max_windows: i64,
    /// How the limits are described in errors.
    who: &'static str,
}

impl Limits {
    /// The public view.
    pub(crate) const PUBLIC: Limits = Limits {
        min_every_ms: 5 * 60 * 1000,
        default_every_ms: Some(5 * 60 * 1000),
        max_range_ms: 7 * 86_400_000,
        max_raw_range_ms: 0,
        max_windows: 7 * 24 * 12,
        who: "public",
    };
    /// Agencies.
    pub(crate) const AGENCY: Limits = Limits {
        min_every_ms: 1000,
        default_every_ms: None,
        max_range_ms: 366 * 86_400_000,
        max_raw_range_ms: 86_400_000,
        max_windows: 10_000,
        who: "agency",
    };
}

/// Query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Params {
    /// Start, RFC 3339 (default: 24 h before `to`).
    #[param(format = DateTime)]
    from: Option<String>,
    /// End, RFC 3339, exclusive (default: now).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Window, e.g. `5m`, `1h` (public: default and minimum `5m`; agencies:
    /// raw samples by default, minimum `1s`).
    #[param(pattern = r"^[0-9]+ ?(ms|s|m|h|d)$", example = "5m")]
    every: Option<String>,
    /// The aggregate per window (default `mean`).
    #[serde(rename = "fn")]
    #[param(value_type = Option<crate::openapi::AggDoc>)]
    agg: Option<String>,
    /// One field (default: every numeric field of the kind).
    #[param(pattern = r"^[a-z0-9_]+$", example = "water_level_cm")]
    field: Option<String>,
}

/// The answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct History {
    sensor: String,
    /// Range start, ms since the Unix epoch.
    #[schema(value_type = i64)]
    from: Timestamp,
    /// Range end (exclusive), ms since the Unix epoch.
    #[schema(value_type = i64)]
    to: Timestamp,
    /// Window length; `null` for raw samples.
    every_ms: Option<i64>,
    /// The aggregate: mean, min, max, last or count.
    #[serde(rename = "fn")]
    #[schema(value_type = String)]
    agg: Agg,
    /// One series per field.
    #[schema(value_type = Vec<crate::openapi::SeriesDoc>)]
    series: Vec<Series>,
}

fn time_param(
    v: &Option<String>,
    param: &'static str,
    default: Timestamp,
) -> Result<Timestamp, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => Timestamp::parse_rfc3339(s).ok_or_else(|| ApiError::BadParam {
            param,
            message: format!("{s:?} is not an RFC 3339 timestamp"),
        }),
    }
}

/// Builds the store query from the parameters, or names the bad one.
pub(crate) fn parse(sensor: &Sensor, p: &Params, limits: Limits) -> Result<HistoryQuery, ApiError> {
    let id = sensor.id.as_str();
    let to = time_param(&p.to, "to", Timestamp::now())?;
    let from = time_param(&p.from, "from", to.add_millis(-86_400_000))?;
    if from >= to {
        return Err(ApiError::BadParam {
            param: "from",
            message: "must be before to".into(),
        });
    }
    let range = to.0.saturating_sub(from.0);
    if range > limits.max_range_ms {
        return Err(ApiError::BadParam {
            param: "from",
            message: format!(
                "the {} range is at most {} days",
                limits.who,
                limits.max_range_ms / 86_400_000
            ),
        });
    }
    let every_ms = match &p.every {
        None => limits.default_every_ms,
        Some(s) => Some(
            humantime::parse_duration(s)
                .map_err(|e| ApiError::BadParam {
                    param: "every",
                    message: format!("{s:?}: {e}"),
                })?
                .as_millis()
                .try_into()
                .unwrap_or(i64::MAX),
        ),
    };
    match every_ms {
        Some(every) if every < limits.min_every_ms => {
            return Err(ApiError::BadParam {
                param: "every",
                message: format!(
                    "the {} window is at least {}",
                    limits.who,
                    humantime::format_duration(std::time::Duration::from_millis(
                        limits.min_every_ms as u64
                    ))
                ),
            })
        }
        Some(every) if range / every > limits.max_windows => {
            return Err(ApiError::BadParam {
                param: "every",
                message: format!(
                    "{} windows asked (range / every); at most {}: widen every or narrow the range",
                    range / every,
                    limits.max_windows
                ),
            })
        }
        None if range > limits.max_raw_range_ms => {
            return Err(ApiError::BadParam {
                param: "every",
                message: "raw samples cover at most 1 day: give every (e.g. 1m) for a longer range"
                    .into(),
            })
        }
        _ => {}
    }
    let agg = match &p.agg {
        None => Agg::Mean,
        Some(s) => Agg::parse(s).ok_or_else(|| ApiError::BadParam {
            param: "fn",
            message: format!("{s:?}: expected mean, min, max, last or count"),
        })?,
    };
    let fields = match &p.field {
        Some(f) => {
            if sensor.kind.field(f).is_none() {
                return Err(ApiError::BadParam {
                    param: "field",
                    message: format!("{f:?} is not a field of {}", sensor.kind),
                });
            }
            vec![f.clone()]
        }
        None => sensor
            .kind
            .fields()
            .iter()
            .filter(|f| f.ty != FieldType::Bool || matches!(agg, Agg::Last | Agg::Count))
            .map(|f| f.name.to_string())
            .collect(),
    };
    let q = HistoryQuery {
        sensor: id.to_owned(),
        kind: sensor.kind,
        fields,
        from,
        to,
        every_ms,
        agg,
    };
    q.validate().map_err(|e| ApiError::BadParam {
        param: "field",
        message: e.to_string(),
    })?;
    Ok(q)
}

/// Runs a history query for `sensor` within `limits`.
pub(crate) async fn answer(
    state: &AppState,
    sensor: &Sensor,
    p: &Params,
    limits: Limits,
) -> Result<Json<History>, ApiError> {
    let q = parse(sensor, p, limits)?;
    let series = state.history.history(&q).await.map_err(|e| match e {
        HistoryError::Invalid(m) => ApiError::BadParam {
            param: "field",
            message: m,
        },
        HistoryError::Backend(m) => ApiError::Internal(crate::error::Internal::History(m)),
    })?;
    Ok(Json(History {
        sensor: sensor.id.to_string(),
        from: q.from,
        to: q.to,
        every_ms: q.every_ms,
        agg: q.agg,
        series,
    }))
}

/// Coarse history of a public sensor (windows ≥ 5 min over ≤ 7 days).
#[utoipa::path(get, path = "/api/v1/public/sensors/{id}/history", tag = "public", operation_id = "public_history",
    params(("id" = String, Path, description = "Public sensor id"), Params),
    responses(
        (status = 200, description = "Aggregated series", body = History,
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "A bad parameter, named in `param`", body = crate::openapi::ErrorBody),
        (status = 404, description = "No public sensor of that id", body = crate::openapi::ErrorBody),
        (status = 429, description = "Rate limited", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Q(p): Q<Params>,
) -> Result<axum::response::Response, ApiError> {
    let registry = state.ingestor.registry();
    let sensor = registry
        .get(&id)
        .filter(|s| s.public)
        .ok_or_else(|| ApiError::NotFound(format!("public sensor {id:?}")))?;
    let Json(mut h) = answer(&state, sensor, &p, Limits::PUBLIC).await?;
    // No restricted field leaves through the public history.
    h.series
        .retain(|s| sensor.kind.field(&s.field).is_some_and(|f| !f.restricted));
    Ok(crate::public::cached(&h, 60))
}
