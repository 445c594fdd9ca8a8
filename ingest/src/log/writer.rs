//! The ingest log's writer thread: admission against the bound, one
//! transaction per commit group (appends as one shared entry, acks, dead
//! letters, the `latest` read model), then the counts, the in-memory tail
//! and the answers — in that order, so a drain woken by a count finds the
//! entry in the tail.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use pantau_model::Timestamp;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::tail::Tail;
use super::{
    latest, Committed, DeadLetter, KeptRejection, LogEntry, LoggedReading, Shared,
    MAX_KEPT_REJECTIONS, SEVERAL_GATEWAYS,
};
use crate::group_commit::GroupCommit;
use crate::metrics::IngestMetrics;
use crate::{Error, Result};

/// A request to the writer thread; each carries its answer.
pub(super) enum Cmd {
    Append {
        readings: Vec<LoggedReading>,
        /// Refused readings of the same envelopes, kept in the same commit.
        rejected: Vec<KeptRejection>,
        /// Kept rejections this append re-ingests (deleted in the commit).
        replaces: Vec<i64>,
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
    /// Readings for the `latest` read model only (no entry).
    SeedLatest {
        readings: Vec<LoggedReading>,
        done: oneshot::Sender<Result<()>>,
    },
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Append { readings, .. } => write!(f, "Append({})", readings.len()),
            Cmd::Ack { ids, .. } => write!(f, "Ack({})", ids.len()),
            Cmd::DeadLetter { records, .. } => write!(f, "DeadLetter({})", records.len()),
            Cmd::SeedLatest { readings, .. } => write!(f, "SeedLatest({})", readings.len()),
        }
    }
}

/// An acknowledgement or dead-letter request of a group, answered once the
/// group's transaction is done.
enum Other {
    Ack(Vec<i64>, oneshot::Sender<Result<()>>),
    DeadLetter(Vec<DeadLetter>, oneshot::Sender<Result<()>>),
    SeedLatest(Vec<LoggedReading>, oneshot::Sender<Result<()>>),
}

impl Other {
    fn answer(self, result: Result<()>) {
        let (Other::Ack(_, done) | Other::DeadLetter(_, done) | Other::SeedLatest(_, done)) = self;
        // The caller may have gone away; the commit stands either way.
        let _ = done.send(result);
    }
}

/// The writer thread: owns the write connection.
pub(super) struct WriterThread {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) shared: Arc<Shared>,
    pub(super) tail: Arc<Mutex<Tail>>,
    pub(super) metrics: IngestMetrics,
}

impl GroupCommit for WriterThread {
    type Job = Cmd;

