//! Gatekeeper acceptance with the real binary, real TLS and Debian's
//! Mosquitto clients: stalled handshakes, identities by token and by
//! certificate, the topic ACL, and kill -9 durability of acknowledged
//! readings.

use std::process::Command;
use std::time::Duration;

use pantau_model::Timestamp;
use pantau_tests::*;

const TWO: &str = r#"[[sensor]]
id = "fl-a"
kind = "flood_gauge"
gateway = "gw-a"
name = "A"
lat = 1.0
lon = 101.0
[[sensor]]
id = "fl-b"
kind = "flood_gauge"
gateway = "gw-b"
name = "B"
lat = 1.0
lon = 101.0
"#;

fn reading_env(gw: &str, sensor: &str, v: f64) -> String {
    format!(
        r#"{{"v":1,"gw":"{gw}","seq":1,"readings":[{{"sensor":"{sensor}","ts":"{}","values":{{"water_level_cm":{v}}}}}]}}"#,
        now_rfc3339(-10)
    )
}

async fn two_gateways(
    dir: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<(Pantau, GatewayCreds, GatewayCreds)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.join("registry.toml");
    std::fs::write(&reg, TWO)?;
    let mut args = vec!["--registry", reg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let p = Pantau::start(&data, &args).await?;
    let a = gateway_add_with(&data, "gw-a", &["--cert"])?;
    let b = gateway_add(&data, "gw-b")?;
    Ok((p, a, b))
}

/// mosquitto_pub/mosquitto_sub over TLS with `args`; returns (success, stderr).
fn mosq(bin: &str, p: &Pantau, ca: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &p.mqtt.port().to_string()])
        .arg("--cafile")
        .arg(ca)
        .args(args)
        .output()
        .expect("run mosquitto client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_stalled_tcp_client_delays_no_one_and_is_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, a, _b) = two_gateways(dir.path(), &["--tls-handshake-timeout", "2s"]).await?;
    let mut stalled = tokio::net::TcpStream::connect(p.mqtt).await?;
    let started = tokio::time::Instant::now();
    let env = reading_env("gw-a", "fl-a", 1.0);
    let (ok, err) = mosq(
        "mosquitto_pub",
        &p,
        &a.ca_file,
        &[
            "-i",
            "gw-a",
            "-u",
            "gw-a",
            "-P",
            &a.password,
            "-q",
            "1",
            "-t",
            "pantau/v1/gw/gw-a/telemetry",
            "-m",
            &env,
        ],
    );
    assert!(ok, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "publish took {:?}",
        started.elapsed()
    );
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(6), stalled.read(&mut buf)).await?;
    assert!(matches!(n, Ok(0) | Err(_)), "stalled socket still open");
    assert!(started.elapsed() >= Duration::from_millis(1900));
    let m = p.metrics().await?;
    assert_eq!(
        metric(
            &m,
            "pantau_broker_refused_total{reason=\"tls_handshake_timeout\"}"
        ),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn gateways_cannot_act_as_others_by_token_or_by_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, a, b) = two_gateways(dir.path(), &[]).await?;
    let (cert, key) = (a.cert_file.clone().unwrap(), a.key_file.clone().unwrap());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let foreign = reading_env("gw-b", "fl-b", 9.0);
    let to_b = "pantau/v1/gw/gw-b/telemetry";
    // With a token, and with the certificate: publishing as B is refused.
    let (ok, _) = mosq(
        "mosquitto_pub",
        &p,
        &a.ca_file,
        &[
            "-i",
            "gw-a",
            "-u",
            "gw-a",
            "-P",
            &a.password,
            "-q",
            "1",
            "-t",
            to_b,
            "-m",
            &foreign,
        ],
    );
    assert!(!ok, "token: publish to B's topic acknowledged");
    let (ok, _) = mosq(
        "mosquitto_pub",
        &p,
        &a.ca_file,
        &[
            "--cert", cert, "--key", key, "-i", "gw-a", "-q", "1", "-t", to_b, "-m", &foreign,
        ],
    );
    assert!(!ok, "certificate: publish to B's topic acknowledged");
    // Subscriptions to everything or to B's commands are refused.
    for filter in ["#", "pantau/v1/gw/gw-b/cmd"] {
        let (ok, _) = mosq(
            "mosquitto_sub",
            &p,
            &a.ca_file,
            &[
                "--cert", cert, "--key", key, "-i", "gw-a", "-t", filter, "-C", "1", "-W", "5",
            ],
        );
        assert!(!ok, "subscribe {filter} accepted");
    }
    // A last will on B's status topic is refused at CONNECT.
    let (ok, err) = mosq(
        "mosquitto_pub",
        &p,
        &a.ca_file,
        &[
            "-i",
            "gw-a",
            "-u",
            "gw-a",
            "-P",
            &a.password,
            "--will-topic",
            "pantau/v1/gw/gw-b/status",
            "--will-payload",
            "x",
            "-t",
            "pantau/v1/gw/gw-a/status",
            "-m",
            "{}",
        ],
    );
    assert!(!ok, "foreign will accepted");
    assert!(err.to_lowercase().contains("not authori"), "{err}");
    // The certificate is an identity on its own; a client id naming
    // another gateway is refused with it too.
    let own = reading_env("gw-a", "fl-a", 5.0);
    let (ok, err) = mosq(
        "mosquitto_pub",
        &p,
        &a.ca_file,
        &[
            "--cert",
            cert,
            "--key",
            key,
            "-i",
            "gw-a",
            "-q",
            "1",
            "-t",
            "pantau/v1/gw/gw-a/telemetry",
            "-m",
            &own,
        ],
    );
    assert!(ok, "{err}");
    let (ok, _) = mosq(
        "mosquitto_pub",
        &p,
        &a.ca_file,
        &[
            "--cert", cert, "--key", key, "-i", "gw-b", "-q", "1", "-t", to_b, "-m", &foreign,
        ],
    );
    assert!(!ok, "certificate of A accepted as client gw-b");
    // Nothing of B was stored; A's own reading was.
    let m = eventually(Duration::from_secs(10), "A's reading delivered", || async {
        let m = p.metrics().await.ok()?;
        (metric(&m, "pantau_ingest_log_delivered_total")? >= 1.0).then_some(m)
    })
    .await?;
    assert!(stored(&p.data_dir, "fl-b")?.is_empty());
    assert_eq!(stored(&p.data_dir, "fl-a")?.len(), 1);
    // mosquitto_sub reconnects after being closed until its -W timeout, so
    // a refused subscription may count several times; none may count zero.
    let count = |op: &str| {
        metric(
            &m,
            &format!("pantau_broker_acl_violations_total{{op=\"{op}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("publish"), 2.0);
    assert!(
        count("subscribe") >= 2.0,
        "subscribe violations {}",
        count("subscribe")
    );
    assert_eq!(count("will"), 1.0);
    let _ = b;
    let log = p.log_text();
    assert!(
        log.contains("gw-a") && log.contains("pantau/v1/gw/gw-b/telemetry"),
        "violation not logged with gateway and topic"
    );
    Ok(())
}

/// Publishes envelopes of 10 readings as fast as the window allows, and
/// records which envelopes were acknowledged; stops at the first error.
async fn hammer(
    mqtt: std::net::SocketAddr,
    gw: usize,
    token: String,
    ca: std::path::PathBuf,
    base: i64,
) -> Vec<i64> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    let tls = pantau_edge_agent::uplink::client_tls(&ca).unwrap();
    let id = format!("gw-k{gw}");
    let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", mqtt.port());
    opts.set_credentials(id.clone(), token);
    opts.set_inflight(50);
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let topic = format!("pantau/v1/gw/{id}/telemetry");
    // pkid → first timestamp of its envelope; rumqttc reuses pkids, so
    // envelopes are matched to PUBACKs through the publish order.
    let mut sent: std::collections::VecDeque<(u16, i64)> = Default::default();
    let mut acked = Vec::new();
    let mut next = 0i64;
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    if let Some(slot) = sent.iter_mut().find(|(p, _)| *p == 0) {
                        slot.0 = pkid;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(pos) = sent.iter().position(|(p, _)| *p == ack.pkid) {
                        acked.push(sent.remove(pos).unwrap().1);
                    }
                }
                Ok(_) => {}
                Err(_) => return acked,
            },
            r = client.publish(topic.clone(), QoS::AtLeastOnce, false, {
                let ts0 = base + next * 10;
                let readings: Vec<String> = (0..10).map(|i| format!(
                    r#"{{"sensor":"fl-k{gw}","ts":"{}","values":{{"water_level_cm":{}}}}}"#,
                    Timestamp(ts0 + i).to_rfc3339(), i
                )).collect();
                format!(r#"{{"v":1,"gw":"{id}","seq":{next},"readings":[{}]}}"#, readings.join(","))
            }), if sent.len() < 50 => {
                if r.is_err() {
                    return acked;
                }
                sent.push_back((0, base + next * 10));
                next += 1;
            }
        }
    }
}

