//! From an envelope payload to durably received readings: validate → commit
//! to the ingest log → count → offer to live subscribers. The caller
//! acknowledges upstream only after [`Ingestor::ingest`] returns `Ok`; the
//! sinks drain the log on their own pace (see [`crate::drain`]).

use std::sync::Arc;

use pantau_model::validate::{check_envelope, RejectReason};
use pantau_model::{Policy, Registry, SensorKind, SharedRegistry, Timestamp};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::log::{IngestLog, KeptRejection, LoggedReading, RejectedFilter};
use crate::metrics::IngestMetrics;
use crate::Result;

/// Live events kept for slow live subscribers before they skip ahead.
const LIVE_BUFFER: usize = 4096;

/// A stored reading, as offered to live subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReading {
    /// Sensor id.
    pub sensor: String,
    /// Sensor kind.
    pub kind: SensorKind,
    /// Reporting gateway.
    pub gateway: String,
    /// Observation time.
    pub ts: Timestamp,
    /// Values.
    pub values: pantau_model::Values,
}

/// What became of one envelope.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngestOutcome {
    /// Readings committed to the ingest log.
    pub stored: usize,
    /// Readings refused (each counted by reason).
    pub rejected: usize,
    /// Why the whole envelope was refused, if it was.
    pub envelope_error: Option<String>,
}

/// Where sensors registered through other processes come from, on state
/// shared between processes (a scaled deployment's PostgreSQL).
pub trait SensorSource: Send + Sync + std::fmt::Debug {
    /// Brings the shared registry up to date with the shared state (at
    /// most one look per short interval, however many callers ask).
    fn refresh(&self) -> futures::future::BoxFuture<'_, ()>;
}

/// The ingest path shared by every connection.
#[derive(Debug)]
pub struct Ingestor {
    /// Sensors and which gateway owns each (edited by the admin API).
    registry: Arc<SharedRegistry>,
    /// Where readings are committed before they are acknowledged.
    log: Arc<IngestLog>,
    /// Counters.
    metrics: IngestMetrics,
    /// Timestamp limits.
    policy: Policy,
    /// Fan-out of stored readings to live feeds.
    live: broadcast::Sender<Arc<LiveReading>>,
    /// Sensors registered elsewhere (shared state only): consulted before
    /// a reading is refused as naming an unknown sensor.
    sensor_source: std::sync::OnceLock<Arc<dyn SensorSource>>,
}

impl Ingestor {
    /// Builds the ingest path over a store.
    pub fn new(registry: Registry, log: Arc<IngestLog>, metrics: IngestMetrics) -> Self {
        Self::with_registry(Arc::new(SharedRegistry::new(registry)), log, metrics)
    }