    fn weight(cmd: &Cmd) -> usize {
        match cmd {
            Cmd::Append { readings, .. } => readings.len(),
            _ => 0,
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
        let mut kept = Kept::default();
        let mut answers = Vec::new();
        let mut others = Vec::new();
        for cmd in group {
            match cmd {
                Cmd::Append {
                    readings: r,
                    rejected,
                    replaces,
                    done,
                } => {
                    let n = r.len();
                    if n as u64 <= room {
                        room -= n as u64;
                        let at = readings.len();
                        readings.extend(r);
                        kept.rejected.extend(rejected);
                        kept.replaces.extend(replaces);
                        answers.push((done, at..at + n));
                    } else {
                        metrics.drop_readings("log_full", n as u64);
                        let _ = done.send(Err(Error::LogFull {
                            max_readings: shared.max_readings,
                        }));
                    }
                }
                Cmd::Ack { ids, done } => others.push(Other::Ack(ids, done)),
                Cmd::DeadLetter { records, done } => others.push(Other::DeadLetter(records, done)),
                Cmd::SeedLatest { readings, done } => {
                    others.push(Other::SeedLatest(readings, done))
                }
            }
        }
        let started = std::time::Instant::now();
        kept.before = shared.kept.load(Ordering::Acquire);
        let result = commit(&mut self.conn, &readings, &kept, &others);
        metrics
            .log_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let (id, acked, kept_now) = match result {
            Ok(done) => done,
            Err(e) => {
                let message = e.to_string();
                tracing::error!(path = %self.path.display(), error = %message, "Ingest log commit failed.");
                shared
                    .failed_at_ms
                    .store(Timestamp::now().millis().max(1), Ordering::Release);
                // Refused, not acknowledged: the senders send them again.
                metrics.drop_readings("commit_failed", readings.len() as u64);
                let err = || Error::CommitFailed(message.clone());
                for (done, _) in answers {
                    let _ = done.send(Err(err()));
                }
                for other in others {
                    other.answer(Err(err()));
                }
                return;
            }
        };
        shared.failed_at_ms.store(0, Ordering::Release);
        let added = readings.len() as u64;
        let entry = Arc::new(readings);
        if let Some(id) = id {
            shared.last_id.store(id, Ordering::Release);
            // In the tail before it is counted, so a drain woken by the
            // count finds it.
            let gateway = entry_gateway(&entry).map(str::to_owned);
            self.tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(LogEntry {
                    id,
                    gateway,
                    readings: entry.clone(),
                });
        }
        let overflow = (kept.before + kept.rejected.len() as u64)
            .saturating_sub(kept.replaces.len() as u64)
            .saturating_sub(kept_now);
        if overflow > 0 {
            metrics.drop_readings("rejected_overflow", overflow);
        }
        shared.kept.store(kept_now, Ordering::Release);
        metrics.rejected_kept.set(kept_now as i64);
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
        for other in others {
            other.answer(Ok(()));
        }
    }
}

/// The kept rejections of a group.
#[derive(Default)]
struct Kept {
    /// To insert.
    rejected: Vec<KeptRejection>,
    /// Rows to delete (re-ingested).
    replaces: Vec<i64>,
    /// Rows before the commit.
    before: u64,
}

/// The gateway of an entry, or `None` when its readings come from several.
fn entry_gateway(readings: &[LoggedReading]) -> Option<&str> {
    let first = readings.first()?;
    readings
        .iter()
        .all(|r| r.gateway == first.gateway)
        .then_some(first.gateway.as_str())
}

/// Commits a group: the admitted readings as one entry (returning its id,
/// if there were any), the kept rejections (returning how many rows the
/// table holds after it), and the acknowledgements and dead letters
/// (returning the readings the acknowledgements removed).
fn commit(
    conn: &mut Connection,
    readings: &[LoggedReading],
    kept: &Kept,
    others: &[Other],
) -> rusqlite::Result<(Option<i64>, u64, u64)> {
    let tx = conn.transaction()?;
    let mut kept_now = kept.before;
    if !kept.rejected.is_empty() || !kept.replaces.is_empty() {
        let mut remove = tx.prepare_cached("DELETE FROM rejected WHERE id = ?1")?;
        for id in &kept.replaces {
            kept_now = kept_now.saturating_sub(remove.execute([id])? as u64);
        }
        let mut keep = tx.prepare_cached(
            "INSERT INTO rejected (at_ms, gateway, sensor, reason, message, reading)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for r in &kept.rejected {
            keep.execute(params![
                r.at_ms, r.gateway, r.sensor, r.reason, r.message, r.reading
            ])?;
            kept_now += 1;
        }
        if kept_now > MAX_KEPT_REJECTIONS {
            let excess = kept_now - MAX_KEPT_REJECTIONS;
            tx.execute(
                "DELETE FROM rejected WHERE id IN (SELECT id FROM rejected ORDER BY id LIMIT ?1)",
                [excess as i64],
            )?;
            kept_now = MAX_KEPT_REJECTIONS;
        }
    }
    let mut id = None;
    let mut acked = 0u64;
    {
        let mut count = tx.prepare_cached("SELECT readings FROM entries WHERE id = ?1")?;
        let mut delete = tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?;
        let mut dead = tx.prepare_cached(
            "INSERT INTO dead_letter (at_ms, sink, line, status, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for other in others {
            match other {
                Other::DeadLetter(records, _) => {
                    let now = Timestamp::now().millis();
                    for d in records {
                        dead.execute(params![now, d.sink, d.line, d.status, d.message])?;
                    }
                }
                // Never moves a sensor back in time.
                Other::SeedLatest(readings, _) => latest::update(&tx, readings)?,
                Other::Ack(ids, _) => {
                    for id in ids {
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
                entry_gateway(readings).unwrap_or(SEVERAL_GATEWAYS),
                readings.len() as i64,
                payload
            ])?;
            id = Some(tx.last_insert_rowid());
            latest::update(&tx, readings)?;
        }
    }
    tx.commit()?;
    Ok((id, acked, kept_now))
}
