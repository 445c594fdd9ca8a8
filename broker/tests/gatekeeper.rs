//! Gatekeeper tests against the public `run()` on port 0, with real TLS, a
//! real store and raw MQTT packets written with rumqttd's codec, so that
//! misbehaving clients can be played exactly.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pantau_broker::tls::{server_config, TlsFiles};
use pantau_broker::{
    BrokerConfig, BrokerDeps, BrokerMetrics, Presence, RouterHandle, RouterLimits,
};
use pantau_ingest::{IngestLog, IngestMetrics, Ingestor};
use pantau_model::{GatewayId, Registry, Timestamp};
use pantau_state::StateDb;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Connect, ConnectReturnCode, Login, Packet, Protocol, Publish};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

const REGISTRY: &str = r#"
[[sensor]]
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

struct Harness {
    addr: std::net::SocketAddr,
    router: RouterHandle,
    tokens: Vec<(String, String)>,
    log: Arc<IngestLog>,
    metrics: BrokerMetrics,
    presence: Arc<Presence>,
    ca: std::path::PathBuf,
    shutdown: CancellationToken,
    /// The gatekeeper's `run()`.
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: BrokerConfig) -> Harness {
    start_with(config, 1_000_000, RouterLimits::default()).await
}

/// A gatekeeper whose ingest log holds at most `log_max` readings, on a
/// router with `limits`.
async fn start_with(config: BrokerConfig, log_max: u64, limits: RouterLimits) -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::in_data_dir(dir.path());
    let tls = server_config(&files, &[]).unwrap();
    let state = Arc::new(StateDb::open(dir.path()).unwrap());
    let tokens = ["gw-a", "gw-b"]
        .iter()
        .map(|g| {
            (
                g.to_string(),
                state.add_gateway(&GatewayId::new(*g).unwrap()).unwrap(),
            )
        })
        .collect();
    let log = Arc::new(IngestLog::open(dir.path(), log_max, IngestMetrics::default()).unwrap());
    let ingestor = Arc::new(Ingestor::new(
        Registry::parse(REGISTRY).unwrap(),
        log.clone(),
        IngestMetrics::default(),
    ));
    let metrics = BrokerMetrics::default();
    let presence = Arc::new(Presence::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let router = RouterHandle::start(&limits).unwrap();
    let deps = BrokerDeps {
        tls,
        router: router.clone(),
        ingestor,
        state,
        metrics: metrics.clone(),
        presence: presence.clone(),
        revoked_certs: Default::default(),
    };
    let task = tokio::spawn(pantau_broker::run(config, deps, listener, shutdown.clone()));
    Harness {
        addr,
        router,
        tokens,
        log,
        metrics,
        presence,
        ca: files.ca_cert,
        shutdown,
        task: Some(task),
        _dir: dir,
    }
}

