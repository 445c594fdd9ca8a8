//! Alerting in `pantau up`: the alert engine (fed from the ingest log),
//! the webhook dispatcher, and the retained alert states on the embedded
//! broker (`pantau/v1/alerts/{kind}/{sensor}`), each supervised.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context;
use pantau_alerts::store::AlertFilter;
use pantau_alerts::{Alert, AlertMetrics, AlertState, AlertStore, Engine};
use pantau_broker::agency::alert_topic;
use pantau_broker::RouterHandle;
use pantau_ingest::IngestLog;
use pantau_model::{SensorKind, SharedRegistry, Timestamp};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::config::AlertsFile;
use crate::shutdown::{StageId, Supervisor};

/// What alerting needs from the process.
#[derive(Debug)]
pub struct AlertDeps<'a> {
    /// Settings.
    pub cfg: &'a AlertsFile,
    /// Data directory (`state.db`).
    pub data_dir: &'a std::path::Path,
    /// The sensors.
    pub registry: Arc<SharedRegistry>,
    /// Where committed readings are read from.
    pub log: Arc<IngestLog>,
    /// The embedded broker, for the retained alert states.
    pub router: RouterHandle,
    /// Gateway status messages (gateway-health rules).
    pub presence: Arc<pantau_state::presence::Presence>,
    /// Traffic level-of-service bands.
    pub los: &'a pantau_model::derive::LosBands,
}

/// Starts the engine, the dispatcher and the alert-state publisher;
/// `None` when alerting is off.
pub fn start(
    deps: AlertDeps<'_>,
    metrics: &mut prometheus_client::registry::Registry,
    sup: &Supervisor,
    stage: StageId,
) -> anyhow::Result<Option<Arc<Engine>>> {
    if !deps.cfg.enabled {
        tracing::info!("Alerting is off.");
        return Ok(None);
    }
    let alert_metrics = AlertMetrics::default();
    alert_metrics.register(metrics);
    let store = Arc::new(AlertStore::open(deps.data_dir)?);
    let engine = Arc::new(
        Engine::open(
            store.clone(),
            deps.registry,
            deps.cfg.engine(deps.los),
            alert_metrics.clone(),
        )
        .context("alert rules")?
        .with_presence(deps.presence),
    );
    let (log, e) = (deps.log, engine.clone());
    sup.spawn_restarting(stage, "alerts", None, move |stop| {
        e.clone().run(log.clone(), stop)
    });
    let dispatcher = Arc::new(pantau_alerts::webhook::Dispatcher::new(
        store,
        alert_metrics,
        deps.cfg.webhook_timeout,
    ));
    let queued = engine.outbox_watch();
    sup.spawn_restarting(stage, "webhooks", None, move |stop| {
        let (d, q) = (dispatcher.clone(), queued.clone());
        async move {
            d.run(q, stop).await;
            Ok::<(), std::convert::Infallible>(())
        }
    });
    let (e, router) = (engine.clone(), deps.router);
    sup.spawn_restarting(stage, "alert-states", None, move |stop| {
        let (e, router) = (e.clone(), router.clone());
        async move {
            tokio::select! {
                r = publish_states(e, router) => r,
                _ = stop.cancelled() => Ok(()),
            }
        }
    });
    Ok(Some(engine))
}

/// What alerting needs in an API replica of a scaled deployment.
#[derive(Debug)]
pub struct SharedAlertDeps<'a> {
    /// The shared platform state (alert tables and the alert lease).
    pub state: Arc<pantau_state::StateDb>,
    /// The sensors.
    pub registry: Arc<SharedRegistry>,
    /// The replica's mirror of the ingest workers' commits.
    pub log: Arc<IngestLog>,
    /// This replica (the lease's holder name).
    pub replica_id: &'a str,
    /// The lease's time to live.
    pub lease_ttl: std::time::Duration,
}

