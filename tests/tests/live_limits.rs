//! Live feeds are bounded: a 60 MiB WebSocket message is refused at the
//! frame limit without the server's memory growing by it, and the stream
//! caps answer 429 (per address) and 503 (overall) with a JSON error,
//! counted.

use std::time::Duration;

use anyhow::{ensure, Result};
use futures::SinkExt;
use pantau_tests::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_messages_and_live_streams_are_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, _creds) = minimal(
        dir.path(),
        &["--live-max-streams", "4", "--live-max-streams-per-ip", "3"],
    )
    .await?;

    // 1. A 60 MiB message: refused at the first frame header.
    let before = rss_kib(p.pid()).unwrap_or(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/v1/public/live/ws", p.http)).await?;
    // In 8 KiB fragments, each under any frame limit: only a limit on the
    // whole message stops it (the library's default, 64 MiB, would buffer
    // all of it).
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    const FRAGMENT: usize = 8 * 1024;
    const TOTAL: usize = 60 * 1024 * 1024;
    let chunk = vec![0u8; FRAGMENT];
    let mut refused = false;
    let send_all = async {
        for i in 0..TOTAL / FRAGMENT {
            let opcode = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
            let last = i + 1 == TOTAL / FRAGMENT;
            let frame = Frame::message(chunk.clone(), opcode, last);
            if ws.send(Message::Frame(frame)).await.is_err() {
                return true;
            }
        }
        false
    };
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(30), send_all).await {
        refused = r;
    }
    ensure!(refused, "the server took a 60 MiB message");
    drop(ws);
    let after = rss_kib(p.pid()).unwrap_or(0);
    ensure!(
        after < before + 16 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
    eventually(
        Duration::from_secs(5),
        "the refused message counted",
        || async {
            let m = p.metrics().await.ok()?;
            (metric(&m, "pantau_api_live_closed_total{reason=\"bad_message\"}")? >= 1.0)
                .then_some(())
        },
    )
    .await?;
    // Its stream's place is free again.
    eventually(Duration::from_secs(5), "no live stream open", || async {
        let m = p.metrics().await.ok()?;
        (metric(&m, "pantau_api_live_streams")? == 0.0).then_some(())
    })
    .await?;

    // 2. Stream caps: 3 per address, 4 in all.
    let url = p.url("/api/v1/public/live");
    let local = reqwest::Client::new();
    let mut open = Vec::new();
    for _ in 0..3 {
        let r = local.get(&url).send().await?;
        ensure!(r.status() == 200, "{}", r.status());
        open.push(r);
    }
    let r = local.get(&url).send().await?;
    ensure!(
        r.status() == 429,
        "4th stream from one address: {}",
        r.status()
    );
    let v: serde_json::Value = r.json().await?;
    ensure!(v["error"] == "too_many_streams", "{v}");
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>()?)
        .build()?;
    let r = other.get(&url).send().await?;
    ensure!(r.status() == 200, "another address: {}", r.status());
    open.push(r);
    let r = other.get(&url).send().await?;
    ensure!(r.status() == 503, "over the global cap: {}", r.status());
    let v: serde_json::Value = r.json().await?;
    ensure!(v["error"] == "busy", "{v}");
    let m = p.metrics().await?;
    ensure!(
        metric(
            &m,
            "pantau_api_live_refused_total{reason=\"streams_cap_per_ip\"}"
        ) == Some(1.0)
            && metric(&m, "pantau_api_live_refused_total{reason=\"streams_cap\"}") == Some(1.0)
            && metric(&m, "pantau_api_live_streams") == Some(4.0),
        "{m}"
    );
    drop(open);
    Ok(())
}