struct Client {
    tls: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Client {
    async fn connect_tls(h: &Harness) -> Self {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&h.ca)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(certs);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(h.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Self {
            tls,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        V4.write(p, &mut out).unwrap();
        self.tls.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.unwrap();
    }

    /// The next packet, or `None` once the server closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            match V4.read_mut(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from server: {e}"),
            }
            match self.tls.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn login(h: &Harness, gw: &str, keep_alive: u16) -> Self {
        Self::login_session(h, gw, true, keep_alive).await.0
    }

    /// Logs in with the given session kind; returns the CONNACK's
    /// `session_present` too.
    async fn login_session(
        h: &Harness,
        gw: &str,
        clean_session: bool,
        keep_alive: u16,
    ) -> (Self, bool) {
        let mut c = Self::connect_tls(h).await;
        let token = h.tokens.iter().find(|(g, _)| g == gw).unwrap().1.clone();
        c.send(connect_packet(gw, gw, token, clean_session, keep_alive))
            .await;
        match c.recv().await {
            Some(Packet::ConnAck(ack, _)) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                (c, ack.session_present)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

/// A CONNECT with a login and no will.
fn connect_packet(
    client_id: &str,
    username: &str,
    password: String,
    clean_session: bool,
    keep_alive: u16,
) -> Packet {
    Packet::Connect(
        Connect {
            keep_alive,
            client_id: client_id.into(),
            clean_session,
        },
        None,
        None,
        None,
        Some(Login {
            username: username.into(),
            password,
        }),
    )
}

/// A clean-session CONNECT of `gw` with its token and a retained QoS 1
/// last will of `message` on `topic`.
fn connect_with_will(gw: &str, password: String, topic: &str, message: &str) -> Packet {
    Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: gw.into(),
            clean_session: true,
        },
        None,
        Some(rumqttd::protocol::LastWill {
            topic: topic.to_owned().into(),
            message: message.to_owned().into(),
            qos: rumqttd::protocol::QoS::AtLeastOnce,
            retain: true,
        }),
        None,
        Some(Login {
            username: gw.into(),
            password,
        }),
    )
}

/// A SUBSCRIBE to one filter at QoS 1.
fn subscribe_packet(pkid: u16, path: &str) -> Packet {
    Packet::Subscribe(
        rumqttd::protocol::Subscribe {
            pkid,
            filters: vec![rumqttd::protocol::Filter {
                path: path.into(),
                qos: rumqttd::protocol::QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: rumqttd::protocol::RetainForwardRule::Never,
            }],
        },
        None,
    )
}

/// A QoS 1 PUBLISH frame built by hand (rumqttd keeps `Publish.qos` private).
fn publish_qos1(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    publish_frame(1, topic, pkid, payload)
}

/// A PUBLISH frame of QoS 0 or 1 (`pkid` is left out at QoS 0).
fn publish_frame(qos: u8, topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let mut frame = vec![0x30 | (qos << 1)];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        frame.push(b);
        if len == 0 {
            break;
        }
    }
    frame.extend_from_slice(&body);
    frame
}

fn envelope(gw: &str, sensor: &str, cm: f64) -> Vec<u8> {
    format!(
        r#"{{"v":1,"gw":"{gw}","seq":1,"readings":[{{"sensor":"{sensor}","ts":"{}","values":{{"water_level_cm":{cm}}}}}]}}"#,
        Timestamp::now().to_rfc3339()
    )
    .into_bytes()
}

/// The water levels in the ingest log, in log order.
fn logged_levels(h: &Harness) -> Vec<f64> {
    h.log
        .read_after(0, 100_000)
        .unwrap()
        .entries
        .iter()
        .flat_map(|e| {
            e.readings
                .iter()
                .map(|r| r.values["water_level_cm"].as_f64())
        })
        .collect()
}

fn refused(m: &BrokerMetrics, reason: &'static str) -> u64 {
    m.refused.get_or_create(&vec![("reason", reason)]).get()
}

fn closed(m: &BrokerMetrics, reason: &'static str) -> u64 {
    m.closed.get_or_create(&vec![("reason", reason)]).get()
}

#[tokio::test]
async fn publish_is_acked_only_after_it_is_stored() {
    let h = start(BrokerConfig::default()).await;
    let mut c = Client::login(&h, "gw-a", 30).await;
    assert!(h.presence.get("gw-a").is_some_and(|p| p.connected));
    c.send_raw(&publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        7,
        &envelope("gw-a", "fl-a", 42.5),
    ))
    .await;
    match c.recv().await {
        Some(Packet::PubAck(ack, _)) => assert_eq!(ack.pkid, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // Acknowledged means committed: the ingest log has it at the moment of the ack.
    assert_eq!(logged_levels(&h), vec![42.5]);
}

#[tokio::test]
async fn publishing_as_another_gateway_closes_and_stores_nothing() {
    let h = start(BrokerConfig::default()).await;
    let mut c = Client::login(&h, "gw-a", 30).await;
    c.send_raw(&publish_qos1(
        "pantau/v1/gw/gw-b/telemetry",
        1,
        &envelope("gw-b", "fl-b", 1.0),
    ))
    .await;
    assert_eq!(
        c.recv().await,
        None,
        "connection must be closed, without PUBACK"
    );
    assert_eq!(h.log.pending(), 0);
    assert_eq!(
        h.metrics
            .acl_violations
            .get_or_create(&vec![("op", "publish")])
            .get(),
        1
    );
    // A subscription to another gateway's commands is refused the same way.
    let mut c = Client::login(&h, "gw-a", 30).await;
    c.send(subscribe_packet(1, "#")).await;
    assert_eq!(c.recv().await, None);
    assert_eq!(
        h.metrics
            .acl_violations
            .get_or_create(&vec![("op", "subscribe")])
            .get(),
        1
    );
}

#[tokio::test]
async fn subscribing_to_its_commands_gets_the_platform_time() {
    let h = start(BrokerConfig::default()).await;
    let mut c = Client::login(&h, "gw-a", 30).await;
    c.send(subscribe_packet(7, "pantau/v1/gw/gw-a/cmd")).await;
    match c.recv().await {
        Some(Packet::SubAck(ack, _)) => assert_eq!(ack.pkid, 7),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let Some(Packet::Publish(p, _)) = c.recv().await else {
        panic!("expected the time command");
    };
    assert_eq!(&p.topic[..], b"pantau/v1/gw/gw-a/cmd");
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["cmd"], "time");
    let now = pantau_model::Timestamp::parse_rfc3339(v["now"].as_str().unwrap()).unwrap();
    assert!((pantau_model::Timestamp::now().millis() - now.millis()).abs() < 5_000);
}

#[tokio::test]
async fn a_silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let h = start(BrokerConfig {
        min_keep_alive: Duration::from_secs(1),
        ..BrokerConfig::default()
    })
    .await;
    let mut c = Client::login(&h, "gw-a", 1).await;
    let started = tokio::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), c.recv()).await;
    assert_eq!(end.expect("closed within 5 s"), None);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "closed too early"
    );
}

