//! One gateway connection through the gatekeeper: admission (connection
//! caps), TLS handshake (bounded in number and time), CONNECT with
//! identity from a client certificate or a token, then packets in both
//! directions.
//!
//! Telemetry takes the durable path — validate → commit to the ingest log →
//! PUBACK — and only then, if MQTT fan-out is enabled, goes to rumqttd for
//! best-effort live delivery (status messages always do). Up
//! to `inflight_window` publishes of a connection are committed
//! concurrently (so many gateways and many envelopes share group commits),
//! but their acknowledgements leave strictly in arrival order. QoS 0
//! telemetry takes the same path without an acknowledgement: it is best
//! effort, since a gateway cannot know whether it arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use governor::{Quota, RateLimiter};
use pantau_model::topic::{topic, GatewayTopic, TopicKind};
use pantau_model::{GatewayId, Timestamp};
use rumqttd::local::LinkRx;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, LastWill, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Publish, SubAck, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::admission::OverCap;
use crate::router::LinkKey;
use crate::tls::cert_identity;
use crate::wire::{Frame, Wire, WireError};
use crate::Shared;

/// Why a connection ended, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the client: no will.
    Clean,
    /// Anything else: the will is published.
    Unclean(&'static str),
}

pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let slot = shared.admission.admit(peer.ip());
    let _ = stream.set_nodelay(true);
    // A stalled or slow client holds one handshake permit for at most the
    // handshake timeout; it never delays anyone's accept.
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, shared.handshakes.acquire()).await
    else {
        shared.metrics.refuse("handshake_queue_full");
        return;
    };
    let handshake = tokio::time::timeout_at(deadline, shared.acceptor.accept(stream)).await;
    drop(permit);
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.metrics.refuse("tls_handshake_failed");
            tracing::info!(%peer, error = %e, "TLS handshake failed.");
            return;
        }
        Err(_) => {
            shared.metrics.refuse("tls_handshake_timeout");
            tracing::info!(%peer, "TLS handshake timed out.");
            return;
        }
    };
    let cert_id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(cert_identity);
    let wire = Wire::new(tls, shared.config.max_packet_size);
    session(wire, peer, shared, cert_id, slot.over).await;
    drop(slot);
}

/// What CONNECT established.
struct Accepted {
    gateway: GatewayId,
    keep_alive: Duration,
    clean_session: bool,
    will: Option<LastWill>,
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    shared: &Shared,
    peer: SocketAddr,
    code: ConnectReturnCode,
    reason: &'static str,
) {
    shared.metrics.refuse(reason);
    tracing::warn!(%peer, reason, "Connection refused.");
    let _ = wire
        .send(Packet::ConnAck(
            ConnAck {
                session_present: false,
                code,
            },
            None,
        ))
        .await;
    wire.shutdown().await;
}

