//! The agent's disk spool: every reading lands here before anything else,
//! and leaves only when the broker has acknowledged the envelope that
//! carried it.
//!
//! **Invariants.**
//! - A reading is committed to the spool (one SQLite transaction per batch of
//!   readings from the sources) before it can be put in an envelope; envelopes
//!   are built from spool rows only.
//! - A row is deleted only after the PUBACK of an envelope that carried it
//!   (the uplink matches PUBACKs to envelopes itself), or when the spool is
//!   over its byte bound: then the *oldest* rows go first, and every such
//!   drop is counted in the spool itself (`meta.dropped`), so the count
//!   survives restarts and is reported in the gateway's status.
//! - Row ids only grow (`AUTOINCREMENT`): id order is arrival order, which is
//!   what the replay follows.
//!
//! **On disk.** `DIR/spool.db`, SQLite in WAL mode: `readings(id, sensor, ts,
//! vals, bytes)` with `vals` the JSON of the reading's values and `bytes` the
//! row's accounted size; `meta(key, value)` holds `dropped`.
//!
//! **Crashes.** After `kill -9` every committed row is still there and is
//! sent again after the restart (an envelope sent but not acknowledged is
//! sent twice; the platform stores by key, so that is harmless). With
//! `synchronous = "normal"` (the default) a power loss can lose the last
//! commits before the WAL was synced; `"full"` syncs every commit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pantau_model::{Reading, Timestamp, Values};
use rusqlite::{params, Connection, OptionalExtension};

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed.
    #[error("spool {path}: {source}")]
    Sqlite {
        /// The spool file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The spool directory could not be created.
    #[error("spool directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Spool result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How hard each commit is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// Survives a crash of the agent; a power loss may lose the last commits.
    #[default]
    Normal,
    /// Every commit is on disk before it returns (power-loss safe).
    Full,
}

/// A reading as read back from the spool.
#[derive(Debug, Clone, PartialEq)]
pub struct Spooled {
    /// Row id (arrival order).
    pub id: i64,
    /// The reading.
    pub reading: Reading,
    /// Accounted size in bytes.
    pub bytes: u64,
}

/// What the spool holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Depth {
    /// Readings waiting for an acknowledgement.
    pub readings: u64,
    /// Their accounted size.
    pub bytes: u64,
    /// The byte bound.
    pub max_bytes: u64,
    /// Readings dropped (oldest first) because the spool was full, ever.
    pub dropped: u64,
    /// Highest row id ever assigned.
    #[serde(skip)]
    pub last_id: i64,
}

/// The spool. All methods block (SQLite); they are short.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    /// Kept in memory so that status and bound checks need no query.
    depth: Depth,
}

/// Fixed per-row overhead counted against the bound (ids, ts, b-tree).
const ROW_OVERHEAD: u64 = 32;