#[tokio::test]
async fn oversized_packets_close_the_connection_and_are_counted() {
    let h = start(BrokerConfig {
        max_packet_size: 1024,
        ..BrokerConfig::default()
    })
    .await;
    let mut c = Client::login(&h, "gw-a", 30).await;
    let big = vec![b' '; 4096];
    c.send_raw(&publish_qos1("pantau/v1/gw/gw-a/telemetry", 1, &big))
        .await;
    assert_eq!(c.recv().await, None);
    assert_eq!(closed(&h.metrics, "packet_too_large"), 1);
    // Other clients are unaffected.
    let mut ok = Client::login(&h, "gw-a", 30).await;
    ok.send(Packet::Publish(
        Publish::new("pantau/v1/gw/gw-a/status", r#"{"online":true}"#, true),
        None,
    ))
    .await;
    ok.send(Packet::PingReq(rumqttd::protocol::PingReq)).await;
    assert!(matches!(ok.recv().await, Some(Packet::PingResp(_))));
}

#[tokio::test]
async fn a_foreign_last_will_is_refused_at_connect() {
    let h = start(BrokerConfig::default()).await;
    let mut c = Client::connect_tls(&h).await;
    let token = h.tokens[0].1.clone();
    c.send(connect_with_will(
        "gw-a",
        token,
        "pantau/v1/gw/gw-b/status",
        r#"{"online":false}"#,
    ))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(ack, _)) => assert_eq!(ack.code, ConnectReturnCode::NotAuthorized),
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    assert_eq!(refused(&h.metrics, "will_acl"), 1);
}

