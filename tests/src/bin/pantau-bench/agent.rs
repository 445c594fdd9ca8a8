//! Edge-agent benchmarks: memory and CPU of `pantau-agent` at 100
//! readings/s (against `mosquitto_pub -l` publishing the same lines, same
//! run), and the backlog replay rate after an outage of 1 000 000 readings
//! (against the same readings published straight into Pantau).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pantau_model::Timestamp;
use pantau_tests::services::Mosquitto;
use pantau_tests::{agent_line, eventually, free_addr, gateway_add, rss_kib, stored_count};
use pantau_tests::{Agent, Pantau};

use crate::{publish_all, registry, start_platform, Load};

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Linux reports in USER_HZ, 100 per second on every mainstream build.
    Some(Duration::from_millis(ticks * 10))
}

fn line(sensor: usize, ts: i64, i: usize) -> String {
    agent_line(
        &format!("fl-b0-{sensor}"),
        ts,
        "water_level_cm",
        (i % 997) as f64 / 4.0,
    )
}

/// Feeds `rate` lines/s for `secs` seconds through `feed`, sampling the
/// process's RSS; returns (peak RSS KiB, CPU per 1 000 readings).
async fn steady(
    pid: u32,
    mut feed: impl FnMut(&str) -> Result<()>,
    base: i64,
    secs: u64,
) -> Result<(u64, Duration)> {
    let per_tick = 10usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let cpu_before = cpu_time(pid).context("cpu time")?;
    let (mut peak, mut i) = (0u64, 0usize);
    for _ in 0..secs * 10 {
        tick.tick().await;
        let mut lines = String::new();
        for _ in 0..per_tick {
            lines.push_str(&line(i % 10, base + i as i64 * 100, i));
            i += 1;
        }
        feed(&lines)?;
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    }
    let cpu = cpu_time(pid).context("cpu time")? - cpu_before;
    Ok((peak, cpu * 1000 / i as u32))
}

