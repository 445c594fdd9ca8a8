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
//! - `fanin`: QoS 1 telemetry publishes acknowledged per second through
//!   Pantau's gatekeeper (acked only after the durable commit) against
//!   Debian's Mosquitto (in memory), both over TLS with the same
//!   certificate and the same load generator.
//! - `connections`: 10 000 concurrent idle TLS gateway connections: time
//!   to connect them all and the server's RSS.
//! - `alerts-ingest`, `alerts-webhook`: see `alerts.rs`.
//! - `scale-ingest`, `scale-api`: 1 against 2 ingest workers and API
//!   replicas (`scale.rs`).
//! - `recovery`: PUBACK p99 with InfluxDB 2 s slow against healthy, and
//!   the time back to ready and to a drained backlog after kill -9 with
//!   1 M readings in the ingest log (`recovery.rs`).
//! - `web-load`, `web-live` (`web` runs both): the public page in headless
//!   Chromium — first-load bytes and time to a full map against `/healthz`;
//!   200 sites at 50 readings/s: JS heap and publish→paint lag, early vs.
//!   late in the run (`web.rs`).
//!
//! Run with release binaries: `cargo build --release --workspace --bins &&
//! target/release/pantau-bench all`.

mod agent;
mod alerts;
mod api;
mod recovery;
mod scale;
mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pantau_ingest::history::{Agg, HistoryQuery};
use pantau_ingest::Store;
use pantau_model::envelope::encode;
use pantau_model::{Reading, SensorKind, Timestamp, Value};
use pantau_tests::mqtt::remaining_length;
use pantau_tests::services::{Influx, Mosquitto};
use pantau_tests::{eventually, gateway_add, metric, rss_kib, stored_count, Pantau};
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
    mqtt: std::net::SocketAddr,
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
        let (client, mut eventloop) = bench_gateway(mqtt, g, token, &tls);
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

/// Bench gateway `gw-b{g}`'s MQTT client over TLS (100 in flight).
fn bench_gateway(
    mqtt: std::net::SocketAddr,
    g: usize,
    token: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(format!("gw-b{g}"), "127.0.0.1", mqtt.port());
    opts.set_credentials(format!("gw-b{g}"), token.to_owned());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(100);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    AsyncClient::new(opts, 200)
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
    let (tokens, ca) = add_gateways(&data, load.gateways)?;
    Ok((p, tokens, ca))
}

/// Registers the bench gateways `gw-b0`… with `pantau gateway add`;
/// returns their tokens and the platform's CA file.
fn add_gateways(data: &std::path::Path, n: usize) -> Result<(Vec<String>, std::path::PathBuf)> {
    let mut tokens = Vec::new();
    let mut ca = std::path::PathBuf::new();
    for g in 0..n {
        let c = gateway_add(data, &format!("gw-b{g}"))?;
        tokens.push(c.password);
        ca = c.ca_file;
    }
    Ok((tokens, ca))
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
    let acked_after = publish_all(p.mqtt, &load, base, &tokens, &ca).await?;
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
                gateway: format!("gw-b{g}"),
                kind: SensorKind::FloodGauge,
                ts: r.ts,
                values: r.values.clone(),
            };
            writeln!(gz, "{}", pantau_ingest::influx::line(&logged, "Dumai Kota"))?;
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
    publish_all(p.mqtt, &load, base, &tokens, &ca).await?;
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

/// Publishers for `duration`: each of `clients` connections keeps 100
/// QoS 1 publishes in flight; returns PUBACKs per second.
/// QoS 1 publishes in flight per connection in the fan-in load.
const FANIN_WINDOW: usize = 100;

