//! Transports: adapters between a socket and a [`Session`](crate::session::Session).

pub mod meter;
pub mod pusher;
pub mod sse;
pub mod ws;

use axum::http::{HeaderMap, StatusCode};
use tracing::debug;

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use crate::app::{App, ConnectionSlot, Transport};
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

/// A write that takes longer than this means the client stopped reading.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a write under [`WRITE_TIMEOUT`]; `None` when it stalled. Most
/// writes to a healthy client complete on the first poll; only those that
/// do not arm a timer, which keeps two timer-wheel operations per delivery
/// off the hot path (and the timer, boxed, out of every connection's future).
pub(crate) async fn within_write_timeout<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match futures::poll!(f.as_mut()) {
        Poll::Ready(outcome) => Some(outcome),
        Poll::Pending => Box::pin(tokio::time::timeout(WRITE_TIMEOUT, f)).await.ok(),
    }
}

/// Takes a connection slot, or refuses with 503 when the node is full.
pub(crate) fn slot(app: &App, transport: Transport) -> Result<ConnectionSlot, Refusal> {
    app.connection_slot(transport).ok_or_else(|| {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "too many connections on this node")
    })
}
