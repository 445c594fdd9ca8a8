//! The alert engine: the single owner of the evaluator in a process. It
//! reads the ingest log after its own durable position (the log holds
//! entries for it until it has taken them, whatever the sink confirms),
//! evaluates each committed reading in log order — which is each sensor's
//! arrival order; a reading older than one already evaluated is counted
//! stale — and records the changes, the trackers, the outbox rows and its
//! new position in one transaction of the alert store. Waits that complete
//! on the clock (`for`, `clear_for`, silences) are checked by the same
//! loop, so no two tasks ever touch the trackers.
//!
//! A reading evaluated more than [`EngineConfig::late_after`] after its
//! observation time (a gateway's backlog replayed after an outage) makes
//! the history it would have made live, at its observation times, and its
//! events and notifications carry `late: true`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pantau_ingest::log::{IngestLog, LoggedReading};
use pantau_model::{Registry, Sensor, SharedRegistry, Timestamp, Value};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::evaluator::{Evaluator, Fired, Key, State};
use crate::metrics::AlertMetrics;
use crate::rules::{Rule, RuleSpec, SIAGA_RULE};
use crate::store::{AlertStore, ChangeRecord, Recorded, StoreError, Subject};
use crate::{Change, Watch};

/// The rule id of sensor-silence alerts.
pub const SILENCE_RULE: &str = "sensor-silent";
/// The rule id of gateway-offline alerts.
pub const GATEWAY_RULE: &str = "gateway-offline";

/// Most readings evaluated per transaction.
const BATCH: usize = 2_000;
/// Longest the loop sleeps with nothing to do (silences are checked then).
const IDLE: Duration = Duration::from_secs(1);

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A reading evaluated this long after its observation time is late.
    pub late_after: Duration,
    /// A sensor silent this long raises `sensor-silent` (`None`: off).
    pub sensor_silent_after: Option<Duration>,
    /// A gateway none of whose sensors was heard this long raises
    /// `gateway-offline` (`None`: off).
    pub gateway_offline_after: Option<Duration>,
    /// Rules from the configuration file.
    pub rules: Vec<RuleSpec>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            late_after: Duration::from_secs(120),
            sensor_silent_after: Some(Duration::from_secs(15 * 60)),
            gateway_offline_after: Some(Duration::from_secs(10 * 60)),
            rules: Vec::new(),
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The alert store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ingest log failed.
    #[error("the ingest log failed: {0}")]
    Log(#[from] pantau_ingest::Error),
    /// A rule is invalid.
    #[error("alert rule {id:?}: {error}")]
    Rule {
        /// The rule's id.
        id: String,
        /// What is wrong.
        error: crate::RuleError,
    },
    /// Two rules share an id.
    #[error("alert rule {0:?} is configured twice (ids are unique, and {SIAGA_RULE:?}, {SILENCE_RULE:?} and {GATEWAY_RULE:?} are built in)")]
    Duplicate(String),
}

/// The evaluator and what it was built from.
#[derive(Debug)]
struct Inner {
    evaluator: Evaluator,
    /// Registry version the evaluator was built on.
    registry_version: u64,
    /// API rules version it was built on.
    rules_version: u64,
    /// When the engine started (silence counts from here for sensors never
    /// heard).
    started: Timestamp,
}

/// The alert engine of a process.
#[derive(Debug)]
pub struct Engine {
    store: Arc<AlertStore>,
    registry: Arc<SharedRegistry>,
    cfg: EngineConfig,
    file_rules: Vec<Rule>,
    api_rules: Mutex<(u64, Vec<Rule>)>,
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Recorded>>,
    outbox: watch::Sender<u64>,
    metrics: AlertMetrics,
}

fn check_rules(specs: &[RuleSpec]) -> Result<Vec<Rule>, EngineError> {
    let mut seen: BTreeSet<String> = [SIAGA_RULE, SILENCE_RULE, GATEWAY_RULE]
        .into_iter()
        .map(String::from)
        .collect();
    let mut out = Vec::new();
    for s in specs {
        let rule = s.check().map_err(|error| EngineError::Rule {
            id: s.id.clone(),
            error,
        })?;
        if !seen.insert(rule.id.clone()) {
            return Err(EngineError::Duplicate(rule.id));
        }
        out.push(rule);
    }
    Ok(out)
}

