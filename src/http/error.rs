//! The HTTP error shape: `{"error": code, "message": text}` with a status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::protocol::ErrorCode;
use crate::store::StoreError;

/// A refused HTTP request: status, error code and message.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl Refusal {
    /// A refusal with this status and error body.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal { status, code, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

/// A store failure as an HTTP answer: 507 when the store is out of memory
/// (an operator must act), 503 otherwise (retry, perhaps on another node).
impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::OutOfMemory(_) => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::Unavailable(_) | StoreError::Protocol(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal::new(status, e.error_code(), e.to_string())
    }
}

/// A JSON error body: `{"error": code, "message": text}`.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code.as_str(), "message": message }))).into_response()
}
