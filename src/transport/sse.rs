//! `GET /rooms/{room}/sse`: one room as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{admit, slot, within_write_timeout};
use crate::app::{App, Transport};
use crate::auth::Grant;
use crate::http::error::error_response;
use crate::http::Params;
use crate::protocol::{
    query_flag, query_rewind, sse_events, sse_gap, sse_state, ErrorCode, EventId, RoomName, ServerFrame,
    SubscribeOptions,
};
use crate::session::{Answer, Flow, Outgoing, Session, Sink, SinkError};

/// Chunks buffered between the session and the HTTP body.
const BODY_QUEUE: usize = 16;
/// Comment lines keep idle streams alive through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Query parameters of the SSE endpoint.
#[derive(Debug, Deserialize)]
pub struct SseQuery {
    last_event_id: Option<String>,
    token: Option<String>,
    rewind: Option<String>,
    state: Option<String>,
}

/// Streams `room` as `text/event-stream`, resuming from `Last-Event-ID`
/// (which browsers send on reconnect) or `?last_event_id=`; on a first
/// connection, `rewind=N` starts with the last N events and `state=1` with
/// an `event: state`.
pub async fn handler(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    Params(query): Params<SseQuery>,
    headers: HeaderMap,
) -> Response {
    let room = match RoomName::parse(&room) {
        Ok(room) => room,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadRoom, &e.to_string()),
    };
    let header_id = headers.get("last-event-id").map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    let last = match header_id.or(query.last_event_id).map(|s| EventId::parse(&s)) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadEventId, &e.to_string()),
    };
    let rewind = match query_rewind(query.rewind.as_deref()) {
        Ok(rewind) => rewind,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.code, &e.message),
    };
    let options = SubscribeOptions {
        last_event_id: last,
        audience: false,
        rewind,
        state: query_flag(query.state.as_deref()),
        presence: false,
    };
    let grant = match admit(&app, &headers, query.token.as_deref()) {
        Ok(grant) => grant,
        Err(refusal) => return refusal.into_response(),
    };
    if !grant.may_subscribe(&room) {
        return error_response(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "this token may not read this room");
    }
    let slot = match slot(&app, Transport::Sse) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let tracker = app.tracker.clone();
    tracker.spawn(async move {
        run(app, room, options, tx, grant).await;
        drop(slot);
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// How long browsers wait before reconnecting a dropped stream.
const SSE_RETRY_MS: u32 = 1000;

struct SseSink {
    tx: mpsc::Sender<Bytes>,
}

impl Sink for SseSink {
    async fn write(&mut self, out: Outgoing<'_>) -> Result<(), SinkError> {
        let chunk = match out {
            Outgoing::Batch(batch) => batch.sse().clone(),
            Outgoing::Events(_, events) => sse_events(events),
            Outgoing::State(_, state) => sse_state(state.position, state.values.values()),
            Outgoing::Frame(ServerFrame::Gap { after, .. }) => sse_gap(*after),
            Outgoing::Frame(frame @ ServerFrame::Error { .. }) => {
                let json = serde_json::to_string(frame).unwrap_or_default();
                Bytes::from(format!("event: error\ndata: {json}\n\n"))
            }
            // The position the stream starts after becomes the browser's
            // Last-Event-ID (an id-only block dispatches nothing), so a
            // drop before the first event still resumes without a hole;
            // `retry` brings EventSource back within a second.
            Outgoing::Frame(ServerFrame::Subscribed { last_event_id, .. }) => {
                Bytes::from(format!("retry: {SSE_RETRY_MS}\nid: {last_event_id}\n: subscribed\n\n"))
            }
            // Audience and reactions are WebSocket features.
            Outgoing::Frame(_) | Outgoing::Notice(_) => return Ok(()),
        };
        match within_write_timeout(self.tx.send(chunk)).await {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(SinkError::Closed),
            None => Err(SinkError::Stalled),
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

async fn run(app: Arc<App>, room: RoomName, options: SubscribeOptions, tx: mpsc::Sender<Bytes>, grant: Grant) {
    let closed = tx.clone();
    let mut session = Session::new(app.sessions.clone(), SseSink { tx }, grant);
    let outcome = session.subscribe(room, options).await;
    let mut alive = matches!(session.answer(outcome).await, Ok(Answer::Done));
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    // Registered once, as the WebSocket loop does: a fresh `cancelled()` per
    // wake-up would take the token's lock, shared by every connection.
    let mut shutdown = std::pin::pin!(app.shutdown.clone().cancelled_owned());
    while alive {
        tokio::select! {
            _ = &mut shutdown => alive = false,
            _ = closed.closed() => alive = false,
            _ = keepalive.tick() => {
                alive = closed.try_send(Bytes::from_static(b": keepalive\n\n")).is_ok()
                    || !closed.is_closed();
            }
            // An expired credential ends the stream like a failed write.
            wakeup = session.next() => alive = matches!(session.handle(wakeup).await, Ok(Flow::Continue)),
        }
    }
    drop(session.close().await);
}
