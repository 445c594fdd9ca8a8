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
//!   its gateway; `gateway` is that gateway, or `*` when several
//!   ([`LogEntry::gateway`] is `None` then). AUTOINCREMENT matters: plain
//!   rowids are reused once the newest rows are deleted, and the drain reads strictly after its cursor,
//!   so a reused id would never be delivered (found by the outage test);
//! - `latest(sensor PRIMARY KEY, ts, values_json)`: the newest reading of
//!   each sensor, maintained in the same transaction as the append, for the
//!   live conditions view whatever the sink (`latest.rs`, the read model);
//! - `rejected(id AUTOINCREMENT, at_ms, gateway, sensor, reason, message,
//!   reading)`: every reading that validation refused, with its reason and
//!   the reading as received, written in the same transaction as the
//!   accepted readings of its envelope (so the PUBACK that lets the gateway
//!   delete it means it is kept here). An admin re-ingests them once the
//!   cause is fixed (a sensor registered, a gateway's clock set): the
//!   readings that now pass are appended and their rows deleted in one
//!   commit. Bounded by [`MAX_KEPT_REJECTIONS`] rows; past it the oldest go,
//!   counted as `dropped{rejected_overflow}`;
//! - `dead_letter(id, at_ms, sink, line, status, message)`: lines a sink's
//!   server refused (e.g. an InfluxDB field type conflict), with the
//!   server's message; written before the entries they came from are
//!   acknowledged, so nothing is lost silently and nothing retries forever.
//!
//! ## Concurrency
//! One writer thread (`writer.rs`, on the shared
//! [`crate::group_commit`] writer) owns the write connection and folds every
//! queued append and acknowledgement into one transaction (group commit:
//! many gateways share one fsync). Admission against the bound and the
//! counts happen there, in arrival order. Readers use their own connection.
//!
//! ## The in-memory tail
//! After a commit the writer also keeps the new entry's readings in memory
//! (`tail.rs`, bounded by [`TAIL_READINGS`]), shared with the appenders (for live
//! fan-out) behind one `Arc`. A drain that keeps up reads its batches from
//! there instead of parsing them back from disk; one that fell behind (or
//! a restart) reads the database. Either way the rows stay on disk until
//! the sink acknowledges them: the tail is a cache, never the record.

mod latest;
mod tail;
#[cfg(test)]
mod tests;
mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pantau_model::{SensorKind, Timestamp, Values};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::group_commit::{self, Limits, Writer};
use crate::metrics::IngestMetrics;
use crate::store::LatestReading;
use crate::{Error, Result};
use tail::Tail;
use writer::{Cmd, WriterThread};

/// Commands queued to the writer before senders wait.
const QUEUE_DEPTH: usize = 4096;
/// Most commands folded into one transaction.
const MAX_GROUP: usize = 1024;
/// Readings after which a group stops taking more (keeps entries, and so
/// the drain's batches, a sensible size).
const MAX_GROUP_READINGS: usize = 20_000;
/// Most readings kept in the in-memory tail for the drain.
const TAIL_READINGS: usize = 100_000;
/// Most rejected readings kept for re-ingestion.
const MAX_KEPT_REJECTIONS: u64 = 1_000_000;

/// The `gateway` column of an entry whose readings come from several.
const SEVERAL_GATEWAYS: &str = "*";

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
    /// The gateway that sent every reading of it, or `None` when the
    /// commit group held several gateways' readings.
    pub gateway: Option<String>,
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
    /// Readings of the entries that were in the log before this process
    /// started (a replay; the rest of the batch is new).
    pub replayed: u64,
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

/// A reading validation refused, kept with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptRejection {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// When it was refused, ms since the epoch.
    pub at_ms: i64,
    /// The gateway that sent it.
    pub gateway: String,
    /// Its sensor, when it could be read.
    pub sensor: Option<String>,
    /// The rule it broke (`unknown_sensor`, `future_timestamp`, ...).
    pub reason: String,
    /// The full message.
    pub message: String,
    /// The reading as received (JSON).
    pub reading: String,
}

