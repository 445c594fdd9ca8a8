//! Alerting benchmarks.
//!
//! - `alerts-ingest`: end-to-end embedded ingest (TLS publish → stored, and
//!   every reading evaluated) with the Siaga rule on every gauge plus 1 000
//!   threshold rules, against the same run with `--no-alerts`; rounds
//!   alternate off/on and the ratio is the median of on / off.
//! - `alerts-webhook`: reading published → signed webhook received by a
//!   real HTTP receiver, while 5 000 readings/s flow; baseline: publish →
//!   PUBACK of the same envelopes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pantau_model::envelope::encode;
use pantau_model::{Reading, Timestamp, Value};
use pantau_tests::webhook::Receiver;
use pantau_tests::{eventually, metric, token_create, Pantau};
use rumqttc::{Event, Packet, QoS};

use crate::{publish_all, Load};

/// The bench's water levels run 0–249 cm; `storm` puts every gauge's
/// Siaga thresholds and its threshold rule inside that range (a fifth of
/// the readings change an alert), `calm` near its top (about one in a
/// hundred).
fn registry_with_thresholds(load: &Load, storm: bool) -> String {
    let t = if storm {
        "thresholds = { siaga3 = 230, siaga2 = 240, siaga1 = 245 }"
    } else {
        "thresholds = { siaga3 = 248, siaga2 = 248.5, siaga1 = 249 }"
    };
    crate::registry(load).replace("lon = 101.0\n", &format!("lon = 101.0\n{t}\n"))
}

/// `[alerts]` with `n` threshold rules, one per sensor (round-robin).
fn rules_config(load: &Load, n: usize, storm: bool) -> String {
    let mut out = String::from(
        "[alerts]\nsensor_silent_after = \"15m\"\ngateway_offline_after = \"10m\"\n\n",
    );
    let sensors = load.gateways * load.sensors_per_gateway;
    for i in 0..n {
        let (g, s) = (
            (i % sensors) / load.sensors_per_gateway,
            i % load.sensors_per_gateway,
        );
        out.push_str(&format!(
            "[[alerts.rule]]\nid = \"bench-{i}\"\nkind = \"flood_gauge\"\nsensors = [\"fl-b{g}-{s}\"]\nfield = \"water_level_cm\"\nabove = [{}]\ndeadband = 2\n\n",
            if storm { 200.0 + (i % 50) as f64 } else { 248.0 + (i % 4) as f64 / 4.0 }
        ));
    }
    out
}

async fn one_round(load: &Load, alerts: bool, storm: bool, round: usize) -> Result<(f64, u64)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, registry_with_thresholds(load, storm))?;
    let cfg = dir.path().join("pantau.toml");
    std::fs::write(&cfg, rules_config(load, 1_000, storm))?;
    let mut args = vec![
        "--registry",
        reg.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    if !alerts {
        args.push("--no-alerts");
    }
    let p = Pantau::start(&data, &args).await?;
    let (tokens, ca) = crate::add_gateways(&data, load.gateways)?;
    let n = (load.readings / load.gateways) * load.gateways;
    // Recent observation times (round after round), so the readings are
    // live, not late.
    let base = Timestamp::now().millis()
        - (n / (load.gateways * load.sensors_per_gateway)) as i64 * 1000
        - 60_000
        - round as i64;
    let t = Instant::now();
    publish_all(p.mqtt, load, base, &tokens, &ca).await?;
    eventually(
        Duration::from_secs(900),
        "every reading stored and evaluated",
        || async {
            let m = p.metrics().await.ok()?;
            let stored = metric(&m, "pantau_ingest_log_delivered_total")? >= n as f64;
            let evaluated =
                !alerts || metric(&m, "pantau_alerts_readings_evaluated_total")? >= n as f64;
            (stored && evaluated).then_some(())
        },
    )
    .await?;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let m = p.metrics().await?;
    let changes = if alerts {
        rusqlite::Connection::open(data.join("state.db"))?.query_row(
            "SELECT count(*) FROM alert_events",
            [],
            |r| r.get::<_, i64>(0),
        )? as f64
    } else {
        0.0
    };
    if alerts {
        let get = |name: &str| metric(&m, name).unwrap_or(0.0);
        let (sum, count) = (
            get("pantau_alerts_evaluation_seconds_sum"),
            get("pantau_alerts_evaluation_seconds_count"),
        );
        println!(
            "    evaluation: {count} batches, {:.1} ms each on average, {:.1} s in all",
            sum / count.max(1.0) * 1e3,
            sum
        );
    }
    Ok((rate, changes as u64))
}

