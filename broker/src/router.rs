//! rumqttd's router, used only for live fan-out, behind one feeder thread.
//!
//! rumqttd's in-process links have sharp edges (DESIGN.md §5): `LinkTx`
//! sends block on the router's bounded channel, `LinkBuilder::build()`
//! blocks until the router answers, and connection ids are reused slots,
//! so a stale Disconnect can kill a newer connection. All of that is
//! confined here: one thread owns every `LinkTx` and performs every build
//! and send in arrival order. Connections talk to it through a bounded
//! async queue, so a busy router slows publishers down instead of blocking
//! tokio workers. A client id taken over by a new connection has its old
//! link disconnected first, and the old key is forgotten, so the old
//! connection's own late Disconnect can never reach the new one.
//!
//! A gateway's subscription to its commands is registered at the QoS it
//! asked for, at most 1 (DESIGN.md §3), and its SUBACK carries what the
//! router granted; the gateway's PUBACKs of forwarded commands go back to
//! the router in order. A persistent session (clean_session = 0) lives in
//! the router's memory while the process runs: its subscriptions and the
//! commands published while it was away survive a reconnect, not a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, PubAck, PubAckReason, Publish, Subscribe,
};
use rumqttd::{Notification, Router, RouterConfig};
use tokio::sync::{mpsc, oneshot};

/// Commands queued to the feeder before senders wait.
const FEEDER_QUEUE: usize = 4096;

/// Identifies one link for the feeder.
pub type LinkKey = u64;

/// Router sizing.
#[derive(Debug, Clone)]
pub struct RouterLimits {
    /// Most simultaneous links.
    pub max_connections: usize,
    /// Bytes per log segment of each topic filter.
    pub max_segment_size: usize,
    /// Segments kept per topic filter.
    pub max_segment_count: usize,
}

impl Default for RouterLimits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_segment_size: 1024 * 1024,
            max_segment_count: 4,
        }
    }
}

#[derive(Debug)]
enum Cmd {
    Connect {
        client_id: String,
        clean_session: bool,
        reply: oneshot::Sender<Result<Link, String>>,
    },
    Publish {
        key: LinkKey,
        publish: Publish,
    },
    Subscribe {
        key: LinkKey,
        subscribe: Subscribe,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Ack {
        key: LinkKey,
        pkid: u16,
    },
    Unsubscribe {
        key: LinkKey,
        filter: String,
    },
    Disconnect {
        key: LinkKey,
    },
}

/// A link into the router.
#[derive(Debug)]
pub struct Link {
    /// The feeder's key for it.
    pub key: LinkKey,
    /// What the router sends to the link.
    pub rx: LinkRx,
    /// The router still held a persistent session of this client id
    /// (CONNACK `session_present`).
    pub session_present: bool,
}

/// Why the router could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The feeder thread has stopped.
    #[error("the router feeder has stopped")]
    Gone,
    /// The router refused the link.
    #[error("the router refused the link: {0}")]
    Refused(String),
    /// The router did not take a subscription.
    #[error("the router refused the subscription: {0}")]
    Subscribe(String),
}

/// A cheap, cloneable handle to the router's feeder.
#[derive(Debug, Clone)]
pub struct RouterHandle {
    tx: mpsc::Sender<Cmd>,
    /// The platform's own link, shared for status messages, wills and
    /// telemetry fan-out on behalf of gateways.
    platform: Arc<tokio::sync::OnceCell<LinkKey>>,
}

/// Client id of the platform's shared link (not a valid gateway id).
const PLATFORM_CLIENT: &str = "pantau_platform";

