//! The rules of a registry and their trackers, one per (rule, sensor):
//! what a committed reading changes, and what pending waits complete.
//!
//! The evaluator is pure and single-owner: the caller feeds it each
//! sensor's readings in observation order after they are committed, keeps
//! its trackers ([`Evaluator::trackers`]) in the platform state with the
//! changes, and restores them at start ([`Evaluator::restore`]).

use std::collections::{BTreeMap, HashMap};

/// A fast hasher for the maps a reading looks into (their keys are ids,
/// not attacker-chosen beyond what the registry admits).
pub(crate) type FastHash = foldhash::fast::RandomState;

use pantau_model::{Registry, Sensor, SensorKind, Timestamp};

use crate::rate::RateWindow;
use crate::rules::{siaga_rule, Rule};
use crate::tracker::{Change, Tracker};

/// A tracker's key: the rule's id and the sensor's.
pub type Key = (String, String);

/// The state of one (rule, sensor), kept with the alert state.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Its alert's tracker.
    pub tracker: Tracker,
    /// The samples of a rate-of-change rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateWindow>,
    /// The watch of a silence rule (sensor silent, gateway offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<crate::Watch>,
    /// What of it is on disk (kept by the caller; not itself stored).
    #[serde(skip)]
    pub saved: Option<Material>,
}

/// The part of a [`State`] that must be on disk with the step that changed
/// it: the alert's level, its pending wait, its cool-down and whether a
/// silence is open. Not the last observation times and rate samples, which
/// change with every reading and may be written a few seconds later (a
/// crash loses at most those seconds of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Material {
    tracker: crate::tracker::TrackerMaterial,
    silent: Option<bool>,
}

impl State {
    /// Its [`Material`] part.
    pub fn material(&self) -> Material {
        Material {
            tracker: self.tracker.material(),
            silent: self.watch.map(|w| w.is_open()),
        }
    }
}

/// Every (rule, sensor) state, grouped by sensor (or gateway) so that a
/// reading finds its own without allocating.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trackers(HashMap<String, Vec<(String, State)>, FastHash>);

impl Trackers {
    /// The state of (`rule`, `sensor`).
    pub fn get(&self, rule: &str, sensor: &str) -> Option<&State> {
        self.0
            .get(sensor)?
            .iter()
            .find(|(r, _)| r == rule)
            .map(|(_, s)| s)
    }

    /// The state of (`rule`, `sensor`), made if there is none.
    pub fn entry(&mut self, rule: &str, sensor: &str) -> &mut State {
        if !self.0.contains_key(sensor) {
            self.0.insert(sensor.to_owned(), Vec::new());
        }
        let list = self.0.get_mut(sensor).expect("inserted above");
        let i = match list.iter().position(|(r, _)| r == rule) {
            Some(i) => i,
            None => {
                list.push((rule.to_owned(), State::default()));
                list.len() - 1
            }
        };
        &mut list[i].1
    }

    /// Puts a state in.
    pub fn insert(&mut self, (rule, sensor): Key, state: State) {
        *self.entry(&rule, &sensor) = state;
    }

    /// Every state, as ((rule, sensor), state).
    pub fn iter(&self) -> impl Iterator<Item = ((&str, &str), &State)> {
        self.0.iter().flat_map(|(sensor, list)| {
            list.iter()
                .map(move |(rule, s)| ((rule.as_str(), sensor.as_str()), s))
        })
    }

    /// The states of one sensor (or gateway), as (rule, state).
    pub fn of_mut(&mut self, sensor: &str) -> impl Iterator<Item = (&str, &mut State)> {
        self.0
            .get_mut(sensor)
            .into_iter()
            .flatten()
            .map(|(r, s)| (r.as_str(), s))
    }

    /// As an ordered map (comparisons in tests, listings).
    pub fn to_map(&self) -> BTreeMap<Key, State> {
        self.iter()
            .map(|((r, s), st)| ((r.to_owned(), s.to_owned()), st.clone()))
            .collect()
    }
}

/// A change of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The rule's id.
    pub rule: String,
    /// The sensor's id.
    pub sensor: String,
    /// What changed, at what observation time.
    pub change: Change,
}

/// What one reading did.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Alert changes, in rule order.
    pub fired: Vec<Fired>,
    /// Rules that refused the reading as older than one already evaluated
    /// (to be counted by the caller).
    pub stale: usize,
    /// How many of the sensor's states the reading changed (to be kept).
    pub touched: usize,
}

/// Rules by sensor kind and the trackers of (rule, sensor) pairs.
#[derive(Debug, Default)]
pub struct Evaluator {
    /// Configured rules, by the kind they watch.
    by_kind: Rules,
    /// Each gauge's Siaga rule, by sensor id.
    siaga: HashMap<String, Rule, FastHash>,
    trackers: Trackers,
}

