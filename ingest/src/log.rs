//! The ingest log: the durable queue between receiving a reading and the
//! sink that stores it (DESIGN.md §4, "acknowledge only what is durable").
//!
//! ## Invariants
//! - An envelope's good readings are appended and committed
//!   (WAL, `synchronous = FULL`) before the caller acknowledges upstream
//!   (PUBACK to a gateway, manual ack to an external broker).
//! - An entry is deleted only after the sink confirmed every reading of it
//!   (SQLite commit, InfluxDB 204, or a dead-letter record for lines the
//!   server refused). Until then it survives kill -9 and power loss and is
//!   delivered again after a restart (counted as `replayed`).
//! - The log is bounded by a number of readings. When it is full, appends
//!   fail: nothing is acknowledged, so the gateway keeps the readings in its
//!   own spool and retries; the refusal is counted as `dropped{log_full}`.
//!   Nothing already in the log is ever dropped to make room.
//!
//! ## On disk
//! `ingest-log.db` in the data directory:
//! - `entries(id INTEGER PRIMARY KEY AUTOINCREMENT, gateway, readings,
//!   payload)`: one row per commit group (all the envelopes committed
//!   together), `payload` a JSON array of validated readings, each naming
//!   its gateway; `gateway` is that gateway, or `*` when several. AUTOINCREMENT matters: plain rowids are reused once the
//!   newest rows are deleted, and the drain reads strictly after its cursor,
//!   so a reused id would never be delivered (found by the outage test);
//! - `latest(sensor PRIMARY KEY, ts, values_json)`: the newest reading of
//!   each sensor, maintained in the same transaction as the append, for the
//!   live conditions view whatever the sink;
//! - `dead_letter(id, at_ms, sink, line, status, message)`: lines a sink's
//!   server refused (e.g. an InfluxDB field type conflict), with the
//!   server's message; written before the entries they came from are
//!   acknowledged, so nothing is lost silently and nothing retries forever.
//!
//! ## Concurrency
//! One writer thread owns the write connection and folds every queued
//! append and acknowledgement into one transaction (group commit: many
//! gateways share one fsync). Readers use their own connection.
//!
//! ## The in-memory tail
//! After a commit the writer also keeps the new entry's readings in memory
//! (bounded by [`TAIL_READINGS`]), shared with the appenders (for live
//! fan-out) behind one `Arc`. A drain that keeps up reads its batches from
//! there instead of parsing them back from disk; one that fell behind (or
//! a restart) reads the database. Either way the rows stay on disk until
//! the sink acknowledges them: the tail is a cache, never the record.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pantau_model::{SensorKind, Timestamp, Values};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::metrics::IngestMetrics;
use crate::store::LatestReading;
use crate::{Error, Result};

/// Commands queued to the writer before senders wait.
const QUEUE_DEPTH: usize = 4096;
/// Most commands folded into one transaction.
const MAX_GROUP: usize = 1024;
/// Readings after which a group stops taking more (keeps entries, and so
/// the drain's batches, a sensible size).
const MAX_GROUP_READINGS: usize = 20_000;
/// Most readings kept in the in-memory tail for the drain.
const TAIL_READINGS: usize = 100_000;

/// A validated reading as kept in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedReading {
    /// Sensor id.
    #[serde(rename = "s")]
    pub sensor: String,
    /// The gateway that reported it.
    #[serde(rename = "g")]
    pub gateway: String,
    /// Sensor kind at the time it was received.
    #[serde(rename = "k")]
    pub kind: SensorKind,
    /// Observation time.
    #[serde(rename = "t")]
    pub ts: Timestamp,
    /// Values.
    #[serde(rename = "v")]
    pub values: Values,
}

/// One entry read back from the log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Log id.
    pub id: i64,
    /// The gateway that sent it.
    pub gateway: String,
    /// Its readings (shared with the in-memory tail and the live feed).
    pub readings: Arc<Vec<LoggedReading>>,
}

/// The readings of one append, as committed: a range of the commit
/// group's shared entry.
#[derive(Debug, Clone)]
pub struct Committed {
    entry: Arc<Vec<LoggedReading>>,
    range: Range<usize>,
}

