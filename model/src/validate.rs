//! Validation of an envelope, reading by reading: a bad reading is rejected
//! with exactly what is wrong (sensor, field, value, rule) and the good
//! readings of the same envelope are kept.

use std::fmt;

use crate::envelope::{Envelope, EnvelopeError, Reading, Value, Values, WireReading};
use crate::id::check_id;
use crate::kind::{FieldType, SensorKind};
use crate::time::Timestamp;

/// Time limits on observation timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How far in the future a timestamp may be (gateway clock skew), ms.
    pub max_future_ms: i64,
    /// How old a timestamp may be (a gateway offline for days), ms.
    pub max_age_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 90 * 24 * 3600 * 1000,
        }
    }
}

/// What the validator needs to know about a sensor.
pub trait SensorLookup {
    /// The kind of `sensor` and the gateway it belongs to, if registered.
    fn lookup(&self, sensor: &str) -> Option<(SensorKind, &str)>;
}

/// The rule a rejected reading broke.
#[derive(Debug, Clone, PartialEq)]
pub enum RejectReason {
    /// The reading is not a JSON object of the expected shape.
    Malformed(String),
    /// The sensor id breaks the identifier rules.
    BadSensorId,
    /// The sensor is not in the registry.
    UnknownSensor,
    /// The sensor belongs to another gateway.
    NotOwned {
        /// The gateway the sensor is assigned to.
        owner: String,
    },
    /// `ts` is not an RFC 3339 timestamp.
    BadTimestamp,
    /// `ts` is further in the future than the policy allows.
    FutureTimestamp,
    /// `ts` is older than the policy allows.
    StaleTimestamp,
    /// The reading has no values.
    NoValues,
    /// The field does not exist for this sensor's kind.
    UnknownField,
    /// The value has the wrong JSON type.
    WrongType {
        /// What the field takes.
        expected: &'static str,
    },
    /// A count with a fractional part.
    NotInteger,
    /// The value is outside the field's plausible range.
    OutOfRange {
        /// Smallest allowed.
        min: f64,
        /// Largest allowed.
        max: f64,
    },
}

impl RejectReason {
    /// A short stable label for counters and logs.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::Malformed(_) => "malformed_reading",
            RejectReason::BadSensorId => "bad_sensor_id",
            RejectReason::UnknownSensor => "unknown_sensor",
            RejectReason::NotOwned { .. } => "sensor_of_other_gateway",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::StaleTimestamp => "stale_timestamp",
            RejectReason::NoValues => "no_values",
            RejectReason::UnknownField => "unknown_field",
            RejectReason::WrongType { .. } => "wrong_type",
            RejectReason::NotInteger => "not_integer",
            RejectReason::OutOfRange { .. } => "out_of_range",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::Malformed(m) => write!(f, "malformed reading: {m}"),
            RejectReason::BadSensorId => f.write_str("invalid sensor id"),
            RejectReason::UnknownSensor => f.write_str("sensor is not registered"),
            RejectReason::NotOwned { owner } => {
                write!(f, "sensor belongs to gateway {owner}")
            }
            RejectReason::BadTimestamp => f.write_str("ts is not an RFC 3339 timestamp"),
            RejectReason::FutureTimestamp => f.write_str("ts is too far in the future"),
            RejectReason::StaleTimestamp => f.write_str("ts is too old"),
            RejectReason::NoValues => f.write_str("reading has no values"),
            RejectReason::UnknownField => f.write_str("field does not exist for this kind"),
            RejectReason::WrongType { expected } => write!(f, "expected {expected}"),
            RejectReason::NotInteger => f.write_str("expected a whole number"),
            RejectReason::OutOfRange { min, max } => {
                write!(f, "outside the valid range {min}..={max}")
            }
        }
    }
}