impl Evaluator {
    /// The Siaga rule of every gauge of `registry` with thresholds, and
    /// `rules`.
    pub fn new(registry: &Registry, rules: Vec<Rule>) -> Self {
        let mut by_kind = Rules::default();
        for r in rules {
            if r.sensors.is_empty() {
                by_kind.every.entry(r.kind).or_default().push(r);
            } else {
                for s in &r.sensors {
                    by_kind
                        .named
                        .entry(s.to_string())
                        .or_default()
                        .push(r.clone());
                }
            }
        }
        let siaga = registry
            .sensors()
            .filter_map(|s| siaga_rule(s).map(|r| (s.id.to_string(), r)))
            .collect();
        Self {
            by_kind,
            siaga,
            trackers: Trackers::default(),
        }
    }

    /// Restores the states kept with the alert state.
    pub fn restore(&mut self, trackers: impl IntoIterator<Item = (Key, State)>) {
        for (k, s) in trackers {
            self.trackers.insert(k, s);
        }
    }

    /// The states, to be kept with the changes they produced.
    pub fn trackers(&self) -> &Trackers {
        &self.trackers
    }

    fn rules_for<'a, 'b>(
        &'a self,
        sensor: &'b Sensor,
    ) -> impl Iterator<Item = &'a Rule> + use<'a, 'b> {
        rules_for(&self.siaga, &self.by_kind, sensor)
    }

    /// Evaluates a committed reading of `sensor` observed `at`, whose
    /// numeric fields `get` returns.
    pub fn observe(
        &mut self,
        sensor: &Sensor,
        at: Timestamp,
        get: impl Fn(&str) -> Option<f64>,
    ) -> Outcome {
        let Self {
            by_kind,
            siaga,
            trackers,
        } = self;
        let mut out = Outcome::default();
        for rule in rules_for(siaga, by_kind, sensor) {
            let Some(value) = rule.value(&get) else {
                continue;
            };
            out.touched += 1;
            let state = trackers.entry(&rule.id, sensor.id.as_str());
            let value = match rule.rate_window_ms {
                None => Some(value),
                Some(window) => {
                    let rate = state.rate.get_or_insert_with(Default::default);
                    if rate.last_at().is_some_and(|last| at < last) {
                        out.stale += 1;
                        continue;
                    }
                    rate.push(at, value, window)
                }
            };
            let Some(value) = value else {
                // Not yet a trend to judge.
                continue;
            };
            match state.tracker.observe(&rule.ladder, &rule.timing, value, at) {
                Ok(Some(change)) => out.fired.push(Fired {
                    rule: rule.id.clone(),
                    sensor: sensor.id.to_string(),
                    change,
                }),
                Ok(None) => {}
                Err(_) => out.stale += 1,
            }
        }
        out
    }

    /// The earliest time a pending wait completes.
    pub fn next_due(&self, registry: &Registry) -> Option<Timestamp> {
        self.trackers
            .iter()
            .filter_map(|((rule, sensor), s)| {
                s.tracker.due(&self.rule(registry, rule, sensor)?.timing)
            })
            .min()
    }

    /// Completes every wait due by `now`.
    pub fn expire(&mut self, registry: &Registry, now: Timestamp) -> Vec<Fired> {
        let mut fired = Vec::new();
        let due: Vec<(Key, crate::Timing)> = self
            .trackers
            .iter()
            .filter_map(|((rule, sensor), s)| {
                let timing = self.rule(registry, rule, sensor)?.timing;
                s.tracker
                    .due(&timing)
                    .filter(|d| *d <= now)
                    .map(|_| ((rule.to_owned(), sensor.to_owned()), timing))
            })
            .collect();
        for ((rule, sensor), timing) in due {
            let s = self.trackers.entry(&rule, &sensor);
            if let Some(change) = s.tracker.expire(&timing, now) {
                fired.push(Fired {
                    rule,
                    sensor,
                    change,
                });
            }
        }
        fired.sort_by_key(|f| f.change.at());
        fired
    }

    /// Takes the states out (to rebuild the evaluator on new rules).
    pub fn into_trackers(self) -> Trackers {
        self.trackers
    }

    /// Mutable access to the states (silence watches live there too).
    pub fn trackers_mut(&mut self) -> &mut Trackers {
        &mut self.trackers
    }

    /// The rule `rule` as it applies to `sensor`.
    /// (A `sensor` that is not in the registry is a gateway: its
    /// gateway-health rules.)
    pub fn rule(&self, registry: &Registry, rule: &str, sensor: &str) -> Option<&Rule> {
        match registry.get(sensor) {
            Some(s) => self.rules_for(s).find(|r| r.id == rule),
            None => self
                .by_kind
                .named
                .get(sensor)
                .into_iter()
                .flatten()
                .chain(
                    self.by_kind
                        .every
                        .get(&SensorKind::GatewayHealth)
                        .into_iter()
                        .flatten(),
                )
                .find(|r| r.id == rule && r.kind == SensorKind::GatewayHealth),
        }
    }
}