impl Committed {
    /// The appended readings.
    pub fn readings(&self) -> &[LoggedReading] {
        &self.entry[self.range.clone()]
    }
}

/// A run of consecutive entries handed to a sink.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The entries, oldest first.
    pub entries: Vec<LogEntry>,
    /// Whether any entry was in the log before this process started.
    pub replayed: bool,
}

impl Batch {
    /// Number of readings.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|e| e.readings.len()).sum()
    }

    /// Whether there are no readings.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids of the entries.
    pub fn ids(&self) -> Vec<i64> {
        self.entries.iter().map(|e| e.id).collect()
    }
}

enum Cmd {
    Append {
        readings: Vec<LoggedReading>,
        /// Answered with the committed readings.
        done: oneshot::Sender<Result<Committed>>,
    },
    Ack {
        ids: Vec<i64>,
        done: oneshot::Sender<Result<()>>,
    },
    DeadLetter {
        records: Vec<DeadLetter>,
        done: oneshot::Sender<Result<()>>,
    },
}

/// A line a sink's server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Which sink (`influxdb v1 http://...`).
    pub sink: String,
    /// The refused line.
    pub line: String,
    /// HTTP status of the refusal.
    pub status: u16,
    /// The server's message.
    pub message: String,
}

/// Handle to the ingest log.
#[derive(Debug)]
pub struct IngestLog {
    /// The database file.
    path: PathBuf,
    /// Queue to the writer thread.
    tx: SyncSender<Cmd>,
    /// Read connection.
    reader: Mutex<Connection>,
    /// Accounting shared with the writer thread, which alone updates it.
    shared: Arc<Shared>,
    /// Recently committed entries, for a drain that keeps up.
    tail: Arc<Mutex<Tail>>,
    /// Highest id present when the log was opened (≤ it = replay).
    replay_until: i64,
    /// Counters.
    metrics: IngestMetrics,
}

/// Counts kept by the writer thread. Keeping them there makes `append`
/// cancel-safe: a caller that goes away after queueing its entry cannot
/// leave the bound or the drain's arithmetic wrong.
#[derive(Debug)]
struct Shared {
    /// Most readings the log may hold.
    max_readings: u64,
    /// Readings in the log now (appended and not yet acknowledged).
    pending: AtomicU64,
    /// Readings ever committed by this process plus those found at start.
    appended: AtomicU64,
    /// Woken on every commit that appended something.
    notify: Notify,
}

/// Entries committed by this process and not yet read, newest last.
#[derive(Debug, Default)]
struct Tail {
    /// Every committed entry with an id above `floor` is in `entries`.
    floor: i64,
    entries: VecDeque<LogEntry>,
    /// Readings in `entries`.
    readings: usize,
    /// Most readings kept.
    max: usize,
}

impl Tail {
    fn push(&mut self, entry: LogEntry) {
        self.readings += entry.readings.len();
        self.entries.push_back(entry);
        // Over the bound, forget the oldest: the drain reads them from disk.
        while self.readings > self.max && self.entries.len() > 1 {
            self.pop();
        }
    }

