//! The embedded time-series store (SQLite, WAL), the default sink.
//!
//! ## Layout
//! - Raw samples, one row per (sensor, field, ts), in daily partitions
//!   `samples_d{day}`. A replayed reading overwrites itself (upsert), so
//!   at-least-once delivery gives exactly-once storage.
//! - 1-minute rollups (`rollup_1m_d{day}`, daily partitions) and 1-hour
//!   rollups (`rollup_1h_p{n}`, 64-day partitions) holding count, sum, min,
//!   max and last per window. They are recomputed from the level below for
//!   every window a commit touched, so a replay never double-counts.
//! - `partitions`: the catalog of partition tables and their time spans.
//!
//! Retention drops whole partitions (`DROP TABLE`), never row by row:
//! raw and 1-minute data after `retention`, 1-hour data after
//! `rollup_retention`.
//!
//! ## Writes
//! One writer thread fed by a bounded channel (never on tokio workers)
//! folds whatever is queued into one transaction (group commit) with
//! `synchronous = FULL`, and answers each batch only after the commit.

mod query;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pantau_model::{Reading, Timestamp, Values};
use rusqlite::{params, CachedStatement, Connection};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::group_commit::{self, GroupCommit, Limits};
use crate::history::Partial;
use crate::log::LoggedReading;
use crate::{Error, Result};
use schema::{Level, Window, DAY_MS, HOUR_MS, MINUTE_MS};

/// Queued write batches before senders wait.
const QUEUE_DEPTH: usize = 1024;
/// Most batches folded into one transaction.
const MAX_GROUP: usize = 256;
/// How often the writer looks for partitions past retention.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

struct WriteJob {
    rows: Rows,
    done: oneshot::Sender<Result<()>>,
}

/// What a write carries: plain readings, or entries of the ingest log
/// shared with it (no copy on the way from the log to the store).
enum Rows {
    Readings(Vec<Reading>),
    Logged(Vec<Arc<Vec<LoggedReading>>>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Readings(r) => r.len(),
            Rows::Logged(entries) => entries.iter().map(|e| e.len()).sum(),
        }
    }

    /// Each reading as (sensor, time, values).
    fn each(&self) -> Box<dyn Iterator<Item = (&str, Timestamp, &Values)> + '_> {
        match self {
            Rows::Readings(r) => Box::new(r.iter().map(|r| (r.sensor.as_str(), r.ts, &r.values))),
            Rows::Logged(entries) => Box::new(
                entries
                    .iter()
                    .flat_map(|e| e.iter())
                    .map(|r| (r.sensor.as_str(), r.ts, &r.values)),
            ),
        }
    }
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteJob({} readings)", self.rows.len())
    }
}

/// The newest reading of a sensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestReading {
    /// Sensor id.
    pub sensor: String,
    /// Observation time.
    pub ts: Timestamp,
    /// Field values as JSON (`{"water_level_cm":143.2}`).
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// How long data is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Raw samples and 1-minute rollups.
    pub raw: Duration,
    /// 1-hour rollups.
    pub rollup: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            raw: Duration::from_secs(90 * 86_400),
            rollup: Duration::from_secs(5 * 365 * 86_400),
        }
    }
}

/// Handle to the embedded store; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    /// The database file.
    path: PathBuf,
    /// Queue to the writer thread.
    writer: group_commit::Writer<WriteJob>,
    /// Read connection.
    reader: Mutex<Connection>,
}

