//! The registry in effect: the registry file's sensors, overlaid by the
//! sensors registered or changed over the admin API (kept in `state.db`,
//! so they survive restarts; a record there replaces the file's sensor of
//! that id).

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
