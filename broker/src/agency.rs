//! Agency subscribers on the embedded broker: systems such as a siren
//! controller or an agency's own dashboard that authenticate with an
//! agency API token (username: the token's name, password: the token)
//! and subscribe to alert states, `pantau/v1/alerts/{kind}/{sensor}`
//! (retained: a new subscriber gets the current state at once).
//!
//! ACL: a filter must name a kind the token reads
//! (`pantau/v1/alerts/flood_gauge/#`, `…/flood_gauge/fl-sungai-dumai`); a
//! wildcard in place of the kind, or another kind, is refused in the
//! SUBACK (0x80, counted), and the session goes on. Only `admin` tokens may
//! use `pantau/v1/alerts/#`. Agency sessions never publish: a PUBLISH ends
//! the connection (counted). Delivery is at QoS 0 (the state is retained;
//! a reconnecting subscriber gets it again).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pantau_model::scope::Scopes;
use pantau_model::SensorKind;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Filter, Packet, PingResp, QoS, RetainForwardRule, SubAck,
    Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::reason::End;
use crate::router::Link;
use crate::wire::Wire;
use crate::Shared;

/// The topic prefix of alert states.
pub const ALERTS_PREFIX: &str = "pantau/v1/alerts/";

/// The topic of a sensor's alert state.
pub fn alert_topic(kind: SensorKind, sensor: &str) -> String {
    format!("{ALERTS_PREFIX}{}/{sensor}", kind.as_str())
}

/// An agency client admitted at CONNECT.
#[derive(Debug)]
pub(crate) struct AgencyLogin {
    pub(crate) name: String,
    pub(crate) scopes: Scopes,
    pub(crate) keep_alive: Duration,
}

/// Whether `scopes` may subscribe to `filter`.
pub(crate) fn allowed(scopes: &Scopes, filter: &str) -> bool {
    let Some(rest) = filter.strip_prefix(ALERTS_PREFIX) else {
        return scopes.is_admin() && filter == "pantau/v1/alerts/#";
    };
    let mut parts = rest.splitn(2, '/');
    let kind = parts.next().unwrap_or_default();
    let tail = parts.next();
    if tail.is_some_and(|t| t.contains('#') && t != "#" || t.is_empty()) {
        return false;
    }
    match kind {
        "#" | "+" => scopes.is_admin(),
        k => SensorKind::parse(k).is_some_and(|k| scopes.can_read(k)),
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Runs an admitted agency connection to its end.
pub(crate) async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut wire: Wire<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    login: AgencyLogin,
) {
    let client = format!("pantau-agency-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let Ok(Link { key, mut rx, .. }) = shared.router.connect(&client, true).await else {
        let _ = wire
            .send(Packet::ConnAck(
                ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::ServiceUnavailable,
                },
                None,
            ))
            .await;
        wire.shutdown().await;
        return;
    };
    let ok = wire
        .send(Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::Success,
            },
            None,
        ))
        .await
        .is_ok();
    tracing::info!(%peer, token = %login.name, "Agency subscriber connected.");
    let idle = login.keep_alive + login.keep_alive / 2;
    let mut last_read = Instant::now();
    let shutdown = shared.shutdown.clone();
    let mut end = if ok { None } else { Some(End::WriteFailed) };
    while end.is_none() {
        tokio::select! {
            read = tokio::time::timeout_at(last_read + idle, wire.read()) => {
                let frame = match read {
                    Err(_) => { end = Some(End::KeepaliveTimeout); continue; }
                    Ok(Err(e)) => { end = Some(e.end()); continue; }
                    Ok(Ok(f)) => f,
                };
                last_read = Instant::now();
                let answer = match frame.packet {
                    Packet::Subscribe(sub, _) => {
                        Some(subscribe(&shared, key, &mut rx, &login, sub).await)
                    }
                    Packet::Unsubscribe(unsub, _) => {
                        let reasons = unsub.filters.iter().map(|_| UnsubAckReason::Success).collect();
                        for f in unsub.filters {
                            let _ = shared.router.unsubscribe(key, f).await;
                        }
                        Some(Packet::UnsubAck(UnsubAck { pkid: unsub.pkid, reasons }, None))
                    }
                    Packet::PingReq(_) => Some(Packet::PingResp(PingResp)),
                    Packet::Disconnect(..) => { end = Some(End::Disconnect); None }
                    Packet::Publish(p, _) => {
                        shared.metrics.acl_violation("publish");
                        tracing::warn!(%peer, token = %login.name, topic = %String::from_utf8_lossy(&p.topic), "Agency subscribers may not publish; closing.");
                        end = Some(End::PublishAcl);
                        None
                    }
                    Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..) => None,
                    _ => { end = Some(End::ProtocolError); None }
                };
                if let Some(p) = answer {
                    if wire.send(p).await.is_err() {
                        end = Some(End::WriteFailed);
                    }
                }
            }
            note = rx.next() => match note {
                Ok(Some(Notification::Forward(fwd))) => {
                    if wire.send(Packet::Publish(fwd.publish, None)).await.is_err() {
                        end = Some(End::WriteFailed);
                    }
                }
                Ok(Some(Notification::Unschedule)) => {
                    if rx.wake().await.is_err() {
                        end = Some(End::RouterGone);
                    }
                }
                Ok(Some(Notification::Disconnect(..))) => end = Some(End::RouterDisconnect),
                Ok(_) => {}
                Err(_) => end = Some(End::RouterDropped),
            },
            _ = shutdown.cancelled() => end = Some(End::ServerShutdown),
        }
    }
    let end = end.unwrap_or(End::Closed);
    wire.shutdown().await;
    if !end.router_dropped() {
        let _ = shared.router.disconnect(key).await;
    }
    tracing::info!(%peer, token = %login.name, reason = end.as_str(), "Agency subscriber disconnected.");
}

