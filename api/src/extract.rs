//! Extractors whose rejections are the API's JSON errors (axum's own
//! answer plain text).

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Query parameters; a query string that does not parse is a JSON 400
/// naming `query`. Unknown parameters are ignored.
#[derive(Debug)]
pub(crate) struct Q<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for Q<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Q(t))
            .map_err(|e| ApiError::BadParam {
                param: "query",
                message: e.body_text(),
            })
    }
}
