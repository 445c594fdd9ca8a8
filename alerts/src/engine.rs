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
use pantau_model::derive::LosBands;
use pantau_model::{Registry, Sensor, SharedRegistry, Timestamp, Value};
use pantau_state::presence::Presence;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::evaluator::{Evaluator, Fired, State};
use crate::metrics::AlertMetrics;
use crate::rules::{Rule, RuleSpec, SIAGA_RULE};
use crate::store::{AlertStore, ChangeRecord, Recorded, StoreError, Subject};
use crate::{Change, Watch};

/// The rule id of sensor-silence alerts.
pub const SILENCE_RULE: &str = "sensor-silent";
/// The rule id of gateway-offline alerts.
pub const GATEWAY_RULE: &str = "gateway-offline";

/// Most readings evaluated per transaction.
const BATCH: usize = 20_000;
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
    /// Upstream gauges whose Siaga changes announce an expected rise at a
    /// downstream gauge.
    pub upstream: Vec<Upstream>,
    /// Traffic level-of-service bands (the derived `los` field).
    pub los: LosBands,
}

/// An upstream gauge and a downstream one with the water's travel time
/// between them: a Siaga change upstream raises (escalates, resolves) an
/// `upstream:<gauge>` alert on the downstream site, "air kiriman" expected
/// at the change's time plus `travel`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The upstream gauge.
    pub upstream: String,
    /// The downstream gauge.
    pub downstream: String,
    /// Travel time, e.g. `"90m"` (at most 7 days).
    pub travel: String,
}

/// An [`Upstream`] as checked.
#[derive(Debug, Clone)]
struct Link {
    upstream: String,
    downstream: String,
    travel_ms: i64,
}

fn check_upstream(list: &[Upstream], registry: &Registry) -> Result<Vec<Link>, EngineError> {
    list.iter()
        .map(|u| {
            let bad = |field: &'static str, message: String| EngineError::Rule {
                id: format!("upstream {} -> {}", u.upstream, u.downstream),
                error: crate::RuleError { field, message },
            };
            for (field, id) in [("upstream", &u.upstream), ("downstream", &u.downstream)] {
                if registry
                    .get(id)
                    .is_none_or(|s| s.kind != pantau_model::SensorKind::FloodGauge)
                {
                    return Err(bad(
                        field,
                        format!("{id:?} is not a flood gauge of the registry"),
                    ));
                }
            }
            let travel = humantime::parse_duration(u.travel.trim())
                .map_err(|e| bad("travel", format!("{:?}: {e}", u.travel)))?;
            if travel > crate::rules::MAX_DURATION {
                return Err(bad("travel", "at most 7 days".into()));
            }
            Ok(Link {
                upstream: u.upstream.clone(),
                downstream: u.downstream.clone(),
                travel_ms: travel.as_millis() as i64,
            })
        })
        .collect()
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            late_after: Duration::from_secs(120),
            sensor_silent_after: Some(Duration::from_secs(15 * 60)),
            gateway_offline_after: Some(Duration::from_secs(10 * 60)),
            rules: Vec::new(),
            upstream: Vec::new(),
            los: LosBands::default(),
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
    /// Each gateway's status message as last evaluated.
    statuses: std::collections::HashMap<String, String>,
    /// Sensors and gateways whose states changed only in passing since
    /// they were last written.
    dirty: std::collections::HashSet<String, crate::evaluator::FastHash>,
    /// When those were last written.
    last_flush: Instant,
}

/// How often states that changed only in passing are written.
const FLUSH: Duration = Duration::from_secs(10);

/// The sensors (and gateways) whose states a step touched.
#[derive(Debug, Default)]
struct Touched(
    std::collections::HashSet<String, crate::evaluator::FastHash>,
    bool,
);

