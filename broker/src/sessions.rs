//! One live connection per gateway: a newer connection takes over and the
//! older one is told to end, whether or not it has a rumqttd link. Also
//! which gateways have a persistent session in the router, so a clean
//! session can discard it (MQTT-3.1.2-6).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// How a live connection is told to end.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    id: u64,
    /// Fired when it must end (taken over or revoked).
    pub(crate) end: CancellationToken,
    /// Set before `end` fires when the gateway was revoked.
    pub(crate) revoked: Arc<AtomicBool>,
}

/// The live connection of each gateway.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<String, Live>>,
    /// Gateways whose last session was persistent (held by the router).
    persistent: Mutex<HashSet<String>>,
}

impl Sessions {
    /// Registers a new connection of `gateway`, ending the previous one;
    /// returns its id and how it is told to end.
    pub(crate) fn begin(&self, gateway: &str) -> (u64, Live) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let new = Live {
            id,
            end: CancellationToken::new(),
            revoked: Arc::default(),
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = live.insert(gateway.to_owned(), new.clone()) {
            old.end.cancel();
        }
        (id, new)
    }

    /// Ends `gateway`'s live connection because it was revoked; returns
    /// whether it had one.
    pub(crate) fn revoke(&self, gateway: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(gateway) {
            Some(l) => {
                l.revoked.store(true, Ordering::Release);
                l.end.cancel();
                true
            }
            None => false,
        }
    }

    /// Forgets a connection that ended; returns whether it was still the
    /// gateway's live one (not replaced by a newer connection).
    pub(crate) fn end(&self, gateway: &str, id: u64) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let current = live.get(gateway).is_some_and(|l| l.id == id);
        if current {
            live.remove(gateway);
        }
        current
    }

    /// Notes that `gateway` asked for a persistent session.
    pub(crate) fn remember_persistent(&self, gateway: &str) {
        let mut held = self.persistent.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(gateway.to_owned());
    }

    /// Forgets `gateway`'s persistent session; returns whether it had one.
    pub(crate) fn forget_persistent(&self, gateway: &str) -> bool {
        let mut held = self.persistent.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(gateway)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_connection_ends_the_older() {
        let s = Sessions::default();
        let (a, ta) = s.begin("gw");
        let (b, tb) = s.begin("gw");
        assert!(ta.end.is_cancelled() && !tb.end.is_cancelled());
        assert!(!s.end("gw", a)); // late end of the old one keeps the new one
        let (_, tc) = s.begin("gw");
        assert!(tb.end.is_cancelled() && !tc.end.is_cancelled());
        assert!(!s.end("gw", b));
        assert!(s.revoke("gw"));
        assert!(tc.end.is_cancelled() && tc.revoked.load(Ordering::Acquire));
        assert!(!s.revoke("other"));
    }
}
