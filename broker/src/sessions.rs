//! One live connection per gateway: a newer connection takes over and the
//! older one is told to end, whether or not it has a rumqttd link. Also
//! which gateways have a persistent session in the router, so a clean
//! session can discard it (MQTT-3.1.2-6).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The live connection of each gateway.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<String, (u64, CancellationToken)>>,
    /// Gateways whose last session was persistent (held by the router).
    persistent: Mutex<HashSet<String>>,
}

impl Sessions {
    /// Registers a new connection of `gateway`, ending the previous one;
    /// returns its id and the token that fires when it is taken over.
    pub(crate) fn begin(&self, gateway: &str) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = live.insert(gateway.to_owned(), (id, token.clone())) {
            old.cancel();
        }
        (id, token)
    }

    /// Forgets a connection that ended; returns whether it was still the
    /// gateway's live one (not replaced by a newer connection).
    pub(crate) fn end(&self, gateway: &str, id: u64) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let current = live.get(gateway).is_some_and(|(c, _)| *c == id);
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
        assert!(ta.is_cancelled() && !tb.is_cancelled());
        assert!(!s.end("gw", a)); // late end of the old one keeps the new one
        let (_, tc) = s.begin("gw");
        assert!(tb.is_cancelled() && !tc.is_cancelled());
        assert!(!s.end("gw", b));
    }
}
