//! Silence: a sensor (or a gateway) that sends nothing for too long.
//!
//! A [`Watch`] remembers when its source was last heard from and raises a
//! one-level alert once nothing has come for `after` (N × the sensor's
//! expected interval, or a gateway's keep-alive budget), dated at the
//! moment the silence began to count — the last reading plus `after`, not
//! the moment somebody looked. The alert resolves with the first reading
//! that comes back, at that reading's time.
//!
//! Inhibition: while the gateway a sensor reports through is itself
//! offline (its own alert open), the sensor's silence is not raised — one
//! gateway alert, not one per sensor. If the gateway comes back and the
//! sensor stays silent, its alert is raised then.
//!
//! Like the tracker, a watch is plain data kept with the alert state.

use pantau_model::Timestamp;
use serde::{Deserialize, Serialize};

use crate::tracker::Change;

/// The silence state of one sensor or gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Watch {
    /// The latest observation time heard.
    last_seen: Option<Timestamp>,
    /// Whether its silence alert is open.
    open: bool,
}

impl Watch {
    /// A watch that counts silence from `since` (e.g. start-up, so a
    /// sensor never heard from is also noticed).
    pub fn starting(since: Timestamp) -> Self {
        Self {
            last_seen: Some(since),
            open: false,
        }
    }

    /// Whether the silence alert is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Something was heard, observed `at`: resolves an open silence.
    pub fn heard(&mut self, at: Timestamp) -> Option<Change> {
        self.last_seen = Some(self.last_seen.map_or(at, |l| l.max(at)));
        if self.open {
            self.open = false;
            return Some(Change::Resolved { from: 1, at });
        }
        None
    }

    /// When the silence alert is due if nothing is heard.
    pub fn due(&self, after_ms: i64) -> Option<Timestamp> {
        if self.open {
            return None;
        }
        Some(self.last_seen?.add_millis(after_ms))
    }

    /// Raises the silence alert if nothing was heard for `after_ms` by
    /// `now`, unless `inhibited` (the gateway is offline).
    pub fn check(&mut self, after_ms: i64, now: Timestamp, inhibited: bool) -> Option<Change> {
        let due = self.due(after_ms)?;
        if now < due || inhibited {
            return None;
        }
        self.open = true;
        Some(Change::Raised { level: 1, at: due })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::at_minute as t;

    const AFTER: i64 = 15 * 60_000;

    #[test]
    fn silence_is_raised_at_its_time_and_resolved_by_the_next_reading() {
        let mut w = Watch::default();
        assert_eq!(w.check(AFTER, t(100), false), None, "never heard of");
        w.heard(t(0));
        assert_eq!(w.check(AFTER, t(14), false), None);
        assert_eq!(w.due(AFTER), Some(t(15)));
        // Looked at late: dated when the silence passed its bound.
        assert_eq!(
            w.check(AFTER, t(40), false),
            Some(Change::Raised {
                level: 1,
                at: t(15)
            })
        );
        assert_eq!(w.check(AFTER, t(41), false), None, "raised once");
        assert_eq!(
            w.heard(t(42)),
            Some(Change::Resolved { from: 1, at: t(42) })
        );
        assert_eq!(w.heard(t(43)), None);
    }

    #[test]
    fn an_offline_gateway_inhibits_its_sensors_silence_until_it_returns() {
        let mut w = Watch::starting(t(0));
        assert_eq!(w.check(AFTER, t(30), true), None);
        assert!(!w.is_open());
        // The gateway is back but this sensor still says nothing.
        assert_eq!(
            w.check(AFTER, t(31), false),
            Some(Change::Raised {
                level: 1,
                at: t(15)
            })
        );
    }

    #[test]
    fn a_late_replayed_reading_does_not_move_the_clock_back() {
        let mut w = Watch::default();
        w.heard(t(10));
        w.heard(t(5));
        assert_eq!(w.due(AFTER), Some(t(25)));
    }
}
