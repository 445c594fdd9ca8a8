//! The state of one (rule, sensor) pair and the changes of its alert.
//!
//! A [`Tracker`] takes the sensor's values in observation order and says
//! when its alert is raised, escalated, de-escalated, resolved or
//! reopened, by observation time:
//!
//! - the value's severity comes from the rule's [`Ladder`] (hysteresis);
//! - a move up waits `raise_for`, a move down `clear_for`, measured from
//!   the first reading that asked for it; a reading back at the current
//!   severity cancels the wait, and a wait still pending when its time
//!   comes completes by [`Tracker::due`] / [`Tracker::expire`], without
//!   another reading (the sensor may have gone quiet);
//! - an alert resolved and raised again within `cooldown` is the same
//!   alert, reopened, not a new one (flap suppression);
//! - a reading older than the last one taken is refused ([`Stale`]), so a
//!   replay cannot rewrite what was decided.
//!
//! The tracker is plain data: the caller keeps it, serialized, in the same
//! commit as the changes it produced; after kill -9 the pending wait is
//! still there and completes at its time.

use pantau_model::Timestamp;
use serde::{Deserialize, Serialize};

use crate::ladder::{Ladder, RuleError};

/// A rule's durations, in milliseconds of observation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Timing {
    /// How long a higher severity must hold before the alert moves up
    /// (0: at once, the default for Siaga so warnings are immediate).
    pub raise_for_ms: i64,
    /// How long a lower severity must hold before the alert moves down.
    pub clear_for_ms: i64,
    /// An alert raised again within this long of its resolution is
    /// reopened.
    pub cooldown_ms: i64,
}

impl Timing {
    /// Checked: no negative duration.
    pub fn new(raise_for_ms: i64, clear_for_ms: i64, cooldown_ms: i64) -> Result<Self, RuleError> {
        for (field, v) in [
            ("for", raise_for_ms),
            ("clear_for", clear_for_ms),
            ("cooldown", cooldown_ms),
        ] {
            if v < 0 {
                return Err(RuleError::new(field, "a duration cannot be negative"));
            }
        }
        Ok(Self {
            raise_for_ms,
            clear_for_ms,
            cooldown_ms,
        })
    }
}

/// A change of an alert, at an observation time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new alert at `level`.
    Raised { level: u8, at: Timestamp },
    /// The alert resolved less than the cool-down ago is open again.
    Reopened { level: u8, at: Timestamp },
    /// To a more severe level.
    Escalated { from: u8, to: u8, at: Timestamp },
    /// To a less severe level, still open.
    DeEscalated { from: u8, to: u8, at: Timestamp },
    /// The condition cleared.
    Resolved { from: u8, at: Timestamp },
}

impl Change {
    /// The observation time of the change.
    pub fn at(&self) -> Timestamp {
        match *self {
            Self::Raised { at, .. }
            | Self::Reopened { at, .. }
            | Self::Escalated { at, .. }
            | Self::DeEscalated { at, .. }
            | Self::Resolved { at, .. } => at,
        }
    }

    /// The alert's severity after the change (0 = resolved).
    pub fn level(&self) -> u8 {
        match *self {
            Self::Raised { level, .. } | Self::Reopened { level, .. } => level,
            Self::Escalated { to, .. } | Self::DeEscalated { to, .. } => to,
            Self::Resolved { .. } => 0,
        }
    }
}

/// A reading older than the last one the tracker took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reading at {at:?} is older than the last one evaluated ({last:?})")]
pub struct Stale {
    /// The reading's time.
    pub at: Timestamp,
    /// The last time evaluated.
    pub last: Timestamp,
}

/// A wait for a move of severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    /// The severity asked for by the latest reading.
    toward: u8,
    /// The first reading that asked to move this way.
    since: Timestamp,
}

/// The alert state of one (rule, sensor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tracker {
    /// The alert's severity now (0 = no open alert).
    level: u8,
    pending: Option<Pending>,
    /// The last observation time taken.
    last: Option<Timestamp>,
    /// When the last alert resolved (for the cool-down).
    resolved_at: Option<Timestamp>,
}

/// The part of a tracker that must be kept with the step that changed it
/// (its level, pending wait and cool-down; not the last observation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerMaterial(u8, Option<(u8, Timestamp)>, Option<Timestamp>);

impl Tracker {
    /// The alert's severity now (0 = none open).
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Its [`TrackerMaterial`] part.
    pub fn material(&self) -> TrackerMaterial {
        TrackerMaterial(
            self.level,
            self.pending.map(|p| (p.toward, p.since)),
            self.resolved_at,
        )
    }

