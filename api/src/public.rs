//! Anonymous, curated public view: only sensors marked public, with their
//! latest values and the status derived from the registry's thresholds.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use pantau_ingest::LatestReading;
use pantau_model::derive::{rain_class, siaga_level};
use pantau_model::{Sensor, SensorKind};
use serde::Serialize;
use serde_json::{json, Value as JsonValue};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::{ApiError, AppState};

/// One public sensor in `/api/v1/public/conditions`.
#[derive(Debug, Serialize)]
pub(crate) struct Condition {
    id: String,
    name: String,
    kind: SensorKind,
    district: String,
    lat: f64,
    lon: f64,
    /// Newest reading, if any arrived.
    latest: Option<Latest>,
    /// Derived status (flood Siaga level, traffic level of service, ...).
    status: Option<JsonValue>,
}

#[derive(Debug, Serialize)]
struct Latest {
    ts: String,
    values: serde_json::Map<String, JsonValue>,
}

/// Level of service from volume/capacity (default bands after the
/// transport ministry's KM 14/2006 table).
fn level_of_service(vc: f64) -> &'static str {
    match vc {
        x if x <= 0.35 => "A",
        x if x <= 0.54 => "B",
        x if x <= 0.77 => "C",
        x if x <= 0.90 => "D",
        x if x <= 1.00 => "E",
        _ => "F",
    }
}

fn status(sensor: &Sensor, latest: &LatestReading) -> Option<JsonValue> {
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
            Some(json!({
                "level_of_service": level_of_service(vc),
                "flow_veh_h": flow.round(),
                "volume_capacity_ratio": (vc * 100.0).round() / 100.0,
                "capacity_pcu_h": cap,
            }))
        }
        _ => None,
    }
}

pub(crate) async fn conditions(
    State(state): State<AppState>,
) -> Result<Json<Vec<Condition>>, ApiError> {
    let log = state.ingestor.log().clone();
    let latest = tokio::task::spawn_blocking(move || log.latest_all())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut by_sensor: HashMap<String, LatestReading> =
        latest.into_iter().map(|l| (l.sensor.clone(), l)).collect();
    let registry = state.ingestor.registry();
    let out = registry
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
                status: l.as_ref().and_then(|l| status(s, l)),
                latest: l.map(|l| Latest {
                    ts: l.ts.to_rfc3339(),
                    values: l.values,
                }),
            }
        })
        .collect();
    Ok(Json(out))
}

pub(crate) async fn live(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ingestor = state.ingestor.clone();
    let stream = BroadcastStream::new(state.ingestor.subscribe_live()).filter_map(move |item| {
        let ingestor = ingestor.clone();
        async move {
            match item {
                Ok(r) => {
                    let registry = ingestor.registry();
                    let public = registry.get(&r.sensor).is_some_and(|s| s.public);
                    public.then(|| {
                        let data = json!({
                            "sensor": r.sensor,
                            "kind": r.kind,
                            "ts": r.ts.to_rfc3339(),
                            "values": r.values,
                        });
                        Ok(Event::default().event("reading").data(data.to_string()))
                    })
                }
                // A slow client skips ahead rather than buffering without bound.
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    ingestor.metrics().live_lagged.inc_by(n);
                    Some(Ok(Event::default()
                        .event("lagged")
                        .data(json!({"skipped": n}).to_string())))
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_of_service_bands() {
        assert_eq!(level_of_service(0.2), "A");
        assert_eq!(level_of_service(0.6), "C");
        assert_eq!(level_of_service(1.2), "F");
    }
}