impl Touched {
    fn touch(&mut self, id: &str) {
        if !self.0.contains(id) {
            self.0.insert(id.to_owned());
        }
    }
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
    upstream: Vec<Link>,
    presence: Option<Arc<Presence>>,
    /// The live feed follows the shared store (every replica's changes)
    /// instead of what this process records.
    shared_feed: bool,
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
        let upstream = check_upstream(&cfg.upstream, &reg)?;
        let mut rules = file_rules.clone();
        rules.extend(api_rules.iter().cloned());
        let mut evaluator = Evaluator::new(&reg, rules);
        evaluator.restore(store.trackers()?.into_iter().map(|(k, mut s)| {
            s.saved = Some(s.material());
            (k, s)
        }));
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
                statuses: Default::default(),
                dirty: Default::default(),
                last_flush: Instant::now(),
            }),
            live,
            outbox,
            metrics,
            upstream,
            presence: None,
            shared_feed: false,
        })
    }

    /// Reads gateway-health values from the gateways' status messages.
    pub fn with_presence(mut self, presence: Arc<Presence>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// The alert store.
    pub fn store(&self) -> &Arc<AlertStore> {
        &self.store
    }

    /// Feeds [`Engine::subscribe`] from the shared store instead of from
    /// this process: run [`Engine::follow_feed`] too.
    pub fn with_shared_feed(mut self) -> Self {
        self.shared_feed = true;
        self
    }

    /// Until `stop`: every half second, publishes to the live feed each
    /// alert event any process recorded in the shared store since the
    /// last look (events are looked for over the last 30 s, by their
    /// recording time, so one whose transaction committed after a later
    /// one's is not skipped; each is sent once), and bumps the outbox
    /// watch when there were some (an acknowledgement made through another
    /// replica queues notifications this one may send).
    pub async fn follow_feed(self: Arc<Self>, stop: CancellationToken) {
        const LOOKBACK_MS: i64 = 30_000;
        let mut sent: BTreeMap<i64, Timestamp> = BTreeMap::new();
        // Events before the start are history, not news.
        let started = Timestamp::now();
        loop {
            let me = self.clone();
            let since = Timestamp::now().add_millis(-LOOKBACK_MS).max(started);
            let found = tokio::task::spawn_blocking(move || {
                let events = me.store.events_since(since)?;
                let mut out = Vec::new();
                for event in events {
                    let alert = me.store.alert(event.alert)?;
                    out.push(Recorded { alert, event });
                }
                Ok::<_, StoreError>(out)
            })
            .await;
            match found {
                Ok(Ok(recs)) => {
                    let mut any = false;
                    for rec in recs {
                        if sent.contains_key(&rec.event.id) {
                            continue;
                        }
                        sent.insert(rec.event.id, rec.event.recorded);
                        any = true;
                        let _ = self.live.send(Arc::new(rec));
                    }
                    if any {
                        self.outbox.send_modify(|n| *n += 1);
                    }
                    sent.retain(|_, at| at.0 >= since.0);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Cannot read the alert events for the live feed.")
                }
                Err(_) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
        }
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
        if !self.shared_feed {
            let _ = self.live.send(Arc::new(rec.clone()));
        }
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
        if api.1 != rules {
            api.0 += 1;
            api.1 = rules;
        }
        Ok(())
    }

    /// Picks up rules added or deleted by API through another process
    /// sharing the store (the evaluator is rebuilt only when they changed).
    pub fn follow_rules(&self) -> Result<(), EngineError> {
        self.reload_api_rules()
    }

    /// Rebuilds the evaluator from the store — its trackers and the rules
    /// added by API, as another process left them — for an evaluator that
    /// takes the alert duty over in a scaled deployment.
    pub fn reload(&self) -> Result<(), EngineError> {
        self.reload_api_rules()?;
        let trackers = self.store.trackers()?;
        let registry = self.registry.get();
        let (version, api_rules) = {
            let api = self.api_rules.lock().unwrap_or_else(|p| p.into_inner());
            (api.0, api.1.clone())
        };
        let mut rules = self.file_rules.clone();
        rules.extend(api_rules);
        let mut evaluator = Evaluator::new(&registry, rules);
        evaluator.restore(trackers.into_iter().map(|(k, mut s)| {
            s.saved = Some(s.material());
            (k, s)
        }));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.evaluator = evaluator;
        inner.rules_version = version;
        inner.registry_version = self.registry.version();
        inner.statuses.clear();
        inner.dirty.clear();
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
        ev.restore(kept.to_map());
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
        // (`last_id`, not the id at the log's opening: a restarted engine
        // finds entries this process committed since.)
        if cursor > log.last_id() {
            tracing::warn!(
                cursor,
                log = log.last_id(),
                "The alert engine's position is past the ingest log's newest entry (a new log?); \
                 starting from its beginning."
            );
            cursor = 0;
        }
        log.hold_after(cursor);
        // What was taken but not yet released before a restart.
        log.release(cursor).await?;
        // Waits complete on the clock, so they are checked at least every
        // second even while readings keep coming.
        let mut last_tick: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let seen = log.appended();
            let reader = log.clone();
            let after = cursor;
            let batch = tokio::task::spawn_blocking(move || reader.peek_after(after, BATCH))
                .await
                .map_err(|_| pantau_ingest::Error::WriterGone)??;
            let busy = !batch.entries.is_empty();
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
            }
            let mut wait = IDLE;
            if !busy || last_tick.is_none_or(|t| t.elapsed() >= IDLE) {
                let me = self.clone();
                let next = tokio::task::spawn_blocking(move || me.tick(Timestamp::now()))
                    .await
                    .map_err(|_| pantau_ingest::Error::WriterGone)??;
                last_tick = Some(Instant::now());
                if let Some(t) = next {
                    wait = Duration::from_millis((t.0 - Timestamp::now().0).clamp(1, 1_000) as u64);
                }
            }
            if busy {
                continue;
            }
            tokio::select! {
                _ = log.wait_for_append_after(seen, wait) => {}
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
        let mut touched = Touched::default();
        let mut n = 0u64;
        let mut run: Option<(&str, Timestamp)> = None;
        for r in readings {
            n += 1;
            let Some(sensor) = registry.get(&r.sensor) else {
                continue;
            };
            let late = now.0 - r.ts.0 > late_ms;
            let los = &self.cfg.los;
            let get = |f: &str| {
                r.values
                    .get(f)
                    .map(|v: &Value| v.as_f64())
                    .or_else(|| derived(sensor, f, &r.values, los))
            };
            self.observe_one(
                &mut inner.evaluator,
                &registry,
                (sensor, r.ts, late),
                get,
                (&mut changes, &mut touched),
            );
            // Silence watches: the sensor was heard, and its gateway.
            if self.cfg.sensor_silent_after.is_some() {
                let id = sensor.id.as_str();
                let w = watch(&mut inner.evaluator, SILENCE_RULE, id);
                if let Some(change) = w.heard(r.ts) {
                    changes.push(self.silence_change(&registry, SILENCE_RULE, id, change, late));
                }
                touched.touch(id);
            }
            if self.cfg.gateway_offline_after.is_some() {
                // A run of one gateway's readings (an envelope, a commit
                // group) is heard at its first reading (which ends a
                // silence, at that reading's time) and at its newest.
                match &mut run {
                    Some((gw, newest)) if *gw == r.gateway.as_str() => {
                        *newest = (*newest).max(r.ts);
                    }
                    _ => {
                        if let Some((gw, newest)) = run.take() {
                            watch(&mut inner.evaluator, GATEWAY_RULE, gw).heard(newest);
                        }
                        let gw = r.gateway.as_str();
                        let w = watch(&mut inner.evaluator, GATEWAY_RULE, gw);
                        if let Some(change) = w.heard(r.ts) {
                            changes.push(self.silence_change(
                                &registry,
                                GATEWAY_RULE,
                                gw,
                                change,
                                late,
                            ));
                        }
                        touched.touch(gw);
                        run = Some((gw, r.ts));
                    }
                }
            }
        }
        if let Some((gw, newest)) = run.take() {
            watch(&mut inner.evaluator, GATEWAY_RULE, gw).heard(newest);
        }
        self.mirror_upstream(&registry, &mut changes);
        let recorded = self.record(&mut inner, changes, touched, Some(cursor), now)?;
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
        let mut touched = Touched::default();
        let due_now: Vec<String> = inner
            .evaluator
            .trackers()
            .iter()
            .filter(|(_, s)| s.watch.is_none())
            .filter_map(|((rule, sensor), s)| {
                let timing = inner.evaluator.rule(&registry, rule, sensor)?.timing;
                s.tracker
                    .due(&timing)
                    .filter(|d| *d <= now)
                    .map(|_| sensor.to_owned())
            })
            .collect();
        if !due_now.is_empty() {
            for id in &due_now {
                touched.touch(id);
            }
            for f in inner.evaluator.expire(&registry, now) {
                let late = false;
                changes.push(self.describe(&inner.evaluator, &registry, f, None, late));
            }
        }
        if let Some(presence) = &self.presence {
            for (gw, p) in presence.snapshot() {
                let Some(text) = p.last_status else { continue };
                if inner.statuses.get(&gw) == Some(&text) {
                    continue;
                }
                inner.statuses.insert(gw.clone(), text.clone());
                let Some(pseudo) = gateway_sensor(&registry, &gw) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                let at = v["ts"]
                    .as_str()
                    .and_then(Timestamp::parse_rfc3339)
                    .unwrap_or(now);
                let get = |f: &str| match f {
                    "spool_depth" => v["spool"]["readings"].as_f64(),
                    "spool_dropped" => v["spool"]["dropped"].as_f64(),
                    other => v[other].as_f64(),
                };
                self.observe_one(
                    &mut inner.evaluator,
                    &registry,
                    (&pseudo, at, false),
                    get,
                    (&mut changes, &mut touched),
                );
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
                let state = trackers.entry(GATEWAY_RULE, gw.as_str());
                let w = state.watch.get_or_insert_with(|| Watch::starting(started));
                if let Some(change) = w.check(after, now, false) {
                    changes.push(self.silence_change(
                        &registry,
                        GATEWAY_RULE,
                        gw.as_str(),
                        change,
                        false,
                    ));
                    touched.touch(gw.as_str());
                }
                gateway_due.insert(gw.to_string(), (w.is_open(), w.due(after)));
                next = min_opt(next, w.due(after));
            }
        }
        if let Some(after) = silent {
            for s in registry.sensors() {
                let state = trackers.entry(SILENCE_RULE, s.id.as_str());
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
                    touched.touch(s.id.as_str());
                }
                if !inhibited {
                    next = min_opt(next, w.due(after));
                }
            }
        }
        // What changed only in passing (last-seen times, rate samples) is
        // written every FLUSH.
        if inner.last_flush.elapsed() >= FLUSH {
            let dirty = std::mem::take(&mut inner.dirty);
            touched.0.extend(dirty);
            touched.1 = true;
        }
        if !changes.is_empty() || !touched.0.is_empty() {
            self.mirror_upstream(&registry, &mut changes);
            self.record(&mut inner, changes, touched, None, now)?;
        }
        Ok(next)
    }

    /// Records a step: its changes, the states whose material part changed
    /// (every touched one when `touched.1`), and the log position.
    /// States that changed only in passing wait in `inner.dirty`.
    fn record(
        &self,
        inner: &mut Inner,
        changes: Vec<ChangeRecord>,
        touched: Touched,
        cursor: Option<i64>,
        now: Timestamp,
    ) -> Result<Vec<Recorded>, EngineError> {
        let mut save: Vec<(String, String)> = Vec::new();
        {
            let trackers = inner.evaluator.trackers_mut();
            for id in &touched.0 {
                for (rule, state) in trackers.of_mut(id) {
                    if touched.1 || state.saved != Some(state.material()) {
                        save.push((rule.to_owned(), id.clone()));
                    } else {
                        inner.dirty.insert(id.clone());
                    }
                }
            }
        }
        let trackers = inner.evaluator.trackers();
        let rows: Vec<((&str, &str), Option<&State>)> = save
            .iter()
            .map(|(r, s)| ((r.as_str(), s.as_str()), trackers.get(r, s)))
            .collect();
        let recorded = self.store.record(&changes, &rows, cursor, now)?;
        let trackers = inner.evaluator.trackers_mut();
        for (r, s) in &save {
            let st = trackers.entry(r, s);
            st.saved = Some(st.material());
        }
        if touched.1 {
            inner.last_flush = Instant::now();
        }
        let mut queued = false;
        for rec in &recorded {
            match rec.event.change.as_str() {
                "raised" => self.metrics.opened(&rec.alert.rule),
                "resolved" => self.metrics.resolved(&rec.alert.rule),
                _ => {}
            }
            queued |= !rec.alert.muted;
            if !self.shared_feed {
                let _ = self.live.send(Arc::new(rec.clone()));
            }
        }
        if queued {
            self.outbox.send_modify(|n| *n += 1);
        }
        Ok(recorded)
    }

    /// Evaluates one reading of `sensor` observed `at` (`late` or not) and
    /// collects the changes it made and the states it touched.
    fn observe_one(
        &self,
        ev: &mut Evaluator,
        registry: &Registry,
        (sensor, at, late): (&Sensor, Timestamp, bool),
        get: impl Fn(&str) -> Option<f64> + Copy,
        (changes, touched): (&mut Vec<ChangeRecord>, &mut Touched),
    ) {
        let out = ev.observe(sensor, at, get);
        if out.stale > 0 {
            self.metrics.stale.inc_by(out.stale as u64);
        }
        if out.touched > 0 {
            touched.touch(sensor.id.as_str());
        }
        for f in out.fired {
            let value = ev
                .rule(registry, &f.rule, &f.sensor)
                .and_then(|rule| rule.value(get));
            changes.push(self.describe(ev, registry, f, value, late));
        }
    }

    /// Adds, for each Siaga change of an upstream gauge, the same change of
    /// the downstream site's expected-arrival alert.
    fn mirror_upstream(&self, registry: &Registry, changes: &mut Vec<ChangeRecord>) {
        if self.upstream.is_empty() {
            return;
        }
        let mut extra = Vec::new();
        for c in changes.iter().filter(|c| c.key.0 == SIAGA_RULE) {
            for link in self.upstream.iter().filter(|l| l.upstream == c.key.1) {
                let Some(down) = registry.get(&link.downstream) else {
                    continue;
                };
                let up_name = registry
                    .get(&link.upstream)
                    .map_or(link.upstream.clone(), |s| s.name.clone());
                let expected = c.change.at().add_millis(link.travel_ms);
                extra.push(ChangeRecord {
                    key: (
                        format!("upstream:{}", link.upstream),
                        link.downstream.clone(),
                    ),
                    subject: Subject {
                        rule_name: format!("Air kiriman dari {up_name}"),
                        kind: down.kind,
                        district: down.district.clone(),
                        public: down.public,
                    },
                    change: c.change,
                    level_label: format!(
                        "{} upstream at {up_name}; expected here around {}",
                        c.level_label,
                        expected.to_rfc3339()
                    ),
                    value: c.value,
                    late: c.late,
                });
            }
        }
        changes.extend(extra);
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
            Some(r) if r.fields == ["los"] => match r.ladder.threshold(level) {
                Some(t) => format!("LOS {}", los_letter(t)),
                None => format!("level {level}"),
            },
            Some(r) => match (r.ladder.len(), r.ladder.threshold(level)) {
                (1, Some(t)) => format!("{} {} {t}", r.fields.join("/"), op(r)),
                (_, Some(t)) => format!("level {level} ({} {} {t})", r.fields.join("/"), op(r)),
                _ => format!("level {level}"),
            },
            None => format!("level {level}"),
        };
        let rule_name = rule.map(|r| r.name.clone()).unwrap_or_default();
        let subject = match sensor {
            Some(s) => subject(Some(s), rule_name),
            // A gateway's own health.
            None => Subject {
                rule_name,
                kind: pantau_model::SensorKind::GatewayHealth,
                district: registry
                    .sensors()
                    .find(|s| s.gateway.as_str() == f.sensor)
                    .map(|s| s.district.clone())
                    .unwrap_or_default(),
                public: false,
            },
        };
        ChangeRecord {
            key: (f.rule, f.sensor),
            subject,
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

/// The silence watch of (`rule`, `id`), made if there is none.
fn watch<'a>(ev: &'a mut Evaluator, rule: &str, id: &str) -> &'a mut Watch {
    ev.trackers_mut()
        .entry(rule, id)
        .watch
        .get_or_insert_with(Watch::default)
}

