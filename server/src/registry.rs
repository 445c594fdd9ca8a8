//! The registry in effect: the registry file's sensors, overlaid by the
//! sensors registered or changed over the admin API (kept in `state.db`,
//! so they survive restarts; a record there replaces the file's sensor of
//! that id).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pantau_model::{Registry, Sensor, SharedRegistry};
use pantau_state::StateDb;

/// Builds the shared registry from the file's and the stored sensors.
pub fn effective(mut file: Registry, state: &StateDb) -> anyhow::Result<SharedRegistry> {
    let stored = state.sensors()?;
    let n = stored.len();
    for spec in stored {
        let id = spec.id.clone();
        let sensor = Sensor::from_spec(spec)
            .with_context(|| format!("sensor {id:?} stored in state.db (set over the API)"))?;
        file.upsert(sensor);
    }
    if n > 0 {
        tracing::info!(
            sensors = n,
            "Sensors registered or changed over the API overlay the registry file."
        );
    }
    Ok(SharedRegistry::new(file))
}

/// Opens the platform state (`--state`, or `state.db` in `data_dir`) off
/// the async worker threads (the PostgreSQL client blocks).
pub async fn open_state(
    state: &crate::cli::StateArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<StateDb>> {
    let (state, dir) = (state.clone(), data_dir.to_owned());
    let db = tokio::task::spawn_blocking(move || state.open(&dir)).await??;
    tracing::info!(state = %db.place(), "Platform state opened.");
    Ok(Arc::new(db))
}

/// How often a process on shared state looks for sensors registered or
/// changed through another process.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Fewest time between two looks prompted by readings of unknown sensors
/// (a gateway sending only unregistered sensors costs at most this many
/// queries).
const MISS_LOOK_EVERY: Duration = Duration::from_millis(100);

/// The registry of a process on shared state (PostgreSQL): the file's
/// sensors overlaid by the stored ones, kept in step with sensors
/// registered or changed through any other process by comparing the
/// stored sensors' revision — every [`FOLLOW_EVERY`], and before a reading
/// is refused as naming an unknown sensor.
#[derive(Debug)]
pub struct SharedSensors {
    file: Registry,
    registry: Arc<SharedRegistry>,
    state: Arc<StateDb>,
    /// The revision in effect and when it was last looked at.
    seen: tokio::sync::Mutex<(Option<i64>, Option<Instant>)>,
}

impl SharedSensors {
    /// Follows `state` into `registry` (built from `file` and `state`).
    pub fn new(file: Registry, registry: Arc<SharedRegistry>, state: Arc<StateDb>) -> Self {
        Self {
            file,
            registry,
            state,
            seen: tokio::sync::Mutex::new((None, None)),
        }
    }

    /// Looks at the stored revision (unless a look ended less than
    /// `unless_within` ago) and reloads the stored sensors when it moved.
    async fn sync(&self, unless_within: Duration) -> anyhow::Result<()> {
        let mut seen = self.seen.lock().await;
        if seen.1.is_some_and(|at| at.elapsed() < unless_within) {
            return Ok(());
        }
        let s = self.state.clone();
        let revision = tokio::task::spawn_blocking(move || s.sensors_revision()).await??;
        if revision != seen.0 {
            let (s, file, registry) =
                (self.state.clone(), self.file.clone(), self.registry.clone());
            tokio::task::spawn_blocking(move || {
                let stored = s.sensors()?;
                registry.edit(|_| {
                    let mut next = file;
                    for spec in stored {
                        let id = spec.id.clone();
                        let sensor = Sensor::from_spec(spec)
                            .with_context(|| format!("sensor {id:?} in the shared state"))?;
                        next.upsert(sensor);
                    }
                    Ok::<_, anyhow::Error>((next, ()))
                })
            })
            .await??;
            if seen.0.is_some() {
                tracing::info!("Sensors changed through another process are in effect.");
            }
            seen.0 = revision;
        }
        seen.1 = Some(Instant::now());
        Ok(())
    }

    /// On shared state, starts following it and makes `ingestor` consult
    /// it before refusing a reading of an unknown sensor. On `state.db`
    /// it does nothing (only this process changes it).
    pub fn follow(
        sup: &crate::shutdown::Supervisor,
        stage: crate::shutdown::StageId,
        file: Registry,
        ingestor: &pantau_ingest::Ingestor,
        state: &Arc<StateDb>,
    ) {
        if !state.is_shared() {
            return;
        }
        let me = Arc::new(Self::new(
            file,
            ingestor.shared_registry().clone(),
            state.clone(),
        ));
        ingestor.set_sensor_source(me.clone());
        sup.spawn_restarting(stage, "sensor-follower", None, move |stop| {
            let me = me.clone();
            async move {
                let mut failing = false;
                loop {
                    match me.sync(Duration::ZERO).await {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "Cannot read sensors from the shared state; keeping the registry as it is and retrying.");
                        }
                        Err(_) => {}
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                        _ = stop.cancelled() => return Ok::<(), anyhow::Error>(()),
                    }
                }
            }
        });
    }
}

impl pantau_ingest::pipeline::SensorSource for SharedSensors {
    fn refresh(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.sync(MISS_LOOK_EVERY).await {
                tracing::warn!(error = %e, "Cannot look for newly registered sensors in the shared state.");
            }
        })
    }
}
