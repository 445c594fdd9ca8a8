//! Gatekeeper counters, exported on `/metrics` as `pantau_broker_*`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::reason::{End, Refused, SubscribeFailed};

type Labels = Vec<(&'static str, &'static str)>;

/// Counters of the MQTT front end.
#[derive(Debug, Clone, Default)]
pub struct BrokerMetrics {
    /// Gateways connected now.
    pub connections: Gauge,
    /// Successful CONNECTs.
    pub connects: Counter,
    /// Connections refused before or at CONNECT, by reason.
    pub refused: Family<Labels, Counter>,
    /// Connections closed for misbehaviour, by reason.
    pub closed: Family<Labels, Counter>,
    /// Topic ACL violations, by operation.
    pub acl_violations: Family<Labels, Counter>,
    /// Packets received from gateways.
    pub packets_in: Counter,
    /// Publish payload bytes received.
    pub bytes_in: Counter,
    /// Publishes delivered to subscribers (live fan-out).
    pub messages_out: Counter,
    /// Payload bytes delivered to subscribers.
    pub bytes_out: Counter,
    /// Publishes delayed by a gateway's rate limit.
    pub throttled: Counter,
    /// Subscriptions answered with the failure code 0x80, by reason.
    pub subscribe_failed: Family<Labels, Counter>,
}

impl BrokerMetrics {
    /// Registers every counter.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pantau_broker");
        r.register(
            "connections",
            "Gateways connected now",
            self.connections.clone(),
        );
        r.register(
            "connects",
            "Accepted MQTT connections",
            self.connects.clone(),
        );
        r.register(
            "refused",
            "Connections refused, by reason",
            self.refused.clone(),
        );
        r.register(
            "closed",
            "Connections closed for misbehaviour, by reason",
            self.closed.clone(),
        );
        r.register(
            "acl_violations",
            "Topic ACL violations, by operation",
            self.acl_violations.clone(),
        );
        r.register(
            "packets_in",
            "MQTT packets received",
            self.packets_in.clone(),
        );
        r.register(
            "publish_bytes_in",
            "Publish payload bytes received",
            self.bytes_in.clone(),
        );
        r.register(
            "messages_out",
            "Publishes delivered to gateways (commands, live fan-out)",
            self.messages_out.clone(),
        );
        r.register(
            "throttled",
            "Publishes delayed by a gateway's rate limit",
            self.throttled.clone(),
        );
        r.register(
            "subscribe_failed",
            "Subscriptions answered with 0x80, by reason",
            self.subscribe_failed.clone(),
        );
    }

    pub(crate) fn refuse(&self, reason: Refused) {
        self.refused
            .get_or_create(&vec![("reason", reason.as_str())])
            .inc();
    }

    pub(crate) fn violation(&self, end: End) {
        self.closed
            .get_or_create(&vec![("reason", end.as_str())])
            .inc();
    }

    pub(crate) fn subscribe_failed(&self, reason: SubscribeFailed) {
        self.subscribe_failed
            .get_or_create(&vec![("reason", reason.as_str())])
            .inc();
    }

    pub(crate) fn acl_violation(&self, op: &'static str) {
        self.acl_violations.get_or_create(&vec![("op", op)]).inc();
    }

    pub(crate) fn connected(&self) {
        self.connects.inc();
        self.connections.inc();
    }

    pub(crate) fn disconnected(&self) {
        self.connections.dec();
    }

    pub(crate) fn packet_in(&self) {
        self.packets_in.inc();
    }

    pub(crate) fn message_out(&self, bytes: usize) {
        self.messages_out.inc();
        self.bytes_out.inc_by(bytes as u64);
    }

    pub(crate) fn throttled(&self) {
        self.throttled.inc();
    }

    pub(crate) fn bytes_in(&self, n: usize) {
        self.bytes_in.inc_by(n as u64);
    }
}
