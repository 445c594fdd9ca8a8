//! End-to-end tests of the foundation slice with the real `pantau` binary,
//! real TLS and a third-party MQTT client (`mosquitto_pub`).

use std::time::Duration;

use futures::StreamExt;
use pantau_tests::*;
use serde_json::Value;

fn condition<'a>(conds: &'a Value, id: &str) -> Option<&'a Value> {
    conds.as_array()?.iter().find(|c| c["id"] == id)
}

#[tokio::test]
async fn demo_serves_every_public_site_within_15s() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let started = tokio::time::Instant::now();
    let p = Pantau::start(
        &dir.path().join("data"),
        &["--demo", "--demo-interval", "2s"],
    )
    .await?;
    let public = demo_public_ids()?;
    assert_eq!(public.len(), 18);
    let remaining = Duration::from_secs(15).saturating_sub(started.elapsed());
    let conds = eventually(
        remaining,
        "conditions for every public demo site",
        || async {
            let c = p.get_json("/api/v1/public/conditions").await.ok()?;
            let all = public
                .iter()
                .all(|id| condition(&c, id).is_some_and(|s| !s["latest"].is_null()));
            all.then_some(c)
        },
    )
    .await?;
    // Only public sites, and derived statuses from the registry thresholds.
    assert_eq!(conds.as_array().unwrap().len(), public.len());
    let river = condition(&conds, "fl-sgdumai-hilir").unwrap();
    assert_eq!(river["status"]["thresholds"]["siaga3"], 150.0);
    assert!(river["status"]["siaga_level"]
        .as_u64()
        .is_some_and(|l| (1..=4).contains(&l)));
    let tide = condition(&conds, "tide-pelabuhan").unwrap();
    let h = tide["latest"]["values"]["tide_height_m"].as_f64().unwrap();
    assert!((-1.0..5.0).contains(&h), "tide {h}");
    assert!(
        condition(&conds, "br-dermaga-b").is_none(),
        "non-public berth exposed"
    );
    // A public berth shows occupancy, never the vessel's identifier.
    let berth = condition(&conds, "br-dermaga-a").expect("public berth");
    assert!(berth["latest"]["values"]["occupied"].is_boolean());
    assert!(!conds.to_string().contains("vessel_imo"));
    Ok(())
}

#[tokio::test]
async fn mosquitto_pub_reading_reaches_conditions_and_sse() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds) = minimal(dir.path(), &[]).await?;
    // Subscribe to the live feed before publishing.
    let resp = reqwest::get(p.url("/api/v1/public/live")).await?;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    let ts = now_rfc3339(-60);
    let env = envelope("gw-test", 1, &[level(&ts, 143.2)]);
    publish_ok(&p, &creds, &env)?;

    let conds = eventually(
        Duration::from_secs(10),
        "the reading in conditions",
        || async {
            let c = p.get_json("/api/v1/public/conditions").await.ok()?;
            let s = condition(&c, "fl-test-01")?.clone();
            (s["latest"]["values"]["water_level_cm"] == 143.2).then_some(s)
        },
    )
    .await?;
    assert_eq!(conds["latest"]["ts"], ts);
    assert_eq!(conds["status"]["siaga_level"], 4);

    let event = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.ok()?));
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("data:") && l.contains("fl-test-01"))
            {
                return serde_json::from_str::<Value>(line.trim_start_matches("data:").trim()).ok();
            }
        }
        None
    })
    .await?
    .expect("an SSE event for the reading");
    assert_eq!(event["values"]["water_level_cm"], 143.2);
    assert_eq!(event["kind"], "flood_gauge");
    Ok(())
}