/// Client ids that rumqttd refuses (and that would poison its listener)
/// never get near it.
fn client_id_valid(id: &str) -> bool {
    id.len() <= 128
        && !id
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '$') || c.is_control())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Why a connection is not accepted.
enum Refusal {
    /// Answer with a CONNACK carrying this code, then close.
    Connack(ConnectReturnCode, &'static str),
    /// Just close (no CONNECT to answer).
    Close(&'static str),
}

async fn accept_connect<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    peer: SocketAddr,
    shared: &Shared,
    cert_id: Option<String>,
    over: Option<OverCap>,
) -> Option<Accepted> {
    match admit_connect(wire, shared, cert_id, over).await {
        Ok(accepted) => Some(accepted),
        Err(Refusal::Connack(code, reason)) => {
            refuse(wire, shared, peer, code, reason).await;
            None
        }
        Err(Refusal::Close(reason)) => {
            shared.metrics.refuse(reason);
            None
        }
    }
}

/// Reads CONNECT and decides: caps, client id, identity, will, keep-alive.
async fn admit_connect<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    shared: &Shared,
    cert_id: Option<String>,
    over: Option<OverCap>,
) -> Result<Accepted, Refusal> {
    use ConnectReturnCode as Code;
    let no = |code, reason| Err(Refusal::Connack(code, reason));
    let first = match timeout(shared.config.connect_timeout, wire.read()).await {
        Err(_) => return Err(Refusal::Close("connect_timeout")),
        Ok(Err(WireError::Protocol(rumqttd::protocol::Error::InvalidProtocolLevel(_)))) => {
            return no(Code::RefusedProtocolVersion, "protocol_version")
        }
        Ok(Err(e)) => return Err(Refusal::Close(e.reason())),
        Ok(Ok(f)) => f,
    };
    let Packet::Connect(connect, _, will, _, login) = first.packet else {
        return Err(Refusal::Close("not_connect"));
    };
    match over {
        Some(OverCap::Global) => return no(Code::ServiceUnavailable, "connection_cap"),
        Some(OverCap::PerIp) => return no(Code::ServiceUnavailable, "connection_cap_per_ip"),
        None => {}
    }
    if !client_id_valid(&connect.client_id) {
        return no(Code::ClientIdentifierNotValid, "client_id_invalid");
    }
    // Identity: a verified platform certificate (its CN), or a username
    // (the gateway id) with its token checked against the stored hash.
    let gateway = match (cert_id, &login) {
        (Some(cn), login) => {
            if login
                .as_ref()
                .is_some_and(|l| !l.username.is_empty() && l.username != cn)
            {
                return no(Code::NotAuthorized, "cert_username_mismatch");
            }
            let Ok(id) = GatewayId::new(cn) else {
                return no(Code::NotAuthorized, "bad_cert_identity");
            };
            let (state, name) = (shared.state.clone(), id.to_string());
            match blocking(move || state.gateway_exists(&name)).await {
                Some(Ok(true)) => id,
                Some(Ok(false)) => return no(Code::NotAuthorized, "unregistered_gateway"),
                _ => return no(Code::ServiceUnavailable, "auth_unavailable"),
            }
        }
        (None, None) => return no(Code::NotAuthorized, "no_credentials"),
        (None, Some(l)) => {
            let state = shared.state.clone();
            let (user, pass) = (l.username.clone(), l.password.clone());
            match blocking(move || state.verify_gateway(&user, &pass)).await {
                Some(Ok(true)) => GatewayId::new(l.username.clone()).or(Err(Refusal::Connack(
                    Code::BadUserNamePassword,
                    "bad_credentials",
                )))?,
                Some(Ok(false)) => return no(Code::BadUserNamePassword, "bad_credentials"),
                _ => return no(Code::ServiceUnavailable, "auth_unavailable"),
            }
        }
    };
    // The session is always keyed by the gateway id. A client id naming
    // something else is refused, unless it is a clean session and the
    // operator allowed invented ids (stock tools).
    let foreign_id = !connect.client_id.is_empty() && connect.client_id != gateway.as_str();
    if (foreign_id && (!connect.clean_session || !shared.config.allow_any_client_id))
        || (connect.client_id.is_empty() && !connect.clean_session)
    {
        return no(Code::NotAuthorized, "client_id_mismatch");
    }
    if let Some(w) = &will {
        if w.topic != topic(gateway.as_str(), TopicKind::Status).as_bytes() {
            shared.metrics.acl_violation("will");
            tracing::warn!(gateway = %gateway, topic = %String::from_utf8_lossy(&w.topic), "Last will on a foreign topic refused.");
            return no(Code::NotAuthorized, "will_acl");
        }
    }
    let (min, max) = (shared.config.min_keep_alive, shared.config.max_keep_alive);
    let keep_alive = match connect.keep_alive {
        0 => max,
        s => Duration::from_secs(u64::from(s)).clamp(min, max),
    };
    Ok(Accepted {
        gateway,
        keep_alive,
        clean_session: connect.clean_session,
        will,
    })
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut wire: Wire<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cert_id: Option<String>,
    over: Option<OverCap>,
) {
    let Some(acc) = accept_connect(&mut wire, peer, &shared, cert_id, over).await else {
        return;
    };
    // A newer connection of the same gateway takes over: the older one is
    // told to end (rumqttd would do the same for its own sessions).
    let (session_id, taken_over) = shared.sessions.begin(acc.gateway.as_str());
    let mut conn = Conn {
        wire,
        shared: shared.clone(),
        gateway: acc.gateway,
        clean_session: acc.clean_session,
        link: None,
        peer,
        limiter: RateLimiter::direct(
            Quota::per_second(rate_of(shared.config.publish_rate))
                .allow_burst(rate_of(shared.config.publish_burst)),
        ),
        inflight: FuturesOrdered::new(),
        publishes_in_flight: 0,
        batch: Vec::new(),
        taken_over,
    };
    // rumqttd links cost ~150 KiB each, so a gateway gets its own link only
    // when it needs one: a persistent session (its subscriptions live in
    // rumqttd) or a subscription. Status messages and wills go through the
    // platform's shared link.
    if !conn.clean_session && conn.ensure_link().await.is_none() {
        refuse(
            &mut conn.wire,
            &shared,
            peer,
            ConnectReturnCode::ServiceUnavailable,
            "router_refused",
        )
        .await;
        let _ = shared.sessions.end(conn.gateway.as_str(), session_id);
        return;
    }
    let connack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        },
        None,
    );
    if conn.wire.send(connack).await.is_err() {
        conn.close_link(false).await;
        let _ = shared.sessions.end(conn.gateway.as_str(), session_id);
        return;
    }
    shared.metrics.connected();
    shared
        .presence
        .connected(conn.gateway.as_str(), &peer.to_string());
    tracing::info!(%peer, gateway = %conn.gateway, "Gateway connected.");
    let (end, router_dropped) = conn.run(acc.keep_alive).await;
    conn.wire.shutdown().await;
    if let (End::Unclean(_), Some(will)) = (end, acc.will) {
        // rumqttd never fires wills for in-process links, so the gatekeeper
        // publishes the (already authorised) will itself.
        shared.presence.status(conn.gateway.as_str(), &will.message);
        let _ = shared
            .router
            .publish_platform(will.topic, will.message, will.retain)
            .await;
    }
    conn.close_link(router_dropped).await;
    let still_live = shared.sessions.end(conn.gateway.as_str(), session_id);
    shared.metrics.disconnected();
    let reason = match end {
        End::Clean => "disconnect",
        End::Unclean(r) => r,
    };
    if still_live {
        shared.presence.disconnected(conn.gateway.as_str(), reason);
    }
    tracing::info!(%peer, gateway = %conn.gateway, reason, "Gateway connection ended.");
}