/// Configured rules, indexed so that a reading looks only at its own:
/// those naming sensors by sensor, the others by kind.
#[derive(Debug, Default)]
struct Rules {
    /// Rules for every sensor of a kind.
    every: HashMap<SensorKind, Vec<Rule>, FastHash>,
    /// Rules naming sensors, under each sensor they name.
    named: HashMap<String, Vec<Rule>, FastHash>,
}

/// The rules that watch `sensor`: its Siaga rule, then the configured
/// rules that name it, then those of its whole kind.
fn rules_for<'a, 'b>(
    siaga: &'a HashMap<String, Rule, FastHash>,
    by_kind: &'a Rules,
    sensor: &'b Sensor,
) -> impl Iterator<Item = &'a Rule> + use<'a, 'b> {
    siaga
        .get(sensor.id.as_str())
        .into_iter()
        .chain(
            by_kind
                .named
                .get(sensor.id.as_str())
                .into_iter()
                .flatten()
                .filter(|r| r.kind == sensor.kind),
        )
        .chain(by_kind.every.get(&sensor.kind).into_iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSpec;

    use crate::at_minute as t;

    fn crane() -> Rule {
        serde_json::from_value::<RuleSpec>(serde_json::json!({
            "id": "crane-wind",
            "kind": "metocean",
            "field": "wind_gust_ms",
            "above": [15.0],
            "for": "2m",
        }))
        .expect("spec")
        .check()
        .expect("valid")
    }

    #[test]
    fn readings_raise_the_alerts_of_their_own_sensor_and_rule_only() {
        let registry = crate::test_registry();
        let mut ev = Evaluator::new(&registry, vec![crane()]);
        let gauge = registry.get("fl-sungai-dumai").expect("gauge");
        let port = registry.get("mo-pelabuhan").expect("station");
        let level = |v: f64| move |f: &str| (f == "water_level_cm").then_some(v);
        let gust = |v: f64| move |f: &str| (f == "wind_gust_ms").then_some(v);

        let out = ev.observe(gauge, t(0), level(250.0));
        assert_eq!(
            out.fired,
            vec![Fired {
                rule: "siaga".into(),
                sensor: "fl-sungai-dumai".into(),
                change: Change::Raised { level: 2, at: t(0) },
            }]
        );
        // The crane rule waits two minutes; the gauge is not affected.
        assert!(ev.observe(port, t(0), gust(18.0)).fired.is_empty());
        assert_eq!(ev.next_due(&registry), Some(t(2)));
        let fired = ev.expire(&registry, t(3));
        assert_eq!(
            fired,
            vec![Fired {
                rule: "crane-wind".into(),
                sensor: "mo-pelabuhan".into(),
                change: Change::Raised { level: 1, at: t(2) },
            }]
        );
        // A replayed older reading changes nothing and is counted.
        let out = ev.observe(gauge, t(-5), level(20.0));
        assert_eq!(out.fired, vec![]);
        assert_eq!(out.stale, 1);
        // The trackers restore into a new evaluator (a restart).
        let kept = ev.trackers().to_map();
        let mut again = Evaluator::new(&registry, vec![crane()]);
        again.restore(kept);
        let out = again.observe(gauge, t(4), level(20.0));
        assert_eq!(out.fired[0].change, Change::Resolved { from: 2, at: t(4) });
    }

    #[test]
    fn a_rate_of_rise_rule_raises_once_the_trend_is_known() {
        let registry = crate::test_registry();
        let rising = serde_json::from_value::<RuleSpec>(serde_json::json!({
            "id": "rising-fast",
            "kind": "flood_gauge",
            "field": "water_level_cm",
            "above": [30.0],
            "rate_window": "30m",
        }))
        .expect("spec")
        .check()
        .expect("valid");
        let mut ev = Evaluator::new(&registry, vec![rising]);
        let gauge = registry.get("fl-sungai-dumai").expect("gauge");
        // Below every Siaga threshold, rising 1 cm a minute (60 cm/h).
        let mut fired = Vec::new();
        for m in 0..=20 {
            let v = 20.0 + m as f64;
            fired.extend(
                ev.observe(gauge, t(m), move |f| (f == "water_level_cm").then_some(v))
                    .fired,
            );
        }
        assert_eq!(
            fired,
            vec![Fired {
                rule: "rising-fast".into(),
                sensor: "fl-sungai-dumai".into(),
                change: Change::Raised {
                    level: 1,
                    at: t(15)
                },
            }]
        );
        // Kept as rows of (rule, sensor, state), samples included, and
        // restored.
        let rows: Vec<((&str, &str), &State)> = ev.trackers().iter().collect();
        let kept = serde_json::to_string(&rows).expect("serializes");
        let kept: Vec<(Key, State)> = serde_json::from_str(&kept).expect("restores");
        let mut again = Evaluator::new(&registry, vec![]);
        again.restore(kept);
        assert_eq!(again.trackers().to_map(), ev.trackers().to_map());
        // A replayed older reading is counted, not averaged in.
        let out = ev.observe(gauge, t(3), |f| (f == "water_level_cm").then_some(0.0));
        assert_eq!(out.stale, 2, "the Siaga rule and the rate rule");
    }
}
