//! A rule's severity ladder: the thresholds of its levels, in order of
//! increasing severity, and the hysteresis that keeps a value hovering at
//! a threshold from flapping.
//!
//! Severities count from 1 (the first level crossed) up to the number of
//! levels; 0 is clear. A flood gauge's Siaga ladder has three levels —
//! severity 1 = Siaga 3 (Waspada), 2 = Siaga 2, 3 = Siaga 1 (Awas) — from
//! the gauge's own thresholds ([`Ladder::siaga`]); a threshold rule on any
//! field has one or more.
//!
//! A level is reached at its threshold and held, once reached, until the
//! value falls past its clear point: the threshold less the deadband (more
//! for a `below` rule), or for the first level an explicit clear value. A
//! value that jumps past several thresholds at once reaches the highest of
//! them.

use pantau_model::derive::SiagaLevel;
use pantau_model::Thresholds;
use serde::{Deserialize, Serialize};

/// Most levels a ladder may have.
pub const MAX_LEVELS: usize = 8;

/// Which side of a threshold is the alarming one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// At or above the threshold (water level, wind gust, vessels waiting).
    Above,
    /// At or below the threshold (battery voltage).
    Below,
}

/// A rule that cannot be used, naming the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    /// The rule's field at fault (`levels`, `clear`, `deadband`, `for`, ...).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl RuleError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Thresholds by severity with their hysteresis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ladder {
    direction: Direction,
    /// Threshold of severity `i + 1`, more severe as `i` grows.
    levels: Vec<f64>,
    /// How far past a reached level's threshold the value must go back
    /// before the level is left (≥ 0, same unit as the field).
    deadband: f64,
    /// Where the first level clears, if not at its threshold less the
    /// deadband.
    clear: Option<f64>,
}

impl Ladder {
    /// A ladder of `levels` (least severe first), checked: at least one
    /// and at most [`MAX_LEVELS`] finite thresholds, each more severe than
    /// the one before; a finite deadband ≥ 0; a clear value on the calm side
    /// of the first threshold.
    pub fn new(
        direction: Direction,
        levels: Vec<f64>,
        deadband: f64,
        clear: Option<f64>,
    ) -> Result<Self, RuleError> {
        if levels.is_empty() || levels.len() > MAX_LEVELS {
            return Err(RuleError::new(
                "levels",
                format!("between 1 and {MAX_LEVELS} thresholds"),
            ));
        }
        if levels.iter().any(|v| !v.is_finite()) {
            return Err(RuleError::new(
                "levels",
                "thresholds must be finite numbers",
            ));
        }
        let rising = levels.windows(2).all(|w| match direction {
            Direction::Above => w[0] < w[1],
            Direction::Below => w[0] > w[1],
        });
        if !rising {
            return Err(RuleError::new(
                "levels",
                match direction {
                    Direction::Above => "each level's threshold must be above the one before",
                    Direction::Below => "each level's threshold must be below the one before",
                },
            ));
        }
        if !deadband.is_finite() || deadband < 0.0 {
            return Err(RuleError::new(
                "deadband",
                "must be a finite number, 0 or more",
            ));
        }
        if let Some(c) = clear {
            let calm_side = c.is_finite()
                && match direction {
                    Direction::Above => c < levels[0],
                    Direction::Below => c > levels[0],
                };
            if !calm_side {
                return Err(RuleError::new(
                    "clear",
                    match direction {
                        Direction::Above => "an `above` rule clears below its first threshold",
                        Direction::Below => "a `below` rule clears above its first threshold",
                    },
                ));
            }
        }
        Ok(Self {
            direction,
            levels,
            deadband,
            clear,
        })
    }

    /// The Siaga ladder of a flood gauge's thresholds (Siaga 3, 2, 1), with
    /// `deadband` cm of hysteresis. The registry has already checked that
    /// the thresholds rise.
    pub fn siaga(t: &Thresholds, deadband: f64) -> Result<Self, RuleError> {
        Self::new(
            Direction::Above,
            vec![t.siaga3, t.siaga2, t.siaga1],
            deadband,
            None,
        )
    }

    /// Number of levels (the highest severity).
    pub fn len(&self) -> u8 {
        self.levels.len() as u8
    }

    /// Never true: a ladder has at least one level.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The rule's direction.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The threshold of `severity` (1-based).
    pub fn threshold(&self, severity: u8) -> Option<f64> {
        self.levels
            .get(usize::from(severity).checked_sub(1)?)
            .copied()
    }

