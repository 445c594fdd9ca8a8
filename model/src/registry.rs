//! The sensor registry: every site, its kind, the gateway it is wired to,
//! where it is, which agency owns it, whether the public may see it, and
//! its thresholds. Loaded from a TOML file of `[[sensor]]` tables:
//!
//! ```toml
//! [[sensor]]
//! id = "fl-test-01"
//! kind = "flood_gauge"
//! gateway = "gw-test"
//! name = "Test gauge"
//! district = "Dumai Kota"
//! lat = 1.6731
//! lon = 101.4498
//! owner = "pupr"
//! public = true
//! thresholds = { siaga3 = 150, siaga2 = 200, siaga1 = 250 }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::id::{check_id, GatewayId, SensorId};
use crate::kind::SensorKind;
use crate::validate::SensorLookup;

/// Flood thresholds of one gauge, in cm (water level for river gauges,
/// inundation depth for street sensors). Siaga 3 < Siaga 2 < Siaga 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Alert (*Waspada*) from this value.
    pub siaga3: f64,
    /// Standby (*Siaga*) from this value.
    pub siaga2: f64,
    /// Evacuate (*Awas*) from this value.
    pub siaga1: f64,
}

/// One registered sensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sensor {
    /// Unique sensor id.
    pub id: SensorId,
    /// What it measures.
    pub kind: SensorKind,
    /// The only gateway allowed to report it.
    pub gateway: GatewayId,
    /// Display name.
    pub name: String,
    /// Kecamatan (district).
    pub district: String,
    /// Latitude, WGS 84.
    pub lat: f64,
    /// Longitude, WGS 84.
    pub lon: f64,
    /// Owning agency (`pupr`, `bpbd`, `dishub`, `ksop`, ...).
    pub owner: String,
    /// Whether the public view may show it.
    pub public: bool,
    /// Flood thresholds (flood gauges only).
    pub thresholds: Option<Thresholds>,
    /// Road capacity in passenger-car units per hour (traffic counters).
    pub capacity_pcu_h: Option<f64>,
}

/// Why a registry could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("cannot read registry {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the registry's shape.
    #[error("registry {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A sensor entry breaks a rule.
    #[error("registry: sensor {sensor:?}, field {field}: {message}")]
    Invalid {
        /// The sensor's id as written.
        sensor: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRegistry {
    #[serde(default)]
    sensor: Vec<SensorSpec>,
}

/// A sensor as written in the registry file or sent to the admin API,
/// before validation ([`Sensor::from_spec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorSpec {
    /// Unique sensor id (`a-z`, `0-9`, `-`).
    pub id: String,
    /// `flood_gauge`, `tide_gauge`, `traffic_counter`, `metocean` or `berth`.
    pub kind: String,
    /// The only gateway allowed to report it.
    pub gateway: String,
    /// Display name.
    pub name: String,
    /// Kecamatan (district).
    #[serde(default)]
    pub district: String,
    /// Latitude, WGS 84.
    pub lat: f64,
    /// Longitude, WGS 84.
    pub lon: f64,
    /// Owning agency.
    #[serde(default)]
    pub owner: String,
    /// Whether the public view may show it.
    #[serde(default)]
    pub public: bool,
    /// Flood thresholds (flood gauges only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    /// Road capacity in PCU per hour (traffic counters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_pcu_h: Option<f64>,
}

impl Sensor {
    /// Validates a spec; the error names the field.
    pub fn from_spec(spec: SensorSpec) -> Result<Self, RegistryError> {
        validate_sensor(spec)
    }

    /// The spec this sensor was made from.
    pub fn spec(&self) -> SensorSpec {
        SensorSpec {
            id: self.id.to_string(),
            kind: self.kind.as_str().to_owned(),
            gateway: self.gateway.to_string(),
            name: self.name.clone(),
            district: self.district.clone(),
            lat: self.lat,
            lon: self.lon,
            owner: self.owner.clone(),
            public: self.public,
            thresholds: self.thresholds,
            capacity_pcu_h: self.capacity_pcu_h,
        }
    }
}

