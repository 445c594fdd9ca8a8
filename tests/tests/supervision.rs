//! Nothing on the data path fails silently: with the real `pantau` binary,
//! a real InfluxDB and Mosquitto, `/readyz` says which part is down and why
//! (a sink that cannot write, a drain that stopped and is restarted, an
//! ingest worker whose broker is unreachable), the log names the part, and
//! a process that runs out of file descriptors neither spins nor stays
//! deaf once descriptors are free again.

use std::time::Duration;

use pantau_tests::services::{Influx, Mosquitto};
use pantau_tests::*;
use serde_json::Value;

/// `/readyz` as (status, body).
async fn readyz(client: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let r = client.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// Waits until `/readyz` answers `status` and `check` holds on its body.
async fn readyz_until(
    url: &str,
    status: u16,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), what, || {
        let (client, check) = (client.clone(), &check);
        async move {
            readyz(&client, url)
                .await
                .filter(|(s, v)| *s == status && check(v))
                .map(|(_, v)| v)
        }
    })
    .await
}

fn part_down_with(v: &Value, part: &str, needle: &str) -> bool {
    v["ready"] == false
        && v["parts"][part]["ready"] == false
        && v["parts"][part]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(needle))
}

async fn influx_count(influx: &Influx) -> i64 {
    influx
        .query(
            Some("pantau"),
            "SELECT count(water_level_cm) FROM flood_gauge",
            None,
        )
        .await
        .ok()
        .and_then(|v| v["results"][0]["series"][0]["values"][0][1].as_i64())
        .unwrap_or(0)
}

