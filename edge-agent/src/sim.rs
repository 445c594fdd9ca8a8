//! Simulated sensors for the demo and for field tests without hardware.
//!
//! Every model is a pure function of time (and a per-sensor seed), so a
//! restart continues the same weather and no warm-up state is needed:
//! - tide: semi-diurnal (M2, 12.42 h) with an S2 spring-neap beat and a
//!   small diurnal term, around 1.7 m above chart datum;
//! - rain: afternoon convective showers on most days (start, length and
//!   intensity drawn per day), as is typical for Riau;
//! - rivers: rise after rain through a lagged response (peak ~2 h after the
//!   rain), with tidal backwater near the estuary;
//! - street inundation (*rob*): from recent heavy rain and from high tides;
//! - traffic: morning and evening peaks on the road's capacity, split into
//!   Indonesian vehicle classes, with speed and occupancy from v/c;
//! - metocean: an afternoon sea breeze driving wind and wind-sea;
//! - berths: vessel calls that fill and empty a berth over a day or so.

use pantau_model::{Timestamp, Value, Values};

/// Which physical model a simulated sensor follows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// A river gauge; `base_cm` is its normal level.
    River {
        /// Dry-weather level, cm.
        base_cm: f64,
        /// Rise per mm/h of effective rain, cm.
        gain: f64,
        /// Tidal backwater, cm per m of tide anomaly (estuary gauges).
        backwater: f64,
    },
    /// A street inundation sensor.
    Street {
        /// Tide height (m) above which this street floods from the sea.
        rob_from_m: f64,
    },
    /// A tide gauge.
    Tide {
        /// Mean level above chart datum, m.
        mean_m: f64,
    },
    /// A traffic counter on a road of this capacity.
    Traffic {
        /// Capacity, pcu/h.
        capacity_pcu_h: f64,
        /// Share of heavy vehicles (0.05 city road, 0.6 port gate).
        heavy_share: f64,
        /// Counting window, s.
        window_s: u32,
    },
    /// A weather and wave station.
    Metocean,
    /// A berth.
    Berth,
}

/// A simulated sensor.
#[derive(Debug, Clone)]
pub struct SimSensor {
    /// Sensor id.
    pub id: String,
    /// Its model.
    pub model: Model,
    /// Seed for its noise and phase.
    seed: u64,
}

impl SimSensor {
    /// A simulated sensor; the seed is derived from the id.
    pub fn new(id: impl Into<String>, model: Model) -> Self {
        let id = id.into();
        let seed = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Self { id, model, seed }
    }

