//! Pantau's data model: readings and their envelope (the wire contract of
//! DESIGN.md §3), sensor kinds with their fields, units and valid ranges,
//! per-reading validation, MQTT topic helpers, the sensor registry and the
//! statuses derived from readings (flood Siaga level).
//!
//! This crate is pure: no I/O except reading a registry file, no async.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod derive;
pub mod envelope;
pub mod id;
pub mod kind;
pub mod registry;
pub mod scope;
pub mod time;
pub mod topic;
pub mod validate;

pub use envelope::{Envelope, EnvelopeError, Reading, Value, Values};
pub use id::{GatewayId, IdError, SensorId};
pub use kind::{FieldSpec, FieldType, SensorKind};
pub use registry::{Registry, RegistryError, Sensor, SensorSpec, SharedRegistry, Thresholds};
pub use time::Timestamp;
pub use topic::{GatewayTopic, TopicKind};
pub use validate::{Checked, Policy, RejectReason, Rejection, SensorLookup};
