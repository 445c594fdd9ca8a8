//! Drains the ingest log into a sink: batch (size or delay) → write (with
//! retries, in the sink) → acknowledge, which deletes the entries from the
//! log. Several batches may be in flight (a concurrency limit); each is
//! acknowledged on its own, so a slow batch never blocks the deletion of
//! others, and whatever is not acknowledged is replayed after a restart.
//!
//! Nothing here fails silently: a failed acknowledgement is retried with
//! backoff (counted as `sink_retries{reason="log_ack"}`, the drain shown
//! down on `/readyz` meanwhile) until it holds, so delivered entries never
//! linger until a restart; a sink that keeps failing shows storage down;
//! a fatal sink error or a broken log ends the drain with a [`DrainError`]
//! for its supervisor, which restarts it. A restarted drain starts again
//! from the oldest entry still in the log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pantau_model::backoff::Backoff;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Part};
use crate::log::IngestLog;
use crate::metrics::IngestMetrics;
use crate::sink::{Fatal, Sink};

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

/// Why a drain stopped before it was told to.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The sink refused for good (bad credentials, missing database).
    #[error("the sink stopped: {0}")]
    Sink(#[from] Fatal),
    /// The ingest log could not be read or acknowledged.
    #[error("the ingest log failed: {0}")]
    Log(#[from] crate::Error),
    /// The blocking log reader panicked.
    #[error("the ingest log reader panicked")]
    ReaderPanicked,
}

/// Everything one drain's batch tasks share.
#[derive(Debug, Clone)]
struct Ctx {
    log: Arc<IngestLog>,
    sink: Sink,
    metrics: IngestMetrics,
    health: Health,
    shutdown: CancellationToken,
    /// Fired, with the reason kept, when the drain must stop.
    fatal: CancellationToken,
    reason: Arc<Mutex<Option<DrainError>>>,
}

impl Ctx {
    fn fail(&self, e: DrainError) {
        tracing::error!(error = %e, "The drain stops; readings stay in the ingest log.");
        self.health.down(Part::Drain, &e);
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        reason.get_or_insert(e);
        self.fatal.cancel();
    }

    /// Deletes delivered entries, retrying until the log takes the
    /// acknowledgement (or the process stops: then they are delivered
    /// again after the restart, and storage is idempotent by key).
    async fn acknowledge(&self, ids: Vec<i64>) -> Result<(), DrainError> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
            .expect("valid backoff bounds");
        loop {
            match self.log.ack(ids.clone()).await {
                Ok(()) => {
                    self.health.up(Part::Drain);
                    return Ok(());
                }
                Err(e @ crate::Error::WriterGone) => return Err(e.into()),
                Err(e) => {
                    self.metrics.retry("log_ack");
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Acknowledging a delivered batch failed, retrying.");
                    self.health.down(
                        Part::Drain,
                        format_args!("acknowledging delivered readings failed: {e}"),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    /// Writes one batch to the sink and acknowledges it.
    async fn deliver(&self, batch: crate::log::Batch) {
        match self.sink.write(&batch, &self.metrics, &self.health).await {
            Ok(report) => {
                if let Err(e) = self.acknowledge(batch.ids()).await {
                    return self.fail(e);
                }
                self.metrics.log_delivered.inc_by(report.written);
                tracing::debug!(
                    written = report.written,
                    dead = report.dead_lettered,
                    "Batch delivered."
                );
                if report.dead_lettered > 0 {
                    self.metrics
                        .drop_readings("dead_letter", report.dead_lettered);
                }
            }
            Err(e) => {
                self.metrics.sink_stopped.set(1);
                self.health.down(Part::Storage, &e);
                self.fail(e.into());
            }
        }
    }
}

/// Runs until `shutdown` fires (`Ok`) or the drain cannot go on (`Err`).
/// Reports [`Part::Storage`] and [`Part::Drain`] to `health`.
pub async fn drain(
    log: Arc<IngestLog>,
    sink: Sink,
    cfg: DrainConfig,
    metrics: IngestMetrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), DrainError> {
    metrics.sink_stopped.set(0);
    // With nothing to deliver the drain is ready at once; with a backlog
    // (a replay, or what a failed predecessor left) only once a batch went
    // through, so a restart that fails again never looks ready meanwhile.
    if log.pending() == 0 {
        health.up(Part::Drain);
    }
    let ctx = Ctx {
        log: log.clone(),
        sink,
        metrics: metrics.clone(),
        health,
        shutdown: shutdown.clone(),
        fatal: CancellationToken::new(),
        reason: Arc::default(),
    };
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut cursor = 0i64;
    // Readings of this process's count already delivered (a restarted
    // drain must not wait for them again).
    let mut consumed = log.appended().saturating_sub(log.pending());
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
                _ = ctx.fatal.cancelled() => break 'outer,
            }
            while tasks.try_join_next().is_some() {}
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => break,
            _ = ctx.fatal.cancelled() => break,
        };
        let reader = log.clone();
        let max = cfg.max_batch;
        let read = tokio::task::spawn_blocking(move || reader.read_after(cursor, max)).await;
        let batch = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                ctx.fail(e.into());
                break;
            }
            Err(_) => {
                ctx.fail(DrainError::ReaderPanicked);
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
        metrics.log_replayed.inc_by(batch.replayed);
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let _permit = permit;
            ctx.deliver(batch).await;
        });
    }
    // Give in-flight writes a moment; whatever is cut off stays in the log.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let reason = ctx.reason.lock().unwrap_or_else(|p| p.into_inner()).take();
    match reason {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
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
            Health::default(),
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
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_acknowledgement_is_retried_counted_and_leaves_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let m = IngestMetrics::default();
        let log = Arc::new(IngestLog::open(dir.path(), 10_000, m.clone()).unwrap());
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let health = Health::default();
        let stop = CancellationToken::new();
        let t0 = Timestamp::now().0 - 3_600_000;
        log.append((0..100).map(|i| r(t0, i)).collect())
            .await
            .unwrap();
        // The sink will succeed; the log refuses the first acknowledgement.
        log.fail_next_acks(1);
        let task = tokio::spawn(drain(
            log.clone(),
            Sink::Embedded(store.clone()),
            DrainConfig {
                max_batch: 100,
                max_delay: Duration::from_millis(10),
                concurrency: 1,
            },
            m.clone(),
            health.clone(),
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.pending() > 0 || m.log_delivered.get() < 100 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck: {} pending, {} delivered",
                log.pending(),
                m.log_delivered.get()
            );
            log.wait_for_append(Duration::from_millis(20)).await;
        }
        assert_eq!(
            m.sink_retries
                .get_or_create(&vec![("reason", "log_ack")])
                .get(),
            1,
            "the failed acknowledgement is counted"
        );
        assert_eq!(m.log_delivered.get(), 100, "delivered once, counted once");
        assert_eq!(store.sample_count().unwrap(), 100);
        assert_eq!(
            health.state(Part::Drain),
            Some(crate::health::PartState::Up)
        );
        // A new entry still flows: the drain did not stall on the failure.
        log.append(vec![r(t0, 1_000)]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.pending() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "new entry stuck");
            log.wait_for_append(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_drain_delivers_what_its_predecessor_left() {
        let dir = tempfile::tempdir().unwrap();
        let m = IngestMetrics::default();
        let log = Arc::new(IngestLog::open(dir.path(), 10_000, m.clone()).unwrap());
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let t0 = Timestamp::now().0 - 3_600_000;
        log.append((0..50).map(|i| r(t0, i)).collect())
            .await
            .unwrap();
        // A drain took the entry from the tail, then died before acking.
        let taken = log.read_after(0, 1_000).unwrap();
        assert_eq!(taken.len(), 50);
        log.append((50..80).map(|i| r(t0, i)).collect())
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(drain(
            log.clone(),
            Sink::Embedded(store.clone()),
            DrainConfig {
                max_batch: 1_000,
                max_delay: Duration::from_millis(10),
                concurrency: 1,
            },
            m.clone(),
            Health::default(),
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.pending() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} pending",
                log.pending()
            );
            log.wait_for_append(Duration::from_millis(20)).await;
        }
        assert_eq!(store.sample_count().unwrap(), 80);
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
