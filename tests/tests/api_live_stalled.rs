//! At a high event rate, a live client that stops reading is coalesced —
//! its events replace each other per sensor instead of piling up — while
//! the server's memory stays flat and ingest never waits. (Its own test
//! binary, so it does not compete for the CPU with the 1 000-client test.)

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pantau_tests::*;

#[tokio::test]
async fn a_stalled_client_is_coalesced_and_server_memory_stays_flat() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    // ~360 public events/s, so the stalled connection's buffers fill fast.
    let p = Pantau::start(
        &data,
        &[
            "--demo",
            "--demo-interval",
            "50ms",
            "--live-max-per-s",
            "100000",
        ],
    )
    .await?;
    let stalled = stalled_client(p.http, "/api/v1/public/live").await?;
    // Its socket and queue fill; from then on its events coalesce.
    eventually(
        Duration::from_secs(90),
        "the stalled client's events to coalesce",
        || async {
            let m = p.metrics().await.ok()?;
            (metric(&m, "pantau_ingest_live_coalesced_total")? > 0.0).then_some(())
        },
    )
    .await?;
    let before = rss_kib(p.pid()).context("RSS")?;
    let coalesced_before =
        metric(&p.metrics().await?, "pantau_ingest_live_coalesced_total").unwrap_or(0.0);
    let accepted_before =
        metric(&p.metrics().await?, "pantau_ingest_readings_accepted_total").unwrap_or(0.0);
    // Ten more seconds of events: they coalesce, memory does not grow with them.
    eventually(
        Duration::from_secs(30),
        "3 000 more readings ingested",
        || async {
            let m = p.metrics().await.ok()?;
            (metric(&m, "pantau_ingest_readings_accepted_total")? > accepted_before + 3000.0)
                .then_some(())
        },
    )
    .await?;
    let after = rss_kib(p.pid()).context("RSS")?;
    let m = p.metrics().await?;
    let coalesced =
        metric(&m, "pantau_ingest_live_coalesced_total").unwrap_or(0.0) - coalesced_before;
    eprintln!("stalled client: {coalesced} events coalesced; server RSS {before} → {after} KiB");
    ensure!(coalesced > 1000.0, "events kept coalescing ({coalesced})");
    ensure!(
        after < before + 16 * 1024,
        "server RSS grew {before} → {after} KiB"
    );
    // Ingest never waited for the stalled client.
    ensure!(metric(&m, "pantau_ingest_live_lagged_total").unwrap_or(0.0) == 0.0);
    drop(stalled);
    Ok(())
}
