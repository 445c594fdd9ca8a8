//! Identifiers of gateways and sensors: `[a-z0-9-]{1,64}`, so that they are
//! safe in MQTT topics, URLs, file names and InfluxDB tags without escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("identifier is empty")]
    Empty,
    /// The identifier is longer than [`MAX_ID_LEN`].
    #[error("identifier is {0} characters long, the maximum is 64")]
    TooLong(usize),
    /// The identifier contains a character outside `[a-z0-9-]`.
    #[error("identifier contains {0:?}; only lowercase letters, digits and '-' are allowed")]
    BadChar(char),
}

/// Checks the identifier rules shared by gateways and sensors.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    let n = s.chars().count();
    if n > MAX_ID_LEN {
        return Err(IdError::TooLong(n));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A gateway (field device) identifier, e.g. `gw-pelabuhan`.
    GatewayId
);
id_type!(
    /// A sensor identifier, e.g. `fl-sgdumai-hilir`.
    SensorId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        assert!(GatewayId::new("gw-pelabuhan-01").is_ok());
        assert!(GatewayId::new("a").is_ok());
        assert!(GatewayId::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_invalid_ids() {
        assert_eq!(GatewayId::new(""), Err(IdError::Empty));
        assert_eq!(GatewayId::new("x".repeat(65)), Err(IdError::TooLong(65)));
        assert_eq!(GatewayId::new("gw/a"), Err(IdError::BadChar('/')));
        assert_eq!(GatewayId::new("gw+"), Err(IdError::BadChar('+')));
        assert_eq!(GatewayId::new("GW"), Err(IdError::BadChar('G')));
        assert_eq!(GatewayId::new("gw_1"), Err(IdError::BadChar('_')));
        assert_eq!(GatewayId::new("gé"), Err(IdError::BadChar('é')));
    }
}
