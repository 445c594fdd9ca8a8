//! `pantau-agent` reading Modbus devices run by the test (tokio-modbus
//! servers): over TCP, values arrive scaled as mapped, and a device that
//! stops answering times out, is counted, and is read again when it
//! returns; over RTU, on a serial line made of a pseudo-terminal pair
//! (Debian's socat), values arrive, and a line that disappears (a USB
//! adapter pulled) is reported and read again once it is back. The agent
//! publishes over TLS to Debian's Mosquitto, where `mosquitto_sub` watches
//! its envelopes and status.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pantau_tests::mqtt::{messages_while, status_where};
use pantau_tests::services::{dev_tls, Mosquitto};
use pantau_tests::{eventually, Agent};
use serde_json::Value;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response};

/// The simulated device: registers, and a switch that makes it stop
/// answering (requests are read and ignored).
#[derive(Debug, Default)]
struct Device {
    holding: Mutex<HashMap<u16, u16>>,
    input: Mutex<HashMap<u16, u16>>,
    silent: AtomicBool,
}

#[derive(Debug, Clone)]
struct Service(Arc<Device>);

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if self.0.silent.load(Ordering::Acquire) {
            return std::future::ready(Ok(None));
        }
        let read = |table: &Mutex<HashMap<u16, u16>>, addr: u16, n: u16| -> Vec<u16> {
            let t = table.lock().unwrap();
            (addr..addr + n)
                .map(|a| t.get(&a).copied().unwrap_or(0))
                .collect()
        };
        std::future::ready(match req {
            Request::ReadHoldingRegisters(addr, n) => Ok(Some(Response::ReadHoldingRegisters(
                read(&self.0.holding, addr, n),
            ))),
            Request::ReadInputRegisters(addr, n) => Ok(Some(Response::ReadInputRegisters(read(
                &self.0.input,
                addr,
                n,
            )))),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

async fn start_device(device: Arc<Device>) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::new(listener);
    tokio::spawn(async move {
        let on_connected = |stream, peer| {
            let device = device.clone();
            async move { accept_tcp_connection(stream, peer, |_| Ok(Some(Service(device.clone())))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    Ok(addr)
}

/// An agent configuration for gateway `gw-test` publishing to `mosq` over
/// TLS, with `sources`.
fn agent_config(mosq: &Mosquitto, ca: &Path, sources: &str) -> String {
    format!(
        r#"gateway = "gw-test"
[broker]
url = "mqtts://127.0.0.1:{}"
ca_file = "{}"
password = "unused"
[batch]
max_delay = "50ms"
{sources}"#,
        mosq.addr.port(),
        ca.display()
    )
}

/// The water levels of one envelope, by sensor.
fn levels(envelope: &Value) -> Vec<(String, f64)> {
    envelope["readings"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    Some((
                        r["sensor"].as_str()?.to_string(),
                        r["values"]["water_level_cm"].as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn modbus_values_arrive_scaled_and_a_silent_device_is_read_again_when_it_returns(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let device = Arc::new(Device::default());
    {
        let mut h = device.holding.lock().unwrap();
        h.insert(0, 1234); // u16 × 0.1 + 5 → 128.4
        let bits = 12.5f32.to_bits();
        h.insert(20, (bits >> 16) as u16); // f32, high word first → 12.5
        h.insert(21, bits as u16);
        device.input.lock().unwrap().insert(10, (-200i16) as u16); // i16 × 0.5 → -100
    }
    let modbus = start_device(device.clone()).await?;
    let tls = dev_tls(&dir.path().join("pki"))?;
    let mosq = Mosquitto::start_tls(&dir.path().join("mosquitto"), &tls).await?;
    let cfg = agent_config(
        &mosq,
        &tls.ca_cert,
        &format!(
            r#"[[source]]
type = "modbus-tcp"
address = "{modbus}"
interval = "200ms"
timeout = "300ms"
[[source.register]]
sensor = "fl-a1"
field = "water_level_cm"
address = 0
scale = 0.1
offset = 5.0
[[source.register]]
sensor = "fl-a2"
field = "water_level_cm"
address = 10
register_type = "input"
data_type = "i16"
scale = 0.5
[[source.register]]
sensor = "fl-a3"
field = "water_level_cm"
address = 20
data_type = "f32"
"#
        ),
    );
    let _agent = Agent::start(dir.path(), "agent", &cfg)?;
    let (addr, ca) = (mosq.addr, tls.ca_cert.clone());
    let topic = "pantau/v1/gw/gw-test/telemetry";
    // Values arrive scaled as mapped.
    let watch = {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || {
            let mut seen: HashMap<String, f64> = HashMap::new();
            messages_while(addr, &ca, topic, 30, |e| {
                seen.extend(levels(e));
                seen.len() < 3
            })
            .map(|_| seen)
        })
    };
    let seen = watch.await??;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    ensure!(
        close(seen["fl-a1"], 128.4) && close(seen["fl-a2"], -100.0) && close(seen["fl-a3"], 12.5),
        "scaled values: {seen:?}"
    );
    // The device stops answering: reads time out and are counted.
    device.silent.store(true, Ordering::Release);
    device.holding.lock().unwrap().insert(0, 1300); // → 135.0 once it answers
    let status = status_where(addr, &ca, "gw-test", "timeouts counted", |s| {
        s["sources"][0]["errors"].as_u64().unwrap_or(0) >= 2
            && s["sources"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no answer"))
    })
    .await
    .context("a silent device is reported")?;
    ensure!(status["online"] == true, "{status}");
    // It answers again: the agent reconnects and reads the new value.
    device.silent.store(false, Ordering::Release);
    let back = tokio::task::spawn_blocking(move || {
        let mut got = false;
        messages_while(addr, &ca, topic, 30, |e| {
            got = levels(e)
                .iter()
                .any(|(s, v)| s == "fl-a1" && (v - 135.0).abs() < 1e-9);
            !got
        })
        .map(|_| got)
    })
    .await??;
    ensure!(back, "the device was read again after it returned");
    Ok(())
}

/// A serial line: two linked pseudo-terminals made by socat, one end for
/// the agent, one for the device.
struct SerialLine {
    socat: Child,
}

impl SerialLine {
    async fn open(agent_end: &Path, device_end: &Path) -> Result<Self> {
        let end = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let socat = Command::new("socat")
            .arg(end(agent_end))
            .arg(end(device_end))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("run socat (tests/run.sh installs it)")?;
        eventually(Duration::from_secs(10), "socat's pseudo-terminals", || {
            std::future::ready((agent_end.exists() && device_end.exists()).then_some(()))
        })
        .await?;
        Ok(Self { socat })
    }
}

impl Drop for SerialLine {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

/// Serves `device` as Modbus RTU unit 1 on the serial end `path`.
fn start_rtu_device(path: &Path, device: Arc<Device>) -> Result<()> {
    let server = tokio_modbus::server::rtu::Server::new_from_path(path, 19_200)?;
    tokio::spawn(async move {
        let _ = server.serve_forever(Service(device)).await;
    });
    Ok(())
}

#[tokio::test]
async fn modbus_rtu_values_arrive_and_a_serial_line_that_comes_back_is_read_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (agent_end, device_end): (PathBuf, PathBuf) =
        (dir.path().join("ttyAGENT"), dir.path().join("ttyDEVICE"));
    let device = Arc::new(Device::default());
    device.holding.lock().unwrap().insert(4, 2_500); // u16 × 0.1 → 250.0
    let line = SerialLine::open(&agent_end, &device_end).await?;
    start_rtu_device(&device_end, device.clone())?;
    let tls = dev_tls(&dir.path().join("pki"))?;
    let mosq = Mosquitto::start_tls(&dir.path().join("mosquitto"), &tls).await?;
    let cfg = agent_config(
        &mosq,
        &tls.ca_cert,
        &format!(
            r#"[[source]]
type = "modbus-rtu"
device = "{}"
baud = 19200
unit = 1
interval = "200ms"
timeout = "500ms"
[[source.register]]
sensor = "fl-r1"
field = "water_level_cm"
address = 4
scale = 0.1
"#,
            agent_end.display()
        ),
    );
    let _agent = Agent::start(dir.path(), "agent", &cfg)?;
    let (addr, ca) = (mosq.addr, tls.ca_cert.clone());
    let topic = "pantau/v1/gw/gw-test/telemetry";
    let value_arrives = |want: f64| {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || {
            let mut got = false;
            messages_while(addr, &ca, topic, 30, |e| {
                got = levels(e)
                    .iter()
                    .any(|(s, v)| s == "fl-r1" && (v - want).abs() < 1e-9);
                !got
            })
            .map(|_| got)
        })
    };
    ensure!(value_arrives(250.0).await??, "no 250.0 from the RTU device");
    // The line disappears: the agent reports it and keeps trying.
    let errors = |s: &Value| s["sources"][0]["errors"].as_u64().unwrap_or(0);
    let before = errors(&status_where(addr, &ca, "gw-test", "a status", |_| true).await?);
    drop(line);
    let after = status_where(addr, &ca, "gw-test", "the lost serial line reported", |s| {
        errors(s) > before && s["sources"][0]["last_error"].is_string()
    })
    .await
    .context("a lost serial line is reported")?;
    ensure!(after["online"] == true, "{after}");
    // Back, with a new value: read again.
    device.holding.lock().unwrap().insert(4, 2_610); // → 261.0
    let _line = SerialLine::open(&agent_end, &device_end).await?;
    start_rtu_device(&device_end, device.clone())?;
    ensure!(
        value_arrives(261.0).await??,
        "the serial line was not read again after it came back"
    );
    Ok(())
}