#[tokio::test]
async fn many_publishes_in_flight_are_acked_in_arrival_order() {
    let h = start(BrokerConfig::default()).await;
    let mut c = Client::login(&h, "gw-a", 30).await;
    // More than the in-flight window, written at once: the gatekeeper reads
    // them in bursts and commits each burst's telemetry together. A status
    // message and a malformed envelope sit in the middle.
    let (status, malformed) = (50u16, 120u16);
    let mut frames = Vec::new();
    let mut want_values = Vec::new();
    for pkid in 1..=300u16 {
        let (topic, payload) = match pkid {
            p if p == status => ("pantau/v1/gw/gw-a/status", br#"{"online":true}"#.to_vec()),
            p if p == malformed => ("pantau/v1/gw/gw-a/telemetry", b"not json".to_vec()),
            _ => {
                want_values.push(f64::from(pkid));
                (
                    "pantau/v1/gw/gw-a/telemetry",
                    envelope("gw-a", "fl-a", f64::from(pkid)),
                )
            }
        };
        frames.extend(publish_qos1(topic, pkid, &payload));
    }
    c.send_raw(&frames).await;
    for want in 1..=300u16 {
        match c.recv().await {
            Some(Packet::PubAck(ack, _)) => assert_eq!(ack.pkid, want),
            other => panic!("expected PUBACK {want}, got {other:?}"),
        }
    }
    assert_eq!(h.log.pending(), 298);
    // Every good reading is in the log, in arrival order.
    let values = logged_levels(&h);
    assert_eq!(values, want_values);
    assert!(h
        .presence
        .get("gw-a")
        .is_some_and(|p| p.last_status.as_deref() == Some(r#"{"online":true}"#)));
}

#[tokio::test]
async fn a_disconnect_right_after_publishes_still_commits_and_acks_them() {
    let h = start(BrokerConfig::default()).await;
    let mut c = Client::login(&h, "gw-a", 30).await;
    // QoS 0, QoS 1 and DISCONNECT in one write: all read in one go.
    let topic = "pantau/v1/gw/gw-a/telemetry";
    let mut frames = publish_frame(0, topic, 0, &envelope("gw-a", "fl-a", 1.5));
    frames.extend(publish_frame(1, topic, 9, &envelope("gw-a", "fl-a", 2.5)));
    frames.extend([0xe0, 0x00]);
    c.send_raw(&frames).await;
    match c.recv().await {
        Some(Packet::PubAck(ack, _)) => assert_eq!(ack.pkid, 9),
        other => panic!("expected PUBACK 9 before the close, got {other:?}"),
    }
    assert!(c.recv().await.is_none(), "the connection stays open");
    assert_eq!(logged_levels(&h), vec![1.5, 2.5]);
}

/// Raw frames that must never crash or stall the gatekeeper.
fn malformed_corpus(connect: &[u8]) -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut second_connect = connect.to_vec();
    second_connect.extend_from_slice(connect);
    let bad_utf8_topic = {
        let topic = [0xff, 0xfe, b'a'];
        let mut body = vec![0, topic.len() as u8];
        body.extend_from_slice(&topic);
        body.extend_from_slice(&[0, 1, b'x']);
        let mut f = vec![0x32, body.len() as u8];
        f.extend(body);
        f
    };
    // (name, bytes, needs a session first)
    vec![
        (
            "truncated connect",
            connect[..connect.len() / 2].to_vec(),
            false,
        ),
        (
            "oversized remaining length",
            vec![0x30, 0xff, 0xff, 0xff, 0x7f],
            false,
        ),
        (
            "malformed remaining length",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            false,
        ),
        (
            "publish before connect",
            publish_qos1("pantau/v1/gw/gw-a/telemetry", 1, b"{}"),
            false,
        ),
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec(), false),
        ("empty", Vec::new(), false),
        ("second connect", connect.to_vec(), true),
        ("invalid utf-8 topic", bad_utf8_topic, true),
        (
            "qos 3",
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            true,
        ),
        ("reserved packet type 0", vec![0x00, 0x00], true),
        ("reserved packet type 15", vec![0xf0, 0x00], true),
        (
            "subscribe with bad flags",
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00],
            true,
        ),
        ("pubrel with bad flags", vec![0x60, 0x02, 0x00, 0x01], true),
        (
            "truncated publish",
            vec![0x32, 0x10, 0x00, 0x05, b'a'],
            true,
        ),
        ("connect twice in one frame", second_connect, false),
    ]
}

#[tokio::test]
async fn malformed_packets_never_crash_or_stall_the_broker() {
    let h = start(BrokerConfig {
        connect_timeout: Duration::from_secs(2),
        ..BrokerConfig::default()
    })
    .await;
    // A valid gateway keeps publishing throughout.
    let mut good = Client::login(&h, "gw-b", 30).await;
    let token = h.tokens[0].1.clone();
    let mut connect = BytesMut::new();
    V4.write(
        connect_packet("gw-a", "gw-a", token, true, 30),
        &mut connect,
    )
    .unwrap();
    let mut pkid = 0u16;
    for (name, bytes, after_connect) in malformed_corpus(&connect) {
        let mut c = Client::connect_tls(&h).await;
        if after_connect {
            c.send_raw(&connect).await;
            assert!(
                matches!(c.recv().await, Some(Packet::ConnAck(..))),
                "{name}: no CONNACK"
            );
        }
        c.send_raw(&bytes).await;
        // The connection must end (closed, or refused) within the connect
        // timeout, without taking the broker down.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match c.recv().await {
                    None => return,
                    Some(Packet::ConnAck(..)) | Some(Packet::PubAck(..)) => continue,
                    Some(other) => panic!("{name}: unexpected {other:?}"),
                }
            }
        })
        .await;
        // An incomplete packet is waited for until the keep-alive (or the
        // CONNECT timeout) runs out: bounded, and it blocks nobody else.
        if !matches!(name, "empty" | "truncated publish") {
            assert!(ended.is_ok(), "{name}: connection left hanging");
        }
        pkid += 1;
        good.send_raw(&publish_qos1(
            "pantau/v1/gw/gw-b/telemetry",
            pkid,
            &envelope("gw-b", "fl-b", f64::from(pkid)),
        ))
        .await;
        match tokio::time::timeout(Duration::from_secs(5), good.recv()).await {
            Ok(Some(Packet::PubAck(ack, _))) => assert_eq!(ack.pkid, pkid, "after {name}"),
            other => panic!("valid gateway stalled after {name}: {other:?}"),
        }
    }
    // New connections are still accepted.
    let _fresh = Client::login(&h, "gw-a", 30).await;
}