/// The fan-in load generator: per gateway one TLS connection (rustls, the
/// platform CA) that keeps `FANIN_WINDOW` QoS 1 publishes in flight, writing
/// whole batches of pre-encoded MQTT 3.1.1 frames and counting PUBACKs. It is
/// deliberately lean (no client library state machine) so that the broker
/// under test, not the generator, uses the CPU; both brokers get the same one.
async fn fanin_load(
    port: u16,
    clients: usize,
    creds: &[(String, String)],
    tls: Arc<rustls::ClientConfig>,
    duration: Duration,
    base_ms: i64,
) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut conns = Vec::new();
    for (id, token) in creds.iter().take(clients) {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(&connect_packet(id, token)).await?;
        let mut ack = [0u8; 4];
        tls.read_exact(&mut ack).await?;
        if ack != [0x20, 0x02, 0x00, 0x00] {
            bail!("{id}: CONNACK {ack:?}");
        }
        conns.push((id.clone(), tls));
    }
    let started = Instant::now();
    let stop = started + duration;
    let mut tasks = Vec::new();
    for (g, (gw, tls)) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(tls);
            let window = Arc::new(tokio::sync::Semaphore::new(FANIN_WINDOW));
            let topic = format!("pantau/v1/gw/{gw}/telemetry");
            let sensor = format!("fl-f{g}");
            let writer_window = window.clone();
            let writer = tokio::spawn(async move {
                let base = base_ms;
                let (mut seq, mut pkid) = (0i64, 0u16);
                let mut buf = Vec::with_capacity(64 * 1024);
                while Instant::now() < stop {
                    // Wait for one free slot, then take every other free one.
                    let Ok(first) = writer_window.acquire().await else { break };
                    first.forget();
                    let mut n = 1;
                    while let Ok(p) = writer_window.try_acquire() {
                        p.forget();
                        n += 1;
                    }
                    buf.clear();
                    for _ in 0..n {
                        pkid = pkid % u16::MAX + 1;
                        let payload = format!(
                            r#"{{"v":1,"gw":"{gw}","seq":{seq},"readings":[{{"sensor":"{sensor}","ts":"{}","values":{{"water_level_cm":{}}}}}]}}"#,
                            Timestamp(base + seq).to_rfc3339(),
                            seq % 100
                        );
                        publish_frame(&mut buf, &topic, pkid, payload.as_bytes());
                        seq += 1;
                    }
                    if wr.write_all(&buf).await.is_err() {
                        break;
                    }
                }
                wr
            });
            let mut acked = 0u64;
            let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
            let result = loop {
                let read = tokio::select! {
                    r = rd.read_buf(&mut buf) => r,
                    _ = tokio::time::sleep_until(stop.into()) => break Ok(()),
                };
                match read {
                    Ok(0) => break Err(anyhow::anyhow!("client {g}: connection closed")),
                    Err(e) => break Err(anyhow::anyhow!("client {g}: {e}")),
                    Ok(_) => {}
                }
                let mut acks = 0;
                let mut at = 0;
                while buf.len() >= at + 4 && buf[at] == 0x40 && buf[at + 1] == 2 {
                    at += 4;
                    acks += 1;
                }
                buf.drain(..at);
                if buf.len() >= 2 && (buf[0] != 0x40 || buf[1] != 2) {
                    break Err(anyhow::anyhow!("client {g}: unexpected packet {:#x}", buf[0]));
                }
                acked += acks as u64;
                window.add_permits(acks);
            };
            window.close();
            writer.abort();
            result.map(|()| acked)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

/// Appends one QoS 1 PUBLISH frame to `buf`.
fn publish_frame(buf: &mut Vec<u8>, topic: &str, pkid: u16, payload: &[u8]) {
    buf.push(0x32);
    remaining_length(buf, 2 + topic.len() + 2 + payload.len());
    buf.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    buf.extend_from_slice(topic.as_bytes());
    buf.extend_from_slice(&pkid.to_be_bytes());
    buf.extend_from_slice(payload);
}

/// A Pantau for the fan-in benches: sensors `fl-f{g}` on gateways
/// `gw-f{g}` (public when `public`), no publish rate limit, and the
/// gateways' credentials.
async fn fanin_pantau(
    dir: &std::path::Path,
    clients: usize,
    public: bool,
    extra: &[&str],
) -> Result<(Pantau, Vec<(String, String)>)> {
    let reg = dir.join("registry.toml");
    let mut registry = String::new();
    for g in 0..clients {
        registry.push_str(&format!(
            "[[sensor]]\nid = \"fl-f{g}\"\nkind = \"flood_gauge\"\ngateway = \"gw-f{g}\"\nname = \"F{g}\"\nlat = 1.0\nlon = 101.0\npublic = {public}\n\n"
        ));
    }
    std::fs::write(&reg, registry)?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let mut args = vec![
        "--registry",
        reg.to_str().unwrap(),
        "--publish-rate",
        "1000000",
        "--publish-burst",
        "1000000",
    ];
    args.extend_from_slice(extra);
    let p = Pantau::start(&data, &args).await?;
    let mut creds = Vec::new();
    for g in 0..clients {
        let c = gateway_add(&data, &format!("gw-f{g}"))?;
        creds.push((c.gateway, c.password));
    }
    Ok((p, creds))
}

