//! Agency API tokens over the API (admin): list, create, revoke. The same
//! store as `pantau token create|revoke`; on shared state (PostgreSQL) a
//! token created through one replica works on every replica, and one
//! revoked through any replica is refused by all of them from the next
//! request (tokens are looked up on every request, never cached).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use pantau_model::scope::Scopes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::admin::json_body;
use crate::auth::Agency;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};

/// Longest token name.
const MAX_NAME: usize = 128;

/// `POST /api/v1/admin/tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// A unique name: the agency or application (1 to 128 characters).
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// Scopes: `read:flood`, `read:traffic`, `read:port`, `ack:<kind>`, `admin`.
    #[schema(min_items = 1)]
    scopes: Vec<String>,
}

/// A created token (the secret is shown once; only its hash is kept).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    name: String,
    /// The bearer token.
    token: String,
    scopes: Vec<String>,
}

/// A token as stored (no secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenView {
    name: String,
    scopes: Vec<String>,
    /// RFC 3339.
    created: String,
    /// RFC 3339, when revoked.
    revoked: Option<String>,
}

/// A revoked token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RevokedToken {
    name: String,
    revoked: bool,
}

/// Lists every API token (admin), revoked ones too, without secrets.
#[utoipa::path(get, path = "/api/v1/admin/tokens", tag = "admin", operation_id = "list_tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Tokens", body = Vec<TokenView>),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
    ))]
pub(crate) async fn list(
    agency: Agency,
    State(state): State<AppState>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    agency.require_admin()?;
    let db = state.state.clone();
    let tokens = tokio::task::spawn_blocking(move || db.tokens()).await??;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenView {
                scopes: t.scopes.split(',').map(str::to_owned).collect(),
                name: t.name,
                created: t.created.to_rfc3339(),
                revoked: t.revoked.map(|r| r.to_rfc3339()),
            })
            .collect(),
    ))
}

/// Creates an API token (admin); answers the secret once.
#[utoipa::path(post, path = "/api/v1/admin/tokens", tag = "admin", operation_id = "create_token",
    request_body = NewToken,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CreatedToken),
        (status = 400, description = "A bad body, name or scope", body = ErrorBody),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 409, description = "A token of this name exists (revoked names stay taken)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ))]
pub(crate) async fn create(
    agency: Agency,
    State(state): State<AppState>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    agency.require_admin()?;
    let body = json_body(body)?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::BadParam {
            param: "name",
            message: format!("1 to {MAX_NAME} printable characters"),
        });
    }
    let scopes = Scopes::parse(&body.scopes.join(",")).map_err(|e| ApiError::BadParam {
        param: "scopes",
        message: e.to_string(),
    })?;
    let names = scopes.names();
    let (db, n, joined) = (state.state.clone(), name.clone(), names.join(","));
    let token = tokio::task::spawn_blocking(move || db.create_token(&n, &joined))
        .await?
        .map_err(|e| match e {
            pantau_state::Error::DuplicateToken(n) => {
                ApiError::Conflict(format!("an API token named {n:?} exists"))
            }
            e => e.into(),
        })?;
    tracing::info!(token = %name, scopes = %names.join(","), by = %agency.name, "API token created through the API.");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name,
            token,
            scopes: names,
        }),
    ))
}

/// Revokes an API token by name (admin): every replica refuses it from
/// the next request.
#[utoipa::path(post, path = "/api/v1/admin/tokens/{name}/revoke", tag = "admin",
    operation_id = "revoke_token",
    params(("name" = String, Path, description = "Token name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked", body = RevokedToken),
        (status = 401, description = "No usable token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
    ))]
pub(crate) async fn revoke(
    agency: Agency,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RevokedToken>, ApiError> {
    agency.require_admin()?;
    let (db, n) = (state.state.clone(), name.clone());
    tokio::task::spawn_blocking(move || db.revoke_token(&n))
        .await?
        .map_err(|e| match e {
            pantau_state::Error::UnknownToken(n) => ApiError::NotFound(format!("API token {n:?}")),
            e => e.into(),
        })?;
    tracing::info!(token = %name, by = %agency.name, "API token revoked through the API.");
    Ok(Json(RevokedToken {
        name,
        revoked: true,
    }))
}