impl RouterHandle {
    /// Starts rumqttd's router thread and the feeder thread.
    #[allow(clippy::field_reassign_with_default)]
    pub fn start(limits: &RouterLimits) -> std::io::Result<Self> {
        // RouterConfig has private fields, so it cannot be built with a
        // struct literal.
        let mut config = RouterConfig::default();
        config.max_connections = limits.max_connections;
        config.max_outgoing_packet_count = 200;
        config.max_segment_size = limits.max_segment_size;
        config.max_segment_count = limits.max_segment_count;
        let router_tx = Router::new(0, config).spawn();
        // The router's event type is private, so its sender is only ever
        // held by this closure.
        let build = move |client_id: &str, clean: bool| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                .build()
                .map_err(|e| e.to_string())
        };
        let (tx, rx) = mpsc::channel(FEEDER_QUEUE);
        thread::Builder::new()
            .name("router-feeder".into())
            .spawn(move || feeder(rx, build))?;
        Ok(Self {
            tx,
            platform: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// Publishes through the platform's shared link (made on first use; a
    /// task keeps its receive side drained).
    pub async fn publish_platform(
        &self,
        topic: bytes::Bytes,
        payload: bytes::Bytes,
        retain: bool,
    ) -> Result<(), RouterError> {
        let key = self
            .platform
            .get_or_try_init(|| async {
                let Link { key, mut rx, .. } = self.connect(PLATFORM_CLIENT, true).await?;
                tokio::spawn(async move {
                    while let Ok(note) = rx.next().await {
                        if matches!(note, Some(Notification::Unschedule))
                            && rx.wake().await.is_err()
                        {
                            break;
                        }
                    }
                });
                Ok::<_, RouterError>(key)
            })
            .await?;
        self.publish(*key, topic, payload, retain).await
    }

    async fn send(&self, cmd: Cmd) -> Result<(), RouterError> {
        self.tx.send(cmd).await.map_err(|_| RouterError::Gone)
    }

    /// Opens a link for `client_id`, replacing any link it already has.
    pub async fn connect(&self, client_id: &str, clean_session: bool) -> Result<Link, RouterError> {
        let (reply, wait) = oneshot::channel();
        self.send(Cmd::Connect {
            client_id: client_id.to_owned(),
            clean_session,
            reply,
        })
        .await?;
        wait.await
            .map_err(|_| RouterError::Gone)?
            .map_err(RouterError::Refused)
    }

    /// Publishes on behalf of a link (QoS 0 fan-out; `retain` is kept).
    pub async fn publish(
        &self,
        key: LinkKey,
        topic: bytes::Bytes,
        payload: bytes::Bytes,
        retain: bool,
    ) -> Result<(), RouterError> {
        self.send(Cmd::Publish {
            key,
            publish: Publish::new(topic, payload, retain),
        })
        .await
    }

    /// Subscribes a link to `filters` (path and QoS) under the client's
    /// packet id; the router answers with a SUBACK on the link.
    pub async fn subscribe(
        &self,
        key: LinkKey,
        pkid: u16,
        filters: Vec<Filter>,
    ) -> Result<(), RouterError> {
        let (reply, wait) = oneshot::channel();
        self.send(Cmd::Subscribe {
            key,
            subscribe: Subscribe { pkid, filters },
            reply,
        })
        .await?;
        wait.await
            .map_err(|_| RouterError::Gone)?
            .map_err(RouterError::Subscribe)
    }

    /// Passes a client's PUBACK of a forwarded message to the router.
    pub async fn ack(&self, key: LinkKey, pkid: u16) -> Result<(), RouterError> {
        self.send(Cmd::Ack { key, pkid }).await
    }

    /// Unsubscribes a link from a filter.
    pub async fn unsubscribe(&self, key: LinkKey, filter: String) -> Result<(), RouterError> {
        self.send(Cmd::Unsubscribe { key, filter }).await
    }

    /// Closes a link. A link already replaced by a newer one is ignored.
    pub async fn disconnect(&self, key: LinkKey) -> Result<(), RouterError> {
        self.send(Cmd::Disconnect { key }).await
    }
}

type BuildResult = Result<(LinkTx, LinkRx, Notification), String>;

fn feeder(mut rx: mpsc::Receiver<Cmd>, build: impl Fn(&str, bool) -> BuildResult) {
    let mut links: HashMap<LinkKey, (String, LinkTx)> = HashMap::new();
    let mut by_client: HashMap<String, LinkKey> = HashMap::new();
    let mut next_key: LinkKey = 0;
    let disconnect = |tx: &mut LinkTx| {
        let packet = Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        if let Err(e) = futures::executor::block_on(tx.send(packet)) {
            tracing::warn!(error = %e, "Router link disconnect failed.");
        }
    };
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Connect {
                client_id,
                clean_session,
                reply,
            } => {
                if let Some(old) = by_client.remove(&client_id) {
                    if let Some((_, mut tx)) = links.remove(&old) {
                        disconnect(&mut tx);
                    }
                }
                let answer = match build(&client_id, clean_session) {
                    Ok((tx, rx, connack)) => {
                        next_key += 1;
                        links.insert(next_key, (client_id.clone(), tx));
                        by_client.insert(client_id, next_key);
                        // rumqttd's ack types are private; its packet
                        // conversion is not.
                        let session_present = matches!(
                            Option::<Packet>::from(connack),
                            Some(Packet::ConnAck(ack, _)) if ack.session_present
                        );
                        Ok(Link {
                            key: next_key,
                            rx,
                            session_present,
                        })
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
            Cmd::Publish { key, publish } => {
                if let Some((_, tx)) = links.get_mut(&key) {
                    if let Err(e) =
                        futures::executor::block_on(tx.send(Packet::Publish(publish, None)))
                    {
                        tracing::warn!(error = %e, "Router publish failed.");
                    }
                }
            }
            Cmd::Subscribe {
                key,
                subscribe,
                reply,
            } => {
                let answer = match links.get_mut(&key) {
                    Some((_, tx)) => {
                        futures::executor::block_on(tx.send(Packet::Subscribe(subscribe, None)))
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                    None => Err("the link is gone".to_owned()),
                };
                let _ = reply.send(answer);
            }
            Cmd::Ack { key, pkid } => {
                if let Some((_, tx)) = links.get_mut(&key) {
                    let ack = PubAck {
                        pkid,
                        reason: PubAckReason::Success,
                    };
                    if let Err(e) = futures::executor::block_on(tx.send(Packet::PubAck(ack, None)))
                    {
                        tracing::warn!(error = %e, "Router ack failed.");
                    }
                }
            }
            Cmd::Unsubscribe { key, filter } => {
                if let Some((_, tx)) = links.get_mut(&key) {
                    if let Err(e) = tx.unsubscribe(filter) {
                        tracing::warn!(error = %e, "Router unsubscribe failed.");
                    }
                }
            }
            Cmd::Disconnect { key } => {
                if let Some((client_id, mut tx)) = links.remove(&key) {
                    if by_client.get(&client_id) == Some(&key) {
                        by_client.remove(&client_id);
                    }
                    disconnect(&mut tx);
                }
            }
        }
    }
}
