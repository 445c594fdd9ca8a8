//! The `pantau` platform process: command line, configuration, wiring of
//! broker, ingest, store and API, the demo gateways, and ordered shutdown.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod backup;
pub mod broker_api;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dynsec;
pub mod ingest;
pub mod limits;
pub mod registry;
pub mod replica;
pub mod shutdown;
pub mod storage;
pub mod up;

/// The demo registry for Dumai, built into the binary.
pub const DEMO_REGISTRY: &str = include_str!("../../deploy/dumai-demo-registry.toml");
