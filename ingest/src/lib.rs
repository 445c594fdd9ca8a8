//! Ingest: from a received envelope to durably stored readings.
//!
//! [`Ingestor`] validates an envelope reading by reading against the sensor
//! registry, commits the good readings to the [`IngestLog`], counts every
//! rejection by reason, and only then reports success — the caller (the
//! MQTT front end, or the external-broker consumer) acknowledges after
//! that. [`drain::drain`] moves readings from the log into a [`Sink`] (the
//! embedded [`Store`] or InfluxDB) and deletes them from the log only once
//! the sink confirmed them. History queries are answered by either store
//! the same way ([`history`]).

#![forbid(unsafe_code)]

pub mod consumer;
pub mod drain;
mod group_commit;
pub mod health;
pub mod history;
pub mod influx;
pub mod log;
pub mod metrics;
pub mod pipeline;
pub mod sink;
pub mod store;

pub use health::{Health, Part};
pub use log::IngestLog;
pub use metrics::IngestMetrics;
pub use pipeline::{IngestOutcome, Ingestor, LiveReading, ReplayReport};
pub use sink::Sink;
pub use store::{LatestReading, Store};

/// Errors of the ingest path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed.
    #[error("{path}: {source}")]
    Sqlite {
        /// The database file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A commit failed; the batch was not stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The ingest log is full; nothing was appended or acknowledged.
    #[error("ingest log is full ({max_readings} readings); refusing until the sink catches up")]
    LogFull {
        /// The configured bound.
        max_readings: u64,
    },
    /// An entry of the ingest log cannot be decoded.
    #[error("ingest log {path} entry {id} is corrupt: {message}")]
    Corrupt {
        /// The database file.
        path: std::path::PathBuf,
        /// The entry.
        id: i64,
        /// The decoder's message.
        message: String,
    },
    /// A stored latest value cannot be decoded.
    #[error("ingest log {path}: the latest value of sensor {sensor} is corrupt: {message}")]
    CorruptLatest {
        /// The database file.
        path: std::path::PathBuf,
        /// The sensor whose value is unreadable.
        sensor: String,
        /// The decoder's message.
        message: String,
    },
    /// A writer thread is gone (shutting down or crashed).
    #[error("the writer thread has stopped")]
    WriterGone,
    /// A data directory could not be prepared.
    #[error("cannot prepare directory {path}: {source}")]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
