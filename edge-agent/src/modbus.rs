//! Modbus sources: Modbus TCP, and Modbus RTU over a serial line
//! (tokio-modbus, tokio-serial). Registers are mapped to sensor fields in
//! the configuration (address, register type, data type, scale, offset).
//!
//! Every call has a timeout. A device that fails or stops answering is
//! counted (with the latest error in the gateway status), the connection is
//! dropped, and it is connected and read again, with backoff, when it
//! returns; the agent's other sources carry on meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pantau_model::backoff::Backoff;
use pantau_model::{Reading, Timestamp, Value, Values};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::Slave;
use tokio_util::sync::CancellationToken;

use crate::command::Intervals;
use crate::status::SourceStats;

/// Which register table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    /// Holding registers (function 3).
    #[default]
    Holding,
    /// Input registers (function 4).
    Input,
}

/// How register words become a number (32-bit types: two registers, high
/// word first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Unsigned 16-bit.
    #[default]
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
    /// IEEE 754 single precision.
    F32,
}

impl DataType {
    /// Registers it spans.
    pub fn words(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }

    /// Decodes `words` (exactly `self.words()` of them).
    pub fn decode(self, words: &[u16]) -> Option<f64> {
        let w32 = || -> Option<u32> {
            Some((u32::from(*words.first()?) << 16) | u32::from(*words.get(1)?))
        };
        Some(match self {
            DataType::U16 => f64::from(*words.first()?),
            DataType::I16 => f64::from(*words.first()? as i16),
            DataType::U32 => f64::from(w32()?),
            DataType::I32 => f64::from(w32()? as i32),
            DataType::F32 => f64::from(f32::from_bits(w32()?)),
        })
    }
}

/// One register mapped to a sensor field: `value = raw × scale + offset`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The sensor.
    pub sensor: String,
    /// Its field, e.g. `water_level_cm`.
    pub field: String,
    /// Register address (0-based).
    pub address: u16,
    /// `holding` or `input`.
    #[serde(default)]
    pub register_type: RegisterType,
    /// `u16`, `i16`, `u32`, `i32` or `f32`.
    #[serde(default)]
    pub data_type: DataType,
    /// Multiplier applied to the raw value.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling.
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

impl Register {
    /// Checks the mapping; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        pantau_model::id::check_id(&self.sensor).map_err(|e| format!("register.sensor: {e}"))?;
        if self.field.is_empty() {
            return Err("register.field: empty".into());
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(format!(
                "register.scale: {} (finite and non-zero)",
                self.scale
            ));
        }
        if !self.offset.is_finite() {
            return Err("register.offset: not finite".into());
        }
        Ok(())
    }
}

/// Where the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Modbus TCP.
    Tcp(SocketAddr),
    /// Modbus RTU on a serial device.
    Rtu {
        /// e.g. `/dev/ttyUSB0`.
        device: String,
        /// Baud rate.
        baud: u32,
    },
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Tcp(a) => write!(f, "modbus-tcp {a}"),
            Link::Rtu { device, baud } => write!(f, "modbus-rtu {device}@{baud}"),
        }
    }
}

/// One Modbus device to poll.
#[derive(Debug, Clone)]
pub struct Device {
    /// Where it is.
    pub link: Link,
    /// Unit (slave) id.
    pub unit: u8,
    /// Timeout of every connect and read.
    pub timeout: Duration,
    /// The mapped registers.
    pub registers: Vec<Register>,
}

async fn connect(device: &Device) -> Result<Context, String> {
    let slave = Slave(device.unit);
    let connecting = async {
        match &device.link {
            Link::Tcp(addr) => tokio_modbus::client::tcp::connect_slave(*addr, slave)
                .await
                .map_err(|e| e.to_string()),
            Link::Rtu { device: path, baud } => {
                use tokio_serial::SerialPortBuilderExt;
                let port = tokio_serial::new(path, *baud)
                    .open_native_async()
                    .map_err(|e| e.to_string())?;
                Ok(tokio_modbus::client::rtu::attach_slave(port, slave))
            }
        }
    };
    tokio::time::timeout(device.timeout, connecting)
        .await
        .map_err(|_| format!("connect timed out after {:?}", device.timeout))?
}

/// Why a read failed: the device answered with an exception (the link is
/// fine), or the link failed (reconnect).
enum ReadError {
    Exception(String),
    Link(String),
}

async fn read(ctx: &mut Context, device: &Device, r: &Register) -> Result<f64, ReadError> {
    let n = r.data_type.words();
    let call = async {
        match r.register_type {
            RegisterType::Holding => ctx.read_holding_registers(r.address, n).await,
            RegisterType::Input => ctx.read_input_registers(r.address, n).await,
        }
    };
    let words = match tokio::time::timeout(device.timeout, call).await {
        Err(_) => {
            return Err(ReadError::Link(format!(
                "register {}: no answer within {:?}",
                r.address, device.timeout
            )))
        }
        Ok(Err(e)) => return Err(ReadError::Link(format!("register {}: {e}", r.address))),
        Ok(Ok(Err(exception))) => {
            return Err(ReadError::Exception(format!(
                "register {}: exception {exception}",
                r.address
            )))
        }
        Ok(Ok(Ok(words))) => words,
    };
    let raw = r
        .data_type
        .decode(&words)
        .ok_or_else(|| ReadError::Exception(format!("register {}: short answer", r.address)))?;
    Ok(raw * r.scale + r.offset)
}