/// Subscribes the allowed filters (QoS 0, retained state sent at once);
/// answers 0x80 for the others.
async fn subscribe(
    shared: &Shared,
    key: crate::router::LinkKey,
    rx: &mut rumqttd::local::LinkRx,
    login: &AgencyLogin,
    sub: Subscribe,
) -> Packet {
    let mut codes: Vec<Option<SubscribeReasonCode>> = Vec::with_capacity(sub.filters.len());
    let mut filters = Vec::new();
    for f in &sub.filters {
        if allowed(&login.scopes, &f.path) {
            codes.push(None);
            filters.push(Filter {
                path: f.path.clone(),
                qos: QoS::AtMostOnce,
                nolocal: false,
                preserve_retain: true,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            });
        } else {
            shared.metrics.acl_violation("subscribe");
            tracing::warn!(token = %login.name, topic = %f.path, "Agency subscription outside the token's scopes; answered 0x80.");
            codes.push(Some(SubscribeReasonCode::Failure));
        }
    }
    if !filters.is_empty() {
        let granted = match shared.router.subscribe(key, sub.pkid, filters).await {
            Ok(()) => wait_suback(rx, sub.pkid).await,
            Err(_) => None,
        };
        let mut granted = granted.unwrap_or_default().into_iter();
        for c in codes.iter_mut().filter(|c| c.is_none()) {
            *c = Some(granted.next().unwrap_or(SubscribeReasonCode::Failure));
        }
    }
    Packet::SubAck(
        SubAck {
            pkid: sub.pkid,
            return_codes: codes
                .into_iter()
                .map(|c| c.unwrap_or(SubscribeReasonCode::Failure))
                .collect(),
        },
        None,
    )
}

async fn wait_suback(
    rx: &mut rumqttd::local::LinkRx,
    pkid: u16,
) -> Option<Vec<SubscribeReasonCode>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let note = tokio::time::timeout_at(deadline, rx.next())
            .await
            .ok()?
            .ok()?;
        match note {
            Some(n @ Notification::DeviceAck(_)) => {
                if let Some(Packet::SubAck(ack, _)) = Option::<Packet>::from(n) {
                    if ack.pkid == pkid {
                        return Some(ack.return_codes);
                    }
                }
            }
            Some(Notification::Unschedule) => {
                rx.wake().await.ok()?;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_the_tokens_read_scopes() {
        let flood = Scopes::parse("read:flood,ack:flood_gauge").unwrap();
        assert!(allowed(&flood, "pantau/v1/alerts/flood_gauge/#"));
        assert!(allowed(
            &flood,
            "pantau/v1/alerts/flood_gauge/fl-sungai-dumai"
        ));
        assert!(allowed(&flood, "pantau/v1/alerts/flood_gauge/+"));
        assert!(!allowed(&flood, "pantau/v1/alerts/traffic_counter/#"));
        assert!(!allowed(&flood, "pantau/v1/alerts/+/fl-sungai-dumai"));
        assert!(!allowed(&flood, "pantau/v1/alerts/#"));
        assert!(!allowed(&flood, "pantau/v1/gw/gw-a/telemetry"));
        assert!(!allowed(&flood, "#"));
        let admin = Scopes::parse("admin").unwrap();
        assert!(allowed(&admin, "pantau/v1/alerts/#"));
        assert!(allowed(&admin, "pantau/v1/alerts/+/x"));
        assert!(!allowed(&admin, "pantau/v1/gw/#"));
    }
}
