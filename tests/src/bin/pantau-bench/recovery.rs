//! `recovery`: the two figures of the fault suite's benchmark, in one run
//! of `pantau up --storage influxdb` behind the harness's fault proxy.
//!
//! 1. PUBACK latency under a steady load (10 gateways, an envelope of 50
//!    readings every 50 ms each) with a healthy InfluxDB, then with 2 s
//!    added to every chunk either way between Pantau and InfluxDB: the
//!    acknowledgement waits for the ingest log's commit, never for the
//!    store, so p99 should not move. Baseline: the healthy phase.
//! 2. With InfluxDB unreachable (half-open), 1 M readings are acknowledged
//!    into the ingest log; `pantau up` is killed with SIGKILL, InfluxDB
//!    comes back, and the same command starts again: time from spawn to
//!    `/readyz`, and to the backlog drained (`log_pending` 0, every point
//!    in InfluxDB). Baselines: spawn to `/readyz` with an empty log, and
//!    the same 1 M points written straight to InfluxDB (same batch size).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pantau_model::envelope::encode;
use pantau_model::Timestamp;
use pantau_tests::faults::{Fault, FaultProxy};
use pantau_tests::services::Influx;
use pantau_tests::{binary, free_addr, metric};
use rumqttc::{Event, Outgoing, Packet, QoS};

use crate::{
    add_gateways, bench_gateway, direct_influx, gateway_readings, influx_count, registry, Load,
};

/// `pantau up` spawned by the benchmark itself, so that readiness is
/// polled finely from the moment of the spawn.
struct Up {
    child: Child,
    http: SocketAddr,
}

