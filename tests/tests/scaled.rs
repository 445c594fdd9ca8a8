//! The scaled topology on real parts (DESIGN.md §9): Mosquitto, PostgreSQL
//! 15 and InfluxDB from Debian, two `pantau ingest` workers sharing the
//! telemetry subscription and two `pantau api` replicas behind HAProxy,
//! fed by `pantau-agent` gateways. 200 000 readings (set
//! `PANTAU_TOPOLOGY_READINGS` for a longer run); one ingest worker and one
//! API replica are killed with SIGKILL mid-run and restarted. Every
//! reading is in InfluxDB once (exactly the expected count per sensor), an
//! SSE client on the surviving replica received every reading, and
//! history and latest answers agree across the replicas. Tokens are
//! shared: created through replica 1, they work on replica 2; revoked
//! through replica 2, both refuse them on the next request.
//!
//! Alerts: a gauge with Siaga thresholds rises, worsens and falls during
//! the run while the replica holding the alert duty is killed; the other
//! takes the duty over, and the run ends with exactly one alert, its three
//! changes (raised, escalated, resolved) and one webhook notification for
//! each.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use pantau_model::Timestamp;
use pantau_tests::services::{Haproxy, Influx, Mosquitto, Postgres};
use pantau_tests::*;
use serde_json::{json, Value};

const AGENTS: usize = 4;
const SENSORS_PER_AGENT: usize = 5;

fn registry() -> String {
    let mut out = String::new();
    for a in 0..AGENTS {
        for s in 0..SENSORS_PER_AGENT {
            out.push_str(&format!(
                "[[sensor]]\nid = \"fl-t{a}-{s}\"\nkind = \"flood_gauge\"\ngateway = \"gw-t{a}\"\nname = \"Topology {a}/{s}\"\ndistrict = \"Dumai Kota\"\nlat = 1.6\nlon = 101.4\npublic = true\n\n"
            ));
        }
    }
    out.push_str(&format!(
        "[[sensor]]\nid = \"{SIAGA}\"\nkind = \"flood_gauge\"\ngateway = \"gw-t0\"\nname = \"Topology Siaga\"\ndistrict = \"Dumai Kota\"\nlat = 1.6\nlon = 101.4\npublic = true\nthresholds = {{ siaga3 = 100, siaga2 = 200, siaga1 = 300 }}\n\n"
    ));
    out
}

/// The gauge of the alert scenario (one reading per round, on gateway 0).
const SIAGA: &str = "fl-siaga";

/// Its water level in `round` of 100: calm, Siaga 3 from round 10, Siaga 2
/// from 45 (after the duty holder's kill at 33), calm again from 70.
fn siaga_level(round: i64) -> f64 {
    match round {
        r if r < 10 => 50.0,
        r if r < 45 => 150.0,
        r if r < 70 => 250.0,
        _ => 50.0,
    }
}

/// The replica holding the alert duty.
fn duty_holder(pg: &Postgres) -> String {
    pg.psql("SELECT holder FROM leases WHERE name = 'alerts'")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

async fn call(
    url: String,
    method: reqwest::Method,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Reads an SSE feed until the stream ends, handing `on` each event's name
/// and data.
async fn sse(url: String, token: String, mut on: impl FnMut(&str, Option<Value>)) {
    let Ok(resp) = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
    else {
        return;
    };
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let Some(event) = frame.lines().find_map(|l| l.strip_prefix("event: ")) else {
                continue;
            };
            let data = frame
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(|d| serde_json::from_str::<Value>(d).ok());
            on(event, data);
        }
    }
}

