//! `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::App;

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The store answers (503 otherwise, and while shutting down).
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !app.sessions.hub.is_live() {
        return (StatusCode::SERVICE_UNAVAILABLE, "connecting to the store\n").into_response();
    }
    match tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store did not answer in time\n").into_response(),
    }
}

/// Prometheus text format. Gauges that are cheaper to read than to keep
/// current are read here, once per scrape.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    metrics::gauge!("roomcast_rooms").set(app.sessions.hub.room_count() as f64);
    let (queued, deepest) = app.sessions.hub.outbox_bytes();
    metrics::gauge!("roomcast_outbox_queued_bytes").set(queued as f64);
    metrics::gauge!("roomcast_outbox_queued_bytes_max").set(deepest as f64);
    metrics::gauge!("roomcast_max_connections").set(app.config.limits.max_connections as f64);
    let ready = matches!(tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await, Ok(Ok(())));
    metrics::gauge!("roomcast_store_ready").set(if ready { 1.0 } else { 0.0 });
    let body = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
