//! Ingest: from a received envelope to durably stored readings.
//!
//! [`Ingestor`] validates an envelope reading by reading against the sensor
//! registry, commits the good readings to the store, counts every rejection
//! by reason, and only then reports success — the caller (the MQTT front
//! end) acknowledges the publish after that. Stored readings are then
//! offered to live subscribers (SSE) through a broadcast channel.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod pipeline;
pub mod store;

pub use metrics::IngestMetrics;
pub use pipeline::{IngestOutcome, Ingestor, LiveReading};
pub use store::{LatestReading, Store};

/// Errors of the ingest path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed.
    #[error("embedded store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A commit failed; the batch was not stored.
    #[error("store commit failed: {0}")]
    CommitFailed(String),
    /// The store's writer thread is gone (shutting down or crashed).
    #[error("the store writer has stopped")]
    WriterGone,
    /// The store's data directory could not be prepared.
    #[error("cannot prepare store directory {path}: {source}")]
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