async fn bench_fanin() -> Result<()> {
    let clients = 20;
    let rounds = 3;
    let duration = Duration::from_secs(5);
    let dir = tempfile::tempdir()?;
    let (p, creds) = fanin_pantau(dir.path(), clients, false, &[]).await?;
    let data = p.data_dir.clone();
    let tls = pantau_edge_agent::uplink::client_tls(&data.join("tls").join("ca.pem"))?;
    // Mosquitto over TLS with the same server certificate, in memory.
    let mosq = Mosquitto::start_tls(
        &dir.path().join("mosquitto"),
        &pantau_broker::tls::TlsFiles::in_data_dir(&data),
    )
    .await?;
    let mosq_addr = mosq.addr;
    // Rounds alternate between the two brokers so that the machine's
    // background noise hits both alike; each Pantau round waits until
    // every acknowledged reading is in the store before the next round.
    println!("fanin: {clients} TLS publishers, {FANIN_WINDOW} QoS 1 publishes in flight each, 1 reading per publish, {rounds} alternating rounds of {}s", duration.as_secs());
    let (mut acked_total, mut ratios) = (0u64, Vec::new());
    let day_ago = Timestamp::now().millis() - 86_400_000;
    for round in 1..=rounds {
        // Each round's readings get timestamps of their own (a client sends
        // far fewer than 10 million in a round), so none overwrites another.
        let base = day_ago + round as i64 * 10_000_000;
        let cpu_from = agent::cpu_time(p.pid()).unwrap_or_default();
        let acked = fanin_load(p.mqtt.port(), clients, &creds, tls.clone(), duration, base).await?;
        acked_total += acked;
        let drained_from = Instant::now();
        let stored = eventually(
            Duration::from_secs(120),
            "acknowledged readings stored",
            || {
                let data = data.clone();
                async move {
                    let n = stored_count(&data).ok()?;
                    (n as u64 >= acked_total).then_some(n)
                }
            },
        )
        .await?;
        let drained_after = drained_from.elapsed();
        // CPU per acknowledgement, including the drain into the store.
        let pantau_cpu = agent::cpu_time(p.pid()).unwrap_or_default() - cpu_from;
        let cpu_from = agent::cpu_time(mosq.pid()).unwrap_or_default();
        let mosq_acked = fanin_load(
            mosq_addr.port(),
            clients,
            &creds,
            tls.clone(),
            duration,
            base,
        )
        .await?;
        let (pantau_rate, mosq_rate) = (
            acked as f64 / duration.as_secs_f64(),
            mosq_acked as f64 / duration.as_secs_f64(),
        );
        let mosq_cpu = agent::cpu_time(mosq.pid()).unwrap_or_default() - cpu_from;
        let per_k = |cpu: Duration, n: u64| cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
        ratios.push(pantau_rate / mosq_rate);
        println!("  round {round}: Pantau (PUBACK after the durable ingest-log commit) {pantau_rate:>8.0} acks/s, Mosquitto 2.0 in memory {mosq_rate:>8.0} acks/s, ratio {:.2}", pantau_rate / mosq_rate);
        println!("    {acked_total} acknowledged so far, {stored} in the store {:.1} s after the load stopped; CPU per 1 000 acks: Pantau {:.1} ms (with the drain into the store), Mosquitto {:.1} ms", drained_after.as_secs_f64(), per_k(pantau_cpu, acked), per_k(mosq_cpu, mosq_acked));
    }
    drop((p, mosq));
    ratios.sort_by(f64::total_cmp);
    println!(
        "  ratio (median of {rounds} rounds): {:.2}",
        ratios[rounds / 2]
    );
    Ok(())
}

