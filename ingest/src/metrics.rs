//! Ingest counters, exported in Prometheus text format on `/metrics`.
//! Every rejection and drop is counted under the same reason code that is
//! logged. The ingest log exports `accepted / persisted / delivered /
//! dropped{reason} / replayed` (DESIGN.md §4.5).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set with one `reason` label.
pub type ReasonLabels = Vec<(&'static str, &'static str)>;

/// Counters of the ingest path.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    /// Envelopes received, whatever became of them.
    pub envelopes_received: Counter,
    /// Envelopes refused whole, by reason.
    pub envelopes_rejected: Family<ReasonLabels, Counter>,
    /// Readings that passed validation.
    pub readings_accepted: Counter,
    /// Readings refused by validation, by reason.
    pub readings_rejected: Family<ReasonLabels, Counter>,
    /// Live events dropped because a live subscriber lagged.
    pub live_lagged: Counter,
    /// Live events replaced by a newer one of the same sensor before a slow
    /// client took them.
    pub live_coalesced: Counter,
    /// Readings offered to the ingest log.
    pub log_accepted: Counter,
    /// Readings committed to the ingest log.
    pub log_persisted: Counter,
    /// Readings confirmed by the sink and removed from the log.
    pub log_delivered: Counter,
    /// Readings dropped (refused or dead-lettered), by reason.
    pub log_dropped: Family<ReasonLabels, Counter>,
    /// Readings delivered again after a restart.
    pub log_replayed: Counter,
    /// Readings waiting in the log for the sink (the backlog).
    pub log_pending: Gauge,
    /// Rejected readings kept for re-ingestion.
    pub rejected_kept: Gauge,
    /// Kept rejected readings re-ingested (and stored) after their cause
    /// was fixed.
    pub rejected_replayed: Counter,
    /// Ingest log group-commit latency.
    pub log_commit_seconds: Histogram,
    /// Sink write attempts that failed and were retried, by reason.
    pub sink_retries: Family<ReasonLabels, Counter>,
    /// Broker hook decisions (EMQX, VerneMQ), by broker, hook and verdict.
    pub broker_hooks: Family<ReasonLabels, Counter>,
    /// 1 while the sink is stopped by a fatal error (bad credentials, ...).
    pub sink_stopped: Gauge,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self {
            envelopes_received: Counter::default(),
            envelopes_rejected: Family::default(),
            broker_hooks: Family::default(),
            readings_accepted: Counter::default(),
            readings_rejected: Family::default(),
            live_lagged: Counter::default(),
            live_coalesced: Counter::default(),
            log_accepted: Counter::default(),
            log_persisted: Counter::default(),
            log_delivered: Counter::default(),
            log_dropped: Family::default(),
            log_replayed: Counter::default(),
            log_pending: Gauge::default(),
            rejected_kept: Gauge::default(),
            rejected_replayed: Counter::default(),
            log_commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            sink_retries: Family::default(),
            sink_stopped: Gauge::default(),
        }
    }
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
            "broker_hook_decisions",
            "Answers to an external broker's authentication and authorization hooks",
            self.broker_hooks.clone(),
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
            "readings_rejected",
            "Readings refused by validation, by reason",
            self.readings_rejected.clone(),
        );
        r.register(
            "live_lagged",
            "Live events skipped by lagging live subscribers",
            self.live_lagged.clone(),
        );
        r.register(
            "live_coalesced",
            "Live events replaced by a newer reading of the same sensor for a slow client",
            self.live_coalesced.clone(),
        );
        r.register(
            "log_accepted",
            "Readings offered to the ingest log",
            self.log_accepted.clone(),
        );
        r.register(
            "log_persisted",
            "Readings committed to the ingest log",
            self.log_persisted.clone(),
        );
        r.register(
            "log_delivered",
            "Readings confirmed by the sink",
            self.log_delivered.clone(),
        );
        r.register(
            "log_dropped",
            "Readings refused or dead-lettered, by reason",
            self.log_dropped.clone(),
        );
        r.register(
            "log_replayed",
            "Readings delivered again after a restart",
            self.log_replayed.clone(),
        );
        r.register(
            "rejected_kept",
            "Rejected readings kept for re-ingestion",
            self.rejected_kept.clone(),
        );
        r.register(
            "rejected_replayed",
            "Kept rejected readings re-ingested after their cause was fixed",
            self.rejected_replayed.clone(),
        );
        r.register(
            "log_pending",
            "Readings waiting in the ingest log",
            self.log_pending.clone(),
        );
        r.register(
            "log_commit_seconds",
            "Ingest log group commit latency",
            self.log_commit_seconds.clone(),
        );
        r.register(
            "sink_retries",
            "Sink writes retried, by reason",
            self.sink_retries.clone(),
        );
        r.register(
            "sink_stopped",
            "1 while the sink is stopped by a fatal error",
            self.sink_stopped.clone(),
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

    /// Counts readings dropped from (or refused by) the log.
    pub fn drop_readings(&self, reason: &'static str, n: u64) {
        self.log_dropped
            .get_or_create(&vec![("reason", reason)])
            .inc_by(n);
    }

    /// Counts one broker hook decision.
    pub fn broker_hook(&self, broker: &'static str, hook: &'static str, verdict: &'static str) {
        self.broker_hooks
            .get_or_create(&vec![
                ("broker", broker),
                ("hook", hook),
                ("verdict", verdict),
            ])
            .inc();
    }

    /// Counts a retried sink write.
    pub fn retry(&self, reason: &'static str) {
        self.sink_retries
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}
