//! Pantau's benchmark program. Each benchmark reports its figure next to a
//! baseline measured in the same run (the machines are shared and noisy):
//!
//! - `embedded`: readings/s from TLS publish to durably stored in the
//!   embedded store, through the real `pantau up`; baseline: the same
//!   readings written straight into a `Store` in batches of 5 000.
//! - `influx`: readings/s from TLS publish to stored in InfluxDB 1.x
//!   through `pantau up --storage influxdb`; baseline: the same points
//!   written straight to the same InfluxDB, same batch size, gzip.
//! - `history`: 7 days of one sensor at 1-minute resolution from the
//!   embedded store (rollups); baseline: the same answer computed from raw
//!   samples.
//!
//! Run with release binaries: `cargo build --release --workspace --bins &&
//! target/release/pantau-bench all`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pantau_ingest::history::{Agg, HistoryQuery};
use pantau_ingest::Store;
use pantau_model::envelope::encode;
use pantau_model::{Reading, SensorKind, Timestamp, Value};
use pantau_tests::services::Influx;
use pantau_tests::{eventually, gateway_add, metric, stored_count, Pantau};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

/// Load shape.
#[derive(Debug, Clone, Copy)]
struct Load {
    gateways: usize,
    sensors_per_gateway: usize,
    readings: usize,
    per_envelope: usize,
}

fn registry(load: &Load) -> String {
    let mut out = String::new();
    for g in 0..load.gateways {
        for s in 0..load.sensors_per_gateway {
            out.push_str(&format!(
                "[[sensor]]\nid = \"fl-b{g}-{s}\"\nkind = \"flood_gauge\"\ngateway = \"gw-b{g}\"\nname = \"Bench {g}/{s}\"\ndistrict = \"Dumai Kota\"\nlat = 1.0\nlon = 101.0\n\n"
            ));
        }
    }
    out
}

/// The readings of one gateway: round-robin over its sensors, 1 s apart.
fn gateway_readings(load: &Load, g: usize, base: i64) -> Vec<Reading> {
    let per_gateway = load.readings / load.gateways;
    (0..per_gateway)
        .map(|i| {
            let s = i % load.sensors_per_gateway;
            let step = (i / load.sensors_per_gateway) as i64;
            Reading {
                sensor: format!("fl-b{g}-{s}"),
                ts: Timestamp(base + step * 1000),
                values: [(
                    "water_level_cm".to_string(),
                    Value::Num((i % 997) as f64 / 4.0),
                )]
                .into(),
            }
        })
        .collect()
}

/// Publishes every gateway's readings over TLS at QoS 1 (100 in flight per
/// connection); returns when every PUBACK arrived.
async fn publish_all(
    p: &Pantau,
    load: &Load,
    base: i64,
    tokens: &[String],
    ca: &std::path::Path,
) -> Result<Duration> {
    let tls = pantau_edge_agent::uplink::client_tls(ca)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (g, token) in tokens.iter().enumerate().take(load.gateways) {
        let readings = gateway_readings(load, g, base);
        let envelopes: Vec<Vec<u8>> = readings
            .chunks(load.per_envelope)
            .enumerate()
            .map(|(i, c)| encode(&format!("gw-b{g}"), i as u64, Timestamp::now(), c))
            .collect();
        let mut opts = MqttOptions::new(format!("gw-b{g}"), "127.0.0.1", p.mqtt.port());
        opts.set_credentials(format!("gw-b{g}"), token.clone());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        let (client, mut eventloop) = AsyncClient::new(opts, 200);
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
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => bail!("gateway {g}: {e}"),
                }
            }
            drop(publisher.await);
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

async fn start_platform(
    dir: &std::path::Path,
    load: &Load,
    extra: &[&str],
) -> Result<(Pantau, Vec<String>, std::path::PathBuf)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.join("registry.toml");
    std::fs::write(&reg, registry(load))?;
    let mut args = vec!["--registry", reg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let p = Pantau::start(&data, &args).await?;
    let mut tokens = Vec::new();
    let mut ca = std::path::PathBuf::new();
    for g in 0..load.gateways {
        let c = gateway_add(&data, &format!("gw-b{g}"))?;
        tokens.push(c.password);
        ca = c.ca_file;
    }
    Ok((p, tokens, ca))
}

