//! Alert state in the platform state database (`state.db`): alerts, their
//! timelines, the evaluator's trackers, the evaluator's position in the
//! ingest log, rules configured by API, webhook subscribers and their
//! outboxes, and silences.
//!
//! Invariant: one evaluation step (a batch of readings, or the waits that
//! completed) is one transaction — its alert changes, timeline events,
//! outbox rows, the trackers it changed and the new log position — so
//! kill -9 either keeps all of it or none of it, and the step is redone
//! from the same position: no lost and no doubled open or clear. Write
//! transactions take the write lock at their start (`IMMEDIATE`): other
//! processes write `state.db` too (`pantau gateway add`), and a read
//! transaction upgraded to a write after one of them committed would fail
//! at once instead of waiting its turn.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use pantau_model::{SensorKind, Timestamp};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::evaluator::{Key, State};

/// The columns [`alert_row`] reads, in its order.
macro_rules! alert_columns {
    () => {
        "id, rule, rule_name, sensor, kind, district, public, state, level, peak,
         level_label, since_ms, changed_ms, resolved_ms, resolved_by, ack_by, ack_ms, assignee, late"
    };
}

/// Errors of the alert store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("alert store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored record cannot be read back.
    #[error("alert store {path}: {what}: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The shared state (PostgreSQL) failed.
    #[error("alert store: {0}")]
    Shared(#[from] pantau_state::Error),
    /// The store is not shared (`state.db`) where a shared one is needed.
    #[error("the alert store is not shared: give --state postgres://…")]
    NotShared,
    /// Another evaluator holds the lease now: the step was not recorded.
    #[error("lease {name:?} was taken over (epoch {epoch} is no longer current): not recorded")]
    Fenced {
        /// The lease.
        name: String,
        /// The epoch this evaluator had.
        epoch: i64,
    },
    /// No such alert, rule, webhook or silence.
    #[error("no {0}")]
    NotFound(String),
    /// The record exists.
    #[error("{0} exists")]
    Exists(String),
}

/// Result of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where an alert is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Raised, nobody has acknowledged it.
    Open,
    /// Someone took it.
    Acknowledged,
    /// The condition cleared, or someone resolved it by hand.
    Resolved,
}

impl AlertState {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "acknowledged" => Some(Self::Acknowledged),
            "resolved" => Some(Self::Resolved),
            _ => None,
        }
    }
}

/// An alert as kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Its id.
    pub id: i64,
    /// The rule that raised it.
    pub rule: String,
    /// The rule's name.
    pub rule_name: String,
    /// The sensor (or, for a gateway alert, the gateway).
    pub sensor: String,
    /// The sensor's kind.
    pub kind: SensorKind,
    /// The sensor's district.
    pub district: String,
    /// Whether the sensor is on the public view.
    pub public: bool,
    /// Lifecycle state.
    pub state: AlertState,
    /// Severity now (1 = the rule's lowest; 0 once resolved).
    pub level: u8,
    /// The highest severity it reached.
    pub peak: u8,
    /// Human label of `level` (e.g. `Siaga 2 (Siaga)`).
    pub level_label: String,
    /// Observation time it was raised (or last reopened).
    pub since: Timestamp,
    /// Observation time of its latest change.
    pub changed: Timestamp,
    /// Observation time it resolved, if it did.
    pub resolved_at: Option<Timestamp>,
    /// Who resolved it by hand (`None`: the condition cleared).
    pub resolved_by: Option<String>,
    /// Who acknowledged it.
    pub ack_by: Option<String>,
    /// When (wall clock).
    pub ack_at: Option<Timestamp>,
    /// Its assignee.
    pub assignee: Option<String>,
    /// Whether its latest change was evaluated late (a replayed backlog).
    pub late: bool,
    /// Whether a silence mutes its notifications now.
    pub muted: bool,
}

/// One entry of an alert's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    /// Event id (the webhook id is derived from it).
    pub id: i64,
    /// The alert.
    pub alert: i64,
    /// `raised`, `reopened`, `escalated`, `de_escalated`, `resolved`,
    /// `acknowledged`, `assigned`, `note`.
    pub change: String,
    /// Severity after the event.
    pub level: u8,
    /// Severity before it.
    pub from: u8,
    /// Observation time (for changes of the condition) or wall-clock time
    /// (for actions of people).
    pub at: Timestamp,
    /// When Pantau recorded it.
    pub recorded: Timestamp,
    /// Evaluated from a reading older than the lateness bound.
    pub late: bool,
    /// Who (actions of people).
    pub by: Option<String>,
    /// Note, assignee name, or the value that caused a change.
    pub note: Option<String>,
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only in these states (empty: every state).
    pub states: Vec<AlertState>,
    /// Only of these kinds (empty: every kind).
    pub kinds: Vec<SensorKind>,
    /// Only this sensor's.
    pub sensor: Option<String>,
    /// Only this rule's.
    pub rule: Option<String>,
    /// Only in this district.
    pub district: Option<String>,
    /// Only at least this severity (peak).
    pub min_level: Option<u8>,
    /// Only public sensors' alerts.
    pub public_only: bool,
    /// Changed at or after (observation time).
    pub since: Option<Timestamp>,
    /// Raised before (observation time).
    pub until: Option<Timestamp>,
    /// At most this many, newest change first.
    pub limit: usize,
}

