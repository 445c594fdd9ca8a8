//! Admission of one gateway connection: connection caps, the TLS handshake
//! (bounded in number and time), then CONNECT with identity from a client
//! certificate or a token, the client id, the last will and keep-alive.
//! Whatever is refused gets the proper CONNACK code (or is just closed when
//! there is no CONNECT to answer) and is counted by its [`Refused`] reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pantau_model::topic::{topic, TopicKind};
use pantau_model::GatewayId;
use rumqttd::protocol::{ConnAck, ConnectReturnCode, LastWill, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::reason::Refused;
use crate::tls::cert_identity;
use crate::wire::{Wire, WireError};
use crate::Shared;
use pantau_state::admission::OverCap;

/// Serves one accepted socket: admission, TLS, then the MQTT session.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let slot = shared.admission.admit(peer.ip());
    // Over a connection cap, a few connections at a time are told so
    // cleanly (CONNACK 3) within a short deadline; the rest are closed at
    // once, before any handshake work.
    let (deadline, _refusing) = match slot.over {
        None => (Instant::now() + shared.config.handshake_timeout, None),
        Some(over) => match shared.refusals.clone().try_acquire_owned() {
            Ok(permit) => (Instant::now() + crate::REFUSAL_DEADLINE, Some(permit)),
            Err(_) => {
                shared.metrics.refuse(match over {
                    OverCap::Global => Refused::ConnectionCap,
                    OverCap::PerIp => Refused::ConnectionCapPerIp,
                });
                return;
            }
        },
    };
    // Sockets still in TLS or before CONNECT are capped per address too,
    // so one address cannot hold every handshake slot.
    let pending = shared.pending.admit(peer.ip());
    if let Some(over) = pending.over {
        shared.metrics.refuse(match over {
            OverCap::Global => Refused::PendingCap,
            OverCap::PerIp => Refused::PendingCapPerIp,
        });
        return;
    }
    let _ = stream.set_nodelay(true);
    // A stalled or slow client holds one handshake permit for at most the
    // handshake timeout; it never delays anyone's accept.
    let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, shared.handshakes.acquire()).await
    else {
        shared.metrics.refuse(Refused::HandshakeQueueFull);
        return;
    };
    let handshake = tokio::time::timeout_at(deadline, shared.acceptor.accept(stream)).await;
    drop(permit);
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.metrics.refuse(Refused::TlsHandshakeFailed);
            tracing::info!(%peer, error = %e, "TLS handshake failed.");
            return;
        }
        Err(_) => {
            shared.metrics.refuse(Refused::TlsHandshakeTimeout);
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
    let mut wire = Wire::new(
        tls,
        shared.config.max_packet_size,
        shared.config.write_timeout,
    );
    let connect_deadline = match slot.over {
        None => Instant::now() + shared.config.connect_timeout,
        Some(_) => deadline,
    };
    let accepted = accept_connect(
        &mut wire,
        peer,
        &shared,
        cert_id,
        slot.over,
        connect_deadline,
    )
    .await;
    drop(pending);
    match accepted {
        Some(Admitted::Gateway(accepted)) => {
            crate::conn::session(wire, peer, shared, accepted).await
        }
        Some(Admitted::Agency(login)) => crate::agency::session(wire, peer, shared, login).await,
        None => {}
    }
    drop(slot);
}

/// Who CONNECT admitted.
pub(crate) enum Admitted {
    /// A gateway.
    Gateway(Accepted),
    /// An agency subscriber (token login).
    Agency(crate::agency::AgencyLogin),
}

/// What CONNECT established for a gateway.
pub(crate) struct Accepted {
    pub(crate) gateway: GatewayId,
    pub(crate) keep_alive: Duration,
    pub(crate) clean_session: bool,
    pub(crate) will: Option<LastWill>,
}

/// Answers a refused CONNECT with `code`, counts `reason` and closes.
pub(crate) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    shared: &Shared,
    peer: SocketAddr,
    code: ConnectReturnCode,
    reason: Refused,
) {
    shared.metrics.refuse(reason);
    tracing::warn!(%peer, reason = reason.as_str(), "Connection refused.");
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
    Connack(ConnectReturnCode, Refused),
    /// Just close (no CONNECT to answer).
    Close(Refused),
}

