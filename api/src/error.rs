//! The API's one error type: client errors with a stable JSON shape,
//! internal errors logged and shown as a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something failed inside; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
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