    /// Builds the ingest path over a registry shared with others (the API
    /// edits it, sinks read it).
    pub fn with_registry(
        registry: Arc<SharedRegistry>,
        log: Arc<IngestLog>,
        metrics: IngestMetrics,
    ) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            registry,
            log,
            metrics,
            policy: Policy::default(),
            live,
            sensor_source: std::sync::OnceLock::new(),
        }
    }

    /// Consults `source` before refusing a reading of an unknown sensor,
    /// so a sensor registered through another API replica is accepted at
    /// once, not only after the next periodic refresh. Set once.
    pub fn set_sensor_source(&self, source: Arc<dyn SensorSource>) {
        let _ = self.sensor_source.set(source);
    }

    /// The current registry.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.get()
    }

    /// The shared registry, for edits.
    pub fn shared_registry(&self) -> &Arc<SharedRegistry> {
        &self.registry
    }

    /// The ingest log readings are committed to.
    pub fn log(&self) -> &Arc<IngestLog> {
        &self.log
    }

    /// The counters.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// A receiver of every reading stored from now on.
    pub fn subscribe_live(&self) -> broadcast::Receiver<Arc<LiveReading>> {
        self.live.subscribe()
    }

    /// Validates and durably stores the readings of one envelope published
    /// by `gateway`. `Ok` means every good reading is committed and every bad
    /// one counted; `Err` means nothing may be acknowledged.
    pub async fn ingest(&self, gateway: &str, payload: &[u8]) -> Result<IngestOutcome> {
        let mut outcomes = self.ingest_many(gateway, &[payload]).await?;
        Ok(outcomes.pop().unwrap_or_default())
    }

    /// [`Ingestor::ingest`] for several envelopes of one gateway, committed
    /// together; one outcome per envelope, in order.
    pub async fn ingest_many(
        &self,
        gateway: &str,
        payloads: &[&[u8]],
    ) -> Result<Vec<IngestOutcome>> {
        Ok(self.ingest_committed(gateway, payloads).await?.0)
    }

    /// [`Ingestor::ingest_many`], also answering the readings as committed
    /// (an ingest worker publishes them for the API replicas).
    pub async fn ingest_committed(
        &self,
        gateway: &str,
        payloads: &[&[u8]],
    ) -> Result<(Vec<IngestOutcome>, crate::log::Committed)> {
        let mut registry = self.registry();
        let now = Timestamp::now();
        let mut logged: Vec<LoggedReading> = Vec::new();
        let mut kept: Vec<KeptRejection> = Vec::new();
        let mut outcomes = Vec::with_capacity(payloads.len());
        for payload in payloads {
            self.metrics.envelopes_received.inc();
            let mut checked =
                check_envelope(payload, gateway, registry.as_ref(), now, &self.policy);
            if let (Ok(c), Some(source)) = (&checked, self.sensor_source.get()) {
                if c.rejected
                    .iter()
                    .any(|r| matches!(r.reason, RejectReason::UnknownSensor))
                {
                    source.refresh().await;
                    let fresh = self.registry();
                    if !Arc::ptr_eq(&fresh, &registry) {
                        registry = fresh;
                        checked =
                            check_envelope(payload, gateway, registry.as_ref(), now, &self.policy);
                    }
                }
            }
            let checked = match checked {
                Ok(c) => c,
                Err(e) => {
                    self.metrics.reject_envelope(e.reason());
                    tracing::warn!(gateway, reason = e.reason(), error = %e, "Envelope rejected.");
                    outcomes.push(IngestOutcome {
                        envelope_error: Some(e.to_string()),
                        ..IngestOutcome::default()
                    });
                    continue;
                }
            };
            for r in &checked.rejected {
                self.metrics.reject_reading(r.reason.code());
            }
            if !checked.rejected.is_empty() {
                let shown: Vec<String> = checked
                    .rejected
                    .iter()
                    .take(5)
                    .map(|r| r.to_string())
                    .collect();
                tracing::warn!(
                    gateway,
                    seq = checked.seq,
                    rejected = checked.rejected.len(),
                    accepted = checked.accepted.len(),
                    reasons = %shown.join("; "),
                    "Readings rejected."
                );
            }
            let (stored, rejected) = (checked.accepted.len(), checked.rejected.len());
            self.metrics.readings_accepted.inc_by(stored as u64);
            split(checked, gateway, now, &mut logged, &mut kept);
            outcomes.push(IngestOutcome {
                stored,
                rejected,
                envelope_error: None,
            });
        }
        let committed = self.log.append_with(logged, kept, Vec::new()).await?;
        self.offer_live(&committed);
        Ok((outcomes, committed))
    }

    /// Takes readings another process committed (an API replica mirrors
    /// what the ingest workers publish after their commits): kept in this
    /// process's log for the latest values, then offered to live feeds.
    /// They were validated where they were committed.
    pub async fn mirror(&self, readings: Vec<LoggedReading>) -> Result<()> {
        let committed = self.log.append(readings).await?;
        self.offer_live(&committed);
        Ok(())
    }

    /// Re-ingests kept rejected readings matching `filter` (after their
    /// cause was fixed): each is validated again, as from its gateway and
    /// now; those that pass are committed and their kept rows deleted in
    /// the same commit (counted in `rejected_replayed`), the others stay
    /// kept with their current reason.
    pub async fn replay_rejected(&self, filter: RejectedFilter) -> Result<ReplayReport> {
        let log = self.log.clone();
        let rows = tokio::task::spawn_blocking(move || log.rejected(&filter))
            .await
            .map_err(|_| crate::Error::WriterGone)??;
        let mut by_gateway: std::collections::BTreeMap<String, Vec<KeptRejection>> =
            Default::default();
        for row in rows {
            by_gateway.entry(row.gateway.clone()).or_default().push(row);
        }
        let registry = self.registry();
        let now = Timestamp::now();
        let mut report = ReplayReport::default();
        for (gateway, rows) in by_gateway {
            // The kept readings are the JSON they arrived as: they form an
            // envelope of their gateway again.
            let gw = serde_json::to_string(&gateway).unwrap_or_default();
            let readings: Vec<&str> = rows.iter().map(|r| r.reading.as_str()).collect();
            let payload = format!(
                r#"{{"v":1,"gw":{gw},"seq":0,"readings":[{}]}}"#,
                readings.join(",")
            );
            let checked = match check_envelope(
                payload.as_bytes(),
                &gateway,
                registry.as_ref(),
                now,
                &self.policy,
            ) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(gateway, error = %e, "Kept readings no longer decode; left as they are.");
                    report.still_rejected += rows.len();
                    continue;
                }
            };
            let (mut logged, mut kept) = (Vec::new(), Vec::new());
            let replayed = checked.accepted.len();
            split(checked, &gateway, now, &mut logged, &mut kept);
            report.replayed += replayed;
            report.still_rejected += kept.len();
            let ids = rows.iter().map(|r| r.id).collect();
            let committed = self.log.append_with(logged, kept, ids).await?;
            self.metrics.rejected_replayed.inc_by(replayed as u64);
            self.offer_live(&committed);
        }
        tracing::info!(
            replayed = report.replayed,
            still_rejected = report.still_rejected,
            "Kept rejected readings re-ingested."
        );
        Ok(report)
    }

    /// Offers committed readings to the live feeds.
    fn offer_live(&self, committed: &crate::log::Committed) {
        if self.live.receiver_count() > 0 {
            for r in committed.readings() {
                // No receiver left is fine: nobody is watching.
                let _ = self.live.send(Arc::new(LiveReading {
                    sensor: r.sensor.clone(),
                    kind: r.kind,
                    gateway: r.gateway.clone(),
                    ts: r.ts,
                    values: r.values.clone(),
                }));
            }
        }
    }
}

/// What a re-ingestion of kept rejected readings did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Readings that passed now and were committed.
    pub replayed: usize,
    /// Readings still refused (kept, with their current reason).
    pub still_rejected: usize,
}

/// The accepted readings of a checked envelope as log readings of
/// `gateway`, its rejected ones as kept rejections.
fn split(
    checked: pantau_model::validate::Checked,
    gateway: &str,
    now: Timestamp,
    logged: &mut Vec<LoggedReading>,
    kept: &mut Vec<KeptRejection>,
) {
    logged.extend(
        checked
            .accepted
            .into_iter()
            .zip(checked.kinds)
            .map(|(r, kind)| LoggedReading {
                sensor: r.sensor,
                gateway: gateway.to_owned(),
                kind,
                ts: r.ts,
                values: r.values,
            }),
    );
    kept.extend(checked.rejected.into_iter().map(|r| KeptRejection {
        id: 0,
        at_ms: now.millis(),
        gateway: gateway.to_owned(),
        message: r.to_string(),
        reason: r.reason.code().to_owned(),
        sensor: r.sensor,
        reading: r.raw.into(),
    }));
}
