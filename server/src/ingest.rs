//! `pantau ingest`: an ingest worker on an external MQTT broker cluster.
//! Several workers with distinct `--worker-id`s share the load through one
//! shared subscription; each has its own data directory (ingest log) and
//! drains into the configured storage. `/readyz` is 200 only while the
//! consumer is connected and subscribed, storage answers and the drain
//! runs; the consumer and the drain are supervised (restarted with backoff).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use pantau_ingest::consumer::{consume, ConsumerConfig};
use pantau_ingest::{Health, IngestMetrics, Ingestor, Part};
use pantau_model::Registry;

use crate::shutdown::Supervisor;
use crate::storage::StorageArgs;

/// How long shutdown may take before the process exits regardless.
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// Where platform state lives (`state.db` or a shared PostgreSQL).
    pub state: crate::cli::StateArgs,
    /// Storage selection.
    pub storage: StorageArgs,
    /// API limits.
    pub api: crate::config::ApiArgs,
    /// The external broker's dynsec admin (gateways added through the API
    /// are provisioned there).
    pub broker_admin: crate::dynsec::BrokerAdminArgs,
    /// Pantau's own account on the broker.
    pub broker_login: crate::cli::BrokerLogin,
    /// Leave the shared subscription at shutdown (a worker removed for good).
    pub leave_on_stop: bool,
}

/// Runs the worker until SIGINT/SIGTERM.
pub async fn run(cfg: IngestConfig) -> anyhow::Result<()> {
    pantau_model::id::check_id(&cfg.worker_id)
        .map_err(|e| anyhow::anyhow!("invalid --worker-id {:?}: {e}", cfg.worker_id))?;
    let (tls, host, port) =
        crate::dynsec::broker_address(&cfg.broker, cfg.broker_ca.as_deref(), "--broker")?;
    let file = match &cfg.registry {
        Some(p) => Registry::load(p)?,
        None => Registry::empty(),
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // Agency tokens and API-registered sensors: in the worker's own data
    // directory, or in the PostgreSQL every worker and API replica shares.
    let state = crate::registry::open_state(&cfg.state, &cfg.data_dir).await?;
    // Reading the stored sensors blocks (PostgreSQL's client does).
    let registry = Arc::new(tokio::task::block_in_place(|| {
        crate::registry::effective(file.clone(), &state)
    })?);
    let metrics = IngestMetrics::default();
    let storage =
        crate::storage::open(&cfg.data_dir, registry.clone(), &cfg.storage, &metrics).await?;
    let mut prometheus = prometheus_client::registry::Registry::default();
    metrics.register(&mut prometheus);
    // Whether or not it serves HTTPS: a SIGHUP (`systemctl reload`) must
    // not end the worker.
    crate::shutdown::reload_certificates_on_sighup()?;
    let http = match cfg.http_listen {
        Some(addr) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (HTTP)"))?;
            let files = pantau_broker::tls::TlsFiles::in_data_dir(&cfg.data_dir);
            let gate = cfg.api.conn_gate(&mut prometheus)?;
            Some(cfg.api.listener(tcp, &files, &[], gate)?)
        }
        None => None,
    };
    let ingestor = Arc::new(Ingestor::with_registry(
        registry.clone(),
        storage.log.clone(),
        metrics.clone(),
    ));
    let health = Health::default();
    for part in [Part::Storage, Part::Drain, Part::Consumer] {
        health.register(part);
    }
    // Storage was checked at start-up; the consumer is ready once it is
    // connected and subscribed.
    health.up(Part::Storage);
    let mut sup = Supervisor::new(health.clone());
    // Stop order: no more messages taken, then the drain, the API last.
    let consumer_stage = sup.stage("consumer");
    let drain_stage = sup.stage("drain");
    let api_stage = sup.stage("api");
    let consumer_cfg = ConsumerConfig {
        host,
        port,
        tls,
        worker_id: cfg.worker_id.clone(),
        username: cfg.broker_login.broker_username.clone(),
        password: cfg.broker_login.broker_password.clone(),
        leave_on_stop: cfg.leave_on_stop,
    };
    let (consumer_ingestor, consumer_health) = (ingestor.clone(), health.clone());
    sup.spawn_restarting(
        consumer_stage,
        "consumer",
        Some(Part::Consumer),
        move |stop| {
            let (cfg, ingestor, health) = (
                consumer_cfg.clone(),
                consumer_ingestor.clone(),
                consumer_health.clone(),
            );
            async move {
                consume(cfg, ingestor, health, stop).await;
                Ok::<(), std::convert::Infallible>(())
            }
        },
    );
    storage.spawn_drain(&sup, drain_stage, &metrics, &health);
    crate::registry::SharedSensors::follow(&sup, consumer_stage, file, &ingestor, &state);
    if let Some(listener) = http {
        let app = cfg.api.app_state(crate::config::ApiDeps {
            ingestor: ingestor.clone(),
            history: storage.sink.clone(),
            metrics: prometheus,
            state: state.clone(),
            presence: Arc::default(),
            los: pantau_model::derive::LosBands::default(),
            health: health.clone(),
            alerts: None,
            gateway_hook: cfg.broker_admin.hook()?,
        })?;
        sup.spawn_critical(api_stage, "api", Some(Part::Api), |stop| {
            pantau_api::run(app, listener, stop)
        });
    }
    tracing::info!(worker = %cfg.worker_id, broker = %cfg.broker, "Ingest worker started.");
    sup.run(GRACE).await?;
    Ok(())
}