impl Up {
    fn spawn(dir: &Path, http: SocketAddr, mqtt: SocketAddr, influx: SocketAddr) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("pantau.log"))?;
        let child = Command::new(binary("pantau"))
            .arg("up")
            .args(["--data-dir", dir.join("data").to_str().unwrap_or_default()])
            .args([
                "--registry",
                dir.join("registry.toml").to_str().unwrap_or_default(),
            ])
            .args([
                "--http-listen",
                &http.to_string(),
                "--mqtt-listen",
                &mqtt.to_string(),
            ])
            .args([
                "--storage",
                "influxdb",
                "--influx-api",
                "v1",
                "--influx-db",
                "pantau",
            ])
            .args(["--influx-url", &format!("http://{influx}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn pantau up")?;
        Ok(Self { child, http })
    }

    /// Polls every 5 ms until `check` holds; the time it took.
    async fn until<F, Fut>(&mut self, what: &str, deadline: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let end = Instant::now() + deadline;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tick.tick().await;
            if check().await {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("pantau up exited ({status}) waiting for {what}");
            }
            if Instant::now() > end {
                bail!("timed out after {deadline:?} waiting for {what}");
            }
        }
    }

    async fn ready(&mut self, client: &reqwest::Client) -> Result<()> {
        let url = format!("http://{}/readyz", self.http);
        self.until("/readyz", Duration::from_secs(60), || {
            let req = client.get(&url).send();
            async { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publish→PUBACK latencies of every envelope the gateways sent in
/// `duration` (one every 50 ms per gateway, `per_envelope` readings).
async fn puback_latencies(
    mqtt: SocketAddr,
    load: &Load,
    base: i64,
    tokens: &[String],
    tls: &Arc<rustls::ClientConfig>,
    duration: Duration,
) -> Result<Vec<Duration>> {
    let mut tasks = Vec::new();
    for (g, token) in tokens.iter().enumerate().take(load.gateways) {
        let readings = gateway_readings(load, g, base);
        let (client, mut eventloop) = bench_gateway(mqtt, g, token, tls);
        let per = load.per_envelope;
        tasks.push(tokio::spawn(async move {
            let topic = format!("pantau/v1/gw/gw-b{g}/telemetry");
            let publisher = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let end = Instant::now() + duration;
                let mut sent = 0usize;
                for (i, chunk) in readings.chunks(per).enumerate() {
                    tick.tick().await;
                    if Instant::now() > end {
                        break;
                    }
                    let e = encode(&format!("gw-b{g}"), i as u64, Timestamp::now(), chunk);
                    if client
                        .publish(&topic, QoS::AtLeastOnce, false, e)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                }
                sent
            });
            let mut out = std::collections::HashMap::new();
            let mut latencies = Vec::new();
            let mut sent = None;
            loop {
                if publisher.is_finished() && sent.is_none() {
                    sent = Some(publisher.await?);
                    break;
                }
                let polled =
                    tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await;
                match polled {
                    Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        out.insert(pkid, Instant::now());
                    }
                    Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        if let Some(t) = out.remove(&ack.pkid) {
                            latencies.push(t.elapsed());
                        }
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => bail!("gateway {g}: {e}"),
                }
            }
            let sent = sent.unwrap_or_default();
            let end = Instant::now() + Duration::from_secs(30);
            while latencies.len() < sent && Instant::now() < end {
                if let Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) =
                    tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await
                {
                    if let Some(t) = out.remove(&ack.pkid) {
                        latencies.push(t.elapsed());
                    }
                }
            }
            if latencies.len() < sent {
                bail!(
                    "gateway {g}: {} of {sent} publishes acknowledged",
                    latencies.len()
                );
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    Ok(all)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) async fn bench_recovery(backlog: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = Influx::start(&dir.path().join("influx"), false).await?;
    let proxy = FaultProxy::start(influx.addr).await?;
    let steady = Load {
        gateways: 10,
        sensors_per_gateway: 50,
        readings: 10 * 50 * 400,
        per_envelope: 50,
    };
    let bulk = Load {
        gateways: 20,
        sensors_per_gateway: 50,
        readings: backlog,
        per_envelope: 500,
    };
    std::fs::create_dir_all(dir.path().join("data"))?;
    std::fs::write(dir.path().join("registry.toml"), registry(&bulk))?;
    let client = reqwest::Client::new();
    let (http, mqtt) = (free_addr(), free_addr());
    let mut up = Up::spawn(dir.path(), http, mqtt, proxy.addr)?;
    up.ready(&client).await?;
    let (tokens, ca) = add_gateways(&dir.path().join("data"), bulk.gateways)?;
    let tls = pantau_edge_agent::uplink::client_tls(&ca)?;
    let day = 86_400_000;
    let now = Timestamp::now().millis();

    // 1. PUBACK latency: healthy, then 2 s per chunk to and from InfluxDB.
    let phase = Duration::from_secs(
        std::env::var("PANTAU_BENCH_PHASE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(15),
    );
    let healthy = puback_latencies(mqtt, &steady, now - 40 * day, &tokens, &tls, phase).await?;
    let commits_healthy = slow_commits(&client, http).await;
    proxy.set(Fault::Delay(Duration::from_secs(2)));
    let slow = puback_latencies(mqtt, &steady, now - 39 * day, &tokens, &tls, phase).await?;
    let commits_slow = slow_commits(&client, http).await;
    let backlog_seen = up_pending(&client, http).await.unwrap_or(0.0);
    proxy.set(Fault::Pass);
    let steady_total = (healthy.len() + slow.len()) * steady.per_envelope;
    up.until(
        "the steady phases in InfluxDB",
        Duration::from_secs(120),
        || async { influx_count(&influx, "pantau").await.unwrap_or(0) >= steady_total as i64 },
    )
    .await?;

    // 2. 1 M readings acknowledged while InfluxDB is unreachable; kill -9.
    proxy.set(Fault::Blackhole);
    let t = Instant::now();
    crate::publish_all(mqtt, &bulk, now - 30 * day, &tokens, &ca).await?;
    let acked = t.elapsed();
    let pending = up_pending(&client, http).await.unwrap_or(0.0);
    if pending < bulk.readings as f64 * 0.9 {
        bail!("only {pending} readings pending in the log before the kill");
    }
    up.kill();
    proxy.set(Fault::Pass);
    let t = Instant::now();
    let mut up = Up::spawn(dir.path(), http, mqtt, proxy.addr)?;
    up.ready(&client).await?;
    let to_ready = t.elapsed();
    let total = (steady_total + bulk.readings) as i64;
    up.until("the backlog drained", Duration::from_secs(900), || async {
        up_pending(&client, http).await == Some(0.0)
    })
    .await?;
    let to_drained = t.elapsed();
    let stored = influx_count(&influx, "pantau").await.unwrap_or(0);
    if stored != total {
        bail!("InfluxDB holds {stored} readings after the drain, expected {total}");
    }

    // Baselines: a restart with an empty log; the points written directly.
    up.kill();
    let t = Instant::now();
    let mut up = Up::spawn(dir.path(), http, mqtt, proxy.addr)?;
    up.ready(&client).await?;
    let empty_ready = t.elapsed();
    up.kill();
    let all: Vec<_> = (0..bulk.gateways)
        .flat_map(|g| gateway_readings(&bulk, g, now - 20 * day))
        .collect();
    let direct_rate = direct_influx(&influx, "direct", &all).await?;
    let direct = Duration::from_secs_f64(all.len() as f64 / direct_rate);

    println!("recovery: pantau up --storage influxdb behind a fault proxy");
    println!(
        "  PUBACK latency, {} gateways x 20 envelopes/s x {} readings:",
        steady.gateways, steady.per_envelope
    );
    println!(
        "    healthy InfluxDB:       p50 {:>7.2} ms  p99 {:>7.2} ms  ({} publishes)",
        ms(pct(&healthy, 0.5)),
        ms(pct(&healthy, 0.99)),
        healthy.len()
    );
    println!(
        "    InfluxDB +2 s a chunk:  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} publishes, {backlog_seen:.0} readings pending meanwhile)",
        ms(pct(&slow, 0.5)),
        ms(pct(&slow, 0.99)),
        slow.len()
    );
    println!(
        "    ingest-log commits over 64 ms: {:.0} of {:.0} healthy, {:.0} of {:.0} slow",
        commits_healthy.1,
        commits_healthy.0,
        commits_slow.1 - commits_healthy.1,
        commits_slow.0 - commits_healthy.0
    );
    println!(
        "    ratio p99 slow / healthy: {:.2}",
        ms(pct(&slow, 0.99)) / ms(pct(&healthy, 0.99)).max(1e-3)
    );
    println!(
        "  kill -9 with {pending:.0} readings in the ingest log (acknowledged in {:.1} s with InfluxDB unreachable):",
        acked.as_secs_f64()
    );
    println!(
        "    spawn -> /readyz:            {:>8.0} ms   baseline, empty log: {:>6.0} ms   ratio {:.2}",
        ms(to_ready),
        ms(empty_ready),
        ms(to_ready) / ms(empty_ready).max(1e-3)
    );
    println!(
        "    spawn -> backlog drained:    {:>8.1} s    baseline, the points written straight to InfluxDB: {:.1} s   ratio {:.2}",
        to_drained.as_secs_f64(),
        direct.as_secs_f64(),
        to_drained.as_secs_f64() / direct.as_secs_f64()
    );
    Ok(())
}

async fn up_pending(client: &reqwest::Client, http: SocketAddr) -> Option<f64> {
    let text = client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric(&text, "pantau_ingest_log_pending")
}

/// Ingest-log commits so far (count, and how many took over 64 ms).
async fn slow_commits(client: &reqwest::Client, http: SocketAddr) -> (f64, f64) {
    let Ok(r) = client.get(format!("http://{http}/metrics")).send().await else {
        return (0.0, 0.0);
    };
    let text = r.text().await.unwrap_or_default();
    let count = metric(&text, "pantau_ingest_log_commit_seconds_count").unwrap_or(0.0);
    let fast = metric(
        &text,
        "pantau_ingest_log_commit_seconds_bucket{le=\"0.064\"}",
    )
    .unwrap_or(0.0);
    (count, count - fast)
}
