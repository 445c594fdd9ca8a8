//! InfluxDB stopped for two minutes while readings keep arriving: nothing
//! is lost, the backlog shows in the counters meanwhile, and it drains once
//! InfluxDB is back. (`PANTAU_TEST_OUTAGE_S` shortens the outage for local
//! iterations; CI runs the full two minutes.)

use std::time::Duration;

use pantau_model::Timestamp;
use pantau_tests::services::Influx;
use pantau_tests::*;

#[tokio::test]
async fn influx_outage_under_load_loses_nothing() -> anyhow::Result<()> {
    let outage_s: u64 = std::env::var("PANTAU_TEST_OUTAGE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let dir = tempfile::tempdir()?;
    let mut influx = Influx::start(&dir.path().join("influx"), false).await?;
    let url = influx.url();
    let flags = [
        "--storage",
        "influxdb",
        "--influx-api",
        "v1",
        "--influx-url",
        &url,
        "--influx-db",
        "pantau",
    ];
    let (p, creds) = minimal(dir.path(), &flags).await?;
    let cfg = format!(
        "gateway = \"gw-test\"\n[broker]\nurl = \"mqtts://127.0.0.1:{}\"\nca_file = \"{}\"\nusername = \"gw-test\"\npassword = \"{}\"\n[batch]\nmax_readings = 100\nmax_delay = \"50ms\"\n[[source]]\ntype = \"stdin\"\n",
        p.mqtt.port(),
        creds.ca_file.display(),
        creds.password
    );
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    // 100 readings/s, each with its own timestamp (10 ms apart).
    let base = Timestamp::now().millis() - 86_400_000;
    let mut sent: i64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let feed = |agent: &mut Agent, sent: &mut i64| -> anyhow::Result<()> {
        let mut lines = String::new();
        for _ in 0..10 {
            lines.push_str(&agent_line(
                "fl-test-01",
                base + *sent * 10,
                "water_level_cm",
                (*sent % 500) as f64,
            ));
            *sent += 1;
        }
        agent.send(&lines)
    };
    let phase = |secs: u64| tokio::time::Instant::now() + Duration::from_secs(secs);

    let end = phase(10);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        feed(&mut agent, &mut sent)?;
    }
    influx.stop();
    let end = phase(outage_s);
    let mut backlog_seen = 0.0f64;
    let mut retries_seen = 0.0f64;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        feed(&mut agent, &mut sent)?;
        if sent % 500 == 0 {
            let m = p.metrics().await?;
            backlog_seen = backlog_seen.max(metric(&m, "pantau_ingest_log_pending").unwrap_or(0.0));
            retries_seen = metric(
                &m,
                "pantau_ingest_sink_retries_total{reason=\"connection\"}",
            )
            .unwrap_or(0.0);
        }
    }
    assert!(
        backlog_seen > 1_000.0,
        "backlog not visible in the counters: {backlog_seen}"
    );
    assert!(retries_seen > 0.0, "retries not counted");
    influx.restart().await?;
    let end = phase(10);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        feed(&mut agent, &mut sent)?;
    }
    let total = sent;
    let count = eventually(
        Duration::from_secs(120),
        "every reading in InfluxDB",
        || async {
            let v = influx
                .query(
                    Some("pantau"),
                    "SELECT count(water_level_cm) FROM flood_gauge",
                    None,
                )
                .await
                .ok()?;
            let n = v["results"][0]["series"][0]["values"][0][1].as_i64()?;
            (n >= total).then_some(n)
        },
    )
    .await;
    let count = match count {
        Ok(n) => n,
        Err(e) => {
            let m = p.metrics().await.unwrap_or_default();
            let v = influx
                .query(
                    Some("pantau"),
                    "SELECT count(water_level_cm) FROM flood_gauge",
                    None,
                )
                .await?;
            let tail: String = p
                .log_text()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n");
            anyhow::bail!(
                "{e}: sent {total}, influx {v}\n{}\n{tail}",
                m.lines()
                    .filter(|l| l.starts_with("pantau_ingest"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    };
    assert_eq!(count, total, "extra points");
    let m = eventually(Duration::from_secs(30), "the log to drain", || async {
        let m = p.metrics().await.ok()?;
        (metric(&m, "pantau_ingest_log_pending") == Some(0.0)).then_some(m)
    })
    .await?;
    assert_eq!(
        metric(&m, "pantau_ingest_log_persisted_total"),
        Some(total as f64)
    );
    assert_eq!(
        metric(&m, "pantau_ingest_log_delivered_total"),
        Some(total as f64)
    );
    Ok(())
}