async fn accept_connect<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    peer: SocketAddr,
    shared: &Shared,
    cert_id: Option<String>,
    over: Option<OverCap>,
    deadline: Instant,
) -> Option<Admitted> {
    match admit_connect(wire, shared, cert_id, over, deadline).await {
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
    deadline: Instant,
) -> Result<Admitted, Refusal> {
    use ConnectReturnCode as Code;
    let no = |code, reason| Err(Refusal::Connack(code, reason));
    let first = match tokio::time::timeout_at(deadline, wire.read()).await {
        Err(_) => return Err(Refusal::Close(Refused::ConnectTimeout)),
        Ok(Err(WireError::Protocol(rumqttd::protocol::Error::InvalidProtocolLevel(_)))) => {
            return no(Code::RefusedProtocolVersion, Refused::ProtocolVersion)
        }
        Ok(Err(e)) => return Err(Refusal::Close(Refused::Read(e.end()))),
        Ok(Ok(f)) => f,
    };
    let Packet::Connect(connect, _, will, _, login) = first.packet else {
        return Err(Refusal::Close(Refused::NotConnect));
    };
    match over {
        Some(OverCap::Global) => return no(Code::ServiceUnavailable, Refused::ConnectionCap),
        Some(OverCap::PerIp) => return no(Code::ServiceUnavailable, Refused::ConnectionCapPerIp),
        None => {}
    }
    if !client_id_valid(&connect.client_id) {
        return no(Code::ClientIdentifierNotValid, Refused::ClientIdInvalid);
    }
    // Identity: a verified platform certificate (its CN), or a username
    // (the gateway id) with its token checked against the stored hash.
    let gateway = match (cert_id, &login) {
        (Some(cn), login) => {
            if login
                .as_ref()
                .is_some_and(|l| !l.username.is_empty() && l.username != cn)
            {
                return no(Code::NotAuthorized, Refused::CertUsernameMismatch);
            }
            let Ok(id) = GatewayId::new(cn) else {
                return no(Code::NotAuthorized, Refused::BadCertIdentity);
            };
            let (state, name) = (shared.state.clone(), id.to_string());
            match blocking(move || state.gateway_exists(&name)).await {
                Some(Ok(true)) => id,
                Some(Ok(false)) => return no(Code::NotAuthorized, Refused::UnregisteredGateway),
                _ => return no(Code::ServiceUnavailable, Refused::AuthUnavailable),
            }
        }
        (None, None) => return no(Code::NotAuthorized, Refused::NoCredentials),
        (None, Some(l)) => {
            let state = shared.state.clone();
            let (user, pass) = (l.username.clone(), l.password.clone());
            match blocking(move || state.verify_gateway(&user, &pass)).await {
                Some(Ok(true)) => GatewayId::new(l.username.clone()).or(Err(Refusal::Connack(
                    Code::BadUserNamePassword,
                    Refused::BadCredentials,
                )))?,
                Some(Ok(false)) => {
                    // Not a gateway: an agency token, named by the username?
                    let (state, pass) = (shared.state.clone(), l.password.clone());
                    let found = match blocking(move || state.verify_token(&pass)).await {
                        Some(Ok(found)) => found,
                        _ => return no(Code::ServiceUnavailable, Refused::AuthUnavailable),
                    };
                    let Some(token) = found.filter(|t| t.name == l.username) else {
                        return no(Code::BadUserNamePassword, Refused::BadCredentials);
                    };
                    let Ok(scopes) = pantau_model::scope::Scopes::parse(&token.scopes) else {
                        return no(Code::NotAuthorized, Refused::BadCredentials);
                    };
                    if will.is_some() || !client_id_valid(&connect.client_id) {
                        return no(Code::NotAuthorized, Refused::WillAcl);
                    }
                    let keep_alive = match connect.keep_alive {
                        0 => shared.config.max_keep_alive,
                        s => Duration::from_secs(u64::from(s))
                            .clamp(shared.config.min_keep_alive, shared.config.max_keep_alive),
                    };
                    return Ok(Admitted::Agency(crate::agency::AgencyLogin {
                        name: token.name,
                        scopes,
                        keep_alive,
                    }));
                }
                _ => return no(Code::ServiceUnavailable, Refused::AuthUnavailable),
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
        return no(Code::NotAuthorized, Refused::ClientIdMismatch);
    }
    if let Some(w) = &will {
        if w.topic != topic(gateway.as_str(), TopicKind::Status).as_bytes() {
            shared.metrics.acl_violation("will");
            tracing::warn!(gateway = %gateway, topic = %String::from_utf8_lossy(&w.topic), "Last will on a foreign topic refused.");
            return no(Code::NotAuthorized, Refused::WillAcl);
        }
    }
    let (min, max) = (shared.config.min_keep_alive, shared.config.max_keep_alive);
    let keep_alive = match connect.keep_alive {
        0 => max,
        s => Duration::from_secs(u64::from(s)).clamp(min, max),
    };
    Ok(Admitted::Gateway(Accepted {
        gateway,
        keep_alive,
        clean_session: connect.clean_session,
        will,
    }))
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