#[tokio::test]
async fn three_good_two_bad_stores_exactly_the_good_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds) = minimal(dir.path(), &[]).await?;
    let t = |m: i64| now_rfc3339(-600 + m * 60);
    let readings = vec![
        level(&t(0), 100.0),
        level(&t(1), 99_999.0), // out of range
        level(&t(2), 101.0),
        format!(
            r#"{{"sensor":"fl-test-01","ts":"{}","values":{{"colour_cm":1}}}}"#,
            t(3)
        ), // unknown field
        level(&t(4), 102.0),
    ];
    publish_ok(&p, &creds, &envelope("gw-test", 1, &readings))?;
    let m = eventually(Duration::from_secs(10), "rejections counted", || async {
        let m = p.metrics().await.ok()?;
        (metric(
            &m,
            "pantau_ingest_readings_rejected_total{reason=\"out_of_range\"}",
        ) == Some(1.0))
        .then_some(m)
    })
    .await?;
    assert_eq!(
        metric(
            &m,
            "pantau_ingest_readings_rejected_total{reason=\"unknown_field\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "pantau_ingest_log_persisted_total"), Some(3.0));
    let rows = stored_eventually(&p.data_dir, "fl-test-01", 3).await?;
    let values: Vec<f64> = rows.iter().map(|r| r.2).collect();
    assert_eq!(values, vec![100.0, 101.0, 102.0]);
    let log = p.log_text();
    assert!(
        log.contains("out_of_range") || log.contains("outside the valid range"),
        "{log}"
    );
    assert!(
        log.contains("colour_cm"),
        "rejection reason not logged: {log}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_credentials_plain_tcp_and_unknown_gateways_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds) = minimal(dir.path(), &[]).await?;
    let topic = "pantau/v1/gw/gw-test/telemetry";
    let env = envelope("gw-test", 1, &[level(&now_rfc3339(-30), 120.0)]);
    let wrong = mosquitto_pub(
        p.mqtt,
        Some(&creds.ca_file),
        "gw-test",
        "not-the-token",
        topic,
        &env,
    )?;
    assert!(!wrong.status.success());
    let plain = mosquitto_pub(p.mqtt, None, "gw-test", &creds.password, topic, &env)?;
    assert!(!plain.status.success());
    let ghost_env = envelope("gw-ghost", 1, &[level(&now_rfc3339(-30), 120.0)]);
    let ghost = mosquitto_pub(
        p.mqtt,
        Some(&creds.ca_file),
        "gw-ghost",
        &creds.password,
        "pantau/v1/gw/gw-ghost/telemetry",
        &ghost_env,
    )?;
    assert!(!ghost.status.success());
    let m = eventually(Duration::from_secs(10), "refusals counted", || async {
        let m = p.metrics().await.ok()?;
        let bad = metric(
            &m,
            "pantau_broker_refused_total{reason=\"bad_credentials\"}",
        )?;
        let tls = metric(
            &m,
            "pantau_broker_refused_total{reason=\"tls_handshake_failed\"}",
        )?;
        (bad >= 2.0 && tls >= 1.0).then_some(m)
    })
    .await?;
    assert_eq!(
        metric(&m, "pantau_ingest_envelopes_received_total"),
        Some(0.0)
    );
    assert_eq!(stored_count(&p.data_dir)?, 0);
    // The right credentials still work afterwards.
    publish_ok(&p, &creds, &env)?;
    assert_eq!(
        stored_eventually(&p.data_dir, "fl-test-01", 1).await?.len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn restart_keeps_readings_credentials_and_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut p, creds) = minimal(dir.path(), &[]).await?;
    let ca_before = std::fs::read(&creds.ca_file)?;
    let first = envelope("gw-test", 1, &[level(&now_rfc3339(-120), 111.0)]);
    publish_ok(&p, &creds, &first)?;
    p.terminate().await?;
    let data = p.data_dir.clone();
    drop(p);
    let reg = dir.path().join("registry.toml");
    let p = Pantau::start(&data, &["--registry", reg.to_str().unwrap()]).await?;
    let c = p.get_json("/api/v1/public/conditions").await?;
    assert_eq!(
        condition(&c, "fl-test-01").unwrap()["latest"]["values"]["water_level_cm"],
        111.0
    );
    assert_eq!(std::fs::read(&creds.ca_file)?, ca_before, "CA regenerated");
    let second = envelope("gw-test", 2, &[level(&now_rfc3339(-60), 112.0)]);
    publish_ok(&p, &creds, &second)?;
    let values: Vec<f64> = stored_eventually(&data, "fl-test-01", 2)
        .await?
        .iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(values, vec![111.0, 112.0]);
    Ok(())
}

#[tokio::test]
async fn gateway_add_refuses_duplicates_and_bad_ids() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    gateway_add(dir.path(), "gw-a")?;
    assert!(gateway_add(dir.path(), "gw-a").is_err());
    assert!(gateway_add(dir.path(), "GW/A").is_err());
    Ok(())
}

#[tokio::test]
async fn a_busy_port_stops_the_start_with_its_address() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let out = std::process::Command::new(binary("pantau"))
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .args(["--http-listen", &addr, "--mqtt-listen", "127.0.0.1:0"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr), "{err}");
    Ok(())
}

