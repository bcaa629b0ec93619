//! Transports: adapters between a socket and a [`Session`](crate::session::Session).

pub mod sse;
pub mod ws;

use axum::http::{HeaderMap, StatusCode};
use tracing::debug;

use crate::app::{App, ConnectionSlot};
use crate::auth::Grant;
use crate::http::error::Refusal;
use crate::protocol::ErrorCode;

/// The checks every streaming endpoint makes before it starts: shutting
/// down (503), origin (403), credential (401).
pub(crate) fn admit(app: &App, headers: &HeaderMap, token: Option<&str>) -> Result<Grant, Refusal> {
    if app.shutdown.is_cancelled() {
        return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "shutting down"));
    }
    if !app.config.origins.allows(headers) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "origin not allowed"));
    }
    app.config.auth.authenticate(headers, token).map_err(|e| {
        debug!(cause = %e, "refused a connection");
        Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, e.to_string())
    })
}

/// Takes a connection slot, or refuses with 503 when the node is full.
pub(crate) fn slot(app: &App) -> Result<ConnectionSlot, Refusal> {
    app.connection_slot().ok_or_else(|| {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "too many connections on this node")
    })
}
