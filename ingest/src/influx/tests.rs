//! How the sink treats each kind of answer, against a scripted HTTP server
//! (a unit-test fake; the integration tests use real InfluxDB).

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use pantau_model::{Registry, SensorKind, Timestamp, Value};

use super::*;
use crate::log::{Batch, IngestLog, LogEntry, LoggedReading};

/// What the fake answers, given the request's lines.
type Script = Arc<
    dyn Fn(&[String], usize) -> (StatusCode, Vec<(&'static str, &'static str)>, &'static str)
        + Send
        + Sync,
>;

#[derive(Clone)]
struct Fake {
    script: Script,
    /// Lines of every request, in order.
    seen: Arc<Mutex<Vec<Vec<String>>>>,
}

async fn handle(State(f): State<Fake>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let mut text = String::new();
    if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
    } else {
        text = String::from_utf8_lossy(&body).into_owned();
    }
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = {
        let mut seen = f.seen.lock().unwrap();
        seen.push(lines.clone());
        seen.len()
    };
    let (status, headers, body) = (f.script)(&lines, n);
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(k, v.parse().unwrap());
    }
    (status, h, body)
}

async fn sink(
    script: Script,
) -> (
    InfluxSink,
    Arc<Mutex<Vec<Vec<String>>>>,
    Arc<IngestLog>,
    tempfile::TempDir,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/write", post(handle))
        .with_state(Fake {
            script,
            seen: seen.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(IngestLog::open(dir.path(), 1_000_000, IngestMetrics::default()).unwrap());
    let cfg = InfluxConfig {
        url: format!("http://{addr}"),
        api: InfluxApi::V1,
        db: Some("pantau".into()),
        rp: None,
        org: None,
        bucket: None,
        token: None,
        username: Some("writer".into()),
        password: Some("secret".into()),
        timeout: Duration::from_secs(5),
    };
    let s = InfluxSink::new(
        cfg,
        Arc::new(pantau_model::SharedRegistry::new(Registry::empty())),
        log.clone(),
    )
    .unwrap();
    (s, seen, log, dir)
}

fn batch(sensors: &[&str]) -> Batch {
    let readings: Vec<LoggedReading> = sensors
        .iter()
        .enumerate()
        .map(|(i, s)| LoggedReading {
            sensor: (*s).into(),
            gateway: "gw".into(),
            kind: SensorKind::FloodGauge,
            ts: Timestamp(1_795_846_200_000 + i as i64),
            values: [("water_level_cm".to_string(), Value::Num(i as f64))].into(),
        })
        .collect();
    Batch {
        entries: vec![LogEntry {
            id: 1,
            gateway: Some("gw".into()),
            readings: readings.into(),
        }],
        replayed: 0,
    }
}

#[tokio::test]
async fn retries_5xx_and_429_then_succeeds() {
    let script: Script = Arc::new(|_, n| match n {
        1 => (StatusCode::SERVICE_UNAVAILABLE, vec![], "busy"),
        2 => (
            StatusCode::TOO_MANY_REQUESTS,
            vec![("retry-after", "0")],
            "slow down",
        ),
        _ => (StatusCode::NO_CONTENT, vec![], ""),
    });
    let (s, seen, _log, _d) = sink(script).await;
    let m = IngestMetrics::default();
    let health = crate::Health::default();
    let r = s
        .write(&batch(&["a", "b", "c"]), &m, &health)
        .await
        .unwrap();
    assert_eq!(
        r,
        WriteReport {
            written: 3,
            dead_lettered: 0
        }
    );
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(
        m.sink_retries
            .get_or_create(&vec![("reason", "http_5xx")])
            .get(),
        1
    );
    assert_eq!(
        m.sink_retries
            .get_or_create(&vec![("reason", "http_429")])
            .get(),
        1
    );
    // Down while it retried, up again once the write went through.
    assert_eq!(
        health.state(crate::Part::Storage),
        Some(crate::health::PartState::Up)
    );
}

#[tokio::test]
async fn a_too_large_batch_is_split_until_it_fits() {
    let script: Script = Arc::new(|lines, _| {
        if lines.len() > 2 {
            (StatusCode::PAYLOAD_TOO_LARGE, vec![], "too big")
        } else {
            (StatusCode::NO_CONTENT, vec![], "")
        }
    });
    let (s, seen, _log, _d) = sink(script).await;
    let r = s
        .write(
            &batch(&["a", "b", "c", "d", "e", "f", "g"]),
            &IngestMetrics::default(),
            &crate::Health::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.written, 7);
    let accepted: usize = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.len() <= 2)
        .map(Vec::len)
        .sum();
    assert_eq!(
        accepted, 7,
        "every line written exactly once in an accepted request"
    );
}

#[tokio::test]
async fn refused_lines_are_isolated_and_dead_lettered() {
    let script: Script = Arc::new(|lines, _| {
        if lines.iter().any(|l| l.contains("sensor=bad")) {
            (
                StatusCode::BAD_REQUEST,
                vec![],
                "{\"error\":\"partial write: field type conflict\"}",
            )
        } else {
            (StatusCode::NO_CONTENT, vec![], "")
        }
    });
    let (s, _seen, log, _d) = sink(script).await;
    let r = s
        .write(
            &batch(&["a", "bad", "b", "c", "bad", "d", "e", "f"]),
            &IngestMetrics::default(),
            &crate::Health::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        WriteReport {
            written: 6,
            dead_lettered: 2
        }
    );
    let dead = log.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.line.contains("sensor=bad")
        && d.status == 400
        && d.message.contains("field type conflict")));
}

#[tokio::test]
async fn bad_credentials_stop_the_sink_naming_database_and_credential() {
    let script: Script = Arc::new(|_, _| {
        (
            StatusCode::UNAUTHORIZED,
            vec![],
            "{\"error\":\"authorization failed\"}",
        )
    });
    let (s, seen, _log, _d) = sink(script).await;
    let err = s
        .write(
            &batch(&["a"]),
            &IngestMetrics::default(),
            &crate::Health::default(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"pantau\"") && msg.contains("PANTAU_INFLUX_USERNAME") && msg.contains("401"),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "secret leaked: {msg}");
    assert_eq!(seen.lock().unwrap().len(), 1, "a 401 is not retried");
}
