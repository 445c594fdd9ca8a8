//! Ingest workers on an external MQTT 3.1.1 broker cluster (EMQX, VerneMQ,
//! HiveMQ, Mosquitto): a shared subscription
//! `$share/pantau-ingest/pantau/v1/gw/+/telemetry` so several workers split
//! the load, a persistent session (clean_session = false, stable client id
//! `pantau-ingest-{worker}`) so the broker keeps what a dead worker had not
//! acknowledged, and manual acknowledgements in arrival order, each only
//! after the envelope is committed to the ingest log (DESIGN.md §4.3).
//!
//! When a commit fails (log full, disk error) nothing more is acknowledged:
//! the session is dropped and re-established after a backoff, and the
//! broker delivers the unacknowledged messages again.
//!
//! [`Part::Consumer`] is up only while the session is connected and the
//! broker granted the subscription; every session end puts it down with
//! the reason.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::StreamExt;
use pantau_model::backoff::Backoff;
use pantau_model::topic::{GatewayTopic, TopicKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Part};
use crate::pipeline::Ingestor;

/// The shared-subscription group of all ingest workers.
pub const SHARE_FILTER: &str = "$share/pantau-ingest/pantau/v1/gw/+/telemetry";

/// Where ingest workers publish each commit (`pantau/v1/committed/WORKER`,
/// a JSON array of the committed readings), after the commit and before
/// the acknowledgement, for the API replicas' live feeds and latest values.
pub const COMMITTED_PREFIX: &str = "pantau/v1/committed/";

/// What every API replica subscribes to (no shared group: each gets all).
pub const COMMITTED_FILTER: &str = "pantau/v1/committed/+";

/// Longest a worker takes to leave the shared subscription at shutdown.
const LEAVE_DEADLINE: Duration = Duration::from_secs(6);

/// After leaving, how long no message must come before the worker stops.
const LEAVE_QUIET: Duration = Duration::from_millis(500);