#[tokio::test]
async fn bad_client_ids_never_poison_the_listener() {
    let h = start(BrokerConfig::default()).await;
    let token = h.tokens[0].1.clone();
    for id in ["gw/a", "gw+a", "gw/a", "gw+a", "#"] {
        let mut c = Client::connect_tls(&h).await;
        c.send(connect_packet(id, "gw-a", token.clone(), false, 30))
            .await;
        match c.recv().await {
            Some(Packet::ConnAck(ack, _)) => assert_eq!(
                ack.code,
                ConnectReturnCode::ClientIdentifierNotValid,
                "{id}"
            ),
            other => panic!("{id}: expected a refusing CONNACK, got {other:?}"),
        }
    }
    assert_eq!(refused(&h.metrics, "client_id_invalid"), 5);
    let mut c = Client::login(&h, "gw-a", 30).await;
    c.send_raw(&publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        9,
        &envelope("gw-a", "fl-a", 1.0),
    ))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(..))));
}

#[tokio::test]
async fn over_the_connection_cap_is_refused_cleanly_and_recovers() {
    let h = start(BrokerConfig {
        max_connections: 2,
        ..BrokerConfig::default()
    })
    .await;
    let mut a = Client::login(&h, "gw-a", 30).await;
    let b = Client::login(&h, "gw-b", 30).await;
    let mut c = Client::connect_tls(&h).await;
    c.send(connect_packet(
        "gw-a",
        "gw-a",
        h.tokens[0].1.clone(),
        true,
        30,
    ))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(ack, _)) => {
            assert_eq!(ack.code, ConnectReturnCode::ServiceUnavailable)
        }
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    assert_eq!(refused(&h.metrics, "connection_cap"), 1);
    // Existing clients are unaffected.
    a.send_raw(&publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        1,
        &envelope("gw-a", "fl-a", 1.0),
    ))
    .await;
    assert!(matches!(a.recv().await, Some(Packet::PubAck(..))));
    // Below the cap again, new clients connect.
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Client::connect_tls(&h).await;
        d.send(connect_packet(
            "gw-b",
            "gw-b",
            h.tokens[1].1.clone(),
            true,
            30,
        ))
        .await;
        if let Some(Packet::ConnAck(ack, _)) = d.recv().await {
            if ack.code == ConnectReturnCode::Success {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never below the cap again"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_stalled_handshake_never_blocks_others_and_is_closed() {
    let h = start(BrokerConfig {
        handshake_timeout: Duration::from_secs(2),
        ..BrokerConfig::default()
    })
    .await;
    let mut stalled = TcpStream::connect(h.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut c = Client::login(&h, "gw-a", 30).await;
    c.send_raw(&publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        1,
        &envelope("gw-a", "fl-a", 1.0),
    ))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(..))));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "valid client delayed by a stalled one"
    );
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "stalled socket not closed: {closed:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert_eq!(refused(&h.metrics, "tls_handshake_timeout"), 1);
}

#[tokio::test]
async fn a_newer_connection_of_a_gateway_takes_over() {
    let h = start(BrokerConfig::default()).await;
    let mut old = Client::login(&h, "gw-a", 30).await;
    let mut new = Client::login(&h, "gw-a", 30).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), old.recv()).await;
    assert_eq!(closed.expect("old connection closed"), None);
    new.send_raw(&publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        3,
        &envelope("gw-a", "fl-a", 2.0),
    ))
    .await;
    assert!(matches!(new.recv().await, Some(Packet::PubAck(..))));
    assert!(h.presence.get("gw-a").is_some_and(|p| p.connected));
}