impl Spool {
    /// Opens (or creates) the spool in `dir`.
    pub fn open(dir: &Path, max_bytes: u64, sync: Sync) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("spool.db");
        let sql = |source| Error::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                Sync::Normal => "NORMAL",
                Sync::Full => "FULL",
            },
        )
        .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS readings (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 sensor TEXT NOT NULL, ts INTEGER NOT NULL, vals TEXT NOT NULL, bytes INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(sql)?;
        let (readings, bytes): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM readings",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        let dropped: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'dropped'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)?
            .unwrap_or(0);
        let last_id: i64 = conn
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        Ok(Self {
            path: path.clone(),
            inner: Mutex::new(Inner {
                conn,
                depth: Depth {
                    readings: readings as u64,
                    bytes: bytes as u64,
                    max_bytes,
                    dropped: dropped as u64,
                    last_id,
                },
            }),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the spool holds now.
    pub fn depth(&self) -> Depth {
        self.lock().depth
    }

    /// Appends readings in one transaction; if that takes the spool over its
    /// bound, drops the oldest rows in the same transaction. Returns how many
    /// were dropped.
    pub fn append(&self, readings: &[Reading]) -> Result<u64> {
        if readings.is_empty() {
            return Ok(0);
        }
        let mut inner = self.lock();
        let Inner { conn, depth } = &mut *inner;
        let mut next = *depth;
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO readings (sensor, ts, vals, bytes) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| self.sql(e))?;
            for r in readings {
                let vals = serde_json::to_string(&r.values).unwrap_or_else(|_| "{}".into());
                let bytes = (r.sensor.len() + vals.len()) as u64 + ROW_OVERHEAD;
                insert
                    .execute(params![r.sensor, r.ts.0, vals, bytes as i64])
                    .map_err(|e| self.sql(e))?;
                next.readings += 1;
                next.bytes += bytes;
                next.last_id = tx.last_insert_rowid();
            }
        }
        let mut dropped = 0u64;
        if next.bytes > next.max_bytes {
            // Oldest first, until the spool fits again.
            let excess = next.bytes - next.max_bytes;
            let (cut, n, freed) = {
                let mut oldest = tx
                    .prepare_cached("SELECT id, bytes FROM readings ORDER BY id")
                    .map_err(|e| self.sql(e))?;
                let mut rows = oldest.query([]).map_err(|e| self.sql(e))?;
                let (mut cut, mut n, mut freed) = (0i64, 0u64, 0u64);
                while freed < excess {
                    let Some(row) = rows.next().map_err(|e| self.sql(e))? else {
                        break;
                    };
                    cut = row.get(0).map_err(|e| self.sql(e))?;
                    freed += row.get::<_, i64>(1).map_err(|e| self.sql(e))? as u64;
                    n += 1;
                }
                (cut, n, freed)
            };
            tx.execute("DELETE FROM readings WHERE id <= ?1", [cut])
                .map_err(|e| self.sql(e))?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('dropped', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                [n as i64],
            )
            .map_err(|e| self.sql(e))?;
            next.readings -= n;
            next.bytes -= freed;
            next.dropped += n;
            dropped = n;
        }
        tx.commit().map_err(|e| self.sql(e))?;
        *depth = next;
        Ok(dropped)
    }

    /// Rows with `after < id <= up_to`, oldest first, at most `max_readings`
    /// of them and (beyond the first) at most `max_bytes` in all.
    pub fn batch(
        &self,
        after: i64,
        up_to: i64,
        max_readings: usize,
        max_bytes: u64,
    ) -> Result<Vec<Spooled>> {
        let inner = self.lock();
        let mut stmt = inner
            .conn
            .prepare_cached(
                "SELECT id, sensor, ts, vals, bytes FROM readings
                 WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt
            .query(params![after, up_to, max_readings as i64])
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        let mut total = 0u64;
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let bytes = row.get::<_, i64>(4).map_err(|e| self.sql(e))? as u64;
            if !out.is_empty() && total + bytes > max_bytes {
                break;
            }
            total += bytes;
            let vals: String = row.get(3).map_err(|e| self.sql(e))?;
            // Rows are written by `append` from valid values; a row that no
            // longer parses is sent with no values and rejected (and counted)
            // by the platform rather than blocking the spool forever.
            let values: Values = serde_json::from_str(&vals).unwrap_or_default();
            out.push(Spooled {
                id: row.get(0).map_err(|e| self.sql(e))?,
                reading: Reading {
                    sensor: row.get(1).map_err(|e| self.sql(e))?,
                    ts: Timestamp(row.get(2).map_err(|e| self.sql(e))?),
                    values,
                },
                bytes,
            });
        }
        Ok(out)
    }

    /// Deletes acknowledged rows (ids already gone are skipped); returns how
    /// many were deleted.
    pub fn delete(&self, ids: &[i64]) -> Result<u64> {
        let mut inner = self.lock();
        let Inner { conn, depth } = &mut *inner;
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        let (mut n, mut freed) = (0u64, 0u64);
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM readings WHERE id = ?1 RETURNING bytes")
                .map_err(|e| self.sql(e))?;
            for id in ids {
                if let Some(bytes) = delete
                    .query_row([id], |r| r.get::<_, i64>(0))
                    .optional()
                    .map_err(|e| self.sql(e))?
                {
                    n += 1;
                    freed += bytes as u64;
                }
            }
        }
        tx.commit().map_err(|e| self.sql(e))?;
        depth.readings -= n;
        depth.bytes -= freed;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
