//! The `latest` read model: the newest reading of each sensor, kept in the
//! ingest log's database and updated in the same transaction as the append
//! that brought it, so the live conditions view answers whatever the sink
//! and however far behind the drain is.

use std::collections::HashMap;
use std::path::Path;

use pantau_model::Timestamp;
use rusqlite::{params, Connection, Transaction};

use super::LoggedReading;
use crate::store::LatestReading;
use crate::{Error, Result};

pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS latest (
        sensor TEXT PRIMARY KEY,
        ts INTEGER NOT NULL,
        values_json TEXT NOT NULL
    ) WITHOUT ROWID;";

/// Upserts the newest reading per sensor of a commit group (one statement
/// per sensor, never moving a sensor back in time).
pub(super) fn update(tx: &Transaction<'_>, readings: &[LoggedReading]) -> rusqlite::Result<()> {
    let mut newest: HashMap<&str, &LoggedReading> = HashMap::new();
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
    Ok(())
}

/// Every sensor's newest reading, ordered by sensor. A value that does not
/// decode is [`Error::CorruptLatest`], naming the sensor.
pub(super) fn read_all(conn: &Connection, path: &Path) -> Result<Vec<LatestReading>> {
    let sql = |source| Error::Sqlite {
        path: path.to_owned(),
        source,
    };
    let mut stmt = conn
        .prepare_cached("SELECT sensor, ts, values_json FROM latest ORDER BY sensor")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let sensor: String = row.get(0).map_err(sql)?;
        let json: String = row.get(2).map_err(sql)?;
        let values = serde_json::from_str(&json).map_err(|e| Error::CorruptLatest {
            path: path.to_owned(),
            sensor: sensor.clone(),
            message: e.to_string(),
        })?;
        out.push(LatestReading {
            sensor,
            ts: Timestamp(row.get(1).map_err(sql)?),
            values,
        });
    }
    Ok(out)
}