    /// Takes a value observed `at`: the change it completes, if any.
    pub fn observe(
        &mut self,
        ladder: &Ladder,
        timing: &Timing,
        value: f64,
        at: Timestamp,
    ) -> Result<Option<Change>, Stale> {
        if let Some(last) = self.last {
            if at < last {
                return Err(Stale { at, last });
            }
        }
        self.last = Some(at);
        let target = ladder.severity(value, self.level);
        if target == self.level {
            self.pending = None;
            return Ok(None);
        }
        let up = target > self.level;
        let since = match self.pending {
            // Still moving the same way: the wait goes on from its start.
            Some(p) if (p.toward > self.level) == up => p.since,
            _ => at,
        };
        self.pending = Some(Pending {
            toward: target,
            since,
        });
        let wait = if up {
            timing.raise_for_ms
        } else {
            timing.clear_for_ms
        };
        if at.millis() - since.millis() >= wait {
            return Ok(Some(self.apply(target, timing, at)));
        }
        Ok(None)
    }

    /// When a pending move completes if no reading says otherwise.
    pub fn due(&self, timing: &Timing) -> Option<Timestamp> {
        let p = self.pending?;
        let wait = if p.toward > self.level {
            timing.raise_for_ms
        } else {
            timing.clear_for_ms
        };
        Some(p.since.add_millis(wait))
    }

    /// Completes a pending move whose time has come by `now`; the change
    /// is dated at its due time, not `now`.
    pub fn expire(&mut self, timing: &Timing, now: Timestamp) -> Option<Change> {
        let due = self.due(timing)?;
        if now < due {
            return None;
        }
        let toward = self.pending?.toward;
        self.last = Some(self.last.map_or(due, |l| l.max(due)));
        Some(self.apply(toward, timing, due))
    }

