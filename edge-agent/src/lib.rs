//! The gateway agent's library: reading sources (simulators, JSON lines)
//! and the MQTT uplink. `pantau-agent` runs it on a field gateway; `pantau
//! up --demo` runs simulated gateways with it inside the platform process.

#![forbid(unsafe_code)]

pub mod agent;
pub mod config;
pub mod sim;
pub mod source;
pub mod uplink;

pub use sim::{Model, SimSensor};
pub use uplink::{UplinkConfig, UplinkError};
