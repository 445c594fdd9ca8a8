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
    /// The resource does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(String),
    /// Something failed inside; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadParam { param, message } => (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "bad_request", "param": param, "message": message})),
            )
                .into_response(),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "not_found", "message": format!("{what} not found")})),
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
