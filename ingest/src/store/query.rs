//! History queries on the embedded store. Windows aligned to whole minutes
//! or hours over a range aligned the same way are answered from the
//! rollups; anything else from raw samples. Either way the answer is the
//! same as InfluxQL's `GROUP BY time(every) fill(none)`.

use std::collections::BTreeMap;

use pantau_model::Timestamp;

use super::schema::{overlapping, Level, HOUR_MS, MINUTE_MS};
use super::Store;
use crate::history::{HistoryError, HistoryQuery, Partial, Point, Series};
use crate::Result;

fn level_for(q: &HistoryQuery) -> Level {
    let aligned = |unit: i64| {
        q.every_ms.is_some_and(|e| e % unit == 0) && q.from.0 % unit == 0 && q.to.0 % unit == 0
    };
    if aligned(HOUR_MS) {
        Level::Hour
    } else if aligned(MINUTE_MS) {
        Level::Minute
    } else {
        Level::Raw
    }
}

impl Store {
    /// Answers a history query. Blocking: call from a blocking context.
    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<Series>, HistoryError> {
        q.validate()?;
        let backend = |e: crate::Error| HistoryError::Backend(e.to_string());
        let level = level_for(q);
        let conn = self.reader();
        let tables =
            overlapping(&conn, level, q.from.0, q.to.0).map_err(|e| backend(self.sql(e)))?;
        let mut out = Vec::with_capacity(q.fields.len());
        for field in &q.fields {
            let mut raw: Vec<Point> = Vec::new();
            let mut windows: BTreeMap<i64, Partial> = BTreeMap::new();
            for table in &tables {
                let sql = match level {
                    Level::Raw => format!(
                        "SELECT ts, 1, value, value, value, ts, value FROM {table}
                         WHERE sensor = ?1 AND field = ?2 AND ts >= ?3 AND ts < ?4 ORDER BY ts"
                    ),
                    _ => format!(
                        "SELECT bucket, n, sum, min, max, last_ts, last FROM {table}
                         WHERE sensor = ?1 AND field = ?2 AND bucket >= ?3 AND bucket < ?4 ORDER BY bucket"
                    ),
                };
                let mut stmt = match conn.prepare_cached(&sql) {
                    Ok(s) => s,
                    // Dropped by retention since the catalog was read.
                    Err(e) if e.to_string().contains("no such table") => continue,
                    Err(e) => return Err(backend(self.sql(e))),
                };
                let mut rows = stmt
                    .query(rusqlite::params![q.sensor, field, q.from.0, q.to.0])
                    .map_err(|e| backend(self.sql(e)))?;
                while let Some(r) = rows.next().map_err(|e| backend(self.sql(e)))? {
                    let get = |i| r.get::<_, f64>(i);
                    let ts: i64 = r.get(0).map_err(|e| backend(self.sql(e)))?;
                    let part = (|| {
                        Ok::<_, rusqlite::Error>(Partial {
                            n: r.get(1)?,
                            sum: get(2)?,
                            min: get(3)?,
                            max: get(4)?,
                            last_ts: r.get(5)?,
                            last: get(6)?,
                        })
                    })()
                    .map_err(|e| backend(self.sql(e)))?;
                    match q.every_ms {
                        None => raw.push(Point {
                            ts: Timestamp(ts),
                            value: part.last,
                        }),
                        Some(every) => {
                            let bucket = ts.div_euclid(every) * every;
                            windows
                                .entry(bucket)
                                .and_modify(|w| w.merge(&part))
                                .or_insert(part);
                        }
                    }
                }
            }
            let points = match q.every_ms {
                None => raw,
                Some(_) => windows
                    .into_iter()
                    .map(|(b, w)| Point {
                        ts: Timestamp(b),
                        value: w.value(q.agg),
                    })
                    .collect(),
            };
            out.push(Series {
                field: field.clone(),
                points,
            });
        }
        Ok(out)
    }

    /// Number of raw samples stored (all partitions). Blocking.
    pub fn sample_count(&self) -> Result<i64> {
        let conn = self.reader();
        let tables = overlapping(&conn, Level::Raw, i64::MIN, i64::MAX).map_err(|e| self.sql(e))?;
        let mut total = 0;
        for t in tables {
            let n: i64 = conn
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .map_err(|e| self.sql(e))?;
            total += n;
        }
        Ok(total)
    }
}