#[tokio::test]
async fn readiness_names_the_part_that_stopped_and_recovers_with_it() -> anyhow::Result<()> {
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
    let ready_url = p.url("/readyz");
    let v = readyz_until(&ready_url, 200, "ready at start", |_| true).await?;
    for part in ["storage", "drain", "broker"] {
        anyhow::ensure!(v["parts"][part]["ready"] == true, "{part} not ready: {v}");
    }

    // 1. The sink cannot write (InfluxDB gone): storage down, with why.
    influx.stop();
    publish_ok(
        &p,
        &creds,
        &envelope("gw-test", 1, &[level(&now_rfc3339(-60), 101.0)]),
    )?;
    let v = readyz_until(
        &ready_url,
        503,
        "storage down while InfluxDB is gone",
        |v| part_down_with(v, "storage", "influxdb"),
    )
    .await?;
    anyhow::ensure!(v["parts"]["broker"]["ready"] == true, "{v}");
    eventually(Duration::from_secs(10), "the log naming the part", || {
        let log = p.log_text();
        std::future::ready(
            log.lines()
                .any(|l| l.contains("Part is down.") && l.contains("part=\"storage\""))
                .then_some(()),
        )
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", p.log_text()))?;
    influx.restart().await?;
    readyz_until(&ready_url, 200, "ready again once InfluxDB is back", |_| {
        true
    })
    .await?;
    eventually(
        Duration::from_secs(30),
        "the reading in InfluxDB",
        || async { (influx_count(&influx).await == 1).then_some(()) },
    )
    .await?;

    // 2. The drain itself stops (the database is gone: a fatal answer): it
    //    is shown down, restarted with backoff, and delivers once the
    //    cause is fixed.
    influx.query(None, "DROP DATABASE pantau", None).await?;
    publish_ok(
        &p,
        &creds,
        &envelope("gw-test", 2, &[level(&now_rfc3339(-30), 102.0)]),
    )?;
    let v = readyz_until(
        &ready_url,
        503,
        "drain down after a fatal sink answer",
        |v| part_down_with(v, "drain", "not found"),
    )
    .await?;
    anyhow::ensure!(part_down_with(&v, "storage", "not found"), "{v}");
    eventually(Duration::from_secs(10), "the restart in the log", || {
        let log = p.log_text();
        std::future::ready(
            log.lines()
                .any(|l| {
                    l.contains("Task stopped unexpectedly; restarting.") && l.contains("task=drain")
                })
                .then_some(()),
        )
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", p.log_text()))?;
    influx.query(None, "CREATE DATABASE pantau", None).await?;
    readyz_until(
        &ready_url,
        200,
        "ready again after the drain's restart",
        |_| true,
    )
    .await?;
    eventually(
        Duration::from_secs(30),
        "the second reading in InfluxDB",
        || async { (influx_count(&influx).await == 1).then_some(()) },
    )
    .await?;
    let m = p.metrics().await?;
    anyhow::ensure!(
        metric(&m, "pantau_ingest_log_pending") == Some(0.0),
        "log not drained: {m}"
    );
    Ok(())
}

#[tokio::test]
async fn an_ingest_worker_is_ready_only_once_its_broker_session_is_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mosq = Mosquitto::start(&dir.path().join("mosquitto")).await?;
    // Nothing listens here.
    let nowhere = format!("mqtt://{}", free_addr());
    let lost = IngestWorker::start(&dir.path().join("lost"), &nowhere, "lost", &[]).await?;
    let lost_url = format!("http://{}/readyz", lost.http);
    let v = readyz_until(&lost_url, 503, "consumer down without a broker", |v| {
        part_down_with(v, "consumer", "broker")
    })
    .await?;
    anyhow::ensure!(v["parts"]["storage"]["ready"] == true, "{v}");
    // The same worker against a reachable broker becomes ready.
    let broker = format!("mqtt://{}", mosq.addr);
    let w = IngestWorker::start(&dir.path().join("w"), &broker, "w", &[]).await?;
    let v = readyz_until(
        &format!("http://{}/readyz", w.http),
        200,
        "ready once subscribed",
        |_| true,
    )
    .await?;
    anyhow::ensure!(v["parts"]["consumer"]["ready"] == true, "{v}");
    // Still not ready where there is no broker.
    let client = reqwest::Client::new();
    let (status, _) = readyz(&client, &lost_url)
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer"))?;
    anyhow::ensure!(status == 503, "{status}");
    Ok(())
}

/// CPU time (user + system) of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("bad stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn out_of_file_descriptors_the_listener_backs_off_and_serves_again() -> anyhow::Result<()> {
    const LIMIT: u64 = 160;
    let dir = tempfile::tempdir()?;
    // Handshakes that outlive the measurement, so no descriptor frees
    // early, and no per-address cap on pending sockets (which would
    // otherwise close the flood at once and keep the table from filling).
    let (p, creds) = minimal_with(
        dir.path(),
        &[
            "--tls-handshake-timeout",
            "60s",
            "--max-pending-per-ip",
            "100000",
        ],
        Some(LIMIT),
    )
    .await?;
    let pid = p.pid();
    // Hold idle TCP connections until the process has no descriptor left
    // and the kernel queues the rest in the listen backlog.
    let mut held = Vec::new();
    for _ in 0..(LIMIT as usize + 100) {
        held.push(tokio::net::TcpStream::connect(p.mqtt).await?);
    }
    eventually(Duration::from_secs(10), "the descriptor table full", || {
        std::future::ready((open_fds(pid) as u64 >= LIMIT - 1).then_some(()))
    })
    .await?;
    // While accept fails, the process must not spin: measure 2 s of CPU.
    let before = cpu_ticks(pid)?;
    let window = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while tokio::time::Instant::now() < window {
        tick.tick().await;
        anyhow::ensure!(
            open_fds(pid) as u64 >= LIMIT - 4,
            "descriptors freed too early"
        );
    }
    let used = cpu_ticks(pid)? - before;
    anyhow::ensure!(
        used <= 40,
        "{used} ticks of CPU in 2 s (of 200 per core) while out of descriptors: spinning"
    );
    // Descriptors come back: a gateway is served again.
    drop(held);
    eventually(Duration::from_secs(30), "descriptors freed", || {
        std::future::ready(((open_fds(pid) as u64) < LIMIT - 40).then_some(()))
    })
    .await?;
    eventually(
        Duration::from_secs(30),
        "a publish after descriptors freed",
        || {
            std::future::ready(
                publish_ok(
                    &p,
                    &creds,
                    &envelope("gw-test", 1, &[level(&now_rfc3339(-5), 99.0)]),
                )
                .ok(),
            )
        },
    )
    .await?;
    stored_eventually(&p.data_dir, "fl-test-01", 1).await?;
    let m = p.metrics().await?;
    anyhow::ensure!(
        metric(&m, "pantau_broker_refused_total{reason=\"accept_failed\"}").unwrap_or(0.0) >= 1.0,
        "accept failures not counted"
    );
    Ok(())
}
