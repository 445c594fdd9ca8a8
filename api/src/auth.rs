//! Agency authentication: `Authorization: Bearer TOKEN`, looked up (by its
//! SHA-256) in `state.db` on every request, so a revocation from the CLI
//! takes effect at the next request. 401 for no usable token, 403 for a
//! valid token whose scopes do not allow the request.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use pantau_model::scope::Scopes;
use pantau_model::{Sensor, SensorKind};

use crate::{ApiError, AppState};

/// An authenticated agency token.
#[derive(Debug, Clone)]
pub(crate) struct Agency {
    /// The token's name (for logs; never the secret).
    pub(crate) name: String,
    /// What it may do.
    pub(crate) scopes: Scopes,
}

impl Agency {
    /// Whether sensors of `kind` are visible to this token.
    pub(crate) fn reads(&self, kind: SensorKind) -> bool {
        self.scopes.can_read(kind)
    }

    /// 403 unless the token may read `sensor`.
    pub(crate) fn require_read(&self, sensor: &Sensor) -> Result<(), ApiError> {
        if self.reads(sensor.kind) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token {:?} may not read {} sensors (scopes: {})",
                self.name,
                sensor.kind,
                self.scopes.names().join(",")
            )))
        }
    }

    /// 403 unless the token administers.
    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        if self.scopes.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token {:?} lacks the admin scope",
                self.name
            )))
        }
    }
}

impl FromRequestParts<AppState> for Agency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("a bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or(ApiError::Unauthorized(
                "malformed Authorization header; expected \"Bearer TOKEN\"",
            ))?
            .to_owned();
        let db = state.state.clone();
        let found = tokio::task::spawn_blocking(move || db.verify_token(&token))
            .await??
            .ok_or(ApiError::Unauthorized("unknown or revoked token"))?;
        let scopes = Scopes::parse(&found.scopes).map_err(|e| {
            ApiError::Internal(crate::error::Internal::TokenScopes {
                name: found.name.clone(),
                message: e.to_string(),
            })
        })?;
        Ok(Agency {
            name: found.name,
            scopes,
        })
    }
}
