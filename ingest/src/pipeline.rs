//! From an envelope payload to durably received readings: validate → commit
//! to the ingest log → count → offer to live subscribers. The caller
//! acknowledges upstream only after [`Ingestor::ingest`] returns `Ok`; the
//! sinks drain the log on their own pace (see [`crate::drain`]).

use std::sync::Arc;

use pantau_model::validate::check_envelope;
use pantau_model::{Policy, Registry, SensorKind, SharedRegistry, Timestamp};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::log::{IngestLog, LoggedReading};
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
        }
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
        let registry = self.registry();
        let now = Timestamp::now();
        let mut logged: Vec<LoggedReading> = Vec::new();
        let mut outcomes = Vec::with_capacity(payloads.len());
        for payload in payloads {
            self.metrics.envelopes_received.inc();
            let checked = match check_envelope(
                payload,
                gateway,
                registry.as_ref(),
                now,
                &self.policy,
            ) {
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
            let stored = checked.accepted.len();
            self.metrics.readings_accepted.inc_by(stored as u64);
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
            outcomes.push(IngestOutcome {
                stored,
                rejected: checked.rejected.len(),
                envelope_error: None,
            });
        }
        let committed = self.log.append(logged).await?;
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
        Ok(outcomes)
    }
}