async fn bench_embedded(load: Load) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = Timestamp::now().millis() - 30 * 86_400_000;
    // Baseline: straight into a Store, batches of 5 000.
    let direct_dir = dir.path().join("direct");
    let store = Store::open(&direct_dir)?;
    let all: Vec<Reading> = (0..load.gateways)
        .flat_map(|g| gateway_readings(&load, g, base))
        .collect();
    let n = all.len();
    let t = Instant::now();
    for chunk in all.chunks(5_000) {
        store.write(chunk.to_vec()).await?;
    }
    let direct = n as f64 / t.elapsed().as_secs_f64();
    drop(store);

    let (p, tokens, ca) = start_platform(dir.path(), &load, &[]).await?;
    let t = Instant::now();
    let acked_after = publish_all(&p, &load, base, &tokens, &ca).await?;
    // Poll the platform's own delivered counter (cheap); counting rows in
    // the store every few milliseconds would steal the CPU being measured.
    eventually(
        Duration::from_secs(600),
        "every reading delivered to the store",
        || async {
            let m = p.metrics().await.ok()?;
            (metric(&m, "pantau_ingest_log_delivered_total")? >= n as f64).then_some(())
        },
    )
    .await?;
    let stored_after = t.elapsed();
    let rows = stored_count(&p.data_dir)?;
    if rows != n as i64 {
        bail!("the store holds {rows} readings, expected {n}");
    }
    let acked = n as f64 / acked_after.as_secs_f64();
    let e2e = n as f64 / stored_after.as_secs_f64();
    println!(
        "embedded: {n} readings, {} gateways, {} readings/envelope",
        load.gateways, load.per_envelope
    );
    println!("  TLS publish -> PUBACK (committed to the ingest log): {acked:>10.0} readings/s");
    println!("  TLS publish -> stored in the embedded store:          {e2e:>10.0} readings/s");
    println!("  baseline, Store::write in batches of 5000:            {direct:>10.0} readings/s");
    println!("  ratio end-to-end / baseline: {:.2}", e2e / direct);
    Ok(())
}

async fn direct_influx(influx: &Influx, db: &str, all: &[Reading]) -> Result<f64> {
    use std::io::Write;
    influx
        .query(None, &format!("CREATE DATABASE {db}"), None)
        .await?;
    let client = reqwest::Client::new();
    let t = Instant::now();
    for chunk in all.chunks(5_000) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for r in chunk {
            let g = r
                .sensor
                .split('-')
                .nth(1)
                .unwrap_or_default()
                .trim_start_matches('b');
            let logged = pantau_ingest::log::LoggedReading {
                sensor: r.sensor.clone(),
                kind: SensorKind::FloodGauge,
                ts: r.ts,
                values: r.values.clone(),
            };
            writeln!(
                gz,
                "{}",
                pantau_ingest::influx::line(&logged, &format!("gw-b{g}"), "Dumai Kota")
            )?;
        }
        let body = gz.finish()?;
        let resp = client
            .post(format!("{}/write?db={db}&precision=ms", influx.url()))
            .header("Content-Encoding", "gzip")
            .body(body)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("direct write: {}", resp.status());
        }
    }
    Ok(all.len() as f64 / t.elapsed().as_secs_f64())
}

async fn influx_count(influx: &Influx, db: &str) -> Option<i64> {
    let v = influx
        .query(
            Some(db),
            "SELECT count(water_level_cm) FROM flood_gauge",
            None,
        )
        .await
        .ok()?;
    v["results"][0]["series"][0]["values"][0][1].as_i64()
}

