//! The embedded time-series store (SQLite, WAL).
//!
//! Layout: one row per (sensor, field, ts) in `samples` — a reading
//! replayed after a reconnect overwrites itself, so at-least-once delivery
//! gives exactly-once storage — plus `latest`, the newest reading of each
//! sensor, for the live conditions view.
//!
//! Writes go to one writer thread over a bounded channel (never on tokio
//! workers). The writer drains whatever is queued into one transaction
//! (group commit: many envelopes share one fsync) and answers each batch
//! only after the commit, with `synchronous = FULL` so a committed batch
//! survives power loss. Reads use their own connection; WAL lets them run
//! beside the writer.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use pantau_model::{Reading, Timestamp};
use rusqlite::{params, Connection};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::{Error, Result};

/// Queued write batches before senders wait.
const QUEUE_DEPTH: usize = 1024;
/// Most batches folded into one transaction.
const MAX_GROUP: usize = 256;

struct WriteJob {
    readings: Vec<Reading>,
    done: oneshot::Sender<Result<()>>,
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

/// One stored sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Observation time.
    pub ts: Timestamp,
    /// Value (booleans as 0/1).
    pub value: f64,
}

/// Handle to the embedded store; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    /// The database file.
    path: PathBuf,
    /// Queue to the writer thread.
    tx: SyncSender<WriteJob>,
    /// Read connection (queries are short; one is enough for this slice).
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteJob({} readings)", self.readings.len())
    }
}

fn open(path: &Path) -> Result<Connection> {
    let sql = |source| Error::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS samples (
             sensor TEXT NOT NULL,
             field TEXT NOT NULL,
             ts INTEGER NOT NULL,
             value REAL NOT NULL,
             PRIMARY KEY (sensor, field, ts)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS latest (
             sensor TEXT PRIMARY KEY,
             ts INTEGER NOT NULL,
             values_json TEXT NOT NULL
         ) WITHOUT ROWID;",
    )
    .map_err(sql)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) `readings.db` in `data_dir` and starts the
    /// writer thread.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join("readings.db");
        let writer = open(&path)?;
        let reader = open(&path)?;
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        let thread_path = path.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer, rx, thread_path))
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            tx,
            reader: Mutex::new(reader),
        })
    }

    /// Commits readings durably; returns once they are on disk.
    pub async fn write(&self, readings: Vec<Reading>) -> Result<()> {
        if readings.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        let mut job = WriteJob { readings, done };
        // Try without blocking first; when the queue is full, wait for room
        // on a blocking thread so tokio workers never block.
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Disconnected(_)) => return Err(Error::WriterGone),
            Err(TrySendError::Full(back)) => {
                job = back;
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(job))
                    .await
                    .map_err(|_| Error::WriterGone)?
                    .map_err(|_| Error::WriterGone)?;
            }
        }
        wait.await.map_err(|_| Error::WriterGone)?
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

    /// The newest reading of every sensor that has one. Blocking: call from
    /// a blocking context.
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

    /// Raw samples of one field of one sensor in `[from, to)`, oldest first.
    /// Blocking: call from a blocking context.
    pub fn samples(
        &self,
        sensor: &str,
        field: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Sample>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT ts, value FROM samples
                 WHERE sensor = ?1 AND field = ?2 AND ts >= ?3 AND ts < ?4 ORDER BY ts",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![sensor, field, from.0, to.0], |r| {
                Ok(Sample {
                    ts: Timestamp(r.get(0)?),
                    value: r.get(1)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Number of stored samples (all sensors, all fields).
    pub fn sample_count(&self) -> Result<i64> {
        self.reader()
            .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
            .map_err(|e| self.sql(e))
    }
}

fn writer_loop(mut conn: Connection, rx: Receiver<WriteJob>, path: PathBuf) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &group).map_err(|source| Error::Sqlite {
            path: path.clone(),
            source,
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, batches = group.len(), "Store commit failed.");
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
}

fn commit(conn: &mut Connection, group: &[WriteJob]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut sample = tx.prepare_cached(
            "INSERT INTO samples (sensor, field, ts, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (sensor, field, ts) DO UPDATE SET value = excluded.value",
        )?;
        let mut latest = tx.prepare_cached(
            "INSERT INTO latest (sensor, ts, values_json) VALUES (?1, ?2, ?3)
             ON CONFLICT (sensor) DO UPDATE SET ts = excluded.ts, values_json = excluded.values_json
             WHERE excluded.ts >= latest.ts",
        )?;
        for job in group {
            for r in &job.readings {
                for (field, value) in &r.values {
                    sample.execute(params![r.sensor, field, r.ts.0, value.as_f64()])?;
                }
                let json = serde_json::to_string(&r.values).unwrap_or_else(|_| "{}".into());
                latest.execute(params![r.sensor, r.ts.0, json])?;
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantau_model::Value;

    fn reading(sensor: &str, ts: i64, level: f64) -> Reading {
        Reading {
            sensor: sensor.into(),
            ts: Timestamp(ts),
            values: [("water_level_cm".to_string(), Value::Num(level))].into(),
        }
    }

    #[tokio::test]
    async fn writes_upsert_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write(vec![reading("a", 1000, 1.0), reading("a", 2000, 2.0)])
            .await
            .unwrap();
        // A replay of the same key overwrites; an older reading does not
        // move `latest` backwards.
        store.write(vec![reading("a", 2000, 2.5)]).await.unwrap();
        store.write(vec![reading("a", 500, 9.0)]).await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let s = store
            .samples("a", "water_level_cm", Timestamp(0), Timestamp(3000))
            .unwrap();
        let got: Vec<(i64, f64)> = s.iter().map(|s| (s.ts.0, s.value)).collect();
        assert_eq!(got, vec![(500, 9.0), (1000, 1.0), (2000, 2.5)]);
        let latest = store.latest_all().unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].ts, Timestamp(2000));
        assert_eq!(latest[0].values["water_level_cm"], 2.5);
    }

    #[tokio::test]
    async fn concurrent_writers_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for w in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    store
                        .write(vec![reading(&format!("s{w}"), i, i as f64)])
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.sample_count().unwrap(), 1000);
    }
}
