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

pub mod agency;
mod commit;
mod conn;
mod connect;
pub mod metrics;
mod reason;
pub mod router;
mod sessions;
pub mod tls;
mod wire;

/// Entry points for the fuzz targets in `tests/fuzz` (not an API).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::wire::frames;
}

use std::sync::Arc;
use std::time::Duration;

use pantau_ingest::Ingestor;
use pantau_state::StateDb;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics::BrokerMetrics;
pub use pantau_state::presence::{GatewayPresence, Presence};
pub use router::{Link, RouterHandle, RouterLimits};

/// Pause after a failed `accept` (out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Gatekeeper settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Most time a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Most TLS handshakes in progress at once (a flood waits, others don't).
    pub max_handshakes: usize,
    /// Most time between the handshake and CONNECT.
    pub connect_timeout: Duration,
    /// Largest MQTT remaining length accepted, bytes.
    pub max_packet_size: usize,
    /// Shortest keep-alive accepted (a smaller non-zero one is raised).
    pub min_keep_alive: Duration,
    /// Keep-alive granted to clients asking for 0 or more than this.
    pub max_keep_alive: Duration,
    /// Most gateway connections at once.
    pub max_connections: usize,
    /// Most connections from one source address (NAT'd fleets share one).
    pub max_connections_per_ip: usize,
    /// Sustained telemetry publishes per second per connection.
    pub publish_rate: u32,
    /// Publishes a connection may burst above the rate.
    pub publish_burst: u32,
    /// Publishes of one connection committed concurrently; their
    /// acknowledgements still leave in arrival order.
    pub inflight_window: usize,
    /// Accept a clean-session client id other than the gateway id (for
    /// stock tools that invent one). Persistent sessions must always use
    /// the gateway id.
    pub allow_any_client_id: bool,
    /// Also hand telemetry to rumqttd for MQTT live fan-out. Off by
    /// default: under the gateway ACL no MQTT client can subscribe to
    /// telemetry, and the platform's own live feeds (SSE) come from the
    /// ingest path, so the router would do the work for nobody. Status
    /// messages (retained) always go to rumqttd.
    pub mqtt_fanout: bool,
    /// Most sockets from one address still in the TLS handshake or waiting
    /// for CONNECT; more are closed at once, before any handshake work.
    pub max_pending_per_ip: usize,
    /// Most time one write to a gateway may take: a gateway that stops
    /// reading (while it floods PINGREQ, say) is disconnected, and neither
    /// its task nor shutdown hangs on it.
    pub write_timeout: Duration,
}

/// Over-cap connections answered cleanly (CONNACK 3) at once; beyond that
/// they are closed without a handshake.
const MAX_REFUSALS: usize = 64;
/// Time an over-cap connection gets for its handshake and CONNECT, to be
/// told it is refused.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 512,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 256 * 1024,
            min_keep_alive: Duration::from_secs(5),
            max_keep_alive: Duration::from_secs(600),
            max_connections: 20_000,
            max_connections_per_ip: 2_000,
            publish_rate: 500,
            publish_burst: 1_000,
            inflight_window: 64,
            allow_any_client_id: false,
            mqtt_fanout: false,
            max_pending_per_ip: 64,
            write_timeout: Duration::from_secs(10),
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
    /// Connection counts for the caps.
    admission: pantau_state::admission::Admission,
    /// Sockets still in TLS or waiting for CONNECT, per address.
    pending: pantau_state::admission::Admission,
    /// Over-cap connections being refused cleanly right now.
    refusals: Arc<tokio::sync::Semaphore>,
    /// Limits concurrent TLS handshakes.
    handshakes: tokio::sync::Semaphore,
    /// Per-gateway connection state.
    presence: Arc<Presence>,
    /// The live connection of each gateway (takeover).
    sessions: sessions::Sessions,
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
    /// Where gateway presence is kept (read by the API).
    pub presence: Arc<Presence>,
    /// Revoked certificate serials, shared with the TLS configuration's
    /// client verifier (`tls::server_config_with`); refreshed here.
    pub revoked_certs: tls::Denylist,
}

/// How often the state database is asked for new revocations (the CLI
/// revokes from another process).
const REVOCATION_POLL: Duration = Duration::from_millis(250);

/// Loads the revoked certificate serials into the denylist.
async fn reload_denylist(state: &Arc<StateDb>, revoked: &tls::Denylist) {
    let (state, revoked) = (state.clone(), revoked.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        let serials = state.revoked_serials()?;
        *revoked.write().unwrap_or_else(|p| p.into_inner()) = serials;
        Ok::<_, pantau_state::Error>(())
    })
    .await;
    if let Ok(Err(e)) = loaded {
        tracing::error!(error = %e, "Reading revoked certificates failed.");
    }
}

/// Ends the live session of every gateway revoked from now on, within
/// [`REVOCATION_POLL`], and keeps the certificate denylist current.
async fn watch_revocations(shared: Arc<Shared>, revoked: tls::Denylist) {
    let state = shared.state.clone();
    reload_denylist(&state, &revoked).await;
    let s = state.clone();
    let mut last = tokio::task::spawn_blocking(move || s.last_revocation())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REVOCATION_POLL) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let (s, after) = (state.clone(), last);
        let new = match tokio::task::spawn_blocking(move || s.revocations_after(after)).await {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Reading revocations failed.");
                continue;
            }
            Err(_) => continue,
        };
        if new.is_empty() {
            continue;
        }
        reload_denylist(&state, &revoked).await;
        for (id, gateway) in new {
            last = id;
            let connected = shared.sessions.revoke(&gateway);
            tracing::info!(gateway, connected, "Gateway revoked; its connection ends.");
        }
    }
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
        admission: pantau_state::admission::Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
        ),
        pending: pantau_state::admission::Admission::new(
            config.max_connections.max(1),
            config.max_pending_per_ip.max(1),
        ),
        refusals: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS)),
        handshakes: tokio::sync::Semaphore::new(config.max_handshakes.max(1)),
        presence: deps.presence,
        sessions: sessions::Sessions::default(),
        config,
        acceptor: TlsAcceptor::from(deps.tls),
        router: deps.router,
        ingestor: deps.ingestor,
        state: deps.state,
        metrics: deps.metrics,
        shutdown: shutdown.clone(),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(watch_revocations(shared.clone(), deps.revoked_certs));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(connect::serve(stream, peer, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving,
                    // but back off, or a full descriptor table would spin a
                    // core on an accept that fails at once.
                    shared.metrics.refuse(reason::Refused::AcceptFailed);
                    tracing::warn!(error = %e, retry_in_ms = ACCEPT_BACKOFF.as_millis() as u64, "Accept failed.");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}
