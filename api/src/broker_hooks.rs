//! Authentication and authorization hooks for an external broker cluster
//! that asks over HTTP (EMQX's HTTP authenticator and authorizer,
//! VerneMQ's webhooks), so gateways keep Pantau's identities and ACL
//! there too: a gateway connects with its Pantau token as password, may
//! publish only to `pantau/v1/gw/ID/telemetry` and `…/status` and
//! subscribe only to `pantau/v1/gw/ID/cmd`; the name of a revoked gateway
//! is refused. A username that was never a gateway is not Pantau's to judge: the answer passes it on
//! (`ignore` / `next`) to the broker's own accounts (the ingest workers'
//! and API replicas' service users). Decisions read the platform state on
//! every call, so a revoked gateway is refused at its next connect on
//! every node.
//!
//! The hooks answer only with `--broker-hook-token-file` set, to callers
//! that present that secret as `Authorization: Bearer …` (EMQX adds the
//! header) or `?token=…` (VerneMQ's webhooks cannot send headers: keep
//! them on loopback or a private network, as VerneMQ advises).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::json_body;
use crate::{ApiError, AppState};

/// The secret the broker presents (its SHA-256).
#[derive(Debug)]
pub struct BrokerHookSecret(ring::digest::Digest);

impl BrokerHookSecret {
    /// From the secret's text (trimmed); `None` when empty.
    pub fn new(secret: &str) -> Option<Self> {
        let s = secret.trim();
        (!s.is_empty()).then(|| Self(ring::digest::digest(&ring::digest::SHA256, s.as_bytes())))
    }

    fn admits(&self, given: &str) -> bool {
        let h = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
        let (a, b) = (h.as_ref(), self.0.as_ref());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// `?token=` of a VerneMQ webhook URL.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// Refuses a caller without the secret (404 while the hooks are off).
fn admit(state: &AppState, headers: &HeaderMap, query: &TokenQuery) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = bearer.or(query.token.as_deref()) else {
        return Err(ApiError::Unauthorized("the broker hook secret is required"));
    };
    let Some(secret) = &state.broker_hooks else {
        return Err(ApiError::NotFound(
            "broker hooks (this process runs without --broker-hook-token-file)".into(),
        ));
    };
    if secret.admits(given) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("the broker hook secret is required"))
    }
}

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Publish,
    Subscribe,
}

/// Whether gateway `gw` may do `access` on `topic`: exactly the topics of
/// the embedded gatekeeper, no wildcard filter.
pub(crate) fn gateway_may(gw: &str, access: Access, topic: &str) -> bool {
    let Some(rest) = topic
        .strip_prefix("pantau/v1/gw/")
        .and_then(|r| r.strip_prefix(gw))
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    match access {
        Access::Publish => rest == "telemetry" || rest == "status",
        Access::Subscribe => rest == "cmd",
    }
}

/// What Pantau says about a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Deny,
    /// Not a gateway: the broker's own accounts decide.
    PassOn,
}

async fn authenticate(
    state: &AppState,
    username: &str,
    password: &str,
) -> Result<Verdict, ApiError> {
    let (db, u, p) = (
        state.state.clone(),
        username.to_owned(),
        password.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        Ok(if db.verify_gateway(&u, &p)? {
            Verdict::Allow
        } else if db.gateway_exists(&u)? || db.was_revoked(&u)? {
            Verdict::Deny
        } else {
            Verdict::PassOn
        })
    })
    .await?
}

