//! Watching an agent through a third-party broker with Debian's
//! `mosquitto_sub`/`mosquitto_pub` over TLS: its envelopes, and its retained
//! status (asked for with a `status` command).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{eventually, mosquitto_pub};

/// Runs `mosquitto_sub` over TLS for up to `secs` seconds, returning the
/// payloads of up to `count` messages.
pub fn mosquitto_sub(
    addr: SocketAddr,
    ca: &Path,
    topic: &str,
    count: usize,
    secs: u64,
) -> Result<Vec<String>> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .arg("--cafile")
        .arg(ca)
        .args(["-q", "1", "-t", topic])
        .args(["-C", &count.to_string(), "-W", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("run mosquitto_sub (install mosquitto-clients)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Subscribes with `mosquitto_sub` over TLS and hands each JSON message to
/// `more` until it returns false or `secs` pass; returns the messages.
pub fn messages_while(
    addr: SocketAddr,
    ca: &Path,
    topic: &str,
    secs: u64,
    mut more: impl FnMut(&Value) -> bool,
) -> Result<Vec<Value>> {
    let mut child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .arg("--cafile")
        .arg(ca)
        .args(["-q", "1", "-t", topic, "-W", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run mosquitto_sub (install mosquitto-clients)")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        let go_on = more(&v);
        out.push(v);
        if !go_on {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(out)
}

/// Asks gateway `gw` for a status report over the broker (a `status`
/// command) until its retained status satisfies `check`.
pub async fn status_where(
    addr: SocketAddr,
    ca: &Path,
    gw: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let ca = ca.to_owned();
    let (cmd, status) = (
        format!("pantau/v1/gw/{gw}/cmd"),
        format!("pantau/v1/gw/{gw}/status"),
    );
    eventually(Duration::from_secs(30), what, || {
        let asked = mosquitto_pub(
            addr,
            Some(&ca),
            "test",
            "unused",
            &cmd,
            r#"{"cmd":"status"}"#,
        );
        let got = asked
            .ok()
            .and_then(|_| mosquitto_sub(addr, &ca, &status, 1, 2).ok())
            .and_then(|v| v.into_iter().next())
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .filter(&check);
        std::future::ready(got)
    })
    .await
}

/// A gateway's connection to `pantau` over TLS with its token (rumqttc),
/// once its CONNACK arrived.
pub async fn connect_gateway(
    p: &crate::Pantau,
    creds: &crate::GatewayCreds,
) -> anyhow::Result<(rumqttc::AsyncClient, rumqttc::EventLoop)> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};
    let tls = pantau_edge_agent::uplink::client_tls(&creds.ca_file)?;
    let mut opts = MqttOptions::new(creds.gateway.clone(), "127.0.0.1", p.mqtt.port());
    opts.set_credentials(creds.gateway.clone(), creds.password.clone());
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, eventloop)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("gateway connection failed: {e}"),
            Err(_) => anyhow::bail!("no CONNACK within 10 s"),
        }
    }
}

/// MQTT's variable-length "remaining length", appended to `buf`.
pub fn remaining_length(buf: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if len == 0 {
            break;
        }
    }
}

/// A raw MQTT frame: first byte, remaining length, body.
pub fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    remaining_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// An MQTT string (length-prefixed).
pub fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}