/// Starts alerting in an API replica: an engine over the mirrored
/// commits that evaluates only while it holds the alert lease
/// ([`pantau_alerts::duty`]), and the webhook dispatcher, which runs only
/// then too (one notification per event across replicas). Every replica
/// serves the alert routes from the shared store.
pub fn start_shared(
    deps: SharedAlertDeps<'_>,
    metrics: &mut prometheus_client::registry::Registry,
    sup: &Supervisor,
    stage: StageId,
) -> anyhow::Result<Arc<Engine>> {
    let alert_metrics = AlertMetrics::default();
    alert_metrics.register(metrics);
    let store = Arc::new(AlertStore::shared(deps.state.clone())?);
    let los = pantau_model::derive::LosBands::default();
    let engine = Arc::new(
        Engine::open(
            store.clone(),
            deps.registry,
            AlertsFile::default().engine(&los),
            alert_metrics.clone(),
        )
        .context("alert rules")?
        .with_shared_feed(),
    );
    let e = engine.clone();
    sup.spawn_restarting(stage, "alert-feed", None, move |stop| {
        let e = e.clone();
        async move {
            e.follow_feed(stop).await;
            Ok::<(), std::convert::Infallible>(())
        }
    });
    let duty = pantau_alerts::duty::Duty::new(deps.state, deps.replica_id, deps.lease_ttl);
    let (on_duty, duty_watch) = tokio::sync::watch::channel(false);
    let (log, e) = (deps.log, engine.clone());
    sup.spawn_restarting(stage, "alert-duty", None, move |stop| {
        let (e, log, duty, on_duty) = (e.clone(), log.clone(), duty.clone(), on_duty.clone());
        async move {
            pantau_alerts::duty::run(e, log, duty, on_duty, stop).await;
            Ok::<(), std::convert::Infallible>(())
        }
    });
    let dispatcher = Arc::new(pantau_alerts::webhook::Dispatcher::new(
        store,
        alert_metrics,
        AlertsFile::default().webhook_timeout,
    ));
    let queued = engine.outbox_watch();
    sup.spawn_restarting(stage, "webhooks", None, move |stop| {
        let (d, q, mut duty) = (dispatcher.clone(), queued.clone(), duty_watch.clone());
        async move {
            loop {
                if duty.wait_for(|on| *on).await.is_err() {
                    return Ok(());
                }
                let shift = stop.child_token();
                tokio::select! {
                    _ = d.clone().run(q.clone(), shift.clone()) => {}
                    _ = duty.wait_for(|on| !*on) => {}
                    _ = stop.cancelled() => {}
                }
                shift.cancel();
                if stop.is_cancelled() {
                    return Ok::<(), std::convert::Infallible>(());
                }
            }
        }
    });
    Ok(engine)
}

/// The alerts of each sensor that are not resolved, as the publisher
/// last saw them.
type States = BTreeMap<(SensorKind, String), BTreeMap<i64, Alert>>;

/// Publishes the retained state of one sensor: its alerts that are not
/// resolved.
async fn publish_state(
    router: &RouterHandle,
    states: &States,
    (kind, sensor): &(SensorKind, String),
) -> anyhow::Result<()> {
    let list: Vec<serde_json::Value> = states
        .get(&(*kind, sensor.clone()))
        .into_iter()
        .flat_map(|m| m.values())
        .map(|a| {
            serde_json::json!({
                "id": a.id, "rule": a.rule, "rule_name": a.rule_name, "state": a.state,
                "level": a.level, "level_label": a.level_label,
                "since": a.since.to_rfc3339(), "changed": a.changed.to_rfc3339(), "late": a.late,
            })
        })
        .collect();
    let body = serde_json::json!({
        "sensor": sensor,
        "kind": kind.as_str(),
        "active": !list.is_empty(),
        "alerts": list,
        "updated": Timestamp::now().to_rfc3339(),
    });
    router
        .publish_platform(
            alert_topic(*kind, sensor).into(),
            body.to_string().into(),
            true,
        )
        .await
        .map_err(|e| anyhow::anyhow!("publishing the alert state of {sensor}: {e}"))
}

fn apply(states: &mut States, alert: &Alert) -> (SensorKind, String) {
    let key = (alert.kind, alert.sensor.clone());
    let m = states.entry(key.clone()).or_default();
    if alert.state == AlertState::Resolved {
        m.remove(&alert.id);
    } else {
        m.insert(alert.id, alert.clone());
    }
    key
}

/// Publishes every sensor's current state at start (retained messages
/// live in the broker's memory), then each sensor whose alerts change.
async fn publish_states(engine: Arc<Engine>, router: RouterHandle) -> anyhow::Result<()> {
    let mut rx = engine.subscribe();
    let mut all = true;
    let mut states = States::new();
    loop {
        if all {
            let e = engine.clone();
            let open = tokio::task::spawn_blocking(move || {
                e.store().alerts(&AlertFilter {
                    states: vec![AlertState::Open, AlertState::Acknowledged],
                    limit: 100_000,
                    ..Default::default()
                })
            })
            .await??;
            // Sensors that had alerts before are published too (now calm).
            let mut sensors: BTreeSet<(SensorKind, String)> = states.keys().cloned().collect();
            states.clear();
            for a in &open {
                sensors.insert(apply(&mut states, a));
            }
            for key in &sensors {
                publish_state(&router, &states, key).await?;
            }
            all = false;
        }
        // Every sensor whose alerts changed since the last pass, each
        // published once (a storm of changes is one state per sensor).
        let mut changed: BTreeSet<(SensorKind, String)> = BTreeSet::new();
        match rx.recv().await {
            Ok(rec) => {
                changed.insert(apply(&mut states, &rec.alert));
            }
            Err(RecvError::Lagged(_)) => all = true,
            Err(RecvError::Closed) => return Ok(()),
        }
        loop {
            match rx.try_recv() {
                Ok(rec) => {
                    changed.insert(apply(&mut states, &rec.alert));
                }
                Err(TryRecvError::Lagged(_)) => all = true,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return Ok(()),
            }
        }
        if !all {
            for key in &changed {
                publish_state(&router, &states, key).await?;
            }
        }
    }
}
