//! `pantau api`: an API replica of a scaled deployment. It holds nothing
//! another replica needs: history comes from InfluxDB, platform state
//! (tokens, gateways, sensors) from the shared PostgreSQL, and live
//! readings from the broker cluster, where every ingest worker publishes
//! each commit after it is durable ([`COMMITTED_FILTER`]); every replica
//! subscribes on its own (no shared group), so each receives every
//! reading and a live event never shows one that is not stored. Any number
//! run behind a load balancer; one that dies loses only its connections.
//!
//! Its data directory is a cache: the mirrored commits (for the latest
//! values, pruned as soon as they are kept) and its TLS files. Its broker
//! session is persistent (`pantau-api-{replica}`), so a replica that
//! restarts gets the commits it missed meanwhile.
//!
//! `/readyz` is 200 only while the commit subscription is up and the API
//! serves; the subscription is supervised (restarted with backoff).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pantau_ingest::consumer::{mirror, ConsumerConfig, COMMITTED_FILTER};
use pantau_ingest::{Health, IngestMetrics, Ingestor, Part};
use pantau_model::Registry;

use crate::shutdown::Supervisor;
use crate::storage::{StorageArgs, StorageKind};

/// How long shutdown may take before the process exits regardless.
const GRACE: Duration = Duration::from_secs(10);

/// Settings of `pantau api`.
#[derive(Debug)]
pub struct ReplicaConfig {
    /// `mqtts://HOST:PORT` or `mqtt://HOST:PORT`.
    pub broker: String,
    /// Stable replica name.
    pub replica_id: String,
    /// Broker CA (PEM) for `mqtts://`.
    pub broker_ca: Option<PathBuf>,
    /// Cache directory (mirrored commits, TLS files).
    pub data_dir: PathBuf,
    /// Sensor registry.
    pub registry: Option<PathBuf>,
    /// HTTP(S) listener.
    pub http_listen: SocketAddr,
    /// Shared platform state.
    pub state: crate::cli::StateArgs,
    /// Where history is read from (InfluxDB).
    pub storage: StorageArgs,
    /// API limits.
    pub api: crate::config::ApiArgs,
    /// The external broker's dynsec admin (gateways added through the API
    /// are provisioned there).
    pub broker_admin: crate::dynsec::BrokerAdminArgs,
    /// Pantau's own account on the broker.
    pub broker_login: crate::cli::BrokerLogin,
    /// Time to live of the alert lease.
    pub alert_lease_ttl: Duration,
}

