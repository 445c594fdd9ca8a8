//! Runs an agent from its configuration: sources → batching → uplink.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, SourceSection};
use crate::uplink::{self, UplinkConfig, UplinkError};
use crate::{source, SimSensor};

/// Readings buffered between the sources and the uplink.
const CHANNEL: usize = 10_000;

/// Runs until `shutdown` fires (or every source has ended and its readings
/// were handed to the client).
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), UplinkError> {
    let (tls, host, port) = uplink::parse_url(&cfg.broker.url)?;
    let tls = match (tls, &cfg.broker.ca_file) {
        (true, Some(ca)) => Some(uplink::client_tls(ca)?),
        _ => None,
    };
    let up = UplinkConfig {
        gateway: cfg.gateway.clone(),
        host,
        port,
        tls,
        password: cfg.broker.password.clone().unwrap_or_default(),
        keep_alive: cfg.broker.keep_alive,
    };
    let (tx, rx) = mpsc::channel(CHANNEL);
    let (client, eventloop) = uplink::client(&up);
    let driver = tokio::spawn(uplink::drive(
        eventloop,
        client.clone(),
        cfg.gateway.clone(),
        shutdown.clone(),
    ));
    for s in cfg.source {
        let tx = tx.clone();
        let sd = shutdown.clone();
        match s {
            SourceSection::Stdin => {
                tokio::spawn(async move {
                    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
                    source::json_lines(stdin, tx, sd).await;
                });
            }
            SourceSection::Simulated { interval, sensors } => {
                let sims: Vec<SimSensor> = sensors.iter().filter_map(|s| s.build().ok()).collect();
                tokio::spawn(source::simulate(sims, interval, tx, sd));
            }
        }
    }
    drop(tx);
    uplink::publish_loop(
        client,
        cfg.gateway,
        rx,
        cfg.batch.max_readings,
        cfg.batch.max_delay,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = driver.await;
    Ok(())
}

/// Installs the ring provider as the process default (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