/// Fan-in while anonymous clients hold the HTTP side: alternating rounds
/// on one Pantau, quiet ones and ones with 2 000 idle HTTP connections
/// (from two loopback addresses, under the per-address cap) and 500 public
/// SSE streams open (each receiving its coalesced share of the readings);
/// the ratio of each loaded round to the mean of the quiet rounds either
/// side of it.
async fn bench_fanin_loaded() -> Result<()> {
    // PANTAU_BENCH_IDLE / PANTAU_BENCH_STREAMS size each half of the load
    // (to tell which one costs); PANTAU_BENCH_ROUNDS the number of loaded rounds.
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (idle_n, streams_n) = (
        env("PANTAU_BENCH_IDLE", 2_000),
        env("PANTAU_BENCH_STREAMS", 500),
    );
    rlimit::increase_nofile_limit(16_384)?;
    let clients = 20;
    let rounds = env("PANTAU_BENCH_ROUNDS", 3);
    anyhow::ensure!(
        (1..=20).contains(&rounds),
        "PANTAU_BENCH_ROUNDS: 1 to 20 loaded rounds"
    );
    let duration = Duration::from_secs(5);
    let dir = tempfile::tempdir()?;
    let (p, creds) = fanin_pantau(
        dir.path(),
        clients,
        true,
        &["--public-rate-per-s", "100000", "--public-burst", "100000"],
    )
    .await?;
    let tls = pantau_edge_agent::uplink::client_tls(&p.data_dir.join("tls").join("ca.pem"))?;
    println!("fanin-loaded: {clients} TLS publishers, {FANIN_WINDOW} in flight each; {rounds} rounds of {}s with {idle_n} idle HTTP connections and {streams_n} SSE streams, each between two quiet ones", duration.as_secs());
    let day_ago = Timestamp::now().millis() - 86_400_000;
    // Quiet and loaded rounds alternate, starting and ending quiet; each
    // loaded round is compared with the mean of the quiet rounds either
    // side of it, which cancels the drift of a growing store.
    let cpu = || agent::cpu_time(p.pid()).unwrap_or_default();
    // A client sends far fewer than 2 million readings in a round: each
    // round's timestamps are its own, all in the past day.
    let quiet_round = |round: usize| {
        let (tls, creds) = (tls.clone(), &creds);
        async move {
            let cpu_from = cpu();
            let base = day_ago + round as i64 * 4_000_000;
            let acks = fanin_load(p.mqtt.port(), clients, creds, tls, duration, base).await?;
            anyhow::Ok((acks, cpu() - cpu_from))
        }
    };
    let per_s = |acks: u64| acks as f64 / duration.as_secs_f64();
    let ms_per_1000 = |cpu: Duration, acks: u64| cpu.as_secs_f64() * 1e6 / acks.max(1) as f64;
    let mut quiet = quiet_round(0).await?;
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let base = day_ago + round as i64 * 4_000_000;
        // The load: idle sockets that never send a byte, and live streams.
        let mut idle = Vec::with_capacity(idle_n);
        for i in 0..idle_n {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(format!("127.0.0.{}:0", 2 + i % 2).parse()?)?;
            idle.push(socket.connect(p.http).await?);
        }
        // Live streams read by plain sockets that take the bytes and count
        // the events (a phone's cost, not a client library's, on the one
        // machine the load generator shares).
        let mut streams = Vec::with_capacity(streams_n);
        let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for _ in 0..streams_n {
            let delivered = delivered.clone();
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind("127.0.0.4:0".parse()?)?;
            let mut tcp = socket.connect(p.http).await?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tcp.write_all(b"GET /api/v1/public/live HTTP/1.1\r\nHost: pantau\r\n\r\n")
                .await?;
            let mut head = [0u8; 12];
            tcp.read_exact(&mut head).await?;
            anyhow::ensure!(
                head.ends_with(b"200"),
                "SSE stream refused: {}",
                String::from_utf8_lossy(&head)
            );
            streams.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let events = buf[..n].windows(6).filter(|w| w == b"event:").count();
                    delivered.fetch_add(events as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        let events_from = delivered.load(std::sync::atomic::Ordering::Relaxed);
        let cpu_from = cpu();
        let loaded = fanin_load(
            p.mqtt.port(),
            clients,
            &creds,
            tls.clone(),
            duration,
            base + 2_000_000,
        )
        .await?;
        let events = delivered.load(std::sync::atomic::Ordering::Relaxed) - events_from;
        let loaded_cpu = cpu() - cpu_from;
        let m = p.metrics().await?;
        let open = metric(&m, "pantau_api_live_streams").unwrap_or(-1.0);
        drop(idle);
        for s in &streams {
            s.abort();
        }
        let after = quiet_round(round).await?;
        let ratio = 2.0 * loaded as f64 / (quiet.0 + after.0).max(1) as f64;
        ratios.push(ratio);
        println!(
            "  round {round}: quiet {:>6.0} k acks/s ({:.1} ms Pantau CPU per 1 000), loaded {:>6.0} k ({:.1} ms), quiet {:>6.0} k ({:.1} ms): ratio {ratio:.2}; the {open} streams open received {:.0} events/s",
            per_s(quiet.0) / 1e3,
            ms_per_1000(quiet.1, quiet.0),
            per_s(loaded) / 1e3,
            ms_per_1000(loaded_cpu, loaded),
            per_s(after.0) / 1e3,
            ms_per_1000(after.1, after.0),
            events as f64 / duration.as_secs_f64()
        );
        quiet = after;
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  ratio loaded / quiet (median of {rounds} loaded rounds): {:.2}",
        ratios[rounds / 2]
    );
    Ok(())
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 600 s) with a login.
fn connect_packet(id: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend_from_slice(&(x.len() as u16).to_be_bytes());
        b.extend_from_slice(x.as_bytes());
    };
    s(&mut body, "MQTT");
    body.extend_from_slice(&[4, 0b1100_0010, 0x02, 0x58]);
    s(&mut body, id);
    s(&mut body, id);
    s(&mut body, password);
    let mut out = vec![0x10];
    remaining_length(&mut out, body.len());
    out.extend(body);
    out
}

