//! `pantau-agent`'s configuration file (TOML) with `PANTAU_AGENT_*`
//! environment overrides for secrets. Minimal example:
//!
//! ```toml
//! gateway = "gw-test"
//! [broker]
//! url = "mqtts://127.0.0.1:8883"
//! ca_file = "pantau-data/tls/ca.pem"
//! username = "gw-test"
//! password = "TOKEN"
//! [spool]
//! path = "agent-spool"
//! [[source]]
//! type = "stdin"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sim::{Model, SimSensor};

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This gateway's id (also its MQTT client id and username).
    pub gateway: String,
    /// How to reach the platform.
    pub broker: BrokerSection,
    /// Local storage for readings not yet acknowledged.
    #[serde(default)]
    pub spool: SpoolSection,
    /// Envelope batching.
    #[serde(default)]
    pub batch: BatchSection,
    /// Where readings come from.
    #[serde(default)]
    pub source: Vec<SourceSection>,
}

/// `[broker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// `mqtts://HOST:PORT` (or `mqtt://` for a loopback broker).
    pub url: String,
    /// CA certificate that signed the broker's certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Username; must equal the gateway id on Pantau's broker.
    pub username: Option<String>,
    /// Token; `PANTAU_AGENT_PASSWORD` overrides it.
    pub password: Option<String>,
    /// MQTT keep-alive, e.g. `"30s"`.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// `[spool]`: the disk spool (see the edge-agent issue; this version keeps
/// readings in memory and only validates the setting).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Spool directory.
    pub path: Option<PathBuf>,
}

/// `[batch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    /// Most readings per envelope.
    #[serde(default = "default_max_readings")]
    pub max_readings: usize,
    /// Longest a reading waits for its envelope, e.g. `"500ms"`.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for BatchSection {
    fn default() -> Self {
        Self {
            max_readings: default_max_readings(),
            max_delay: default_max_delay(),
        }
    }
}

fn default_max_readings() -> usize {
    500
}

fn default_max_delay() -> Duration {
    Duration::from_millis(500)
}

/// One `[[source]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceSection {
    /// JSON lines on standard input.
    Stdin,
    /// Simulated sensors.
    Simulated {
        /// Sampling interval, e.g. `"5s"`.
        #[serde(default = "default_interval", with = "humantime_serde")]
        interval: Duration,
        /// The sensors to simulate.
        sensors: Vec<SimulatedSensor>,
    },
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

/// A simulated sensor in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedSensor {
    /// Sensor id.
    pub id: String,
    /// `river`, `street`, `tide`, `traffic`, `metocean` or `berth`.
    pub model: String,
}

/// A config error naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong, with the field.
    pub message: String,
}

impl SimulatedSensor {
    /// The simulator for this entry.
    pub fn build(&self) -> Result<SimSensor, String> {
        let model = match self.model.as_str() {
            "river" => Model::River { base_cm: 100.0, gain: 3.0, backwater: 0.0 },
            "street" => Model::Street { rob_from_m: 2.6 },
            "tide" => Model::Tide { mean_m: 1.7 },
            "traffic" => Model::Traffic { capacity_pcu_h: 2500.0, heavy_share: 0.08, window_s: 300 },
            "metocean" => Model::Metocean,
            "berth" => Model::Berth,
            other => {
                return Err(format!(
                    "source.sensors.model: unknown model {other:?} (river, street, tide, traffic, metocean, berth)"
                ))
            }
        };
        Ok(SimSensor::new(self.id.clone(), model))
    }
}

impl AgentConfig {
    /// Reads, parses and checks a config file; env overrides applied.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut cfg: AgentConfig = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if let Ok(p) = std::env::var("PANTAU_AGENT_PASSWORD") {
            cfg.broker.password = Some(p);
        }
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        pantau_model::id::check_id(&self.gateway).map_err(|e| format!("gateway: {e}"))?;
        let (tls, _, _) =
            crate::uplink::parse_url(&self.broker.url).map_err(|e| format!("broker.url: {e}"))?;
        if tls && self.broker.ca_file.is_none() {
            return Err("broker.ca_file: required for mqtts://".into());
        }
        if self.broker.password.is_none() {
            return Err("broker.password: required (or set PANTAU_AGENT_PASSWORD)".into());
        }
        if let Some(u) = &self.broker.username {
            if u != &self.gateway {
                return Err("broker.username: must equal the gateway id".into());
            }
        }
        if self.batch.max_readings == 0 {
            return Err("batch.max_readings: must be at least 1".into());
        }
        if self.source.is_empty() {
            return Err("source: at least one [[source]] is required".into());
        }
        for s in &self.source {
            if let SourceSection::Simulated { sensors, .. } = s {
                for sensor in sensors {
                    sensor.build()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, String> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    const MINIMAL: &str = r#"
gateway = "gw-test"
[broker]
url = "mqtts://127.0.0.1:8883"
ca_file = "pantau-data/tls/ca.pem"
username = "gw-test"
password = "TOKEN"
[spool]
path = "agent-spool"
[[source]]
type = "stdin"        # JSON lines: {"sensor":..,"ts":..,"values":{..}}
"#;

    #[test]
    fn the_minimal_file_works_as_written() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.gateway, "gw-test");
        assert!(matches!(c.source[0], SourceSection::Stdin));
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            parse(&MINIMAL.replace("mqtts://127.0.0.1:8883", "http://x"))
                .unwrap_err()
                .contains("broker.url")
        );
        assert!(
            parse(&MINIMAL.replace("username = \"gw-test\"", "username = \"other\""))
                .unwrap_err()
                .contains("broker.username")
        );
        assert!(
            parse(&MINIMAL.replace("type = \"stdin\"", "type = \"carrier-pigeon\""))
                .unwrap_err()
                .contains("carrier-pigeon")
        );
        assert!(parse(&MINIMAL.replace("[spool]", "[spool]\nsize = 3"))
            .unwrap_err()
            .contains("size"));
    }
}
