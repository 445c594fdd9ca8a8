//! Alert counters, exported on `/metrics`: alerts opened and resolved by
//! rule, evaluation time, readings evaluated and refused as stale, and
//! per webhook subscriber notifications sent, failed and retried, and the
//! outbox depth.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels naming a rule or a subscriber.
pub type Labels = Vec<(&'static str, String)>;

/// Counters of alerting.
#[derive(Debug, Clone)]
pub struct AlertMetrics {
    /// Alerts raised, by rule.
    pub opened: Family<Labels, Counter>,
    /// Alerts resolved, by rule.
    pub resolved: Family<Labels, Counter>,
    /// Readings evaluated.
    pub readings: Counter,
    /// Readings older than one already evaluated for the same rule.
    pub stale: Counter,
    /// Time to evaluate and record one batch.
    pub eval_seconds: Histogram,
    /// Notifications the receiver acknowledged, by subscriber.
    pub sent: Family<Labels, Counter>,
    /// Attempts that failed, by subscriber.
    pub failed: Family<Labels, Counter>,
    /// Attempts that were retries, by subscriber.
    pub retried: Family<Labels, Counter>,
    /// Notifications waiting, by subscriber.
    pub outbox: Family<Labels, Gauge>,
}

impl Default for AlertMetrics {
    fn default() -> Self {
        Self {
            opened: Family::default(),
            resolved: Family::default(),
            readings: Counter::default(),
            stale: Counter::default(),
            eval_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 9)),
            sent: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            outbox: Family::default(),
        }
    }
}

impl AlertMetrics {
    /// Registers every metric under `pantau_alerts_`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("pantau_alerts");
        r.register("opened", "Alerts raised, by rule", self.opened.clone());
        r.register(
            "resolved",
            "Alerts resolved, by rule",
            self.resolved.clone(),
        );
        r.register(
            "readings_evaluated",
            "Readings evaluated",
            self.readings.clone(),
        );
        r.register(
            "readings_stale",
            "Readings older than one already evaluated by a rule (not evaluated)",
            self.stale.clone(),
        );
        r.register(
            "evaluation_seconds",
            "Time to evaluate and record one batch of readings",
            self.eval_seconds.clone(),
        );
        r.register(
            "notifications_sent",
            "Notifications acknowledged by the receiver, by subscriber",
            self.sent.clone(),
        );
        r.register(
            "notifications_failed",
            "Notification attempts that failed, by subscriber",
            self.failed.clone(),
        );
        r.register(
            "notifications_retried",
            "Notification attempts that were retries, by subscriber",
            self.retried.clone(),
        );
        r.register(
            "outbox_depth",
            "Notifications waiting, by subscriber",
            self.outbox.clone(),
        );
    }

    pub(crate) fn opened(&self, rule: &str) {
        self.opened
            .get_or_create(&vec![("rule", rule.to_owned())])
            .inc();
    }

    pub(crate) fn resolved(&self, rule: &str) {
        self.resolved
            .get_or_create(&vec![("rule", rule.to_owned())])
            .inc();
    }
}