/// Receives packets until `want` matches one (skipping the platform's time
/// command and the like); `None` if the connection closes first.
async fn recv_until(c: &mut Client, want: impl Fn(&Packet) -> bool) -> Option<Packet> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let p = tokio::time::timeout_at(deadline, c.recv())
            .await
            .expect("no packet within 5 s")?;
        if want(&p) {
            return Some(p);
        }
    }
}

#[tokio::test]
async fn a_router_that_refuses_a_subscription_gets_0x80_and_is_counted() {
    // The router has room for one link, which the platform's own link
    // takes: a gateway's subscription finds no room.
    let h = start_with(
        BrokerConfig::default(),
        1_000_000,
        RouterLimits {
            max_connections: 1,
            ..RouterLimits::default()
        },
    )
    .await;
    h.router
        .publish_platform("pantau/v1/gw/gw-b/status".into(), "{}".into(), false)
        .await
        .unwrap();
    let mut c = Client::login(&h, "gw-a", 30).await;
    c.send(subscribe_packet(9, "pantau/v1/gw/gw-a/cmd")).await;
    match c.recv().await {
        Some(Packet::SubAck(ack, _)) => {
            assert_eq!(ack.pkid, 9);
            assert_eq!(
                ack.return_codes,
                vec![rumqttd::protocol::SubscribeReasonCode::Failure]
            );
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert_eq!(
        h.metrics
            .subscribe_failed
            .get_or_create(&vec![("reason", "router_refused")])
            .get(),
        1
    );
    // The connection stays usable: telemetry is still acknowledged.
    c.send_raw(&publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        3,
        &envelope("gw-a", "fl-a", 7.5),
    ))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(a, _)) if a.pkid == 3));
}