/// Which kept rejections to list or re-ingest.
#[derive(Debug, Clone, Default)]
pub struct RejectedFilter {
    /// Only this gateway's.
    pub gateway: Option<String>,
    /// Only this sensor's.
    pub sensor: Option<String>,
    /// Only those refused for this reason.
    pub reason: Option<String>,
    /// At most this many, oldest first.
    pub limit: usize,
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
    writer: Writer<Cmd>,
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
    /// A second reader's position (the alert evaluator): entries after it
    /// are not deleted yet even when the sink confirmed them.
    hold: Mutex<Option<Hold>>,
    /// The highest id the log ever gave (AUTOINCREMENT's sequence) at open.
    last_id_at_open: i64,
    /// Acknowledgements still to fail on purpose (tests of the drain).
    #[cfg(test)]
    fail_acks: std::sync::atomic::AtomicU32,
}

/// Where the held reader is and what the sink confirmed past it.
#[derive(Debug, Default)]
struct Hold {
    /// Entries up to this id may be deleted.
    through: i64,
    /// Entries the sink confirmed after `through`, deleted once the reader
    /// passes them. Lost in a crash: they are delivered to the sink again
    /// (its writes are idempotent) and confirmed again.
    deferred: std::collections::BTreeSet<i64>,
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
    /// The id of the newest entry committed by this process (0: none yet).
    last_id: std::sync::atomic::AtomicI64,
    /// Woken on every commit that appended something.
    notify: Notify,
    /// Rejected readings kept now.
    kept: AtomicU64,
    /// When the last commit failed (ms since the epoch), 0 once one
    /// succeeded since.
    failed_at_ms: std::sync::atomic::AtomicI64,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        gateway TEXT NOT NULL,
        readings INTEGER NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS rejected (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        gateway TEXT NOT NULL,
        sensor TEXT,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        reading TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS rejected_sensor ON rejected (sensor);
    CREATE TABLE IF NOT EXISTS dead_letter (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        sink TEXT NOT NULL,
        line TEXT NOT NULL,
        status INTEGER NOT NULL,
        message TEXT NOT NULL
    );";

fn open_conn(path: &Path) -> Result<Connection> {
    group_commit::open_db(path, &format!("{SCHEMA}\n{}", latest::SCHEMA))
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
        let conn = open_conn(&path)?;
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
        let last_id: i64 = reader
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'entries'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|source| Error::Sqlite {
                path: path.clone(),
                source,
            })?;
        let kept: i64 = reader
            .query_row("SELECT count(*) FROM rejected", [], |r| r.get(0))
            .map_err(|source| Error::Sqlite {
                path: path.clone(),
                source,
            })?;
        let shared = Arc::new(Shared {
            max_readings,
            pending: AtomicU64::new(pending_now as u64),
            appended: AtomicU64::new(pending_now as u64),
            last_id: std::sync::atomic::AtomicI64::new(0),
            notify: Notify::new(),
            kept: AtomicU64::new(kept as u64),
            failed_at_ms: Default::default(),
        });
        metrics.log_pending.set(pending_now);
        metrics.rejected_kept.set(kept);
        let tail = Arc::new(Mutex::new(Tail::new(max_id, TAIL_READINGS)));
        let writer = Writer::spawn(
            "ingest-log",
            &path,
            WriterThread {
                conn,
                path: path.clone(),
                shared: shared.clone(),
                tail: tail.clone(),
                metrics: metrics.clone(),
            },
            Limits {
                depth: QUEUE_DEPTH,
                max_group: MAX_GROUP,
                max_weight: MAX_GROUP_READINGS,
                idle: None,
            },
        )?;
        if pending_now > 0 {
            tracing::info!(
                readings = pending_now,
                entries_up_to = max_id,
                "Ingest log has readings to replay."
            );
        }
        Ok(Self {
            path,
            writer,
            reader: Mutex::new(reader),
            shared,
            tail,
            replay_until: max_id,
            hold: Mutex::new(None),
            last_id_at_open: last_id.max(max_id),
            metrics,
            #[cfg(test)]
            fail_acks: Default::default(),
        })
    }

