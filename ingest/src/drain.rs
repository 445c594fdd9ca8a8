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
            tracing::debug!(
                cursor,
                consumed,
                appended = log.appended(),
                "Nothing visible yet after the cursor."
            );
            // Counted but not yet visible (commit racing the counter).
            drop(permit);
            log.wait_for_append(Duration::from_millis(10)).await;
            continue;
        };
        cursor = last.id;
        let n = batch.len() as u64;
        tracing::debug!(cursor, readings = n, "Draining a batch.");
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
                    tracing::debug!(
                        written = report.written,
                        dead = report.dead_lettered,
                        "Batch delivered."
                    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LoggedReading;
    use crate::store::Store;
    use pantau_model::{SensorKind, Timestamp, Value};

    fn r(base: i64, i: i64) -> LoggedReading {
        LoggedReading {
            sensor: "fl-a".into(),
            gateway: "gw".into(),
            kind: SensorKind::FloodGauge,
            ts: Timestamp(base + i),
            values: [("water_level_cm".to_string(), Value::Num(i as f64))].into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drains_everything_appended_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let m = IngestMetrics::default();
        let log = Arc::new(IngestLog::open(dir.path(), 10_000_000, m.clone()).unwrap());
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let stop = CancellationToken::new();
        let cfg = DrainConfig {
            max_batch: 500,
            max_delay: Duration::from_millis(20),
            concurrency: 2,
        };
        let task = tokio::spawn(drain(
            log.clone(),
            Sink::Embedded(store.clone()),
            cfg,
            m.clone(),
            stop.clone(),
        ));
        let mut writers = Vec::new();
        let t0 = Timestamp::now().0 - 3_600_000;
        for w in 0..8i64 {
            let log = log.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..200i64 {
                    let base = (w * 200 + i) * 10;
                    log.append((0..10).map(|k| r(t0, base + k)).collect())
                        .await
                        .unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while m.log_delivered.get() < 16_000 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck with {} pending, {} delivered",
                log.pending(),
                m.log_delivered.get()
            );
            log.wait_for_append(Duration::from_millis(50)).await;
        }
        assert_eq!(m.log_delivered.get(), 16_000);
        assert_eq!(log.pending(), 0);
        assert_eq!(store.sample_count().unwrap(), 16_000);
        stop.cancel();
        task.await.unwrap();
    }
}
