//! `pantau ingest` workers on a third-party broker (Debian's Mosquitto)
//! with a shared subscription: 100 000 readings from four agents, one
//! worker killed with SIGKILL mid-run and restarted; every reading must be
//! stored exactly once by key across the workers' stores.

use std::collections::HashMap;
use std::time::Duration;

use pantau_model::Timestamp;
use pantau_tests::services::Mosquitto;
use pantau_tests::*;

const AGENTS: usize = 4;
const SENSORS_PER_AGENT: usize = 5;
const STEPS: i64 = 5_000; // readings per sensor

fn registry() -> String {
    let mut out = String::new();
    for a in 0..AGENTS {
        for s in 0..SENSORS_PER_AGENT {
            out.push_str(&format!(
                "[[sensor]]\nid = \"fl-l{a}-{s}\"\nkind = \"flood_gauge\"\ngateway = \"gw-l{a}\"\nname = \"Load {a}/{s}\"\nlat = 1.0\nlon = 101.0\n\n"
            ));
        }
    }
    out
}

fn total_stored(dirs: &[&std::path::Path]) -> usize {
    dirs.iter()
        .map(|d| stored_keys(d).map(|k| k.len()).unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn two_workers_one_killed_store_every_reading_exactly_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mosq = Mosquitto::start(&dir.path().join("mosquitto")).await?;
    let broker = format!("mqtt://{}", mosq.addr);
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, registry())?;
    let reg_s = reg.to_str().unwrap().to_owned();
    let (d1, d2) = (dir.path().join("w1"), dir.path().join("w2"));
    let mut w1 = IngestWorker::start(&d1, &broker, "w1", &["--registry", &reg_s]).await?;
    let _w2 = IngestWorker::start(&d2, &broker, "w2", &["--registry", &reg_s]).await?;

    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let cfg = format!(
            "gateway = \"gw-l{a}\"\n[broker]\nurl = \"{broker}\"\nusername = \"gw-l{a}\"\npassword = \"unused\"\n[batch]\nmax_readings = 50\nmax_delay = \"20ms\"\n[[source]]\ntype = \"stdin\"\n"
        );
        agents.push(Agent::start(dir.path(), &format!("agent-{a}"), &cfg)?);
    }
    let base = Timestamp::now().millis() - 2 * 86_400_000;
    for (a, agent) in agents.iter_mut().enumerate() {
        let mut lines = String::new();
        for i in 0..STEPS {
            for s in 0..SENSORS_PER_AGENT {
                lines.push_str(&agent_line(
                    &format!("fl-l{a}-{s}"),
                    base + i * 1000,
                    "water_level_cm",
                    (i % 1000) as f64,
                ));
            }
        }
        agent.send(&lines)?;
    }
    let expected = AGENTS * SENSORS_PER_AGENT * STEPS as usize;

    // Kill worker 1 once it has committed part of its share, then restart it
    // with the same worker id and data directory.
    eventually(
        Duration::from_secs(120),
        "worker 1 to be mid-run",
        || async {
            let m = w1.metrics().await.ok()?;
            (metric(&m, "pantau_ingest_log_persisted_total")? >= 10_000.0).then_some(())
        },
    )
    .await?;
    w1.kill();
    let in_flight_at_kill = total_stored(&[&d1, &d2]);
    assert!(
        in_flight_at_kill < expected,
        "the run finished before the kill"
    );
    let _w1 = IngestWorker::start(&d1, &broker, "w1", &["--registry", &reg_s]).await?;

    eventually(Duration::from_secs(240), "all readings stored", || async {
        (total_stored(&[&d1, &d2]) >= expected).then_some(())
    })
    .await?;
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    for d in [&d1, &d2] {
        for k in stored_keys(d)? {
            *seen.entry(k).or_default() += 1;
        }
    }
    let dupes = seen.values().filter(|n| **n > 1).count();
    assert_eq!(dupes, 0, "keys stored by both workers");
    assert_eq!(seen.len(), expected, "readings missing");
    // Both workers took part.
    assert!(!stored_keys(&d1)?.is_empty() && !stored_keys(&d2)?.is_empty());
    Ok(())
}
