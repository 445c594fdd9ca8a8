//! One admitted gateway connection: packets in both directions, the topic
//! ACL, and acknowledgements after the commit (see [`crate::commit`]).
//!
//! Telemetry takes the durable path — validate → commit to the ingest log →
//! PUBACK — and only then, if MQTT fan-out is enabled, goes to rumqttd for
//! best-effort live delivery (status messages always do). QoS 0 telemetry
//! takes the same path without an acknowledgement: it is best effort, since
//! a gateway cannot know whether it arrived. Every way a connection ends is
//! an [`End`], logged and (for misbehaviour) counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{Quota, RateLimiter};
use pantau_model::topic::{topic, GatewayTopic, TopicKind};
use pantau_model::{GatewayId, Timestamp};
use rumqttd::local::LinkRx;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Filter, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Publish, QoS, RetainForwardRule, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout, Instant};

use crate::commit::{Commits, Completed, Outcome, Telemetry};
use crate::connect::{refuse, Accepted};
use crate::reason::{End, Refused, SubscribeFailed};
use crate::router::{Link, LinkKey};
use crate::wire::{Frame, Wire, WireError};
use crate::Shared;

/// Most time the router may take to answer a subscription.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most time the commits in flight at a DISCONNECT may take.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed commit, how long connections are refused (then one may
/// try again): a gateway whose window cannot be stored backs off instead
/// of reconnecting and resending it at once, over and over.
const STORAGE_PROBE: Duration = Duration::from_secs(1);

/// `Ok`: go on; `Err`: the connection ends, and why.
type Step = Result<(), End>;

/// Runs an admitted connection to its end.
pub(crate) async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    wire: Wire<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    acc: Accepted,
) {
    if shared
        .ingestor
        .log()
        .commit_failing()
        .is_some_and(|ago| ago < STORAGE_PROBE)
    {
        let mut wire = wire;
        refuse(
            &mut wire,
            &shared,
            peer,
            ConnectReturnCode::ServiceUnavailable,
            Refused::StorageFailing,
        )
        .await;
        return;
    }
    // A newer connection of the same gateway takes over: the older one is
    // told to end (rumqttd would do the same for its own sessions).
    let (session_id, live) = shared.sessions.begin(acc.gateway.as_str());
    let mut conn = Conn {
        wire,
        shared: shared.clone(),
        commits: Commits::new(
            shared.ingestor.clone(),
            acc.gateway.to_string(),
            shared.config.mqtt_fanout,
        ),
        gateway: acc.gateway,
        clean_session: acc.clean_session,
        link: None,
        peer,
        limiter: RateLimiter::direct(
            Quota::per_second(rate_of(shared.config.publish_rate))
                .allow_burst(rate_of(shared.config.publish_burst)),
        ),
        live,
    };
    // rumqttd links cost ~150 KiB each, so a gateway gets its own link only
    // when it needs one: a persistent session (its subscriptions live in
    // rumqttd), a subscription, or a clean session that must discard a
    // persistent one the router still holds (MQTT-3.1.2-6). Status
    // messages and wills go through the platform's shared link.
    let gw = conn.gateway.as_str().to_owned();
    let needs_link = if conn.clean_session {
        shared.sessions.forget_persistent(&gw)
    } else {
        shared.sessions.remember_persistent(&gw);
        true
    };
    let session_present = match needs_link {
        false => false,
        true => match conn.ensure_link().await {
            Some(present) => present && !conn.clean_session,
            None => {
                refuse(
                    &mut conn.wire,
                    &shared,
                    peer,
                    ConnectReturnCode::ServiceUnavailable,
                    Refused::NoRouterLink,
                )
                .await;
                let _ = shared.sessions.end(&gw, session_id);
                return;
            }
        },
    };
    let connack = Packet::ConnAck(
        ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
        },
        None,
    );
    if conn.wire.send(connack).await.is_err() {
        conn.close_link(End::WriteFailed).await;
        let _ = shared.sessions.end(&gw, session_id);
        return;
    }
    shared.metrics.connected();
    shared.presence.connected(&gw, &peer.to_string());
    tracing::info!(%peer, gateway = %gw, session_present, "Gateway connected.");
    let end = conn.run(acc.keep_alive).await;
    conn.wire.shutdown().await;
    // Whether this was still the gateway's live connection: the will of one
    // that was taken over is stale and never overwrites the new one's status.
    let still_live = shared.sessions.end(&gw, session_id);
    if let (true, true, Some(will)) = (end != End::Disconnect, still_live, acc.will) {
        // rumqttd never fires wills for in-process links, so the gatekeeper
        // publishes the (already authorised) will itself.
        shared.presence.status(&gw, &will.message);
        let _ = shared
            .router
            .publish_platform(will.topic, will.message, will.retain)
            .await;
    }
    conn.close_link(end).await;
    shared.metrics.disconnected();
    if still_live {
        shared.presence.disconnected(&gw, end.as_str());
    }
    tracing::info!(%peer, gateway = %gw, reason = end.as_str(), "Gateway connection ended.");
}