#[tokio::test]
async fn kill_9_never_loses_an_acknowledged_reading() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let reg = dir.path().join("registry.toml");
    let mut registry = String::new();
    for g in 0..20 {
        registry.push_str(&format!(
            "[[sensor]]\nid = \"fl-k{g}\"\nkind = \"flood_gauge\"\ngateway = \"gw-k{g}\"\nname = \"K{g}\"\nlat = 1.0\nlon = 101.0\n\n"
        ));
    }
    std::fs::write(&reg, registry)?;
    let mut tokens = Vec::new();
    let mut ca = std::path::PathBuf::new();
    for g in 0..20 {
        let c = gateway_add(&data, &format!("gw-k{g}"))?;
        tokens.push(c.password);
        ca = c.ca_file;
    }
    let mut acked_total: Vec<(usize, i64)> = Vec::new();
    // Distinct, valid (under 90 days old) timestamps per round and gateway.
    let base = Timestamp::now().millis() - 80 * 86_400_000;
    for round in 0..5i64 {
        let mut p = Pantau::start(
            &data,
            &[
                "--registry",
                reg.to_str().unwrap(),
                "--publish-rate",
                "100000",
                "--publish-burst",
                "100000",
            ],
        )
        .await?;
        let round_base = base + round * 10_000_000;
        let mut tasks = Vec::new();
        for (g, token) in tokens.iter().enumerate() {
            let base = round_base + g as i64 * 200_000_000;
            tasks.push(tokio::spawn(hammer(
                p.mqtt,
                g,
                token.clone(),
                ca.clone(),
                base,
            )));
        }
        // Let them publish, then kill -9 in the middle of it.
        eventually(Duration::from_secs(30), "publishing under way", || async {
            let m = p.metrics().await.ok()?;
            (metric(&m, "pantau_ingest_log_persisted_total")? > 2_000.0 + round as f64 * 100.0)
                .then_some(())
        })
        .await?;
        p.kill();
        for (g, t) in tasks.into_iter().enumerate() {
            for ts in t.await? {
                acked_total.push((g, ts));
            }
        }
        drop(p);
    }
    // After a final restart every acknowledged reading reaches the store.
    let p = Pantau::start(&data, &["--registry", reg.to_str().unwrap()]).await?;
    let want: usize = acked_total.len() * 10;
    assert!(want > 10_000, "too little load: {want}");
    eventually(Duration::from_secs(120), "the backlog to drain", || async {
        let m = p.metrics().await.ok()?;
        (metric(&m, "pantau_ingest_log_pending")? == 0.0).then_some(())
    })
    .await?;
    let keys: std::collections::HashSet<(String, i64)> =
        stored_keys(&p.data_dir)?.into_iter().collect();
    let mut missing = 0;
    for (g, ts0) in &acked_total {
        for i in 0..10 {
            if !keys.contains(&(format!("fl-k{g}"), ts0 + i)) {
                missing += 1;
            }
        }
    }
    assert_eq!(
        missing, 0,
        "{missing} of {want} acknowledged readings missing after 5 kill -9 rounds"
    );
    Ok(())
}