/// Polls the device's sensors, each at its own interval (which a command
/// may change), until shutdown. One reading per sensor per poll, holding
/// every field mapped for it.
pub async fn poll(
    device: Device,
    intervals: Arc<Intervals>,
    tx: mpsc::Sender<Reading>,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
) {
    let mut sensors: BTreeMap<String, Vec<Register>> = BTreeMap::new();
    for r in &device.registers {
        sensors.entry(r.sensor.clone()).or_default().push(r.clone());
    }
    let mut due: BTreeMap<String, Instant> = sensors
        .keys()
        .map(|s| (s.clone(), Instant::now()))
        .collect();
    let mut ctx: Option<Context> = None;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60))
        .expect("valid backoff bounds");
    loop {
        let next = due.values().min().copied().unwrap_or_else(Instant::now);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = intervals.changed.notified() => {
                let now = Instant::now();
                for (s, d) in due.iter_mut() {
                    let every = intervals.get(s).unwrap_or(Duration::from_secs(5));
                    *d = (*d).min(now + every);
                }
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        if ctx.is_none() {
            match connect(&device).await {
                Ok(c) => {
                    backoff.reset();
                    tracing::info!(source = %stats.name, "Modbus device connected.");
                    ctx = Some(c);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    stats.error(format!("{}: {e}", device.link));
                    tracing::warn!(source = %stats.name, error = %e, retry_in_ms = delay.as_millis() as u64, "Modbus connect failed.");
                    let retry = Instant::now() + delay;
                    for d in due.values_mut() {
                        *d = (*d).max(retry);
                    }
                    continue;
                }
            }
        }
        let Some(conn) = ctx.as_mut() else { continue };
        let now = Instant::now();
        let ts = Timestamp::now();
        let mut link_failed = None;
        for (sensor, registers) in &sensors {
            let d = due.get_mut(sensor).expect("every sensor has a due time");
            if *d > now {
                continue;
            }
            let every = intervals.get(sensor).unwrap_or(Duration::from_secs(5));
            *d = (*d + every).max(now);
            let mut values = Values::new();
            for r in registers {
                match read(conn, &device, r).await {
                    Ok(v) if v.is_finite() => {
                        values.insert(r.field.clone(), Value::Num(v));
                    }
                    Ok(v) => stats.error(format!(
                        "{}: register {} decoded to {v}",
                        device.link, r.address
                    )),
                    Err(ReadError::Exception(e)) => stats.error(format!("{}: {e}", device.link)),
                    Err(ReadError::Link(e)) => {
                        link_failed = Some(e);
                        break;
                    }
                }
            }
            if link_failed.is_some() {
                break;
            }
            if !values.is_empty() {
                let reading = Reading {
                    sensor: sensor.clone(),
                    ts,
                    values,
                };
                if tx.send(reading).await.is_err() {
                    return;
                }
                stats.readings.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(e) = link_failed {
            stats.error(format!("{}: {e}", device.link));
            tracing::warn!(source = %stats.name, error = %e, "Modbus read failed; reconnecting.");
            ctx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_types_decode_high_word_first() {
        assert_eq!(DataType::U16.decode(&[65535]), Some(65535.0));
        assert_eq!(DataType::I16.decode(&[65535]), Some(-1.0));
        assert_eq!(DataType::U32.decode(&[1, 2]), Some(65538.0));
        assert_eq!(DataType::I32.decode(&[0xffff, 0xfffe]), Some(-2.0));
        let bits = 12.5f32.to_bits();
        assert_eq!(
            DataType::F32.decode(&[(bits >> 16) as u16, bits as u16]),
            Some(12.5)
        );
        assert_eq!(DataType::U32.decode(&[1]), None);
    }

    #[test]
    fn register_mappings_are_checked() {
        let ok = Register {
            sensor: "fl-a1".into(),
            field: "water_level_cm".into(),
            address: 0,
            register_type: RegisterType::Holding,
            data_type: DataType::U16,
            scale: 0.1,
            offset: 0.0,
        };
        assert!(ok.check().is_ok());
        assert!(Register {
            scale: 0.0,
            ..ok.clone()
        }
        .check()
        .unwrap_err()
        .contains("scale"));
        assert!(Register {
            sensor: "Bad".into(),
            ..ok.clone()
        }
        .check()
        .unwrap_err()
        .contains("sensor"));
        assert!(Register {
            offset: f64::NAN,
            ..ok
        }
        .check()
        .unwrap_err()
        .contains("offset"));
    }
}