fn rate_of(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN)
}

struct Conn<S> {
    wire: Wire<S>,
    shared: Arc<Shared>,
    /// Publishes being committed, in arrival order.
    commits: Commits,
    gateway: GatewayId,
    /// The session kind asked for at CONNECT (used when a link is made).
    clean_session: bool,
    /// This gateway's own rumqttd link, made on first need.
    link: Option<(LinkKey, LinkRx)>,
    /// Fired when a newer connection of the same gateway arrives, or the
    /// gateway is revoked.
    live: crate::sessions::Live,
    peer: SocketAddr,
    /// Publish rate limit of this connection (token bucket).
    limiter: RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        governor::clock::DefaultClock,
    >,
}

/// The next notification of a link, or never when there is no link.
async fn next_note(link: &mut Option<(LinkKey, LinkRx)>) -> Result<Option<Notification>, ()> {
    match link {
        Some((_, rx)) => rx.next().await.map_err(drop),
        None => std::future::pending().await,
    }
}

/// Why a subscription was not put in place.
enum SubscribeError {
    /// Answer 0x80 and go on.
    Failed(SubscribeFailed),
    /// The connection ends meanwhile.
    Ended(End),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Makes this gateway's rumqttd link if it has none; `Some(whether the
    /// router held a session for it)` when the link is there.
    async fn ensure_link(&mut self) -> Option<bool> {
        if self.link.is_some() {
            return Some(false);
        }
        match self
            .shared
            .router
            .connect(self.gateway.as_str(), self.clean_session)
            .await
        {
            Ok(Link {
                key,
                rx,
                session_present,
            }) => {
                self.link = Some((key, rx));
                Some(session_present)
            }
            Err(e) => {
                tracing::error!(gateway = %self.gateway, error = %e, "Router link failed.");
                None
            }
        }
    }

    /// Closes the link unless the router already dropped it (a Disconnect
    /// for a dropped link could hit a reused slot).
    async fn close_link(&mut self, end: End) {
        if let Some((key, _)) = self.link.take() {
            if !end.router_dropped() {
                let _ = self.shared.router.disconnect(key).await;
            }
        }
    }