/// The grade letter of a `los` threshold (1 = A … 6 = F).
fn los_letter(v: f64) -> char {
    match v.round() as i64 {
        ..=1 => 'A',
        2 => 'B',
        3 => 'C',
        4 => 'D',
        5 => 'E',
        _ => 'F',
    }
}

/// The derived fields of a reading (see [`crate::rules::DERIVED`]).
fn derived(
    sensor: &Sensor,
    field: &str,
    values: &pantau_model::Values,
    los: &LosBands,
) -> Option<f64> {
    if sensor.kind != pantau_model::SensorKind::TrafficCounter || field != "los" {
        return None;
    }
    let num = |f: &str| values.get(f).map(|v| v.as_f64());
    let cap = sensor.capacity_pcu_h.filter(|c| *c > 0.0)?;
    let count = num("count_total")?;
    let window = num("window_s").filter(|w| *w > 0.0)?;
    let grade = los.grade(count * 3600.0 / window / cap, num("mean_speed_kmh"));
    "ABCDEF".find(grade).map(|i| (i + 1) as f64)
}

/// A gateway of the registry as the subject of its health rules.
fn gateway_sensor(registry: &Registry, gw: &str) -> Option<Sensor> {
    let first = registry.sensors().find(|s| s.gateway.as_str() == gw)?;
    Some(Sensor {
        id: pantau_model::SensorId::new(gw.to_owned()).ok()?,
        kind: pantau_model::SensorKind::GatewayHealth,
        gateway: first.gateway.clone(),
        name: format!("Gateway {gw}"),
        district: first.district.clone(),
        lat: first.lat,
        lon: first.lon,
        owner: first.owner.clone(),
        public: false,
        thresholds: None,
        capacity_pcu_h: None,
    })
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

#[cfg(test)]
mod more_tests {
    use super::*;
    use crate::store::AlertFilter;

    fn spec(v: serde_json::Value) -> RuleSpec {
        serde_json::from_value(v).expect("spec")
    }

    fn open(
        dir: &std::path::Path,
        registry: Registry,
        rules: Vec<RuleSpec>,
        upstream: Vec<Upstream>,
    ) -> Engine {
        let store = Arc::new(AlertStore::open(dir).expect("store"));
        let cfg = EngineConfig {
            sensor_silent_after: None,
            gateway_offline_after: None,
            rules,
            upstream,
            ..Default::default()
        };
        Engine::open(
            store,
            Arc::new(SharedRegistry::new(registry)),
            cfg,
            AlertMetrics::default(),
        )
        .expect("engine")
    }

    fn reading(
        sensor: &str,
        kind: pantau_model::SensorKind,
        minute: i64,
        values: &[(&str, f64)],
    ) -> LoggedReading {
        LoggedReading {
            sensor: sensor.into(),
            gateway: "gw-1".into(),
            kind,
            ts: crate::at_minute(minute),
            values: values
                .iter()
                .map(|(f, v)| (f.to_string(), Value::Num(*v)))
                .collect(),
        }
    }

    #[test]
    fn sustained_level_of_service_e_or_f_raises_after_its_duration() {
        let registry = Registry::parse(
            "[[sensor]]\nid = \"tc-sudirman\"\nkind = \"traffic_counter\"\ngateway = \"gw-1\"\nname = \"Sudirman\"\nlat = 1.6\nlon = 101.4\ncapacity_pcu_h = 1000\n",
        )
        .expect("registry");
        let dir = tempfile::tempdir().expect("dir");
        let rule = spec(serde_json::json!({"id": "jam", "kind": "traffic_counter",
            "field": "los", "above": [5, 6], "for": "10m", "clear_for": "5m"}));
        let e = open(dir.path(), registry, vec![rule], vec![]);
        // 5-minute counts: 100 vehicles (LOS A), then 90 for a v/c of 1.08
        // (F) for 20 minutes, then light again.
        let mut id = 1;
        let mut fired = Vec::new();
        let mut feed = |minute: i64, count: f64| {
            let r = reading(
                "tc-sudirman",
                pantau_model::SensorKind::TrafficCounter,
                minute,
                &[("count_total", count), ("window_s", 300.0)],
            );
            fired.extend(
                e.evaluate([r].iter(), id, crate::at_minute(minute))
                    .expect("evaluates"),
            );
            id += 1;
        };
        feed(0, 8.0);
        for m in (5..=25).step_by(5) {
            feed(m, 90.0);
        }
        for m in (30..=40).step_by(5) {
            feed(m, 8.0);
        }
        let changes: Vec<(&str, u8, Timestamp, &str)> = fired
            .iter()
            .map(|r| {
                (
                    r.event.change.as_str(),
                    r.event.level,
                    r.event.at,
                    r.alert.level_label.as_str(),
                )
            })
            .collect();
        assert_eq!(
            changes,
            vec![
                ("raised", 2, crate::at_minute(15), "LOS F"),
                ("resolved", 0, crate::at_minute(35), "LOS F"),
            ]
        );
    }

    #[test]
    fn a_siaga_crossing_upstream_raises_an_expected_alert_downstream() {
        let dir = tempfile::tempdir().expect("dir");
        let e = open(
            dir.path(),
            crate::test_registry(),
            vec![],
            vec![Upstream {
                upstream: "fl-sungai-dumai".into(),
                downstream: "fl-no-thresholds".into(),
                travel: "90m".into(),
            }],
        );
        let r = |m, v| {
            reading(
                "fl-sungai-dumai",
                pantau_model::SensorKind::FloodGauge,
                m,
                &[("water_level_cm", v)],
            )
        };
        let now = crate::at_minute(5);
        let rec = e
            .evaluate([r(0, 250.0), r(1, 320.0), r(2, 50.0)].iter(), 3, now)
            .expect("evaluates");
        let down: Vec<(&str, u8)> = rec
            .iter()
            .filter(|x| x.alert.sensor == "fl-no-thresholds")
            .map(|x| (x.event.change.as_str(), x.event.level))
            .collect();
        assert_eq!(down, vec![("raised", 2), ("escalated", 3), ("resolved", 0)]);
        let alert = &rec
            .iter()
            .find(|x| x.alert.sensor == "fl-no-thresholds")
            .expect("one")
            .alert;
        assert_eq!(alert.rule, "upstream:fl-sungai-dumai");
        assert!(
            alert
                .level_label
                .contains(&crate::at_minute(90).to_rfc3339()),
            "{}",
            alert.level_label
        );
        // A downstream gauge that is not a flood gauge of the registry is
        // refused at start.
        let bad = Engine::open(
            Arc::new(AlertStore::open(dir.path()).expect("store")),
            Arc::new(SharedRegistry::new(crate::test_registry())),
            EngineConfig {
                upstream: vec![Upstream {
                    upstream: "fl-sungai-dumai".into(),
                    downstream: "tg-dumai".into(),
                    travel: "1h".into(),
                }],
                ..Default::default()
            },
            AlertMetrics::default(),
        );
        assert!(matches!(bad, Err(EngineError::Rule { error, .. }) if error.field == "downstream"));
    }

    #[test]
    fn gateway_status_messages_feed_gateway_health_rules() {
        let dir = tempfile::tempdir().expect("dir");
        let backlog = spec(
            serde_json::json!({"id": "spool-backlog", "kind": "gateway_health",
            "field": "spool_depth", "above": [1000], "deadband": 100}),
        );
        let dropping = spec(
            serde_json::json!({"id": "spool-dropping", "kind": "gateway_health",
            "field": "spool_dropped", "above": [1]}),
        );
        let presence = Arc::new(Presence::default());
        let e = open(
            dir.path(),
            crate::test_registry(),
            vec![backlog, dropping],
            vec![],
        )
        .with_presence(presence.clone());
        let status = |readings: u64, dropped: u64, minute: i64| {
            format!(
                r#"{{"online":true,"ts":"{}","spool":{{"readings":{readings},"bytes":0,"max_bytes":0,"dropped":{dropped}}}}}"#,
                crate::at_minute(minute).to_rfc3339()
            )
        };
        presence.status("gw-1", status(5_000, 0, 0).as_bytes());
        e.tick(crate::at_minute(0)).expect("tick");
        presence.status("gw-1", status(20, 3, 1).as_bytes());
        e.tick(crate::at_minute(1)).expect("tick");
        let all = e
            .store()
            .alerts(&AlertFilter {
                limit: 10,
                ..Default::default()
            })
            .expect("list");
        let seen: Vec<(&str, &str, crate::AlertState)> = all
            .iter()
            .map(|a| (a.rule.as_str(), a.sensor.as_str(), a.state))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("spool-dropping", "gw-1", crate::AlertState::Open),
                ("spool-backlog", "gw-1", crate::AlertState::Resolved),
            ]
        );
        assert!(all
            .iter()
            .all(|a| a.kind == pantau_model::SensorKind::GatewayHealth && !a.public));
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;
    use pantau_ingest::IngestMetrics;

    fn reading(minute: i64, level: f64) -> LoggedReading {
        LoggedReading {
            sensor: "fl-sungai-dumai".into(),
            gateway: "gw-1".into(),
            kind: pantau_model::SensorKind::FloodGauge,
            ts: Timestamp(Timestamp::now().millis() - 3_600_000 + minute * 60_000),
            values: [("water_level_cm".to_string(), Value::Num(level))].into(),
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_engine_restarted_in_process_resumes_where_it_was() {
        let dir = tempfile::tempdir().expect("dir");
        let log =
            Arc::new(IngestLog::open(dir.path(), 10_000, IngestMetrics::default()).expect("log"));
        let metrics = AlertMetrics::default();
        let cfg = EngineConfig {
            sensor_silent_after: None,
            gateway_offline_after: None,
            ..Default::default()
        };
        let engine = Arc::new(
            Engine::open(
                Arc::new(AlertStore::open(dir.path()).expect("store")),
                Arc::new(SharedRegistry::new(crate::test_registry())),
                cfg,
                metrics.clone(),
            )
            .expect("engine"),
        );
        // The log is empty when it opens; entries come while it runs.
        let stop = CancellationToken::new();
        let task = tokio::spawn(engine.clone().run(log.clone(), stop.clone()));
        for (m, v) in [(0, 150.0), (1, 250.0)] {
            log.append(vec![reading(m, v)]).await.expect("append");
        }
        until("two readings evaluated", || metrics.readings.get() == 2).await;
        stop.cancel();
        task.await.expect("joins").expect("runs");
        // Restarted (as the supervisor does) in the same process.
        let stop = CancellationToken::new();
        let task = tokio::spawn(engine.clone().run(log.clone(), stop.clone()));
        log.append(vec![reading(2, 350.0)]).await.expect("append");
        until("the third reading evaluated", || {
            metrics.readings.get() >= 3
        })
        .await;
        stop.cancel();
        task.await.expect("joins").expect("runs");
        assert_eq!(metrics.readings.get(), 3, "nothing evaluated twice");
        assert_eq!(metrics.stale.get(), 0);
        let timeline = engine.store().timeline(1).expect("timeline");
        let seen: Vec<&str> = timeline.iter().map(|e| e.change.as_str()).collect();
        assert_eq!(seen, ["raised", "escalated", "escalated"]);
    }
}
