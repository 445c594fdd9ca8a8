//! `pantau-agent` reading a Modbus TCP device run by the test (a
//! tokio-modbus server): values arrive scaled as mapped; a device that
//! stops answering times out, is counted, and is read again when it returns.
//! The agent publishes over TLS to Debian's Mosquitto, where `mosquitto_sub`
//! watches its envelopes and status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};
use pantau_tests::mqtt::{messages_while, status_where};
use pantau_tests::services::{dev_tls, Mosquitto};
use pantau_tests::Agent;
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
    let cfg = format!(
        r#"gateway = "gw-test"
[broker]
url = "mqtts://127.0.0.1:{}"
ca_file = "{}"
password = "unused"
[batch]
max_delay = "50ms"
[[source]]
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
"#,
        mosq.addr.port(),
        tls.ca_cert.display()
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
