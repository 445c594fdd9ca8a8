//! `pantau-agent` end to end, with the real binaries: a 60 s broker outage,
//! `kill -9` at random moments, the spool bound, interoperability with
//! Debian's Mosquitto over TLS, and bad or excessive input.
//! (`PANTAU_TEST_AGENT_OUTAGE_S` shortens the outage for local iterations;
//! CI runs the full 60 s.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pantau_model::Timestamp;
use pantau_tests::mqtt::{messages_while, status_where};
use pantau_tests::services::{dev_tls, Mosquitto};
use pantau_tests::*;

const SENSORS: [&str; 3] = ["fl-a1", "fl-a2", "fl-a3"];

/// Three gauges on `gw-test`.
fn registry() -> String {
    SENSORS
        .iter()
        .map(|s| {
            format!(
                "[[sensor]]\nid = \"{s}\"\nkind = \"flood_gauge\"\ngateway = \"gw-test\"\nname = \"{s}\"\nlat = 1.67\nlon = 101.44\n\n"
            )
        })
        .collect()
}

async fn platform(dir: &Path) -> Result<(Pantau, GatewayCreds, Vec<String>)> {
    platform_with(dir, &[]).await
}

/// `platform`, with extra `pantau gateway add` flags (`--cert`).
async fn platform_with(dir: &Path, add: &[&str]) -> Result<(Pantau, GatewayCreds, Vec<String>)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.join("registry.toml");
    std::fs::write(&reg, registry())?;
    let args = vec!["--registry".to_string(), reg.display().to_string()];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Pantau::start(&data, &argv).await?;
    let creds = gateway_add_with(&data, "gw-test", add)?;
    Ok((p, creds, args))
}

/// An agent configuration: stdin source, the given broker, `extra` TOML
/// appended (sections of its own).
fn config(url: &str, ca: &Path, password: &str, extra: &str) -> String {
    format!(
        "gateway = \"gw-test\"\n[broker]\nurl = \"{url}\"\nca_file = \"{}\"\nusername = \"gw-test\"\npassword = \"{password}\"\n{extra}\n[[source]]\ntype = \"stdin\"\n",
        ca.display()
    )
}

/// The value sent for step `i`, so every stored sample can be checked
/// against its timestamp.
fn value(i: i64) -> f64 {
    (i % 1000) as f64 / 4.0
}

/// Lines for steps `from..to`: one reading per sensor per step, 100 ms apart.
fn lines(base: i64, from: i64, to: i64) -> String {
    let mut out = String::new();
    for i in from..to {
        for s in SENSORS {
            out.push_str(&agent_line(s, base + i * 100, "water_level_cm", value(i)));
        }
    }
    out
}