/// A webhook subscriber as kept (its secret only for signing).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Webhook {
    /// Its id.
    pub id: String,
    /// Where notifications go.
    pub url: String,
    /// The signing secret (`whsec_…`); never shown after creation.
    #[serde(skip)]
    pub secret: String,
    /// Only these kinds (empty: all).
    pub kinds: Vec<SensorKind>,
    /// Only these districts (empty: all).
    pub districts: Vec<String>,
    /// Only alerts that reached at least this severity.
    pub min_level: u8,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created: Timestamp,
    /// Delivery health.
    pub health: WebhookHealth,
}

/// Delivery health of a subscriber.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WebhookHealth {
    /// Last delivery the receiver acknowledged (2xx).
    pub last_success: Option<Timestamp>,
    /// Last failed attempt.
    pub last_failure: Option<Timestamp>,
    /// Why it failed.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_errors: u32,
    /// Notifications waiting in its outbox.
    pub pending: u64,
    /// Notifications it acknowledged.
    pub delivered: u64,
}

/// A notification waiting in a subscriber's outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Outbox row.
    pub row: i64,
    /// The `webhook-id` (stable per event and subscriber).
    pub msg_id: String,
    /// The JSON body.
    pub body: String,
    /// When it was queued.
    pub queued: Timestamp,
}

/// A maintenance window: notifications of matching alerts are muted while
/// it lasts; the alerts themselves are still raised and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Its id (0 before it is stored).
    #[serde(default)]
    pub id: i64,
    /// Only this sensor (or gateway); `None`: every sensor of `kind`.
    pub sensor: Option<String>,
    /// Only this kind; `None` with no sensor: everything.
    pub kind: Option<SensorKind>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Why.
    pub reason: String,
    /// Who set it.
    #[serde(default)]
    pub by: String,
    /// From (wall clock).
    pub starts: Timestamp,
    /// Until (wall clock); it expires by itself.
    pub ends: Timestamp,
}

