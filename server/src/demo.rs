//! The demo: one simulated gateway per registry gateway, each a full edge
//! agent (simulated sources, disk spool under `DATA_DIR/demo-spool/`, TLS
//! uplink), just as a field gateway would run it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pantau_edge_agent::{Agent, Endpoint, Model, SimSensor, SourceSpec, UplinkConfig};
use pantau_model::{Registry, Sensor, SensorKind};
use pantau_state::StateDb;

use crate::shutdown::{StageId, Supervisor};

/// The simulator model for a registry sensor.
pub fn model_for(s: &Sensor) -> Model {
    match s.kind {
        // Street inundation sensors report depth; river gauges report level.
        SensorKind::FloodGauge if s.id.as_str().starts_with("in-") => Model::Street {
            rob_from_m: 2.45 + (s.lat * 1000.0).rem_euclid(3.0) / 10.0,
        },
        SensorKind::FloodGauge => {
            let siaga3 = s.thresholds.map_or(150.0, |t| t.siaga3);
            Model::River {
                base_cm: siaga3 * 0.55,
                gain: siaga3 * 0.03,
                backwater: if s.id.as_str().contains("hilir") {
                    25.0
                } else {
                    5.0
                },
            }
        }
        SensorKind::TideGauge => Model::Tide { mean_m: 1.7 },
        SensorKind::TrafficCounter => Model::Traffic {
            capacity_pcu_h: s.capacity_pcu_h.unwrap_or(2000.0),
            heavy_share: if s.owner == "ksop" { 0.6 } else { 0.06 },
            window_s: 300,
        },
        SensorKind::Metocean => Model::Metocean,
        SensorKind::Berth | SensorKind::GatewayHealth => Model::Berth,
    }
}

/// Starts a simulated gateway for every gateway of the registry, each a
/// supervised task of `stage` (restarted with backoff if it stops). Their
/// tokens are rotated at each start (the demo holds them only in memory).
#[allow(clippy::too_many_arguments)]
pub fn start(
    registry: &Registry,
    state: &StateDb,
    data_dir: &Path,
    mqtt: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    interval: Duration,
    sup: &Supervisor,
    stage: StageId,
) -> anyhow::Result<usize> {
    let host = if mqtt.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        mqtt.ip().to_string()
    };
    let gateways = registry.gateways();
    for gw in &gateways {
        let token = state.rotate_gateway_token(gw)?;
        let sensors: Vec<SimSensor> = registry
            .sensors()
            .filter(|s| &s.gateway == gw)
            .map(|s| SimSensor::new(s.id.to_string(), model_for(s)))
            .collect();
        let agent = Agent {
            uplink: UplinkConfig {
                gateway: gw.to_string(),
                endpoints: vec![Endpoint {
                    host: host.clone(),
                    port: mqtt.port(),
                    tls: Some(tls.clone()),
                }],
                password: Some(token),
                keep_alive: Duration::from_secs(30),
                max_readings: 500,
                max_bytes: 128 * 1024,
                max_delay: Duration::from_millis(200),
                max_in_flight: 16,
                replay_rate: NonZeroU32::new(50_000).expect("non-zero"),
                status_interval: Duration::from_secs(60),
            },
            spool_dir: data_dir.join("demo-spool").join(gw.as_str()),
            spool_max_bytes: 16 * 1024 * 1024,
            spool_sync: pantau_edge_agent::spool::Sync::Normal,
            sources: vec![SourceSpec::Simulated { interval, sensors }],
        };
        sup.spawn_restarting(stage, format!("demo gateway {gw}"), None, move |stop| {
            let agent = agent.clone();
            async move { agent.run(stop).await }
        });
    }
    Ok(gateways.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantau_model::Timestamp;

    #[test]
    fn the_demo_registry_is_complete_and_simulates_valid_readings() {
        let r = Registry::parse(crate::DEMO_REGISTRY).unwrap();
        assert_eq!(r.len(), 21);
        assert_eq!(r.sensors().filter(|s| !s.public).count(), 3);
        assert!(r.gateways().len() >= 5);
        let now = Timestamp::now();
        for s in r.sensors() {
            let v = SimSensor::new(s.id.to_string(), model_for(s)).values(now);
            for (field, value) in v {
                let spec = s.kind.field(&field).unwrap();
                let x = value.as_f64();
                assert!(x >= spec.min && x <= spec.max, "{}.{field} = {x}", s.id);
            }
        }
    }
}