/// Checks that the store holds exactly steps `expected` of every sensor,
/// each with its own value (so nothing is missing, nothing is extra, and
/// every sample sits at its timestamp); waits for the drain.
async fn stored_exactly(
    data: &Path,
    base: i64,
    expected: &BTreeSet<i64>,
    deadline: Duration,
) -> Result<()> {
    let want: usize = expected.len() * SENSORS.len();
    let got = eventually(deadline, "every reading stored", || async move {
        let n: usize = SENSORS
            .iter()
            .map(|s| stored(data, s).map(|v| v.len()).unwrap_or(0))
            .sum();
        (n >= want).then_some(n)
    })
    .await
    .with_context(|| format!("expected {want} stored samples"))?;
    ensure!(got == want, "{got} samples stored, {want} expected");
    for s in SENSORS {
        let rows = stored(data, s)?;
        let steps: BTreeSet<i64> = rows.iter().map(|(_, ts, _)| (ts - base) / 100).collect();
        ensure!(
            &steps == expected,
            "{s}: stored steps differ from those sent"
        );
        for (field, ts, v) in rows {
            let i = (ts - base) / 100;
            ensure!(
                field == "water_level_cm" && v == value(i),
                "{s} at step {i}: {v}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_60s_broker_outage_loses_nothing_and_stores_each_reading_once() -> Result<()> {
    let outage_s: u64 = std::env::var("PANTAU_TEST_AGENT_OUTAGE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir()?;
    let (mut p, creds, args) = platform(dir.path()).await?;
    let url = format!("mqtts://127.0.0.1:{}", p.mqtt.port());
    let cfg = config(
        &url,
        &creds.ca_file,
        &creds.password,
        "[batch]\nmax_delay = \"50ms\"",
    );
    let agent = Arc::new(Mutex::new(Agent::start(dir.path(), "agent", &cfg)?));
    let base = Timestamp::now().millis() - 86_400_000;
    // Readings flow in on stdin the whole time: 3 every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(0i64));
    let feeder = {
        let (agent, stop, sent) = (agent.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut i = 0i64;
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                agent.lock().unwrap().send(&lines(base, i, i + 1))?;
                i += 1;
                *sent.lock().unwrap() = i;
            }
            anyhow::Ok(i)
        })
    };
    let data = p.data_dir.clone();
    eventually(Duration::from_secs(20), "first readings stored", || {
        let data = data.clone();
        async move { (stored(&data, "fl-a1").ok()?.len() >= 10).then_some(()) }
    })
    .await?;
    let (http, mqtt) = (p.http, p.mqtt);
    p.terminate().await?;
    let down_at = *sent.lock().unwrap();
    tokio::time::sleep(Duration::from_secs(outage_s)).await;
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let _p = Pantau::start_on(&data, http, mqtt, &argv).await?;
    let up_at = *sent.lock().unwrap();
    ensure!(
        up_at - down_at >= (outage_s as i64 * 10) * 8 / 10,
        "readings kept flowing during the outage"
    );
    // Live readings after the restart, then stop feeding.
    let resume = *sent.lock().unwrap();
    eventually(
        Duration::from_secs(30),
        "live readings after the restart",
        || {
            let data = data.clone();
            async move {
                let rows = stored(&data, "fl-a2").ok()?;
                rows.iter()
                    .any(|(_, ts, _)| (ts - base) / 100 > resume)
                    .then_some(())
            }
        },
    )
    .await?;
    stop.store(true, Ordering::Release);
    let total = feeder.await??;
    let all: BTreeSet<i64> = (0..total).collect();
    stored_exactly(&data, base, &all, Duration::from_secs(60))
        .await
        .with_context(|| agent.lock().unwrap().log_text())?;
    Ok(())
}

/// Every (sensor, ts) seen in the agent's spool file by a reader polling it.
fn watch_spool(
    spool: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeSet<(String, i64)>> {
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        while !stop.load(Ordering::Acquire) {
            if let Ok(conn) = rusqlite::Connection::open_with_flags(
                &spool,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            ) {
                while !stop.load(Ordering::Acquire) {
                    let Ok(mut stmt) = conn.prepare_cached("SELECT sensor, ts FROM readings")
                    else {
                        break;
                    };
                    let Ok(rows) = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))) else {
                        break;
                    };
                    seen.extend(rows.flatten());
                    std::thread::yield_now();
                }
            }
            std::thread::yield_now();
        }
        seen
    })
}

