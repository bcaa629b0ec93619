//! `GET /rooms/{room}/events?after=ID&limit=N` (forwards) and
//! `?before=ID|latest&limit=N` (backwards): kept history.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Params, Readable, Refusal};
use crate::app::App;
use crate::protocol::{json_history, ErrorCode, Event, EventId, RoomName, EVENT_OVERHEAD};
use crate::session::{page_limit, PAGE_BYTES};
use crate::store::{BackPage, EventLog, Page, Position, StoreError};

/// Events per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Largest page.
const MAX_LIMIT: usize = 1000;

/// Query parameters.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    after: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

fn bad_id(e: impl ToString) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadEventId, e.to_string())
}

/// Kept events after `after` (default `0`: from the oldest), oldest first,
/// with `gap: true` when events after `after` are no longer kept; or with
/// `before`, the kept events just before it (`latest`: the newest), oldest
/// first, with `more: true` while older ones are kept.
pub async fn list(
    State(app): State<Arc<App>>,
    Readable(room): Readable,
    Params(q): Params<HistoryQuery>,
) -> Result<Response, Refusal> {
    let json = |body: String| ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    let limit = limit(q.limit.as_deref())?;
    let max_payload = app.sessions.limits.max_payload;
    if let Some(before) = q.before.as_deref() {
        if q.after.is_some() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadFrame,
                "give `after` or `before`, not both",
            ));
        }
        let before = if before == "latest" { None } else { Some(EventId::parse(before).map_err(bad_id)?) };
        let page = read_back_within(&*app.store, &room, before, limit, max_payload).await?;
        return Ok(json(json_history(&room, &page.events, page.gap, page.more)));
    }
    let after = q.after.as_deref().map(EventId::parse).transpose().map_err(bad_id)?.unwrap_or(EventId::ZERO);
    let from = if after.is_zero() { Position::Oldest } else { Position::After(after) };
    let page = read_within(&*app.store, &room, from, limit, max_payload).await?;
    Ok(json(json_history(&room, &page.events, page.gap, page.more)))
}

/// The `limit` parameter: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
fn limit(raw: Option<&str>) -> Result<usize, Refusal> {
    match raw.map(str::parse::<usize>).transpose() {
        Ok(Some(n)) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Ok(None) => Ok(DEFAULT_LIMIT),
        _ => {
            let message = format!("limit must be between 1 and {MAX_LIMIT}");
            Err(Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, message))
        }
    }
}

/// Up to `limit` events just before `before`, about [`PAGE_BYTES`] at most,
/// read newest first in pages sized like [`read_within`]'s. A shorter
/// answer than asked, with `more`, means "read on before the first".
async fn read_back_within(
    store: &dyn EventLog,
    room: &RoomName,
    before: Option<EventId>,
    limit: usize,
    max_payload: usize,
) -> Result<BackPage, StoreError> {
    let mut page = store.read_back(room, before, limit.min(page_limit(max_payload))).await?;
    let mut bytes: usize = page.events.iter().map(Event::frame_size).sum();
    while page.more && page.events.len() < limit && bytes < PAGE_BYTES {
        let (Some(first), Some(largest)) =
            (page.events.first().map(|e| e.id), page.events.iter().map(|e| e.data.len()).max())
        else {
            break;
        };
        let want = (limit - page.events.len())
            .min(page_limit(largest))
            .min((PAGE_BYTES - bytes) / (largest + EVENT_OVERHEAD))
            .max(1);
        let older = store.read_back(room, Some(first), want).await?;
        bytes += older.events.iter().map(Event::frame_size).sum::<usize>();
        page.more = older.more;
        page.gap |= older.gap;
        let newer = std::mem::replace(&mut page.events, older.events);
        page.events.extend(newer);
    }
    Ok(page)
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