    /// The sensor's values at `ts`.
    pub fn values(&self, ts: Timestamp) -> Values {
        let t = ts.millis() as f64 / 1000.0;
        let n = |k: u64| noise(self.seed ^ k, (t / 10.0) as u64);
        let mut v = Values::new();
        let mut put = |k: &str, x: f64| {
            v.insert(k.to_string(), Value::Num(x));
        };
        match self.model {
            Model::River {
                base_cm,
                gain,
                backwater,
            } => {
                let rain = rain_intensity(t);
                put(
                    "water_level_cm",
                    round1(
                        base_cm
                            + gain * river_response(t)
                            + backwater * (tide_m(t) - 1.7)
                            + 0.8 * n(1),
                    ),
                );
                put("rain_mm", round1(rain / 6.0)); // per 10-minute window
                put(
                    "flow_m3_s",
                    round1((4.0 + 1.6 * river_response(t)).max(0.0)),
                );
            }
            Model::Street { rob_from_m } => {
                let rain_part = 1.5 * (river_response(t) - 5.0).max(0.0);
                let rob_part = 40.0 * (tide_m(t) - rob_from_m).max(0.0);
                put(
                    "inundation_depth_cm",
                    round1((rain_part + rob_part + 0.3 * n(2)).clamp(0.0, 200.0)),
                );
                put("rain_mm", round1(rain_intensity(t) / 6.0));
            }
            Model::Tide { mean_m } => {
                put(
                    "tide_height_m",
                    round2(tide_m(t) - 1.7 + mean_m + 0.02 * n(3)),
                );
            }
            Model::Traffic {
                capacity_pcu_h,
                heavy_share,
                window_s,
            } => {
                let h = local_hour(t);
                let profile = 0.12
                    + 0.78 * (-((h - 7.25) / 1.1).powi(2)).exp()
                    + 0.40 * (-((h - 12.5) / 1.5).powi(2)).exp()
                    + 0.72 * (-((h - 17.0) / 1.4).powi(2)).exp();
                let flow = capacity_pcu_h * profile.min(1.05) * (1.0 + 0.06 * n(4));
                let vc = flow / capacity_pcu_h;
                let veh = (flow * f64::from(window_s) / 3600.0).max(0.0);
                let hv = (veh * heavy_share).round();
                let bus = (veh * 0.03).round();
                let lv = (veh * (1.0 - heavy_share) * 0.27).round();
                let mc = (veh - hv - bus - lv).max(0.0).round();
                put("count_total", mc + lv + hv + bus);
                put("count_mc", mc);
                put("count_lv", lv);
                put("count_hv", hv);
                put("count_bus", bus);
                put(
                    "mean_speed_kmh",
                    round1((52.0 * (1.0 - 0.65 * vc.powi(2))).max(5.0)),
                );
                put(
                    "occupancy_ratio",
                    round2((0.04 + 0.55 * vc.powi(2)).min(1.0)),
                );
                put("window_s", f64::from(window_s));
            }
            Model::Metocean => {
                let h = local_hour(t);
                let breeze = (-((h - 15.0) / 2.5).powi(2)).exp();
                let wind = (2.5 + 5.0 * breeze + 0.6 * n(5)).max(0.0);
                put("wind_speed_ms", round1(wind));
                put("wind_gust_ms", round1(wind * 1.45));
                put(
                    "wind_dir_deg",
                    round1((200.0 + 110.0 * breeze + 8.0 * n(6)).rem_euclid(360.0)),
                );
                put("hs_m", round2(0.25 + 0.07 * wind));
                put("wave_period_s", round1(2.5 + 0.45 * wind));
            }
            Model::Berth => {
                // A vessel call every ~30 h occupies the berth for ~20 h,
                // with a per-berth phase (from the seed's high bits: the
                // low bits of ids that differ in one letter are close).
                let hours = t / 3600.0 + ((self.seed >> 32) % 30) as f64;
                let occupied = hours.rem_euclid(30.0) < 20.0;
                v.insert("occupied".into(), Value::Bool(occupied));
                if occupied {
                    // The vessel of this call: an IMO-like number per call.
                    let call = ((hours / 30.0).floor() as u64).wrapping_mul(2_654_435_761);
                    let imo = 9_000_000 + (call ^ self.seed) % 999_999;
                    v.insert("vessel_imo".into(), Value::Num(imo as f64));
                }
                let day = (t / 86_400.0) as u64;
                let waiting = (noise(self.seed ^ 7, day) + 1.0) * 1.6;
                v.insert(
                    "vessels_waiting".into(),
                    Value::Num(waiting.floor().max(0.0)),
                );
            }
        }
        v
    }
}

/// Local time of day in Dumai (WIB, UTC+7), hours.
fn local_hour(t: f64) -> f64 {
    ((t + 7.0 * 3600.0) / 3600.0).rem_euclid(24.0)
}

/// Tide above chart datum, m.
pub fn tide_m(t: f64) -> f64 {
    use std::f64::consts::TAU;
    1.7 + 1.05 * (TAU * t / 44_712.0).cos()
        + 0.28 * (TAU * t / 43_200.0 + 0.6).cos()
        + 0.12 * (TAU * t / 86_164.0 + 1.3).cos()
}

/// Rain intensity, mm/h: an afternoon shower on about 60 % of days.
pub fn rain_intensity(t: f64) -> f64 {
    let local = t + 7.0 * 3600.0;
    let day = (local / 86_400.0).floor() as u64;
    let h = (local / 3600.0).rem_euclid(24.0);
    let r = |k: u64| (noise(0x5eed ^ k, day) + 1.0) / 2.0; // 0..1
    if r(1) > 0.6 {
        return 0.0;
    }
    let start = 13.5 + 2.5 * r(2);
    let len = 1.0 + 2.0 * r(3);
    let peak = 6.0 + 40.0 * r(4).powi(2);
    if h < start || h > start + len {
        return 0.0;
    }
    let x = (h - start) / len;
    peak * (std::f64::consts::PI * x).sin()
}

/// Lagged river response to the last 12 h of rain (a gamma-shaped unit
/// hydrograph peaking about 2 h after the rain), in mm/h-equivalents.
fn river_response(t: f64) -> f64 {
    let mut acc = 0.0;
    for j in 0..72 {
        let lag_h = j as f64 / 6.0;
        let kernel = lag_h * (-lag_h / 2.0).exp() / 2.0;
        acc += rain_intensity(t - lag_h * 3600.0) * kernel / 6.0;
    }
    acc * 4.0
}

