//! The API's one error type: client errors with a stable JSON shape,
//! internal errors logged and shown as a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request parameter is invalid.
    #[error("invalid parameter {param}: {message}")]
    BadParam {
        /// The parameter's name.
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A body field is invalid (named by a runtime name).
    #[error("invalid field {field}: {message}")]
    BadField {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The resource does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(String),
    /// No usable bearer token (missing, malformed, unknown or revoked).
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The token is valid but its scopes do not allow this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The resource exists already.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request body is over the limit.
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    /// Too many requests from this client.
    #[error("rate limited; retry after {retry_after_s} s")]
    RateLimited {
        /// Seconds until a request would be allowed.
        retry_after_s: u64,
    },
    /// This client address has as many live streams open as it may.
    #[error("too many live streams from this address")]
    TooManyStreams,
    /// The MQTT broker cluster refused or did not answer a provisioning
    /// step (the message names the step, never a secret).
    #[error("broker: {0}")]
    Broker(String),
    /// The server is at a capacity limit; try again shortly.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// Something failed inside; details go to the log only.
    #[error("internal error: {0}")]
    Internal(#[from] Internal),
}

/// What failed inside the server (logged, never shown to the client).
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    /// The platform state database.
    #[error("state database: {0}")]
    State(#[from] pantau_state::Error),
    /// The ingest log (latest values).
    #[error("ingest log: {0}")]
    Ingest(#[from] pantau_ingest::Error),
    /// The store answering a history query.
    #[error("history store: {0}")]
    History(String),
    /// The alert store or engine.
    #[error("alerts: {0}")]
    Alerts(String),
    /// A blocking task panicked or was cancelled.
    #[error("blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A response could not be encoded.
    #[error("encoding a response: {0}")]
    Encode(#[from] serde_json::Error),
    /// The metrics could not be rendered.
    #[error("rendering metrics: {0}")]
    Metrics(#[from] std::fmt::Error),
    /// A stored token whose scopes no longer parse.
    #[error("token {name} has unreadable scopes: {message}")]
    TokenScopes {
        /// The token's name.
        name: String,
        /// The parser's message.
        message: String,
    },
}

/// `?` on an internal failure gives an [`ApiError::Internal`].
macro_rules! internal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ApiError::Internal(Internal::from(e))
            }
        }
    )*};
}
internal_from!(
    pantau_state::Error,
    pantau_ingest::Error,
    tokio::task::JoinError,
    serde_json::Error,
    std::fmt::Error
);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadParam { param, message } => (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "bad_request", "param": param, "message": message})),
            )
                .into_response(),
            ApiError::BadField { field, message } => (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "bad_request", "param": field, "message": message})),
            )
                .into_response(),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "not_found", "message": format!("{what} not found")})),
            )
                .into_response(),
            ApiError::Unauthorized(message) => (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({"error": "unauthorized", "message": message})),
            )
                .into_response(),
            ApiError::Forbidden(message) => (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({"error": "forbidden", "message": message})),
            )
                .into_response(),
            ApiError::Conflict(message) => (
                StatusCode::CONFLICT,
                Json(serde_json::json!({"error": "conflict", "message": message})),
            )
                .into_response(),
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(serde_json::json!({
                    "error": "payload_too_large",
                    "param": "body",
                    "message": format!("request body over {limit} bytes"),
                })),
            )
                .into_response(),
            ApiError::RateLimited { retry_after_s } => (
                StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, retry_after_s.to_string())],
                Json(serde_json::json!({
                    "error": "rate_limited",
                    "message": format!("too many requests; retry after {retry_after_s} s"),
                    "retry_after_s": retry_after_s,
                })),
            )
                .into_response(),
            ApiError::TooManyStreams => (
                StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, "5".to_string())],
                Json(serde_json::json!({
                    "error": "too_many_streams",
                    "message": "too many live streams from this address; close one or retry later",
                    "retry_after_s": 5,
                })),
            )
                .into_response(),
            ApiError::Broker(message) => {
                tracing::error!(error = %message, "Broker provisioning failed.");
                (
                    StatusCode::BAD_GATEWAY,
                    Json(serde_json::json!({"error": "broker", "message": message})),
                )
                    .into_response()
            }
            ApiError::Busy(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "5".to_string())],
                Json(serde_json::json!({"error": "busy", "message": message, "retry_after_s": 5})),
            )
                .into_response(),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "Request failed.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(serde_json::json!({"error": "internal", "message": "internal server error"})),
                )
                    .into_response()
            }
        }
    }
}
