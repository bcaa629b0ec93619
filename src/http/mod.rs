//! The HTTP surface: one file per resource, assembled into one router.

mod health;
mod history;
mod publish;
mod rooms;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::app::App;
use crate::protocol::ErrorCode;
use crate::transport::{sse, ws};

/// Every route of a node.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.max_message_bytes;
    Router::new()
        .route("/ws", get(ws::handler))
        .route("/rooms/{room}", get(rooms::info))
        .route(
            "/rooms/{room}/events",
            get(history::list).post(publish::create),
        )
        .route("/rooms/{room}/sse", get(sse::handler))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// A JSON error body: `{"error": code, "message": text}`.
pub fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code.as_str(), "message": message })),
    )
        .into_response()
}