/// All registered sensors, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    sensors: BTreeMap<String, Sensor>,
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads and validates a registry file.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            RegistryError::Parse { message, .. } => RegistryError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates registry TOML.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let wire: WireRegistry = toml::from_str(text).map_err(|e| RegistryError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let mut sensors = BTreeMap::new();
        for w in wire.sensor {
            let s = validate_sensor(w)?;
            if sensors.contains_key(s.id.as_str()) {
                return Err(RegistryError::Invalid {
                    sensor: s.id.to_string(),
                    field: "id",
                    message: "duplicate sensor id".into(),
                });
            }
            sensors.insert(s.id.to_string(), s);
        }
        Ok(Self { sensors })
    }

    /// Builds a registry from sensors already validated.
    pub fn from_sensors(list: impl IntoIterator<Item = Sensor>) -> Self {
        Self {
            sensors: list.into_iter().map(|s| (s.id.to_string(), s)).collect(),
        }
    }

    /// One sensor.
    pub fn get(&self, id: &str) -> Option<&Sensor> {
        self.sensors.get(id)
    }

    /// Every sensor, ordered by id.
    pub fn sensors(&self) -> impl Iterator<Item = &Sensor> {
        self.sensors.values()
    }

    /// Number of sensors.
    pub fn len(&self) -> usize {
        self.sensors.len()
    }

    /// Whether there are no sensors.
    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }

    /// Adds a sensor, or replaces the one with its id.
    pub fn upsert(&mut self, sensor: Sensor) {
        self.sensors.insert(sensor.id.to_string(), sensor);
    }

    /// The gateways that have at least one sensor.
    pub fn gateways(&self) -> BTreeSet<GatewayId> {
        self.sensors.values().map(|s| s.gateway.clone()).collect()
    }
}

/// The registry in use, replaceable while the platform runs (sensors
/// registered and thresholds set over the admin API). Readers take a
/// snapshot (`Arc`) and never wait for an edit in progress; edits are
/// serialised and each bumps [`SharedRegistry::version`], which caches key
/// on.
#[derive(Debug)]
pub struct SharedRegistry {
    current: RwLock<Arc<Registry>>,
    version: AtomicU64,
    edits: Mutex<()>,
}

impl SharedRegistry {
    /// Starts with `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            current: RwLock::new(Arc::new(registry)),
            version: AtomicU64::new(0),
            edits: Mutex::new(()),
        }
    }

    /// The registry now.
    pub fn get(&self) -> Arc<Registry> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Edits the registry: `edit` gets the current one and returns the next
    /// (or an error, leaving it unchanged). Edits run one at a time, so
    /// `edit` may also persist the change (blocking) before it takes
    /// effect; readers keep the old snapshot meanwhile.
    pub fn edit<T, E>(
        &self,
        edit: impl FnOnce(&Registry) -> Result<(Registry, T), E>,
    ) -> Result<T, E> {
        let _one_at_a_time = self.edits.lock().unwrap_or_else(|p| p.into_inner());
        let (next, out) = edit(&self.get())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(out)
    }
}

impl SensorLookup for Registry {
    fn lookup(&self, sensor: &str) -> Option<(SensorKind, &str)> {
        self.sensors
            .get(sensor)
            .map(|s| (s.kind, s.gateway.as_str()))
    }
}

