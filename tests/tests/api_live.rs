//! 1 000 concurrent SSE clients on a demo run, plus one client that stops
//! reading: every other client keeps receiving each event within 1 s of the
//! first client that got it (the moment it was ingested and broadcast); and
//! at a high event rate the stalled client's events coalesce instead of
//! piling up, while the server's memory stays flat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use pantau_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const CLIENTS: usize = 1000;
/// The sensor whose events every client times.
const PROBE: &str = "tide-pelabuhan";

/// Arrival time of each PROBE event (by its `ts`) at one client.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// Reads the feed until `until`; returns when its headers arrived.
async fn client(url: String, arrivals: Arrivals, until: Instant) -> Result<Instant> {
    let resp = reqwest::get(&url).await?;
    ensure!(resp.status().is_success(), "{}", resp.status());
    let connected = Instant::now();
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout_at(until, body.next()).await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                if data.contains(PROBE) {
                    let v: serde_json::Value = serde_json::from_str(data)?;
                    if v["sensor"] == PROBE {
                        let ts = v["ts"].as_str().unwrap_or_default().to_owned();
                        arrivals
                            .lock()
                            .unwrap()
                            .entry(ts)
                            .or_insert_with(Instant::now);
                    }
                }
            }
        }
    }
    Ok(connected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sse_clients_keep_up_while_one_is_stalled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let p = Pantau::start(
        &data,
        &[
            "--demo",
            "--demo-interval",
            "1s",
            "--public-rate-per-s",
            "100000",
            "--public-burst",
            "100000",
        ],
    )
    .await?;
    let url = p.url("/api/v1/public/live");
    // The stalled client: asks for the feed with a tiny receive window and
    // never reads.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(2048)?;
    let mut stalled = socket.connect(p.http).await?;
    stalled
        .write_all(b"GET /api/v1/public/live HTTP/1.1\r\nHost: pantau\r\n\r\n")
        .await?;
    let rss_before = rss_kib(p.pid()).context("server RSS")?;
    let until = Instant::now() + Duration::from_secs(25);
    let mut tasks = Vec::new();
    let mut all = Vec::new();
    for _ in 0..CLIENTS {
        let arrivals: Arrivals = Arc::default();
        all.push(arrivals.clone());
        tasks.push(tokio::spawn(client(url.clone(), arrivals, until)));
    }
    let mut all_connected = Instant::now() - Duration::from_secs(3600);
    for t in tasks {
        all_connected = all_connected.max(t.await??);
    }
    let rss_after = rss_kib(p.pid()).context("server RSS")?;
    // Every event of the probe sensor that any client got, with the first
    // arrival: the moment it was ingested and broadcast, near enough.
    let mut first: HashMap<String, Instant> = HashMap::new();
    for a in &all {
        for (ts, at) in a.lock().unwrap().iter() {
            let f = first.entry(ts.clone()).or_insert(*at);
            *f = (*f).min(*at);
        }
    }
    // Events broadcast once every client was connected, and early enough
    // for the slowest to have had a second to get them.
    let mut events: Vec<(&String, &Instant)> = first.iter().collect();
    events.sort_by_key(|(_, at)| **at);
    let window: Vec<_> = events
        .iter()
        .filter(|(_, at)| **at > all_connected + Duration::from_millis(500))
        .filter(|(_, at)| **at + Duration::from_secs(2) < until)
        .collect();
    eprintln!(
        "all {CLIENTS} clients connected {:?} after the start",
        all_connected - (until - Duration::from_secs(25))
    );
    ensure!(window.len() >= 5, "probe events: {}", events.len());
    let mut worst = Duration::ZERO;
    for (ts, at) in &window {
        for (c, a) in all.iter().enumerate() {
            let got = a.lock().unwrap().get(*ts).copied();
            let got =
                got.with_context(|| format!("client {c} never got the {PROBE} event of {ts}"))?;
            worst = worst.max(got - **at);
        }
    }
    eprintln!(
        "{} probe events checked on {CLIENTS} clients; worst delay after the first receiver {:?}; server RSS {} → {} KiB",
        window.len(),
        worst,
        rss_before,
        rss_after
    );
    ensure!(worst <= Duration::from_secs(1), "a client lagged {worst:?}");
    ensure!(
        rss_after < rss_before + 256 * 1024,
        "server memory grew from {rss_before} to {rss_after} KiB with {CLIENTS} clients"
    );
    drop(stalled);
    Ok(())
}

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
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(2048)?;
    let mut stalled = socket.connect(p.http).await?;
    stalled
        .write_all(b"GET /api/v1/public/live HTTP/1.1\r\nHost: pantau\r\n\r\n")
        .await?;
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
