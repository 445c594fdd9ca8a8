//! Storage acceptance tests against real InfluxDB 1.6.7 and
//! VictoriaMetrics started by the harness (DESIGN.md §7).

use std::time::Duration;

use pantau_tests::services::{Influx, Victoria};
use pantau_tests::*;
use serde_json::Value;

fn influx_flags<'a>(influx: &'a str, db: &'a str) -> Vec<&'a str> {
    vec![
        "--storage",
        "influxdb",
        "--influx-api",
        "v1",
        "--influx-url",
        influx,
        "--influx-db",
        db,
    ]
}

/// Rows of an InfluxQL answer as JSON arrays.
fn rows(v: &Value) -> Vec<Value> {
    v["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn influx_v1_stores_exact_values_with_tags_and_timestamps() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = Influx::start(&dir.path().join("influx"), false).await?;
    let url = influx.url();
    // The database does not exist yet: Pantau creates it.
    let (p, creds) = minimal(dir.path(), &influx_flags(&url, "pantau")).await?;
    let ts: Vec<String> = (0..5).map(|i| now_rfc3339(-300 + i * 60)).collect();
    let readings: Vec<String> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| level(t, 100.0 + i as f64 * 0.25))
        .collect();
    publish_ok(&p, &creds, &envelope("gw-test", 1, &readings))?;
    let q = "SELECT water_level_cm, sensor, gateway, kind, district FROM flood_gauge ORDER BY time";
    let got = eventually(Duration::from_secs(20), "5 points in InfluxDB", || async {
        let v = influx.query(Some("pantau"), q, None).await.ok()?;
        let r = rows(&v);
        (r.len() == 5).then_some(r)
    })
    .await?;
    for (i, row) in got.iter().enumerate() {
        let want_ts = pantau_model::Timestamp::parse_rfc3339(&ts[i])
            .unwrap()
            .millis();
        assert_eq!(row[0].as_i64(), Some(want_ts));
        assert_eq!(row[1].as_f64(), Some(100.0 + i as f64 * 0.25));
        assert_eq!(row[2], "fl-test-01");
        assert_eq!(row[3], "gw-test");
        assert_eq!(row[4], "flood_gauge");
        assert_eq!(row[5], "Dumai Kota");
    }
    Ok(())
}

