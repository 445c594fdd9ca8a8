//! The gateway agent's library: reading sources (simulators, JSON lines,
//! Modbus TCP/RTU),
//! the disk spool, and the MQTT uplink that empties it. `pantau-agent` runs
//! it on a field gateway; `pantau up --demo` runs simulated gateways with it
//! inside the platform process.

#![forbid(unsafe_code)]

pub mod agent;
pub mod command;
pub mod config;
pub mod modbus;
pub mod sim;
pub mod source;
pub mod spool;
pub mod status;
pub mod uplink;

pub use agent::{Agent, SourceSpec};
pub use sim::{Model, SimSensor};
pub use uplink::{Endpoint, UplinkConfig, UplinkError};
