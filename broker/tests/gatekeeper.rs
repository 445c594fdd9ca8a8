//! Gatekeeper tests against the public `run()` on port 0, with real TLS, a
//! real store and raw MQTT packets written with rumqttd's codec, so that
//! misbehaving clients can be played exactly.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pantau_broker::tls::{server_config, TlsFiles};
use pantau_broker::{BrokerConfig, BrokerDeps, BrokerMetrics, RouterHandle, RouterLimits};
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
    tokens: Vec<(String, String)>,
    log: Arc<IngestLog>,
    metrics: BrokerMetrics,
    ca: std::path::PathBuf,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: BrokerConfig) -> Harness {
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
    let log = Arc::new(IngestLog::open(dir.path(), 1_000_000, IngestMetrics::default()).unwrap());
    let ingestor = Arc::new(Ingestor::new(
        Registry::parse(REGISTRY).unwrap(),
        log.clone(),
        IngestMetrics::default(),
    ));
    let metrics = BrokerMetrics::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let deps = BrokerDeps {
        tls,
        router: RouterHandle::start(&RouterLimits::default()).unwrap(),
        ingestor,
        state,
        metrics: metrics.clone(),
    };
    tokio::spawn(pantau_broker::run(config, deps, listener, shutdown.clone()));
    Harness {
        addr,
        tokens,
        log,
        metrics,
        ca: files.ca_cert,
        shutdown,
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
        let mut c = Self::connect_tls(h).await;
        let token = h.tokens.iter().find(|(g, _)| g == gw).unwrap().1.clone();
        c.send(Packet::Connect(
            Connect {
                keep_alive,
                client_id: gw.into(),
                clean_session: true,
            },
            None,
            None,
            None,
            Some(Login {
                username: gw.into(),
                password: token,
            }),
        ))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(ack, _)) => assert_eq!(ack.code, ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }
}

/// A QoS 1 PUBLISH frame built by hand (rumqttd keeps `Publish.qos` private).
fn publish_qos1(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    let mut frame = vec![0x32];
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
    let batch = h.log.read_after(0, 100).unwrap();
    let values: Vec<f64> = batch
        .entries
        .iter()
        .flat_map(|e| {
            e.readings
                .iter()
                .map(|r| r.values["water_level_cm"].as_f64())
        })
        .collect();
    assert_eq!(values, vec![42.5]);
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
    c.send(Packet::Subscribe(
        rumqttd::protocol::Subscribe {
            pkid: 1,
            filters: vec![rumqttd::protocol::Filter {
                path: "#".into(),
                qos: rumqttd::protocol::QoS::AtMostOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: rumqttd::protocol::RetainForwardRule::Never,
            }],
        },
        None,
    ))
    .await;
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
async fn a_silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let h = start(BrokerConfig::default()).await;
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
    c.send(Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: "gw-a".into(),
            clean_session: true,
        },
        None,
        Some(rumqttd::protocol::LastWill {
            topic: "pantau/v1/gw/gw-b/status".into(),
            message: r#"{"online":false}"#.into(),
            qos: rumqttd::protocol::QoS::AtLeastOnce,
            retain: true,
        }),
        None,
        Some(Login {
            username: "gw-a".into(),
            password: token,
        }),
    ))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(ack, _)) => assert_eq!(ack.code, ConnectReturnCode::NotAuthorized),
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    assert_eq!(refused(&h.metrics, "will_acl"), 1);
}
