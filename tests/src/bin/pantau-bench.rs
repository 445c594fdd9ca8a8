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

/// Publishers for `duration`: each of `clients` connections keeps 100
/// QoS 1 publishes in flight; returns PUBACKs per second.
async fn fanin_load(
    port: u16,
    clients: usize,
    creds: &[(String, String)],
    tls: Arc<rustls::ClientConfig>,
    duration: Duration,
) -> Result<f64> {
    let mut tasks = Vec::new();
    let stop = Instant::now() + duration;
    for (g, (id, token)) in creds.iter().enumerate().take(clients) {
        let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
        opts.set_credentials(id.clone(), token.clone());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        let (client, mut eventloop) = AsyncClient::new(opts, 200);
        let topic = format!("pantau/v1/gw/{id}/telemetry");
        let sensor = format!("fl-f{g}");
        let gw = id.clone();
        tasks.push(tokio::spawn(async move {
            let base = Timestamp::now().millis() - 86_400_000;
            let publisher = tokio::spawn(async move {
                let mut i: i64 = 0;
                while Instant::now() < stop {
                    let payload = format!(
                        r#"{{"v":1,"gw":"{gw}","seq":{i},"readings":[{{"sensor":"{sensor}","ts":"{}","values":{{"water_level_cm":{}}}}}]}}"#,
                        Timestamp(base + i).to_rfc3339(),
                        i % 100
                    );
                    if client.publish(topic.clone(), QoS::AtLeastOnce, false, payload).await.is_err() {
                        break;
                    }
                    i += 1;
                }
            });
            let mut acked = 0u64;
            let counting_from = Instant::now();
            loop {
                tokio::select! {
                    ev = eventloop.poll() => match ev {
                        Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                        Ok(_) => {}
                        Err(e) => bail!("client {g}: {e}"),
                    },
                    _ = tokio::time::sleep_until(stop.into()) => break,
                }
            }
            publisher.abort();
            Ok((acked, counting_from))
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await??.0;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

async fn bench_fanin() -> Result<()> {
    let clients = 20;
    let duration = Duration::from_secs(10);
    let dir = tempfile::tempdir()?;
    let load = Load {
        gateways: clients,
        sensors_per_gateway: 1,
        readings: 0,
        per_envelope: 1,
    };
    // Pantau: sensors fl-f{g} on gw-f{g}.
    let reg = dir.path().join("registry.toml");
    let mut registry = String::new();
    for g in 0..clients {
        registry.push_str(&format!(
            "[[sensor]]\nid = \"fl-f{g}\"\nkind = \"flood_gauge\"\ngateway = \"gw-f{g}\"\nname = \"F{g}\"\nlat = 1.0\nlon = 101.0\n\n"
        ));
    }
    std::fs::write(&reg, registry)?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let p = Pantau::start(
        &data,
        &[
            "--registry",
            reg.to_str().unwrap(),
            "--publish-rate",
            "1000000",
            "--publish-burst",
            "1000000",
        ],
    )
    .await?;
    let mut creds = Vec::new();
    let mut ca = std::path::PathBuf::new();
    for g in 0..load.gateways {
        let c = gateway_add(&data, &format!("gw-f{g}"))?;
        creds.push((c.gateway, c.password));
        ca = c.ca_file;
    }
    let tls = pantau_edge_agent::uplink::client_tls(&ca)?;
    let pantau_rate = fanin_load(p.mqtt.port(), clients, &creds, tls.clone(), duration).await?;
    drop(p);
    // Mosquitto over TLS with the same server certificate, in memory.
    let tls_dir = data.join("tls");
    let mosq_addr = pantau_tests::free_addr();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {} 127.0.0.1\nallow_anonymous true\npersistence false\ncafile {}\ncertfile {}\nkeyfile {}\nmax_inflight_messages 100\nmax_queued_messages 0\n",
            mosq_addr.port(),
            tls_dir.join("ca.pem").display(),
            tls_dir.join("server.pem").display(),
            tls_dir.join("server-key.pem").display()
        ),
    )?;
    let mut mosq =
        std::process::Command::new(if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        })
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start mosquitto")?;
    eventually(Duration::from_secs(10), "mosquitto", || async move {
        tokio::net::TcpStream::connect(mosq_addr)
            .await
            .ok()
            .map(drop)
    })
    .await?;
    let mosq_rate = fanin_load(mosq_addr.port(), clients, &creds, tls, duration).await;
    let _ = mosq.kill();
    let _ = mosq.wait();
    let mosq_rate = mosq_rate?;
    println!("fanin: {clients} TLS publishers, 100 QoS 1 publishes in flight each, 1 reading per publish, {}s", duration.as_secs());
    println!("  Pantau (PUBACK after the durable ingest-log commit): {pantau_rate:>10.0} acks/s");
    println!("  baseline, Mosquitto 2.0 in memory, same TLS:         {mosq_rate:>10.0} acks/s");
    println!("  ratio: {:.2}", pantau_rate / mosq_rate);
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
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend(body);
    out
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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
        "fanin" => bench_fanin().await,
        "connections" => bench_connections(10_000).await,
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
            bench_connections(10_000).await
        }
        other => bail!("unknown benchmark {other:?}: embedded, influx, history or all"),
    }
    .context(what)
}
