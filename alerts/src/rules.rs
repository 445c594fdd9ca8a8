//! Alert rules as configured — in the config or registry file, or through
//! the admin API — and checked into [`Rule`]s the trackers evaluate.
//!
//! A threshold rule names a sensor kind (optionally some sensors of it), a
//! numeric field and its levels, least severe first:
//!
//! ```toml
//! [[alert_rule]]
//! id = "crane-wind"
//! name = "Wind gust above the crane limit"
//! kind = "metocean"
//! field = "wind_gust_ms"
//! above = [15.0, 20.0]      # or below = [...]
//! deadband = 1.0            # hysteresis, the field's unit (default 0)
//! for = "2m"                # before raising (default 0: at once)
//! clear_for = "10m"         # before clearing (default 0)
//! cooldown = "30m"          # re-raised within this: reopened (default 15m)
//! ```
//!
//! Every flood gauge with Siaga thresholds gets its Siaga rule without
//! configuration ([`siaga_rule`]): levels from the gauge's own thresholds,
//! raised at once, with the documented default deadband.
//!
//! Everything is checked before use, and an error names the field at fault,
//! so the admin API can answer 400 and leave what is configured alone.

use std::time::Duration;

use pantau_model::{FieldSpec, FieldType, Sensor, SensorId, SensorKind};
use serde::{Deserialize, Serialize};

use crate::ladder::{Direction, Ladder, RuleError};
use crate::tracker::Timing;

/// Hysteresis of the Siaga rules, in cm: a level is left 5 cm below its
/// threshold (gauges read to the centimetre and waves chop the surface).
pub const SIAGA_DEADBAND_CM: f64 = 5.0;
/// Cool-down of rules that set none: an alert re-raised within 15 minutes
/// of its resolution is the same alert, reopened.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(15 * 60);
/// Longest duration a rule may set (`for`, `clear_for`, `cooldown`).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A rule as written in a file or sent to the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique id: lowercase letters, digits and `-`.
    pub id: String,
    /// What an operator reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The kind of sensor it watches.
    pub kind: String,
    /// Only these sensors (default: every sensor of the kind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensors: Vec<String>,
    /// The numeric field it watches.
    pub field: String,
    /// Thresholds of an alert on high values, least severe first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<Vec<f64>>,
    /// Thresholds of an alert on low values, least severe first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<Vec<f64>>,
    /// Hysteresis in the field's unit (default 0).
    #[serde(default)]
    pub deadband: f64,
    /// Where the first level clears, instead of its threshold less the
    /// deadband.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// How long a higher level must hold before the alert moves up, e.g.
    /// `"2m"` (default: at once).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub raise_for: Option<String>,
    /// How long a lower level must hold before the alert moves down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_for: Option<String>,
    /// Re-raised within this long of resolving: the same alert, reopened
    /// (default 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
    /// Watch the field's change per hour over this window (e.g. `"30m"`)
    /// instead of its value: the thresholds are then in units per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_window: Option<String>,
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its id (`siaga` for the built-in flood rule).
    pub id: String,
    /// What an operator reads.
    pub name: String,
    /// The kind of sensor it watches.
    pub kind: SensorKind,
    /// Only these sensors (empty: every sensor of the kind).
    pub sensors: Vec<SensorId>,
    /// The field it reads: the first of these a reading has.
    pub fields: Vec<String>,
    /// Levels and hysteresis.
    pub ladder: Ladder,
    /// Durations.
    pub timing: Timing,
    /// Rate-of-change rules: the window, in milliseconds.
    pub rate_window_ms: Option<i64>,
}

impl Rule {
    /// Whether the rule watches `sensor`.
    pub fn applies_to(&self, sensor: &Sensor) -> bool {
        sensor.kind == self.kind && (self.sensors.is_empty() || self.sensors.contains(&sensor.id))
    }

    /// The value the rule reads from a reading's numeric fields.
    pub fn value(&self, get: impl Fn(&str) -> Option<f64>) -> Option<f64> {
        self.fields.iter().find_map(|f| get(f))
    }
}

fn duration(field: &'static str, v: &Option<String>, default: Duration) -> Result<i64, RuleError> {
    let d = match v {
        None => default,
        Some(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            RuleError::new(
                field,
                format!("{s:?} is not a duration such as \"90s\" or \"5m\": {e}"),
            )
        })?,
    };
    if d > MAX_DURATION {
        return Err(RuleError::new(field, "at most 7 days"));
    }
    Ok(d.as_millis() as i64)
}