impl Silence {
    /// Whether it mutes `alert` at `now`.
    pub fn mutes(&self, rule: &str, sensor: &str, kind: SensorKind, now: Timestamp) -> bool {
        self.starts <= now
            && now < self.ends
            && self.sensor.as_deref().is_none_or(|s| s == sensor)
            && self.kind.is_none_or(|k| k == kind)
            && self.rule.as_deref().is_none_or(|r| r == rule)
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rule TEXT NOT NULL,
        rule_name TEXT NOT NULL,
        sensor TEXT NOT NULL,
        kind TEXT NOT NULL,
        district TEXT NOT NULL,
        public INTEGER NOT NULL,
        state TEXT NOT NULL,
        level INTEGER NOT NULL,
        peak INTEGER NOT NULL,
        level_label TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        changed_ms INTEGER NOT NULL,
        resolved_ms INTEGER,
        resolved_by TEXT,
        ack_by TEXT,
        ack_ms INTEGER,
        assignee TEXT,
        late INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS alerts_open ON alerts (state) WHERE state != 'resolved';
    CREATE INDEX IF NOT EXISTS alerts_sensor ON alerts (sensor);
    CREATE TABLE IF NOT EXISTS alert_current (
        rule TEXT NOT NULL,
        sensor TEXT NOT NULL,
        alert INTEGER NOT NULL,
        PRIMARY KEY (rule, sensor)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS alert_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        alert INTEGER NOT NULL,
        change TEXT NOT NULL,
        level INTEGER NOT NULL,
        from_level INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        recorded_ms INTEGER NOT NULL,
        late INTEGER NOT NULL,
        by TEXT,
        note TEXT
    );
    CREATE INDEX IF NOT EXISTS alert_events_alert ON alert_events (alert, id);
    CREATE INDEX IF NOT EXISTS alert_events_recorded ON alert_events (recorded_ms);
    CREATE TABLE IF NOT EXISTS alert_trackers (
        rule TEXT NOT NULL,
        sensor TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (rule, sensor)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS alert_meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS alert_rules (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        updated_by TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS webhooks (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        secret TEXT NOT NULL,
        kinds TEXT NOT NULL,
        districts TEXT NOT NULL,
        min_level INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        last_success_ms INTEGER,
        last_failure_ms INTEGER,
        last_error TEXT,
        consecutive_errors INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        body TEXT NOT NULL,
        queued_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS outbox_webhook ON outbox (webhook, id);
    CREATE TABLE IF NOT EXISTS silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        spec TEXT NOT NULL,
        ends_ms INTEGER NOT NULL,
        cancelled_by TEXT,
        cancelled_ms INTEGER
    );";

/// The alert store: the alert tables of `state.db` (one process), or of
/// the shared PostgreSQL state (a scaled deployment, see [`crate::store_pg`]).
#[derive(Debug)]
pub struct AlertStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Sqlite(SqliteAlerts),
    Postgres(crate::store_pg::PgAlerts),
}

/// Calls the same method on whichever backend is in use.
macro_rules! dispatch {
    ($self:ident . $m:ident ( $($a:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(s) => s.$m($($a),*),
            Backend::Postgres(p) => p.$m($($a),*),
        }
    };
}

/// Who may record evaluation steps in a shared alert store: the holder
/// of lease `name` at `epoch`. A step recorded with a fence is refused
/// ([`StoreError::Fenced`]) once another holder took the lease over, so
/// an evaluator that stalled past its lease cannot open an alert twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease.
    pub name: String,
    /// Its holder.
    pub holder: String,
    /// The epoch the holder got.
    pub epoch: i64,
}

/// The alert tables of `state.db`.
#[derive(Debug)]
pub(crate) struct SqliteAlerts {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// A new alert's description, from the rule and the sensor.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The rule's name.
    pub rule_name: String,
    /// Sensor kind.
    pub kind: SensorKind,
    /// District.
    pub district: String,
    /// On the public view.
    pub public: bool,
}

/// One change of the condition to record.
#[derive(Debug, Clone)]
pub struct ChangeRecord {
    /// Rule and sensor.
    pub key: Key,
    /// What it is about.
    pub subject: Subject,
    /// The change.
    pub change: crate::Change,
    /// Label of the new level (or of the level left, when resolved).
    pub level_label: String,
    /// The value that caused it, for the timeline.
    pub value: Option<f64>,
    /// Evaluated late.
    pub late: bool,
}

/// What a recorded change became.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The alert after the change.
    pub alert: Alert,
    /// Its timeline event.
    pub event: AlertEvent,
}

pub(crate) fn kinds_json(kinds: &[SensorKind]) -> String {
    serde_json::to_string(&kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into())
}

impl AlertStore {
    /// Opens (creating its tables if needed) the alert tables of `state.db`
    /// in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Ok(Self {
            backend: Backend::Sqlite(SqliteAlerts::open(data_dir)?),
        })
    }

    /// The alert tables of the shared PostgreSQL state (created by its
    /// migration 3); `NotShared` on `state.db`.
    pub fn shared(state: std::sync::Arc<pantau_state::StateDb>) -> Result<Self> {
        if !state.is_shared() {
            return Err(StoreError::NotShared);
        }
        Ok(Self {
            backend: Backend::Postgres(crate::store_pg::PgAlerts::new(state)),
        })
    }

    /// Whether the store is shared between processes.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// From now on evaluation steps are recorded only while `fence` holds
    /// (`None`: always). Only a shared store checks it.
    pub fn set_fence(&self, fence: Option<Fence>) {
        if let Backend::Postgres(p) = &self.backend {
            p.set_fence(fence);
        }
    }

    /// The evaluator's position in the ingest log (always 0 on a shared
    /// store: there the evaluator's readings come from the commit stream).
    pub fn cursor(&self) -> Result<i64> {
        dispatch!(self.cursor())
    }

    /// Every tracker kept.
    pub fn trackers(&self) -> Result<Vec<(Key, State)>> {
        dispatch!(self.trackers())
    }

    /// Records one evaluation step in one transaction: `changes` (each
    /// with its timeline event and, unless muted, an outbox row for every
    /// webhook whose filter it passes), the `trackers` it touched, and the
    /// new log position `cursor` (if it moved). Returns what each change
    /// became, in order. On a shared store with a fence, refused
    /// ([`StoreError::Fenced`]) when the fence no longer holds.
    pub fn record(
        &self,
        changes: &[ChangeRecord],
        trackers: &[((&str, &str), Option<&State>)],
        cursor: Option<i64>,
        now: Timestamp,
    ) -> Result<Vec<Recorded>> {
        dispatch!(self.record(changes, trackers, cursor, now))
    }

    /// One alert.
    pub fn alert(&self, id: i64) -> Result<Alert> {
        dispatch!(self.alert(id))
    }

    /// An alert's timeline, oldest first.
    pub fn timeline(&self, id: i64) -> Result<Vec<AlertEvent>> {
        dispatch!(self.timeline(id))
    }

    /// Alerts matching `filter`, most recently changed first.
    pub fn alerts(&self, f: &AlertFilter) -> Result<Vec<Alert>> {
        dispatch!(self.alerts(f))
    }

    /// Every alert event recorded at or after `since`, oldest first.
    pub fn events_since(&self, since: Timestamp) -> Result<Vec<AlertEvent>> {
        dispatch!(self.events_since(since))
    }

    /// Acknowledges an open alert (again by someone else: the latest wins).
    pub fn acknowledge(&self, id: i64, by: &str, note: Option<&str>) -> Result<Recorded> {
        dispatch!(self.acknowledge(id, by, note))
    }

    /// Sets (or clears, with `None`) the assignee.
    pub fn assign(&self, id: i64, by: &str, assignee: Option<&str>) -> Result<Recorded> {
        dispatch!(self.assign(id, by, assignee))
    }

    /// Adds a note to the timeline.
    pub fn note(&self, id: i64, by: &str, note: &str) -> Result<Recorded> {
        dispatch!(self.note(id, by, note))
    }

    /// Resolves an alert by hand. Its rule's tracker is left alone: if the
    /// condition still holds and worsens, that is a new alert.
    pub fn resolve(&self, id: i64, by: &str, note: Option<&str>) -> Result<Recorded> {
        dispatch!(self.resolve(id, by, note))
    }

    /// Rules configured by API: (id, spec JSON).
    pub fn rules(&self) -> Result<Vec<(String, String)>> {
        dispatch!(self.rules())
    }

    /// Creates or replaces a rule configured by API.
    pub fn put_rule(&self, id: &str, spec: &str, by: &str) -> Result<()> {
        dispatch!(self.put_rule(id, spec, by))
    }

    /// Deletes a rule configured by API.
    pub fn delete_rule(&self, id: &str) -> Result<()> {
        dispatch!(self.delete_rule(id))
    }

    /// Adds a webhook subscriber.
    pub fn add_webhook(&self, w: &Webhook) -> Result<()> {
        dispatch!(self.add_webhook(w))
    }

    /// Removes a webhook subscriber and its outbox.
    pub fn delete_webhook(&self, id: &str) -> Result<()> {
        dispatch!(self.delete_webhook(id))
    }

    /// Every webhook subscriber with its health.
    pub fn webhooks(&self) -> Result<Vec<Webhook>> {
        dispatch!(self.webhooks())
    }

    /// The oldest notifications waiting for `webhook`.
    pub fn outgoing(&self, webhook: &str, limit: usize) -> Result<Vec<Outgoing>> {
        dispatch!(self.outgoing(webhook, limit))
    }

    /// The receiver acknowledged `row`: deletes it and records the success.
    pub fn delivered(&self, webhook: &str, row: i64, now: Timestamp) -> Result<()> {
        dispatch!(self.delivered(webhook, row, now))
    }

    /// An attempt failed; returns the consecutive errors now.
    pub fn failed(&self, webhook: &str, error: &str, now: Timestamp) -> Result<u32> {
        dispatch!(self.failed(webhook, error, now))
    }

    /// Notifications waiting, over every subscriber.
    pub fn outbox_depth(&self) -> Result<u64> {
        dispatch!(self.outbox_depth())
    }

    /// Adds a silence; returns its id.
    pub fn add_silence(&self, s: &Silence) -> Result<i64> {
        dispatch!(self.add_silence(s))
    }

    /// Ends a silence early (kept for the audit trail).
    pub fn cancel_silence(&self, id: i64, by: &str) -> Result<()> {
        dispatch!(self.cancel_silence(id, by))
    }

    /// Silences in force at `now`.
    pub fn silences(&self, now: Timestamp) -> Result<Vec<Silence>> {
        dispatch!(self.silences(now))
    }
}