#[tokio::test]
async fn an_invalid_registry_is_refused_naming_sensor_and_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let reg = dir.path().join("registry.toml");
    std::fs::write(
        &reg,
        MINIMAL_REGISTRY.replace("siaga3 = 150", "siaga3 = 300"),
    )?;
    let out = std::process::Command::new(binary("pantau"))
        .args(["up", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--registry",
        ])
        .arg(&reg)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fl-test-01") && err.contains("thresholds"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn public_history_equals_the_store_and_names_bad_parameters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds) = minimal(dir.path(), &[]).await?;
    let now = pantau_model::Timestamp::now().millis();
    let to = (now / 300_000) * 300_000;
    let from = to - 3_600_000;
    let readings: Vec<String> = (0..60)
        .map(|i| {
            let ts = pantau_model::Timestamp(from + i * 60_000 + 7_000).to_rfc3339();
            level(&ts, 100.0 + (i * 37 % 23) as f64 / 4.0)
        })
        .collect();
    publish_ok(&p, &creds, &envelope("gw-test", 1, &readings))?;
    let raw = stored_eventually(&p.data_dir, "fl-test-01", 60).await?;
    let from_s = pantau_model::Timestamp(from).to_rfc3339();
    let to_s = pantau_model::Timestamp(to).to_rfc3339();
    for agg in ["mean", "min", "max", "last", "count"] {
        let v = p
            .get_json(&format!(
                "/api/v1/public/sensors/fl-test-01/history?from={from_s}&to={to_s}&every=5m&fn={agg}&field=water_level_cm"
            ))
            .await?;
        let got = history_points(&v);
        // The same windows computed directly from the stored raw samples.
        let mut want: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
        for (_, ts, value) in raw.iter().filter(|r| r.1 >= from && r.1 < to) {
            want.entry(ts / 300_000 * 300_000).or_default().push(*value);
        }
        let want: Vec<(i64, f64)> = want
            .into_iter()
            .map(|(b, xs)| {
                let v = match agg {
                    "mean" => xs.iter().sum::<f64>() / xs.len() as f64,
                    "min" => xs.iter().cloned().fold(f64::MAX, f64::min),
                    "max" => xs.iter().cloned().fold(f64::MIN, f64::max),
                    "last" => *xs.last().unwrap(),
                    _ => xs.len() as f64,
                };
                (b, v)
            })
            .collect();
        assert_eq!(got.len(), 12, "{agg}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0, "{agg}");
            assert!((g.1 - w.1).abs() < 1e-9, "{agg}: {g:?} vs {w:?}");
        }
    }
    // Bad input: a 4xx with a JSON error naming the parameter, never a 5xx.
    let client = reqwest::Client::new();
    for (query, param) in [
        (format!("from={to_s}&to={from_s}"), "from"),
        ("every=1m".to_string(), "every"),
        ("every=soon".to_string(), "every"),
        ("fn=median".to_string(), "fn"),
        ("field=colour".to_string(), "field"),
        ("from=yesterday".to_string(), "from"),
        ("from=2020-01-01T00:00:00Z".to_string(), "from"),
    ] {
        let r = client
            .get(p.url(&format!(
                "/api/v1/public/sensors/fl-test-01/history?{query}"
            )))
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await?;
        assert_eq!(body["param"], param, "{query}: {body}");
    }
    let r = client
        .get(p.url("/api/v1/public/sensors/nope/history"))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    // The agency route's raw samples are exactly the stored ones.
    let token = token_create(&p.data_dir, "bpbd", "read:flood")?;
    let v: Value = client
        .get(p.url(&format!(
            "/api/v1/sensors/fl-test-01/readings?from={from_s}&to={to_s}&field=water_level_cm"
        )))
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let want: Vec<(i64, f64)> = raw
        .iter()
        .filter(|r| r.0 == "water_level_cm" && r.1 >= from && r.1 < to)
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(history_points(&v), want);
    assert_eq!(want.len(), 60);
    Ok(())
}
