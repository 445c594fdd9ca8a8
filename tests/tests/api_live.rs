//! 1 000 concurrent SSE clients on a demo run, plus one client that stops
//! reading: every other client keeps receiving each event within 1 s of the
//! first client that got it (the moment it was ingested and broadcast), and
//! the server's memory stays bounded. (The stalled client's coalescing at a
//! high event rate: `api_live_stalled.rs`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use pantau_tests::*;
use tokio::time::Instant;

const CLIENTS: usize = 1000;
/// The sensor whose events every client times.
const PROBE: &str = "tide-pelabuhan";

/// Arrival time of each PROBE event (by its `ts`) at one client.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// Reads the feed until `stop` turns true; reports when its headers
/// arrived through `connected`.
async fn client(
    url: String,
    arrivals: Arrivals,
    connected: tokio::sync::mpsc::Sender<Instant>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let resp = reqwest::get(&url).await?;
    ensure!(resp.status().is_success(), "{}", resp.status());
    connected.send(Instant::now()).await?;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(chunk) = chunk else { break };
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
    Ok(())
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
            "2s",
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
    let stalled = stalled_client(p.http, "/api/v1/public/live").await?;
    let rss_before = rss_kib(p.pid()).context("server RSS")?;
    let started = Instant::now();
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel(CLIENTS);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut all = Vec::new();
    for _ in 0..CLIENTS {
        let arrivals: Arrivals = Arc::default();
        all.push(arrivals.clone());
        tasks.push(tokio::spawn(client(
            url.clone(),
            arrivals,
            connected_tx.clone(),
            stop_rx.clone(),
        )));
    }
    let mut all_connected = started;
    for _ in 0..CLIENTS {
        let at = tokio::time::timeout(Duration::from_secs(120), connected_rx.recv())
            .await
            .context("1 000 clients connected within 120 s")?
            .context("a client failed to connect")?;
        all_connected = all_connected.max(at);
    }
    eprintln!(
        "all {CLIENTS} clients connected {:?} after the start",
        all_connected - started
    );
    // Watch until ten probe events were broadcast after every client was
    // connected, the last of them over 1.5 s ago.
    let first_arrivals = |all: &[Arrivals]| -> Vec<(String, Instant)> {
        let mut first: HashMap<String, Instant> = HashMap::new();
        for a in all {
            for (ts, at) in a.lock().unwrap().iter() {
                let f = first.entry(ts.clone()).or_insert(*at);
                *f = (*f).min(*at);
            }
        }
        let mut v: Vec<(String, Instant)> = first
            .into_iter()
            .filter(|(_, at)| *at > all_connected + Duration::from_millis(500))
            .filter(|(_, at)| at.elapsed() > Duration::from_millis(1500))
            .collect();
        v.sort_by_key(|(_, at)| *at);
        v
    };
    eventually(
        Duration::from_secs(90),
        "ten probe events after all clients connected",
        || std::future::ready((first_arrivals(&all).len() >= 10).then_some(())),
    )
    .await?;
    let window = first_arrivals(&all);
    stop_tx.send(true)?;
    for t in tasks {
        t.await??;
    }
    let rss_after = rss_kib(p.pid()).context("server RSS")?;
    let mut worst = Duration::ZERO;
    for (ts, at) in &window {
        for (c, a) in all.iter().enumerate() {
            let got = a.lock().unwrap().get(ts).copied();
            let got = got.with_context(|| {
                let mine = a.lock().unwrap();
                let mut keys: Vec<&String> = mine.keys().collect();
                keys.sort();
                format!(
                    "client {c} never got the {PROBE} event of {ts}; it got {} events, {:?}..{:?}; window {:?}",
                    keys.len(),
                    keys.first(),
                    keys.last(),
                    window.iter().map(|w| &w.0).collect::<Vec<_>>()
                )
            })?;
            worst = worst.max(got - *at);
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
