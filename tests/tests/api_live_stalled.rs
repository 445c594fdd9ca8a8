//! At a high event rate, a live client that stops reading costs the server
//! nothing — no buffer grows for it, ingest never waits — and when it reads
//! again it is coalesced: it gets the latest reading of each sensor, not
//! the backlog. (Its own test binary, so it does not compete for the CPU
//! with the 1 000-client test.)

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
    let mut stalled = stalled_client(p.http, "/api/v1/public/live").await?;
    // Its socket fills; then the server stops writing to it.
    let m = p.metrics().await?;
    let accepted_from = metric(&m, "pantau_ingest_readings_accepted_total").unwrap_or(0.0);
    eventually(
        Duration::from_secs(30),
        "1 000 readings ingested",
        || async {
            let m = p.metrics().await.ok()?;
            (metric(&m, "pantau_ingest_readings_accepted_total")? > accepted_from + 1000.0)
                .then_some(())
        },
    )
    .await?;
    let before = rss_kib(p.pid()).context("RSS")?;
    let coalesced_before =
        metric(&p.metrics().await?, "pantau_ingest_live_coalesced_total").unwrap_or(0.0);
    let accepted_before =
        metric(&p.metrics().await?, "pantau_ingest_readings_accepted_total").unwrap_or(0.0);
    // Twenty more seconds of events: memory does not grow with them.
    eventually(
        Duration::from_secs(60),
        "6 000 more readings ingested",
        || async {
            let m = p.metrics().await.ok()?;
            (metric(&m, "pantau_ingest_readings_accepted_total")? > accepted_before + 6000.0)
                .then_some(())
        },
    )
    .await?;
    let after = rss_kib(p.pid()).context("RSS")?;
    ensure!(
        after < before + 16 * 1024,
        "server RSS grew {before} → {after} KiB"
    );
    // Reading again, the client skips the backlog: after what the buffers
    // held (64 KiB in the server, 64 KiB unsent in the kernel, the client's
    // own receive buffer), it gets current readings.
    let (fresh, stale) = read_until_fresh(&mut stalled, Duration::from_secs(20)).await?;
    let m = p.metrics().await?;
    let coalesced =
        metric(&m, "pantau_ingest_live_coalesced_total").unwrap_or(0.0) - coalesced_before;
    eprintln!(
        "stalled client: RSS {before} → {after} KiB; on resuming, {stale} buffered events, then a reading {fresh:?} old; {coalesced} events coalesced"
    );
    ensure!(
        coalesced > 1000.0,
        "the backlog was coalesced ({coalesced})"
    );
    // Ingest never waited for the stalled client.
    ensure!(metric(&m, "pantau_ingest_live_lagged_total").unwrap_or(0.0) == 0.0);
    Ok(())
}

/// Reads SSE `data:` lines until one carries a reading observed less than
/// 3 s ago (the demo's timestamps are whole seconds); returns its age and
/// how many older events came first.
async fn read_until_fresh(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> Result<(Duration, usize)> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 64 * 1024]);
    let mut stale = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .context("no fresh reading in time")??;
        ensure!(n > 0, "the server closed the stream");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let Some(data) = line.strip_prefix(b"data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
                continue;
            };
            let Some(ts) = v["ts"].as_str() else { continue };
            let ts = pantau_model::Timestamp::parse_rfc3339(ts).context("a bad ts")?;
            let age_ms = pantau_model::Timestamp::now().millis() - ts.millis();
            let age = Duration::from_millis(age_ms.max(0) as u64);
            if age < Duration::from_secs(3) {
                return Ok((age, stale));
            }
            stale += 1;
        }
    }
}
