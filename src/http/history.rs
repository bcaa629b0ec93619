//! `GET /rooms/{room}/events?after=ID&limit=N`: kept history.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{error_response, room_access, store_error_response, Access};
use crate::app::App;
use crate::protocol::{json_history, ErrorCode, EventId};
use crate::store::Position;

/// Events per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Largest page.
const MAX_LIMIT: usize = 1000;

/// Query parameters.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// Kept events after `after` (default `0`: from the oldest), oldest first,
/// with `gap: true` when events after `after` are no longer kept.
pub async fn list(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Response {
    let room = match room_access(&app, &headers, &room, Access::Read) {
        Ok(room) => room,
        Err(refusal) => return refusal.into_response(),
    };
    let after = match q.after.as_deref().map(EventId::parse).transpose() {
        Ok(after) => after.unwrap_or(EventId::ZERO),
        Err(e) => return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadEventId, &e.to_string()),
    };
    let limit = match q.limit.as_deref().map(str::parse::<usize>).transpose() {
        Ok(Some(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Ok(None) => DEFAULT_LIMIT,
        _ => {
            let message = format!("limit must be between 1 and {MAX_LIMIT}");
            return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, &message);
        }
    };
    let from = if after.is_zero() { Position::Oldest } else { Position::After(after) };
    match app.store.read(&room, from, limit).await {
        Ok(page) => {
            ([(header::CONTENT_TYPE, "application/json")], json_history(&room, &page.events, page.gap)).into_response()
        }
        Err(e) => store_error_response(&e),
    }
}