fn validate_sensor(w: SensorSpec) -> Result<Sensor, RegistryError> {
    let invalid = |field: &'static str, message: String| RegistryError::Invalid {
        sensor: w.id.clone(),
        field,
        message,
    };
    check_id(&w.id).map_err(|e| invalid("id", e.to_string()))?;
    let kind = SensorKind::parse(&w.kind).ok_or_else(|| {
        invalid(
            "kind",
            format!(
                "unknown kind {:?}; expected one of flood_gauge, tide_gauge, traffic_counter, metocean, berth",
                w.kind
            ),
        )
    })?;
    if kind == SensorKind::GatewayHealth {
        return Err(invalid(
            "kind",
            "gateway_health is reported by gateways, not registered".into(),
        ));
    }
    let gateway =
        GatewayId::new(w.gateway.clone()).map_err(|e| invalid("gateway", e.to_string()))?;
    if w.name.trim().is_empty() {
        return Err(invalid("name", "must not be empty".into()));
    }
    // The district becomes an InfluxDB tag: line protocol cannot carry
    // control characters or a trailing backslash.
    if w.district.chars().any(char::is_control)
        || w.district.ends_with('\\')
        || w.district.len() > 100
    {
        return Err(invalid(
            "district",
            "must be at most 100 characters, without control characters or a trailing backslash"
                .into(),
        ));
    }
    if !(w.lat.is_finite() && (-90.0..=90.0).contains(&w.lat)) {
        return Err(invalid(
            "lat",
            format!("{} is not a latitude in -90..=90", w.lat),
        ));
    }
    if !(w.lon.is_finite() && (-180.0..=180.0).contains(&w.lon)) {
        return Err(invalid(
            "lon",
            format!("{} is not a longitude in -180..=180", w.lon),
        ));
    }
    if let Some(t) = &w.thresholds {
        if kind != SensorKind::FloodGauge {
            return Err(invalid(
                "thresholds",
                "only flood gauges have Siaga thresholds".into(),
            ));
        }
        let finite = [t.siaga3, t.siaga2, t.siaga1].iter().all(|v| v.is_finite());
        if !(finite && t.siaga3 < t.siaga2 && t.siaga2 < t.siaga1) {
            return Err(invalid(
                "thresholds",
                format!(
                    "must rise from siaga3 to siaga1 (siaga3 < siaga2 < siaga1), got {} / {} / {}",
                    t.siaga3, t.siaga2, t.siaga1
                ),
            ));
        }
    }
    if let Some(c) = w.capacity_pcu_h {
        if kind != SensorKind::TrafficCounter {
            return Err(invalid(
                "capacity_pcu_h",
                "only traffic counters have a capacity".into(),
            ));
        }
        if !(c.is_finite() && c > 0.0) {
            return Err(invalid(
                "capacity_pcu_h",
                format!("{c} is not a positive capacity"),
            ));
        }
    }
    Ok(Sensor {
        id: SensorId::new(w.id.clone()).map_err(|e| invalid("id", e.to_string()))?,
        kind,
        gateway,
        name: w.name,
        district: w.district,
        lat: w.lat,
        lon: w.lon,
        owner: w.owner,
        public: w.public,
        thresholds: w.thresholds,
        capacity_pcu_h: w.capacity_pcu_h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[sensor]]
id = "fl-test-01"
kind = "flood_gauge"
gateway = "gw-test"
name = "Test gauge"
district = "Dumai Kota"
lat = 1.6731
lon = 101.4498
owner = "pupr"
public = true
thresholds = { siaga3 = 150, siaga2 = 200, siaga1 = 250 }
"#;

    #[test]
    fn loads_the_minimal_file() {
        let r = Registry::parse(MINIMAL).unwrap();
        let s = r.get("fl-test-01").unwrap();
        assert_eq!(s.kind, SensorKind::FloodGauge);
        assert_eq!(s.gateway.as_str(), "gw-test");
        assert_eq!(s.thresholds.unwrap().siaga2, 200.0);
        assert_eq!(
            r.lookup("fl-test-01"),
            Some((SensorKind::FloodGauge, "gw-test"))
        );
    }

    fn err(text: &str) -> String {
        Registry::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn names_sensor_and_field_on_error() {
        let e = err(&MINIMAL.replace("flood_gauge", "volcano"));
        assert!(e.contains("fl-test-01") && e.contains("kind"), "{e}");
        let e = err(&MINIMAL.replace("lat = 1.6731", "lat = 91.0"));
        assert!(e.contains("fl-test-01") && e.contains("lat"), "{e}");
        let e = err(&MINIMAL.replace("lon = 101.4498", "lon = -181.0"));
        assert!(e.contains("lon"), "{e}");
        let e = err(&MINIMAL.replace("siaga3 = 150", "siaga3 = 220"));
        assert!(e.contains("fl-test-01") && e.contains("thresholds"), "{e}");
        let e = err(&format!("{MINIMAL}{MINIMAL}"));
        assert!(e.contains("duplicate") && e.contains("fl-test-01"), "{e}");
        let e = err(&MINIMAL.replace("Dumai Kota", "Dumai\\\\"));
        assert!(e.contains("district"), "{e}");
        let e = err(&MINIMAL.replace("gw-test", "GW TEST"));
        assert!(e.contains("gateway"), "{e}");
        let e = err(&MINIMAL.replace("public = true", "public = true\ncolour = 1"));
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn a_spec_round_trips_and_edits_bump_the_version() {
        let r = Registry::parse(MINIMAL).unwrap();
        let s = r.get("fl-test-01").unwrap().clone();
        assert_eq!(Sensor::from_spec(s.spec()).unwrap(), s);
        let shared = SharedRegistry::new(r);
        let before = shared.get();
        let mut moved = s.spec();
        moved.id = "fl-test-02".into();
        shared
            .edit(|cur| {
                let mut next = cur.clone();
                next.upsert(Sensor::from_spec(moved)?);
                Ok::<_, RegistryError>((next, ()))
            })
            .unwrap();
        assert_eq!(
            (before.len(), shared.get().len(), shared.version()),
            (1, 2, 1)
        );
        // A failed edit changes nothing.
        let failed: Result<(), &str> = shared.edit(|_| Err("no"));
        assert!(failed.is_err());
        assert_eq!((shared.get().len(), shared.version()), (2, 1));
    }

    #[test]
    fn empty_file_is_an_empty_registry() {
        assert!(Registry::parse("").unwrap().is_empty());
    }
}
