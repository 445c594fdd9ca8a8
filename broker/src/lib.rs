//! Pantau's MQTT gatekeeper in front of an embedded rumqttd router.
//!
//! Gateways never talk to rumqttd directly. Pantau accepts TCP, owns TLS
//! (with a handshake timeout), reads MQTT 3.1.1 with rumqttd's public codec,
//! authenticates each CONNECT against the state database, enforces the
//! topic ACL, and commits telemetry through the ingest path *before* it
//! acknowledges. Only then does a publish reach rumqttd, over an in-process
//! link, for best-effort live fan-out (a lagging rumqttd subscriber silently
//! skips messages, so rumqttd is never the path to storage). See DESIGN.md
//! §4–5 for the contracts and the rumqttd facts this design works around.

#![forbid(unsafe_code)]

mod conn;
pub mod metrics;
pub mod router;
pub mod tls;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use pantau_ingest::Ingestor;
use pantau_state::StateDb;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics::BrokerMetrics;
pub use router::{RouterHandle, RouterLimits};

/// Gatekeeper settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Most time a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Most time between the handshake and CONNECT.
    pub connect_timeout: Duration,
    /// Largest MQTT remaining length accepted, bytes.
    pub max_packet_size: usize,
    /// Keep-alive granted to clients asking for 0 or more than this.
    pub max_keep_alive: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 256 * 1024,
            max_keep_alive: Duration::from_secs(600),
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    /// Limits and timeouts.
    config: BrokerConfig,
    /// TLS server side.
    acceptor: TlsAcceptor,
    /// rumqttd, for live fan-out.
    router: RouterHandle,
    /// Durable path for telemetry.
    ingestor: Arc<Ingestor>,
    /// Gateway credentials.
    state: Arc<StateDb>,
    /// Counters.
    metrics: BrokerMetrics,
    /// Fired when the server stops.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Everything the gatekeeper needs from the rest of the platform.
#[derive(Debug, Clone)]
pub struct BrokerDeps {
    /// TLS configuration of the listener.
    pub tls: Arc<rustls::ServerConfig>,
    /// The router handle (shared with platform-side publishers).
    pub router: RouterHandle,
    /// Where telemetry is committed.
    pub ingestor: Arc<Ingestor>,
    /// Where gateway credentials live.
    pub state: Arc<StateDb>,
    /// Counters to update.
    pub metrics: BrokerMetrics,
}

/// Serves MQTT over TLS on `listener` until `shutdown` fires, then closes
/// every connection and returns once they are gone.
pub async fn run(
    config: BrokerConfig,
    deps: BrokerDeps,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        config,
        acceptor: TlsAcceptor::from(deps.tls),
        router: deps.router,
        ingestor: deps.ingestor,
        state: deps.state,
        metrics: deps.metrics,
        shutdown: shutdown.clone(),
    });
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(conn::serve(stream, peer, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving.
                    shared.metrics.refuse("accept_failed");
                    tracing::warn!(error = %e, "Accept failed.");
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}
