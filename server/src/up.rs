//! `pantau up`: every part of the platform in one process.
//!
//! Start order: data dir → state and store → TLS → bind both listeners
//! (a listener that cannot bind stops the start with its address) → router
//! → ingest log and sink → broker, drain and API → demo gateways. Shutdown
//! (SIGINT or SIGTERM) runs in reverse: demo gateways, then the broker (no
//! new telemetry; in-flight commits finish), then the drain (in-flight sink
//! writes get a moment; the rest stays in the ingest log for the next
//! start), then the API. Past the grace period the process exits anyway
//! and says so.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pantau_broker::tls::{server_config, TlsFiles};
use pantau_broker::{BrokerDeps, BrokerMetrics, Presence, RouterHandle, RouterLimits};
use pantau_ingest::drain::DrainConfig;
use pantau_ingest::{IngestMetrics, Ingestor};
use pantau_model::Registry;
use pantau_state::StateDb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::UpConfig;

/// How long shutdown may take before the process exits regardless.
const GRACE: Duration = Duration::from_secs(10);

fn load_registry(cfg: &UpConfig) -> anyhow::Result<Registry> {
    Ok(match (&cfg.registry, cfg.demo) {
        (Some(path), _) => Registry::load(path)?,
        (None, true) => Registry::parse(crate::DEMO_REGISTRY).context("built-in demo registry")?,
        (None, false) => Registry::empty(),
    })
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Runs the platform until SIGINT/SIGTERM.
pub async fn up(cfg: UpConfig) -> anyhow::Result<()> {
    let file = load_registry(&cfg)?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let state = Arc::new(StateDb::open(&cfg.data_dir)?);
    let registry = Arc::new(crate::registry::effective(file, &state)?);
    let ingest_metrics = IngestMetrics::default();
    let storage = crate::storage::open(
        &cfg.data_dir,
        registry.clone(),
        &cfg.storage,
        &ingest_metrics,
    )
    .await?;
    let files = TlsFiles::in_data_dir(&cfg.data_dir);
    let tls = server_config(&files, &cfg.tls_names)?;

    let http = bind(cfg.http_listen, "HTTP API").await?;
    let mqtt = bind(cfg.mqtt_listen, "MQTT over TLS").await?;
    let http_addr = http.local_addr()?;
    let mqtt_addr = mqtt.local_addr()?;

    let mut metrics = prometheus_client::registry::Registry::default();
    ingest_metrics.register(&mut metrics);
    let broker_metrics = BrokerMetrics::default();
    broker_metrics.register(&mut metrics);

    let sensors = registry.get().len();
    let ingestor = Arc::new(Ingestor::with_registry(
        registry.clone(),
        storage.log.clone(),
        ingest_metrics.clone(),
    ));
    let router =
        RouterHandle::start(&RouterLimits::default()).context("cannot start the router")?;

    let stop_demo = CancellationToken::new();
    let stop_broker = CancellationToken::new();
    let stop_api = CancellationToken::new();
    let stop_drain = CancellationToken::new();
    let drain = tokio::spawn(pantau_ingest::drain::drain(
        storage.log.clone(),
        storage.sink.clone(),
        DrainConfig::default(),
        ingest_metrics,
        stop_drain.clone(),
    ));
    let demo_tasks = TaskTracker::new();

    let presence = Arc::new(Presence::default());
    let broker = tokio::spawn(pantau_broker::run(
        cfg.broker.to_config(),
        BrokerDeps {
            tls,
            router,
            ingestor: ingestor.clone(),
            state: state.clone(),
            metrics: broker_metrics,
            presence: presence.clone(),
        },
        mqtt,
        stop_broker.clone(),
    ));
    let app = cfg.api.app_state(
        ingestor.clone(),
        storage.sink.clone(),
        metrics,
        state.clone(),
        presence.clone(),
        cfg.los.clone(),
    )?;
    // Storage was opened (and InfluxDB checked) and both listeners are bound.
    app.ready.set(true, true);
    let http = cfg.api.listener(http, &files, &cfg.tls_names)?;
    let scheme = if http.is_tls() { "https" } else { "http" };
    let api = tokio::spawn(pantau_api::run(app, http, stop_api.clone()));

    tracing::info!(
        http = %http_addr,
        mqtt = %mqtt_addr,
        sensors,
        data_dir = %cfg.data_dir.display(),
        "Pantau is up: live conditions at {scheme}://{http_addr}/api/v1/public/conditions"
    );
    if cfg.demo {
        let client_tls = pantau_edge_agent::uplink::client_tls(&files.ca_cert)?;
        let n = crate::demo::start(
            &ingestor.registry(),
            &state,
            &cfg.data_dir,
            mqtt_addr,
            client_tls,
            cfg.demo_interval,
            &demo_tasks,
            stop_demo.clone(),
        )?;
        tracing::info!(gateways = n, "Demo gateways started.");
    }

    crate::shutdown::signal().await;
    tracing::info!("Shutting down.");
    let ordered = async {
        stop_demo.cancel();
        demo_tasks.close();
        demo_tasks.wait().await;
        stop_broker.cancel();
        let _ = broker.await;
        stop_drain.cancel();
        let _ = drain.await;
        stop_api.cancel();
        let _ = api.await;
    };
    if tokio::time::timeout(GRACE, ordered).await.is_err() {
        tracing::warn!(
            grace_s = GRACE.as_secs(),
            "Shutdown grace period passed; exiting with tasks pending."
        );
    }
    Ok(())
}