async fn bench_connections(n: usize) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let ids: Vec<pantau_model::GatewayId> = (0..n)
        .map(|i| pantau_model::GatewayId::new(format!("gw-c{i}")).expect("valid id"))
        .collect();
    let tokens = pantau_state::StateDb::open(&data)?.add_gateways(&ids)?;
    let p = Pantau::start(
        &data,
        &[
            "--max-connections",
            "20000",
            "--max-connections-per-ip",
            "20000",
        ],
    )
    .await?;
    let idle_rss = rss_kib(p.pid()).unwrap_or(0);
    let tls = pantau_edge_agent::uplink::client_tls(&data.join("tls").join("ca.pem"))?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for (id, token) in ids.iter().zip(tokens) {
        let (connector, sem, addr, id) = (connector.clone(), sem.clone(), p.mqtt, id.to_string());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await?;
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(&connect_packet(&id, &token)).await?;
            let mut ack = [0u8; 4];
            tls.read_exact(&mut ack).await?;
            if ack != [0x20, 0x02, 0x00, 0x00] {
                bail!("{id}: CONNACK {ack:?}");
            }
            drop(permit);
            Ok::<_, anyhow::Error>(tls)
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    let took = started.elapsed();
    let m = p.metrics().await?;
    let connected = pantau_tests::metric(&m, "pantau_broker_connections").unwrap_or(0.0);
    let rss = rss_kib(p.pid()).unwrap_or(0);
    println!(
        "connections: {n} concurrent idle TLS gateways (token auth), 256 handshakes at a time"
    );
    println!(
        "  all connected in {:.1} s ({:.0} connections/s); broker reports {connected} connected",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    println!(
        "  server RSS: {:.1} MiB with them, {:.1} MiB idle before ({:.1} KiB per connection)",
        rss as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        (rss.saturating_sub(idle_rss)) as f64 / n as f64
    );
    drop(conns);
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
        "alerts-ingest" => {
            let rounds = std::env::var("PANTAU_BENCH_ROUNDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3usize)
                .clamp(1, 9);
            alerts::bench_alerts_ingest(
                Load {
                    readings: readings / 5,
                    ..load
                },
                rounds,
            )
            .await
        }
        "alerts-webhook" => alerts::bench_alerts_webhook().await,
        "scale-ingest" => {
            scale::bench_scale_ingest(Load {
                readings: readings / 5,
                ..load
            })
            .await
        }
        "scale-api" => scale::bench_scale_api().await,
        "recovery" => recovery::bench_recovery(readings).await,
        "fanin" => bench_fanin().await,
        "fanin-loaded" => bench_fanin_loaded().await,
        "connections" => bench_connections(10_000).await,
        "api" => {
            api::bench_conditions().await?;
            api::bench_live_latency().await
        }
        "web" => {
            web::bench_web_load().await?;
            web::bench_web_live().await
        }
        "web-load" => web::bench_web_load().await,
        "web-live" => web::bench_web_live().await,
        "agent" => {
            agent::bench_agent_steady().await?;
            agent::bench_agent_replay(1_000_000).await
        }
        "all" => {
            // InfluxDB first: the embedded run leaves gigabytes of dirty
            // pages whose writeback slows the fsyncs of whatever runs next.
            bench_history().await?;
            bench_influx(Load {
                readings: readings / 5,
                ..load
            })
            .await?;
            bench_embedded(load).await?;
            bench_fanin().await?;
            bench_fanin_loaded().await?;
            agent::bench_agent_steady().await?;
            agent::bench_agent_replay(1_000_000).await?;
            api::bench_conditions().await?;
            api::bench_live_latency().await?;
            alerts::bench_alerts_ingest(
                Load {
                    readings: readings / 5,
                    ..load
                },
                3,
            )
            .await?;
            alerts::bench_alerts_webhook().await?;
            web::bench_web_load().await?;
            web::bench_web_live().await?;
            bench_connections(10_000).await
        }
        other => bail!(
            "unknown benchmark {other:?}: history, influx, embedded, fanin, fanin-loaded, agent, api, alerts-ingest, alerts-webhook, scale-ingest, scale-api, recovery, web, web-load, web-live, connections or all"
        ),
    }
    .context(what)
}
