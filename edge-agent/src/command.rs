//! Commands on `pantau/v1/gw/{gw}/cmd`, and the per-sensor sampling
//! intervals they change.
//!
//! ```json
//! {"cmd": "status"}
//! {"cmd": "time", "now": "2026-11-28T10:00:00.000Z"}
//! {"cmd": "set_interval", "sensor": "fl-sungai-dumai-hilir", "interval": "10s"}
//! ```
//!
//! A malformed or unknown command is refused with a reason that the status
//! message carries (`last_command_error`); it never stops the agent.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;

/// Shortest sampling interval a command may set.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest sampling interval a command may set.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// A refused command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// Not valid JSON or not a known command.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// The sensor is not sampled by this agent's simulated or polled sources.
    #[error("unknown sensor {0:?}")]
    UnknownSensor(String),
    /// The interval is outside the allowed bounds.
    #[error("interval {0:?} outside 1s..=1day")]
    Interval(Duration),
}

/// A command from the platform.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Publish a status report now.
    Status {},
    /// The platform's clock (Pantau's broker sends it when the gateway
    /// subscribes to its commands).
    Time {
        /// RFC 3339.
        now: String,
    },
    /// Change one sensor's sampling interval.
    SetInterval {
        /// The sensor.
        sensor: String,
        /// The new interval, e.g. `"10s"`.
        #[serde(with = "humantime_serde")]
        interval: Duration,
    },
}

impl Command {
    /// Parses a command payload.
    pub fn parse(payload: &[u8]) -> Result<Self, CommandError> {
        serde_json::from_slice(payload).map_err(|e| CommandError::Malformed(e.to_string()))
    }
}

/// Sampling intervals of the sensors this agent samples itself.
#[derive(Debug, Default)]
pub struct Intervals {
    by_sensor: RwLock<HashMap<String, Duration>>,
    /// Signalled when an interval changes, so samplers reschedule.
    pub changed: Notify,
}

impl Intervals {
    /// Registers a sampled sensor with its configured interval.
    pub fn register(&self, sensor: &str, interval: Duration) {
        self.by_sensor
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sensor.to_owned(), interval);
    }

    /// The sensor's interval.
    pub fn get(&self, sensor: &str) -> Option<Duration> {
        self.by_sensor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sensor)
            .copied()
    }

    /// Changes a registered sensor's interval.
    pub fn set(&self, sensor: &str, interval: Duration) -> Result<(), CommandError> {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(CommandError::Interval(interval));
        }
        let mut map = self.by_sensor.write().unwrap_or_else(|p| p.into_inner());
        let slot = map
            .get_mut(sensor)
            .ok_or_else(|| CommandError::UnknownSensor(sensor.to_owned()))?;
        *slot = interval;
        drop(map);
        self.changed.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_are_refused_with_a_reason() {
        assert_eq!(
            Command::parse(br#"{"cmd":"status"}"#),
            Ok(Command::Status {})
        );
        assert_eq!(
            Command::parse(br#"{"cmd":"set_interval","sensor":"a","interval":"10s"}"#),
            Ok(Command::SetInterval {
                sensor: "a".into(),
                interval: Duration::from_secs(10)
            })
        );
        for bad in [
            &b"not json"[..],
            br#"{"cmd":"reboot"}"#,
            br#"{"cmd":"set_interval","sensor":"a"}"#,
            br#"{"cmd":"set_interval","sensor":"a","interval":"soon"}"#,
            br#"{"cmd":"status","extra":1}"#,
            &[0xff, 0xfe][..],
        ] {
            assert!(matches!(
                Command::parse(bad),
                Err(CommandError::Malformed(_))
            ));
        }
    }

    #[test]
    fn intervals_change_only_for_known_sensors_within_bounds() {
        let i = Intervals::default();
        i.register("a", Duration::from_secs(5));
        assert_eq!(i.set("a", Duration::from_secs(30)), Ok(()));
        assert_eq!(i.get("a"), Some(Duration::from_secs(30)));
        assert_eq!(
            i.set("b", Duration::from_secs(30)),
            Err(CommandError::UnknownSensor("b".into()))
        );
        assert!(i.set("a", Duration::from_millis(10)).is_err());
        assert!(i.set("a", Duration::from_secs(200_000)).is_err());
        assert_eq!(i.get("a"), Some(Duration::from_secs(30)));
    }
}