    /// The severity `value` stands at for an alert now at `current`
    /// (0 = clear): levels above `current` are reached at their threshold,
    /// levels up to `current` are held until their clear point.
    pub fn severity(&self, value: f64, current: u8) -> u8 {
        if !value.is_finite() {
            // Not a measurement: no change.
            return current;
        }
        let mut reached = 0;
        for (i, &threshold) in self.levels.iter().enumerate() {
            let severity = i as u8 + 1;
            let point = if severity <= current {
                self.clear_point(severity, threshold)
            } else {
                threshold
            };
            let past = match self.direction {
                Direction::Above => value >= point,
                Direction::Below => value <= point,
            };
            if !past {
                break;
            }
            reached = severity;
        }
        reached
    }

    fn clear_point(&self, severity: u8, threshold: f64) -> f64 {
        match (severity, self.clear, self.direction) {
            (1, Some(c), _) => c,
            (_, _, Direction::Above) => threshold - self.deadband,
            (_, _, Direction::Below) => threshold + self.deadband,
        }
    }
}

/// The Siaga level of a flood alert's severity (0 = Normal).
pub fn siaga_of(severity: u8) -> SiagaLevel {
    SiagaLevel(4u8.saturating_sub(severity.min(3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> Ladder {
        Ladder::siaga(
            &Thresholds {
                siaga3: 100.0,
                siaga2: 200.0,
                siaga1: 300.0,
            },
            5.0,
        )
        .expect("valid")
    }

    #[test]
    fn levels_are_reached_at_their_threshold_and_the_highest_one_wins() {
        let l = gauge();
        assert_eq!(l.severity(99.9, 0), 0);
        assert_eq!(l.severity(100.0, 0), 1);
        assert_eq!(l.severity(250.0, 0), 2);
        // A jump past every threshold reaches the highest, not the first.
        assert_eq!(l.severity(350.0, 0), 3);
        assert_eq!(siaga_of(3), SiagaLevel(1));
        assert_eq!(siaga_of(1), SiagaLevel(3));
        assert_eq!(siaga_of(0), SiagaLevel(4));
    }

    #[test]
    fn a_reached_level_is_held_within_its_deadband() {
        let l = gauge();
        assert_eq!(l.severity(96.0, 1), 1);
        assert_eq!(l.severity(95.0, 1), 1);
        assert_eq!(l.severity(94.9, 1), 0);
        assert_eq!(l.severity(197.0, 2), 2);
        assert_eq!(l.severity(194.0, 2), 1);
        // Not yet reached: no deadband going up.
        assert_eq!(l.severity(197.0, 1), 1);
        // Not a number: no change.
        assert_eq!(l.severity(f64::NAN, 2), 2);
    }

    #[test]
    fn below_rules_and_an_explicit_clear_value() {
        // Battery low at 11.8 V, critical at 11.2 V, clear from 12.4 V.
        let l = Ladder::new(Direction::Below, vec![11.8, 11.2], 0.1, Some(12.4)).expect("valid");
        assert_eq!(l.severity(12.0, 0), 0);
        assert_eq!(l.severity(11.8, 0), 1);
        assert_eq!(l.severity(11.0, 0), 2);
        assert_eq!(l.severity(11.25, 2), 2);
        assert_eq!(l.severity(11.35, 2), 1);
        assert_eq!(l.severity(12.3, 1), 1);
        assert_eq!(l.severity(12.5, 1), 0);
    }

    #[test]
    fn bad_ladders_are_refused_naming_the_field() {
        let err = |r: Result<Ladder, RuleError>| r.expect_err("refused").field;
        assert_eq!(
            err(Ladder::new(Direction::Above, vec![], 0.0, None)),
            "levels"
        );
        assert_eq!(
            err(Ladder::new(Direction::Above, vec![2.0, 1.0], 0.0, None)),
            "levels"
        );
        assert_eq!(
            err(Ladder::new(Direction::Below, vec![1.0, 2.0], 0.0, None)),
            "levels"
        );
        assert_eq!(
            err(Ladder::new(Direction::Above, vec![f64::NAN], 0.0, None)),
            "levels"
        );
        assert_eq!(
            err(Ladder::new(Direction::Above, vec![1.0; 9], 0.0, None)),
            "levels"
        );
        assert_eq!(
            err(Ladder::new(Direction::Above, vec![1.0], -1.0, None)),
            "deadband"
        );
        // A clear level on the wrong side of the threshold.
        assert_eq!(
            err(Ladder::new(Direction::Above, vec![10.0], 0.0, Some(12.0))),
            "clear"
        );
        assert_eq!(
            err(Ladder::new(Direction::Below, vec![10.0], 0.0, Some(8.0))),
            "clear"
        );
    }
}
