//! History queries, answered the same way by both stores: a time range
//! `[from, to)`, raw samples or windows of `every` aligned to the Unix
//! epoch (as InfluxQL's `GROUP BY time()`), and an aggregate per window.
//! Empty windows are omitted (InfluxQL `fill(none)`).

use pantau_model::{FieldType, SensorKind, Timestamp};
use serde::Serialize;

/// Aggregate per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    /// Arithmetic mean.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Value with the latest timestamp.
    Last,
    /// Number of samples.
    Count,
}

impl Agg {
    /// Parses `mean`, `min`, `max`, `last` or `count`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mean" => Some(Self::Mean),
            "min" => Some(Self::Min),
            "max" => Some(Self::Max),
            "last" => Some(Self::Last),
            "count" => Some(Self::Count),
            _ => None,
        }
    }

    /// The InfluxQL function name.
    pub fn influxql(self) -> &'static str {
        match self {
            Self::Mean => "MEAN",
            Self::Min => "MIN",
            Self::Max => "MAX",
            Self::Last => "LAST",
            Self::Count => "COUNT",
        }
    }
}

/// One history request for one sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    /// Sensor id.
    pub sensor: String,
    /// Its kind (the InfluxDB measurement).
    pub kind: SensorKind,
    /// Fields to return (each must belong to the kind).
    pub fields: Vec<String>,
    /// Start, inclusive.
    pub from: Timestamp,
    /// End, exclusive.
    pub to: Timestamp,
    /// Window length in ms; `None` for raw samples.
    pub every_ms: Option<i64>,
    /// Aggregate per window (ignored for raw).
    pub agg: Agg,
}

/// Why a history query cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The request is not meaningful (reported to the client as a 4xx).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("history query failed: {0}")]
    Backend(String),
}

impl HistoryQuery {
    /// Checks the request against the kind's fields.
    pub fn validate(&self) -> Result<(), HistoryError> {
        if self.from >= self.to {
            return Err(HistoryError::Invalid("from must be before to".into()));
        }
        if self.every_ms.is_some_and(|e| e <= 0) {
            return Err(HistoryError::Invalid("every must be positive".into()));
        }
        for f in &self.fields {
            let Some(spec) = self.kind.field(f) else {
                return Err(HistoryError::Invalid(format!(
                    "field {f:?} does not exist for {}",
                    self.kind
                )));
            };
            if spec.ty == FieldType::Bool
                && self.every_ms.is_some()
                && matches!(self.agg, Agg::Mean | Agg::Min | Agg::Max)
            {
                return Err(HistoryError::Invalid(format!(
                    "field {f:?} is true/false: only last and count apply"
                )));
            }
        }
        Ok(())
    }
}

/// One point of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Sample time, or window start.
    pub ts: Timestamp,
    /// Value (booleans as 0/1).
    pub value: f64,
}

/// One field's points, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Field name.
    pub field: String,
    /// Points.
    pub points: Vec<Point>,
}

/// Partial aggregate of a window, mergeable (raw sample: n = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Partial {
    pub(crate) n: i64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) last_ts: i64,
    pub(crate) last: f64,
}

impl Partial {
    pub(crate) fn merge(&mut self, o: &Partial) {
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.last_ts >= self.last_ts {
            self.last_ts = o.last_ts;
            self.last = o.last;
        }
    }

    pub(crate) fn value(&self, agg: Agg) -> f64 {
        match agg {
            Agg::Mean => self.sum / self.n as f64,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Last => self.last,
            Agg::Count => self.n as f64,
        }
    }
}