pub(crate) fn open_conn(path: &Path) -> Result<Connection> {
    let conn = group_commit::open_db(
        path,
        "PRAGMA cache_size = -65536;
         CREATE TABLE IF NOT EXISTS partitions (
             name TEXT PRIMARY KEY,
             level TEXT NOT NULL,
             start_ms INTEGER NOT NULL,
             end_ms INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )?;
    // Statements are per partition and level: keep enough of them parsed.
    conn.set_prepared_statement_cache_capacity(512);
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) `readings.db` in `data_dir` with the
    /// default retention and starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, Retention::default())
    }

    /// Opens the store with a retention.
    pub fn open_with(data_dir: &Path, retention: Retention) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join("readings.db");
        let writer = open_conn(&path)?;
        let reader = open_conn(&path)?;
        let writer = group_commit::Writer::spawn(
            "store-writer",
            &path,
            Writer::new(writer, path.clone(), retention),
            Limits {
                depth: QUEUE_DEPTH,
                max_group: MAX_GROUP,
                max_weight: usize::MAX,
                idle: Some(RETENTION_EVERY),
            },
        )?;
        Ok(Self {
            path,
            writer,
            reader: Mutex::new(reader),
        })
    }

    /// Commits readings durably; returns once they are on disk.
    pub async fn write(&self, readings: Vec<Reading>) -> Result<()> {
        self.write_rows(Rows::Readings(readings)).await
    }

    /// Commits entries of the ingest log durably; returns once they are on
    /// disk.
    pub async fn write_logged(&self, entries: Vec<Arc<Vec<LoggedReading>>>) -> Result<()> {
        self.write_rows(Rows::Logged(entries)).await
    }

    async fn write_rows(&self, rows: Rows) -> Result<()> {
        if rows.len() == 0 {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.writer.send(WriteJob { rows, done }).await?;
        wait.await.map_err(|_| Error::WriterGone)?
    }

    pub(crate) fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn sql(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

impl GroupCommit for Writer {
    type Job = WriteJob;

    fn commit_group(&mut self, group: Vec<WriteJob>) {
        let result = self.commit(&group);
        if let Err(e) = &result {
            tracing::error!(path = %self.path.display(), error = %e, batches = group.len(), "Store commit failed.");
            // Table creation may have been rolled back with the
            // transaction: forget what we think exists.
            self.known.clear();
        }
        for job in group {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::CommitFailed(e.to_string())),
            };
            // The caller may have gone away; the data is committed anyway.
            let _ = job.done.send(answer);
        }
    }

    fn housekeeping(&mut self) {
        self.apply_retention();
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    path: PathBuf,
    retention: Retention,
    /// Partition tables known to exist.
    known: HashSet<String>,
    last_retention: Option<Instant>,
}

impl Writer {
    fn new(conn: Connection, path: PathBuf, retention: Retention) -> Self {
        Self {
            conn,
            path,
            retention,
            known: HashSet::new(),
            last_retention: None,
        }
    }

    /// Commits a group. Rollups are maintained incrementally for new
    /// samples (their partial aggregates are merged per window, one upsert
    /// per window and level); a window where an existing sample changed
    /// value is recomputed from the level below instead, so replays and
    /// corrections never double-count.
    fn commit(&mut self, group: &[WriteJob]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let mut minute_delta: HashMap<Window<'_>, Partial> = HashMap::new();
        let mut dirty_minutes: BTreeSet<Window<'_>> = BTreeSet::new();
        // Readings of a group nearly always share a day: the partition's
        // statements are looked up once per run of readings, not per sample.
        let mut current: Option<(i64, CachedStatement<'_>, CachedStatement<'_>)> = None;
        for (sensor, ts, values) in group.iter().flat_map(|job| job.rows.each()) {
            let day = ts.0.div_euclid(DAY_MS);
            let (insert, update) = match &mut current {
                Some((d, insert, update)) if *d == day => (insert, update),
                slot => {
                    let table = schema::ensure(&tx, &mut self.known, Level::Raw, ts.0)?;
                    let insert = tx.prepare_cached(&format!(
                        "INSERT OR IGNORE INTO {table} (sensor, field, ts, value) VALUES (?1, ?2, ?3, ?4)"
                    ))?;
                    let update = tx.prepare_cached(&format!(
                        "UPDATE {table} SET value = ?4 WHERE sensor = ?1 AND field = ?2 AND ts = ?3 AND value IS NOT ?4"
                    ))?;
                    let (_, insert, update) = slot.insert((day, insert, update));
                    (insert, update)
                }
            };
            let bucket = ts.0.div_euclid(MINUTE_MS) * MINUTE_MS;
            for (field, value) in values {
                let v = value.as_f64();
                let key = (sensor, field.as_str(), bucket);
                if insert.execute(params![sensor, field, ts.0, v])? == 1 {
                    let p = Partial {
                        n: 1,
                        sum: v,
                        min: v,
                        max: v,
                        last_ts: ts.0,
                        last: v,
                    };
                    minute_delta
                        .entry(key)
                        .and_modify(|w| w.merge(&p))
                        .or_insert(p);
                } else if update.execute(params![sensor, field, ts.0, v])? == 1 {
                    dirty_minutes.insert(key);
                }
            }
        }
        drop(current);
        fn hour_of<'a>(&(sensor, field, minute): &Window<'a>) -> Window<'a> {
            (sensor, field, minute.div_euclid(HOUR_MS) * HOUR_MS)
        }
        let mut hour_delta: HashMap<Window<'_>, Partial> = HashMap::new();
        let mut dirty_hours: BTreeSet<Window<'_>> = BTreeSet::new();
        for (key, p) in &minute_delta {
            if dirty_minutes.contains(key) {
                continue;
            }
            schema::merge(&tx, &mut self.known, Level::Minute, key, p)?;
            hour_delta
                .entry(hour_of(key))
                .and_modify(|w| w.merge(p))
                .or_insert(*p);
        }
        for key in &dirty_minutes {
            schema::recompute(&tx, &mut self.known, Level::Minute, key)?;
            dirty_hours.insert(hour_of(key));
        }
        for (key, p) in &hour_delta {
            if !dirty_hours.contains(key) {
                schema::merge(&tx, &mut self.known, Level::Hour, key, p)?;
            }
        }
        for key in &dirty_hours {
            schema::recompute(&tx, &mut self.known, Level::Hour, key)?;
        }
        tx.commit()
    }

    fn apply_retention(&mut self) {
        if self
            .last_retention
            .is_some_and(|t| t.elapsed() < RETENTION_EVERY)
        {
            return;
        }
        self.last_retention = Some(Instant::now());
        let now = Timestamp::now().millis();
        let raw_cut = now - self.retention.raw.as_millis() as i64;
        let rollup_cut = now - self.retention.rollup.as_millis() as i64;
        match schema::drop_before(&self.conn, raw_cut, rollup_cut) {
            Ok(dropped) => {
                for name in &dropped {
                    self.known.remove(name);
                }
                if !dropped.is_empty() {
                    tracing::info!(
                        partitions = dropped.len(),
                        "Dropped partitions past retention."
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "Applying retention failed."),
        }
    }
}
