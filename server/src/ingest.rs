//! `pantau ingest`: an ingest worker on an external MQTT broker cluster.
//! Several workers with distinct `--worker-id`s share the load through one
//! shared subscription; each has its own data directory (ingest log) and
//! drains into the configured storage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use pantau_ingest::consumer::{consume, ConsumerConfig};
use pantau_ingest::drain::{drain, DrainConfig};
use pantau_ingest::{IngestMetrics, Ingestor};
use pantau_model::Registry;
use tokio_util::sync::CancellationToken;

use crate::storage::StorageArgs;

/// Settings of `pantau ingest`.
#[derive(Debug)]
pub struct IngestConfig {
    /// `mqtts://HOST:PORT` or `mqtt://HOST:PORT`.
    pub broker: String,
    /// Stable worker name.
    pub worker_id: String,
    /// Broker CA (PEM) for `mqtts://`.
    pub broker_ca: Option<PathBuf>,
    /// Data directory (ingest log, embedded store).
    pub data_dir: PathBuf,
    /// Sensor registry.
    pub registry: Option<PathBuf>,
    /// Optional HTTP listener for health and metrics.
    pub http_listen: Option<SocketAddr>,
    /// Storage selection.
    pub storage: StorageArgs,
    /// API limits.
    pub api: crate::config::ApiArgs,
}

/// Runs the worker until SIGINT/SIGTERM.
pub async fn run(cfg: IngestConfig) -> anyhow::Result<()> {
    pantau_model::id::check_id(&cfg.worker_id)
        .map_err(|e| anyhow::anyhow!("invalid --worker-id {:?}: {e}", cfg.worker_id))?;
    let (tls, host, port) = pantau_edge_agent::uplink::parse_url(&cfg.broker)
        .map_err(|e| anyhow::anyhow!("--broker: {e}"))?;
    let tls = match (tls, &cfg.broker_ca) {
        (true, Some(ca)) => Some(pantau_edge_agent::uplink::client_tls(ca)?),
        (true, None) => anyhow::bail!("--broker mqtts:// needs --broker-ca FILE"),
        (false, _) => None,
    };
    let file = match &cfg.registry {
        Some(p) => Registry::load(p)?,
        None => Registry::empty(),
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // Agency tokens and API-registered sensors of this worker live in its
    // own data directory.
    let state = Arc::new(pantau_state::StateDb::open(&cfg.data_dir)?);
    let registry = Arc::new(crate::registry::effective(file, &state)?);
    let metrics = IngestMetrics::default();
    let storage =
        crate::storage::open(&cfg.data_dir, registry.clone(), &cfg.storage, &metrics).await?;
    let http = match cfg.http_listen {
        Some(addr) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (HTTP)"))?;
            let files = pantau_broker::tls::TlsFiles::in_data_dir(&cfg.data_dir);
            Some(cfg.api.listener(tcp, &files, &[])?)
        }
        None => None,
    };
    let ingestor = Arc::new(Ingestor::with_registry(
        registry.clone(),
        storage.log.clone(),
        metrics.clone(),
    ));
    let stop_consumer = CancellationToken::new();
    let stop_drain = CancellationToken::new();
    let stop_api = CancellationToken::new();
    let consumer = tokio::spawn(consume(
        ConsumerConfig {
            host,
            port,
            tls,
            worker_id: cfg.worker_id.clone(),
            username: std::env::var("PANTAU_BROKER_USERNAME").ok(),
            password: std::env::var("PANTAU_BROKER_PASSWORD").ok(),
        },
        ingestor.clone(),
        stop_consumer.clone(),
    ));
    let drainer = tokio::spawn(drain(
        storage.log.clone(),
        storage.sink.clone(),
        DrainConfig::default(),
        metrics.clone(),
        stop_drain.clone(),
    ));
    let api = match http {
        Some(listener) => {
            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            let app = cfg.api.app_state(
                ingestor.clone(),
                storage.sink.clone(),
                registry,
                state.clone(),
                Arc::default(),
                pantau_model::derive::LosBands::default(),
            )?;
            // Storage was checked at start-up; the consumer runs.
            app.ready.set(true, true);
            Some(tokio::spawn(pantau_api::run(
                app,
                listener,
                stop_api.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(worker = %cfg.worker_id, broker = %cfg.broker, "Ingest worker started.");
    crate::shutdown::signal().await;
    tracing::info!("Shutting down.");
    stop_consumer.cancel();
    let _ = consumer.await;
    stop_drain.cancel();
    let _ = drainer.await;
    stop_api.cancel();
    if let Some(api) = api {
        let _ = api.await;
    }
    Ok(())
}
