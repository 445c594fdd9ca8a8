//! What an agency API token may do: read some kinds of sensors, acknowledge
//! alerts of some kinds, administer.
//!
//! Scopes are written `read:flood`, `read:traffic`, `read:port`,
//! `ack:<kind>` (e.g. `ack:flood_gauge`) and `admin`. `read:flood` covers
//! `flood_gauge`; `read:port` covers `tide_gauge`, `metocean` and `berth`;
//! `read:traffic` covers `traffic_counter`. `admin` reads everything
//! (gateway health included) and may register gateways.

use std::collections::BTreeSet;
use std::fmt;

use crate::SensorKind;

/// One scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `read:flood`.
    ReadFlood,
    /// `read:traffic`.
    ReadTraffic,
    /// `read:port`.
    ReadPort,
    /// `ack:<kind>`.
    Ack(SensorKind),
    /// `admin`.
    Admin,
}

/// A scope string that is not one of the known scopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?} (read:flood, read:traffic, read:port, ack:<kind>, admin)")]
pub struct ScopeError(pub String);

impl Scope {
    /// Parses one scope.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        match s {
            "read:flood" => Ok(Scope::ReadFlood),
            "read:traffic" => Ok(Scope::ReadTraffic),
            "read:port" => Ok(Scope::ReadPort),
            "admin" => Ok(Scope::Admin),
            other => other
                .strip_prefix("ack:")
                .and_then(|k| SensorKind::ALL.into_iter().find(|kind| kind.as_str() == k))
                .map(Scope::Ack)
                .ok_or_else(|| ScopeError(other.to_owned())),
        }
    }

    /// The kinds a read scope covers.
    pub fn reads(self) -> &'static [SensorKind] {
        match self {
            Scope::ReadFlood => &[SensorKind::FloodGauge],
            Scope::ReadTraffic => &[SensorKind::TrafficCounter],
            Scope::ReadPort => &[
                SensorKind::TideGauge,
                SensorKind::Metocean,
                SensorKind::Berth,
            ],
            Scope::Admin => &SensorKind::ALL,
            Scope::Ack(_) => &[],
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::ReadFlood => f.write_str("read:flood"),
            Scope::ReadTraffic => f.write_str("read:traffic"),
            Scope::ReadPort => f.write_str("read:port"),
            Scope::Ack(k) => write!(f, "ack:{}", k.as_str()),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

/// A token's scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    /// Parses a comma- or space-separated list; at least one scope.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let set = s
            .split([',', ' '])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Scope::parse)
            .collect::<Result<BTreeSet<_>, _>>()?;
        if set.is_empty() {
            return Err(ScopeError(s.to_owned()));
        }
        Ok(Self(set))
    }

    /// Whether sensors of `kind` may be read.
    pub fn can_read(&self, kind: SensorKind) -> bool {
        self.0.iter().any(|s| s.reads().contains(&kind))
    }

    /// Whether alerts on sensors of `kind` may be acknowledged, assigned,
    /// annotated and resolved (`ack:<kind>` or `admin`).
    pub fn can_ack(&self, kind: SensorKind) -> bool {
        self.0.contains(&Scope::Ack(kind)) || self.is_admin()
    }

    /// Whether the token administers.
    pub fn is_admin(&self) -> bool {
        self.0.contains(&Scope::Admin)
    }

    /// The scopes as strings, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(Scope::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_cover_their_kinds() {
        let s = Scopes::parse("read:flood, ack:flood_gauge").unwrap();
        assert!(s.can_read(SensorKind::FloodGauge));
        assert!(!s.can_read(SensorKind::TrafficCounter));
        assert!(!s.can_read(SensorKind::Berth));
        assert!(!s.is_admin());
        assert_eq!(s.names(), ["read:flood", "ack:flood_gauge"]);
        let port = Scopes::parse("read:port").unwrap();
        for k in [
            SensorKind::TideGauge,
            SensorKind::Metocean,
            SensorKind::Berth,
        ] {
            assert!(port.can_read(k));
        }
        assert!(!port.can_read(SensorKind::FloodGauge));
        let admin = Scopes::parse("admin").unwrap();
        assert!(SensorKind::ALL.into_iter().all(|k| admin.can_read(k)));
        for bad in [
            "",
            "read:all",
            "ack:nothing",
            "ADMIN",
            "read:flood,write:flood",
        ] {
            assert!(Scopes::parse(bad).is_err(), "{bad}");
        }
    }
}
