//! Partition tables of the embedded store: naming, creation, rollup
//! recomputation and retention.

use std::collections::HashSet;

use rusqlite::{params, Connection, Transaction};

use crate::history::Partial;

pub(crate) const MINUTE_MS: i64 = 60_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 86_400_000;
/// Span of one 1-hour rollup partition.
const HOUR_PARTITION_MS: i64 = 64 * DAY_MS;

/// A rollup window of one sensor field: (sensor, field, window start).
pub(crate) type Window<'a> = (&'a str, &'a str, i64);

/// A level of resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Raw samples.
    Raw,
    /// 1-minute rollups.
    Minute,
    /// 1-hour rollups.
    Hour,
}

impl Level {
    fn tag(self) -> &'static str {
        match self {
            Level::Raw => "raw",
            Level::Minute => "1m",
            Level::Hour => "1h",
        }
    }

    /// Time span of one partition.
    fn span(self) -> i64 {
        match self {
            Level::Raw | Level::Minute => DAY_MS,
            Level::Hour => HOUR_PARTITION_MS,
        }
    }

    /// Window length of a rollup level.
    pub(crate) fn window(self) -> i64 {
        match self {
            Level::Raw => 1,
            Level::Minute => MINUTE_MS,
            Level::Hour => HOUR_MS,
        }
    }

    /// Partition index and table name for a timestamp.
    pub(crate) fn partition(self, ts: i64) -> (i64, String) {
        let idx = ts.div_euclid(self.span());
        let name = match self {
            Level::Raw => format!("samples_d{idx}"),
            Level::Minute => format!("rollup_1m_d{idx}"),
            Level::Hour => format!("rollup_1h_p{idx}"),
        };
        (idx, name)
    }
}

/// Creates the partition holding `ts` at `level` if needed; returns its name.
pub(crate) fn ensure(
    tx: &Transaction<'_>,
    known: &mut HashSet<String>,
    level: Level,
    ts: i64,
) -> rusqlite::Result<String> {
    let (idx, name) = level.partition(ts);
    if known.contains(&name) {
        return Ok(name);
    }
    let ddl = match level {
        Level::Raw => format!(
            "CREATE TABLE IF NOT EXISTS {name} (
                 sensor TEXT NOT NULL, field TEXT NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL,
                 PRIMARY KEY (sensor, field, ts)) WITHOUT ROWID"
        ),
        Level::Minute | Level::Hour => format!(
            "CREATE TABLE IF NOT EXISTS {name} (
                 sensor TEXT NOT NULL, field TEXT NOT NULL, bucket INTEGER NOT NULL,
                 n INTEGER NOT NULL, sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
                 last_ts INTEGER NOT NULL, last REAL NOT NULL,
                 PRIMARY KEY (sensor, field, bucket)) WITHOUT ROWID"
        ),
    };
    tx.execute_batch(&ddl)?;
    let span = level.span();
    tx.execute(
        "INSERT OR IGNORE INTO partitions (name, level, start_ms, end_ms) VALUES (?1, ?2, ?3, ?4)",
        params![name, level.tag(), idx * span, (idx + 1) * span],
    )?;
    known.insert(name.clone());
    Ok(name)
}