async fn authorize(
    state: &AppState,
    username: &str,
    access: Access,
    topics: Vec<String>,
) -> Result<Verdict, ApiError> {
    let (db, u) = (state.state.clone(), username.to_owned());
    let (exists, revoked) = tokio::task::spawn_blocking(move || {
        Ok::<_, pantau_state::Error>((db.gateway_exists(&u)?, db.was_revoked(&u)?))
    })
    .await??;
    if !exists {
        // A revoked gateway's name is refused, never passed on.
        return Ok(if revoked {
            Verdict::Deny
        } else {
            Verdict::PassOn
        });
    }
    Ok(
        if !topics.is_empty() && topics.iter().all(|t| gateway_may(username, access, t)) {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
    )
}

fn count(state: &AppState, broker: &'static str, hook: &'static str, v: Verdict) {
    let verdict = match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::PassOn => "pass_on",
    };
    if v == Verdict::Deny {
        tracing::warn!(broker, hook, "A gateway was refused by a broker hook.");
    }
    state.ingestor.metrics().broker_hook(broker, hook, verdict);
}

/// EMQX's HTTP authenticator body (configure EMQX to send
/// `{"username": "${username}", "password": "${password}", "clientid": "${clientid}"}`).
#[derive(Debug, Deserialize)]
pub(crate) struct EmqxAuthn {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// EMQX's HTTP authenticator: `{"result": "allow" | "deny" | "ignore"}`
/// (ignore: not a gateway, EMQX's next authenticator decides).
#[utoipa::path(post, path = "/broker/v1/emqx/authn", tag = "broker", operation_id = "emqx_authn",
    params(("token" = Option<String>, Query, description = "The hook secret, where a header cannot be sent")),
    request_body = Object,
    // The secret as a bearer token or as `?token=`.
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The decision", body = Object),
        (status = 400, description = "A bad body", body = crate::openapi::ErrorBody),
        (status = 401, description = "Not the hook secret", body = crate::openapi::ErrorBody),
        (status = 404, description = "Broker hooks are off", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn emqx_authn(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: Result<Json<EmqxAuthn>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    admit(&state, &headers, &q)?;
    let b = json_body(body)?;
    let v = authenticate(&state, &b.username, &b.password).await?;
    count(&state, "emqx", "authn", v);
    Ok(Json(json!({"result": emqx(v), "is_superuser": false})))
}

/// EMQX's HTTP authorizer body (configure EMQX to send
/// `{"username": "${username}", "topic": "${topic}", "action": "${action}"}`).
#[derive(Debug, Deserialize)]
pub(crate) struct EmqxAuthz {
    #[serde(default)]
    username: String,
    topic: String,
    action: String,
}

/// EMQX's HTTP authorizer: `{"result": "allow" | "deny" | "ignore"}`.
#[utoipa::path(post, path = "/broker/v1/emqx/authz", tag = "broker", operation_id = "emqx_authz",
    params(("token" = Option<String>, Query, description = "The hook secret, where a header cannot be sent")),
    request_body = Object,
    // The secret as a bearer token or as `?token=`.
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The decision", body = Object),
        (status = 400, description = "A bad body or action", body = crate::openapi::ErrorBody),
        (status = 401, description = "Not the hook secret", body = crate::openapi::ErrorBody),
        (status = 404, description = "Broker hooks are off", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn emqx_authz(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: Result<Json<EmqxAuthz>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    admit(&state, &headers, &q)?;
    let b = json_body(body)?;
    let access = match b.action.as_str() {
        "publish" => Access::Publish,
        "subscribe" => Access::Subscribe,
        other => {
            return Err(ApiError::BadParam {
                param: "action",
                message: format!("{other:?}: expected publish or subscribe"),
            })
        }
    };
    let v = authorize(&state, &b.username, access, vec![b.topic]).await?;
    count(&state, "emqx", "authz", v);
    Ok(Json(json!({"result": emqx(v)})))
}

fn emqx(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::PassOn => "ignore",
    }
}

/// A VerneMQ webhook body (the fields the auth hooks share).
#[derive(Debug, Deserialize)]
pub(crate) struct VerneHook {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    topics: Option<Vec<VerneTopic>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct VerneTopic {
    topic: String,
}

/// `POST /broker/v1/vernemq/{hook}` for `auth_on_register`,
/// `auth_on_publish`, `auth_on_subscribe` (and their `_m5` twins):
/// `{"result": "ok"}`, `{"result": "next"}` or
/// `{"result": {"error": "not_allowed"}}`. Publish and subscribe grants
/// may be cached by VerneMQ for 5 s; registrations never are.
#[utoipa::path(post, path = "/broker/v1/vernemq/{hook}", tag = "broker", operation_id = "vernemq_hook",
    params(
        ("hook" = String, Path, description = "auth_on_register, auth_on_publish, auth_on_subscribe (or their _m5 twins)"),
        ("token" = Option<String>, Query, description = "The hook secret (VerneMQ's webhooks send no headers)"),
    ),
    request_body = Object,
    // The secret as a bearer token or as `?token=`.
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The decision", body = Object),
        (status = 400, description = "A bad body", body = crate::openapi::ErrorBody),
        (status = 401, description = "Not the hook secret", body = crate::openapi::ErrorBody),
        (status = 404, description = "Broker hooks are off, or no such hook", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn vernemq(
    State(state): State<AppState>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    body: Result<Json<VerneHook>, JsonRejection>,
) -> Result<Response, ApiError> {
    admit(&state, &headers, &q)?;
    let b = json_body(body)?;
    let username = b.username.unwrap_or_default();
    let (name, verdict, cache) = match hook.trim_end_matches("_m5") {
        "auth_on_register" => (
            "auth_on_register",
            authenticate(&state, &username, b.password.as_deref().unwrap_or("")).await?,
            false,
        ),
        "auth_on_publish" => (
            "auth_on_publish",
            authorize(
                &state,
                &username,
                Access::Publish,
                b.topic.into_iter().collect(),
            )
            .await?,
            true,
        ),
        "auth_on_subscribe" => (
            "auth_on_subscribe",
            authorize(
                &state,
                &username,
                Access::Subscribe,
                b.topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| t.topic)
                    .collect(),
            )
            .await?,
            true,
        ),
        _ => return Err(ApiError::NotFound(format!("VerneMQ hook {hook:?}"))),
    };
    count(&state, "vernemq", name, verdict);
    let body = match verdict {
        Verdict::Allow => json!({"result": "ok"}),
        Verdict::Deny => json!({"result": {"error": "not_allowed"}}),
        Verdict::PassOn => json!({"result": "next"}),
    };
    let mut resp = Json(body).into_response();
    if cache && verdict == Verdict::Allow {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_may_use_exactly_its_own_topics() {
        assert!(gateway_may(
            "gw-a",
            Access::Publish,
            "pantau/v1/gw/gw-a/telemetry"
        ));
        assert!(gateway_may(
            "gw-a",
            Access::Publish,
            "pantau/v1/gw/gw-a/status"
        ));
        assert!(gateway_may(
            "gw-a",
            Access::Subscribe,
            "pantau/v1/gw/gw-a/cmd"
        ));
        for (access, topic) in [
            (Access::Publish, "pantau/v1/gw/gw-b/telemetry"),
            (Access::Publish, "pantau/v1/gw/gw-ab/telemetry"),
            (Access::Publish, "pantau/v1/gw/gw-a/cmd"),
            (Access::Publish, "pantau/v1/gw/gw-a/telemetry/x"),
            (Access::Publish, "pantau/v1/committed/w1"),
            (Access::Subscribe, "pantau/v1/gw/gw-a/telemetry"),
            (Access::Subscribe, "pantau/v1/gw/+/cmd"),
            (Access::Subscribe, "pantau/v1/gw/gw-a/#"),
            (Access::Subscribe, "#"),
        ] {
            assert!(!gateway_may("gw-a", access, topic), "{access:?} {topic}");
        }
    }

    #[test]
    fn the_secret_is_compared_whole() {
        let s = BrokerHookSecret::new(" s3cret\n").unwrap();
        assert!(s.admits("s3cret"));
        assert!(!s.admits("s3cre"));
        assert!(!s.admits(""));
        assert!(BrokerHookSecret::new("  ").is_none());
    }
}