impl SqliteAlerts {
    fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("state.db");
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The evaluator's position in the ingest log.
    pub(crate) fn cursor(&self) -> Result<i64> {
        self.meta("cursor")
    }

    fn meta(&self, key: &str) -> Result<i64> {
        self.conn()
            .query_row("SELECT value FROM alert_meta WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(|e| self.sql(e))
    }

    /// Every tracker kept.
    pub(crate) fn trackers(&self) -> Result<Vec<(Key, State)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT rule, sensor, state FROM alert_trackers")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (rule, sensor, state) = row.map_err(|e| self.sql(e))?;
            let state: State = serde_json::from_str(&state).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("tracker ({rule}, {sensor})"),
                message: e.to_string(),
            })?;
            out.push(((rule, sensor), state));
        }
        Ok(out)
    }

    /// Records one evaluation step in one transaction: `changes` (each
    /// with its timeline event and, unless muted, an outbox row for every
    /// webhook whose filter it passes), the `trackers` it touched, and the
    /// new log position `cursor` (if it moved). Returns what each change
    /// became, in order.
    pub(crate) fn record(
        &self,
        changes: &[ChangeRecord],
        trackers: &[((&str, &str), Option<&State>)],
        cursor: Option<i64>,
        now: Timestamp,
    ) -> Result<Vec<Recorded>> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let hooks = webhooks_in(&tx).map_err(|e| self.sql(e))?;
        let silences = silences_in(&tx, now).map_err(|e| self.sql(e))?;
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            let Some(rec) = apply_change(&tx, c, now).map_err(|e| self.sql(e))? else {
                continue;
            };
            let muted = silences
                .iter()
                .any(|s| s.mutes(&c.key.0, &c.key.1, c.subject.kind, now));
            if !muted {
                queue(&tx, &hooks, &rec, now).map_err(|e| self.sql(e))?;
            }
            let mut rec = rec;
            rec.alert.muted = muted;
            out.push(rec);
        }
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO alert_trackers (rule, sensor, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (rule, sensor) DO UPDATE SET state = excluded.state",
                )
                .map_err(|e| self.sql(e))?;
            let mut del = tx
                .prepare_cached("DELETE FROM alert_trackers WHERE rule = ?1 AND sensor = ?2")
                .map_err(|e| self.sql(e))?;
            for (key, state) in trackers {
                match state {
                    Some(s) => {
                        let json = serde_json::to_string(s).map_err(|e| {
                            self.sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
                        })?;
                        put.execute(params![key.0, key.1, json])
                    }
                    None => del.execute(params![key.0, key.1]),
                }
                .map_err(|e| self.sql(e))?;
            }
        }
        if let Some(cursor) = cursor {
            tx.execute(
                "INSERT INTO alert_meta (key, value) VALUES ('cursor', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [cursor],
            )
            .map_err(|e| self.sql(e))?;
        }
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(out)
    }

    /// One alert.
    pub(crate) fn alert(&self, id: i64) -> Result<Alert> {
        let conn = self.conn();
        alert_in(&conn, id)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| StoreError::NotFound(format!("alert {id}")))
    }

    /// An alert's timeline, oldest first.
    pub(crate) fn timeline(&self, id: i64) -> Result<Vec<AlertEvent>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, alert, change, level, from_level, at_ms, recorded_ms, late, by, note
                 FROM alert_events WHERE alert = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([id], event_row).map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    pub(crate) fn events_since(&self, since: Timestamp) -> Result<Vec<AlertEvent>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, alert, change, level, from_level, at_ms, recorded_ms, late, by, note
                 FROM alert_events WHERE recorded_ms >= ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([since.0], event_row)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// Alerts matching `filter`, most recently changed first.
    pub(crate) fn alerts(&self, f: &AlertFilter) -> Result<Vec<Alert>> {
        let conn = self.conn();
        let states =
            serde_json::to_string(&f.states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into());
        let kinds = kinds_json(&f.kinds);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts
                 WHERE (?1 = '[]' OR state IN (SELECT value FROM json_each(?1)))
                   AND (?2 = '[]' OR kind IN (SELECT value FROM json_each(?2)))
                   AND (?3 IS NULL OR sensor = ?3)
                   AND (?4 IS NULL OR rule = ?4)
                   AND (?5 IS NULL OR district = ?5)
                   AND (?6 IS NULL OR peak >= ?6)
                   AND (?7 = 0 OR public = 1)
                   AND (?8 IS NULL OR changed_ms >= ?8)
                   AND (?9 IS NULL OR since_ms < ?9)
                 ORDER BY changed_ms DESC, id DESC LIMIT ?10"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(
                params![
                    states,
                    kinds,
                    f.sensor,
                    f.rule,
                    f.district,
                    f.min_level,
                    f.public_only,
                    f.since.map(|t| t.0),
                    f.until.map(|t| t.0),
                    f.limit as i64,
                ],
                alert_row,
            )
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// Acknowledges an open alert (again by someone else: the latest wins).
    pub(crate) fn acknowledge(&self, id: i64, by: &str, note: Option<&str>) -> Result<Recorded> {
        self.act(id, by, |tx, alert, now| {
            if alert.state == AlertState::Resolved {
                return Ok(Err(StoreError::Exists(format!(
                    "alert {id} is resolved; nothing"
                ))));
            }
            tx.execute(
                "UPDATE alerts SET state = 'acknowledged', ack_by = ?2, ack_ms = ?3 WHERE id = ?1",
                params![id, by, now.0],
            )?;
            Ok(Ok(("acknowledged", note.map(str::to_owned))))
        })
    }

    /// Sets (or clears, with `None`) the assignee.
    pub(crate) fn assign(&self, id: i64, by: &str, assignee: Option<&str>) -> Result<Recorded> {
        self.act(id, by, |tx, _, _| {
            tx.execute(
                "UPDATE alerts SET assignee = ?2 WHERE id = ?1",
                params![id, assignee],
            )?;
            Ok(Ok(("assigned", assignee.map(str::to_owned))))
        })
    }

    /// Adds a note to the timeline.
    pub(crate) fn note(&self, id: i64, by: &str, note: &str) -> Result<Recorded> {
        self.act(id, by, |_, _, _| Ok(Ok(("note", Some(note.to_owned())))))
    }

    /// Resolves an alert by hand. Its rule's tracker is left alone: if the
    /// condition still holds and worsens, that is a new alert.
    pub(crate) fn resolve(&self, id: i64, by: &str, note: Option<&str>) -> Result<Recorded> {
        self.act(id, by, |tx, alert, now| {
            if alert.state == AlertState::Resolved {
                return Ok(Err(StoreError::Exists(format!(
                    "alert {id} is resolved; nothing"
                ))));
            }
            tx.execute(
                "UPDATE alerts SET state = 'resolved', level = 0, resolved_ms = ?2,
                        resolved_by = ?3, changed_ms = ?2 WHERE id = ?1",
                params![id, now.0, by],
            )?;
            tx.execute("DELETE FROM alert_current WHERE alert = ?1", [id])?;
            Ok(Ok(("resolved", note.map(str::to_owned))))
        })
    }

    /// Runs a person's action on an alert in one transaction with its
    /// timeline event (and its notifications, for a resolution).
    fn act(
        &self,
        id: i64,
        by: &str,
        f: impl FnOnce(
            &Transaction<'_>,
            &Alert,
            Timestamp,
        ) -> rusqlite::Result<Result<(&'static str, Option<String>)>>,
    ) -> Result<Recorded> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let before = alert_in(&tx, id)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| StoreError::NotFound(format!("alert {id}")))?;
        let now = Timestamp::now();
        let (change, note) = f(&tx, &before, now).map_err(|e| self.sql(e))??;
        let level = if change == "resolved" {
            0
        } else {
            before.level
        };
        tx.execute(
            "INSERT INTO alert_events (alert, change, level, from_level, at_ms, recorded_ms, late, by, note)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0, ?6, ?7)",
            params![id, change, level, before.level, now.0, by, note],
        )
        .map_err(|e| self.sql(e))?;
        let event_id = tx.last_insert_rowid();
        let alert = alert_in(&tx, id)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| StoreError::NotFound(format!("alert {id}")))?;
        let event = AlertEvent {
            id: event_id,
            alert: id,
            change: change.into(),
            level,
            from: before.level,
            at: now,
            recorded: now,
            late: false,
            by: Some(by.to_owned()),
            note,
        };
        let rec = Recorded { alert, event };
        if matches!(change, "resolved" | "acknowledged") {
            let hooks = webhooks_in(&tx).map_err(|e| self.sql(e))?;
            queue(&tx, &hooks, &rec, now).map_err(|e| self.sql(e))?;
        }
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(rec)
    }

    /// Rules configured by API: (id, spec JSON).
    pub(crate) fn rules(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, spec FROM alert_rules ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// Creates or replaces a rule configured by API.
    pub(crate) fn put_rule(&self, id: &str, spec: &str, by: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO alert_rules (id, spec, updated_ms, updated_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec,
                     updated_ms = excluded.updated_ms, updated_by = excluded.updated_by",
                params![id, spec, Timestamp::now().0, by],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Deletes a rule configured by API.
    pub(crate) fn delete_rule(&self, id: &str) -> Result<()> {
        let n = self
            .conn()
            .execute("DELETE FROM alert_rules WHERE id = ?1", [id])
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("alert rule {id:?}")));
        }
        Ok(())
    }

    /// Adds a webhook subscriber.
    pub(crate) fn add_webhook(&self, w: &Webhook) -> Result<()> {
        let n = self
            .conn()
            .execute(
                "INSERT INTO webhooks (id, url, secret, kinds, districts, min_level, created_by, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
                params![
                    w.id,
                    w.url,
                    w.secret,
                    kinds_json(&w.kinds),
                    serde_json::to_string(&w.districts).unwrap_or_else(|_| "[]".into()),
                    w.min_level,
                    w.created_by,
                    w.created.0
                ],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(StoreError::Exists(format!("webhook {:?}", w.id)));
        }
        Ok(())
    }

    /// Removes a webhook subscriber and its outbox.
    pub(crate) fn delete_webhook(&self, id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let n = tx
            .execute("DELETE FROM webhooks WHERE id = ?1", [id])
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("webhook {id:?}")));
        }
        tx.execute("DELETE FROM outbox WHERE webhook = ?1", [id])
            .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every webhook subscriber with its health.
    pub(crate) fn webhooks(&self) -> Result<Vec<Webhook>> {
        let conn = self.conn();
        webhooks_in(&conn).map_err(|e| self.sql(e))
    }

    /// The oldest notifications waiting for `webhook`.
    pub(crate) fn outgoing(&self, webhook: &str, limit: usize) -> Result<Vec<Outgoing>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, msg_id, body, queued_ms FROM outbox WHERE webhook = ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![webhook, limit as i64], |r| {
                Ok(Outgoing {
                    row: r.get(0)?,
                    msg_id: r.get(1)?,
                    body: r.get(2)?,
                    queued: Timestamp(r.get(3)?),
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// The receiver acknowledged `row`: deletes it and records the success.
    pub(crate) fn delivered(&self, webhook: &str, row: i64, now: Timestamp) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        tx.execute("DELETE FROM outbox WHERE id = ?1", [row])
            .map_err(|e| self.sql(e))?;
        tx.execute(
            "UPDATE webhooks SET last_success_ms = ?2, consecutive_errors = 0,
                 delivered = delivered + 1 WHERE id = ?1",
            params![webhook, now.0],
        )
        .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// An attempt failed; returns the consecutive errors now.
    pub(crate) fn failed(&self, webhook: &str, error: &str, now: Timestamp) -> Result<u32> {
        let conn = self.conn();
        conn.query_row(
            "UPDATE webhooks SET last_failure_ms = ?2, last_error = ?3,
                 consecutive_errors = consecutive_errors + 1 WHERE id = ?1
             RETURNING consecutive_errors",
            params![webhook, now.0, error],
            |r| r.get(0),
        )
        .optional()
        .map(|n| n.unwrap_or(0))
        .map_err(|e| self.sql(e))
    }

    /// Notifications waiting, over every subscriber.
    pub(crate) fn outbox_depth(&self) -> Result<u64> {
        self.conn()
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.sql(e))
    }

    /// Adds a silence; returns its id.
    pub(crate) fn add_silence(&self, s: &Silence) -> Result<i64> {
        let conn = self.conn();
        let spec = serde_json::to_string(s)
            .map_err(|e| self.sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        conn.execute(
            "INSERT INTO silences (spec, ends_ms) VALUES (?1, ?2)",
            params![spec, s.ends.0],
        )
        .map_err(|e| self.sql(e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Ends a silence early (kept for the audit trail).
    pub(crate) fn cancel_silence(&self, id: i64, by: &str) -> Result<()> {
        let n = self
            .conn()
            .execute(
                "UPDATE silences SET cancelled_by = ?2, cancelled_ms = ?3
                 WHERE id = ?1 AND cancelled_ms IS NULL",
                params![id, by, Timestamp::now().0],
            )
            .map_err(|e| self.sql(e))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("active silence {id}")));
        }
        Ok(())
    }

    /// Silences in force at `now`.
    pub(crate) fn silences(&self, now: Timestamp) -> Result<Vec<Silence>> {
        let conn = self.conn();
        silences_in(&conn, now).map_err(|e| self.sql(e))
    }
}

const ALERT_COLUMNS: &str = alert_columns!();

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let kind: String = r.get(4)?;
    let state: String = r.get(7)?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown {what} {v:?}").into(),
        )
    };
    Ok(Alert {
        id: r.get(0)?,
        rule: r.get(1)?,
        rule_name: r.get(2)?,
        sensor: r.get(3)?,
        kind: SensorKind::parse(&kind).ok_or_else(|| bad("kind", &kind))?,
        district: r.get(5)?,
        public: r.get(6)?,
        state: AlertState::parse(&state).ok_or_else(|| bad("state", &state))?,
        level: r.get(8)?,
        peak: r.get(9)?,
        level_label: r.get(10)?,
        since: Timestamp(r.get(11)?),
        changed: Timestamp(r.get(12)?),
        resolved_at: r.get::<_, Option<i64>>(13)?.map(Timestamp),
        resolved_by: r.get(14)?,
        ack_by: r.get(15)?,
        ack_at: r.get::<_, Option<i64>>(16)?.map(Timestamp),
        assignee: r.get(17)?,
        late: r.get(18)?,
        muted: false,
    })
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertEvent> {
    Ok(AlertEvent {
        id: r.get(0)?,
        alert: r.get(1)?,
        change: r.get(2)?,
        level: r.get(3)?,
        from: r.get(4)?,
        at: Timestamp(r.get(5)?),
        recorded: Timestamp(r.get(6)?),
        late: r.get(7)?,
        by: r.get(8)?,
        note: r.get(9)?,
    })
}

