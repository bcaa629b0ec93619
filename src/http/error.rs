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
    retry_after_ms: Option<u64>,
}

impl Refusal {
    /// A refusal with this status and error body.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal { status, code, message: message.into(), retry_after_ms: None }
    }

    /// The same refusal, saying when a retry makes sense (`retry_after_ms`
    /// in the body, `Retry-After` in seconds).
    pub fn retry_after(mut self, ms: Option<u64>) -> Self {
        self.retry_after_ms = ms;
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Some(ms) = self.retry_after_ms else {
            return error_response(self.status, self.code, &self.message);
        };
        let body = serde_json::json!({ "error": self.code.as_str(), "message": self.message, "retry_after_ms": ms });
        let seconds = ms.div_ceil(1000).to_string();
        (self.status, [(axum::http::header::RETRY_AFTER, seconds)], Json(body)).into_response()
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