impl RuleSpec {
    /// Checks the rule, naming the first field at fault.
    pub fn check(&self) -> Result<Rule, RuleError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(RuleError::new(
                "id",
                "1 to 64 lowercase letters, digits and '-'",
            ));
        }
        if self.id == SIAGA_RULE {
            return Err(RuleError::new(
                "id",
                "\"siaga\" is the built-in flood rule; choose another id",
            ));
        }
        let kind = SensorKind::parse(&self.kind).ok_or_else(|| {
            RuleError::new("kind", format!("{:?} is not a sensor kind", self.kind))
        })?;
        let spec = kind
            .field(&self.field)
            .or_else(|| derived_field(kind, &self.field))
            .ok_or_else(|| {
                RuleError::new("field", format!("{kind} has no field {:?}", self.field))
            })?;
        if spec.ty == FieldType::Bool {
            return Err(RuleError::new(
                "field",
                format!("{} is not a number", self.field),
            ));
        }
        let sensors = self
            .sensors
            .iter()
            .map(|s| {
                SensorId::new(s.clone())
                    .map_err(|e| RuleError::new("sensors", format!("{s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (direction, levels, field) = match (&self.above, &self.below) {
            (Some(l), None) => (Direction::Above, l.clone(), "above"),
            (None, Some(l)) => (Direction::Below, l.clone(), "below"),
            _ => {
                return Err(RuleError::new(
                    "above",
                    "give the thresholds as either `above` or `below`",
                ))
            }
        };
        let rate_window_ms = match &self.rate_window {
            None => None,
            Some(_) => match duration("rate_window", &self.rate_window, Duration::ZERO)? {
                0 => return Err(RuleError::new("rate_window", "must be longer than 0")),
                ms => Some(ms),
            },
        };
        let out_of_range = levels.iter().find(|v| **v < spec.min || **v > spec.max);
        if let (Some(v), None) = (out_of_range, rate_window_ms) {
            return Err(RuleError::new(
                field,
                format!(
                    "{v} is outside what {} can read ({} to {} {})",
                    self.field, spec.min, spec.max, spec.unit
                ),
            ));
        }
        let ladder = Ladder::new(direction, levels, self.deadband, self.clear).map_err(|e| {
            // The ladder calls its thresholds `levels`; here they are
            // `above` or `below`.
            if e.field == "levels" {
                RuleError::new(field, e.message)
            } else {
                e
            }
        })?;
        let timing = Timing::new(
            duration("for", &self.raise_for, Duration::ZERO)?,
            duration("clear_for", &self.clear_for, Duration::ZERO)?,
            duration("cooldown", &self.cooldown, DEFAULT_COOLDOWN)?,
        )?;
        Ok(Rule {
            id: self.id.clone(),
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("{} {field} {:?}", self.field, ladder_levels(&ladder))),
            kind,
            sensors,
            fields: vec![self.field.clone()],
            ladder,
            timing,
            rate_window_ms,
        })
    }
}

fn ladder_levels(l: &Ladder) -> Vec<f64> {
    (1..=l.len()).filter_map(|s| l.threshold(s)).collect()
}

/// Fields a rule may watch that readings do not carry, derived by the
/// engine: a traffic counter's level of service `los` (1 = A … 6 = F,
/// from its flow over capacity and mean speed, the bands of the public
/// view) and, from a gateway's status message, `spool_dropped` (readings
/// its full spool dropped, ever). A gateway's `spool_depth`, `battery_v`
/// and `clock_offset_ms` are read from its status as well.
pub const DERIVED: &[FieldSpec] = &[
    FieldSpec {
        name: "los",
        unit: "grade (1 = A … 6 = F)",
        ty: FieldType::Integer,
        min: 1.0,
        max: 6.0,
        restricted: false,
    },
    FieldSpec {
        name: "spool_dropped",
        unit: "readings",
        ty: FieldType::Integer,
        min: 0.0,
        max: 1e12,
        restricted: false,
    },
];

fn derived_field(kind: SensorKind, name: &str) -> Option<&'static FieldSpec> {
    let i = match (kind, name) {
        (SensorKind::TrafficCounter, "los") => 0,
        (SensorKind::GatewayHealth, "spool_dropped") => 1,
        _ => return None,
    };
    DERIVED.get(i)
}

/// The id of the built-in flood rule.
pub const SIAGA_RULE: &str = "siaga";