impl Engine {
    /// Builds the engine over `store`, restoring its trackers: the Siaga
    /// rule of every gauge with thresholds, the configured rules and
    /// those added by API.
    pub fn open(
        store: Arc<AlertStore>,
        registry: Arc<SharedRegistry>,
        cfg: EngineConfig,
        metrics: AlertMetrics,
    ) -> Result<Self, EngineError> {
        let file_rules = check_rules(&cfg.rules)?;
        let api_specs = stored_specs(&store)?;
        let mut all = cfg.rules.clone();
        all.extend(api_specs.iter().cloned());
        check_rules(&all)?;
        let api_rules = check_rules(&api_specs)?;
        let reg = registry.get();
        let mut rules = file_rules.clone();
        rules.extend(api_rules.iter().cloned());
        let mut evaluator = Evaluator::new(&reg, rules);
        evaluator.restore(store.trackers()?);
        let (live, _) = broadcast::channel(1024);
        let (outbox, _) = watch::channel(0);
        Ok(Self {
            store,
            registry: registry.clone(),
            cfg,
            file_rules,
            api_rules: Mutex::new((0, api_rules)),
            inner: Mutex::new(Inner {
                evaluator,
                registry_version: registry.version(),
                rules_version: 0,
                started: Timestamp::now(),
            }),
            live,
            outbox,
            metrics,
        })
    }

    /// The alert store.
    pub fn store(&self) -> &Arc<AlertStore> {
        &self.store
    }

