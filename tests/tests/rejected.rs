//! Rejected readings are not lost: a reading refused for a recoverable
//! cause (here a sensor not registered yet) is acknowledged to the gateway
//! and kept with its reason; an admin lists it, registers the sensor and
//! re-ingests it; it is then stored exactly as sent, counted as replayed,
//! and nothing else changes.

use anyhow::{ensure, Context, Result};
use pantau_tests::*;
use serde_json::{json, Value};

async fn call(
    p: &Pantau,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    p.call(method, path, token, body).await
}

#[tokio::test]
async fn a_reading_of_an_unregistered_sensor_is_kept_and_re_ingested_once_registered() -> Result<()>
{
    use reqwest::Method;
    let dir = tempfile::tempdir()?;
    let (p, creds) = minimal(dir.path(), &[]).await?;
    let admin = token_create(&p.data_dir, "ops", "admin")?;
    let admin = admin["token"].as_str().context("token")?.to_owned();
    let ts_good = now_rfc3339(-120);
    let ts_new = now_rfc3339(-60);
    let unknown = format!(
        r#"{{"sensor":"fl-baru-01","ts":"{ts_new}","values":{{"water_level_cm":77.5,"rain_mm":1.5}}}}"#
    );
    publish_ok(
        &p,
        &creds,
        &envelope("gw-test", 1, &[level(&ts_good, 120.0), unknown]),
    )?;
    // The good reading is stored; the other is kept with its reason.
    stored_eventually(&p.data_dir, "fl-test-01", 1).await?;
    let (s, v) = call(&p, Method::GET, "/api/v1/admin/rejected", &admin, None).await?;
    ensure!(s == 200, "{s} {v}");
    ensure!(v["total"] == 1, "{v}");
    let kept = &v["rejected"][0];
    ensure!(
        kept["sensor"] == "fl-baru-01"
            && kept["gateway"] == "gw-test"
            && kept["reason"] == "unknown_sensor"
            && kept["reading"]["values"]["water_level_cm"] == 77.5,
        "{kept}"
    );
    // Filters apply.
    let (_, v) = call(
        &p,
        Method::GET,
        "/api/v1/admin/rejected?reason=future_timestamp",
        &admin,
        None,
    )
    .await?;
    ensure!(
        v["rejected"].as_array().is_some_and(|a| a.is_empty()),
        "{v}"
    );
    // Not for anyone but admins.
    let reader = token_create(&p.data_dir, "bpbd", "read:flood")?;
    let reader = reader["token"].as_str().context("token")?.to_owned();
    let (s, _) = call(&p, Method::GET, "/api/v1/admin/rejected", &reader, None).await?;
    ensure!(s == 403, "{s}");
    let (s, _) = call(
        &p,
        Method::POST,
        "/api/v1/admin/rejected/replay",
        &reader,
        Some(json!({})),
    )
    .await?;
    ensure!(s == 403, "{s}");
    // Re-ingesting before the cause is fixed changes nothing.
    let (s, v) = call(
        &p,
        Method::POST,
        "/api/v1/admin/rejected/replay",
        &admin,
        Some(json!({})),
    )
    .await?;
    ensure!(
        s == 200 && v["replayed"] == 0 && v["still_rejected"] == 1,
        "{s} {v}"
    );
    // Register the sensor, then re-ingest.
    let (s, v) = call(
        &p,
        Method::POST,
        "/api/v1/admin/sensors",
        &admin,
        Some(
            json!({"id":"fl-baru-01","kind":"flood_gauge","gateway":"gw-test",
            "name":"Pos baru","district":"Dumai Kota","lat":1.67,"lon":101.44,
            "owner":"bpbd","public":true}),
        ),
    )
    .await?;
    ensure!(s == 201, "{s} {v}");
    let (s, v) = call(
        &p,
        Method::POST,
        "/api/v1/admin/rejected/replay",
        &admin,
        Some(json!({"sensor":"fl-baru-01"})),
    )
    .await?;
    ensure!(
        s == 200 && v["replayed"] == 1 && v["still_rejected"] == 0,
        "{s} {v}"
    );
    // Stored exactly as sent, at its own timestamp.
    let rows = stored_eventually(&p.data_dir, "fl-baru-01", 2).await?;
    let mut got: Vec<(String, f64)> = rows.iter().map(|r| (r.0.clone(), r.2)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    ensure!(
        got == vec![
            ("rain_mm".to_string(), 1.5),
            ("water_level_cm".to_string(), 77.5)
        ],
        "{got:?}"
    );
    let ts_ms = pantau_model::Timestamp::parse_rfc3339(&ts_new)
        .context("ts")?
        .millis();
    ensure!(rows.iter().all(|r| r.1 == ts_ms), "{rows:?}");
    let m = p.metrics().await?;
    ensure!(
        metric(&m, "pantau_ingest_rejected_replayed_total") == Some(1.0),
        "{m}"
    );
    ensure!(
        metric(&m, "pantau_ingest_rejected_kept") == Some(0.0),
        "{m}"
    );
    // Nothing else changed: the other sensor still has its one reading,
    // nothing is kept, and a second re-ingestion does nothing.
    ensure!(stored(&p.data_dir, "fl-test-01")?.len() == 1);
    let (_, v) = call(&p, Method::GET, "/api/v1/admin/rejected", &admin, None).await?;
    ensure!(v["total"] == 0, "{v}");
    let (_, v) = call(
        &p,
        Method::POST,
        "/api/v1/admin/rejected/replay",
        &admin,
        Some(json!({})),
    )
    .await?;
    ensure!(v["replayed"] == 0 && v["still_rejected"] == 0, "{v}");
    Ok(())
}