    fn pop(&mut self) -> Option<LogEntry> {
        let e = self.entries.pop_front()?;
        self.readings -= e.readings.len();
        self.floor = e.id;
        Some(e)
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Append { readings, .. } => write!(f, "Append({})", readings.len()),
            Cmd::Ack { ids, .. } => write!(f, "Ack({})", ids.len()),
            Cmd::DeadLetter { records, .. } => write!(f, "DeadLetter({})", records.len()),
        }
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let sql = |source| Error::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS entries (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             gateway TEXT NOT NULL,
             readings INTEGER NOT NULL,
             payload TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS dead_letter (
             id INTEGER PRIMARY KEY,
             at_ms INTEGER NOT NULL,
             sink TEXT NOT NULL,
             line TEXT NOT NULL,
             status INTEGER NOT NULL,
             message TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS latest (
             sensor TEXT PRIMARY KEY,
             ts INTEGER NOT NULL,
             values_json TEXT NOT NULL
         ) WITHOUT ROWID;",
    )
    .map_err(sql)?;
    Ok(conn)
}

impl IngestLog {
    /// Opens (creating if needed) `ingest-log.db` in `data_dir`, bounded to
    /// `max_readings`, and starts its writer thread.
    pub fn open(data_dir: &Path, max_readings: u64, metrics: IngestMetrics) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join("ingest-log.db");
        let writer = open_conn(&path)?;
        let reader = open_conn(&path)?;
        let (pending_now, max_id): (i64, i64) = reader
            .query_row(
                "SELECT coalesce(sum(readings), 0), coalesce(max(id), 0) FROM entries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|source| Error::Sqlite {
                path: path.clone(),
                source,
            })?;
        let shared = Arc::new(Shared {
            max_readings,
            pending: AtomicU64::new(pending_now as u64),
            appended: AtomicU64::new(pending_now as u64),
            notify: Notify::new(),
        });
        metrics.log_pending.set(pending_now);
        let tail = Arc::new(Mutex::new(Tail {
            floor: max_id,
            max: TAIL_READINGS,
            ..Tail::default()
        }));
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        let writer = WriterThread {
            conn: writer,
            path: path.clone(),
            shared: shared.clone(),
            tail: tail.clone(),
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("ingest-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        if pending_now > 0 {
            tracing::info!(
                readings = pending_now,
                entries_up_to = max_id,
                "Ingest log has readings to replay."
            );
        }
        Ok(Self {
            path,
            tx,
            reader: Mutex::new(reader),
            shared,
            tail,
            replay_until: max_id,
            metrics,
        })
    }

    async fn send(&self, cmd: Cmd) -> Result<()> {
        crate::queue::send(&self.tx, cmd).await
    }

    /// Appends readings and returns once they are committed.
    /// Cancel-safe: once queued, the entry is committed and counted whether
    /// or not the caller still waits.
    pub async fn append(&self, readings: Vec<LoggedReading>) -> Result<Committed> {
        if readings.is_empty() {
            return Ok(Committed {
                entry: Arc::new(readings),
                range: 0..0,
            });
        }
        self.metrics.log_accepted.inc_by(readings.len() as u64);
        let (done, wait) = oneshot::channel();
        self.send(Cmd::Append { readings, done }).await?;
        wait.await.map_err(|_| Error::WriterGone)?
    }

    /// Deletes entries whose readings the sink has confirmed.
    pub async fn ack(&self, ids: Vec<i64>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.send(Cmd::Ack { ids, done }).await?;
        wait.await.map_err(|_| Error::WriterGone)?
    }

    /// Records refused lines durably.
    pub async fn dead_letter(&self, records: Vec<DeadLetter>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.send(Cmd::DeadLetter { records, done }).await?;
        wait.await.map_err(|_| Error::WriterGone)?
    }

    /// Every dead-lettered line, oldest first. Blocking.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT sink, line, status, message FROM dead_letter ORDER BY id")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeadLetter {
                    sink: r.get(0)?,
                    line: r.get(1)?,
                    status: r.get(2)?,
                    message: r.get(3)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Readings appended so far (including those found at start).
    pub fn appended(&self) -> u64 {
        self.shared.appended.load(Ordering::Acquire)
    }

    /// Readings in the log now.
    pub fn pending(&self) -> u64 {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Waits until something is appended (or `timeout` passes).
    pub async fn wait_for_append(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.shared.notify.notified()).await;
    }