#[tokio::test]
async fn the_command_subscription_is_granted_qos1_and_a_persistent_session_keeps_commands() {
    let h = start(BrokerConfig::default()).await;
    let cmd = "pantau/v1/gw/gw-a/cmd";
    // First persistent session: nothing held yet (MQTT-3.2.2-3).
    let (mut c, present) = Client::login_session(&h, "gw-a", false, 30).await;
    assert!(!present, "no session was held yet");
    c.send(subscribe_packet(1, cmd)).await;
    match c.recv().await {
        // On the wire 0x01; rumqttd's decoder calls it Success(QoS 1).
        Some(Packet::SubAck(ack, _)) => assert_eq!(
            ack.return_codes,
            vec![rumqttd::protocol::SubscribeReasonCode::Success(
                rumqttd::protocol::QoS::AtLeastOnce
            )],
            "the wire contract says QoS 1 for commands"
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    c.send_raw(&[0xe0, 0x00]).await; // DISCONNECT
                                     // The platform's time command may come first; then the close.
    assert_eq!(
        recv_until(&mut c, |p| !matches!(p, Packet::Publish(..))).await,
        None
    );
    // A command while the gateway is away.
    h.router
        .publish_platform(cmd.into(), r#"{"cmd":"status"}"#.into(), false)
        .await
        .unwrap();
    // Back with a persistent session: it is still held (MQTT-3.2.2-2) and
    // the command arrives at QoS 1, without subscribing again.
    let (mut c, present) = Client::login_session(&h, "gw-a", false, 30).await;
    assert!(present, "session_present must be 1");
    let Some(Packet::Publish(p, _)) =
        recv_until(&mut c, |p| matches!(p, Packet::Publish(..))).await
    else {
        panic!("the command sent while away never arrived");
    };
    assert_eq!(&p.topic[..], cmd.as_bytes());
    assert_eq!(&p.payload[..], br#"{"cmd":"status"}"#);
    drop(c);
    // A clean session discards the held one (MQTT-3.1.2-6, 3.2.2-1)...
    let (c, present) = Client::login_session(&h, "gw-a", true, 30).await;
    assert!(!present, "a clean session never has session_present");
    drop(c);
    // ...so the next persistent session starts empty.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (c, present) = Client::login_session(&h, "gw-a", false, 30).await;
        if !present {
            break;
        }
        // The clean connection's end may still be on its way to the router.
        drop(c);
        assert!(
            tokio::time::Instant::now() < deadline,
            "clean session did not discard"
        );
    }
}

#[tokio::test]
async fn a_commit_that_fails_before_a_disconnect_is_counted_not_dropped_silently() {
    // The log holds 1 reading; the second publish cannot be committed.
    let h = start_with(BrokerConfig::default(), 1, RouterLimits::default()).await;
    let mut c = Client::login(&h, "gw-a", 30).await;
    let mut frames = publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        1,
        &envelope("gw-a", "fl-a", 1.0),
    );
    frames.extend(publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        2,
        &envelope("gw-a", "fl-a", 2.0),
    ));
    // Two envelopes and the DISCONNECT in one write: one read, one commit
    // of two readings that finds the log full.
    frames.extend([0xe0, 0x00]);
    c.send_raw(&frames).await;
    let mut acked = Vec::new();
    while let Some(p) = c.recv().await {
        if let Packet::PubAck(a, _) = p {
            acked.push(a.pkid);
        }
    }
    assert_eq!(logged_levels(&h).len(), acked.len(), "acked = committed");
    assert!(acked.len() < 2, "an uncommitted publish was acknowledged");
    assert_eq!(
        closed(&h.metrics, "log_full"),
        1,
        "the failed commit is counted"
    );
}

#[tokio::test]
async fn a_gateway_that_floods_pingreq_without_reading_is_cut_at_the_write_deadline() {
    let mut h = start(BrokerConfig {
        write_timeout: Duration::from_secs(1),
        ..BrokerConfig::default()
    })
    .await;
    let mut flooder = Client::login(&h, "gw-a", 30).await;
    // PINGREQs as fast as it can write, never reading a PINGRESP.
    let chunk: Vec<u8> = [0xc0u8, 0x00].repeat(32 * 1024);
    let started = tokio::time::Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(30) {
        match tokio::time::timeout(Duration::from_secs(1), flooder.tls.write_all(&chunk)).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => {
                cut = true;
                break;
            }
        }
        if closed(&h.metrics, "write_timeout") == 1 {
            cut = true;
            break;
        }
    }
    assert!(cut, "a gateway that never reads was not disconnected");
    assert_eq!(closed(&h.metrics, "write_timeout"), 1);
    // Others are unaffected: another gateway is served at once.
    let mut other = Client::login(&h, "gw-b", 30).await;
    other
        .send_raw(&publish_qos1(
            "pantau/v1/gw/gw-b/telemetry",
            5,
            &envelope("gw-b", "fl-b", 3.0),
        ))
        .await;
    assert!(matches!(other.recv().await, Some(Packet::PubAck(a, _)) if a.pkid == 5));
    // And shutdown does not hang on anyone.
    h.shutdown.cancel();
    let task = h.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown hung")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_last_will_of_a_connection_taken_over_is_never_published() {
    let h = start(BrokerConfig::default()).await;
    let will = r#"{"online":false}"#;
    let mut old = Client::connect_tls(&h).await;
    old.send(connect_with_will(
        "gw-a",
        h.tokens[0].1.clone(),
        "pantau/v1/gw/gw-a/status",
        will,
    ))
    .await;
    assert!(matches!(old.recv().await, Some(Packet::ConnAck(..))));
    // A newer connection of the same gateway takes over: the gateway is
    // online, so the old connection's will would be a lie.
    let mut new = Client::login(&h, "gw-a", 30).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), old.recv()).await;
    assert_eq!(closed.expect("old connection closed"), None);
    new.send_raw(&publish_qos1(
        "pantau/v1/gw/gw-a/telemetry",
        4,
        &envelope("gw-a", "fl-a", 1.0),
    ))
    .await;
    assert!(matches!(new.recv().await, Some(Packet::PubAck(..))));
    let p = h.presence.get("gw-a").unwrap();
    assert!(p.connected);
    assert_ne!(p.last_status.as_deref(), Some(will), "stale will published");
    // The live connection's own will still fires when it goes away.
    drop(new);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.presence.get("gw-a").is_some_and(|p| p.connected) {
        assert!(tokio::time::Instant::now() < deadline, "not seen gone");
        tokio::task::yield_now().await;
    }
}