/// Agent RSS and CPU at 100 readings/s.
pub(crate) async fn bench_agent_steady() -> Result<()> {
    let secs = 30;
    let load = Load {
        gateways: 1,
        sensors_per_gateway: 10,
        readings: 0,
        per_envelope: 500,
    };
    let dir = tempfile::tempdir()?;
    let (p, tokens, ca) = start_platform(dir.path(), &load, &[]).await?;
    let cfg = format!(
        "gateway = \"gw-b0\"\n[broker]\nurl = \"mqtts://127.0.0.1:{}\"\nca_file = \"{}\"\npassword = \"{}\"\n[[source]]\ntype = \"stdin\"\n",
        p.mqtt.port(),
        ca.display(),
        tokens[0]
    );
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    let base = Timestamp::now().millis() - 86_400_000;
    let pid = agent.pid();
    let (agent_rss, agent_cpu) = steady(pid, |l| agent.send(l), base, secs).await?;
    let expected = (secs * 100) as i64;
    let data = p.data_dir.clone();
    eventually(Duration::from_secs(30), "agent readings stored", || {
        let data = data.clone();
        async move { (stored_count(&data).ok()? >= expected).then_some(()) }
    })
    .await?;
    drop(agent);
    // Baseline: mosquitto_pub -l (each line one QoS 1 message, TLS) into
    // Mosquitto, same lines, same rate; no spool.
    let tls = pantau_broker::tls::TlsFiles::in_data_dir(&p.data_dir);
    let mosq = Mosquitto::start_tls(&dir.path().join("mosquitto"), &tls).await?;
    let mut child: Child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &mosq.addr.port().to_string()])
        .arg("--cafile")
        .arg(&tls.ca_cert)
        .args(["-q", "1", "-t", "bench/lines", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("mosquitto_pub")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let (pub_rss, pub_cpu) = steady(
        child.id(),
        |l| {
            stdin.write_all(l.as_bytes())?;
            Ok(stdin.flush()?)
        },
        base,
        secs,
    )
    .await?;
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    println!("agent steady: 100 readings/s on stdin for {secs} s, TLS to Pantau");
    println!(
        "  pantau-agent: peak RSS {:.1} MiB, CPU {:.2} ms per 1 000 readings (spooled, batched, acknowledged)",
        agent_rss as f64 / 1024.0,
        agent_cpu.as_secs_f64() * 1000.0
    );
    println!(
        "  baseline, mosquitto_pub -l into Mosquitto (no spool, one message per reading): peak RSS {:.1} MiB, CPU {:.2} ms per 1 000",
        pub_rss as f64 / 1024.0,
        pub_cpu.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Backlog replay after an outage of `n` readings, with the default replay
/// bound (50 000 readings/s) and with the bound lifted (1 000 000/s) to show
/// what the agent itself can do.
pub(crate) async fn bench_agent_replay(n: usize) -> Result<()> {
    let bounded = replay(n, None).await?;
    let unbounded = replay(n, Some(1_000_000)).await?;
    // Baseline: the same readings published straight into a fresh Pantau
    // (500 per envelope, 100 envelopes in flight, no spool).
    let load = replay_load(n);
    let dir = tempfile::tempdir()?;
    let (p, tokens, ca) = start_platform(dir.path(), &load, &[]).await?;
    let base = Timestamp::now().millis() - 2 * 86_400_000;
    let direct = n as f64
        / publish_all(p.mqtt, &load, base, &tokens, &ca)
            .await?
            .as_secs_f64();
    println!("agent replay: {n} readings spooled during an outage, then the broker comes back");
    for (what, (spooled, replayed)) in [
        ("default bound 50 000/s", bounded),
        ("bound lifted to 1 000 000/s", unbounded),
    ] {
        println!(
            "  {what}: spooled from stdin at {spooled:.0} readings/s; replayed (every PUBACK in, spool empty) at {replayed:.0} readings/s (ratio {:.2} to the baseline)",
            replayed / direct
        );
    }
    println!(
        "  baseline, the same readings published straight into Pantau: {direct:.0} readings/s"
    );
    Ok(())
}

fn replay_load(n: usize) -> Load {
    Load {
        gateways: 1,
        sensors_per_gateway: 20,
        readings: n,
        per_envelope: 500,
    }
}

/// One outage-and-replay run; returns (spooling rate, replay rate).
async fn replay(n: usize, rate: Option<u32>) -> Result<(f64, f64)> {
    let load = replay_load(n);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, registry(&load))?;
    // Registered and given a CA before the platform ever runs: the outage.
    let creds = gateway_add(&data, "gw-b0")?;
    let mqtt = free_addr();
    let bound = rate.map_or(String::new(), |r| format!("replay_readings_per_s = {r}\n"));
    let cfg = format!(
        "gateway = \"gw-b0\"\n[broker]\nurl = \"mqtts://127.0.0.1:{}\"\nca_file = \"{}\"\npassword = \"{}\"\n{bound}[spool]\npath = \"spool\"\nmax_mib = 1024\n[[source]]\ntype = \"stdin\"\n",
        mqtt.port(),
        creds.ca_file.display(),
        creds.password
    );
    let mut agent = Agent::start(dir.path(), "agent", &cfg)?;
    let base = Timestamp::now().millis() - 2 * 86_400_000;
    let spooling = Instant::now();
    let mut chunk = String::new();
    for i in 0..n {
        let s = i % load.sensors_per_gateway;
        let step = (i / load.sensors_per_gateway) as i64;
        chunk.push_str(&line(s, base + step * 1000, i));
        if chunk.len() > 1 << 20 {
            agent.send(&chunk)?;
            chunk.clear();
        }
    }
    agent.send(&chunk)?;
    let spool = agent.dir.join("spool").join("spool.db");
    let count = |spool: std::path::PathBuf| async move {
        let conn = rusqlite::Connection::open(&spool).ok()?;
        conn.query_row("SELECT count(*) FROM readings", [], |r| r.get::<_, i64>(0))
            .ok()
    };
    eventually(Duration::from_secs(300), "the backlog spooled", || {
        let spool = spool.clone();
        async move { count(spool).await.filter(|c| *c as usize >= n) }
    })
    .await?;
    let spooled_in = spooling.elapsed();
    let reg_arg = reg.display().to_string();
    let p = Pantau::start_on(&data, free_addr(), mqtt, &["--registry", &reg_arg]).await?;
    let replaying = Instant::now();
    eventually(Duration::from_secs(600), "the backlog replayed", || {
        let spool = spool.clone();
        async move { count(spool).await.filter(|c| *c == 0) }
    })
    .await?;
    let replayed_in = replaying.elapsed();
    eventually(Duration::from_secs(300), "the backlog stored", || {
        let data = data.clone();
        async move { (stored_count(&data).ok()? as usize >= n).then_some(()) }
    })
    .await?;
    drop((agent, p));
    Ok((
        n as f64 / spooled_in.as_secs_f64(),
        n as f64 / replayed_in.as_secs_f64(),
    ))
}
