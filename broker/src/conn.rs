//! One gateway connection through the gatekeeper: TLS handshake (bounded in
//! time), CONNECT and authentication, then packets in both directions.
//!
//! Telemetry takes the durable path — validate → commit → PUBACK — and only
//! then goes to rumqttd for best-effort live fan-out. Publishes are handled
//! one at a time per connection, so acknowledgements leave in arrival order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pantau_model::topic::{topic, GatewayTopic, TopicKind};
use pantau_model::GatewayId;
use rumqttd::local::LinkRx;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, LastWill, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::router::LinkKey;
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
    let _ = stream.set_nodelay(true);
    let handshake = timeout(
        shared.config.handshake_timeout,
        shared.acceptor.accept(stream),
    )
    .await;
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
    let wire = Wire::new(tls, shared.config.max_packet_size);
    session(wire, peer, shared).await;
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

async fn accept_connect<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<Accepted> {
    let first = match timeout(shared.config.connect_timeout, wire.read()).await {
        Err(_) => {
            shared.metrics.refuse("connect_timeout");
            return None;
        }
        Ok(Err(WireError::Protocol(rumqttd::protocol::Error::InvalidProtocolLevel(_)))) => {
            refuse(
                wire,
                shared,
                peer,
                ConnectReturnCode::RefusedProtocolVersion,
                "protocol_version",
            )
            .await;
            return None;
        }
        Ok(Err(e)) => {
            shared.metrics.refuse(e.reason());
            return None;
        }
        Ok(Ok(f)) => f,
    };
    let Packet::Connect(connect, _, will, _, login) = first.packet else {
        shared.metrics.refuse("not_connect");
        return None;
    };
    let Some(login) = login else {
        refuse(
            wire,
            shared,
            peer,
            ConnectReturnCode::NotAuthorized,
            "no_credentials",
        )
        .await;
        return None;
    };
    // The username is the gateway id; the token is checked against its hash
    // in the state database (a blocking SQLite read, off the workers).
    let state = shared.state.clone();
    let (user, pass) = (login.username.clone(), login.password.clone());
    let verified = tokio::task::spawn_blocking(move || state.verify_gateway(&user, &pass)).await;
    let ok = match verified {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            tracing::error!(%peer, error = %e, "Credential check failed.");
            refuse(
                wire,
                shared,
                peer,
                ConnectReturnCode::ServiceUnavailable,
                "auth_unavailable",
            )
            .await;
            return None;
        }
        Err(_) => false,
    };
    let gateway = match (ok, GatewayId::new(login.username.clone())) {
        (true, Ok(id)) => id,
        _ => {
            refuse(
                wire,
                shared,
                peer,
                ConnectReturnCode::BadUserNamePassword,
                "bad_credentials",
            )
            .await;
            return None;
        }
    };
    // Identity comes from the credentials; the session is always keyed by
    // the gateway id. A persistent session must name it as its client id;
    // a clean session may use any client id (so that stock tools such as
    // `mosquitto_pub`, which invent one, work as documented).
    if !connect.clean_session && connect.client_id != gateway.as_str() {
        refuse(
            wire,
            shared,
            peer,
            ConnectReturnCode::NotAuthorized,
            "client_id_mismatch",
        )
        .await;
        return None;
    }
    if let Some(w) = &will {
        if w.topic != topic(gateway.as_str(), TopicKind::Status).as_bytes() {
            shared.metrics.acl_violation("will");
            tracing::warn!(%peer, gateway = %gateway, topic = %String::from_utf8_lossy(&w.topic), "Last will on a foreign topic refused.");
            refuse(
                wire,
                shared,
                peer,
                ConnectReturnCode::NotAuthorized,
                "will_acl",
            )
            .await;
            return None;
        }
    }
    let max = shared.config.max_keep_alive;
    let keep_alive = match connect.keep_alive {
        0 => max,
        s => Duration::from_secs(u64::from(s)).min(max),
    };
    Some(Accepted {
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
) {
    let Some(acc) = accept_connect(&mut wire, peer, &shared).await else {
        return;
    };
    let (key, mut link_rx) = match shared
        .router
        .connect(acc.gateway.as_str(), acc.clean_session)
        .await
    {
        Ok(link) => link,
        Err(e) => {
            tracing::error!(%peer, gateway = %acc.gateway, error = %e, "Router link failed.");
            refuse(
                &mut wire,
                &shared,
                peer,
                ConnectReturnCode::ServiceUnavailable,
                "router_refused",
            )
            .await;
            return;
        }
    };
    let connack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        },
        None,
    );
    if wire.send(connack).await.is_err() {
        let _ = shared.router.disconnect(key).await;
        return;
    }
    shared.metrics.connected();
    tracing::info!(%peer, gateway = %acc.gateway, "Gateway connected.");
    let mut conn = Conn {
        wire,
        shared: shared.clone(),
        gateway: acc.gateway,
        key,
        peer,
    };
    let (end, router_dropped) = conn.run(&mut link_rx, acc.keep_alive).await;
    conn.wire.shutdown().await;
    if let (End::Unclean(_), Some(will)) = (end, acc.will) {
        // rumqttd never fires wills for in-process links, so the gatekeeper
        // publishes the (already authorised) will itself.
        let _ = shared
            .router
            .publish(conn.key, will.topic, will.message, will.retain)
            .await;
    }
    if !router_dropped {
        let _ = shared.router.disconnect(conn.key).await;
    }
    shared.metrics.disconnected();
    match end {
        End::Clean => tracing::info!(%peer, gateway = %conn.gateway, "Gateway disconnected."),
        End::Unclean(reason) => {
            tracing::info!(%peer, gateway = %conn.gateway, reason, "Gateway connection lost.")
        }
    }
}