async fn bench_influx(load: Load) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let influx = Influx::start(&dir.path().join("influx"), false).await?;
    let base = Timestamp::now().millis() - 30 * 86_400_000;
    let all: Vec<Reading> = (0..load.gateways)
        .flat_map(|g| gateway_readings(&load, g, base))
        .collect();
    let n = all.len();
    let direct = direct_influx(&influx, "direct", &all).await?;
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
    let (p, tokens, ca) = start_platform(dir.path(), &load, &flags).await?;
    let t = Instant::now();
    publish_all(&p, &load, base, &tokens, &ca).await?;
    eventually(
        Duration::from_secs(600),
        "every reading in InfluxDB",
        || async { (influx_count(&influx, "pantau").await? >= n as i64).then_some(()) },
    )
    .await?;
    let e2e = n as f64 / t.elapsed().as_secs_f64();
    println!("influx: {n} readings into InfluxDB 1.6 (v1 /write, gzip, batches of 5000)");
    println!("  TLS publish -> stored in InfluxDB through Pantau: {e2e:>10.0} readings/s");
    println!("  baseline, the same points written straight to it:  {direct:>10.0} readings/s");
    println!("  ratio: {:.2}", e2e / direct);
    Ok(())
}

async fn bench_history() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path())?);
    let to = (Timestamp::now().millis() / 3_600_000) * 3_600_000;
    let from = to - 7 * 86_400_000;
    // 7 days of one sensor every 10 s (60 480 samples).
    let readings: Vec<Reading> = (0..(7 * 8_640))
        .map(|i| Reading {
            sensor: "fl-a".into(),
            ts: Timestamp(from + i * 10_000),
            values: [("water_level_cm".to_string(), Value::Num((i % 500) as f64))].into(),
        })
        .collect();
    for chunk in readings.chunks(5_000) {
        store.write(chunk.to_vec()).await?;
    }
    let q = |from: i64| HistoryQuery {
        sensor: "fl-a".into(),
        kind: SensorKind::FloodGauge,
        fields: vec!["water_level_cm".into()],
        from: Timestamp(from),
        to: Timestamp(to),
        every_ms: Some(60_000),
        agg: Agg::Mean,
    };
    let time = |q: &HistoryQuery| -> Result<(Duration, usize)> {
        let mut times = Vec::new();
        let mut points = 0;
        for _ in 0..21 {
            let t = Instant::now();
            let s = store.history(q).map_err(|e| anyhow::anyhow!("{e}"))?;
            times.push(t.elapsed());
            points = s[0].points.len();
        }
        times.sort();
        Ok((times[10], points))
    };
    let (rollup, points) = time(&q(from))?;
    // One millisecond off the minute forces the raw path: the baseline.
    let (raw, raw_points) = time(&q(from + 1))?;
    if points != 7 * 1440 || raw_points != 7 * 1440 {
        bail!("unexpected answer sizes {points} / {raw_points}");
    }
    println!(
        "history: 7 days of one sensor at 1-minute resolution ({points} points), median of 21"
    );
    println!(
        "  from 1-minute rollups:        {:>8.2} ms",
        rollup.as_secs_f64() * 1e3
    );
    println!(
        "  baseline, from raw samples:   {:>8.2} ms",
        raw.as_secs_f64() * 1e3
    );
    println!(
        "  ratio raw / rollups: {:.1}",
        raw.as_secs_f64() / rollup.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let readings: usize = std::env::var("PANTAU_BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let load = Load {
        gateways: 20,
        sensors_per_gateway: 50,
        readings,
        per_envelope: 500,
    };
    match what.as_str() {
        "embedded" => bench_embedded(load).await,
        "influx" => {
            bench_influx(Load {
                readings: readings / 5,
                ..load
            })
            .await
        }
        "history" => bench_history().await,
        "all" => {
            bench_history().await?;
            bench_embedded(load).await?;
            bench_influx(Load {
                readings: readings / 5,
                ..load
            })
            .await
        }
        other => bail!("unknown benchmark {other:?}: embedded, influx, history or all"),
    }
    .context(what)
}
