//! Sensor kinds, their fields, units and valid ranges (DESIGN.md §3).
//!
//! Field names carry their unit. Where a FIWARE Smart Data Model exists the
//! kind maps onto it: `flood_gauge` → `WaterObserved` / `FloodMonitoring`,
//! `tide_gauge` → `WaterObserved` (`height`), `traffic_counter` →
//! `TrafficFlowObserved` (`intensity`, `averageVehicleSpeed`, `occupancy`,
//! per `vehicleType`), `metocean` → `WeatherObserved` / `SeaConditions`,
//! `berth` → `ParkingSpot`-like occupancy (no port model exists).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The type of one field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A real number.
    Float,
    /// A whole number (JSON numbers with no fractional part).
    Integer,
    /// `true` / `false`.
    Bool,
}

/// One field of a sensor kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldSpec {
    /// Field name on the wire, unit included (`water_level_cm`).
    pub name: &'static str,
    /// Unit for display (`cm`, `m`, `veh`, `km/h`, ...).
    pub unit: &'static str,
    /// Value type.
    pub ty: FieldType,
    /// Smallest physically plausible value (inclusive).
    pub min: f64,
    /// Largest physically plausible value (inclusive).
    pub max: f64,
    /// Kept from the public view (identifiers such as a vessel's IMO
    /// number); agencies with the kind's read scope see it.
    pub restricted: bool,
}

const fn float(name: &'static str, unit: &'static str, min: f64, max: f64) -> FieldSpec {
    FieldSpec {
        name,
        unit,
        ty: FieldType::Float,
        min,
        max,
        restricted: false,
    }
}

const fn int(name: &'static str, unit: &'static str, min: f64, max: f64) -> FieldSpec {
    FieldSpec {
        name,
        unit,
        ty: FieldType::Integer,
        min,
        max,
        restricted: false,
    }
}

const fn boolean(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        unit: "",
        ty: FieldType::Bool,
        min: 0.0,
        max: 1.0,
        restricted: false,
    }
}

/// The same field, kept from the public view.
const fn restricted(f: FieldSpec) -> FieldSpec {
    FieldSpec {
        restricted: true,
        ..f
    }
}

const FLOOD: &[FieldSpec] = &[
    float("water_level_cm", "cm", -1_000.0, 10_000.0),
    float("distance_to_water_cm", "cm", 0.0, 10_000.0),
    float("rain_mm", "mm", 0.0, 500.0),
    float("inundation_depth_cm", "cm", 0.0, 500.0),
    float("flow_m3_s", "m³/s", 0.0, 100_000.0),
];
const TIDE: &[FieldSpec] = &[float("tide_height_m", "m", -10.0, 15.0)];
const TRAFFIC: &[FieldSpec] = &[
    int("count_total", "veh", 0.0, 100_000.0),
    int("count_mc", "veh", 0.0, 100_000.0),
    int("count_lv", "veh", 0.0, 100_000.0),
    int("count_hv", "veh", 0.0, 100_000.0),
    int("count_bus", "veh", 0.0, 100_000.0),
    float("mean_speed_kmh", "km/h", 0.0, 250.0),
    float("occupancy_ratio", "", 0.0, 1.0),
    int("window_s", "s", 1.0, 86_400.0),
];
const METOCEAN: &[FieldSpec] = &[
    float("wind_speed_ms", "m/s", 0.0, 100.0),
    float("wind_gust_ms", "m/s", 0.0, 150.0),
    float("wind_dir_deg", "°", 0.0, 360.0),
    float("hs_m", "m", 0.0, 30.0),
    float("wave_period_s", "s", 0.0, 60.0),
];
const BERTH: &[FieldSpec] = &[
    boolean("occupied"),
    int("vessels_waiting", "", 0.0, 1_000.0),
    // The IMO number of the vessel at the berth: port agencies only.
    restricted(int("vessel_imo", "", 1_000_000.0, 9_999_999.0)),
];
const HEALTH: &[FieldSpec] = &[
    float("battery_v", "V", 0.0, 60.0),
    float("rssi_dbm", "dBm", -150.0, 0.0),
    int("spool_depth", "", 0.0, 1e12),
    float("clock_offset_ms", "ms", -1e9, 1e9),
];

/// A kind of sensor, which fixes the fields it may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    /// River gauge or street inundation sensor.
    FloodGauge,
    /// Tide gauge (height above chart datum).
    TideGauge,
    /// Traffic counter, per lane or direction.
    TrafficCounter,
    /// Wind and waves.
    Metocean,
    /// A berth in the port.
    Berth,
    /// The gateway's own health (battery, signal, spool).
    GatewayHealth,
}

impl SensorKind {
    /// Every kind.
    pub const ALL: [SensorKind; 6] = [
        SensorKind::FloodGauge,
        SensorKind::TideGauge,
        SensorKind::TrafficCounter,
        SensorKind::Metocean,
        SensorKind::Berth,
        SensorKind::GatewayHealth,
    ];

    /// The wire name (`flood_gauge`).
    pub fn as_str(self) -> &'static str {
        match self {
            SensorKind::FloodGauge => "flood_gauge",
            SensorKind::TideGauge => "tide_gauge",
            SensorKind::TrafficCounter => "traffic_counter",
            SensorKind::Metocean => "metocean",
            SensorKind::Berth => "berth",
            SensorKind::GatewayHealth => "gateway_health",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The most fields any kind has: no reading may carry more values
    /// (the envelope parser stops there, so a hostile reading with tens of
    /// thousands of keys costs nothing more than one with a few).
    pub fn max_fields() -> usize {
        Self::ALL
            .iter()
            .map(|k| k.fields().len())
            .max()
            .unwrap_or(0)
    }

    /// The fields this kind may report.
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            SensorKind::FloodGauge => FLOOD,
            SensorKind::TideGauge => TIDE,
            SensorKind::TrafficCounter => TRAFFIC,
            SensorKind::Metocean => METOCEAN,
            SensorKind::Berth => BERTH,
            SensorKind::GatewayHealth => HEALTH,
        }
    }

    /// The spec of one field, if this kind has it.
    pub fn field(self, name: &str) -> Option<&'static FieldSpec> {
        self.fields().iter().find(|f| f.name == name)
    }
}

impl fmt::Display for SensorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in SensorKind::ALL {
            assert_eq!(SensorKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(SensorKind::parse("volcano"), None);
    }

    #[test]
    fn ranges_are_sane() {
        for k in SensorKind::ALL {
            for f in k.fields() {
                assert!(f.min < f.max, "{}.{}", k, f.name);
            }
        }
    }
}