    /// Bounds the in-memory tail to `max` readings (tests).
    #[cfg(test)]
    fn set_tail_max(&self, max: usize) {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).max = max;
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sql(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads entries after `after_id`, up to about `max_readings` readings
    /// (at least one entry): from the in-memory tail when it holds every
    /// entry after `after_id`, else from disk. Entries handed out from the
    /// tail leave it (a second read of them goes to disk). Blocking.
    pub fn read_after(&self, after_id: i64, max_readings: usize) -> Result<Batch> {
        {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            if after_id >= tail.floor {
                while tail.entries.front().is_some_and(|e| e.id <= after_id) {
                    tail.pop();
                }
                let mut entries = Vec::new();
                let mut total = 0;
                while total < max_readings {
                    let Some(e) = tail.pop() else { break };
                    total += e.readings.len();
                    entries.push(e);
                }
                let replayed = entries.first().is_some_and(|e| e.id <= self.replay_until);
                return Ok(Batch { entries, replayed });
            }
        }
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, gateway, payload FROM entries WHERE id > ?1 ORDER BY id LIMIT 10000",
            )
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([after_id]).map_err(|e| self.sql(e))?;
        let mut entries = Vec::new();
        let mut total = 0;
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let id: i64 = row.get(0).map_err(|e| self.sql(e))?;
            let gateway: String = row.get(1).map_err(|e| self.sql(e))?;
            let payload: String = row.get(2).map_err(|e| self.sql(e))?;
            let readings: Vec<LoggedReading> =
                serde_json::from_str(&payload).map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    id,
                    message: e.to_string(),
                })?;
            total += readings.len();
            entries.push(LogEntry {
                id,
                gateway,
                readings: Arc::new(readings),
            });
            if total >= max_readings {
                break;
            }
        }
        let replayed = entries.first().is_some_and(|e| e.id <= self.replay_until);
        Ok(Batch { entries, replayed })
    }

    /// The newest reading of every sensor. Blocking.
    pub fn latest_all(&self) -> Result<Vec<LatestReading>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT sensor, ts, values_json FROM latest ORDER BY sensor")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                let json: String = r.get(2)?;
                Ok(LatestReading {
                    sensor: r.get(0)?,
                    ts: Timestamp(r.get(1)?),
                    values: serde_json::from_str(&json).unwrap_or_default(),
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}

/// The writer thread: owns the write connection.
struct WriterThread {
    conn: Connection,
    path: PathBuf,
    shared: Arc<Shared>,
    tail: Arc<Mutex<Tail>>,
    metrics: IngestMetrics,
}

impl WriterThread {
    fn run(mut self, rx: Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let size = |cmd: &Cmd| match cmd {
                Cmd::Append { readings, .. } => readings.len(),
                _ => 0,
            };
            let mut queued = size(&group[0]);
            while group.len() < MAX_GROUP && queued < MAX_GROUP_READINGS {
                match rx.try_recv() {
                    Ok(cmd) => {
                        queued += size(&cmd);
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Cmd>) {
        let (shared, metrics) = (&self.shared, &self.metrics);
        // Admission against the bound happens here, in arrival order, so
        // concurrent appends can never overshoot it. Every admitted append
        // of the group shares one entry: one row and one serialisation per
        // commit instead of one per envelope.
        let mut room = shared
            .max_readings
            .saturating_sub(shared.pending.load(Ordering::Acquire));
        let mut readings: Vec<LoggedReading> = Vec::new();
        let mut answers = Vec::new();
        let mut others = Vec::new();
        for cmd in group {
            match cmd {
                Cmd::Append { readings: r, done } => {
                    let n = r.len();
                    if n as u64 <= room {
                        room -= n as u64;
                        let at = readings.len();
                        readings.extend(r);
                        answers.push((done, at..at + n));
                    } else {
                        metrics.drop_readings("log_full", n as u64);
                        let _ = done.send(Err(Error::LogFull {
                            max_readings: shared.max_readings,
                        }));
                    }
                }
                other => others.push(other),
            }
        }
        let started = std::time::Instant::now();
        let result = commit(&mut self.conn, &readings, &others);
        metrics
            .log_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((id, acked)) => {
                let added = readings.len() as u64;
                let entry = Arc::new(readings);
                if let Some(id) = id {
                    // In the tail before it is counted, so a drain woken by
                    // the count finds it.
                    let gateway = entry_gateway(&entry).to_owned();
                    self.tail
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(LogEntry {
                            id,
                            gateway,
                            readings: entry.clone(),
                        });
                }
                shared.pending.fetch_add(added, Ordering::AcqRel);
                shared.pending.fetch_sub(acked, Ordering::AcqRel);
                shared.appended.fetch_add(added, Ordering::AcqRel);
                metrics.log_persisted.inc_by(added);
                metrics
                    .log_pending
                    .set(shared.pending.load(Ordering::Acquire) as i64);
                if added > 0 {
                    shared.notify.notify_waiters();
                }
                for (done, range) in answers {
                    let _ = done.send(Ok(Committed {
                        entry: entry.clone(),
                        range,
                    }));
                }
                for cmd in others {
                    match cmd {
                        Cmd::Ack { done, .. } | Cmd::DeadLetter { done, .. } => {
                            let _ = done.send(Ok(()));
                        }
                        Cmd::Append { .. } => {}
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(path = %self.path.display(), error = %message, "Ingest log commit failed.");
                let err = || Error::CommitFailed(message.clone());
                for (done, _) in answers {
                    let _ = done.send(Err(err()));
                }
                for cmd in others {
                    match cmd {
                        Cmd::Ack { done, .. } | Cmd::DeadLetter { done, .. } => {
                            let _ = done.send(Err(err()));
                        }
                        Cmd::Append { done, .. } => {
                            let _ = done.send(Err(err()));
                        }
                    }
                }
            }
        }
    }
}

/// The gateway of an entry, or `*` when its readings come from several.
fn entry_gateway(readings: &[LoggedReading]) -> &str {
    match readings.first() {
        Some(first) if readings.iter().all(|r| r.gateway == first.gateway) => {
            first.gateway.as_str()
        }
        _ => "*",
    }
}

/// Commits a group: the admitted readings as one entry (returning its id,
/// if there were any) and the acknowledgements and dead letters (returning
/// the readings the acknowledgements removed).
fn commit(
    conn: &mut Connection,
    readings: &[LoggedReading],
    others: &[Cmd],
) -> rusqlite::Result<(Option<i64>, u64)> {
    let tx = conn.transaction()?;
    let mut id = None;
    let mut acked = 0u64;
    {
        let mut count = tx.prepare_cached("SELECT readings FROM entries WHERE id = ?1")?;
        let mut delete = tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?;
        let mut dead = tx.prepare_cached(
            "INSERT INTO dead_letter (at_ms, sink, line, status, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for cmd in others {
            match cmd {
                Cmd::Append { .. } => {}
                Cmd::DeadLetter { records, .. } => {
                    let now = Timestamp::now().millis();
                    for d in records {
                        dead.execute(params![now, d.sink, d.line, d.status, d.message])?;
                    }
                }
                Cmd::Ack { ids: acks, .. } => {
                    for id in acks {
                        let n: Option<i64> = count
                            .query_row([id], |r| r.get(0))
                            .map(Some)
                            .or_else(|e| match e {
                                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                                e => Err(e),
                            })?;
                        if let Some(n) = n {
                            delete.execute([id])?;
                            acked += n as u64;
                        }
                    }
                }
            }
        }
        if !readings.is_empty() {
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (gateway, readings, payload) VALUES (?1, ?2, ?3)",
            )?;
            let payload = serde_json::to_string(readings)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            insert.execute(params![
                entry_gateway(readings),
                readings.len() as i64,
                payload
            ])?;
            id = Some(tx.last_insert_rowid());
            // Only the newest reading per sensor of the whole group
            // reaches the `latest` table (one upsert per sensor).
            let mut newest: std::collections::HashMap<&str, &LoggedReading> =
                std::collections::HashMap::new();
            for r in readings {
                match newest.get(r.sensor.as_str()) {
                    Some(seen) if seen.ts > r.ts => {}
                    _ => {
                        newest.insert(r.sensor.as_str(), r);
                    }
                }
            }
            let mut latest = tx.prepare_cached(
                "INSERT INTO latest (sensor, ts, values_json) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sensor) DO UPDATE SET ts = excluded.ts, values_json = excluded.values_json
                 WHERE excluded.ts >= latest.ts",
            )?;
            for r in newest.values() {
                let json = serde_json::to_string(&r.values)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                latest.execute(params![r.sensor, r.ts.0, json])?;
            }
        }
    }
    tx.commit()?;
    Ok((id, acked))
}

#[cfg(test)]
mod tests;