    /// Alert changes and people's actions as they are recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Recorded>> {
        self.live.subscribe()
    }

    /// Bumped whenever notifications were queued.
    pub fn outbox_watch(&self) -> watch::Receiver<u64> {
        self.outbox.subscribe()
    }

    /// Publishes what a person's action (ack, assign, note, resolve)
    /// recorded, to the live feeds and the notifiers.
    pub fn published(&self, rec: Recorded) -> Recorded {
        if rec.event.change == "resolved" {
            self.metrics.resolved(&rec.alert.rule);
        }
        let _ = self.live.send(Arc::new(rec.clone()));
        self.outbox.send_modify(|n| *n += 1);
        rec
    }

    /// Every rule in force: configured in the file (`source: file`) and by
    /// API (`source: api`), as their specs.
    pub fn rule_specs(&self) -> Result<Vec<(RuleSpec, &'static str)>, EngineError> {
        let mut out: Vec<(RuleSpec, &'static str)> = self
            .cfg
            .rules
            .iter()
            .cloned()
            .map(|s| (s, "file"))
            .collect();
        out.extend(stored_specs(&self.store)?.into_iter().map(|s| (s, "api")));
        Ok(out)
    }

    /// Creates or replaces a rule by API. Refused (nothing changes) when
    /// invalid or when it would shadow a configured rule.
    pub fn put_rule(&self, spec: RuleSpec, by: &str) -> Result<Rule, EngineError> {
        let rule = check_rules(std::slice::from_ref(&spec))?
            .pop()
            .expect("one rule checked");
        if self.file_rules.iter().any(|r| r.id == rule.id) {
            return Err(EngineError::Duplicate(rule.id));
        }
        let json = serde_json::to_string(&spec).map_err(|e| StoreError::Corrupt {
            path: Default::default(),
            what: format!("rule {:?}", spec.id),
            message: e.to_string(),
        })?;
        self.store.put_rule(&rule.id, &json, by)?;
        self.reload_api_rules()?;
        Ok(rule)
    }

    /// Deletes a rule added by API (its trackers go with it).
    pub fn delete_rule(&self, id: &str) -> Result<(), EngineError> {
        self.store.delete_rule(id)?;
        self.reload_api_rules()
    }

    fn reload_api_rules(&self) -> Result<(), EngineError> {
        let rules = check_rules(&stored_specs(&self.store)?)?;
        let mut api = self.api_rules.lock().unwrap_or_else(|p| p.into_inner());
        api.0 += 1;
        api.1 = rules;
        Ok(())
    }

    /// Rebuilds the evaluator when the registry or the API rules changed,
    /// keeping every tracker whose rule still applies.
    fn refresh(&self, inner: &mut Inner, registry: &Registry) {
        let (version, api_rules) = {
            let api = self.api_rules.lock().unwrap_or_else(|p| p.into_inner());
            (api.0, api.1.clone())
        };
        let reg_version = self.registry.version();
        if version == inner.rules_version && reg_version == inner.registry_version {
            return;
        }
        let mut rules = self.file_rules.clone();
        rules.extend(api_rules);
        let kept = std::mem::take(&mut inner.evaluator).into_trackers();
        let mut ev = Evaluator::new(registry, rules);
        ev.restore(kept);
        inner.evaluator = ev;
        inner.rules_version = version;
        inner.registry_version = reg_version;
    }

    /// Runs until `stop`: evaluates what the log holds after the engine's
    /// position, then waits for more or for a wait to complete.
    pub async fn run(
        self: Arc<Self>,
        log: Arc<IngestLog>,
        stop: CancellationToken,
    ) -> Result<(), EngineError> {
        let mut cursor = self.store.cursor()?;
        if cursor > log.last_id_at_open() {
            tracing::warn!(
                cursor,
                log = log.last_id_at_open(),
                "The alert engine's position is past the ingest log's newest entry (a new log?); \
                 starting from its beginning."
            );
            cursor = 0;
        }
        log.hold_after(cursor);
        // What was taken but not yet released before a restart.
        log.release(cursor).await?;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let reader = log.clone();
            let after = cursor;
            let batch = tokio::task::spawn_blocking(move || reader.peek_after(after, BATCH))
                .await
                .map_err(|_| pantau_ingest::Error::WriterGone)??;
            if let Some(last) = batch.entries.last().map(|e| e.id) {
                let me = self.clone();
                let entries = batch.entries;
                tokio::task::spawn_blocking(move || {
                    let readings = entries.iter().flat_map(|e| e.readings.iter());
                    me.evaluate(readings, last, Timestamp::now())
                })
                .await
                .map_err(|_| pantau_ingest::Error::WriterGone)??;
                cursor = last;
                log.release(cursor).await?;
                continue;
            }
            let me = self.clone();
            let next = tokio::task::spawn_blocking(move || me.tick(Timestamp::now()))
                .await
                .map_err(|_| pantau_ingest::Error::WriterGone)??;
            let wait = next
                .map(|t| Duration::from_millis((t.0 - Timestamp::now().0).clamp(1, 1_000) as u64))
                .unwrap_or(IDLE);
            tokio::select! {
                _ = log.wait_for_append(wait) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }

    /// Evaluates committed readings in order and records the step with the
    /// new log position `cursor`.
    pub fn evaluate<'a>(
        &self,
        readings: impl Iterator<Item = &'a LoggedReading>,
        cursor: i64,
        now: Timestamp,
    ) -> Result<Vec<Recorded>, EngineError> {
        let started = Instant::now();
        let registry = self.registry.get();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut inner, &registry);
        let late_ms = self.cfg.late_after.as_millis() as i64;
        let mut changes = Vec::new();
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        let mut n = 0u64;
        for r in readings {
            n += 1;
            let Some(sensor) = registry.get(&r.sensor) else {
                continue;
            };
            let late = now.0 - r.ts.0 > late_ms;
            let get = |f: &str| r.values.get(f).map(|v: &Value| v.as_f64());
            let out = inner.evaluator.observe(sensor, r.ts, get);
            if out.stale > 0 {
                self.metrics.stale.inc_by(out.stale as u64);
            }
            touched.extend(out.touched);
            for f in out.fired {
                let value = inner
                    .evaluator
                    .rule(&registry, &f.rule, &f.sensor)
                    .and_then(|rule| rule.value(get));
                changes.push(self.describe(&inner.evaluator, &registry, f, value, late));
            }
            // Silence watches: the sensor and its gateway were heard.
            for (rule, id, on) in [
                (
                    SILENCE_RULE,
                    sensor.id.as_str(),
                    self.cfg.sensor_silent_after,
                ),
                (
                    GATEWAY_RULE,
                    r.gateway.as_str(),
                    self.cfg.gateway_offline_after,
                ),
            ] {
                if on.is_none() {
                    continue;
                }
                let key = (rule.to_owned(), id.to_owned());
                let state = inner
                    .evaluator
                    .trackers_mut()
                    .entry(key.clone())
                    .or_default();
                let w = state.watch.get_or_insert_with(Watch::default);
                let before = *w;
                if let Some(change) = w.heard(r.ts) {
                    changes.push(self.silence_change(&registry, rule, id, change, late));
                }
                if *w != before {
                    touched.insert(key);
                }
            }
        }
        let recorded = self.record(&inner.evaluator, changes, touched, Some(cursor), now)?;
        drop(inner);
        self.metrics.readings.inc_by(n);
        self.metrics
            .eval_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(recorded)
    }

    /// Completes the waits due by `now` (`for` windows, silences); returns
    /// when the next one is due.
    pub fn tick(&self, now: Timestamp) -> Result<Option<Timestamp>, EngineError> {
        let registry = self.registry.get();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut inner, &registry);
        let mut changes = Vec::new();
        let mut touched = BTreeSet::new();
        let due_now: Vec<Key> = inner
            .evaluator
            .trackers()
            .iter()
            .filter(|(_, s)| s.watch.is_none())
            .filter_map(|((rule, sensor), s)| {
                let timing = inner.evaluator.rule(&registry, rule, sensor)?.timing;
                s.tracker
                    .due(&timing)
                    .filter(|d| *d <= now)
                    .map(|_| (rule.clone(), sensor.clone()))
            })
            .collect();
        if !due_now.is_empty() {
            touched.extend(due_now);
            for f in inner.evaluator.expire(&registry, now) {
                let late = false;
                changes.push(self.describe(&inner.evaluator, &registry, f, None, late));
            }
        }
        let mut next = inner.evaluator.next_due(&registry);
        let started = inner.started;
        let (silent, offline) = (
            self.cfg.sensor_silent_after.map(|d| d.as_millis() as i64),
            self.cfg.gateway_offline_after.map(|d| d.as_millis() as i64),
        );
        let trackers = inner.evaluator.trackers_mut();
        // Gateways first: an offline gateway inhibits its sensors' alerts.
        let mut gateway_due: BTreeMap<String, (bool, Option<Timestamp>)> = BTreeMap::new();
        if let Some(after) = offline {
            for gw in registry.gateways() {
                let key = (GATEWAY_RULE.to_owned(), gw.to_string());
                let state = trackers.entry(key.clone()).or_default();
                let w = state.watch.get_or_insert_with(|| Watch::starting(started));
                if let Some(change) = w.check(after, now, false) {
                    changes.push(self.silence_change(
                        &registry,
                        GATEWAY_RULE,
                        gw.as_str(),
                        change,
                        false,
                    ));
                    touched.insert(key);
                }
                gateway_due.insert(gw.to_string(), (w.is_open(), w.due(after)));
                next = min_opt(next, w.due(after));
            }
        }
        if let Some(after) = silent {
            for s in registry.sensors() {
                let key = (SILENCE_RULE.to_owned(), s.id.to_string());
                let state = trackers.entry(key.clone()).or_default();
                let w = state.watch.get_or_insert_with(|| Watch::starting(started));
                let due = w.due(after);
                let inhibited = gateway_due
                    .get(s.gateway.as_str())
                    .is_some_and(|(open, gdue)| {
                        *open || matches!((gdue, due), (Some(g), Some(d)) if g <= &d)
                    });
                if let Some(change) = w.check(after, now, inhibited) {
                    changes.push(self.silence_change(
                        &registry,
                        SILENCE_RULE,
                        s.id.as_str(),
                        change,
                        false,
                    ));
                    touched.insert(key);
                }
                if !inhibited {
                    next = min_opt(next, w.due(after));
                }
            }
        }
        if !changes.is_empty() || !touched.is_empty() {
            self.record(&inner.evaluator, changes, touched, None, now)?;
        }
        Ok(next)
    }

    fn record(
        &self,
        ev: &Evaluator,
        changes: Vec<ChangeRecord>,
        touched: BTreeSet<Key>,
        cursor: Option<i64>,
        now: Timestamp,
    ) -> Result<Vec<Recorded>, EngineError> {
        let trackers: Vec<(&Key, Option<&State>)> =
            touched.iter().map(|k| (k, ev.trackers().get(k))).collect();
        let recorded = self.store.record(&changes, &trackers, cursor, now)?;
        let mut queued = false;
        for rec in &recorded {
            match rec.event.change.as_str() {
                "raised" => self.metrics.opened(&rec.alert.rule),
                "resolved" => self.metrics.resolved(&rec.alert.rule),
                _ => {}
            }
            queued |= !rec.alert.muted;
            let _ = self.live.send(Arc::new(rec.clone()));
        }
        if queued {
            self.outbox.send_modify(|n| *n += 1);
        }
        Ok(recorded)
    }

    fn describe(
        &self,
        ev: &Evaluator,
        registry: &Registry,
        f: Fired,
        value: Option<f64>,
        late: bool,
    ) -> ChangeRecord {
        let sensor = registry.get(&f.sensor);
        let rule = ev.rule(registry, &f.rule, &f.sensor);
        let level = match f.change {
            Change::Resolved { from, .. } => from,
            c => c.level(),
        };
        let level_label = match rule {
            Some(r) if r.id == SIAGA_RULE => crate::ladder::siaga_of(level).label().to_owned(),
            Some(r) => match (r.ladder.len(), r.ladder.threshold(level)) {
                (1, Some(t)) => format!("{} {} {t}", r.fields.join("/"), op(r)),
                (_, Some(t)) => format!("level {level} ({} {} {t})", r.fields.join("/"), op(r)),
                _ => format!("level {level}"),
            },
            None => format!("level {level}"),
        };
        ChangeRecord {
            key: (f.rule, f.sensor),
            subject: subject(sensor, rule.map(|r| r.name.clone()).unwrap_or_default()),
            change: f.change,
            level_label,
            value,
            late,
        }
    }

    fn silence_change(
        &self,
        registry: &Registry,
        rule: &str,
        id: &str,
        change: Change,
        late: bool,
    ) -> ChangeRecord {
        let (sensor, name, label) = if rule == GATEWAY_RULE {
            (
                registry.sensors().find(|s| s.gateway.as_str() == id),
                format!("Gateway {id} offline"),
                "Offline".to_owned(),
            )
        } else {
            (
                registry.get(id),
                "Sensor silent".to_owned(),
                "No data".to_owned(),
            )
        };
        let mut subject = subject(sensor, name);
        if rule == GATEWAY_RULE {
            // A gateway's outage is the operators' business, not the public's.
            subject.public = false;
        }
        ChangeRecord {
            key: (rule.to_owned(), id.to_owned()),
            subject,
            change,
            level_label: label,
            value: None,
            late,
        }
    }
}