    fn apply(&mut self, to: u8, timing: &Timing, at: Timestamp) -> Change {
        let from = self.level;
        self.level = to;
        self.pending = None;
        match (from, to) {
            (0, level) => match self.resolved_at {
                Some(r) if at.millis() - r.millis() < timing.cooldown_ms => {
                    Change::Reopened { level, at }
                }
                _ => Change::Raised { level, at },
            },
            (from, 0) => {
                self.resolved_at = Some(at);
                Change::Resolved { from, at }
            }
            (from, to) if to > from => Change::Escalated { from, to, at },
            (from, to) => Change::DeEscalated { from, to, at },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::Direction;
    use pantau_model::Thresholds;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    fn gauge(deadband: f64) -> Ladder {
        Ladder::siaga(
            &Thresholds {
                siaga3: 100.0,
                siaga2: 200.0,
                siaga1: 300.0,
            },
            deadband,
        )
        .expect("valid")
    }

    use crate::at_minute as t;

    /// Feeds `values` a minute apart; the changes.
    fn run(ladder: &Ladder, timing: &Timing, values: &[f64]) -> Vec<Change> {
        let mut tr = Tracker::default();
        values
            .iter()
            .enumerate()
            .filter_map(|(i, &v)| {
                tr.observe(ladder, timing, v, t(i as i64))
                    .expect("in order")
            })
            .collect()
    }

    #[test]
    fn a_gauge_through_every_level_and_back_is_one_alert_with_five_changes() {
        let changes = run(
            &gauge(5.0),
            &Timing::default(),
            &[150.0, 250.0, 350.0, 250.0, 50.0],
        );
        assert_eq!(
            changes,
            vec![
                Change::Raised { level: 1, at: t(0) },
                Change::Escalated {
                    from: 1,
                    to: 2,
                    at: t(1)
                },
                Change::Escalated {
                    from: 2,
                    to: 3,
                    at: t(2)
                },
                Change::DeEscalated {
                    from: 3,
                    to: 2,
                    at: t(3)
                },
                Change::Resolved { from: 2, at: t(4) },
            ]
        );
    }

    #[test]
    fn a_jump_past_several_levels_raises_the_highest_reached() {
        let changes = run(&gauge(5.0), &Timing::default(), &[50.0, 320.0, 40.0]);
        assert_eq!(
            changes,
            vec![
                Change::Raised { level: 3, at: t(1) },
                Change::Resolved { from: 3, at: t(2) },
            ]
        );
    }

    #[test]
    fn a_value_oscillating_inside_the_deadband_is_one_alert() {
        let values: Vec<f64> = (0..60)
            .map(|i| if i % 2 == 0 { 102.0 } else { 97.0 })
            .collect();
        let changes = run(&gauge(5.0), &Timing::default(), &values);
        assert_eq!(changes, vec![Change::Raised { level: 1, at: t(0) }]);
        // Without a deadband the same values flap at every reading...
        let flapping = run(&gauge(0.0), &Timing::default(), &values);
        assert_eq!(flapping.len(), 60);
        // ...and with a cool-down each raise is the same alert reopened.
        let timing = Timing::new(0, 0, 10 * MIN).expect("valid");
        let reopened = run(&gauge(0.0), &timing, &values);
        assert_eq!(reopened[0], Change::Raised { level: 1, at: t(0) });
        assert!(reopened[1..]
            .iter()
            .all(|c| !matches!(c, Change::Raised { .. })));
    }

    #[test]
    fn a_spike_shorter_than_for_raises_nothing_and_a_lasting_one_raises_at_its_time() {
        let timing = Timing::new(5 * MIN, 0, 0).expect("valid");
        // Three minutes above, then back.
        let spike = [50.0, 150.0, 150.0, 150.0, 50.0, 50.0];
        assert_eq!(run(&gauge(5.0), &timing, &spike), vec![]);
        // Above for good: raised by the reading five minutes after the first.
        let lasting = [50.0, 150.0, 150.0, 150.0, 150.0, 150.0, 150.0];
        assert_eq!(
            run(&gauge(5.0), &timing, &lasting),
            vec![Change::Raised { level: 1, at: t(6) }]
        );
    }

    #[test]
    fn a_pending_window_completes_on_time_without_another_reading_and_after_a_restart() {
        let ladder = gauge(5.0);
        let timing = Timing::new(5 * MIN, 10 * MIN, 0).expect("valid");
        let mut tr = Tracker::default();
        assert_eq!(tr.observe(&ladder, &timing, 180.0, t(0)), Ok(None));
        assert_eq!(tr.due(&timing), Some(t(5)));
        // Kept and restored as the platform state keeps it.
        let saved = serde_json::to_string(&tr).expect("serializes");
        let mut tr: Tracker = serde_json::from_str(&saved).expect("restores");
        assert_eq!(tr.expire(&timing, t(4)), None);
        assert_eq!(
            tr.expire(&timing, t(9)),
            Some(Change::Raised { level: 1, at: t(5) })
        );
        assert_eq!(tr.due(&timing), None);
        // Clearing waits clear_for.
        assert_eq!(tr.observe(&ladder, &timing, 20.0, t(10)), Ok(None));
        assert_eq!(tr.observe(&ladder, &timing, 20.0, t(15)), Ok(None));
        assert_eq!(
            tr.observe(&ladder, &timing, 20.0, t(20)),
            Ok(Some(Change::Resolved { from: 1, at: t(20) }))
        );
    }

    #[test]
    fn a_reading_older_than_the_last_is_refused() {
        let ladder = gauge(5.0);
        let timing = Timing::default();
        let mut tr = Tracker::default();
        tr.observe(&ladder, &timing, 150.0, t(5)).expect("first");
        assert_eq!(
            tr.observe(&ladder, &timing, 350.0, t(4)),
            Err(Stale {
                at: t(4),
                last: t(5)
            })
        );
        assert_eq!(tr.level(), 1);
    }

    #[test]
    fn a_below_rule_raises_on_low_values() {
        let battery = Ladder::new(Direction::Below, vec![11.8], 0.2, None).expect("valid");
        let changes = run(&battery, &Timing::default(), &[12.6, 11.7, 11.9, 12.1]);
        assert_eq!(
            changes,
            vec![
                Change::Raised { level: 1, at: t(1) },
                Change::Resolved { from: 1, at: t(3) },
            ]
        );
    }

    #[test]
    fn negative_durations_are_refused_naming_the_field() {
        assert_eq!(Timing::new(-1, 0, 0).expect_err("refused").field, "for");
        assert_eq!(
            Timing::new(0, -1, 0).expect_err("refused").field,
            "clear_for"
        );
        assert_eq!(
            Timing::new(0, 0, -1).expect_err("refused").field,
            "cooldown"
        );
    }

    proptest! {
        /// Whatever the values and durations, the changes chain: each starts
        /// where the previous one ended, an alert opens only from clear and
        /// resolves only from open, times never go back, and the tracker's
        /// level is where the last change left it.
        #[test]
        fn changes_always_chain(
            values in prop::collection::vec(0.0f64..400.0, 1..200),
            raise_for in 0i64..5,
            clear_for in 0i64..5,
            deadband in 0.0f64..30.0,
        ) {
            let ladder = gauge(deadband);
            let timing = Timing::new(raise_for * MIN, clear_for * MIN, 3 * MIN).expect("valid");
            let mut tr = Tracker::default();
            let mut level = 0;
            let mut last_at = Timestamp(i64::MIN);
            for (i, &v) in values.iter().enumerate() {
                let Some(c) = tr.observe(&ladder, &timing, v, t(i as i64)).expect("in order") else {
                    continue;
                };
                match c {
                    Change::Raised { .. } | Change::Reopened { .. } => prop_assert_eq!(level, 0),
                    Change::Escalated { from, to, .. } => {
                        prop_assert_eq!(from, level);
                        prop_assert!(to > from);
                    }
                    Change::DeEscalated { from, to, .. } => {
                        prop_assert_eq!(from, level);
                        prop_assert!(to < from && to > 0);
                    }
                    Change::Resolved { from, .. } => {
                        prop_assert_eq!(from, level);
                        prop_assert!(from > 0);
                    }
                }
                prop_assert!(c.at() >= last_at);
                last_at = c.at();
                level = c.level();
                prop_assert!(level <= ladder.len());
            }
            prop_assert_eq!(tr.level(), level);
        }
    }
}
