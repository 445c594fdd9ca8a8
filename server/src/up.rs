//! `pantau up`: every part of the platform in one process.
//!
//! Start order: data dir → state and store → TLS → bind both listeners
//! (a listener that cannot bind stops the start with its address) → router
//! → ingest log and sink → broker, drain and API → demo gateways. Every
//! task runs under the [`Supervisor`]: the drain and the demo gateways are
//! restarted with backoff when they stop (the drain's readiness down
//! meanwhile); the broker or the API stopping takes the process down with
//! a non-zero exit. Shutdown (SIGINT or SIGTERM) runs in reverse: demo
//! gateways, then the broker (no new telemetry; in-flight commits finish),
//! then the drain (in-flight sink writes get a moment; the rest stays in
//! the ingest log for the next start), then the API. Past the grace period
//! the process exits anyway and names what was still pending.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pantau_broker::tls::{server_config_with, TlsFiles};
use pantau_broker::{BrokerDeps, BrokerMetrics, Presence, RouterHandle, RouterLimits};
use pantau_ingest::{Health, IngestMetrics, Ingestor, Part};
use pantau_model::Registry;
use pantau_state::StateDb;
use tokio::net::TcpListener;

use crate::config::UpConfig;
use crate::shutdown::Supervisor;

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

/// `--demo` replaces the token of every gateway it simulates, so it runs
/// only on the built-in demo registry and on a data directory that holds
/// no other gateways: anything else is refused before anything changes.
fn demo_is_safe(cfg: &UpConfig) -> anyhow::Result<()> {
    if let Some(path) = &cfg.registry {
        anyhow::bail!(
            "--demo runs simulated gateways on the built-in Dumai registry and replaces their \
             tokens; it refuses --registry {} (a real registry's gateways would be locked out). \
             Run without --demo to serve that registry.",
            path.display()
        );
    }
    if !cfg.data_dir.join("state.db").exists() {
        return Ok(());
    }
    let demo: std::collections::BTreeSet<String> = Registry::parse(crate::DEMO_REGISTRY)
        .context("built-in demo registry")?
        .gateways()
        .into_iter()
        .map(|g| g.to_string())
        .collect();
    let foreign: Vec<String> = StateDb::open(&cfg.data_dir)?
        .gateways()?
        .into_iter()
        .map(|g| g.id)
        .filter(|id| !demo.contains(id))
        .collect();
    if !foreign.is_empty() {
        anyhow::bail!(
            "--demo would replace gateway tokens in {}, which also holds gateways the demo did \
             not create ({}); use another --data-dir for the demo",
            cfg.data_dir.display(),
            foreign.join(", ")
        );
    }
    Ok(())
}

/// Runs the platform until SIGINT/SIGTERM.
pub async fn up(cfg: UpConfig) -> anyhow::Result<()> {
    if cfg.demo {
        demo_is_safe(&cfg)?;
    }
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
    crate::shutdown::reload_certificates_on_sighup()?;
    let revoked_certs = pantau_broker::tls::Denylist::default();
    let tls = server_config_with(&files, &cfg.tls_names, revoked_certs.clone())?;

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

    let health = Health::default();
    for part in [Part::Storage, Part::Drain, Part::Broker] {
        health.register(part);
    }
    // Storage was opened (and InfluxDB checked) and both listeners are bound.
    health.up(Part::Storage);
    let mut sup = Supervisor::new(health.clone());
    // Stop order: the gateways, then the broker (no new telemetry), the
    // drain (the log keeps what it has not delivered), the API last.
    let demo_stage = sup.stage("demo");
    let broker_stage = sup.stage("broker");
    let drain_stage = sup.stage("drain");
    let alerts_stage = sup.stage("alerts");
    let api_stage = sup.stage("api");

    storage.spawn_drain(&sup, drain_stage, &ingest_metrics, &health);

    let presence = Arc::new(Presence::default());
    let alert_router = router.clone();
    let deps = BrokerDeps {
        tls,
        router,
        ingestor: ingestor.clone(),
        state: state.clone(),
        metrics: broker_metrics,
        presence: presence.clone(),
        revoked_certs,
    };
    let broker_config = cfg.broker.to_config();
    sup.spawn_critical(broker_stage, "broker", Some(Part::Broker), |stop| {
        pantau_broker::run(broker_config, deps, mqtt, stop)
    });
    health.up(Part::Broker);
    let alerts = crate::alerts::start(
        crate::alerts::AlertDeps {
            cfg: &cfg.alerts,
            data_dir: &cfg.data_dir,
            registry: registry.clone(),
            log: storage.log.clone(),
            router: alert_router,
            presence: presence.clone(),
            los: &cfg.los,
        },
        &mut metrics,
        &sup,
        alerts_stage,
    )?;
    let gate = cfg.api.conn_gate(&mut metrics)?;
    let app = cfg.api.app_state(crate::config::ApiDeps {
        ingestor: ingestor.clone(),
        history: storage.sink.clone(),
        metrics,
        state: state.clone(),
        presence,
        los: cfg.los.clone(),
        health: health.clone(),
        alerts,
        gateway_hook: None,
    })?;
    let http = cfg.api.listener(http, &files, &cfg.tls_names, gate)?;
    let scheme = if http.is_tls() { "https" } else { "http" };
    sup.spawn_critical(api_stage, "api", Some(Part::Api), |stop| {
        pantau_api::run(app, http, stop)
    });

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
            &sup,
            demo_stage,
        )?;
        tracing::info!(gateways = n, "Demo gateways started.");
    }
    sup.run(GRACE).await?;
    Ok(())
}