fn alert_in(conn: &Connection, id: i64) -> rusqlite::Result<Option<Alert>> {
    conn.prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"))?
        .query_row([id], alert_row)
        .optional()
}

pub(crate) fn change_name(c: &crate::Change) -> &'static str {
    match c {
        crate::Change::Raised { .. } => "raised",
        crate::Change::Reopened { .. } => "reopened",
        crate::Change::Escalated { .. } => "escalated",
        crate::Change::DeEscalated { .. } => "de_escalated",
        crate::Change::Resolved { .. } => "resolved",
    }
}

/// Applies one change of the condition to its alert: a new alert for a
/// raise (or any change with no current alert, e.g. after a resolution by
/// hand), the same alert otherwise. `None` for a clear with nothing open.
fn apply_change(
    tx: &Transaction<'_>,
    c: &ChangeRecord,
    now: Timestamp,
) -> rusqlite::Result<Option<Recorded>> {
    use crate::Change;
    let (rule, sensor) = (&c.key.0, &c.key.1);
    let current: Option<i64> = tx
        .prepare_cached("SELECT alert FROM alert_current WHERE rule = ?1 AND sensor = ?2")?
        .query_row(params![rule, sensor], |r| r.get(0))
        .optional()?;
    let at = c.change.at().0;
    let level = c.change.level();
    let current = match (current, c.change) {
        (None, Change::Resolved { .. }) => return Ok(None),
        (Some(id), Change::Raised { .. }) => {
            // A raise after the cool-down: the old alert stays resolved.
            let _ = id;
            None
        }
        (cur, _) => cur,
    };
    let from = match c.change {
        Change::Escalated { from, .. }
        | Change::DeEscalated { from, .. }
        | Change::Resolved { from, .. } => from,
        Change::Raised { .. } | Change::Reopened { .. } => 0,
    };
    let alert = match current {
        None => {
            let alert = tx
                .prepare_cached(concat!(
                    "INSERT INTO alerts (rule, rule_name, sensor, kind, district, public, state,
                         level, peak, level_label, since_ms, changed_ms, late)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7, ?7, ?8, ?9, ?9, ?10) RETURNING ",
                    alert_columns!()
                ))?
                .query_row(
                    params![
                        rule,
                        c.subject.rule_name,
                        sensor,
                        c.subject.kind.as_str(),
                        c.subject.district,
                        c.subject.public,
                        level,
                        c.level_label,
                        at,
                        c.late
                    ],
                    alert_row,
                )?;
            tx.prepare_cached(
                "INSERT INTO alert_current (rule, sensor, alert) VALUES (?1, ?2, ?3)
                 ON CONFLICT (rule, sensor) DO UPDATE SET alert = excluded.alert",
            )?
            .execute(params![rule, sensor, alert.id])?;
            alert
        }
        Some(id) => {
            let sql = match c.change {
                Change::Resolved { .. } => concat!(
                    "UPDATE alerts SET state = 'resolved', level = ?2, resolved_ms = ?4,
                         resolved_by = NULL, changed_ms = ?4, late = ?5
                     WHERE id = ?1 RETURNING ",
                    alert_columns!()
                ),
                Change::Reopened { .. } => concat!(
                    "UPDATE alerts SET state = 'open', level = ?2, peak = max(peak, ?2),
                         level_label = ?3, since_ms = ?4, changed_ms = ?4, resolved_ms = NULL,
                         resolved_by = NULL, ack_by = NULL, ack_ms = NULL, late = ?5
                     WHERE id = ?1 RETURNING ",
                    alert_columns!()
                ),
                // Worse than what was acknowledged: it needs attention again.
                Change::Escalated { .. } | Change::Raised { .. } => concat!(
                    "UPDATE alerts SET state = 'open', level = ?2, peak = max(peak, ?2),
                         level_label = ?3, changed_ms = ?4, late = ?5 WHERE id = ?1 RETURNING ",
                    alert_columns!()
                ),
                Change::DeEscalated { .. } => concat!(
                    "UPDATE alerts SET level = ?2, level_label = ?3, changed_ms = ?4, late = ?5
                     WHERE id = ?1 RETURNING ",
                    alert_columns!()
                ),
            };
            tx.prepare_cached(sql)?
                .query_row(params![id, level, c.level_label, at, c.late], alert_row)?
        }
    };
    let id = alert.id;
    let note = c.value.map(|v| format!("value {v}"));
    tx.prepare_cached("INSERT INTO alert_events (alert, change, level, from_level, at_ms, recorded_ms, late, by, note)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)")?.execute(params![id, change_name(&c.change), level, from, at, now.0, c.late, note],
    )?;
    let event_id = tx.last_insert_rowid();
    Ok(Some(Recorded {
        alert,
        event: AlertEvent {
            id: event_id,
            alert: id,
            change: change_name(&c.change).into(),
            level,
            from,
            at: Timestamp(at),
            recorded: now,
            late: c.late,
            by: None,
            note,
        },
    }))
}

