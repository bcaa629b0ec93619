//! `GET /rooms/{room}/events?after=ID&limit=N`: kept history.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Params, Readable, Refusal};
use crate::app::App;
use crate::protocol::{json_history, ErrorCode, Event, EventId, RoomName, EVENT_OVERHEAD};
use crate::session::{page_limit, PAGE_BYTES};
use crate::store::{EventLog, Page, Position, StoreError};

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
    Readable(room): Readable,
    Params(q): Params<HistoryQuery>,
) -> Result<Response, Refusal> {
    let after = q
        .after
        .as_deref()
        .map(EventId::parse)
        .transpose()
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadEventId, e.to_string()))?
        .unwrap_or(EventId::ZERO);
    let limit = match q.limit.as_deref().map(str::parse::<usize>).transpose() {
        Ok(Some(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Ok(None) => DEFAULT_LIMIT,
        _ => {
            let message = format!("limit must be between 1 and {MAX_LIMIT}");
            return Err(Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, message));
        }
    };
    let from = if after.is_zero() { Position::Oldest } else { Position::After(after) };
    let page = read_within(&*app.store, &room, from, limit, app.sessions.limits.max_payload).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json_history(&room, &page.events, page.gap)).into_response())
}

/// Up to `limit` events from `from`, and about [`PAGE_BYTES`] at most: read
/// in pages sized from the largest event seen (at first, the largest
/// allowed), so a room of large events costs one answer a bounded amount of
/// memory. A shorter answer than asked means "read on after the last".
async fn read_within(
    store: &dyn EventLog,
    room: &RoomName,
    from: Position,
    limit: usize,
    max_payload: usize,
) -> Result<Page, StoreError> {
    let mut page = store.read(room, from, limit.min(page_limit(max_payload))).await?;
    let mut bytes: usize = page.events.iter().map(Event::frame_size).sum();
    while page.more && page.events.len() < limit && bytes < PAGE_BYTES {
        let (Some(last), Some(largest)) =
            (page.events.last().map(|e| e.id), page.events.iter().map(|e| e.data.len()).max())
        else {
            break;
        };
        let want = (limit - page.events.len())
            .min(page_limit(largest))
            .min((PAGE_BYTES - bytes) / (largest + EVENT_OVERHEAD))
            .max(1);
        let next = store.read(room, Position::After(last), want).await?;
        // A break in the chain ends this answer; the next one reports it.
        if next.gap {
            break;
        }
        bytes += next.events.iter().map(Event::frame_size).sum::<usize>();
        page.more = next.more;
        page.events.extend(next.events);
    }
    Ok(page)
}