/// `alerts-ingest`.
pub(crate) async fn bench_alerts_ingest(load: Load, rounds: usize) -> Result<()> {
    println!(
        "alerts-ingest: {} readings per round, {} gauges with Siaga thresholds, 1 000 threshold rules",
        load.readings,
        load.gateways * load.sensors_per_gateway
    );
    for storm in [false, true] {
        let mut ratios = Vec::new();
        let name = if storm { "storm" } else { "calm" };
        for round in 0..rounds {
            let (off, _) = one_round(&load, false, storm, round).await?;
            let (on, changes) = one_round(&load, true, storm, round).await?;
            println!(
                "  {name} round {round}: alerting off {off:>8.0} readings/s, on {on:>8.0} readings/s ({changes} alert changes), ratio {:.2}",
                on / off
            );
            ratios.push(on / off);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "  {name}: ratio on / off (median of {rounds}): {:.2}",
            ratios[ratios.len() / 2]
        );
    }
    Ok(())
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `alerts-webhook`.
pub(crate) async fn bench_alerts_webhook() -> Result<()> {
    let load = Load {
        gateways: 10,
        sensors_per_gateway: 50,
        readings: 0,
        per_envelope: 100,
    };
    let rate: usize = 5_000;
    let seconds: usize = std::env::var("PANTAU_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, registry_with_thresholds(&load, true))?;
    let admin = token_create(&data, "bench", "admin")?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let p = Pantau::start(&data, &["--registry", reg.to_str().unwrap()]).await?;
    let receiver = Receiver::start().await?;
    let r = p
        .client()?
        .post(p.url("/api/v1/admin/webhooks"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"id": "bench", "url": receiver.url()}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("webhook: {}", r.text().await?);
    }
    let tls = pantau_edge_agent::uplink::client_tls(&data.join("tls").join("ca.pem"))?;
    // Each gateway sends 5000/10 readings/s in envelopes of 100: 5 per
    // second. Sensor 0 of each gateway alternates above Siaga 1 and
    // normal every envelope: each of its readings is an alert change.
    let per_gw_envelopes = rate / load.gateways / load.per_envelope;
    let sent: std::sync::Arc<std::sync::Mutex<HashMap<(String, i64), Instant>>> =
        Default::default();
    let mut acks: Vec<Duration> = Vec::new();
    let mut tasks = Vec::new();
    let start = Timestamp::now().millis() / 1000 * 1000 - (seconds as i64 + 5) * 1000;
    // Every credential first: `pantau gateway add` is a process of its own.
    let (tokens, _) = crate::add_gateways(&data, load.gateways)?;
    for (g, token) in tokens.into_iter().enumerate() {
        let (client, mut eventloop) = crate::bench_gateway(p.mqtt, g, &token, &tls);
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let topic = format!("pantau/v1/gw/gw-b{g}/telemetry");
            let total = per_gw_envelopes * seconds;
            let mut published: Vec<Instant> = Vec::with_capacity(total);
            let mut ack_times = Vec::with_capacity(total);
            let period = Duration::from_secs(1) / per_gw_envelopes as u32;
            let t0 = tokio::time::Instant::now();
            let mut next = 0usize;
            let mut acked = 0usize;
            let mut errors = 0;
            while acked < total {
                let due = t0 + period * next as u32;
                tokio::select! {
                    _ = tokio::time::sleep_until(due), if next < total => {
                        let ts = Timestamp(start + next as i64 * 1000 / per_gw_envelopes as i64);
                        let mut readings: Vec<Reading> = (0..load.per_envelope)
                            .map(|i| Reading {
                                sensor: format!("fl-b{g}-{}", 1 + i % (load.sensors_per_gateway - 1)),
                                ts: Timestamp(ts.millis() + i as i64),
                                values: [("water_level_cm".to_string(), Value::Num(50.0))].into(),
                            })
                            .collect();
                        let cm = if next % 2 == 0 { 260.0 } else { 50.0 };
                        readings[0] = Reading {
                            sensor: format!("fl-b{g}-0"),
                            ts,
                            values: [("water_level_cm".to_string(), Value::Num(cm))].into(),
                        };
                        let body = encode(&format!("gw-b{g}"), next as u64, Timestamp::now(), &readings);
                        let now = Instant::now();
                        sent.lock().unwrap().insert((format!("fl-b{g}-0"), ts.millis()), now);
                        published.push(now);
                        if client.publish(topic.clone(), QoS::AtLeastOnce, false, body).await.is_err() {
                            bail!("gateway {g}: publish failed");
                        }
                        next += 1;
                    }
                    ev = eventloop.poll() => match ev {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            ack_times.push(published[acked].elapsed());
                            acked += 1;
                        }
                        Ok(_) => {}
                        // rumqttc reconnects on the next poll and sends
                        // again what was not acknowledged.
                        Err(e) if errors < 3 => {
                            errors += 1;
                            eprintln!("gateway {g}: {e}; reconnecting");
                        }
                        Err(e) => bail!("gateway {g}: {e}"),
                    }
                }
            }
            Ok(ack_times)
        }));
    }
    for t in tasks {
        acks.extend(t.await??);
    }
    let expected = load.gateways * per_gw_envelopes * seconds;
    let got = match eventually(Duration::from_secs(120), "every alert webhook", || async {
        let d = receiver.deliveries();
        (d.len() >= expected).then_some(d)
    })
    .await
    {
        Ok(d) => d,
        Err(e) => {
            let m = p.metrics().await.unwrap_or_default();
            let alerts: Vec<&str> = m
                .lines()
                .filter(|l| l.starts_with("pantau_alerts"))
                .collect();
            bail!(
                "{e}: {} of {expected} webhooks arrived\n{}",
                receiver.deliveries().len(),
                alerts.join("\n")
            );
        }
    };
    let sent = sent.lock().unwrap().clone();
    let mut lat: Vec<Duration> = got
        .iter()
        .filter_map(|d| {
            let j = d.json();
            let sensor = j["data"]["sensor"].as_str()?.to_owned();
            let at = Timestamp::parse_rfc3339(j["data"]["observed_at"].as_str()?)?;
            let t = sent.get(&(sensor, at.millis()))?;
            Some(d.at.duration_since(*t))
        })
        .collect();
    if lat.len() < expected / 2 {
        bail!(
            "only {} of {} webhooks matched a published reading",
            lat.len(),
            got.len()
        );
    }
    lat.sort();
    acks.sort();
    let m = p.metrics().await?;
    let stale = metric(&m, "pantau_alerts_readings_stale_total").unwrap_or(0.0);
    println!(
        "alerts-webhook: {rate} readings/s for {seconds} s, {} alert changes → {} webhooks ({stale} readings evaluated out of order)",
        expected,
        got.len()
    );
    println!(
        "  publish → webhook received: p50 {:>7.1} ms, p99 {:>7.1} ms, max {:>7.1} ms",
        quantile(&lat, 0.5).as_secs_f64() * 1e3,
        quantile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  baseline publish → PUBACK:  p50 {:>7.1} ms, p99 {:>7.1} ms",
        quantile(&acks, 0.5).as_secs_f64() * 1e3,
        quantile(&acks, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
