//! The HTTP surface: one file per resource, assembled into one router.

mod health;
mod history;
mod publish;
mod rooms;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::app::App;
use crate::auth::Grant;
use crate::protocol::{ErrorCode, RoomName};
use crate::store::StoreError;
use crate::transport::{sse, ws};

/// Every route of a node (`/metrics` only when it has no address of its own).
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.max_message_bytes;
    let router = match app.config.metrics_listen {
        None => Router::new().route("/metrics", get(health::metrics)),
        Some(_) => Router::new(),
    };
    router
        .route("/ws", get(ws::handler))
        .route("/rooms/{room}", get(rooms::info))
        .route("/rooms/{room}/events", get(history::list).post(publish::create))
        .route("/rooms/{room}/sse", get(sse::handler))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// The routes of the separate metrics address (`--metrics-listen`).
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new().route("/metrics", get(health::metrics)).route("/healthz", get(health::healthz)).with_state(app)
}

/// What a request wants to do with a room.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Read history, room info.
    Read,
    /// Publish.
    Publish,
}

/// Validates the room name in a path (400) and the request's credential for
/// `access` to it (401/403): the first step of every room resource.
pub fn room_access(app: &App, headers: &HeaderMap, raw: &str, access: Access) -> Result<RoomName, Refusal> {
    let room =
        RoomName::parse(raw).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRoom, e.to_string()))?;
    authorize(app, headers, &room, access)?;
    Ok(room)
}

/// Checks the request's credential (`Authorization: Bearer`) for `access`
/// to `room`: 401 without a valid one, 403 when it does not cover the room.
pub fn authorize(app: &App, headers: &HeaderMap, room: &RoomName, access: Access) -> Result<(), Refusal> {
    let grant = app
        .config
        .auth
        .authenticate(headers, None)
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, e.to_string()))?;
    let allowed = match access {
        Access::Read => grant.may_subscribe(room),
        Access::Publish => grant.may_publish(room),
    };
    if allowed {
        Ok(())
    } else if matches!(grant, Grant::Anonymous) {
        Err(Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, "publishing needs the API key or a token"))
    } else {
        Err(Refusal::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "this credential does not cover this room"))
    }
}

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
pub fn store_error_response(e: &StoreError) -> Response {
    let status = match e {
        StoreError::OutOfMemory(_) => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::Unavailable(_) | StoreError::Protocol(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_response(status, e.error_code(), &e.to_string())
}

/// A JSON error body: `{"error": code, "message": text}`.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code.as_str(), "message": message }))).into_response()
}