    /// Runs until the connection ends; returns how.
    async fn run(&mut self, keep_alive: Duration) -> End {
        // MQTT: the server may close after 1.5 × keep-alive of silence.
        let idle = keep_alive + keep_alive / 2;
        // Only the client's own activity counts as a life sign; traffic
        // from the router must not keep a silent client open.
        let mut last_read = Instant::now();
        let mut last_presence = Instant::now();
        let window = self.shared.config.inflight_window.max(1);
        let shutdown = self.shared.shutdown.clone();
        loop {
            let step = tokio::select! {
                read = tokio::time::timeout_at(last_read + idle, self.wire.read()), if self.commits.in_flight() < window => {
                    match read {
                        Err(_) => Err(End::KeepaliveTimeout),
                        Ok(Err(e)) => Err(self.read_failed(e)),
                        Ok(Ok(frame)) => {
                            last_read = Instant::now();
                            if last_read.duration_since(last_presence) >= Duration::from_secs(1) {
                                self.shared.presence.seen(self.gateway.as_str());
                                last_presence = last_read;
                            }
                            self.on_frames(frame, window).await
                        }
                    }
                }
                outcome = self.commits.next(), if !self.commits.is_idle() => {
                    // The client was waiting on us, not silent.
                    last_read = Instant::now();
                    self.on_committed(outcome).await
                }
                note = next_note(&mut self.link) => self.on_note(note).await,
                _ = self.live.end.cancelled() => Err(
                    if self.live.revoked.load(std::sync::atomic::Ordering::Acquire) {
                        End::Revoked
                    } else {
                        End::TakenOver
                    }
                ),
                _ = shutdown.cancelled() => Err(End::ServerShutdown),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Handles a packet and every one already received in full behind it,
    /// so the telemetry of one read is committed together.
    async fn on_frames(&mut self, first: Frame, window: usize) -> Step {
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            self.handle(frame).await?;
            if self.commits.in_flight() < window {
                next = self
                    .wire
                    .read_buffered()
                    .transpose()
                    .map_err(|e| self.read_failed(e))?;
            }
        }
        self.commits.submit();
        Ok(())
    }

    /// Acknowledges a finished commit and every one finished behind it, in
    /// one flush.
    async fn on_committed(&mut self, first: Outcome) -> Step {
        let mut next = Some(first);
        while let Some(outcome) = next.take() {
            self.acknowledge(outcome).await?;
            next = self.commits.next_ready();
        }
        self.wire.flush().await.map_err(|e| self.write_failed(e))
    }

    /// The one place a finished commit becomes acknowledgements (queued;
    /// the caller flushes), or ends the connection without any.
    async fn acknowledge(&mut self, outcome: Outcome) -> Step {
        match outcome {
            Ok(completed) => {
                for c in completed {
                    self.complete(c).await.map_err(|_| End::WriteFailed)?;
                }
                Ok(())
            }
            Err(e) => {
                // Not durable: no acknowledgement; the gateway resends
                // after reconnecting.
                let end = match e {
                    pantau_ingest::Error::LogFull { .. } => End::LogFull,
                    _ => End::StoreFailed,
                };
                self.shared.metrics.violation(end);
                tracing::error!(gateway = %self.gateway, error = %e, "Commit failed; closing without PUBACK.");
                let _ = self.wire.flush().await;
                Err(end)
            }
        }
    }

    /// At a DISCONNECT: the publishes before it are committed and
    /// acknowledged (QoS 0 ones included) before the connection closes,
    /// within a bound. Returns how the connection ends.
    async fn finish(&mut self) -> End {
        self.commits.submit();
        let drain = async {
            while !self.commits.is_idle() {
                let outcome = self.commits.next().await;
                self.acknowledge(outcome).await?;
            }
            self.wire.flush().await.map_err(|_| End::WriteFailed)
        };
        match timeout(FINISH_TIMEOUT, drain).await {
            Ok(Ok(())) => End::Disconnect,
            Ok(Err(end)) => end,
            Err(_) => {
                self.shared.metrics.violation(End::CommitTimeout);
                tracing::error!(gateway = %self.gateway, "Commits before DISCONNECT did not finish in time; closing without their PUBACKs.");
                End::CommitTimeout
            }
        }
    }

    /// Why reading failed, counted and logged.
    fn read_failed(&self, e: WireError) -> End {
        let end = e.end();
        if end != End::Closed {
            self.shared.metrics.violation(end);
            tracing::warn!(peer = %self.peer, gateway = %self.gateway, error = %e, "Closing connection.");
        }
        end
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

    /// Writes a packet now; a failure ends the connection (a write past
    /// its deadline is counted: the gateway does not read).
    async fn send(&mut self, packet: Packet) -> Step {
        self.wire
            .send(packet)
            .await
            .map_err(|e| self.write_failed(e))
    }

    fn write_failed(&self, e: WireError) -> End {
        match e.end() {
            End::WriteTimeout => {
                self.shared.metrics.violation(End::WriteTimeout);
                tracing::warn!(peer = %self.peer, gateway = %self.gateway, error = %e, "Closing connection.");
                End::WriteTimeout
            }
            _ => End::WriteFailed,
        }
    }

    async fn handle(&mut self, frame: Frame) -> Step {
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
                self.send(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason: PubCompReason::Success,
                    },
                    None,
                ))
                .await
            }
            Packet::Subscribe(sub, _) => self.on_subscribe(sub).await,
            Packet::Unsubscribe(unsub, _) => {
                self.throttle().await;
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
                self.send(Packet::UnsubAck(
                    UnsubAck {
                        pkid: unsub.pkid,
                        reasons,
                    },
                    None,
                ))
                .await
            }
            Packet::PingReq(_) => self.send(Packet::PingResp(PingResp)).await,
            Packet::Disconnect(..) => Err(self.finish().await),
            // A command forwarded at QoS 1 is acknowledged to the router,
            // which then sends the next one.
            Packet::PubAck(ack, _) => {
                if let Some((key, _)) = &self.link {
                    let _ = self.shared.router.ack(*key, ack.pkid).await;
                }
                Ok(())
            }
            // Acks of QoS 0 messages never arrive; tolerate stray ones.
            Packet::PubRec(..) | Packet::PubComp(..) => Ok(()),
            other => {
                self.shared.metrics.violation(End::ProtocolError);
                tracing::warn!(peer = %self.peer, gateway = %self.gateway, packet = packet_name(&other), "Unexpected packet; closing.");
                Err(End::ProtocolError)
            }
        }
    }

    /// A gateway may subscribe to its own command topic only: no wildcards,
    /// nothing of others, no `$share` (which can panic rumqttd's router for
    /// persistent sessions). The SUBACK carries what the router granted, or
    /// 0x80 when it could not (counted); then the platform's clock follows,
    /// so the gateway can report its own offset.
    async fn on_subscribe(&mut self, sub: Subscribe) -> Step {
        let own_cmd = topic(self.gateway.as_str(), TopicKind::Cmd);
        if let Some(bad) = sub.filters.iter().find(|f| f.path != own_cmd) {
            self.shared.metrics.acl_violation("subscribe");
            tracing::warn!(peer = %self.peer, gateway = %self.gateway, topic = %bad.path, "Subscribe outside the gateway's ACL; closing.");
            return Err(End::SubscribeAcl);
        }
        self.throttle().await;
        let return_codes = match self.subscribe_in_router(&sub).await {
            Ok(codes) => codes,
            Err(SubscribeError::Ended(end)) => return Err(end),
            Err(SubscribeError::Failed(reason)) => {
                self.shared.metrics.subscribe_failed(reason);
                tracing::warn!(gateway = %self.gateway, reason = reason.as_str(), "Subscription failed; answered 0x80.");
                vec![SubscribeReasonCode::Failure; sub.filters.len()]
            }
        };
        let granted = return_codes
            .iter()
            .any(|c| !matches!(c, SubscribeReasonCode::Failure));
        self.send(Packet::SubAck(
            SubAck {
                pkid: sub.pkid,
                return_codes,
            },
            None,
        ))
        .await?;
        if granted {
            let time = format!(
                r#"{{"cmd":"time","now":"{}"}}"#,
                Timestamp::now().to_rfc3339()
            );
            self.send(Packet::Publish(Publish::new(own_cmd, time, false), None))
                .await?;
        }
        Ok(())
    }

    /// Registers the filters with the router at the QoS asked for (at
    /// most QoS 1) and waits for its SUBACK; what the link receives
    /// meanwhile is handled as usual.
    async fn subscribe_in_router(
        &mut self,
        sub: &Subscribe,
    ) -> Result<Vec<SubscribeReasonCode>, SubscribeError> {
        let refused = SubscribeError::Failed(SubscribeFailed::RouterRefused);
        if self.ensure_link().await.is_none() {
            return Err(refused);
        }
        let Some((key, _)) = &self.link else {
            return Err(refused);
        };
        let filters = sub
            .filters
            .iter()
            .map(|f| Filter {
                path: f.path.clone(),
                qos: match f.qos {
                    QoS::AtMostOnce => QoS::AtMostOnce,
                    QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
                },
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            })
            .collect();
        if let Err(e) = self.shared.router.subscribe(*key, sub.pkid, filters).await {
            tracing::warn!(gateway = %self.gateway, error = %e, "Router subscribe failed.");
            return Err(refused);
        }
        let deadline = Instant::now() + SUBACK_TIMEOUT;
        loop {
            let Ok(note) = tokio::time::timeout_at(deadline, next_note(&mut self.link)).await
            else {
                return Err(SubscribeError::Failed(SubscribeFailed::RouterTimeout));
            };
            match note {
                Ok(Some(note @ Notification::DeviceAck(_))) => {
                    if let Some(Packet::SubAck(ack, _)) = Option::<Packet>::from(note) {
                        if ack.pkid == sub.pkid {
                            return Ok(ack.return_codes);
                        }
                    }
                }
                other => self.on_note(other).await.map_err(SubscribeError::Ended)?,
            }
        }
    }

    /// What the gateway's router link delivers.
    async fn on_note(&mut self, note: Result<Option<Notification>, ()>) -> Step {
        match note {
            Ok(Some(Notification::Forward(fwd))) => {
                let bytes = fwd.publish.payload.len();
                self.send(Packet::Publish(fwd.publish, None)).await?;
                self.shared.metrics.message_out(bytes);
                Ok(())
            }
            Ok(Some(Notification::Unschedule)) => match &self.link {
                Some((_, rx)) if rx.wake().await.is_err() => Err(End::RouterGone),
                _ => Ok(()),
            },
            Ok(Some(Notification::Disconnect(..))) => Err(End::RouterDisconnect),
            // Acks of the link's own requests (UNSUBACK): the client already
            // got its answer.
            Ok(_) => Ok(()),
            // The router dropped the link (a newer connection took over
            // this client id).
            Err(()) => Err(End::RouterDropped),
        }
    }

    async fn on_publish(
        &mut self,
        topic_name: Bytes,
        payload: Bytes,
        retain: bool,
        qos: u8,
        pkid: u16,
    ) -> Step {
        let parsed = std::str::from_utf8(&topic_name)
            .ok()
            .and_then(|t| GatewayTopic::parse(t).ok());
        let kind = match parsed {
            Some(t) if t.gateway == self.gateway && t.kind != TopicKind::Cmd => t.kind,
            _ => {
                self.shared.metrics.acl_violation("publish");
                tracing::warn!(peer = %self.peer, gateway = %self.gateway, topic = %String::from_utf8_lossy(&topic_name), "Publish outside the gateway's ACL; closing.");
                return Err(End::PublishAcl);
            }
        };
        self.shared.metrics.bytes_in(payload.len());
        self.throttle().await;
        match kind {
            TopicKind::Telemetry => {
                self.commits.push_telemetry(Telemetry {
                    qos,
                    pkid,
                    topic: topic_name,
                    payload,
                });
            }
            _ => {
                self.shared.presence.status(self.gateway.as_str(), &payload);
                // Acknowledged in order after the telemetry before it.
                self.commits.push_done(Completed {
                    qos,
                    pkid,
                    forward: Some((topic_name, payload, retain)),
                });
            }
        }
        Ok(())
    }
}

impl<S> Conn<S> {
    /// Over the gateway's rate (publishes of any kind, subscriptions):
    /// slows it down — no reads until a token is free — rather than drop
    /// anything; what was read already goes to the log meanwhile.
    async fn throttle(&mut self) {
        if self.limiter.check().is_err() {
            self.shared.metrics.throttled();
            self.commits.submit();
            self.limiter.until_ready().await;
        }
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
