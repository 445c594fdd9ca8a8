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

use crate::modbus::Register;
use crate::sim::{Model, SimSensor};
use crate::spool::Sync;

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
    /// Further brokers tried in order when the one before is unreachable.
    #[serde(default)]
    pub failover: Vec<String>,
    /// CA certificate that signed the broker's certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Username; must equal the gateway id on Pantau's broker.
    pub username: Option<String>,
    /// Token; `PANTAU_AGENT_PASSWORD` overrides it. Not needed with a
    /// client certificate.
    pub password: Option<String>,
    /// Client certificate (PEM) issued by the platform CA (`pantau gateway
    /// add --cert`): the gateway's identity instead of a token.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// MQTT keep-alive, e.g. `"30s"`.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Backlog replay bound after an outage, readings per second.
    #[serde(default = "default_replay_readings_per_s")]
    pub replay_readings_per_s: u32,
    /// How often the status is published, e.g. `"60s"`.
    #[serde(default = "default_status_interval", with = "humantime_serde")]
    pub status_interval: Duration,
}

fn default_replay_readings_per_s() -> u32 {
    50_000
}

fn default_status_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// `[spool]`: the disk spool (see `spool.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Spool directory.
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// Bound on the spool's size in MiB; beyond it the oldest readings are
    /// dropped and counted.
    #[serde(default = "default_spool_mib")]
    pub max_mib: f64,
    /// `"normal"` (survives an agent crash) or `"full"` (survives power loss).
    #[serde(default)]
    pub synchronous: Sync,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            path: default_spool_path(),
            max_mib: default_spool_mib(),
            synchronous: Sync::default(),
        }
    }
}

impl SpoolSection {
    /// The bound in bytes.
    pub fn max_bytes(&self) -> u64 {
        (self.max_mib * 1024.0 * 1024.0) as u64
    }
}

fn default_spool_path() -> PathBuf {
    PathBuf::from("agent-spool")
}

fn default_spool_mib() -> f64 {
    256.0
}

/// `[batch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSection {
    /// Most readings per envelope.
    #[serde(default = "default_max_readings")]
    pub max_readings: usize,
    /// Most payload bytes per envelope (the broker's limit is 256 KiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Longest a reading waits for its envelope, e.g. `"500ms"`.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
    /// Envelopes awaiting their acknowledgement at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