#[tokio::test]
async fn kill_9_at_random_moments_loses_nothing_that_reached_the_spool() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds, _) = platform(dir.path()).await?;
    let url = format!("mqtts://127.0.0.1:{}", p.mqtt.port());
    let cfg = config(
        &url,
        &creds.ca_file,
        &creds.password,
        "[spool]\npath = \"spool\"\n[batch]\nmax_readings = 50\nmax_delay = \"20ms\"\nmax_in_flight = 4",
    );
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    let spool = agent.dir.join("spool").join("spool.db");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_spool(spool, stop.clone());
    let base = Timestamp::now().millis() - 86_400_000;
    let seed = Timestamp::now().millis() as u64;
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let data = p.data_dir.clone();
    let (mut step, chunk) = (0i64, 2000i64);
    let mut mid_publish = 0;
    for round in 0..10 {
        agent.send(&lines(base, step, step + chunk))?;
        step += chunk;
        // A random moment while the agent spools and publishes the chunk.
        tokio::time::sleep(Duration::from_millis(next(120))).await;
        let at_kill = stored_count(&data)?;
        agent.kill();
        let sent = step * SENSORS.len() as i64;
        if at_kill < sent {
            mid_publish += 1;
        }
        eprintln!("round {round}: killed with {at_kill} of {sent} stored (seed {seed})");
        agent.restart()?;
    }
    ensure!(
        mid_publish >= 3,
        "only {mid_publish} of 10 kills came while readings were unpublished"
    );
    // A last batch after the last restart, not interrupted.
    agent.send(&lines(base, step, step + chunk))?;
    let last: BTreeSet<i64> = (step..step + chunk).collect();
    step += chunk;
    eventually(Duration::from_secs(60), "the last batch stored", || {
        let data = data.clone();
        let last = last.clone();
        async move {
            let rows = stored(&data, "fl-a3").ok()?;
            let have: BTreeSet<i64> = rows.iter().map(|(_, ts, _)| (ts - base) / 100).collect();
            last.is_subset(&have).then_some(())
        }
    })
    .await?;
    // And until the spool is empty: nothing acknowledged is left behind.
    let spool_db = agent.dir.join("spool").join("spool.db");
    eventually(Duration::from_secs(60), "the spool to empty", || {
        let spool_db = spool_db.clone();
        async move {
            let conn = rusqlite::Connection::open(&spool_db).ok()?;
            let n: i64 = conn
                .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await?;
    stop.store(true, Ordering::Release);
    let seen = watcher.join().expect("watcher");
    // An empty spool means Pantau acknowledged everything, i.e. it is in its
    // ingest log; the store is drained from there asynchronously.
    let keys = || -> Result<BTreeSet<(String, i64)>> {
        let mut stored_keys = BTreeSet::new();
        for s in SENSORS {
            for (_, ts, v) in stored(&data, s)? {
                let i = (ts - base) / 100;
                ensure!(v == value(i), "{s} step {i}: stored {v}");
                ensure!((0..step).contains(&i), "{s}: a reading that was never sent");
                stored_keys.insert((s.to_string(), ts));
            }
        }
        Ok(stored_keys)
    };
    let drained = eventually(
        Duration::from_secs(60),
        "the ingest log drained into the store",
        || async {
            let m = p.metrics().await.ok()?;
            (metric(&m, "pantau_ingest_log_pending")? == 0.0).then_some(())
        },
    )
    .await;
    let stored_keys = keys()?;
    let lost: Vec<_> = seen.difference(&stored_keys).collect();
    ensure!(
        lost.is_empty(),
        "{} readings seen in the spool are not stored (log drained: {}), e.g. {:?}",
        lost.len(),
        drained.is_ok(),
        lost.first()
    );
    ensure!(
        seen.len() > 1000,
        "the watcher saw the spool ({} keys)",
        seen.len()
    );
    Ok(())
}

#[tokio::test]
async fn publishes_over_tls_to_mosquitto_and_counts_bad_lines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = dev_tls(&dir.path().join("pki"))?;
    let mosq = Mosquitto::start_tls(&dir.path().join("mosquitto"), &tls).await?;
    let url = format!("mqtts://127.0.0.1:{}", mosq.addr.port());
    let cfg = config(
        &url,
        &tls.ca_cert,
        "unused",
        "[batch]\nmax_readings = 25\nmax_delay = \"20ms\"",
    );
    // The subscriber is connected before the agent starts.
    let (addr, ca) = (mosq.addr, tls.ca_cert.clone());
    let sub = std::thread::spawn(move || {
        let mut n = 0;
        messages_while(addr, &ca, "pantau/v1/gw/gw-test/telemetry", 30, |e| {
            n += e["readings"].as_array().map_or(0, Vec::len);
            n < 102
        })
    });
    eventually(
        Duration::from_secs(10),
        "mosquitto_sub to subscribe",
        || {
            std::future::ready(
                std::fs::read_to_string(dir.path().join("mosquitto").join("mosquitto.log"))
                    .ok()
                    .filter(|l| l.contains("New client connected"))
                    .map(drop),
            )
        },
    )
    .await?;
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    let base = Timestamp::now().millis() - 3_600_000;
    let bad = [
        "not json\n",
        "{\"sensor\":\"fl-a1\",\"ts\":\"2026-11-28T00:00:00Z\",\"values\":{\"water_level_cm\":1},\"colour\":\"red\"}\n",
        "{\"sensor\":\"fl-a1\",\"ts\":\"tomorrow\",\"values\":{\"water_level_cm\":1}}\n",
    ];
    let mut input = String::new();
    for (i, b) in bad.iter().enumerate() {
        input.push_str(&lines(base, i as i64 * 11, i as i64 * 11 + 11));
        input.push_str(b);
    }
    input.push_str(&lines(base, 33, 34));
    agent.send(&input)?;
    let envelopes = sub.join().expect("subscriber")?;
    let mut readings = BTreeMap::new();
    for v in &envelopes {
        let e = v.to_string();
        ensure!(v["gw"] == "gw-test" && v["v"] == 1, "envelope header: {e}");
        for r in v["readings"].as_array().context("readings")? {
            let ts = Timestamp::parse_rfc3339(r["ts"].as_str().context("ts")?).context("ts")?;
            readings.insert(
                (r["sensor"].as_str().unwrap_or_default().to_string(), ts.0),
                r["values"]["water_level_cm"].as_f64(),
            );
        }
    }
    ensure!(
        readings.len() == 34 * 3,
        "{} readings received over Mosquitto",
        readings.len()
    );
    for ((_, ts), v) in &readings {
        ensure!(*v == Some(value((ts - base) / 100)));
    }
    let status = status_where(
        mosq.addr,
        &tls.ca_cert,
        "gw-test",
        "status with the counts",
        |s| s["online"] == true && s["sources"][0]["readings"] == 102 && s["readings_acked"] == 102,
    )
    .await?;
    ensure!(
        status["sources"][0]["errors"] == 3,
        "bad lines counted: {status}"
    );
    ensure!(
        status["spool"]["dropped"] == 0 && status["spool"]["readings"] == 0,
        "{status}"
    );
    // Bad commands are answered in the status, and the agent carries on.
    for cmd in [
        r#"{"cmd":"reboot"}"#,
        r#"{"cmd":"set_interval","sensor":"fl-zz","interval":"10s"}"#,
    ] {
        mosquitto_pub(
            mosq.addr,
            Some(&tls.ca_cert),
            "test",
            "unused",
            "pantau/v1/gw/gw-test/cmd",
            cmd,
        )?;
    }
    let status = status_where(
        mosq.addr,
        &tls.ca_cert,
        "gw-test",
        "command errors in the status",
        |s| s["command_errors"] == 2,
    )
    .await?;
    ensure!(
        status["last_command_error"]
            .as_str()
            .unwrap_or_default()
            .contains("fl-zz"),
        "{status}"
    );
    // The platform's time (Pantau's broker sends it on subscribe; here the
    // test plays the platform, 10 s behind): the offset shows in the status.
    let behind = Timestamp(Timestamp::now().millis() - 10_000).to_rfc3339();
    mosquitto_pub(
        mosq.addr,
        Some(&tls.ca_cert),
        "test",
        "unused",
        "pantau/v1/gw/gw-test/cmd",
        &format!(r#"{{"cmd":"time","now":"{behind}"}}"#),
    )?;
    let status = status_where(mosq.addr, &tls.ca_cert, "gw-test", "clock offset", |s| {
        s["clock_offset_ms"].is_i64()
    })
    .await?;
    let offset = status["clock_offset_ms"].as_i64().unwrap_or_default();
    ensure!((9_000..15_000).contains(&offset), "offset {offset} ms");
    Ok(())
}

#[tokio::test]
async fn a_full_spool_drops_the_oldest_and_reports_the_count_after_reconnecting() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = dev_tls(&dir.path().join("pki"))?;
    // The broker is down: nothing listens on this address yet.
    let addr = free_addr();
    let url = format!("mqtts://127.0.0.1:{}", addr.port());
    let cfg = config(
        &url,
        &tls.ca_cert,
        "unused",
        "[spool]\npath = \"spool\"\nmax_mib = 0.05",
    );
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    let base = Timestamp::now().millis() - 3_600_000;
    let steps = 1000i64;
    agent.send(&lines(base, 0, steps))?;
    let spool = agent.dir.join("spool").join("spool.db");
    let sent = steps as u64 * SENSORS.len() as u64;
    // Every reading is either kept or counted as dropped.
    let (kept, dropped, oldest_kept) =
        eventually(Duration::from_secs(20), "the spool to fill", || {
            let spool = spool.clone();
            async move {
                let conn = rusqlite::Connection::open(&spool).ok()?;
                let (n, bytes, min_ts): (i64, i64, i64) = conn
                    .query_row(
                        "SELECT count(*), sum(bytes), min(ts) FROM readings",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .ok()?;
                let dropped: i64 = conn
                    .query_row("SELECT value FROM meta WHERE key = 'dropped'", [], |r| {
                        r.get(0)
                    })
                    .ok()?;
                let (n, dropped) = (n as u64, dropped as u64);
                (n + dropped == sent && bytes <= 52_428).then_some((n, dropped, min_ts))
            }
        })
        .await?;
    ensure!(
        dropped > 1000 && kept > 100,
        "kept {kept}, dropped {dropped}"
    );
    // The oldest went: what is kept is the newest `kept` readings.
    let first_kept_step = (oldest_kept - base) / 100;
    ensure!(
        (steps - first_kept_step) * 3 >= kept as i64 && first_kept_step > 0,
        "kept from step {first_kept_step}"
    );
    let pid = agent.pid();
    ensure!(
        rss_kib(pid).is_some(),
        "the agent keeps running with a full spool"
    );
    // The broker comes back: the status reports the dropped count.
    let mosq = Mosquitto::start_tls_on(&dir.path().join("mosquitto"), &tls, addr).await?;
    let status = status_where(
        mosq.addr,
        &tls.ca_cert,
        "gw-test",
        "status after reconnecting",
        // Replayed in full: caught up, now online.
        |s| s["readings_acked"] == kept && s["spool"]["readings"] == 0 && s["state"] == "online",
    )
    .await
    .with_context(|| agent.log_text())?;
    ensure!(status["spool"]["dropped"] == dropped, "{status}");
    ensure!(status["online"] == true, "{status}");
    Ok(())
}

#[tokio::test]
async fn bad_input_is_counted_and_a_flood_of_10000_readings_per_second_is_absorbed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds, _) = platform(dir.path()).await?;
    let url = format!("mqtts://127.0.0.1:{}", p.mqtt.port());
    let cfg = config(&url, &creds.ca_file, &creds.password, "");
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    let base = Timestamp::now().millis() - 3_600_000;
    // Bad lines (dropped and counted by the agent) and out-of-range values
    // (passed on; rejected and counted by the platform).
    let mut bad = String::from("{not json\n{\"sensor\":\"fl-a1\",\"ts\":\"2026-01-01T00:00:00Z\",\"values\":{\"water_level_cm\":1},\"x\":1}\n");
    for i in 0..5 {
        bad.push_str(&agent_line(
            "fl-a2",
            base - 1000 - i * 100,
            "water_level_cm",
            1e9,
        ));
    }
    agent.send(&bad)?;
    // 10 000 readings per second for 3 seconds, in 100 ms slices.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut peak_rss = 0;
    let per_tick = 1000 / SENSORS.len() as i64;
    for t in 0..30 {
        tick.tick().await;
        agent.send(&lines(base, t * per_tick, (t + 1) * per_tick))?;
        peak_rss = peak_rss.max(rss_kib(agent.pid()).unwrap_or(0));
    }
    let all: BTreeSet<i64> = (0..30 * per_tick).collect();
    stored_exactly(&p.data_dir, base, &all, Duration::from_secs(60))
        .await
        .with_context(|| agent.log_text())?;
    let m = p.metrics().await?;
    ensure!(
        metric(
            &m,
            "pantau_ingest_readings_rejected_total{reason=\"out_of_range\"}"
        ) == Some(5.0),
        "out-of-range readings counted by the platform"
    );
    eprintln!("agent peak RSS during the flood: {} KiB", peak_rss);
    ensure!(
        peak_rss > 0 && peak_rss < 100 * 1024,
        "agent RSS {peak_rss} KiB"
    );
    ensure!(rss_kib(agent.pid()).is_some(), "the agent survived");
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_is_the_identity_without_a_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds, _) = platform_with(dir.path(), &["--cert"]).await?;
    let (cert, key) = (
        creds.cert_file.clone().context("cert_file")?,
        creds.key_file.clone().context("key_file")?,
    );
    let cfg = format!(
        "gateway = \"gw-test\"\n[broker]\nurl = \"mqtts://127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n[batch]\nmax_delay = \"20ms\"\n[[source]]\ntype = \"stdin\"\n",
        p.mqtt.port(),
        creds.ca_file.display(),
        cert.display(),
        key.display()
    );
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    let base = Timestamp::now().millis() - 3_600_000;
    agent.send(&lines(base, 0, 20))?;
    let all: BTreeSet<i64> = (0..20).collect();
    stored_exactly(&p.data_dir, base, &all, Duration::from_secs(30))
        .await
        .with_context(|| agent.log_text())
}