/// Recomputes the window starting at `bucket` of a rollup level from the
/// level below (raw → 1m, 1m → 1h).
pub(crate) fn recompute(
    tx: &Transaction<'_>,
    known: &mut HashSet<String>,
    level: Level,
    &(sensor, field, bucket): &Window<'_>,
) -> rusqlite::Result<()> {
    let target = ensure(tx, known, level, bucket)?;
    let end = bucket + level.window();
    let sql = match level {
        Level::Minute => {
            let (_, src) = Level::Raw.partition(bucket);
            format!(
                "INSERT INTO {target} (sensor, field, bucket, n, sum, min, max, last_ts, last)
                 SELECT ?1, ?2, ?3, count(*), sum(value), min(value), max(value), max(ts),
                        (SELECT value FROM {src} WHERE sensor = ?1 AND field = ?2 AND ts >= ?3 AND ts < ?4
                         ORDER BY ts DESC LIMIT 1)
                 FROM {src} WHERE sensor = ?1 AND field = ?2 AND ts >= ?3 AND ts < ?4
                 ON CONFLICT (sensor, field, bucket) DO UPDATE SET n = excluded.n, sum = excluded.sum,
                     min = excluded.min, max = excluded.max, last_ts = excluded.last_ts, last = excluded.last"
            )
        }
        Level::Hour => {
            let (_, src) = Level::Minute.partition(bucket);
            format!(
                "INSERT INTO {target} (sensor, field, bucket, n, sum, min, max, last_ts, last)
                 SELECT ?1, ?2, ?3, sum(n), sum(sum), min(min), max(max), max(last_ts),
                        (SELECT last FROM {src} WHERE sensor = ?1 AND field = ?2 AND bucket >= ?3 AND bucket < ?4
                         ORDER BY bucket DESC LIMIT 1)
                 FROM {src} WHERE sensor = ?1 AND field = ?2 AND bucket >= ?3 AND bucket < ?4
                 ON CONFLICT (sensor, field, bucket) DO UPDATE SET n = excluded.n, sum = excluded.sum,
                     min = excluded.min, max = excluded.max, last_ts = excluded.last_ts, last = excluded.last"
            )
        }
        Level::Raw => return Ok(()),
    };
    tx.prepare_cached(&sql)?
        .execute(params![sensor, field, bucket, end])?;
    Ok(())
}

/// Merges a partial aggregate of new samples into a rollup window.
pub(crate) fn merge(
    tx: &Transaction<'_>,
    known: &mut HashSet<String>,
    level: Level,
    key: &Window<'_>,
    p: &Partial,
) -> rusqlite::Result<()> {
    let target = ensure(tx, known, level, key.2)?;
    tx.prepare_cached(&format!(
        "INSERT INTO {target} (sensor, field, bucket, n, sum, min, max, last_ts, last)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (sensor, field, bucket) DO UPDATE SET
             n = n + excluded.n, sum = sum + excluded.sum,
             min = min(min, excluded.min), max = max(max, excluded.max),
             last = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END,
             last_ts = max(last_ts, excluded.last_ts)"
    ))?
    .execute(params![
        key.0, key.1, key.2, p.n, p.sum, p.min, p.max, p.last_ts, p.last
    ])?;
    Ok(())
}

/// Partition tables of `level` overlapping `[from, to)`, oldest first.
pub(crate) fn overlapping(
    conn: &Connection,
    level: Level,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name FROM partitions WHERE level = ?1 AND start_ms < ?3 AND end_ms > ?2 ORDER BY start_ms",
    )?;
    let rows = stmt.query_map(params![level.tag(), from, to], |r| r.get(0))?;
    rows.collect()
}

/// Drops raw and 1-minute partitions ending before `raw_cut` and 1-hour
/// partitions ending before `rollup_cut`; returns the dropped names.
pub(crate) fn drop_before(
    conn: &Connection,
    raw_cut: i64,
    rollup_cut: i64,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM partitions WHERE (level IN ('raw', '1m') AND end_ms <= ?1) OR (level = '1h' AND end_ms <= ?2)",
    )?;
    let names: Vec<String> = stmt
        .query_map(params![raw_cut, rollup_cut], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    // Each partition leaves the catalog in the transaction that drops its
    // table: killed in between, the catalog would name a missing table
    // (queries of that span failing) until the next retention pass.
    for name in &names {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {name}"))?;
        tx.execute("DELETE FROM partitions WHERE name = ?1", [name])?;
        tx.commit()?;
    }
    Ok(names)
}

/// Whether a partition table exists.
#[cfg(test)]
pub(crate) fn exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .map(|()| true)
    .or_else(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(false),
        e => Err(e),
    })
}
