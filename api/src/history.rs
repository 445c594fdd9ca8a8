//! Public history: `/api/v1/public/sensors/{id}/history`. Coarse on
//! purpose — windows of at least 5 minutes over at most 7 days — and only
//! for public sensors.

use axum::extract::{Path, Query, State};
use axum::Json;
use pantau_ingest::history::{Agg, HistoryError, HistoryQuery, Series};
use pantau_model::{FieldType, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{ApiError, AppState};

/// Smallest public window.
const MIN_EVERY_MS: i64 = 5 * 60 * 1000;
/// Longest public range.
const MAX_RANGE_MS: i64 = 7 * 86_400_000;

/// Query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// Start, RFC 3339 (default: 24 h before `to`).
    from: Option<String>,
    /// End, RFC 3339, exclusive (default: now).
    to: Option<String>,
    /// Window, e.g. `5m`, `1h` (default `5m`, minimum `5m`).
    every: Option<String>,
    /// `mean`, `min`, `max`, `last` or `count` (default `mean`).
    #[serde(rename = "fn")]
    agg: Option<String>,
    /// One field (default: every numeric field of the kind).
    field: Option<String>,
}

/// The answer.
#[derive(Debug, Serialize)]
pub(crate) struct History {
    sensor: String,
    from: Timestamp,
    to: Timestamp,
    every_ms: i64,
    #[serde(rename = "fn")]
    agg: Agg,
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
pub(crate) fn parse(state: &AppState, id: &str, p: &Params) -> Result<HistoryQuery, ApiError> {
    let registry = state.ingestor.registry();
    let sensor = registry
        .get(id)
        .filter(|s| s.public)
        .ok_or_else(|| ApiError::NotFound(format!("public sensor {id:?}")))?;
    let to = time_param(&p.to, "to", Timestamp::now())?;
    let from = time_param(&p.from, "from", to.add_millis(-86_400_000))?;
    if from >= to {
        return Err(ApiError::BadParam {
            param: "from",
            message: "must be before to".into(),
        });
    }
    if to.0 - from.0 > MAX_RANGE_MS {
        return Err(ApiError::BadParam {
            param: "from",
            message: "the public range is at most 7 days".into(),
        });
    }
    let every_ms = match &p.every {
        None => MIN_EVERY_MS,
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| ApiError::BadParam {
                param: "every",
                message: format!("{s:?}: {e}"),
            })?
            .as_millis()
            .try_into()
            .unwrap_or(i64::MAX),
    };
    if every_ms < MIN_EVERY_MS {
        return Err(ApiError::BadParam {
            param: "every",
            message: "the public window is at least 5m".into(),
        });
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
        every_ms: Some(every_ms),
        agg,
    };
    q.validate().map_err(|e| ApiError::BadParam {
        param: "field",
        message: e.to_string(),
    })?;
    Ok(q)
}

pub(crate) async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Result<Json<History>, ApiError> {
    let q = parse(&state, &id, &p)?;
    let series = state.history.history(&q).await.map_err(|e| match e {
        HistoryError::Invalid(m) => ApiError::BadParam {
            param: "field",
            message: m,
        },
        HistoryError::Backend(m) => ApiError::Internal(m),
    })?;
    Ok(Json(History {
        sensor: id,
        from: q.from,
        to: q.to,
        every_ms: q.every_ms.unwrap_or_default(),
        agg: q.agg,
        series,
    }))
}