struct Conn<S> {
    wire: Wire<S>,
    shared: Arc<Shared>,
    gateway: GatewayId,
    key: LinkKey,
    peer: SocketAddr,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Runs until the connection ends; returns how, and whether the router
    /// already dropped the link (then it must not be disconnected again).
    async fn run(&mut self, link_rx: &mut LinkRx, keep_alive: Duration) -> (End, bool) {
        // MQTT: the server may close after 1.5 × keep-alive of silence.
        let idle = keep_alive + keep_alive / 2;
        // Only packets from the client count as life signs; traffic from the
        // router must not keep a silent client's connection open.
        let mut last_read = tokio::time::Instant::now();
        let shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                read = tokio::time::timeout_at(last_read + idle, self.wire.read()) => {
                    let frame = match read {
                        Err(_) => return (End::Unclean("keepalive_timeout"), false),
                        Ok(Err(WireError::Closed)) => return (End::Unclean("closed"), false),
                        Ok(Err(e)) => {
                            self.shared.metrics.violation(e.reason());
                            tracing::warn!(peer = %self.peer, gateway = %self.gateway, error = %e, "Closing connection.");
                            return (End::Unclean(e.reason()), false);
                        }
                        Ok(Ok(f)) => f,
                    };
                    last_read = tokio::time::Instant::now();
                    match self.handle(frame).await {
                        Ok(None) => {}
                        Ok(Some(end)) => return (end, false),
                        Err(e) => return (End::Unclean(e.reason()), false),
                    }
                }
                note = link_rx.next() => match note {
                    Ok(Some(Notification::Forward(fwd))) => {
                        if self.wire.send(Packet::Publish(fwd.publish, None)).await.is_err() {
                            return (End::Unclean("write_failed"), false);
                        }
                    }
                    Ok(Some(Notification::Unschedule)) => {
                        if link_rx.wake().await.is_err() {
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
                _ = shutdown.cancelled() => return (End::Unclean("server_shutdown"), false),
            }
        }
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
                for f in sub.filters {
                    let _ = self.shared.router.subscribe(self.key, f.path).await;
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
                Ok(None)
            }
            Packet::Unsubscribe(unsub, _) => {
                let reasons = unsub
                    .filters
                    .iter()
                    .map(|_| UnsubAckReason::Success)
                    .collect();
                for f in unsub.filters {
                    let _ = self.shared.router.unsubscribe(self.key, f).await;
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
                tracing::warn!(peer = %self.peer, gateway = %self.gateway, packet = ?packet_name(&other), "Unexpected packet; closing.");
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
        let forward = match kind {
            TopicKind::Telemetry => match self
                .shared
                .ingestor
                .ingest(self.gateway.as_str(), &payload)
                .await
            {
                Ok(outcome) => outcome.envelope_error.is_none(),
                Err(e) => {
                    // Not durable: no acknowledgement; the gateway resends.
                    self.shared.metrics.violation("store_failed");
                    tracing::error!(gateway = %self.gateway, error = %e, "Commit failed; closing without PUBACK.");
                    return Ok(Some(End::Unclean("store_failed")));
                }
            },
            _ => true,
        };
        match qos {
            1 => {
                self.wire
                    .send(Packet::PubAck(
                        PubAck {
                            pkid,
                            reason: PubAckReason::Success,
                        },
                        None,
                    ))
                    .await?
            }
            2 => {
                self.wire
                    .send(Packet::PubRec(
                        PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        },
                        None,
                    ))
                    .await?
            }
            _ => {}
        }
        if forward {
            let _ = self
                .shared
                .router
                .publish(
                    self.key,
                    topic_name,
                    payload,
                    retain && kind == TopicKind::Status,
                )
                .await;
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