/// How to reach the external broker.
#[derive(Clone)]
pub struct ConsumerConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS client configuration (`mqtts://`), `None` for `mqtt://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Stable worker name; the client id is `pantau-ingest-{worker_id}`.
    pub worker_id: String,
    /// Username, if the broker wants one.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// At shutdown, leave the shared subscription first (unsubscribe, and
    /// take what the broker still hands over until it confirms), so a
    /// worker removed for good holds no share of the telemetry in its
    /// persistent session. Off by default: for the last worker of a group
    /// the broker would then keep nothing for it while it restarts.
    pub leave_on_stop: bool,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("worker_id", &self.worker_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Connection(String),
    Commit(String),
    /// The broker refused the shared subscription.
    Refused(String),
}

/// Consumes until `shutdown`, reconnecting with backoff.
pub async fn consume(
    cfg: ConsumerConfig,
    ingestor: Arc<Ingestor>,
    health: Health,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
        .expect("valid backoff bounds");
    loop {
        let end = session(&cfg, &ingestor, &health, &shutdown, &mut backoff).await;
        let reason = match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Connection(e) => e,
            SessionEnd::Commit(e) => e,
            SessionEnd::Refused(e) => e,
        };
        health.down(
            Part::Consumer,
            format_args!("broker {}:{}: {reason}", cfg.host, cfg.port),
        );
        let delay = backoff.next_delay();
        tracing::warn!(worker = %cfg.worker_id, error = %reason, retry_in_ms = delay.as_millis() as u64, "Broker session ended, reconnecting.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn session(
    cfg: &ConsumerConfig,
    ingestor: &Arc<Ingestor>,
    health: &Health,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> SessionEnd {
    let mut opts = MqttOptions::new(
        format!("pantau-ingest-{}", cfg.worker_id),
        cfg.host.clone(),
        cfg.port,
    );
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
    if let (Some(u), p) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u.clone(), p.clone().unwrap_or_default());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    }
    // Commit announcements are QoS 1: while the broker has not acked a
    // window of them, the client takes no request (acks included), so the
    // window is wide and what does not fit in the channel waits in
    // `outbox`, in order, instead of ending the session (which would have
    // the broker redeliver everything in flight).
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let committed_topic = format!("{COMMITTED_PREFIX}{}", cfg.worker_id);
    // Commits in flight, in arrival order; acks leave in that order.
    let mut pending = FuturesOrdered::new();
    let mut outbox = std::collections::VecDeque::new();
    // Set once leaving the shared subscription: until when to wait for the
    // broker's confirmation.
    let mut leaving: Option<tokio::time::Instant> = None;
    let (mut left, mut quiet_since) = (false, tokio::time::Instant::now());
    loop {
        flush(&client, &committed_topic, &mut outbox);
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    tracing::info!(worker = %cfg.worker_id, session_present = ack.session_present, "Connected to the external broker.");
                    if let Err(e) = client.try_subscribe(SHARE_FILTER, QoS::AtLeastOnce) {
                        return SessionEnd::Connection(e.to_string());
                    }
                }
                Ok(Event::Incoming(Packet::UnsubAck(_))) if leaving.is_some() => {
                    // What the broker had queued for this session before
                    // may still come: taken until it has been quiet a while.
                    tracing::info!(worker = %cfg.worker_id, "Left the shared subscription; taking what is still queued.");
                    left = true;
                    quiet_since = tokio::time::Instant::now();
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        return SessionEnd::Refused(format!("subscription to {SHARE_FILTER} refused"));
                    }
                    health.up(Part::Consumer);
                    tracing::info!(worker = %cfg.worker_id, filter = SHARE_FILTER, "Subscribed.");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    quiet_since = tokio::time::Instant::now();
                    let ingestor = ingestor.clone();
                    pending.push_back(async move {
                        let gateway = GatewayTopic::parse(&p.topic)
                            .ok()
                            .filter(|t| t.kind == TopicKind::Telemetry);
                        let result = match gateway {
                            Some(t) => ingestor
                                .ingest_committed(t.gateway.as_str(), &[&p.payload[..]])
                                .await
                                .map(|(_, committed)| Some(committed)),
                            None => {
                                ingestor.metrics().reject_envelope("foreign_topic");
                                Ok(None)
                            }
                        };
                        (p, result)
                    });
                }
                Ok(_) => {}
                Err(e) => return SessionEnd::Connection(e.to_string()),
            },
            Some((publish, result)) = pending.next(), if !pending.is_empty() => match result {
                Ok(committed) => {
                    // The commit goes out before the ack, on the same
                    // connection: if this worker dies before either is
                    // sent, the broker redelivers and whoever commits
                    // again publishes again.
                    if let Some(c) = committed.filter(|c| !c.readings().is_empty()) {
                        outbox.push_back(Out::Publish(serde_json::to_vec(c.readings()).unwrap_or_default()));
                    }
                    outbox.push_back(Out::Ack(publish));
                    flush(&client, &committed_topic, &mut outbox);
                }
                // Not durable: acknowledge nothing more; the broker redelivers
                // after the reconnect.
                Err(e) => return SessionEnd::Commit(e.to_string()),
            },
            _ = shutdown.cancelled(), if leaving.is_none() => {
                if cfg.leave_on_stop && client.try_unsubscribe(SHARE_FILTER).is_ok() {
                    tracing::info!(worker = %cfg.worker_id, filter = SHARE_FILTER, "Leaving the shared subscription before stopping.");
                    leaving = Some(tokio::time::Instant::now() + LEAVE_DEADLINE);
                    continue;
                }
                break;
            }
            _ = tokio::time::sleep_until(quiet_since + LEAVE_QUIET), if left && pending.is_empty() => break,
            _ = tokio::time::sleep_until(leaving.unwrap_or_else(tokio::time::Instant::now)), if leaving.is_some() => {
                tracing::warn!(worker = %cfg.worker_id, "Leaving the shared subscription took too long; stopping.");
                break;
            }
        }
    }
    // Let commits in flight finish and acknowledge them.
    while let Some((publish, result)) = pending.next().await {
        let Ok(committed) = result else { break };
        if let Some(c) = committed.filter(|c| !c.readings().is_empty()) {
            outbox.push_back(Out::Publish(
                serde_json::to_vec(c.readings()).unwrap_or_default(),
            ));
        }
        outbox.push_back(Out::Ack(publish));
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        flush(&client, &committed_topic, &mut outbox);
        while !outbox.is_empty() && eventloop.poll().await.is_ok() {
            flush(&client, &committed_topic, &mut outbox);
        }
    })
    .await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    SessionEnd::Shutdown
}

/// What a worker still has to hand its MQTT client, in order.
enum Out {
    /// A commit announcement (the JSON of its readings).
    Publish(Vec<u8>),
    /// The acknowledgement of a committed message.
    Ack(rumqttc::Publish),
}

/// Hands the client what fits in its request channel, in order; the rest
/// waits for the event loop to make room. Never waits itself (the event
/// loop is polled by the same task).
fn flush(client: &AsyncClient, topic: &str, outbox: &mut std::collections::VecDeque<Out>) {
    while let Some(next) = outbox.front() {
        let sent = match next {
            Out::Publish(body) => client.try_publish(topic, QoS::AtLeastOnce, false, body.clone()),
            Out::Ack(p) => client.try_ack(p),
        };
        if sent.is_err() {
            // Full (the event loop owns the other end, so it is not gone).
            return;
        }
        outbox.pop_front();
    }
}

/// An API replica's subscription to the ingest workers' commits
/// ([`COMMITTED_FILTER`]): a persistent session (client id
/// `pantau-api-{worker_id}`, clean_session = false) so a replica that was
/// away gets what it missed, each message mirrored into the replica's own
/// log (latest values) and live feeds before it is acknowledged. A body
/// that is not a list of readings is counted (`bad_committed`) and
/// acknowledged, never retried forever. Runs until `shutdown`.
pub async fn mirror(
    cfg: ConsumerConfig,
    ingestor: Arc<Ingestor>,
    health: Health,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
        .expect("valid backoff bounds");
    loop {
        let reason = match mirror_session(&cfg, &ingestor, &health, &shutdown, &mut backoff).await {
            SessionEnd::Shutdown => return,
            SessionEnd::Connection(e) | SessionEnd::Commit(e) | SessionEnd::Refused(e) => e,
        };
        health.down(
            Part::Consumer,
            format_args!("broker {}:{}: {reason}", cfg.host, cfg.port),
        );
        let delay = backoff.next_delay();
        tracing::warn!(replica = %cfg.worker_id, error = %reason, retry_in_ms = delay.as_millis() as u64, "Broker session ended, reconnecting.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn mirror_session(
    cfg: &ConsumerConfig,
    ingestor: &Arc<Ingestor>,
    health: &Health,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> SessionEnd {
    let mut opts = MqttOptions::new(
        format!("pantau-api-{}", cfg.worker_id),
        cfg.host.clone(),
        cfg.port,
    );
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(4 * 1024 * 1024, 1024 * 1024);
    if let (Some(u), p) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u.clone(), p.clone().unwrap_or_default());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut pending = FuturesOrdered::new();
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    tracing::info!(replica = %cfg.worker_id, session_present = ack.session_present, "Connected to the external broker.");
                    if let Err(e) = client.try_subscribe(COMMITTED_FILTER, QoS::AtLeastOnce) {
                        return SessionEnd::Connection(e.to_string());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        return SessionEnd::Refused(format!("subscription to {COMMITTED_FILTER} refused"));
                    }
                    health.up(Part::Consumer);
                    tracing::info!(replica = %cfg.worker_id, filter = COMMITTED_FILTER, "Subscribed to the ingest workers' commits.");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let ingestor = ingestor.clone();
                    pending.push_back(async move {
                        let result = match serde_json::from_slice::<Vec<crate::log::LoggedReading>>(&p.payload) {
                            Ok(readings) => ingestor.mirror(readings).await,
                            Err(e) => {
                                ingestor.metrics().reject_envelope("bad_committed");
                                tracing::warn!(topic = %p.topic, error = %e, "A commit announcement is not a list of readings; skipped.");
                                Ok(())
                            }
                        };
                        (p, result)
                    });
                }
                Ok(_) => {}
                Err(e) => return SessionEnd::Connection(e.to_string()),
            },
            Some((publish, result)) = pending.next(), if !pending.is_empty() => match result {
                Ok(()) => {
                    if let Err(e) = client.try_ack(&publish) {
                        return SessionEnd::Connection(e.to_string());
                    }
                }
                Err(e) => return SessionEnd::Commit(e.to_string()),
            },
            _ = shutdown.cancelled() => {
                while let Some((publish, result)) = pending.next().await {
                    if result.is_err() || client.try_ack(&publish).is_err() {
                        break;
                    }
                }
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
                return SessionEnd::Shutdown;
            }
        }
    }
}