/// A publish whose commit finished (or that needed none).
struct Completed {
    qos: u8,
    pkid: u16,
    /// What to hand to rumqttd for live fan-out, if anything.
    forward: Option<(Bytes, Bytes, bool)>,
}

/// Publishes committed together, completed in arrival order.
type Pending = BoxFuture<'static, Result<Vec<Completed>, pantau_ingest::Error>>;

/// A telemetry publish read but not yet handed to the ingest path.
struct Telemetry {
    qos: u8,
    pkid: u16,
    topic: Bytes,
    payload: Bytes,
}

fn rate_of(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN)
}

struct Conn<S> {
    wire: Wire<S>,
    shared: Arc<Shared>,
    gateway: GatewayId,
    /// The session kind asked for at CONNECT (used when a link is made).
    clean_session: bool,
    /// This gateway's own rumqttd link, made on first need.
    link: Option<(LinkKey, LinkRx)>,
    /// Fired when a newer connection of the same gateway arrives.
    taken_over: tokio_util::sync::CancellationToken,
    peer: SocketAddr,
    /// Publish rate limit of this connection (token bucket).
    limiter: RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        governor::clock::DefaultClock,
    >,
    /// Publishes being committed, in arrival order.
    inflight: FuturesOrdered<Pending>,
    /// Publishes in `inflight` and `batch`.
    publishes_in_flight: usize,
    /// Telemetry publishes of the current read, committed as one request
    /// (a pipelining gateway's envelopes share one trip to the log).
    batch: Vec<Telemetry>,
}

