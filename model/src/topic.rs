//! MQTT topics of the wire contract: `pantau/v1/gw/{gw}/{telemetry|status|cmd}`
//! and `pantau/v1/alerts/{kind}/{sensor}`.

use crate::id::{GatewayId, IdError};

/// Prefix of every gateway topic.
pub const GATEWAY_PREFIX: &str = "pantau/v1/gw/";

/// Which of a gateway's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Readings, gateway → platform.
    Telemetry,
    /// Online/offline and health, retained; also the last will.
    Status,
    /// Commands, platform → gateway.
    Cmd,
}

impl TopicKind {
    /// The last topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Telemetry => "telemetry",
            TopicKind::Status => "status",
            TopicKind::Cmd => "cmd",
        }
    }
}

/// A parsed gateway topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayTopic {
    /// The gateway the topic belongs to.
    pub gateway: GatewayId,
    /// Which topic.
    pub kind: TopicKind,
}

/// Why a topic is not a gateway topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not under `pantau/v1/gw/`, or not `{gw}/{kind}` below it.
    #[error("not a pantau gateway topic")]
    NotGatewayTopic,
    /// The gateway level is not a valid id.
    #[error("invalid gateway id in topic: {0}")]
    BadGateway(#[from] IdError),
}

impl GatewayTopic {
    /// Builds a topic.
    pub fn new(gateway: GatewayId, kind: TopicKind) -> Self {
        Self { gateway, kind }
    }

    /// Parses a concrete topic name (no wildcards).
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(GATEWAY_PREFIX)
            .ok_or(TopicError::NotGatewayTopic)?;
        let (gw, kind) = rest.split_once('/').ok_or(TopicError::NotGatewayTopic)?;
        let kind = match kind {
            "telemetry" => TopicKind::Telemetry,
            "status" => TopicKind::Status,
            "cmd" => TopicKind::Cmd,
            _ => return Err(TopicError::NotGatewayTopic),
        };
        Ok(Self {
            gateway: GatewayId::new(gw)?,
            kind,
        })
    }

    /// The topic name.
    pub fn render(&self) -> String {
        topic(self.gateway.as_str(), self.kind)
    }
}

/// The topic name for a gateway id that is already known to be valid.
pub fn topic(gateway: &str, kind: TopicKind) -> String {
    format!("{GATEWAY_PREFIX}{gateway}/{}", kind.as_str())
}

/// The topic on which alert state changes for a sensor are published.
pub fn alert_topic(kind: crate::SensorKind, sensor: &str) -> String {
    format!("pantau/v1/alerts/{kind}/{sensor}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses() {
        let gw = GatewayId::new("gw-pelabuhan").unwrap();
        for kind in [TopicKind::Telemetry, TopicKind::Status, TopicKind::Cmd] {
            let t = GatewayTopic::new(gw.clone(), kind);
            assert_eq!(GatewayTopic::parse(&t.render()), Ok(t));
        }
        assert_eq!(
            topic("gw-a", TopicKind::Telemetry),
            "pantau/v1/gw/gw-a/telemetry"
        );
    }

    #[test]
    fn rejects_foreign_and_hostile_topics() {
        for t in [
            "pantau/v1/gw/+/telemetry",
            "pantau/v1/gw/#",
            "pantau/v1/gw/a/b/telemetry",
            "pantau/v1/gw//telemetry",
            "pantau/v1/gw/a/other",
            "pantau/v2/gw/a/telemetry",
            "$SYS/x",
            "",
        ] {
            assert!(GatewayTopic::parse(t).is_err(), "{t}");
        }
    }
}