/// One rejected reading and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Position of the reading in the envelope.
    pub index: usize,
    /// The sensor, when it could be read.
    pub sensor: Option<String>,
    /// The offending field, for field rules.
    pub field: Option<String>,
    /// The offending value, as written (truncated).
    pub value: Option<String>,
    /// The rule broken.
    pub reason: RejectReason,
    /// The reading as received (its JSON), so it can be kept and
    /// re-ingested once the cause is fixed.
    pub raw: Box<str>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading {}", self.index)?;
        if let Some(s) = &self.sensor {
            write!(f, " sensor {s}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " field {field}")?;
        }
        if let Some(v) = &self.value {
            write!(f, " value {v}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The outcome of validating one envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The gateway's sequence number.
    pub seq: u64,
    /// Readings that passed every rule.
    pub accepted: Vec<Reading>,
    /// The registered kind of each accepted reading, by position (looked
    /// up once, during validation, so nothing downstream can miss it).
    pub kinds: Vec<SensorKind>,
    /// Readings that broke a rule.
    pub rejected: Vec<Rejection>,
}

/// Decodes and validates an envelope published by `gateway`.
pub fn check_envelope(
    payload: &[u8],
    gateway: &str,
    sensors: &dyn SensorLookup,
    now: Timestamp,
    policy: &Policy,
) -> Result<Checked, EnvelopeError> {
    let env = Envelope::decode(payload)?;
    if env.gw != gateway {
        return Err(EnvelopeError::WrongGateway {
            claimed: env.gw,
            actual: gateway.to_owned(),
        });
    }
    let mut accepted = Vec::with_capacity(env.readings.len());
    let mut kinds = Vec::with_capacity(env.readings.len());
    let mut rejected = Vec::new();
    for (index, raw) in env.readings.iter().enumerate() {
        match check_reading(raw.get(), gateway, sensors, now, policy) {
            Ok((r, kind)) => {
                accepted.push(r);
                kinds.push(kind);
            }
            Err(mut rej) => {
                rej.index = index;
                rej.raw = raw.get().into();
                rejected.push(*rej);
            }
        }
    }
    Ok(Checked {
        seq: env.seq,
        accepted,
        kinds,
        rejected,
    })
}

fn reject(sensor: Option<&str>, reason: RejectReason) -> Box<Rejection> {
    Box::new(Rejection {
        index: 0,
        sensor: sensor.map(str::to_owned),
        field: None,
        value: None,
        reason,
        raw: Box::default(),
    })
}

fn shown(v: &serde_json::Value) -> String {
    let mut s = v.to_string();
    if s.len() > 64 {
        let mut cut = 64;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn check_reading(
    raw: &str,
    gateway: &str,
    sensors: &dyn SensorLookup,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Reading, SensorKind), Box<Rejection>> {
    let wire: WireReading = serde_json::from_str(raw)
        .map_err(|e| reject(None, RejectReason::Malformed(e.to_string())))?;
    let sensor = wire.sensor.as_str();
    if check_id(sensor).is_err() {
        return Err(reject(None, RejectReason::BadSensorId));
    }
    let (kind, owner) = sensors
        .lookup(sensor)
        .ok_or_else(|| reject(Some(sensor), RejectReason::UnknownSensor))?;
    if owner != gateway {
        return Err(reject(
            Some(sensor),
            RejectReason::NotOwned {
                owner: owner.to_owned(),
            },
        ));
    }
    let ts = Timestamp::parse_rfc3339(&wire.ts)
        .ok_or_else(|| reject(Some(sensor), RejectReason::BadTimestamp))?;
    if ts.millis() > now.millis().saturating_add(policy.max_future_ms) {
        return Err(reject(Some(sensor), RejectReason::FutureTimestamp));
    }
    if ts.millis() < now.millis().saturating_sub(policy.max_age_ms) {
        return Err(reject(Some(sensor), RejectReason::StaleTimestamp));
    }
    if wire.values.0.is_empty() {
        return Err(reject(Some(sensor), RejectReason::NoValues));
    }
    let mut values = Values::new();
    for (name, raw_value) in wire.values.0 {
        let field_err = |reason| {
            Box::new(Rejection {
                index: 0,
                sensor: Some(sensor.to_owned()),
                field: Some(name.clone()),
                value: Some(shown(&raw_value)),
                reason,
                raw: Box::default(),
            })
        };
        let Some(spec) = kind.field(&name) else {
            return Err(field_err(RejectReason::UnknownField));
        };
        let value = match (spec.ty, &raw_value) {
            (FieldType::Bool, serde_json::Value::Bool(b)) => Value::Bool(*b),
            (FieldType::Bool, _) => {
                return Err(field_err(RejectReason::WrongType {
                    expected: "true or false",
                }))
            }
            (FieldType::Float | FieldType::Integer, serde_json::Value::Number(n)) => {
                let Some(v) = n.as_f64().filter(|v| v.is_finite()) else {
                    return Err(field_err(RejectReason::WrongType {
                        expected: "a finite number",
                    }));
                };
                if spec.ty == FieldType::Integer && v.fract() != 0.0 {
                    return Err(field_err(RejectReason::NotInteger));
                }
                if v < spec.min || v > spec.max {
                    return Err(field_err(RejectReason::OutOfRange {
                        min: spec.min,
                        max: spec.max,
                    }));
                }
                Value::Num(v)
            }
            _ => {
                return Err(field_err(RejectReason::WrongType {
                    expected: "a number",
                }))
            }
        };
        values.insert(name, value);
    }
    Ok((
        Reading {
            sensor: wire.sensor,
            ts,
            values,
        },
        kind,
    ))
}

#[cfg(test)]
mod tests;