/// Deterministic noise in -1..1 from a seed and a step.
fn noise(seed: u64, step: u64) -> f64 {
    let mut z = seed.wrapping_add(step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantau_model::SensorKind;

    const HOUR: i64 = 3_600_000;

    fn series(s: &SimSensor, field: &str, hours: i64) -> Vec<f64> {
        let t0 = Timestamp::parse_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .millis();
        (0..hours * 6)
            .map(|i| s.values(Timestamp(t0 + i * HOUR / 6))[field].as_f64())
            .collect()
    }

    #[test]
    fn tide_is_semi_diurnal() {
        let t0 = Timestamp::parse_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .millis() as f64
            / 1000.0;
        let v: Vec<f64> = (0..25 * 6).map(|i| tide_m(t0 + i as f64 * 600.0)).collect();
        // Count high waters: local maxima above the mean.
        let highs = v
            .windows(3)
            .filter(|w| w[1] > w[0] && w[1] >= w[2] && w[1] > 1.7)
            .count();
        assert_eq!(highs, 2, "two high tides a day");
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        assert!(hi - lo > 1.5 && hi - lo < 3.5, "range {}", hi - lo);
    }

    #[test]
    fn traffic_peaks_in_morning_and_evening() {
        let s = SimSensor::new(
            "tr-x",
            Model::Traffic {
                capacity_pcu_h: 2900.0,
                heavy_share: 0.05,
                window_s: 300,
            },
        );
        let v = series(&s, "count_total", 24);
        let at = |local_h: i64| v[(((local_h - 7 + 24) % 24) * 6) as usize];
        assert!(
            at(7) > 2.0 * at(3),
            "morning peak {} vs night {}",
            at(7),
            at(3)
        );
        assert!(at(17) > 2.0 * at(3), "evening peak");
    }

    #[test]
    fn the_demo_port_always_has_a_vessel_at_one_of_its_berths() {
        // The three berths of deploy/dumai-demo-registry.toml: their calls
        // are spread so the port is never empty (the public view shows a
        // vessel, and the API tests look for one, at any hour).
        let berths = ["br-dermaga-a", "br-dermaga-b", "br-dermaga-c"]
            .map(|id| SimSensor::new(id, Model::Berth));
        let t0 = Timestamp::parse_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .millis();
        for minute in 0..(60 * 24 * 7) {
            let t = Timestamp(t0 + minute * 60_000);
            let occupied = berths
                .iter()
                .filter(|b| b.values(t).get("occupied") == Some(&Value::Bool(true)))
                .count();
            assert!(occupied >= 1, "no vessel at {}", t.to_rfc3339());
        }
    }

    #[test]
    fn every_model_produces_valid_readings() {
        let models = [
            (
                SensorKind::FloodGauge,
                Model::River {
                    base_cm: 90.0,
                    gain: 3.0,
                    backwater: 20.0,
                },
            ),
            (SensorKind::FloodGauge, Model::Street { rob_from_m: 2.6 }),
            (SensorKind::TideGauge, Model::Tide { mean_m: 1.7 }),
            (
                SensorKind::TrafficCounter,
                Model::Traffic {
                    capacity_pcu_h: 3200.0,
                    heavy_share: 0.6,
                    window_s: 300,
                },
            ),
            (SensorKind::Metocean, Model::Metocean),
            (SensorKind::Berth, Model::Berth),
        ];
        let t0 = Timestamp::parse_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .millis();
        for (kind, m) in models {
            let s = SimSensor::new("x", m);
            for i in 0..(24 * 12 * 14) {
                for (field, value) in s.values(Timestamp(t0 + i * 300_000)) {
                    let spec = kind
                        .field(&field)
                        .unwrap_or_else(|| panic!("{kind}: {field}"));
                    let x = value.as_f64();
                    assert!(x >= spec.min && x <= spec.max, "{kind}.{field} = {x}");
                }
            }
        }
    }

    #[test]
    fn rivers_rise_after_rain() {
        let t0 = Timestamp::parse_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .millis() as f64
            / 1000.0;
        let rainy = (0..60)
            .map(|d| t0 + d as f64 * 86_400.0 + 9.0 * 3600.0)
            .find(|&noon_utc| (0..12).any(|h| rain_intensity(noon_utc + h as f64 * 3600.0) > 10.0))
            .expect("a rainy day in two months");
        let before = river_response(rainy);
        let after = (0..12)
            .map(|h| river_response(rainy + h as f64 * 3600.0))
            .fold(0.0, f64::max);
        assert!(after > before + 5.0, "{before} -> {after}");
    }
}