#[tokio::test]
async fn influx_v1_demo_readings_arrive_and_history_api_equals_influxql() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = Influx::start(&dir.path().join("influx"), false).await?;
    let url = influx.url();
    let mut args = influx_flags(&url, "dumai");
    args.extend(["--demo", "--demo-interval", "1s"]);
    std::fs::create_dir_all(dir.path().join("data"))?;
    let analyst = token_create(&dir.path().join("data"), "analyst", "read:port")?;
    let analyst = analyst["token"].as_str().unwrap().to_owned();
    let p = Pantau::start(&dir.path().join("data"), &args).await?;
    // Every demo sensor (public or not) reaches InfluxDB, tagged with its
    // registry gateway.
    let sensors = eventually(
        Duration::from_secs(30),
        "all 21 demo sensors in InfluxDB",
        || async {
            let v = influx
                .query(Some("dumai"), "SHOW TAG VALUES WITH KEY = \"sensor\"", None)
                .await
                .ok()?;
            let names: Vec<String> = rows(&v)
                .iter()
                .filter_map(|r| r[1].as_str().map(str::to_owned))
                .collect();
            (names.len() == 21).then_some(names)
        },
    )
    .await?;
    assert!(sensors.contains(&"br-dermaga-a".to_string()));
    let gw = influx
        .query(
            Some("dumai"),
            "SELECT last(tide_height_m), gateway FROM tide_gauge WHERE sensor = 'tide-pelabuhan'",
            None,
        )
        .await?;
    assert_eq!(rows(&gw)[0][2], "gw-pelabuhan");
    // History through the API equals the same InfluxQL sent directly.
    let now = pantau_model::Timestamp::now().millis();
    let to = (now / 300_000 + 1) * 300_000;
    let from = to - 3_600_000;
    let from_s = pantau_model::Timestamp(from).to_rfc3339();
    let to_s = pantau_model::Timestamp(to).to_rfc3339();
    let api = p
        .get_json(&format!(
            "/api/v1/public/sensors/tide-pelabuhan/history?from={from_s}&to={to_s}&every=5m&fn=mean&field=tide_height_m"
        ))
        .await?;
    let direct = influx
        .query(
            Some("dumai"),
            &format!("SELECT MEAN(\"tide_height_m\") FROM \"tide_gauge\" WHERE \"sensor\" = 'tide-pelabuhan' AND time >= {from}ms AND time < {to}ms GROUP BY time(5m) fill(none)"),
            None,
        )
        .await?;
    let api_points = history_points(&api);
    let direct_points: Vec<(i64, f64)> = rows(&direct)
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_f64().unwrap()))
        .collect();
    assert!(!direct_points.is_empty());
    assert_eq!(api_points, direct_points);
    // The agency route's raw samples equal a direct raw query (a closed
    // range, polled until the drain has delivered it).
    // A range that closes 5 s from now, compared once it has closed.
    let raw_to = (pantau_model::Timestamp::now().millis() / 1000 + 5) * 1000;
    let raw_from = raw_to - 600_000;
    let path = format!(
        "/api/v1/sensors/tide-pelabuhan/readings?from={}&to={}&field=tide_height_m",
        pantau_model::Timestamp(raw_from).to_rfc3339(),
        pantau_model::Timestamp(raw_to).to_rfc3339()
    );
    let client = reqwest::Client::new();
    let (agency_points, raw_points) = eventually(Duration::from_secs(30), "agency raw readings = InfluxQL", || {
        let (client, url, influx, analyst) = (client.clone(), p.url(&path), &influx, analyst.clone());
        async move {
            if pantau_model::Timestamp::now().millis() < raw_to + 2_000 {
                return None;
            }
            let r = client.get(url).bearer_auth(analyst).send().await.ok()?;
            let v: serde_json::Value = r.error_for_status().ok()?.json().await.ok()?;
            let direct = influx
                .query(
                    Some("dumai"),
                    &format!("SELECT \"tide_height_m\" FROM \"tide_gauge\" WHERE \"sensor\" = 'tide-pelabuhan' AND time >= {raw_from}ms AND time < {raw_to}ms"),
                    None,
                )
                .await
                .ok()?;
            let a = history_points(&v);
            let b: Vec<(i64, f64)> = rows(&direct)
                .iter()
                .map(|r| (r[0].as_i64().unwrap_or_default(), r[1].as_f64().unwrap_or_default()))
                .collect();
            (!a.is_empty() && a == b).then_some((a, b))
        }
    })
    .await?;
    assert_eq!(agency_points, raw_points);
    assert!(v_is_null_every(&p, &path, &analyst).await?);
    Ok(())
}

/// The agency answer of raw samples says so (`every_ms` null).
async fn v_is_null_every(p: &Pantau, path: &str, token: &str) -> anyhow::Result<bool> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(p.url(path))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    Ok(v["every_ms"].is_null() && v["series"][0]["field"] == "tide_height_m")
}

#[tokio::test]
async fn victoria_metrics_receives_gzip_v2_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = Victoria::start(&dir.path().join("vm")).await?;
    let url = vm.url();
    let flags = [
        "--storage",
        "influxdb",
        "--influx-api",
        "v2",
        "--influx-url",
        &url,
        "--influx-org",
        "dumai",
        "--influx-bucket",
        "pantau",
    ];
    let (p, creds) = minimal(dir.path(), &flags).await?;
    let ts: Vec<String> = (0..3).map(|i| now_rfc3339(-120 + i * 60)).collect();
    let readings: Vec<String> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| level(t, 140.0 + i as f64))
        .collect();
    publish_ok(&p, &creds, &envelope("gw-test", 1, &readings))?;
    let series = eventually(
        Duration::from_secs(30),
        "the readings in VictoriaMetrics",
        || async {
            let all = vm.export().await.ok()?;
            let s = all
                .into_iter()
                .find(|s| s["metric"]["__name__"] == "flood_gauge_water_level_cm")?;
            (s["values"].as_array()?.len() == 3).then_some(s)
        },
    )
    .await?;
    assert_eq!(series["metric"]["sensor"], "fl-test-01");
    assert_eq!(series["metric"]["gateway"], "gw-test");
    let values: Vec<f64> = series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![140.0, 141.0, 142.0]);
    let stamps: Vec<i64> = series["timestamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let want: Vec<i64> = ts
        .iter()
        .map(|t| pantau_model::Timestamp::parse_rfc3339(t).unwrap().millis())
        .collect();
    assert_eq!(stamps, want);
    Ok(())
}

