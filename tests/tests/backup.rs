//! `pantau backup` of a running `pantau up` under load, `pantau restore`
//! into a new data directory: the restored platform starts cleanly, holds
//! every reading acknowledged before the backup began (each once), and
//! knows the gateways (their credentials work).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pantau_tests::mqtt::connect_gateway;
use pantau_tests::*;

/// Readings per envelope.
const PER: i64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_acknowledged_reading() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut p, creds) = minimal(dir.path(), &[]).await?;
    let base = pantau_model::Timestamp::now().millis() - 3_600_000;

    // Load: envelope k holds readings at base + k*PER + j ms; `acked` is the
    // number of envelopes whose PUBACK arrived (one in flight at a time).
    let (client, mut eventloop) = connect_gateway(&p, &creds).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let topic = "pantau/v1/gw/gw-test/telemetry".to_string();
            let mut k = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let lines: Vec<String> = (0..PER)
                    .map(|j| {
                        let ts = pantau_model::Timestamp(base + k * PER + j).to_rfc3339();
                        level(&ts, (k % 200) as f64)
                    })
                    .collect();
                let env = envelope("gw-test", k as u64 + 1, &lines);
                client
                    .publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, env)
                    .await?;
                loop {
                    match eventloop.poll().await? {
                        rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => break,
                        _ => continue,
                    }
                }
                k += 1;
                acked.store(k as u64, Ordering::SeqCst);
            }
            anyhow::Ok(())
        })
    };
    eventually(
        Duration::from_secs(20),
        "200 envelopes acknowledged",
        || std::future::ready((acked.load(Ordering::SeqCst) >= 200).then_some(())),
    )
    .await?;

    // The backup, while the load goes on.
    let before = acked.load(Ordering::SeqCst) as i64;
    let backup = dir.path().join("backup");
    let out = tokio::task::spawn_blocking({
        let (data, backup) = (p.data_dir.clone(), backup.clone());
        move || {
            Command::new(binary("pantau"))
                .arg("backup")
                .arg("--data-dir")
                .arg(&data)
                .arg("--to")
                .arg(&backup)
                .output()
        }
    })
    .await??;
    ensure!(
        out.status.success(),
        "pantau backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = acked.load(Ordering::SeqCst) as i64;
    ensure!(during > before, "the load went on during the backup");
    stop.store(true, Ordering::SeqCst);
    load.await??;
    p.kill();

    // Restore into a new directory and start on it.
    let restored = dir.path().join("restored");
    let out = Command::new(binary("pantau"))
        .arg("restore")
        .arg("--from")
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored)
        .output()?;
    ensure!(
        out.status.success(),
        "pantau restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second restore into the same place is refused.
    let again = Command::new(binary("pantau"))
        .args(["restore", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored)
        .output()?;
    ensure!(
        !again.status.success(),
        "restored over a non-empty directory"
    );
    let registry = dir.path().join("registry.toml");
    let q = Pantau::start(
        &restored,
        &["--registry", registry.to_str().context("path")?],
    )
    .await?;
    eventually(
        Duration::from_secs(20),
        "the restored platform ready",
        || async {
            let r = q.client().ok()?.get(q.url("/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await?;
    let want = (before * PER) as usize;
    let rows = stored_eventually(&restored, "fl-test-01", want).await?;
    let keys: BTreeSet<i64> = rows.iter().map(|(_, ts, _)| *ts).collect();
    ensure!(keys.len() == rows.len(), "a reading is stored twice");
    for ts in base..base + before * PER {
        ensure!(
            keys.contains(&ts),
            "reading at {ts} (acknowledged before the backup began) is missing; {} restored of {want}",
            keys.len()
        );
    }
    ensure!(
        // (One envelope may have been committed, and so copied, with its
        // PUBACK still on the way when the backup ended.)
        keys.iter().all(|ts| *ts < base + (during + 1) * PER),
        "a reading published after the backup ended is in it"
    );
    println!(
        "acknowledged before the backup: {want} readings; restored: {} (the backup ran while {} more envelopes were acknowledged)",
        keys.len(),
        during - before
    );
    // The gateways came along: the same credentials publish to it.
    publish_ok(
        &q,
        &creds,
        &envelope("gw-test", 1_000_000, &[level(&now_rfc3339(0), 42.0)]),
    )?;
    Ok(())
}