fn webhooks_in(conn: &Connection) -> rusqlite::Result<Vec<Webhook>> {
    let mut stmt = conn.prepare_cached(
        "SELECT w.id, url, secret, kinds, districts, min_level, created_by, created_ms,
                last_success_ms, last_failure_ms, last_error, consecutive_errors, delivered,
                (SELECT count(*) FROM outbox o WHERE o.webhook = w.id)
         FROM webhooks w ORDER BY w.id",
    )?;
    let rows = stmt.query_map([], |r| {
        let kinds: String = r.get(3)?;
        let districts: String = r.get(4)?;
        let kinds: Vec<String> = serde_json::from_str(&kinds).unwrap_or_default();
        Ok(Webhook {
            id: r.get(0)?,
            url: r.get(1)?,
            secret: r.get(2)?,
            kinds: kinds.iter().filter_map(|k| SensorKind::parse(k)).collect(),
            districts: serde_json::from_str(&districts).unwrap_or_default(),
            min_level: r.get(5)?,
            created_by: r.get(6)?,
            created: Timestamp(r.get(7)?),
            health: WebhookHealth {
                last_success: r.get::<_, Option<i64>>(8)?.map(Timestamp),
                last_failure: r.get::<_, Option<i64>>(9)?.map(Timestamp),
                last_error: r.get(10)?,
                consecutive_errors: r.get(11)?,
                delivered: r.get::<_, i64>(12)? as u64,
                pending: r.get::<_, i64>(13)? as u64,
            },
        })
    })?;
    rows.collect()
}