/// Runs the replica until SIGINT/SIGTERM.
pub async fn run(cfg: ReplicaConfig) -> anyhow::Result<()> {
    pantau_model::id::check_id(&cfg.replica_id)
        .map_err(|e| anyhow::anyhow!("invalid --replica-id {:?}: {e}", cfg.replica_id))?;
    if cfg.storage.storage != StorageKind::Influxdb {
        anyhow::bail!(
            "pantau api reads history from the shared store: give --storage influxdb (the embedded store belongs to one process)"
        );
    }
    if !cfg
        .state
        .url
        .as_deref()
        .is_some_and(pantau_state::is_postgres)
    {
        anyhow::bail!(
            "pantau api needs the shared platform state: give --state postgres://… (or PANTAU_STATE)"
        );
    }
    let (tls, host, port) =
        crate::dynsec::broker_address(&cfg.broker, cfg.broker_ca.as_deref(), "--broker")?;
    let file = match &cfg.registry {
        Some(p) => Registry::load(p)?,
        None => Registry::empty(),
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let state = crate::registry::open_state(&cfg.state, &cfg.data_dir).await?;
    let registry = Arc::new(tokio::task::block_in_place(|| {
        crate::registry::effective(file.clone(), &state)
    })?);
    let metrics = IngestMetrics::default();
    let storage =
        crate::storage::open(&cfg.data_dir, registry.clone(), &cfg.storage, &metrics).await?;
    let mut prometheus = prometheus_client::registry::Registry::default();
    metrics.register(&mut prometheus);
    crate::shutdown::reload_certificates_on_sighup()?;
    let tcp = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", cfg.http_listen))?;
    let files = pantau_broker::tls::TlsFiles::in_data_dir(&cfg.data_dir);
    let gate = cfg.api.conn_gate(&mut prometheus)?;
    let listener = cfg.api.listener(tcp, &files, &[], gate)?;
    let ingestor = Arc::new(Ingestor::with_registry(
        registry.clone(),
        storage.log.clone(),
        metrics.clone(),
    ));
    let health = Health::default();
    for part in [Part::Storage, Part::Consumer] {
        health.register(part);
    }
    health.up(Part::Storage);
    let mut sup = Supervisor::new(health.clone());
    let mirror_stage = sup.stage("commits");
    let api_stage = sup.stage("api");
    let consumer_cfg = ConsumerConfig {
        host,
        port,
        tls,
        worker_id: cfg.replica_id.clone(),
        username: cfg.broker_login.broker_username.clone(),
        password: cfg.broker_login.broker_password.clone(),
        leave_on_stop: false,
    };
    let (mirror_ingestor, mirror_health) = (ingestor.clone(), health.clone());
    sup.spawn_restarting(mirror_stage, "commits", Some(Part::Consumer), move |stop| {
        let (cfg, ingestor, health) = (
            consumer_cfg.clone(),
            mirror_ingestor.clone(),
            mirror_health.clone(),
        );
        async move {
            mirror(cfg, ingestor, health, stop).await;
            Ok::<(), std::convert::Infallible>(())
        }
    });
    let log = storage.log.clone();
    sup.spawn_restarting(mirror_stage, "commit-pruner", None, move |stop| {
        prune(log.clone(), stop)
    });
    if let pantau_ingest::Sink::Influx(influx) = &storage.sink {
        let (influx, log, stop) = (influx.clone(), storage.log.clone(), sup.token(mirror_stage));
        tokio::spawn(seed_latest(influx, log, stop));
    }
    let alerts = crate::alerts::start_shared(
        crate::alerts::SharedAlertDeps {
            state: state.clone(),
            registry: registry.clone(),
            log: storage.log.clone(),
            replica_id: &cfg.replica_id,
            lease_ttl: cfg.alert_lease_ttl,
        },
        &mut prometheus,
        &sup,
        mirror_stage,
    )?;
    crate::registry::SharedSensors::follow(&sup, mirror_stage, file, &ingestor, &state);
    let app = cfg.api.app_state(crate::config::ApiDeps {
        ingestor: ingestor.clone(),
        history: storage.sink.clone(),
        metrics: prometheus,
        state: state.clone(),
        presence: Arc::default(),
        los: pantau_model::derive::LosBands::default(),
        health: health.clone(),
        alerts: Some(alerts),
        gateway_hook: cfg.broker_admin.hook()?,
    })?;
    sup.spawn_critical(api_stage, "api", Some(Part::Api), |stop| {
        pantau_api::run(app, listener, stop)
    });
    tracing::info!(replica = %cfg.replica_id, broker = %cfg.broker, filter = COMMITTED_FILTER, "API replica started.");
    sup.run(GRACE).await?;
    Ok(())
}

/// Fills the latest values from InfluxDB at start, so a new replica (a new
/// name, no broker session yet) answers them at once, not only as readings
/// arrive; retried with backoff while InfluxDB does not answer. A sensor
/// whose mirrored reading is newer keeps it.
async fn seed_latest(
    influx: Arc<pantau_ingest::influx::InfluxSink>,
    log: Arc<pantau_ingest::log::IngestLog>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut backoff =
        pantau_model::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
            .expect("valid backoff bounds");
    loop {
        let result = match influx.latest(&pantau_model::SensorKind::ALL).await {
            Ok(readings) => {
                let n = readings.len();
                log.seed_latest(readings)
                    .await
                    .map(|()| n)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(n) => {
                tracing::info!(sensors = n, "Latest values seeded from InfluxDB.");
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Cannot seed the latest values from InfluxDB.");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Deletes mirrored commits once they are kept (their latest values stay
/// in the log's read model): the replica's log never grows.
async fn prune(
    log: Arc<pantau_ingest::log::IngestLog>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let l = log.clone();
        let batch = tokio::task::spawn_blocking(move || l.read_after(after, 50_000)).await??;
        if let Some(last) = batch.entries.last() {
            after = last.id;
            log.ack(batch.ids()).await?;
            continue;
        }
        let seen = log.appended();
        tokio::select! {
            _ = log.wait_for_append_after(seen, Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}