fn op(r: &Rule) -> &'static str {
    match r.ladder.direction() {
        crate::Direction::Above => "≥",
        crate::Direction::Below => "≤",
    }
}

fn subject(sensor: Option<&Sensor>, rule_name: String) -> Subject {
    Subject {
        rule_name,
        kind: sensor.map_or(pantau_model::SensorKind::FloodGauge, |s| s.kind),
        district: sensor.map(|s| s.district.clone()).unwrap_or_default(),
        public: sensor.is_some_and(|s| s.public),
    }
}

fn min_opt(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn stored_specs(store: &AlertStore) -> Result<Vec<RuleSpec>, EngineError> {
    store
        .rules()?
        .into_iter()
        .map(|(id, spec)| {
            serde_json::from_str(&spec).map_err(|e| {
                EngineError::Store(StoreError::Corrupt {
                    path: Default::default(),
                    what: format!("alert rule {id:?}"),
                    message: e.to_string(),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AlertFilter, AlertState};
    use pantau_model::SensorKind;

    fn reading(sensor: &str, minute: i64, level: f64) -> LoggedReading {
        LoggedReading {
            sensor: sensor.into(),
            gateway: "gw-1".into(),
            kind: SensorKind::FloodGauge,
            ts: crate::at_minute(minute),
            values: [("water_level_cm".to_string(), Value::Num(level))].into(),
        }
    }

    fn engine(dir: &std::path::Path) -> Engine {
        let store = Arc::new(AlertStore::open(dir).expect("store"));
        let registry = Arc::new(SharedRegistry::new(crate::test_registry()));
        let cfg = EngineConfig {
            sensor_silent_after: None,
            gateway_offline_after: None,
            ..Default::default()
        };
        Engine::open(store, registry, cfg, AlertMetrics::default()).expect("engine")
    }

    #[test]
    fn a_siaga_sequence_is_one_alert_with_an_event_per_level_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let e = engine(dir.path());
        let now = crate::at_minute(10);
        let first: Vec<_> = [150.0, 250.0, 350.0]
            .iter()
            .enumerate()
            .map(|(i, v)| reading("fl-sungai-dumai", i as i64, *v))
            .collect();
        let rec = e.evaluate(first.iter(), 3, now).expect("evaluates");
        assert_eq!(rec.len(), 3);
        assert!(rec.iter().all(|r| r.alert.id == rec[0].alert.id));
        assert!(rec.iter().all(|r| r.event.late), "minutes old: late");
        drop(e);
        // After a restart the same alert goes on.
        let e = engine(dir.path());
        assert_eq!(e.store().cursor().expect("cursor"), 3);
        let rest = [
            reading("fl-sungai-dumai", 3, 250.0),
            reading("fl-sungai-dumai", 4, 50.0),
        ];
        let rec2 = e.evaluate(rest.iter(), 5, now).expect("evaluates");
        assert_eq!(rec2.len(), 2);
        let id = rec[0].alert.id;
        assert!(rec2.iter().all(|r| r.alert.id == id));
        let timeline = e.store().timeline(id).expect("timeline");
        let seen: Vec<(&str, u8)> = timeline
            .iter()
            .map(|ev| (ev.change.as_str(), ev.level))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("raised", 1),
                ("escalated", 2),
                ("escalated", 3),
                ("de_escalated", 2),
                ("resolved", 0)
            ]
        );
        let alert = e.store().alert(id).expect("alert");
        assert_eq!(alert.state, AlertState::Resolved);
        assert_eq!(alert.peak, 3);
        assert_eq!(alert.resolved_at, Some(crate::at_minute(4)));
        let all = e
            .store()
            .alerts(&AlertFilter {
                limit: 10,
                ..Default::default()
            })
            .expect("list");
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn people_acknowledge_and_an_escalation_needs_attention_again() {
        let dir = tempfile::tempdir().expect("dir");
        let e = engine(dir.path());
        let now = crate::at_minute(0);
        let rec = e
            .evaluate([reading("fl-sungai-dumai", 0, 150.0)].iter(), 1, now)
            .expect("evaluates");
        let id = rec[0].alert.id;
        let acked = e
            .store()
            .acknowledge(id, "bpbd-piket", Some("on it"))
            .expect("ack");
        assert_eq!(acked.alert.state, AlertState::Acknowledged);
        assert_eq!(acked.alert.ack_by.as_deref(), Some("bpbd-piket"));
        e.evaluate([reading("fl-sungai-dumai", 1, 220.0)].iter(), 2, now)
            .expect("evaluates");
        assert_eq!(e.store().alert(id).expect("alert").state, AlertState::Open);
        // Resolved by hand: a later rise is a new alert.
        e.store().resolve(id, "bpbd-piket", None).expect("resolve");
        let rec = e
            .evaluate([reading("fl-sungai-dumai", 2, 320.0)].iter(), 3, now)
            .expect("evaluates");
        assert_ne!(rec[0].alert.id, id);
        assert!(e.store().acknowledge(id, "x", None).is_err(), "resolved");
    }
}