#[tokio::test]
async fn rejected_lines_are_dead_lettered_and_good_ones_stored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = Influx::start(&dir.path().join("influx"), false).await?;
    let url = influx.url();
    influx.query(None, "CREATE DATABASE pantau", None).await?;
    // Make water_level_cm a string field in the current shard: Pantau's
    // float lines for it now conflict (field types are per shard).
    let seed_ts = pantau_model::Timestamp::now().millis() - 3_600_000;
    influx
        .write(
            "pantau",
            &format!("flood_gauge,sensor=seed water_level_cm=\"high\" {seed_ts}"),
        )
        .await?;
    let (p, creds) = minimal(dir.path(), &influx_flags(&url, "pantau")).await?;
    let t = |m: i64| now_rfc3339(-600 + m * 60);
    let readings = vec![
        level(&t(0), 100.0),
        format!(
            r#"{{"sensor":"fl-test-01","ts":"{}","values":{{"rain_mm":1.5}}}}"#,
            t(1)
        ),
        level(&t(2), 101.0),
        format!(
            r#"{{"sensor":"fl-test-01","ts":"{}","values":{{"rain_mm":2.5}}}}"#,
            t(3)
        ),
    ];
    publish_ok(&p, &creds, &envelope("gw-test", 1, &readings))?;
    let m = eventually(Duration::from_secs(30), "the log to drain", || async {
        let m = p.metrics().await.ok()?;
        (metric(&m, "pantau_ingest_log_pending") == Some(0.0)
            && metric(
                &m,
                "pantau_ingest_log_dropped_total{reason=\"dead_letter\"}",
            ) == Some(2.0))
        .then_some(m)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nlog:\n{}", p.log_text()))?;
    assert_eq!(metric(&m, "pantau_ingest_log_delivered_total"), Some(2.0));
    // The good lines are stored.
    let rain = influx
        .query(
            Some("pantau"),
            "SELECT rain_mm FROM flood_gauge WHERE sensor = 'fl-test-01'",
            None,
        )
        .await?;
    let values: Vec<f64> = rows(&rain).iter().map(|r| r[1].as_f64().unwrap()).collect();
    assert_eq!(values, vec![1.5, 2.5]);
    // The rejected ones are in the dead-letter table with the server's message.
    let conn = rusqlite::Connection::open(p.data_dir.join("ingest-log.db"))?;
    let mut stmt = conn.prepare("SELECT line, status, message FROM dead_letter ORDER BY id")?;
    let dead: Vec<(String, i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (line, status, message) in &dead {
        assert!(line.contains("water_level_cm="), "{line}");
        assert_eq!(*status, 400);
        assert!(message.contains("field type conflict"), "{message}");
    }
    // No endless retry: nothing more is attempted once the log is empty.
    let retries =
        metric(&m, "pantau_ingest_sink_retries_total{reason=\"http_5xx\"}").unwrap_or(0.0);
    assert_eq!(retries, 0.0);
    Ok(())
}

fn start_fails(data: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(binary("pantau"));
    cmd.args(["up", "--data-dir"])
        .arg(data)
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env_remove("PANTAU_INFLUX_TOKEN")
        .env_remove("PANTAU_INFLUX_USERNAME")
        .env_remove("PANTAU_INFLUX_PASSWORD");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pantau");
    assert!(
        !out.status.success(),
        "pantau started with a bad configuration"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn bad_influx_configuration_is_refused_at_start_naming_the_problem() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // Unreachable URL.
    let nobody = format!("http://{}", free_addr());
    let err = start_fails(&data, &influx_flags(&nobody, "pantau"), &[]);
    assert!(
        err.contains("unreachable") && err.contains(&nobody),
        "{err}"
    );
    // Unknown API version.
    let err = start_fails(&data, &["--storage", "influxdb", "--influx-api", "v9"], &[]);
    assert!(err.contains("v9") && err.contains("v1"), "{err}");
    // Wrong credential and missing database on a server with auth.
    let mut influx = Influx::start(&dir.path().join("influx"), true).await?;
    influx
        .query(
            None,
            "CREATE USER admin WITH PASSWORD 'secret' WITH ALL PRIVILEGES",
            None,
        )
        .await?;
    influx
        .query(
            None,
            "CREATE USER reader WITH PASSWORD 'pw'",
            Some(("admin", "secret")),
        )
        .await?;
    let url = influx.url();
    let err = start_fails(
        &data,
        &influx_flags(&url, "pantau"),
        &[
            ("PANTAU_INFLUX_USERNAME", "admin"),
            ("PANTAU_INFLUX_PASSWORD", "wrong"),
        ],
    );
    assert!(
        err.contains("PANTAU_INFLUX_USERNAME") && err.contains("refused") && err.contains("pantau"),
        "{err}"
    );
    let err = start_fails(
        &data,
        &influx_flags(&url, "missing"),
        &[
            ("PANTAU_INFLUX_USERNAME", "reader"),
            ("PANTAU_INFLUX_PASSWORD", "pw"),
        ],
    );
    assert!(
        err.contains("\"missing\"") && err.contains("not found") && err.contains("cannot create"),
        "{err}"
    );
    // Missing required setting.
    let err = start_fails(
        &data,
        &[
            "--storage",
            "influxdb",
            "--influx-url",
            &url,
            "--influx-api",
            "v2",
        ],
        &[],
    );
    assert!(err.contains("--influx-org"), "{err}");
    influx.stop();
    Ok(())
}

#[tokio::test]
async fn both_stores_answer_history_the_same() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = Influx::start(&dir.path().join("influx"), false).await?;
    let url = influx.url();
    let (emb, emb_creds) = minimal(&dir.path().join("embedded"), &[]).await?;
    let (inf, inf_creds) = minimal(
        &dir.path().join("influx-platform"),
        &influx_flags(&url, "same"),
    )
    .await?;
    let now = pantau_model::Timestamp::now().millis();
    let to = (now / 300_000) * 300_000;
    let from = to - 6 * 3_600_000;
    let readings: Vec<String> = (0..300)
        .map(|i| {
            let ts = pantau_model::Timestamp(from + i * 71_000 + 3_000).to_rfc3339();
            level(&ts, ((i * 7919) % 1000) as f64 / 3.0)
        })
        .collect();
    let env = envelope("gw-test", 1, &readings);
    publish_ok(&emb, &emb_creds, &env)?;
    publish_ok(&inf, &inf_creds, &env)?;
    stored_eventually(&emb.data_dir, "fl-test-01", 300).await?;
    eventually(
        Duration::from_secs(30),
        "300 points in InfluxDB",
        || async {
            let v = influx
                .query(
                    Some("same"),
                    "SELECT count(water_level_cm) FROM flood_gauge",
                    None,
                )
                .await
                .ok()?;
            (v["results"][0]["series"][0]["values"][0][1].as_i64()? == 300).then_some(())
        },
    )
    .await?;
    let from_s = pantau_model::Timestamp(from).to_rfc3339();
    let to_s = pantau_model::Timestamp(to).to_rfc3339();
    for every in ["5m", "1h", "7m"] {
        for agg in ["mean", "min", "max", "last", "count"] {
            let path = format!(
                "/api/v1/public/sensors/fl-test-01/history?from={from_s}&to={to_s}&every={every}&fn={agg}&field=water_level_cm"
            );
            let a = history_points(&emb.get_json(&path).await?);
            let b = history_points(&inf.get_json(&path).await?);
            assert!(!a.is_empty());
            assert_eq!(a.len(), b.len(), "{every} {agg}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.0, y.0, "{every} {agg}");
                assert!(
                    (x.1 - y.1).abs() <= 1e-9 * x.1.abs().max(1.0),
                    "{every} {agg}: {x:?} vs {y:?}"
                );
            }
        }
    }
    Ok(())
}
