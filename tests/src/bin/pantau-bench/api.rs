//! API benchmarks: `/api/v1/public/conditions` under Debian's `wrk`
//! against `/healthz` on the same server in the same run; and publish →
//! SSE event latency at 5 000 readings/s against Mosquitto's publish →
//! subscribe latency for the same envelopes at the same rate.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pantau_tests::services::Mosquitto;
use pantau_tests::{eventually, Pantau};

use crate::{start_platform, Load};

/// One wrk run: (requests/s, p99 latency).
pub(crate) fn wrk(url: &str, secs: u32) -> Result<(f64, Duration)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .and_then(parse_wrk_duration)
        .with_context(|| format!("wrk output: {text}"))?;
    if text.contains("Non-2xx") {
        bail!("wrk saw errors: {text}");
    }
    Ok((rps, p99))
}

fn parse_wrk_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(Duration::from_secs_f64(match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    }))
}

/// `/api/v1/public/conditions` throughput and p99 under wrk.
pub(crate) async fn bench_conditions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let p = Pantau::start(
        &data,
        &[
            "--demo",
            "--public-rate-per-s",
            "100000000",
            "--public-burst",
            "100000000",
        ],
    )
    .await?;
    eventually(Duration::from_secs(30), "demo conditions", || async {
        let v = p.get_json("/api/v1/public/conditions").await.ok()?;
        v.as_array()?
            .iter()
            .all(|c| !c["latest"].is_null())
            .then_some(())
    })
    .await?;
    let (rps, p99) = wrk(&p.url("/api/v1/public/conditions"), 10)?;
    let (base_rps, base_p99) = wrk(&p.url("/healthz"), 10)?;
    println!("api: wrk -t2 -c64 -d10s on the demo (18 public sensors), same server");
    println!(
        "  /api/v1/public/conditions: {rps:.0} req/s, p99 {:.1} ms",
        p99.as_secs_f64() * 1e3
    );
    println!(
        "  baseline /healthz: {base_rps:.0} req/s, p99 {:.1} ms (ratio {:.2})",
        base_p99.as_secs_f64() * 1e3,
        rps / base_rps
    );
    Ok(())
}

