//! Certificate rotation without downtime: the server certificate files are
//! replaced and `pantau up` gets SIGHUP; new MQTT and HTTPS handshakes get
//! the new certificate, a gateway connected before keeps its connection and
//! its readings are stored, and a pair that does not load leaves the
//! previous certificate in use (logged), the process healthy.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pantau_broker::tls::{cert_serial, TlsFiles};
use pantau_tests::mqtt::connect_gateway;
use pantau_tests::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// The serial of the certificate a TLS handshake with `port` presents.
async fn served_serial(port: u16, ca: &Path) -> Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?
        .clone();
    cert_serial(&cert).context("a serial")
}

fn file_serial(path: &Path) -> Result<String> {
    let cert = CertificateDer::from_pem_file(path)?;
    cert_serial(&cert).context("a serial")
}

fn hangup(p: &Pantau) -> Result<()> {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()?
        .success();
    ensure!(ok, "kill -HUP failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_server_certificate_without_dropping_connections() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, creds) = minimal(dir.path(), &["--http-tls"]).await?;
    let files = TlsFiles::in_data_dir(&p.data_dir);
    let before = file_serial(&files.server_cert)?;
    ensure!(served_serial(p.mqtt.port(), &files.ca_cert).await? == before);
    ensure!(served_serial(p.http.port(), &files.ca_cert).await? == before);

    // A gateway connected before the rotation.
    let (client, mut eventloop) = connect_gateway(&p, &creds).await?;
    let dropped = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let poller = {
        let (dropped, acks) = (dropped.clone(), acks.clone());
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        dropped.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        })
    };

    // A new pair in place of the old (as an operator's renewal would),
    // then SIGHUP.
    std::fs::remove_file(&files.server_cert)?;
    std::fs::remove_file(&files.server_key)?;
    pantau_broker::tls::server_config(&files, &[])?;
    let after = file_serial(&files.server_cert)?;
    ensure!(after != before, "a new certificate was made");
    hangup(&p)?;
    for (what, port) in [("MQTT", p.mqtt.port()), ("HTTPS", p.http.port())] {
        eventually(
            Duration::from_secs(5),
            &format!("the new certificate on {what}"),
            || async { (served_serial(port, &files.ca_cert).await.ok()? == after).then_some(()) },
        )
        .await?;
    }
    // The connection made before still carries readings.
    let topic = format!("pantau/v1/gw/{}/telemetry", creds.gateway);
    client
        .publish(
            topic.clone(),
            rumqttc::QoS::AtLeastOnce,
            false,
            envelope("gw-test", 1, &[level(&now_rfc3339(0), 120.0)]),
        )
        .await?;
    eventually(
        Duration::from_secs(5),
        "the PUBACK on the old connection",
        || std::future::ready((acks.load(Ordering::SeqCst) >= 1).then_some(())),
    )
    .await?;
    stored_eventually(&p.data_dir, "fl-test-01", 1).await?;
    ensure!(
        !dropped.load(Ordering::SeqCst),
        "the gateway's connection dropped"
    );

    // A broken file: the current certificate stays, the process is fine.
    std::fs::write(&files.server_cert, "not a certificate")?;
    hangup(&p)?;
    eventually(
        Duration::from_secs(5),
        "the failed reload in the log",
        || std::future::ready(p.log_text().contains("did not reload").then_some(())),
    )
    .await?;
    ensure!(served_serial(p.mqtt.port(), &files.ca_cert).await? == after);
    ensure!(served_serial(p.http.port(), &files.ca_cert).await? == after);
    p.get_json("/healthz").await?;
    ensure!(
        !dropped.load(Ordering::SeqCst),
        "the gateway's connection dropped"
    );
    poller.abort();
    Ok(())
}