/// Reads a readings feed into `seen` as (sensor, ts), counting `lagged`.
async fn collect(
    url: String,
    token: String,
    seen: Arc<Mutex<HashSet<(String, String)>>>,
    lagged: Arc<std::sync::atomic::AtomicU64>,
) {
    sse(url, token, |event, data| match (event, data) {
        ("lagged", _) => {
            lagged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ("reading", Some(v)) if v["sensor"] != SIAGA => {
            seen.lock().unwrap().insert((
                v["sensor"].as_str().unwrap_or_default().to_owned(),
                v["ts"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        _ => {}
    })
    .await
}

/// Reads an alert feed into `changes` as (sensor, change).
async fn collect_alerts(url: String, token: String, changes: Arc<Mutex<Vec<(String, String)>>>) {
    sse(url, token, |event, data| {
        if let ("alert", Some(v)) = (event, data) {
            changes.lock().unwrap().push((
                v["alert"]["sensor"].as_str().unwrap_or_default().to_owned(),
                v["event"]["change"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    })
    .await
}

/// Mosquitto, PostgreSQL 15 and InfluxDB started together in `dir` (with
/// the topology's registry): the services, the broker's address and the
/// arguments every worker and replica takes.
async fn services(
    dir: &std::path::Path,
) -> anyhow::Result<(Postgres, Influx, Mosquitto, String, Vec<String>)> {
    let (influx_dir, mosq_dir) = (dir.join("influx"), dir.join("mosquitto"));
    let (pg, influx, mosq) = tokio::join!(
        Postgres::start(),
        Influx::start(&influx_dir, false),
        Mosquitto::start(&mosq_dir),
    );
    let (pg, influx, mosq) = (pg?, influx?, mosq?);
    let broker = format!("mqtt://{}", mosq.addr);
    let reg = dir.join("registry.toml");
    std::fs::write(&reg, registry())?;
    let args = [
        "--registry",
        reg.to_str().unwrap_or_default(),
        "--state",
        &pg.url(),
        "--storage",
        "influxdb",
        "--influx-api",
        "v1",
        "--influx-url",
        &influx.url(),
        "--influx-db",
        "pantau",
    ]
    .map(String::from)
    .to_vec();
    Ok((pg, influx, mosq, broker, args))
}

/// Readings per sensor in InfluxDB.
async fn influx_counts(influx: &Influx) -> anyhow::Result<Vec<(String, u64)>> {
    Ok(influx
        .counts_by_sensor("flood_gauge", "water_level_cm")
        .await?
        .into_iter()
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_topology_loses_nothing_when_a_worker_and_a_replica_die() -> anyhow::Result<()> {
    let readings: usize = std::env::var("PANTAU_TOPOLOGY_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let steps = (readings / (AGENTS * SENSORS_PER_AGENT)) as i64;

    let dir = tempfile::tempdir()?;
    let (pg, influx, _mosq, broker, args) = services(dir.path()).await?;
    let state = pg.url();
    let common: Vec<&str> = args.iter().map(String::as_str).collect();
    let (d1, d2) = (dir.path().join("w1"), dir.path().join("w2"));
    let w1 = IngestWorker::start(&d1, &broker, "w1", &common).await?;
    let w2 = IngestWorker::start(&d2, &broker, "w2", &common).await?;
    let mut replica_args = common.to_vec();
    replica_args.extend([
        "--alert-lease-ttl",
        "2s",
        "--live-max-per-s",
        "1000000",
        "--public-rate-per-s",
        "100000",
        "--public-burst",
        "100000",
    ]);
    let mut r1 =
        ApiReplica::start(&dir.path().join("r1"), &broker, "r1", None, &replica_args).await?;
    // Replica 1, up first, takes the alert duty.
    eventually(
        Duration::from_secs(10),
        "replica 1 on alert duty",
        || async { (duty_holder(&pg) == "r1").then_some(()) },
    )
    .await?;
    let r2 = ApiReplica::start(&dir.path().join("r2"), &broker, "r2", None, &replica_args).await?;
    let lb = Haproxy::start(&dir.path().join("haproxy"), &[r1.http, r2.http]).await?;

    // Tokens are shared through PostgreSQL.
    let admin = token_create_shared(&state, "ops", "admin")?;
    let (status, created) = call(
        r1.url("/api/v1/admin/tokens"),
        reqwest::Method::POST,
        &admin,
        Some(json!({"name": "bpbd", "scopes": ["read:flood"]})),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    let bpbd = created["token"].as_str().unwrap().to_owned();
    let (status, _) = call(r2.url("/api/v1/sensors"), reqwest::Method::GET, &bpbd, None).await?;
    assert_eq!(
        status, 200,
        "a token created through replica 1 fails on replica 2"
    );
    let (status, _) = call(
        r2.url("/api/v1/admin/tokens/bpbd/revoke"),
        reqwest::Method::POST,
        &admin,
        None,
    )
    .await?;
    assert_eq!(status, 200);
    for r in [&r1, &r2] {
        let (status, _) = call(r.url("/api/v1/sensors"), reqwest::Method::GET, &bpbd, None).await?;
        assert_eq!(
            status, 401,
            "a token revoked through replica 2 still works on {}",
            r.http
        );
    }

    // An agency's webhook, subscribed through the replica that is not on
    // duty: the subscription is in the shared state.
    let receiver = pantau_tests::webhook::Receiver::start().await?;
    let (status, v) = call(
        r2.url("/api/v1/admin/webhooks"),
        reqwest::Method::POST,
        &admin,
        Some(json!({"id": "bpbd-ops", "url": receiver.url()})),
    )
    .await?;
    assert_eq!(status, 201, "{v}");

    // An SSE client on the replica that survives.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let lagged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sse = tokio::spawn(collect(
        r2.url("/api/v1/live?complete=true"),
        admin.clone(),
        seen.clone(),
        lagged.clone(),
    ));
    eventually(
        Duration::from_secs(10),
        "the SSE stream to open",
        || async {
            let m = r2.metrics().await.ok()?;
            (metric(&m, "pantau_api_live_streams").unwrap_or(0.0) >= 1.0).then_some(())
        },
    )
    .await?;

    let mut agents = Vec::new();
    let mut w1 = w1;
    let feed_changes: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut alert_feed = None;
    for a in 0..AGENTS {
        let cfg = format!(
            "gateway = \"gw-t{a}\"\n[broker]\nurl = \"{broker}\"\nusername = \"gw-t{a}\"\npassword = \"unused\"\n[batch]\nmax_readings = 100\nmax_delay = \"20ms\"\n[[source]]\ntype = \"stdin\"\n"
        );
        agents.push(Agent::start(dir.path(), &format!("agent-{a}"), &cfg)?);
    }
    // Gateways publish in rounds, each sent once the surviving replica's
    // feed has shown the previous one (field gateways report at their
    // sensors' pace, not a day's backlog at once; the feed keeps 4 096
    // events for a stream that falls behind).
    let base = Timestamp::now().millis() - 2 * 86_400_000;
    let rounds: i64 = 100;
    let per_round = steps / rounds;
    anyhow::ensure!(per_round > 0, "PANTAU_TOPOLOGY_READINGS too small");
    let steps = per_round * rounds;
    let expected = steps as usize * AGENTS * SENSORS_PER_AGENT;
    for round in 0..rounds {
        if round == rounds / 3 {
            // Mid-run: kill ingest worker 1 and API replica 1, then
            // restart both.
            let m = w1.metrics().await?;
            assert!(
                metric(&m, "pantau_ingest_log_persisted_total").unwrap_or(0.0) > 0.0,
                "worker 1 took no share before its kill"
            );
            // The raise is recorded and notified by replica 1 before it dies.
            eventually(Duration::from_secs(30), "the raise notified", || async {
                (!receiver.deliveries().is_empty()).then_some(())
            })
            .await?;
            assert_eq!(duty_holder(&pg), "r1");
            w1.kill();
            r1.kill();
            // The load balancer keeps answering through the survivor.
            for _ in 0..20 {
                let r =
                    reqwest::get(format!("http://{}/api/v1/public/conditions", lb.addr)).await?;
                assert_eq!(
                    r.status(),
                    200,
                    "haproxy did not route around the dead replica"
                );
            }
            // Its lease runs out and replica 2 takes the duty over (replica
            // 1 comes back only then, to stand by).
            eventually(
                Duration::from_secs(15),
                "replica 2 on alert duty",
                || async { (duty_holder(&pg) == "r2").then_some(()) },
            )
            .await?;
            w1 = IngestWorker::start(&d1, &broker, "w1", &common).await?;
            r1.restart().await?;
            // An agency watching alerts live on the replica now standing
            // by sees the changes the one on duty records.
            alert_feed = Some(tokio::spawn(collect_alerts(
                r1.url("/api/v1/alerts/live"),
                admin.clone(),
                feed_changes.clone(),
            )));
        }
        for (a, agent) in agents.iter_mut().enumerate() {
            let mut lines = String::new();
            for i in round * per_round..(round + 1) * per_round {
                for s in 0..SENSORS_PER_AGENT {
                    lines.push_str(&agent_line(
                        &format!("fl-t{a}-{s}"),
                        base + i * 1000,
                        "water_level_cm",
                        (i % 1000) as f64,
                    ));
                }
            }
            if a == 0 {
                lines.push_str(&agent_line(
                    SIAGA,
                    base + ((round + 1) * per_round - 1) * 1000,
                    "water_level_cm",
                    siaga_level(round),
                ));
            }
            agent.send(&lines)?;
        }
        let through = ((round + 1) * per_round) as usize * AGENTS * SENSORS_PER_AGENT;
        eventually(
            Duration::from_secs(90),
            "the feed to show the round",
            || async { (seen.lock().unwrap().len() >= through).then_some(()) },
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}: round {round}, {} of {through} ({} lagged)",
                seen.lock().unwrap().len(),
                lagged.load(std::sync::atomic::Ordering::Relaxed)
            )
        })?;
    }

    let want: Vec<(String, u64)> = {
        let mut v: Vec<(String, u64)> = (0..AGENTS)
            .flat_map(|a| {
                (0..SENSORS_PER_AGENT).map(move |s| (format!("fl-t{a}-{s}"), steps as u64))
            })
            .collect();
        v.push((SIAGA.to_owned(), rounds as u64));
        v.sort();
        v
    };
    eventually(
        Duration::from_secs(300),
        "every reading in InfluxDB",
        || async { (influx_counts(&influx).await.ok()? == want).then_some(()) },
    )
    .await?;
    // InfluxDB keeps one point per series and timestamp: the count per
    // sensor is exactly the readings sent, none lost, none extra.
    assert_eq!(influx_counts(&influx).await?, want);

    // The surviving replica's feed showed every reading, none twice over
    // a gap: no reading announced as missed.
    assert_eq!(seen.lock().unwrap().len(), expected);
    assert_eq!(
        lagged.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the feed skipped readings"
    );
    sse.abort();

    // The worker that was never killed kept one broker session all along
    // (a session that ends has the broker redeliver all it had in flight).
    let log = std::fs::read_to_string(&w2.log)?;
    assert!(
        !log.contains("Broker session ended"),
        "worker 2's session ended under load"
    );

    // Latest and history agree across the replicas (the restarted one got
    // the commits it missed from its persistent session).
    let last_ts = Timestamp(base + (steps - 1) * 1000).to_rfc3339();
    eventually(
        Duration::from_secs(60),
        "replica 1's latest values to catch up",
        || async {
            let (_, l) = call(r1.url("/api/v1/latest"), reqwest::Method::GET, &admin, None)
                .await
                .ok()?;
            let all = l.as_array()?;
            (all.len() == want.len() && all.iter().all(|x| x["ts"] == last_ts.as_str()))
                .then_some(())
        },
    )
    .await?;
    let (_, l1) = call(r1.url("/api/v1/latest"), reqwest::Method::GET, &admin, None).await?;
    let (_, l2) = call(r2.url("/api/v1/latest"), reqwest::Method::GET, &admin, None).await?;
    assert_eq!(l1, l2, "latest answers differ between replicas");
    let from = Timestamp(base).to_rfc3339();
    let to = Timestamp(base + steps * 1000).to_rfc3339();
    let path = format!("/api/v1/sensors/fl-t0-0/readings?from={from}&to={to}&every=10m&fn=count");
    let (s1, h1) = call(r1.url(&path), reqwest::Method::GET, &admin, None).await?;
    let (s2, h2) = call(r2.url(&path), reqwest::Method::GET, &admin, None).await?;
    assert_eq!((s1, s2), (200, 200), "{h1}");
    assert_eq!(h1, h2, "history answers differ between replicas");
    let total: f64 = h1["series"][0]["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["value"].as_f64())
        .sum();
    assert_eq!(total as i64, steps, "history count: {h1}");

    // A new replica (a new name: no broker session, nothing mirrored, and
    // nothing more is sent) answers the latest values at once, from
    // InfluxDB.
    let r3 = ApiReplica::start(&dir.path().join("r3"), &broker, "r3", None, &replica_args).await?;
    eventually(
        Duration::from_secs(30),
        "the new replica's latest values",
        || async {
            let (_, l) = call(r3.url("/api/v1/latest"), reqwest::Method::GET, &admin, None)
                .await
                .ok()?;
            (l == l2).then_some(())
        },
    )
    .await?;

    // One alert for the gauge, with its three changes, the same through
    // both replicas, though its evaluator was killed between the raise
    // and the escalation.
    let alerts_path = format!("/api/v1/alerts?sensor={SIAGA}&state=all");
    eventually(Duration::from_secs(30), "the alert resolved", || async {
        let (_, v) = call(r2.url(&alerts_path), reqwest::Method::GET, &admin, None)
            .await
            .ok()?;
        (v["alerts"][0]["state"] == "resolved").then_some(())
    })
    .await?;
    let (s1, a1) = call(r1.url(&alerts_path), reqwest::Method::GET, &admin, None).await?;
    let (s2, a2) = call(r2.url(&alerts_path), reqwest::Method::GET, &admin, None).await?;
    assert_eq!((s1, s2), (200, 200), "{a1}");
    assert_eq!(a1, a2, "alert answers differ between replicas");
    let list = a1["alerts"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "alerts for {SIAGA}: {a1}");
    assert_eq!(list[0]["peak"], 2, "{a1}");
    let id = list[0]["id"].as_i64().unwrap();
    let (_, detail) = call(
        r1.url(&format!("/api/v1/alerts/{id}")),
        reqwest::Method::GET,
        &admin,
        None,
    )
    .await?;
    let changes: Vec<&str> = detail["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["change"].as_str())
        .collect();
    assert_eq!(changes, ["raised", "escalated", "resolved"], "{detail}");
    eventually(
        Duration::from_secs(30),
        "a notification per change",
        || async { (receiver.deliveries().len() >= 3).then_some(()) },
    )
    .await?;
    let got: Vec<(String, String)> = receiver
        .deliveries()
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                d.json()["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let types: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        types,
        ["alert.raised", "alert.escalated", "alert.resolved"],
        "notifications: {got:?}"
    );
    let ids: HashSet<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids.len(), 3, "a notification sent twice: {got:?}");
    eventually(
        Duration::from_secs(10),
        "the standby replica's alert feed",
        || async { (feed_changes.lock().unwrap().len() >= 2).then_some(()) },
    )
    .await?;
    let feed: Vec<(String, String)> = feed_changes.lock().unwrap().clone();
    assert_eq!(
        feed,
        [
            (SIAGA.to_owned(), "escalated".to_owned()),
            (SIAGA.to_owned(), "resolved".to_owned())
        ],
        "the alert feed of replica 1"
    );
    if let Some(f) = alert_feed {
        f.abort();
    }
    Ok(())
}

/// Scaling down on Mosquitto: a worker stopped with `--leave-on-stop`
/// leaves the shared subscription first and takes what was already queued
/// for it, so what the gateways send afterwards all reaches InfluxDB
/// through the worker that stays. (Without it the stopped worker's
/// persistent session keeps getting its share, stored nowhere until it
/// comes back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaving_for_good_holds_back_no_readings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_pg, influx, _mosq, broker, args) = services(dir.path()).await?;
    let common: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut leaving = common.to_vec();
    leaving.push("--leave-on-stop");
    let mut w1 = IngestWorker::start(&dir.path().join("w1"), &broker, "w1", &leaving).await?;
    let _w2 = IngestWorker::start(&dir.path().join("w2"), &broker, "w2", &common).await?;
    let cfg = format!(
        "gateway = \"gw-t0\"\n[broker]\nurl = \"{broker}\"\nusername = \"gw-t0\"\npassword = \"unused\"\n[batch]\nmax_readings = 50\nmax_delay = \"20ms\"\n[[source]]\ntype = \"stdin\"\n"
    );
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    let base = Timestamp::now().millis() - 86_400_000;
    let per_batch: i64 = 2_000;
    let batch = |b: i64| {
        let mut lines = String::new();
        for i in b * per_batch..(b + 1) * per_batch {
            for s in 0..SENSORS_PER_AGENT {
                lines.push_str(&agent_line(
                    &format!("fl-t0-{s}"),
                    base + i * 1000,
                    "water_level_cm",
                    (i % 500) as f64,
                ));
            }
        }
        lines
    };
    let want = |batches: i64| -> Vec<(String, u64)> {
        (0..SENSORS_PER_AGENT)
            .map(|s| (format!("fl-t0-{s}"), (batches * per_batch) as u64))
            .collect()
    };
    agent.send(&batch(0))?;
    eventually(Duration::from_secs(60), "batch 0 stored", || async {
        (influx_counts(&influx).await.ok()? == want(1)).then_some(())
    })
    .await?;
    let m = w1.metrics().await?;
    assert!(
        metric(&m, "pantau_ingest_log_persisted_total").unwrap_or(0.0) > 0.0,
        "worker 1 took no share before it left"
    );
    // Readings in flight while worker 1 stops, and more once it is gone.
    agent.send(&batch(1))?;
    w1.terminate().await?;
    agent.send(&batch(2))?;
    eventually(
        Duration::from_secs(60),
        "every reading stored with one worker left",
        || async { (influx_counts(&influx).await.ok()? == want(3)).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", influx_counts_now(&influx)))?;
    let log = std::fs::read_to_string(&w1.log)?;
    assert!(log.contains("Left the shared subscription"), "{log}");
    Ok(())
}

fn influx_counts_now(influx: &Influx) -> Vec<(String, u64)> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(influx_counts(influx))
    })
    .unwrap_or_default()
}
