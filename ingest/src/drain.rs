//! Drains the ingest log into a sink: batch (size or delay) → write (with
//! retries, in the sink) → acknowledge, which deletes the entries from the
//! log. Several batches may be in flight (a concurrency limit); each is
//! acknowledged on its own, so a slow batch never blocks the deletion of
//! others, and whatever is not acknowledged is replayed after a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::log::IngestLog;
use crate::metrics::IngestMetrics;
use crate::sink::Sink;

/// Batching and concurrency of a drain.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Readings per sink write (about; whole entries are kept together).
    pub max_batch: usize,
    /// Longest a reading waits for a fuller batch.
    pub max_delay: Duration,
    /// Sink writes in flight at once.
    pub concurrency: usize,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            max_batch: 5_000,
            max_delay: Duration::from_millis(500),
            concurrency: 2,
        }
    }
}

/// Runs until `shutdown` fires or the sink stops on a fatal error.
pub async fn drain(
    log: Arc<IngestLog>,
    sink: Sink,
    cfg: DrainConfig,
    metrics: IngestMetrics,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let fatal = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut cursor = 0i64;
    let mut consumed = 0u64;
    'outer: loop {
        // Wait for a full batch, or for the oldest unread reading to have
        // waited `max_delay`.
        let mut since: Option<tokio::time::Instant> = None;
        loop {
            let available = log.appended().saturating_sub(consumed);
            if available as usize >= cfg.max_batch {
                break;
            }
            let now = tokio::time::Instant::now();
            let wait = if available > 0 {
                let start = *since.get_or_insert(now);
                if now >= start + cfg.max_delay {
                    break;
                }
                start + cfg.max_delay - now
            } else {
                cfg.max_delay
            };
            tokio::select! {
                _ = log.wait_for_append(wait) => {}
                _ = shutdown.cancelled() => break 'outer,
                _ = fatal.cancelled() => break 'outer,
            }
            while tasks.try_join_next().is_some() {}
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
            _ = fatal.cancelled() => break,
        };
        let reader = log.clone();
        let max = cfg.max_batch;
        let read = tokio::task::spawn_blocking(move || reader.read_after(cursor, max)).await;
        let batch = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Reading the ingest log failed; the sink stops.");
                metrics.sink_stopped.set(1);
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "Ingest log reader panicked; the sink stops.");
                metrics.sink_stopped.set(1);
                break;
            }
        };
        let Some(last) = batch.entries.last() else {
            // Counted but not yet visible (commit racing the counter).
            drop(permit);
            log.wait_for_append(Duration::from_millis(10)).await;
            continue;
        };
        cursor = last.id;
        let n = batch.len() as u64;
        consumed += n;
        if batch.replayed {
            metrics.log_replayed.inc_by(n);
        }
        let (log, sink, metrics, fatal) =
            (log.clone(), sink.clone(), metrics.clone(), fatal.clone());
        tasks.spawn(async move {
            let _permit = permit;
            match sink.write(&batch, &metrics).await {
                Ok(report) => {
                    if let Err(e) = log.ack(batch.ids()).await {
                        // Not deleted: delivered again after a restart;
                        // storage is idempotent by key.
                        tracing::error!(error = %e, "Acknowledging a delivered batch failed.");
                        return;
                    }
                    metrics.log_delivered.inc_by(report.written);
                    if report.dead_lettered > 0 {
                        metrics.drop_readings("dead_letter", report.dead_lettered);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "Sink stopped; readings stay in the ingest log.");
                    metrics.sink_stopped.set(1);
                    fatal.cancel();
                }
            }
        });
    }
    // Give in-flight writes a moment; whatever is cut off stays in the log.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}
