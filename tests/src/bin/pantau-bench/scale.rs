//! Scale-out benchmarks, each comparing 1 against 2 of a kind in one run
//! (rounds alternate, so a noisy neighbour hits both):
//!
//! - `scale-ingest`: readings/s from publish into Debian's Mosquitto to
//!   stored in InfluxDB, through 1 and through 2 `pantau ingest` workers on
//!   the shared subscription; the CPU seconds each process used show where
//!   the time goes. Baseline: the same points written straight to the same
//!   InfluxDB.
//! - `scale-api`: `/api/v1/public/conditions` through HAProxy with 1 and
//!   with 2 `pantau api` replicas (PostgreSQL state, InfluxDB history,
//!   latest values from the workers' commits), under `wrk`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pantau_model::envelope::encode;
use pantau_model::Timestamp;
use pantau_tests::services::{Haproxy, Influx, Mosquitto, Postgres};
use pantau_tests::{eventually, ApiReplica, IngestWorker};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::{gateway_readings, influx_count, registry, Load};

/// CPU seconds (user + system) a process has used so far.
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is 3rd.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based): 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// Publishes every gateway's envelopes to Mosquitto at QoS 1 (plain MQTT
/// on loopback), 100 in flight per gateway; returns once all are acked.
async fn publish(mqtt: std::net::SocketAddr, load: &Load, base: i64, round: usize) -> Result<()> {
    let mut tasks = Vec::new();
    for g in 0..load.gateways {
        let envelopes: Vec<Vec<u8>> = gateway_readings(load, g, base)
            .chunks(load.per_envelope)
            .enumerate()
            .map(|(i, c)| encode(&format!("gw-b{g}"), i as u64, Timestamp::now(), c))
            .collect();
        let mut opts = MqttOptions::new(format!("bench-{round}-{g}"), "127.0.0.1", mqtt.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 200);
        let expected = envelopes.len();
        tasks.push(tokio::spawn(async move {
            let topic = format!("pantau/v1/gw/gw-b{g}/telemetry");
            let publisher = tokio::spawn(async move {
                for e in envelopes {
                    if client
                        .publish(topic.clone(), QoS::AtLeastOnce, false, e)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                client
            });
            let mut acked = 0;
            while acked < expected {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => anyhow::bail!("publisher {g}: {e}"),
                }
            }
            drop(publisher.await);
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One round: `workers` ingest workers, fresh database `db`; readings/s
/// and the CPU seconds of (workers, InfluxDB, Mosquitto).
async fn ingest_round(
    dir: &std::path::Path,
    influx: &Influx,
    reg: &str,
    load: &Load,
    workers: usize,
    round: usize,
) -> Result<(f64, f64, f64, f64)> {
    let db = format!("scale{round}");
    // A broker of the round's own: the shared subscription keeps handing a
    // stopped worker's persistent session its share.
    let mosq = Mosquitto::start(&dir.join(format!("mosquitto{round}"))).await?;
    let broker = format!("mqtt://{}", mosq.addr);
    let url = influx.url();
    let flags = [
        "--registry",
        reg,
        "--storage",
        "influxdb",
        "--influx-api",
        "v1",
        "--influx-url",
        &url,
        "--influx-db",
        &db,
    ];
    let mut ws = Vec::new();
    for w in 0..workers {
        let data = dir.join(format!("r{round}-w{w}"));
        ws.push(IngestWorker::start(&data, &broker, &format!("r{round}w{w}"), &flags).await?);
    }
    for w in &ws {
        let url = format!("http://{}/readyz", w.http);
        eventually(Duration::from_secs(30), "worker subscribed", || {
            let url = url.clone();
            async move {
                reqwest::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(drop)
            }
        })
        .await?;
    }
    let n = load.gateways * (load.readings / load.gateways);
    let pids: Vec<u32> = ws.iter().map(|w| w.pid()).collect();
    let influx_pid = influx.pid().context("influxd pid")?;
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_s(*p)).collect();
    let (i0, m0) = (cpu_s(influx_pid), cpu_s(mosq.pid()));
    let base = Timestamp::now().millis() - 20 * 86_400_000;
    let t = Instant::now();
    publish(mosq.addr, load, base, round).await?;
    eventually(
        Duration::from_secs(900),
        "every reading in InfluxDB",
        || async { (influx_count(influx, &db).await? >= n as i64).then_some(()) },
    )
    .await?;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let workers_cpu: f64 = pids.iter().zip(&cpu0).map(|(p, c)| cpu_s(*p) - c).sum();
    // Work done twice shows here: retried InfluxDB writes, and envelopes
    // or readings taken more often than sent (redeliveries).
    let mut retries = std::collections::BTreeMap::<String, f64>::new();
    for w in &ws {
        let m = w.metrics().await?;
        for line in m.lines().filter(|l| {
            [
                "pantau_ingest_sink_retries_total",
                "pantau_ingest_readings_accepted_total",
                "pantau_ingest_log_delivered_total",
                "pantau_ingest_envelopes_received_total",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        }) {
            if let Some((k, v)) = line.rsplit_once(' ') {
                *retries.entry(k.to_owned()).or_default() += v.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    println!("    counters: {retries:?}");
    Ok((
        rate,
        workers_cpu,
        cpu_s(influx_pid) - i0,
        cpu_s(mosq.pid()) - m0,
    ))
}

pub(crate) async fn bench_scale_ingest(load: Load) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = Influx::start(&dir.path().join("influx"), false).await?;
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, registry(&load))?;
    let reg = reg.to_str().context("path")?.to_owned();
    let base = Timestamp::now().millis() - 40 * 86_400_000;
    let all: Vec<pantau_model::Reading> = (0..load.gateways)
        .flat_map(|g| gateway_readings(&load, g, base))
        .collect();
    let direct = crate::direct_influx(&influx, "direct", &all).await?;
    println!(
        "scale-ingest: {} readings per round, {} gateways, {} per envelope; Mosquitto -> pantau ingest -> InfluxDB 1.6",
        all.len(),
        load.gateways,
        load.per_envelope
    );
    let mut rates = [Vec::new(), Vec::new()];
    for (round, workers) in [1usize, 2, 1, 2].into_iter().enumerate() {
        let (rate, w, i, m) =
            ingest_round(dir.path(), &influx, &reg, &load, workers, round).await?;
        println!(
            "  round {round}: {workers} worker(s): {rate:>9.0} readings/s; CPU s: workers {w:.1}, influxd {i:.1}, mosquitto {m:.1}"
        );
        rates[workers - 1].push(rate);
    }
    let mean = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0] + v[v.len() - 1]) / 2.0
    };
    let (one, two) = (mean(&mut rates[0]), mean(&mut rates[1]));
    println!(
        "  1 worker {one:.0}/s, 2 workers {two:.0}/s: scaling ratio {:.2}",
        two / one
    );
    println!("  baseline, the same points written straight to InfluxDB: {direct:.0}/s (2 workers reach {:.2} of it)", two / direct);
    Ok(())
}

pub(crate) async fn bench_scale_api() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (influx_dir, mosq_dir) = (dir.path().join("influx"), dir.path().join("mosquitto"));
    let (pg, influx, mosq) = tokio::join!(
        Postgres::start(),
        Influx::start(&influx_dir, false),
        Mosquitto::start(&mosq_dir),
    );
    let (pg, influx, mosq) = (pg?, influx?, mosq?);
    let load = Load {
        gateways: 4,
        sensors_per_gateway: 5,
        readings: 2_000,
        per_envelope: 20,
    };
    let reg = dir.path().join("registry.toml");
    std::fs::write(
        &reg,
        registry(&load).replace("lon = 101.0\n", "lon = 101.0\npublic = true\n"),
    )?;
    let (reg, state, url) = (
        reg.to_str().context("path")?.to_owned(),
        pg.url(),
        influx.url(),
    );
    let broker = format!("mqtt://{}", mosq.addr);
    let common = [
        "--registry",
        &reg,
        "--state",
        &state,
        "--storage",
        "influxdb",
        "--influx-api",
        "v1",
        "--influx-url",
        &url,
        "--influx-db",
        "pantau",
    ];
    let _w = IngestWorker::start(&dir.path().join("w"), &broker, "w", &common).await?;
    let mut replica_args = common.to_vec();
    replica_args.extend([
        "--public-rate-per-s",
        "10000000",
        "--public-burst",
        "10000000",
    ]);
    let r1 = ApiReplica::start(&dir.path().join("r1"), &broker, "r1", None, &replica_args).await?;
    let r2 = ApiReplica::start(&dir.path().join("r2"), &broker, "r2", None, &replica_args).await?;
    publish(mosq.addr, &load, Timestamp::now().millis() - 3_600_000, 0).await?;
    for r in [&r1, &r2] {
        eventually(
            Duration::from_secs(60),
            "latest values on the replica",
            || async {
                let v: serde_json::Value = reqwest::get(r.url("/api/v1/public/conditions"))
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let n = v.to_string().matches("\"ts\"").count();
                (n >= 20).then_some(())
            },
        )
        .await?;
    }
    let one = Haproxy::start(&dir.path().join("hap1"), &[r1.http]).await?;
    let two = Haproxy::start(&dir.path().join("hap2"), &[r1.http, r2.http]).await?;
    println!("scale-api: /api/v1/public/conditions (20 public sensors) through HAProxy, wrk -t2 -c64 -d10s");
    let mut rates = [Vec::new(), Vec::new()];
    for (i, lb) in [&one, &two, &one, &two].into_iter().enumerate() {
        let (rps, p99) =
            crate::api::wrk(&format!("http://{}/api/v1/public/conditions", lb.addr), 10)?;
        let n = if i % 2 == 0 { 1 } else { 2 };
        println!("  {n} replica(s): {rps:>9.0} req/s, p99 {p99:?}");
        rates[n - 1].push(rps);
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (a, b) = (avg(&rates[0]), avg(&rates[1]));
    println!(
        "  1 replica {a:.0} req/s, 2 replicas {b:.0} req/s: ratio {:.2}",
        b / a
    );
    Ok(())
}