/// The next notification of a link, or never when there is no link.
async fn next_note(link: &mut Option<(LinkKey, LinkRx)>) -> Result<Option<Notification>, ()> {
    match link {
        Some((_, rx)) => rx.next().await.map_err(drop),
        None => std::future::pending().await,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// This gateway's rumqttd link, made now if it has none.
    async fn ensure_link(&mut self) -> Option<LinkKey> {
        if let Some((key, _)) = &self.link {
            return Some(*key);
        }
        match self
            .shared
            .router
            .connect(self.gateway.as_str(), self.clean_session)
            .await
        {
            Ok((key, rx)) => {
                self.link = Some((key, rx));
                Some(key)
            }
            Err(e) => {
                tracing::error!(gateway = %self.gateway, error = %e, "Router link failed.");
                None
            }
        }
    }

    /// Closes the link unless the router already dropped it (a Disconnect
    /// for a dropped link could hit a reused slot).
    async fn close_link(&mut self, router_dropped: bool) {
        if let Some((key, _)) = self.link.take() {
            if !router_dropped {
                let _ = self.shared.router.disconnect(key).await;
            }
        }
    }

    /// Runs until the connection ends; returns how, and whether the router
    /// already dropped the link (then it must not be disconnected again).
    async fn run(&mut self, keep_alive: Duration) -> (End, bool) {
        // MQTT: the server may close after 1.5 × keep-alive of silence.
        let idle = keep_alive + keep_alive / 2;
        // Only the client's own activity counts as a life sign; traffic
        // from the router must not keep a silent client open.
        let mut last_read = Instant::now();
        let mut last_presence = Instant::now();
        let window = self.shared.config.inflight_window.max(1);
        let shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                read = tokio::time::timeout_at(last_read + idle, self.wire.read()), if self.publishes_in_flight < window => {
                    let frame = match read {
                        Err(_) => return (End::Unclean("keepalive_timeout"), false),
                        Ok(Err(e)) => return (self.read_failed(e), false),
                        Ok(Ok(f)) => f,
                    };
                    last_read = Instant::now();
                    if last_read.duration_since(last_presence) >= Duration::from_secs(1) {
                        self.shared.presence.seen(self.gateway.as_str());
                        last_presence = last_read;
                    }
                    // Every packet already received in full is handled now,
                    // so the telemetry of one read is committed together.
                    let mut next = Some(frame);
                    while let Some(frame) = next.take() {
                        match self.handle(frame).await {
                            Ok(None) => {}
                            Ok(Some(End::Clean)) => {
                                // A DISCONNECT after publishes: they are
                                // committed (and acknowledged) before the
                                // connection closes, QoS 0 ones included.
                                self.submit_batch();
                                self.finish_inflight().await;
                                return (End::Clean, false);
                            }
                            Ok(Some(end)) => return (end, false),
                            Err(e) => return (End::Unclean(e.reason()), false),
                        }
                        if self.publishes_in_flight < window {
                            next = match self.wire.read_buffered() {
                                Some(Ok(f)) => Some(f),
                                Some(Err(e)) => return (self.read_failed(e), false),
                                None => None,
                            };
                        }
                    }
                    self.submit_batch();
                }
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => {
                    // The client was waiting on us, not silent.
                    last_read = Instant::now();
                    // Take every commit that is already finished, in order,
                    // and write their acknowledgements in one flush.
                    let mut next = Some(done);
                    while let Some(done) = next.take() {
                        match done {
                            Ok(completed) => {
                                self.publishes_in_flight -= completed.len();
                                for c in completed {
                                    if self.complete(c).await.is_err() {
                                        return (End::Unclean("write_failed"), false);
                                    }
                                }
                            }
                            Err(e) => {
                                // Not durable: no acknowledgement; the gateway
                                // resends after reconnecting.
                                let reason = match e {
                                    pantau_ingest::Error::LogFull { .. } => "log_full",
                                    _ => "store_failed",
                                };
                                self.shared.metrics.violation(reason);
                                tracing::error!(gateway = %self.gateway, error = %e, "Commit failed; closing without PUBACK.");
                                let _ = self.wire.flush().await;
                                return (End::Unclean(reason), false);
                            }
                        }
                        next = self.inflight.next().now_or_never().flatten();
                    }
                    if self.wire.flush().await.is_err() {
                        return (End::Unclean("write_failed"), false);
                    }
                }
                note = next_note(&mut self.link) => match note {
                    Ok(Some(Notification::Forward(fwd))) => {
                        let bytes = fwd.publish.payload.len();
                        if self.wire.send(Packet::Publish(fwd.publish, None)).await.is_err() {
                            return (End::Unclean("write_failed"), false);
                        }
                        self.shared.metrics.message_out(bytes);
                    }
                    Ok(Some(Notification::Unschedule)) => {
                        let woke = match &self.link {
                            Some((_, rx)) => rx.wake().await.is_ok(),
                            None => true,
                        };
                        if !woke {
                            return (End::Unclean("router_gone"), true);
                        }
                    }
                    Ok(Some(Notification::Disconnect(..))) => return (End::Unclean("router_disconnect"), true),
                    // Acks for the feeder's own subscribe/unsubscribe: the
                    // client already got its own SUBACK/UNSUBACK.
                    Ok(_) => {}
                    // The router dropped the link (a newer connection took
                    // over this client id).
                    Err(_) => return (End::Unclean("taken_over"), true),
                },
                _ = self.taken_over.cancelled() => return (End::Unclean("taken_over"), false),
                _ = shutdown.cancelled() => return (End::Unclean("server_shutdown"), false),
            }
        }
    }

    /// Completes every publish in flight (within a bound), writing their
    /// acknowledgements.
    async fn finish_inflight(&mut self) {
        let drain = async {
            while let Some(done) = self.inflight.next().await {
                let Ok(completed) = done else { return };
                self.publishes_in_flight -= completed.len();
                for c in completed {
                    if self.complete(c).await.is_err() {
                        return;
                    }
                }
            }
            let _ = self.wire.flush().await;
        };
        let _ = timeout(Duration::from_secs(10), drain).await;
    }

    /// Why reading failed, counted and logged.
    fn read_failed(&self, e: WireError) -> End {
        if matches!(e, WireError::Closed) {
            return End::Unclean("closed");
        }
        self.shared.metrics.violation(e.reason());
        tracing::warn!(peer = %self.peer, gateway = %self.gateway, error = %e, "Closing connection.");
        End::Unclean(e.reason())
    }

    /// Hands the telemetry read so far to the ingest path as one request.
    fn submit_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let ingestor = self.shared.ingestor.clone();
        let gateway = self.gateway.to_string();
        let fanout = self.shared.config.mqtt_fanout;
        self.inflight.push_back(
            async move {
                let payloads: Vec<&[u8]> = batch.iter().map(|t| &t.payload[..]).collect();
                let outcomes = ingestor.ingest_many(&gateway, &payloads).await?;
                Ok(batch
                    .into_iter()
                    .zip(outcomes)
                    .map(|(t, outcome)| Completed {
                        qos: t.qos,
                        pkid: t.pkid,
                        forward: (fanout && outcome.envelope_error.is_none())
                            .then_some((t.topic, t.payload, false)),
                    })
                    .collect())
            }
            .boxed(),
        );
    }

    /// Queues the acknowledgement of a finished publish (the caller
    /// flushes) and forwards it for live fan-out.
    async fn complete(&mut self, c: Completed) -> Result<(), WireError> {
        match c.qos {
            1 => self.wire.queue(Packet::PubAck(
                PubAck {
                    pkid: c.pkid,
                    reason: PubAckReason::Success,
                },
                None,
            ))?,
            2 => self.wire.queue(Packet::PubRec(
                PubRec {
                    pkid: c.pkid,
                    reason: PubRecReason::Success,
                },
                None,
            ))?,
            _ => {}
        }
        if let Some((topic, payload, retain)) = c.forward {
            let _ = self
                .shared
                .router
                .publish_platform(topic, payload, retain)
                .await;
        }
        Ok(())
    }

    async fn handle(&mut self, frame: Frame) -> Result<Option<End>, WireError> {
        self.shared.metrics.packet_in();
        match frame.packet {
            Packet::Publish(publish, _) => {
                self.on_publish(
                    publish.topic,
                    publish.payload,
                    publish.retain,
                    frame.qos,
                    frame.pkid,
                )
                .await
            }
            Packet::PubRel(rel, _) => {
                self.wire
                    .send(Packet::PubComp(
                        PubComp {
                            pkid: rel.pkid,
                            reason: PubCompReason::Success,
                        },
                        None,
                    ))
                    .await?;
                Ok(None)
            }
            Packet::Subscribe(sub, _) => {
                // A gateway may subscribe to its own command topic only: no
                // wildcards, nothing of others, no `$share` (which can panic
                // rumqttd's router for persistent sessions).
                let own_cmd = topic(self.gateway.as_str(), TopicKind::Cmd);
                if let Some(bad) = sub.filters.iter().find(|f| f.path != own_cmd) {
                    self.shared.metrics.acl_violation("subscribe");
                    tracing::warn!(peer = %self.peer, gateway = %self.gateway, topic = %bad.path, "Subscribe outside the gateway's ACL; closing.");
                    return Ok(Some(End::Unclean("subscribe_acl")));
                }
                let codes = sub
                    .filters
                    .iter()
                    .map(|_| SubscribeReasonCode::QoS0)
                    .collect();
                let Some(key) = self.ensure_link().await else {
                    return Ok(Some(End::Unclean("router_refused")));
                };
                for f in sub.filters {
                    let _ = self.shared.router.subscribe(key, f.path).await;
                }
                self.wire
                    .send(Packet::SubAck(
                        SubAck {
                            pkid: sub.pkid,
                            return_codes: codes,
                        },
                        None,
                    ))
                    .await?;
                // The platform's clock, so the gateway can report its own
                // offset (its readings carry its clock's timestamps).
                let time = format!(
                    r#"{{"cmd":"time","now":"{}"}}"#,
                    Timestamp::now().to_rfc3339()
                );
                self.wire
                    .send(Packet::Publish(Publish::new(own_cmd, time, false), None))
                    .await?;
                Ok(None)
            }
            Packet::Unsubscribe(unsub, _) => {
                let reasons = unsub
                    .filters
                    .iter()
                    .map(|_| UnsubAckReason::Success)
                    .collect();
                if let Some((key, _)) = &self.link {
                    for f in unsub.filters {
                        let _ = self.shared.router.unsubscribe(*key, f).await;
                    }
                }
                self.wire
                    .send(Packet::UnsubAck(
                        UnsubAck {
                            pkid: unsub.pkid,
                            reasons,
                        },
                        None,
                    ))
                    .await?;
                Ok(None)
            }
            Packet::PingReq(_) => {
                self.wire.send(Packet::PingResp(PingResp)).await?;
                Ok(None)
            }
            Packet::Disconnect(..) => Ok(Some(End::Clean)),
            // Acks for QoS 0 fan-out never arrive; tolerate stray ones.
            Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..) => Ok(None),
            other => {
                self.shared.metrics.violation("protocol_error");
                tracing::warn!(peer = %self.peer, gateway = %self.gateway, packet = packet_name(&other), "Unexpected packet; closing.");
                Ok(Some(End::Unclean("protocol_error")))
            }
        }
    }

    async fn on_publish(
        &mut self,
        topic_name: Bytes,
        payload: Bytes,
        retain: bool,
        qos: u8,
        pkid: u16,
    ) -> Result<Option<End>, WireError> {
        let parsed = std::str::from_utf8(&topic_name)
            .ok()
            .and_then(|t| GatewayTopic::parse(t).ok());
        let kind = match parsed {
            Some(t) if t.gateway == self.gateway && t.kind != TopicKind::Cmd => t.kind,
            _ => {
                self.shared.metrics.acl_violation("publish");
                tracing::warn!(peer = %self.peer, gateway = %self.gateway, topic = %String::from_utf8_lossy(&topic_name), "Publish outside the gateway's ACL; closing.");
                return Ok(Some(End::Unclean("publish_acl")));
            }
        };
        self.shared.metrics.bytes_in(payload.len());
        self.publishes_in_flight += 1;
        match kind {
            TopicKind::Telemetry => {
                if self.limiter.check().is_err() {
                    // Over the rate: slow this gateway down (no reads until
                    // a token is free) rather than drop anything; what was
                    // read already goes to the log meanwhile.
                    self.shared.metrics.throttled();
                    self.submit_batch();
                    self.limiter.until_ready().await;
                }
                self.batch.push(Telemetry {
                    qos,
                    pkid,
                    topic: topic_name,
                    payload,
                });
            }
            _ => {
                self.shared.presence.status(self.gateway.as_str(), &payload);
                // Acknowledged in order after the telemetry before it.
                self.submit_batch();
                self.inflight.push_back(
                    futures::future::ready(Ok(vec![Completed {
                        qos,
                        pkid,
                        forward: Some((topic_name, payload, retain)),
                    }]))
                    .boxed(),
                );
            }
        }
        Ok(None)
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::SubAck(..) => "SUBACK",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::PingResp(..) => "PINGRESP",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_rules() {
        assert!(client_id_valid("gw-a"));
        assert!(client_id_valid(""));
        for bad in ["a/b", "a+", "#", "$SYS", "a\u{0}"] {
            assert!(!client_id_valid(bad), "{bad}");
        }
        assert!(!client_id_valid(&"x".repeat(129)));
    }
}
