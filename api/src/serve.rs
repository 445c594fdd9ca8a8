//! Serving the API's connections with hyper, bounded so that anonymous
//! clients cannot starve the rest of the process (the gateways above all):
//!
//! - at most `max_connections` at once and `max_per_ip` from one address
//!   (trusted reverse proxies are exempt from the latter), counted at
//!   accept — before any TLS handshake; over a cap the socket is closed at
//!   once and counted (`pantau_api_connections_refused_total{reason}`);
//! - a request head must arrive within `header_read_timeout` (hyper's
//!   timer; axum's own `serve` runs without one, so a client sending half
//!   a request held its connection forever);
//! - a connection with no traffic either way for `idle_timeout` is closed
//!   (live feeds send heartbeats, so they stay);
//! - a connection buffers at most [`HTTP1_MAX_BUF`] of a request head and
//!   of unsent answer (hyper's default is ~400 KiB: a stalled live stream
//!   held that much each);
//! - at shutdown every connection is told to finish; one that does not
//!   within a bound is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pantau_state::admission::{Admission, OverCap, Slot};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most bytes an HTTP/1 connection buffers, read (a request head) or
/// written and not yet taken by the client.
pub(crate) const HTTP1_MAX_BUF: usize = 64 * 1024;
use tokio_util::task::TaskTracker;

use crate::ratelimit::TrustedProxies;

/// Limits of the API's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections from one address.
    pub max_per_ip: usize,
    /// Most time a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// Most time a connection may pass without traffic either way.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 8_192,
            max_per_ip: 1_024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// Counters of the API's connections (`pantau_api_connections*`).
#[derive(Debug, Clone, Default)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections refused at accept, by reason.
    pub refused: Family<Labels, Counter>,
    /// Connections closed by the server, by reason.
    pub closed: Family<Labels, Counter>,
}

impl ConnMetrics {
    /// Registers the counters.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pantau_api");
        r.register("connections", "API connections open now", self.open.clone());
        r.register(
            "connections_refused",
            "API connections refused at accept, by reason",
            self.refused.clone(),
        );
        r.register(
            "connections_closed",
            "API connections closed by the server, by reason",
            self.closed.clone(),
        );
    }

    fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    fn close(&self, reason: &'static str) {
        self.closed.get_or_create(&vec![("reason", reason)]).inc();
    }
}

/// Admission of the API's connections: the caps and their counters.
#[derive(Debug)]
pub struct ConnGate {
    limits: ConnLimits,
    admission: Admission,
    /// Exempt from the per-address cap.
    proxies: Arc<TrustedProxies>,
    metrics: ConnMetrics,
}

impl ConnGate {
    /// A gate with `limits`; `proxies` are exempt from the per-address cap.
    pub fn new(limits: ConnLimits, proxies: Arc<TrustedProxies>, metrics: ConnMetrics) -> Self {
        Self {
            admission: Admission::new(limits.max_connections, limits.max_per_ip),
            limits,
            proxies,
            metrics,
        }
    }

    /// A slot for a connection from `peer`, or `None` (counted) over a cap.
    pub(crate) fn admit(&self, peer: SocketAddr) -> Option<Slot> {
        let slot = self
            .admission
            .admit_with(peer.ip(), !self.proxies.trusts(peer.ip()));
        match slot.over {
            None => Some(slot),
            Some(OverCap::Global) => {
                self.metrics.refuse("connection_cap");
                None
            }
            Some(OverCap::PerIp) => {
                self.metrics.refuse("connection_cap_per_ip");
                None
            }
        }
    }
}

/// Milliseconds since `epoch` of the last byte read or written.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// An I/O stream that records its activity.
struct Watched<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(poll, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How long connections get to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves one admitted connection until it ends, times out or shutdown.
pub(crate) fn spawn_connection<S>(
    tracker: &TaskTracker,
    io: S,
    peer: SocketAddr,
    slot: Slot,
    router: axum::Router,
    gate: Arc<ConnGate>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracker.spawn(async move {
        let _slot = slot;
        gate.metrics.open.inc();
        let activity = Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        });
        let io = Watched {
            io,
            activity: activity.clone(),
        };
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(gate.limits.header_read_timeout)
            .max_buf_size(HTTP1_MAX_BUF);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle = gate.limits.idle_timeout;
        let mut check = tokio::time::interval(idle / 4);
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = check.tick() => {
                    if activity.idle_for() >= idle {
                        gate.metrics.close("idle_timeout");
                        conn.as_mut().graceful_shutdown();
                        break tokio::time::timeout(DRAIN, conn.as_mut()).await.unwrap_or(Ok(()));
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    break tokio::time::timeout(DRAIN, conn.as_mut()).await.unwrap_or(Ok(()));
                }
            }
        };
        if let Err(e) = result {
            let timed_out = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(|e| e.is_timeout());
            if timed_out {
                gate.metrics.close("header_read_timeout");
                tracing::debug!(%peer, "API request head timed out.");
            } else {
                tracing::debug!(%peer, error = %e, "API connection ended with an error.");
            }
        }
        gate.metrics.open.dec();
    });
}
