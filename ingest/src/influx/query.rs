//! InfluxQL history queries over `/query`, the one query language InfluxDB
//! 1.x, 2.x (through a DBRP mapping) and 3.x all answer.

use pantau_model::Timestamp;

use super::InfluxSink;
use crate::history::{HistoryError, HistoryQuery, Point, Series};

/// Builds InfluxQL for a history query. Identifiers come from the model
/// (field names of a kind, ids matching `[a-z0-9-]`), so nothing user
/// supplied reaches the statement unchecked.
#[derive(Debug)]
pub struct InfluxQuery;

impl InfluxQuery {
    /// The statement for `q`.
    pub fn statement(q: &HistoryQuery) -> String {
        let selectors: Vec<String> = q
            .fields
            .iter()
            .map(|f| match q.every_ms {
                None => format!("\"{f}\""),
                Some(_) => format!("{}(\"{f}\") AS \"{f}\"", q.agg.influxql()),
            })
            .collect();
        let mut s = format!(
            "SELECT {} FROM \"{}\" WHERE \"sensor\" = '{}' AND time >= {}ms AND time < {}ms",
            selectors.join(", "),
            q.kind.as_str(),
            q.sensor,
            q.from.0,
            q.to.0
        );
        if let Some(every) = q.every_ms {
            s.push_str(&format!(" GROUP BY time({every}ms) fill(none)"));
        }
        s
    }
}

fn number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

impl InfluxSink {
    /// Answers a history query with InfluxQL.
    pub async fn history(&self, q: &HistoryQuery) -> Result<Vec<Series>, HistoryError> {
        q.validate()?;
        for f in &q.fields {
            if !f
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(HistoryError::Invalid(format!("invalid field name {f:?}")));
            }
        }
        let result = self.select(&InfluxQuery::statement(q)).await?;
        let mut out: Vec<Series> = q
            .fields
            .iter()
            .map(|f| Series {
                field: f.clone(),
                points: Vec::new(),
            })
            .collect();
        let Some(series) = result["series"].as_array() else {
            return Ok(out);
        };
        for s in series {
            let columns: Vec<&str> = s["columns"]
                .as_array()
                .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            for row in s["values"].as_array().into_iter().flatten() {
                let Some(ts) = row[0].as_i64() else { continue };
                for (i, col) in columns.iter().enumerate().skip(1) {
                    if let (Some(target), Some(v)) =
                        (out.iter_mut().find(|o| o.field == *col), number(&row[i]))
                    {
                        target.points.push(Point {
                            ts: Timestamp(ts),
                            value: v,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

impl InfluxSink {
    /// Runs one InfluxQL statement on the query database; its result.
    async fn select(&self, statement: &str) -> Result<serde_json::Value, HistoryError> {
        let (status, mut body) = self
            .influxql(statement, Some(&self.query_db()))
            .await
            .map_err(|e| HistoryError::Backend(e.to_string()))?;
        let result = body["results"][0].take();
        if status != 200 || result.get("error").is_some() {
            body["results"][0] = result;
            return Err(HistoryError::Backend(format!(
                "InfluxQL HTTP {status}: {body}"
            )));
        }
        Ok(result)
    }

    /// The newest stored reading of every sensor of `kinds` (one InfluxQL
    /// statement per kind: its series grouped by sensor, newest first,
    /// one row each), as logged readings — for an API replica that starts
    /// with an empty cache to answer latest values at once.
    pub async fn latest(
        &self,
        kinds: &[pantau_model::SensorKind],
    ) -> Result<Vec<crate::log::LoggedReading>, HistoryError> {
        let mut out = Vec::new();
        for kind in kinds {
            let statement = format!(
                "SELECT * FROM \"{}\" GROUP BY \"sensor\" ORDER BY time DESC LIMIT 1",
                kind.as_str()
            );
            let result = self.select(&statement).await?;
            for s in result["series"].as_array().into_iter().flatten() {
                let Some(sensor) = s["tags"]["sensor"].as_str() else {
                    continue;
                };
                let columns: Vec<&str> = s["columns"]
                    .as_array()
                    .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                let Some(row) = s["values"][0].as_array() else {
                    continue;
                };
                let Some(ts) = row.first().and_then(|t| t.as_i64()) else {
                    continue;
                };
                let mut gateway = String::new();
                let mut values = pantau_model::Values::new();
                for (col, v) in columns.iter().zip(row).skip(1) {
                    match (*col, v) {
                        ("gateway", serde_json::Value::String(g)) => gateway = g.clone(),
                        ("district" | "kind", _) | (_, serde_json::Value::Null) => {}
                        (field, serde_json::Value::Bool(b)) => {
                            values.insert(field.to_owned(), pantau_model::Value::Bool(*b));
                        }
                        (field, other) => {
                            if let Some(n) = other.as_f64() {
                                values.insert(field.to_owned(), pantau_model::Value::Num(n));
                            }
                        }
                    }
                }
                if !values.is_empty() {
                    out.push(crate::log::LoggedReading {
                        sensor: sensor.to_owned(),
                        gateway,
                        kind: *kind,
                        ts: Timestamp(ts),
                        values,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Agg;
    use pantau_model::SensorKind;

    #[test]
    fn builds_influxql() {
        let q = HistoryQuery {
            sensor: "fl-a".into(),
            kind: SensorKind::FloodGauge,
            fields: vec!["water_level_cm".into()],
            from: Timestamp(0),
            to: Timestamp(3_600_000),
            every_ms: Some(300_000),
            agg: Agg::Mean,
        };
        assert_eq!(
            InfluxQuery::statement(&q),
            "SELECT MEAN(\"water_level_cm\") AS \"water_level_cm\" FROM \"flood_gauge\" WHERE \"sensor\" = 'fl-a' AND time >= 0ms AND time < 3600000ms GROUP BY time(300000ms) fill(none)"
        );
    }
}
