//! Readiness of the parts of a process, as `/readyz` reports it: every
//! part a process runs is registered (down, "starting") and says when it
//! can serve and when it cannot, with the reason. A transition is logged
//! once, so the log says which part stopped and why.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A part of a Pantau process that can be up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The sink the ingest log drains into (embedded store or InfluxDB).
    Storage,
    /// The task that drains the ingest log into the sink.
    Drain,
    /// The MQTT gatekeeper's listener.
    Broker,
    /// An ingest worker's session with the external broker.
    Consumer,
    /// The HTTP API.
    Api,
}

impl Part {
    /// The name used in `/readyz`, logs and task names.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Storage => "storage",
            Part::Drain => "drain",
            Part::Broker => "broker",
            Part::Consumer => "consumer",
            Part::Api => "api",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a part can serve, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartState {
    /// Serving.
    Up,
    /// Not serving, with the reason.
    Down(String),
}

/// The readiness of every registered part; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Health {
    parts: Arc<Mutex<BTreeMap<Part, PartState>>>,
}

impl Health {
    /// Registers `part` as down ("starting") until it reports up.
    pub fn register(&self, part: Part) {
        self.lock()
            .entry(part)
            .or_insert_with(|| PartState::Down("starting".into()));
    }

    /// `part` can serve. Logged when it was down for a reason other than
    /// starting.
    pub fn up(&self, part: Part) {
        let previous = self.lock().insert(part, PartState::Up);
        if let Some(PartState::Down(reason)) = previous {
            if reason != "starting" {
                tracing::info!(part = part.as_str(), was = %reason, "Part is up again.");
            }
        }
    }

    /// `part` cannot serve, because of `reason`. Logged when it was up.
    pub fn down(&self, part: Part, reason: impl std::fmt::Display) {
        let reason = reason.to_string();
        let previous = self.lock().insert(part, PartState::Down(reason.clone()));
        if !matches!(previous, Some(PartState::Down(_))) {
            tracing::warn!(part = part.as_str(), %reason, "Part is down.");
        }
    }

    /// Whether every registered part is up (and at least one is registered).
    pub fn is_ready(&self) -> bool {
        let parts = self.lock();
        !parts.is_empty() && parts.values().all(|s| *s == PartState::Up)
    }

    /// Every registered part and its state, in a fixed order.
    pub fn parts(&self) -> Vec<(Part, PartState)> {
        self.lock().iter().map(|(p, s)| (*p, s.clone())).collect()
    }

    /// The state of one part, if registered.
    pub fn state(&self, part: Part) -> Option<PartState> {
        self.lock().get(&part).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Part, PartState>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_registered_part_is_up() {
        let h = Health::default();
        assert!(!h.is_ready(), "nothing registered is not ready");
        h.register(Part::Storage);
        h.register(Part::Broker);
        h.up(Part::Storage);
        assert!(!h.is_ready());
        h.up(Part::Broker);
        assert!(h.is_ready());
        h.down(Part::Storage, "influxdb unreachable");
        assert!(!h.is_ready());
        assert_eq!(
            h.state(Part::Storage),
            Some(PartState::Down("influxdb unreachable".into()))
        );
        // Registering again does not reset a known state.
        h.register(Part::Broker);
        assert_eq!(h.state(Part::Broker), Some(PartState::Up));
        h.up(Part::Storage);
        assert!(h.is_ready());
    }
}
