//! The telemetry envelope (DESIGN.md §3): its wire form, decoding that keeps
//! each reading separate so one bad reading never spoils the others, and
//! encoding for gateways.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::time::Timestamp;

/// The envelope format version this crate speaks.
pub const ENVELOPE_VERSION: u32 = 1;

/// A field value: a number or a flag.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A number (counts are whole numbers).
    Num(f64),
    /// A flag such as `occupied`.
    Bool(bool),
}

impl Value {
    /// The value as a number (`true` = 1, `false` = 0), as stored.
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Num(v) => v,
            Value::Bool(b) => f64::from(u8::from(b)),
        }
    }
}

/// The values of one reading, by field name.
pub type Values = BTreeMap<String, Value>;

/// One validated reading: a sensor's values at an observation time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// The sensor that observed.
    pub sensor: String,
    /// Observation time at the sensor (UTC).
    pub ts: Timestamp,
    /// Field values.
    pub values: Values,
}

/// An envelope whose header decoded; its readings are still raw JSON.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// Format version; always [`ENVELOPE_VERSION`] once decoded.
    pub v: u32,
    /// The sending gateway, as it claims.
    pub gw: String,
    /// Per-gateway sequence number.
    pub seq: u64,
    /// When the gateway sent the envelope, if given.
    pub sent: Option<String>,
    /// Each reading, still undecoded, so it can fail on its own.
    pub readings: Vec<&'a RawValue>,
}

/// Why a whole envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The payload is not UTF-8.
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    /// The payload is not a JSON envelope of the expected shape.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The envelope has a version this platform does not speak.
    #[error("unsupported envelope version {0}, expected 1")]
    Version(u32),
    /// The envelope's `gw` differs from the gateway that sent it.
    #[error("envelope names gateway {claimed:?} but was sent by {actual:?}")]
    WrongGateway {
        /// What the envelope says.
        claimed: String,
        /// Who sent it.
        actual: String,
    },
}

impl EnvelopeError {
    /// A short stable label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::NotUtf8 => "not_utf8",
            EnvelopeError::Malformed(_) => "malformed_envelope",
            EnvelopeError::Version(_) => "unsupported_version",
            EnvelopeError::WrongGateway { .. } => "wrong_gateway",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope<'a> {
    v: u32,
    gw: String,
    seq: u64,
    #[serde(default)]
    sent: Option<String>,
    #[serde(borrow)]
    readings: Vec<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Decodes the envelope header and splits out the raw readings.
    pub fn decode(payload: &'a [u8]) -> Result<Self, EnvelopeError> {
        let text = std::str::from_utf8(payload).map_err(|_| EnvelopeError::NotUtf8)?;
        let wire: WireEnvelope<'a> =
            serde_json::from_str(text).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if wire.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(wire.v));
        }
        Ok(Envelope {
            v: wire.v,
            gw: wire.gw,
            seq: wire.seq,
            sent: wire.sent,
            readings: wire.readings,
        })
    }
}

/// A reading as written on the wire, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireReading {
    pub(crate) sensor: String,
    pub(crate) ts: String,
    pub(crate) values: UniqueMap,
}

/// A JSON object whose keys must be unique; values are kept raw for
/// per-field checks.
#[derive(Debug)]
pub(crate) struct UniqueMap(pub(crate) Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of field values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueMap, A::Error> {
                // Linear in the input: at most `max` entries are taken
                // (no kind has more fields), so the duplicate check below
                // compares a handful of keys, never thousands.
                let max = crate::kind::SensorKind::max_fields();
                let mut out: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.len() == max {
                        return Err(de::Error::custom(format_args!(
                            "more than {max} field values (no sensor kind has more)"
                        )));
                    }
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
                    }
                    let v = map.next_value::<serde_json::Value>()?;
                    out.push((k, v));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A reading to encode, as a gateway sends it.
#[derive(Debug, Clone, Serialize)]
pub struct OutReading<'a> {
    /// Sensor id.
    pub sensor: &'a str,
    /// Observation time, RFC 3339.
    pub ts: String,
    /// Field values.
    pub values: &'a Values,
}

#[derive(Serialize)]
struct OutEnvelope<'a> {
    v: u32,
    gw: &'a str,
    seq: u64,
    sent: String,
    readings: Vec<OutReading<'a>>,
}

/// Encodes readings into an envelope payload (what a gateway publishes).
pub fn encode(gw: &str, seq: u64, sent: Timestamp, readings: &[Reading]) -> Vec<u8> {
    let env = OutEnvelope {
        v: ENVELOPE_VERSION,
        gw,
        seq,
        sent: sent.to_rfc3339(),
        readings: readings
            .iter()
            .map(|r| OutReading {
                sensor: &r.sensor,
                ts: r.ts.to_rfc3339(),
                values: &r.values,
            })
            .collect(),
    };
    serde_json::to_vec(&env).unwrap_or_default()
}