/// Envelopes of one reading per sensor, every 10 ms for `secs`: sends them
/// at QoS 1 to `port` as `gw`, noting when each step was handed to the
/// client (the step is the value of every reading in it).
async fn paced_publisher(
    port: u16,
    gw: &str,
    token: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    sensors: usize,
    secs: u64,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Option<std::time::Instant>>>>,
) -> Result<()> {
    use pantau_model::envelope::encode;
    use pantau_model::{Reading, Timestamp, Value};
    use rumqttc::{AsyncClient, MqttOptions, QoS, TlsConfiguration, Transport};
    let mut opts = MqttOptions::new(gw, "127.0.0.1", port);
    opts.set_credentials(gw, token);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(100);
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let topic = format!("pantau/v1/gw/{gw}/telemetry");
    let base = Timestamp::now().millis() - 3_600_000;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let steps = secs * 100;
    for step in 0..steps {
        tick.tick().await;
        let readings: Vec<Reading> = (0..sensors)
            .map(|s| Reading {
                sensor: format!("fl-b0-{s}"),
                ts: Timestamp(base + step as i64 * 10),
                values: [("water_level_cm".to_string(), Value::Num(step as f64))].into(),
            })
            .collect();
        sent.lock().unwrap()[step as usize] = Some(std::time::Instant::now());
        client
            .publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                encode(gw, step, Timestamp::now(), &readings),
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    driver.abort();
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Publish → live event latency at 5 000 readings/s: Pantau's agency SSE
/// feed against Mosquitto's publish → subscribe for the same envelopes.
pub(crate) async fn bench_live_latency() -> Result<()> {
    use futures::StreamExt;
    use std::sync::{Arc, Mutex};
    let (sensors, secs) = (50usize, 10u64);
    let load = Load {
        gateways: 1,
        sensors_per_gateway: sensors,
        readings: 0,
        per_envelope: sensors,
    };
    let dir = tempfile::tempdir()?;
    let (p, tokens, ca) =
        start_platform(dir.path(), &load, &["--live-max-per-s", "1000000"]).await?;
    let admin = pantau_tests::token_create(&p.data_dir, "bench", "admin")?;
    let admin = admin["token"].as_str().context("token")?.to_owned();
    let tls = pantau_edge_agent::uplink::client_tls(&ca)?;
    // Pantau: one agency SSE client, every reading's arrival timed.
    let sent: Arc<Mutex<Vec<Option<std::time::Instant>>>> =
        Arc::new(Mutex::new(vec![None; (secs * 100) as usize]));
    let resp = reqwest::Client::new()
        .get(p.url("/api/v1/live"))
        .bearer_auth(&admin)
        .send()
        .await?
        .error_for_status()?;
    let (sent_r, expected) = (sent.clone(), secs as usize * 100 * sensors);
    let reader = tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let (mut buf, mut lat) = (String::new(), Vec::with_capacity(expected));
        let end = tokio::time::Instant::now() + Duration::from_secs(secs + 10);
        while lat.len() < expected {
            let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(end, body.next()).await else {
                break;
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find("\n\n") {
                let frame: String = buf.drain(..i + 2).collect();
                let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                if let Some(step) = v["values"]["water_level_cm"].as_f64() {
                    if let Some(Some(at)) = sent_r.lock().unwrap().get(step as usize) {
                        lat.push(at.elapsed());
                    }
                }
            }
        }
        lat
    });
    paced_publisher(
        p.mqtt.port(),
        "gw-b0",
        &tokens[0],
        tls.clone(),
        sensors,
        secs,
        sent.clone(),
    )
    .await?;
    let mut pantau = reader.await?;
    drop(p);
    // Baseline: Mosquitto, same TLS, same publisher; a subscriber times
    // each envelope (one message carries the 50 readings).
    let mosq = Mosquitto::start_tls(
        &dir.path().join("mosquitto"),
        &pantau_broker::tls::TlsFiles::in_data_dir(&dir.path().join("data")),
    )
    .await?;
    let sent2: Arc<Mutex<Vec<Option<std::time::Instant>>>> =
        Arc::new(Mutex::new(vec![None; (secs * 100) as usize]));
    let mut opts = rumqttc::MqttOptions::new("bench-sub", "127.0.0.1", mosq.addr.port());
    opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        tls.clone(),
    )));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (sub, mut sub_loop) = rumqttc::AsyncClient::new(opts, 100);
    sub.subscribe("pantau/v1/gw/+/telemetry", rumqttc::QoS::AtLeastOnce)
        .await?;
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = sub_loop.poll().await? {
            break;
        }
    }
    let sent_r = sent2.clone();
    let envelopes = secs as usize * 100;
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(envelopes);
        let end = tokio::time::Instant::now() + Duration::from_secs(secs + 10);
        while lat.len() < envelopes {
            let Ok(Ok(ev)) = tokio::time::timeout_at(end, sub_loop.poll()).await else {
                break;
            };
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(m)) = ev {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) else {
                    continue;
                };
                if let Some(Some(at)) = v["seq"]
                    .as_u64()
                    .and_then(|s| sent_r.lock().unwrap().get(s as usize).copied())
                {
                    lat.push(at.elapsed());
                }
            }
        }
        lat
    });
    paced_publisher(
        mosq.addr.port(),
        "gw-b0",
        "unused",
        tls,
        sensors,
        secs,
        sent2,
    )
    .await?;
    let mut mosquitto = reader.await?;
    if pantau.len() < expected / 2 || mosquitto.is_empty() {
        bail!(
            "too few events: Pantau {}, Mosquitto {}",
            pantau.len(),
            mosquitto.len()
        );
    }
    pantau.sort();
    mosquitto.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("live latency: {sensors} readings per envelope every 10 ms (5 000 readings/s) for {secs} s, TLS");
    println!(
        "  Pantau publish → agency SSE event: {} of {expected} events, p50 {:.1} ms, p99 {:.1} ms",
        pantau.len(),
        ms(percentile(&pantau, 0.5)),
        ms(percentile(&pantau, 0.99))
    );
    println!(
        "  baseline, Mosquitto publish → subscribe: {} envelopes, p50 {:.1} ms, p99 {:.1} ms (p99 ratio {:.2})",
        mosquitto.len(),
        ms(percentile(&mosquitto, 0.5)),
        ms(percentile(&mosquitto, 0.99)),
        percentile(&pantau, 0.99).as_secs_f64() / percentile(&mosquitto, 0.99).as_secs_f64()
    );
    Ok(())
}