fn silences_in(conn: &Connection, now: Timestamp) -> rusqlite::Result<Vec<Silence>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, spec FROM silences WHERE ends_ms > ?1 AND cancelled_ms IS NULL ORDER BY id",
    )?;
    let rows = stmt.query_map([now.0], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, spec) = row?;
        if let Ok(mut s) = serde_json::from_str::<Silence>(&spec) {
            s.id = id;
            out.push(s);
        }
    }
    Ok(out)
}

/// Whether `hook`'s filter passes `alert`.
pub fn passes(hook: &Webhook, alert: &Alert) -> bool {
    (hook.kinds.is_empty() || hook.kinds.contains(&alert.kind))
        && (hook.districts.is_empty() || hook.districts.contains(&alert.district))
        && alert.peak >= hook.min_level
}

/// The webhook body of an event (Standard Webhooks' `type`, `timestamp`,
/// `data`).
pub fn notification(rec: &Recorded) -> serde_json::Value {
    let a = &rec.alert;
    let e = &rec.event;
    serde_json::json!({
        "type": format!("alert.{}", e.change),
        "timestamp": e.recorded.to_rfc3339(),
        "data": {
            "alert": a.id,
            "event": e.id,
            "change": e.change,
            "rule": a.rule,
            "rule_name": a.rule_name,
            "sensor": a.sensor,
            "kind": a.kind.as_str(),
            "district": a.district,
            "state": a.state.as_str(),
            "level": e.level,
            "from_level": e.from,
            "level_label": a.level_label,
            "observed_at": e.at.to_rfc3339(),
            "since": a.since.to_rfc3339(),
            "late": e.late,
            "by": e.by,
            "note": e.note,
        }
    })
}

fn queue(
    tx: &Transaction<'_>,
    hooks: &[Webhook],
    rec: &Recorded,
    now: Timestamp,
) -> rusqlite::Result<()> {
    let mut body = None;
    let mut insert = tx.prepare_cached(
        "INSERT INTO outbox (webhook, msg_id, body, queued_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for h in hooks.iter().filter(|h| passes(h, &rec.alert)) {
        let body = body.get_or_insert_with(|| notification(rec).to_string());
        insert.execute(params![
            h.id,
            format!("msg_{}", rec.event.id),
            &*body,
            now.0
        ])?;
    }
    Ok(())
}
