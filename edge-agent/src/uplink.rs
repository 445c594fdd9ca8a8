//! The uplink: an MQTT 3.1.1 client over TLS (rumqttc + rustls/ring) that
//! publishes envelopes of readings at QoS 1, with a retained status and a
//! last will marking the gateway offline.
//!
//! This version holds readings in memory between the source and the
//! publish; the disk spool that keeps them across restarts and outages is
//! the edge-agent issue's work (DESIGN.md §4.1).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pantau_model::backoff::Backoff;
use pantau_model::envelope::encode;
use pantau_model::topic::{topic, TopicKind};
use pantau_model::{Reading, Timestamp};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, QoS, TlsConfiguration, Transport,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Errors setting up the uplink.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The broker URL is not `mqtts://HOST:PORT` or `mqtt://HOST:PORT`.
    #[error("broker url {0:?} is not mqtts://HOST:PORT or mqtt://HOST:PORT")]
    BadUrl(String),
    /// The CA file could not be read.
    #[error("CA file {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Gateway id (client id and username).
    pub gateway: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS client configuration; `None` for plain MQTT on loopback.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Secret token.
    pub password: String,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
}

/// Parses `mqtts://host:port` / `mqtt://host:port` into (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), UplinkError> {
    let bad = || UplinkError::BadUrl(url.to_owned());
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((tls, host.to_owned(), port))
}

/// A rustls client configuration (ring provider) trusting the CA in `ca_file`.
pub fn client_tls(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, UplinkError> {
    let ca_err = |message: String| UplinkError::Ca {
        path: ca_file.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ca_err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ca_err("no CA certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Creates the client and its event loop (not yet polled).
pub fn client(cfg: &UplinkConfig) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(cfg.gateway.clone(), cfg.host.clone(), cfg.port);
    opts.set_credentials(cfg.gateway.clone(), cfg.password.clone());
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    opts.set_last_will(LastWill::new(
        topic(&cfg.gateway, TopicKind::Status),
        r#"{"online":false}"#,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(tls) = &cfg.tls {
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    }
    AsyncClient::new(opts, 64)
}

/// Drives the event loop until shutdown, reconnecting with jittered
/// exponential backoff (rumqttc has none built in). Publishes the retained
/// online status after every CONNACK.
pub async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    gateway: String,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
        .expect("valid backoff bounds");
    let status = topic(&gateway, TopicKind::Status);
    loop {
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    backoff.reset();
                    tracing::info!(gateway = %gateway, "Uplink connected.");
                    let _ = client.try_publish(status.clone(), QoS::AtLeastOnce, true, r#"{"online":true}"#);
                }
                Ok(_) => {}
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(gateway = %gateway, error = %e, retry_in_ms = delay.as_millis() as u64, "Uplink connection failed, retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
            _ = shutdown.cancelled() => {
                let _ = client.try_publish(status.clone(), QoS::AtLeastOnce, true, r#"{"online":false}"#);
                let _ = client.try_disconnect();
                // Let the event loop flush the status and the DISCONNECT.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while eventloop.poll().await.is_ok() {}
                }).await;
                return;
            }
        }
    }
}

/// Batches readings from `rx` (up to `max_batch`, or after `max_delay`) into
/// envelopes and publishes them at QoS 1.
pub async fn publish_loop(
    client: AsyncClient,
    gateway: String,
    mut rx: mpsc::Receiver<Reading>,
    max_batch: usize,
    max_delay: Duration,
    shutdown: CancellationToken,
) {
    let telemetry = topic(&gateway, TopicKind::Telemetry);
    let mut seq: u64 = Timestamp::now().millis() as u64;
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = shutdown.cancelled() => return,
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_delay;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        seq += 1;
        let payload = encode(&gateway, seq, Timestamp::now(), &batch);
        if client
            .publish(telemetry.clone(), QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        assert_eq!(
            parse_url("mqtts://127.0.0.1:8883").unwrap(),
            (true, "127.0.0.1".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtt://localhost:1883").unwrap(),
            (false, "localhost".into(), 1883)
        );
        assert_eq!(
            parse_url("mqtts://[::1]:8883").unwrap(),
            (true, "::1".into(), 8883)
        );
        for bad in [
            "http://x:1",
            "mqtts://x",
            "mqtts://:1",
            "mqtts://x:99999",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