impl Default for BatchSection {
    fn default() -> Self {
        Self {
            max_readings: default_max_readings(),
            max_bytes: default_max_bytes(),
            max_delay: default_max_delay(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

fn default_max_readings() -> usize {
    500
}

fn default_max_bytes() -> u64 {
    128 * 1024
}

fn default_max_in_flight() -> usize {
    16
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
    /// A Modbus TCP device.
    ModbusTcp {
        /// The device, e.g. `"192.168.1.20:502"`.
        address: std::net::SocketAddr,
        /// Unit (slave) id.
        #[serde(default = "default_unit")]
        unit: u8,
        /// Polling interval, e.g. `"5s"`.
        #[serde(default = "default_interval", with = "humantime_serde")]
        interval: Duration,
        /// Timeout of every connect and read, e.g. `"1s"`.
        #[serde(default = "default_modbus_timeout", with = "humantime_serde")]
        timeout: Duration,
        /// Register → field mappings.
        register: Vec<Register>,
    },
    /// A Modbus RTU device on a serial line.
    ModbusRtu {
        /// Serial device, e.g. `"/dev/ttyUSB0"`.
        device: String,
        /// Baud rate.
        #[serde(default = "default_baud")]
        baud: u32,
        /// Unit (slave) id.
        #[serde(default = "default_unit")]
        unit: u8,
        /// Polling interval, e.g. `"5s"`.
        #[serde(default = "default_interval", with = "humantime_serde")]
        interval: Duration,
        /// Timeout of every read, e.g. `"1s"`.
        #[serde(default = "default_modbus_timeout", with = "humantime_serde")]
        timeout: Duration,
        /// Register → field mappings.
        register: Vec<Register>,
    },
    /// JSON lines from local TCP connections (other programs on the gateway).
    JsonTcp {
        /// Address to listen on, e.g. `"127.0.0.1:7001"`.
        listen: std::net::SocketAddr,
    },
    /// Simulated sensors.
    Simulated {
        /// Sampling interval, e.g. `"5s"`.
        #[serde(default = "default_interval", with = "humantime_serde")]
        interval: Duration,
        /// The sensors to simulate.
        sensors: Vec<SimulatedSensor>,
    },
}

/// Plain `mqtt://` would send the gateway's password and readings in the
/// clear: only to a broker on this machine (a local bridge, tests).
fn plain_only_on_loopback(tls: bool, host: &str) -> Result<(), String> {
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if tls || loopback {
        Ok(())
    } else {
        Err(format!(
            "plain mqtt:// to {host} would send the password in the clear; use mqtts:// (plain MQTT is allowed to a loopback broker only)"
        ))
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_unit() -> u8 {
    1
}

fn default_baud() -> u32 {
    9600
}

fn default_modbus_timeout() -> Duration {
    Duration::from_secs(1)
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
        // Environment overrides, for secrets and per-device settings kept
        // out of a shared file.
        if let Ok(p) = std::env::var("PANTAU_AGENT_PASSWORD") {
            cfg.broker.password = Some(p);
        }
        if let Ok(url) = std::env::var("PANTAU_AGENT_BROKER_URL") {
            cfg.broker.url = url;
        }
        if let Ok(path) = std::env::var("PANTAU_AGENT_SPOOL_PATH") {
            cfg.spool.path = path.into();
        }
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        pantau_model::id::check_id(&self.gateway).map_err(|e| format!("gateway: {e}"))?;
        let (tls, host, _) =
            crate::uplink::parse_url(&self.broker.url).map_err(|e| format!("broker.url: {e}"))?;
        plain_only_on_loopback(tls, &host).map_err(|e| format!("broker.url: {e}"))?;
        if tls && self.broker.ca_file.is_none() {
            return Err("broker.ca_file: required for mqtts://".into());
        }
        match (&self.broker.cert_file, &self.broker.key_file) {
            (Some(_), None) => return Err("broker.key_file: required with broker.cert_file".into()),
            (None, Some(_)) => return Err("broker.cert_file: required with broker.key_file".into()),
            (Some(_), Some(_)) if !tls => {
                return Err("broker.cert_file: a client certificate needs mqtts://".into())
            }
            (None, None) if self.broker.password.is_none() => {
                return Err(
                    "broker.password: required without a client certificate (or set PANTAU_AGENT_PASSWORD)"
                        .into(),
                )
            }
            _ => {}
        }
        if let Some(u) = &self.broker.username {
            if u != &self.gateway {
                return Err("broker.username: must equal the gateway id".into());
            }
        }
        for url in &self.broker.failover {
            let (tls, host, _) =
                crate::uplink::parse_url(url).map_err(|e| format!("broker.failover: {e}"))?;
            plain_only_on_loopback(tls, &host).map_err(|e| format!("broker.failover: {e}"))?;
            if tls && self.broker.ca_file.is_none() {
                return Err("broker.ca_file: required for mqtts://".into());
            }
        }
        if self.broker.replay_readings_per_s == 0 {
            return Err("broker.replay_readings_per_s: must be at least 1".into());
        }
        if self.broker.status_interval < Duration::from_secs(1) {
            return Err("broker.status_interval: must be at least 1s".into());
        }
        if !(self.spool.max_mib > 0.0 && self.spool.max_mib.is_finite()) {
            return Err("spool.max_mib: must be a positive number".into());
        }
        if self.batch.max_readings == 0 {
            return Err("batch.max_readings: must be at least 1".into());
        }
        if self.batch.max_bytes < 1024 || self.batch.max_bytes > 256 * 1024 {
            return Err("batch.max_bytes: must be between 1024 and 262144".into());
        }
        if self.batch.max_in_flight == 0 || self.batch.max_in_flight > 1000 {
            return Err("batch.max_in_flight: must be between 1 and 1000".into());
        }
        if self.batch.max_delay.is_zero() {
            return Err("batch.max_delay: must be more than 0".into());
        }
        if self.source.is_empty() {
            return Err("source: at least one [[source]] is required".into());
        }
        for s in &self.source {
            match s {
                SourceSection::Simulated { sensors, .. } => {
                    for sensor in sensors {
                        sensor.build()?;
                    }
                }
                SourceSection::ModbusTcp {
                    register, timeout, ..
                }
                | SourceSection::ModbusRtu {
                    register, timeout, ..
                } => {
                    if register.is_empty() {
                        return Err("source.register: a Modbus source needs at least one [[source.register]]".into());
                    }
                    if timeout.is_zero() {
                        return Err("source.timeout: must be more than 0".into());
                    }
                    for r in register {
                        r.check().map_err(|e| format!("source.{e}"))?;
                    }
                }
                SourceSection::Stdin | SourceSection::JsonTcp { .. } => {}
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
        assert!(parse(&MINIMAL.replace("[spool]", "[spool]\nmax_mib = -1"))
            .unwrap_err()
            .contains("spool.max_mib"));
        assert!(
            parse(&MINIMAL.replace("[spool]", "[spool]\nsynchronous = \"sometimes\""))
                .unwrap_err()
                .contains("sometimes")
        );
        assert!(parse(&MINIMAL.replace(
            "password = \"TOKEN\"",
            "password = \"TOKEN\"\nfailover = [\"ftp://x:1\"]"
        ))
        .unwrap_err()
        .contains("broker.failover"));
        // Plain MQTT off this machine would carry the token in the clear.
        let plain =
            parse(&MINIMAL.replace("mqtts://127.0.0.1:8883", "mqtt://10.0.0.1:1883")).unwrap_err();
        assert!(
            plain.contains("broker.url") && plain.contains("mqtts://"),
            "{plain}"
        );
        assert!(parse(&MINIMAL.replace(
            "password = \"TOKEN\"",
            "password = \"TOKEN\"\nfailover = [\"mqtt://gw.example:1883\"]"
        ))
        .unwrap_err()
        .contains("broker.failover"));
        for local in [
            "mqtt://127.0.0.1:1883",
            "mqtt://localhost:1883",
            "mqtt://[::1]:1883",
        ] {
            parse(&MINIMAL.replace("mqtts://127.0.0.1:8883", local)).unwrap();
        }
        let tcp = parse(&MINIMAL.replace(
            "type = \"stdin\"",
            "type = \"json-tcp\"\nlisten = \"127.0.0.1:7001\"",
        ))
        .unwrap();
        assert!(matches!(tcp.source[0], SourceSection::JsonTcp { .. }));
        let modbus = MINIMAL.replace(
            "type = \"stdin\"",
            "type = \"modbus-tcp\"\naddress = \"127.0.0.1:5020\"\n[[source.register]]\nsensor = \"fl-a1\"\nfield = \"water_level_cm\"\naddress = 3\ndata_type = \"i16\"\nscale = 0.1",
        );
        assert!(matches!(
            parse(&modbus).unwrap().source[0],
            SourceSection::ModbusTcp { .. }
        ));
        assert!(parse(&modbus.replace("scale = 0.1", "scale = 0.0"))
            .unwrap_err()
            .contains("source.register.scale"));
        assert!(parse(&modbus.replace("\"i16\"", "\"i64\""))
            .unwrap_err()
            .contains("i64"));
    }
}
