//! The fault suite's harness (`tests/tests/faults.rs`): a TCP fault proxy
//! put between two real parts, and the rows of the reliability table.
//!
//! [`FaultProxy`] forwards a loopback port to a target and, on command,
//! cuts every connection and refuses new ones ([`Fault::Cut`]), keeps
//! connections open but silently drops every byte both ways — a half-open
//! link, as when a cellular modem loses its carrier ([`Fault::Blackhole`]),
//! or delays every chunk ([`Fault::Delay`]). Loss and reordering below TCP
//! need `tc netem`, which a container may not offer; over TCP they show as
//! delays and stalls, which these cover.
//!
//! Each scenario records a [`Row`] under `target/faults/`;
//! `tests/faults.sh` runs the suite and renders them into the README's
//! reliability table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards.
    Pass,
    /// Closes every connection; new ones are accepted and closed at once.
    Cut,
    /// Connections stay open, nothing gets through either way (new ones
    /// are accepted and hang).
    Blackhole,
    /// Every chunk waits this long before it is forwarded.
    Delay(Duration),
    /// Packet loss and reordering as a TCP connection lives them (the
    /// kernel here has no `netem` to drop packets below TCP): this
    /// percentage of chunks is held for a retransmission timeout (200 ms,
    /// doubling while losses follow each other, at most 3.2 s), the others
    /// are forwarded after 0–20 ms of jitter (reordered packets show as
    /// jitter once TCP has put them back in order).
    Lossy(u8),
}

/// A TCP proxy from a loopback port to `target`, with faults on command.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Fault>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Fault::Pass);
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let rx = rx.clone();
                tokio::spawn(async move {
                    let _ = connection(client, target, rx).await;
                });
            }
        });
        Ok(Self {
            addr,
            mode,
            accepted,
            task,
        })
    }

    /// Switches the fault (applies to open connections at once).
    pub fn set(&self, fault: Fault) {
        let _ = self.mode.send(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Fault>,
) -> Result<()> {
    // A connection made during a cut is closed; during a blackhole it hangs.
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Fault::Cut => return Ok(()),
            Fault::Blackhole => {
                if mode.changed().await.is_err() {
                    return Ok(());
                }
            }
            _ => break,
        }
    }
    let server = TcpStream::connect(target).await?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        r = pipe(cr, sw, mode.clone()) => r,
        r = pipe(sr, cw, mode) => r,
    }
}

/// Forwards one direction under the current fault.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Fault>,
) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    // A small xorshift per direction, seeded from the clock.
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut losses = 0u32;
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => r?,
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Fault::Cut {
                    return Ok(());
                }
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        let fault = *mode.borrow();
        match fault {
            Fault::Pass => {}
            Fault::Cut => return Ok(()),
            // Swallowed, as a dead link would.
            Fault::Blackhole => continue,
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Lossy(percent) => {
                let wait = if rand(100) < u64::from(percent) {
                    losses = (losses + 1).min(5);
                    Duration::from_millis(100 << losses)
                } else {
                    losses = 0;
                    Duration::from_millis(rand(21))
                };
                tokio::time::sleep(wait).await;
            }
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// One line of the reliability table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Order in the table.
    pub order: u32,
    /// The fault or input class.
    pub fault: String,
    /// How it was injected.
    pub injection: String,
    /// The load meanwhile.
    pub load: String,
    /// What happened.
    pub outcome: String,
    /// Acknowledged readings missing from the store afterwards.
    pub lost: u64,
    /// Readings stored more than once.
    pub duplicated: u64,
    /// `quick` (CI) or `long`.
    pub mode: String,
}

impl Row {
    /// Writes the row to `target/faults/NAME.json`.
    pub fn record(&self, name: &str) -> Result<()> {
        let dir = rows_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec_pretty(self)?,
        )?;
        Ok(())
    }
}

/// Where rows are written.
pub fn rows_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("faults")
}

/// Whether the suite runs long (`PANTAU_FAULTS=long`): more kills, longer
/// faults, more load.
pub fn long() -> bool {
    std::env::var("PANTAU_FAULTS").is_ok_and(|v| v == "long")
}

/// The mode's name for the table.
pub fn mode() -> &'static str {
    if long() {
        "long"
    } else {
        "quick"
    }
}
