//! `pantau up` settings: command-line flags (each with a `PANTAU_*` env
//! twin) over an optional TOML file over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The optional configuration file (`--config FILE`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (state, store, TLS material).
    pub data_dir: Option<PathBuf>,
    /// HTTP API listen address.
    pub http_listen: Option<SocketAddr>,
    /// MQTT over TLS listen address.
    pub mqtt_listen: Option<SocketAddr>,
    /// Sensor registry file.
    pub registry: Option<PathBuf>,
    /// Extra DNS names or IPs for the generated server certificate.
    #[serde(default)]
    pub tls_names: Vec<String>,
}

impl FileConfig {
    /// Reads a config file; errors name the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }
}

/// Effective settings of `pantau up`.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// MQTT/TLS listen address.
    pub mqtt_listen: SocketAddr,
    /// Registry file, if any.
    pub registry: Option<PathBuf>,
    /// Run the simulated demo gateways.
    pub demo: bool,
    /// Sampling interval of the demo gateways.
    pub demo_interval: std::time::Duration,
    /// Extra server certificate names.
    pub tls_names: Vec<String>,
    /// Storage selection.
    pub storage: crate::storage::StorageArgs,
}

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./pantau-data";
/// Default HTTP address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default MQTT address.
pub const DEFAULT_MQTT: &str = "0.0.0.0:8883";
