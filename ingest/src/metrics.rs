//! Ingest counters, exported in Prometheus text format on `/metrics`.
//! Every rejection is counted under the same reason code that is logged.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Label set with one `reason` label.
pub type ReasonLabels = Vec<(&'static str, &'static str)>;

/// Counters of the ingest path.
#[derive(Debug, Clone, Default)]
pub struct IngestMetrics {
    /// Envelopes received, whatever became of them.
    pub envelopes_received: Counter,
    /// Envelopes refused whole, by reason.
    pub envelopes_rejected: Family<ReasonLabels, Counter>,
    /// Readings that passed validation.
    pub readings_accepted: Counter,
    /// Readings committed to the store.
    pub readings_persisted: Counter,
    /// Readings refused, by reason.
    pub readings_rejected: Family<ReasonLabels, Counter>,
    /// Live events dropped because a live subscriber lagged.
    pub live_lagged: Counter,
}

impl IngestMetrics {
    /// Registers every counter under `pantau_ingest_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pantau_ingest");
        r.register(
            "envelopes_received",
            "Telemetry envelopes received",
            self.envelopes_received.clone(),
        );
        r.register(
            "envelopes_rejected",
            "Envelopes refused whole, by reason",
            self.envelopes_rejected.clone(),
        );
        r.register(
            "readings_accepted",
            "Readings that passed validation",
            self.readings_accepted.clone(),
        );
        r.register(
            "readings_persisted",
            "Readings committed to storage",
            self.readings_persisted.clone(),
        );
        r.register(
            "readings_rejected",
            "Readings refused, by reason",
            self.readings_rejected.clone(),
        );
        r.register(
            "live_lagged",
            "Live events skipped by lagging live subscribers",
            self.live_lagged.clone(),
        );
    }

    /// Counts one refused reading.
    pub fn reject_reading(&self, reason: &'static str) {
        self.readings_rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts one refused envelope.
    pub fn reject_envelope(&self, reason: &'static str) {
        self.envelopes_rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}