    /// Appends readings and returns once they are committed.
    /// Cancel-safe: once queued, the entry is committed and counted whether
    /// or not the caller still waits.
    pub async fn append(&self, readings: Vec<LoggedReading>) -> Result<Committed> {
        self.append_with(readings, Vec::new(), Vec::new()).await
    }

    /// Appends readings and keeps `rejected` ones in the same commit,
    /// deleting the kept rejections `replaces` (a re-ingestion) in it too.
    /// Returns once committed; cancel-safe like [`IngestLog::append`].
    pub async fn append_with(
        &self,
        readings: Vec<LoggedReading>,
        rejected: Vec<KeptRejection>,
        replaces: Vec<i64>,
    ) -> Result<Committed> {
        if readings.is_empty() && rejected.is_empty() && replaces.is_empty() {
            return Ok(Committed {
                entry: Arc::new(readings),
                range: 0..0,
            });
        }
        self.metrics.log_accepted.inc_by(readings.len() as u64);
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Cmd::Append {
                readings,
                rejected,
                replaces,
                done,
            })
            .await?;
        wait.await.map_err(|_| Error::WriterGone)?
    }

    /// Kept rejected readings matching `filter`, oldest first. Blocking.
    pub fn rejected(&self, filter: &RejectedFilter) -> Result<Vec<KeptRejection>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, at_ms, gateway, sensor, reason, message, reading FROM rejected
                 WHERE (?1 IS NULL OR gateway = ?1) AND (?2 IS NULL OR sensor = ?2)
                   AND (?3 IS NULL OR reason = ?3)
                 ORDER BY id LIMIT ?4",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(
                rusqlite::params![
                    filter.gateway,
                    filter.sensor,
                    filter.reason,
                    filter.limit as i64
                ],
                |r| {
                    Ok(KeptRejection {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        gateway: r.get(2)?,
                        sensor: r.get(3)?,
                        reason: r.get(4)?,
                        message: r.get(5)?,
                        reading: r.get(6)?,
                    })
                },
            )
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Rejected readings kept now.
    pub fn rejected_count(&self) -> u64 {
        self.shared.kept.load(Ordering::Acquire)
    }

    /// Deletes entries whose readings the sink has confirmed.
    pub async fn ack(&self, ids: Vec<i64>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        if self
            .fail_acks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::CommitFailed(
                "acknowledgement failed on purpose".into(),
            ));
        }
        let ids = {
            let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
            match hold.as_mut() {
                None => ids,
                Some(h) => {
                    let (now, later): (Vec<i64>, Vec<i64>) =
                        ids.into_iter().partition(|id| *id <= h.through);
                    h.deferred.extend(later);
                    now
                }
            }
        };
        self.delete(ids).await
    }

    async fn delete(&self, ids: Vec<i64>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.writer.send(Cmd::Ack { ids, done }).await?;
        wait.await.map_err(|_| Error::WriterGone)?
    }

    /// Holds entries after `through` in the log until [`IngestLog::release`]
    /// passes them, whatever the sink confirms: a second reader (the alert
    /// evaluator) that resumes from its own durable position after a
    /// restart finds every entry it has not taken.
    pub fn hold_after(&self, through: i64) {
        *self.hold.lock().unwrap_or_else(|p| p.into_inner()) = Some(Hold {
            through,
            deferred: Default::default(),
        });
    }

    /// The held reader has durably taken every entry up to `through`:
    /// deletes those the sink already confirmed.
    pub async fn release(&self, through: i64) -> Result<()> {
        let ids = {
            let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
            let Some(h) = hold.as_mut() else {
                return Ok(());
            };
            h.through = h.through.max(through);
            let later = h.deferred.split_off(&(h.through + 1));
            std::mem::replace(&mut h.deferred, later)
                .into_iter()
                .collect::<Vec<_>>()
        };
        self.delete(ids).await
    }

    /// The highest entry id this log has ever given, as of its opening (a
    /// reader's position above it belongs to another, replaced log).
    pub fn last_id_at_open(&self) -> i64 {
        self.last_id_at_open
    }

    /// The highest entry id this log has given so far (a reader's position
    /// above it belongs to another, replaced log).
    pub fn last_id(&self) -> i64 {
        self.last_id_at_open
            .max(self.shared.last_id.load(Ordering::Acquire))
    }

    /// Makes the next `n` acknowledgements fail (tests of the drain).
    #[cfg(test)]
    pub(crate) fn fail_next_acks(&self, n: u32) {
        self.fail_acks.store(n, Ordering::Release);
    }

    /// Records refused lines durably.
    pub async fn dead_letter(&self, records: Vec<DeadLetter>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.writer.send(Cmd::DeadLetter { records, done }).await?;
        wait.await.map_err(|_| Error::WriterGone)?
    }

    /// Fills the `latest` read model with readings stored elsewhere (an
    /// API replica's start, from InfluxDB), adding no log entry; a sensor
    /// that has a newer reading keeps it.
    pub async fn seed_latest(&self, readings: Vec<LoggedReading>) -> Result<()> {
        if readings.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.writer.send(Cmd::SeedLatest { readings, done }).await?;
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

    /// How long ago the last commit failed, while none has succeeded
    /// since (a full or failing disk); `None` when commits go through.
    pub fn commit_failing(&self) -> Option<Duration> {
        match self.shared.failed_at_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(
                (Timestamp::now().millis() - at).max(0) as u64,
            )),
        }
    }

    /// Readings in the log now.
    pub fn pending(&self) -> u64 {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Waits until something is appended (or `timeout` passes).
    pub async fn wait_for_append(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.shared.notify.notified()).await;
    }

    /// Waits until more than `seen` readings were appended (see
    /// [`IngestLog::appended`]) or `timeout` passes; returns at once if
    /// they already were. Free of the race between checking and waiting.
    pub async fn wait_for_append_after(&self, seen: u64, timeout: Duration) {
        let notified = self.shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.appended() != seen {
            return;
        }
        let _ = tokio::time::timeout(timeout, notified).await;
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
    /// tail leave it (a second read of them goes to disk, which is what a
    /// restarted drain starting again from 0 gets). Blocking.
    pub fn read_after(&self, after_id: i64, max_readings: usize) -> Result<Batch> {
        let from_tail = self
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_after(after_id, max_readings);
        let entries = match from_tail {
            Some(entries) => entries,
            None => self.read_disk(after_id, max_readings)?,
        };
        let replayed = self.replayed_in(&entries);
        Ok(Batch { entries, replayed })
    }

    /// Reads entries after `after_id` like [`IngestLog::read_after`], for a
    /// second reader: entries in the in-memory tail stay there for the
    /// drain. Blocking.
    pub fn peek_after(&self, after_id: i64, max_readings: usize) -> Result<Batch> {
        let from_tail = self
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .peek_after(after_id, max_readings);
        let entries = match from_tail {
            Some(entries) => entries,
            None => self.read_disk(after_id, max_readings)?,
        };
        let replayed = self.replayed_in(&entries);
        Ok(Batch { entries, replayed })
    }

    /// Readings of `entries` that were in the log before this process.
    fn replayed_in(&self, entries: &[LogEntry]) -> u64 {
        entries
            .iter()
            .filter(|e| e.id <= self.replay_until)
            .map(|e| e.readings.len() as u64)
            .sum()
    }

    fn read_disk(&self, after_id: i64, max_readings: usize) -> Result<Vec<LogEntry>> {
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
                gateway: (gateway != SEVERAL_GATEWAYS).then_some(gateway),
                readings: Arc::new(readings),
            });
            if total >= max_readings {
                break;
            }
        }
        Ok(entries)
    }

    /// The newest reading of every sensor. Blocking. A stored value that
    /// cannot be decoded is an error naming the sensor, never an empty one.
    pub fn latest_all(&self) -> Result<Vec<LatestReading>> {
        latest::read_all(&self.reader(), &self.path)
    }
}