/// The Siaga rule of a flood gauge with thresholds (none otherwise): its
/// water level (or, for a street sensor, its inundation depth) against its
/// own Siaga 3 / 2 / 1 thresholds, raised and escalated at once, each level
/// left [`SIAGA_DEADBAND_CM`] below its threshold.
pub fn siaga_rule(sensor: &Sensor) -> Option<Rule> {
    if sensor.kind != SensorKind::FloodGauge {
        return None;
    }
    let t = sensor.thresholds?;
    let ladder = Ladder::siaga(&t, SIAGA_DEADBAND_CM).ok()?;
    Some(Rule {
        id: SIAGA_RULE.into(),
        name: "Flood Siaga level".into(),
        kind: SensorKind::FloodGauge,
        sensors: vec![sensor.id.clone()],
        fields: vec!["water_level_cm".into(), "inundation_depth_cm".into()],
        ladder,
        timing: Timing {
            raise_for_ms: 0,
            clear_for_ms: 0,
            cooldown_ms: DEFAULT_COOLDOWN.as_millis() as i64,
        },
        rate_window_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_like: serde_json::Value) -> RuleSpec {
        serde_json::from_value(toml_like).expect("a rule spec")
    }

    fn crane() -> serde_json::Value {
        serde_json::json!({
            "id": "crane-wind",
            "kind": "metocean",
            "field": "wind_gust_ms",
            "above": [15.0, 20.0],
            "deadband": 1.0,
            "for": "2m",
            "clear_for": "10m",
        })
    }

    #[test]
    fn a_threshold_rule_is_checked_into_its_ladder_and_timing() {
        let r = spec(crane()).check().expect("valid");
        assert_eq!(r.kind, SensorKind::Metocean);
        assert_eq!(r.fields, vec!["wind_gust_ms".to_string()]);
        assert_eq!(r.ladder.direction(), Direction::Above);
        assert_eq!(r.ladder.threshold(2), Some(20.0));
        assert_eq!(
            r.timing,
            Timing {
                raise_for_ms: 120_000,
                clear_for_ms: 600_000,
                cooldown_ms: 900_000
            }
        );
        assert_eq!(
            r.value(|f| (f == "wind_gust_ms").then_some(17.0)),
            Some(17.0)
        );
    }

    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        let field_of = |patch: serde_json::Value| {
            let mut v = crane();
            for (k, x) in patch.as_object().expect("object") {
                if x.is_null() {
                    v.as_object_mut().expect("object").remove(k);
                } else {
                    v[k] = x.clone();
                }
            }
            spec(v).check().expect_err("refused").field
        };
        assert_eq!(field_of(serde_json::json!({"id": "Crane Wind"})), "id");
        assert_eq!(field_of(serde_json::json!({"id": "siaga"})), "id");
        assert_eq!(field_of(serde_json::json!({"kind": "radar"})), "kind");
        assert_eq!(
            field_of(serde_json::json!({"field": "wind_gust_kmh"})),
            "field"
        );
        assert_eq!(
            field_of(serde_json::json!({"kind": "berth", "field": "occupied"})),
            "field"
        );
        assert_eq!(
            field_of(serde_json::json!({"above": [20.0, 15.0]})),
            "above"
        );
        assert_eq!(field_of(serde_json::json!({"above": null})), "above");
        assert_eq!(field_of(serde_json::json!({"below": [3.0]})), "above");
        assert_eq!(
            field_of(serde_json::json!({"above": [15.0, 500.0]})),
            "above"
        );
        // A clear level on the wrong side of the first threshold.
        assert_eq!(field_of(serde_json::json!({"clear": 16.0})), "clear");
        assert_eq!(field_of(serde_json::json!({"deadband": -1.0})), "deadband");
        // A negative or unreadable duration.
        assert_eq!(field_of(serde_json::json!({"for": "-5m"})), "for");
        assert_eq!(
            field_of(serde_json::json!({"clear_for": "soon"})),
            "clear_for"
        );
        assert_eq!(field_of(serde_json::json!({"cooldown": "30d"})), "cooldown");
        assert_eq!(
            field_of(serde_json::json!({"sensors": ["Not An Id"]})),
            "sensors"
        );
        assert_eq!(
            field_of(serde_json::json!({"rate_window": "0s"})),
            "rate_window"
        );
        assert_eq!(
            field_of(serde_json::json!({"rate_window": "later"})),
            "rate_window"
        );
        // Rates are per hour: not bound by the field's own range.
        let mut v = crane();
        v["rate_window"] = serde_json::json!("30m");
        v["above"] = serde_json::json!([500.0]);
        assert_eq!(
            spec(v).check().expect("valid").rate_window_ms,
            Some(1_800_000)
        );
        // An unknown key is a decoding error, not a silent default.
        let mut v = crane();
        v["treshold"] = serde_json::json!(3);
        assert!(serde_json::from_value::<RuleSpec>(v).is_err());
    }

    #[test]
    fn every_gauge_with_thresholds_gets_a_siaga_rule_from_its_own_thresholds() {
        let registry = crate::test_registry();
        let gauge = registry.get("fl-sungai-dumai").expect("listed");
        let rule = siaga_rule(gauge).expect("a Siaga rule");
        assert!(rule.applies_to(gauge));
        assert_eq!(
            (1..=3)
                .map(|s| rule.ladder.threshold(s))
                .collect::<Vec<_>>(),
            vec![Some(100.0), Some(200.0), Some(300.0)]
        );
        assert_eq!(rule.timing.raise_for_ms, 0, "Siaga warnings are immediate");
        // Street sensors report inundation depth instead.
        assert_eq!(
            rule.value(|f| (f == "inundation_depth_cm").then_some(12.0)),
            Some(12.0)
        );
        assert!(siaga_rule(registry.get("fl-no-thresholds").expect("listed")).is_none());
        let tide = registry.get("tg-dumai").expect("listed");
        assert!(siaga_rule(tide).is_none());
        assert!(!rule.applies_to(tide));
    }
}
