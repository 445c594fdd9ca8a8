//! Gateway presence: connected or not, last connect, last seen, last
//! status message — kept per gateway for the API and the alerting on
//! gateways gone silent.

use std::collections::HashMap;
use std::sync::Mutex;

use pantau_model::Timestamp;
use serde::Serialize;

/// Longest status payload kept (bytes).
const MAX_STATUS: usize = 4096;

/// What the platform knows about one gateway's connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GatewayPresence {
    /// Whether a connection is open now.
    pub connected: bool,
    /// When the current or last connection was accepted.
    pub last_connect: Option<Timestamp>,
    /// When the gateway last sent anything.
    pub last_seen: Option<Timestamp>,
    /// When the last connection ended.
    pub last_disconnect: Option<Timestamp>,
    /// Why the last connection ended.
    pub last_disconnect_reason: Option<String>,
    /// The last message on its status topic (its will included), as text.
    pub last_status: Option<String>,
    /// Peer address of the current or last connection.
    pub peer: Option<String>,
}

/// Presence of every gateway seen since start.
#[derive(Debug, Default)]
pub struct Presence {
    gateways: Mutex<HashMap<String, GatewayPresence>>,
}

impl Presence {
    fn with<R>(&self, gateway: &str, f: impl FnOnce(&mut GatewayPresence) -> R) -> R {
        let mut map = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(gateway.to_owned()).or_default())
    }

    /// A connection was accepted.
    pub fn connected(&self, gateway: &str, peer: &str) {
        let now = Some(Timestamp::now());
        self.with(gateway, |p| {
            p.connected = true;
            p.last_connect = now;
            p.last_seen = now;
            p.peer = Some(peer.to_owned());
        });
    }

    /// The gateway sent something.
    pub fn seen(&self, gateway: &str) {
        self.with(gateway, |p| p.last_seen = Some(Timestamp::now()));
    }

    /// A message on its status topic.
    pub fn status(&self, gateway: &str, payload: &[u8]) {
        let text = String::from_utf8_lossy(&payload[..payload.len().min(MAX_STATUS)]).into_owned();
        self.with(gateway, |p| p.last_status = Some(text));
    }

    /// The connection ended.
    pub fn disconnected(&self, gateway: &str, reason: &str) {
        self.with(gateway, |p| {
            p.connected = false;
            p.last_disconnect = Some(Timestamp::now());
            p.last_disconnect_reason = Some(reason.to_owned());
        });
    }

    /// One gateway's presence.
    pub fn get(&self, gateway: &str) -> Option<GatewayPresence> {
        self.gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(gateway)
            .cloned()
    }

    /// Every gateway's presence, by id.
    pub fn snapshot(&self) -> Vec<(String, GatewayPresence)> {
        let map = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, p)| (k.clone(), p.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
