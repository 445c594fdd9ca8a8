//! Sinks: where readings end up. A sink write is `Ok` only when every
//! reading of the batch is stored or dead-lettered; transient failures are
//! retried inside with the shared backoff; a fatal failure (bad credentials,
//! missing database) stops the sink and leaves the data in the log.

use std::sync::Arc;
use std::time::Duration;

use pantau_model::backoff::Backoff;

use crate::health::{Health, Part};
use crate::history::{HistoryError, HistoryQuery, Series};
use crate::influx::{InfluxError, InfluxSink};
use crate::log::Batch;
use crate::metrics::IngestMetrics;
use crate::store::Store;

/// The storage backend readings are drained into.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The embedded SQLite time-series store.
    Embedded(Arc<Store>),
    /// An InfluxDB (v1, v2 or v3 write API).
    Influx(Arc<InfluxSink>),
}

/// What a successful write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Readings stored.
    pub written: u64,
    /// Readings the server refused, kept in the dead-letter table.
    pub dead_lettered: u64,
}

/// A failure that retrying cannot fix: the sink stops (and its drain's
/// supervisor tries again later), the readings stay in the log.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// InfluxDB refused for good: the credential, a missing database or
    /// bucket, an answer the sink does not know how to handle.
    #[error(transparent)]
    Influx(#[from] InfluxError),
    /// A request body could not be compressed.
    #[error("cannot compress a request body: {0}")]
    Compress(#[source] std::io::Error),
}

impl Sink {
    /// Writes a batch, retrying transient failures until it succeeds or a
    /// fatal error stops the sink. While it retries, [`Part::Storage`] is
    /// down in `health` with the reason; a success brings it up.
    pub async fn write(
        &self,
        batch: &Batch,
        metrics: &IngestMetrics,
        health: &Health,
    ) -> Result<WriteReport, Fatal> {
        match self {
            Sink::Embedded(store) => {
                let entries: Vec<_> = batch.entries.iter().map(|e| e.readings.clone()).collect();
                let n = batch.len() as u64;
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
                    .expect("valid backoff bounds");
                loop {
                    match store.write_logged(entries.clone()).await {
                        Ok(()) => {
                            health.up(Part::Storage);
                            return Ok(WriteReport {
                                written: n,
                                dead_lettered: 0,
                            });
                        }
                        Err(e) => {
                            metrics.retry("store_error");
                            health.down(Part::Storage, format_args!("store write failed: {e}"));
                            let delay = backoff.next_delay();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Store write failed, retrying.");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            }
            Sink::Influx(influx) => influx.write(batch, metrics, health).await,
        }
    }

    /// Answers a history query from this sink's store.
    pub async fn history(&self, q: &HistoryQuery) -> Result<Vec<Series>, HistoryError> {
        match self {
            Sink::Embedded(store) => {
                let (store, q) = (store.clone(), q.clone());
                tokio::task::spawn_blocking(move || store.history(&q))
                    .await
                    .map_err(|e| HistoryError::Backend(e.to_string()))?
            }
            Sink::Influx(influx) => influx.history(q).await,
        }
    }
}
