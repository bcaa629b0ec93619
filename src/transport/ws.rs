//! `GET /ws`: the WebSocket transport.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tracing::debug;

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::{admit, slot};
use crate::app::App;
use crate::app::ConnectionSlot;
use crate::auth::Grant;
use crate::protocol::{
    decode_client, encode_events, encode_frame, ClientFrame, CloseReason, ErrorCode, EventId, Format, FrameError,
    RoomName, ServerFrame, Wire, MSGPACK_SUBPROTOCOL,
};
use crate::session::{Outgoing, Session, SessionError, Sink, SinkError, Wakeup};

/// tungstenite's read buffer, allocated for every connection: its 128 KiB
/// default costs that much per idle connection. Client frames are small; a
/// larger one just takes more reads (tungstenite still reserves the whole
/// frame once its header is read). Measured with the `idle` preset: 11.8 KiB
/// of RSS per idle connection with 4 KiB here, 8.6 KiB with 1 KiB; 512 bytes
/// saves another half KiB on top of the later changes.
const READ_BUFFER: usize = 512;
/// Write buffering target; `flush` always writes everything anyway.
const WRITE_BUFFER: usize = 64 * 1024;
/// How long a closing connection waits for the client's close reply.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);
/// A write that takes longer than this means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Refused frames are counted over this window (see `--max-strikes`).
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    room: Option<String>,
    last_event_id: Option<String>,
    format: Option<String>,
    token: Option<String>,
}

/// Upgrades to a WebSocket session, after checking origin, credential and
/// the node's connection limit.
pub async fn handler(
    State(app): State<Arc<App>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let forced = match query.format.as_deref() {
        None => None,
        Some("json") => Some(Format::Json),
        Some("msgpack") => Some(Format::MsgPack),
        Some(_) => return (StatusCode::BAD_REQUEST, "format must be json or msgpack\n").into_response(),
    };
    let grant = match admit(&app, &headers, query.token.as_deref()) {
        Ok(grant) => grant,
        Err(refusal) => return refusal.into_response(),
    };
    let slot = match slot(&app) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let max = app.config.max_message_bytes;
    let tracker = app.tracker.clone();
    upgrade
        .protocols([MSGPACK_SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let negotiated = socket.protocol().is_some_and(|p| p.as_bytes() == MSGPACK_SUBPROTOCOL.as_bytes());
            let format = forced.unwrap_or(if negotiated { Format::MsgPack } else { Format::Json });
            // A task of its own rather than axum's upgrade task, whose
            // state would stay allocated beside ours for the connection's
            // whole life.
            tracker.spawn(run(Connection::new(app, socket, format, grant), Box::new(query), slot));
        })
}

/// The write half of a WebSocket, as a session sink.
struct WsSink {
    sink: SplitSink<WebSocket, Message>,
    format: Format,
}

fn message(wire: Wire) -> Message {
    match wire {
        Wire::Text(text) => Message::Text(text),
        Wire::Binary(bytes) => Message::Binary(bytes),
    }
}

/// Runs a write with the stall timeout. Most writes to a healthy socket
/// complete on the first poll; only those that do not arm a timer, which
/// keeps two timer-wheel operations per delivery off the hot path (and the
/// timer, boxed, out of every connection's future).
async fn timed<F: std::future::Future<Output = Result<(), axum::Error>>>(f: F) -> Result<(), SinkError> {
    let mut f = std::pin::pin!(f);
    let outcome = match futures::poll!(f.as_mut()) {
        std::task::Poll::Ready(outcome) => outcome,
        std::task::Poll::Pending => match Box::pin(tokio::time::timeout(WRITE_TIMEOUT, f)).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(SinkError::Stalled),
        },
    };
    outcome.map_err(|_| SinkError::Closed)
}

impl Sink for WsSink {
    async fn write(&mut self, out: Outgoing<'_>) -> Result<(), SinkError> {
        let msg = match out {
            Outgoing::Batch(batch) => message(batch.wire(self.format).clone()),
            Outgoing::Events(room, events) => message(encode_events(self.format, room, events)),
            Outgoing::Frame(frame) => message(encode_frame(self.format, frame)),
        };
        timed(self.sink.feed(msg)).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        timed(self.sink.flush()).await
    }
}

/// How a connection ended.
enum End {
    /// The client closed or vanished.
    Gone,
    /// The node closes it.
    Close(CloseReason),
}

/// A WebSocket connection's state while it runs. It all lives in the
/// connection's task for as long as the client stays, so it holds only what
/// waiting needs; rare paths (subscribing, answering a frame, catching up,
/// closing) run in boxed futures of their own. Measured with the `idle`
/// preset: 8.3 KiB of RSS per idle connection before this layout.
struct Connection {
    app: Arc<App>,
    session: Session<WsSink>,
    stream: SplitStream<WebSocket>,
    strikes: DefaultDirectRateLimiter,
    format: Format,
}

impl Connection {
    fn new(app: Arc<App>, socket: WebSocket, format: Format, grant: Grant) -> Self {
        let (sink, stream) = socket.split();
        let session = Session::new(app.hub.clone(), app.store.clone(), WsSink { sink, format }, app.limits, grant);
        let strikes = strike_limiter(app.config.max_strikes);
        Connection { app, session, stream, strikes, format }
    }

    /// Reacts to what woke the connection; `Some` ends it.
    async fn step(&mut self, wakeup: Wakeup) -> Option<End> {
        let written = match wakeup {
            Wakeup::Batch(batch) => self.session.deliver(batch).await,
            Wakeup::CatchUp => Box::pin(self.session.catch_up()).await,
            Wakeup::Expired => return Some(End::Close(CloseReason::TokenExpired)),
        };
        written.err().map(|e| end_of(e.into()))
    }

    /// Answers one client message; `Some` ends the connection.
    async fn receive(&mut self, incoming: Option<Result<Message, axum::Error>>) -> Option<End> {
        match incoming {
            None | Some(Ok(Message::Close(_))) => Some(End::Gone),
            Some(Ok(msg)) => match Box::pin(handle(&mut self.session, self.format, msg)).await {
                Ok(Answer::Done) => None,
                Ok(Answer::Refused) if self.strikes.check().is_err() => Some(End::Close(CloseReason::Misbehaving)),
                Ok(Answer::Refused) => None,
                Err(e) => Some(end_of(e)),
            },
            Some(Err(e)) => Some(read_error(e)),
        }
    }
}

/// Serves the connection until it ends. A plain function returning an
/// `async move` block: an `async fn` would copy its `mut` argument into a
/// second slot of the future, doubling what every idle connection holds.
#[allow(clippy::manual_async_fn)] // deliberate: see above
fn run(mut c: Connection, query: Box<WsQuery>, slot: ConnectionSlot) -> impl std::future::Future<Output = ()> {
    async move {
        let conn = c.session.id();
        metrics::gauge!("roomcast_connections", "transport" => "ws").increment(1.0);
        debug!(conn, format = ?c.format, subject = c.session.subject(), "websocket connected");

        let mut end = Box::pin(auto_subscribe(&mut c.session, *query)).await.err().map(end_of);
        // Registered once: a fresh `cancelled()` per wake-up would take the
        // token's lock, shared by every connection, twice per delivery.
        let mut shutdown = std::pin::pin!(c.app.shutdown.clone().cancelled_owned());
        while end.is_none() {
            end = tokio::select! {
                _ = &mut shutdown => Some(End::Close(CloseReason::Restart)),
                wakeup = c.session.next() => c.step(wakeup).await,
                incoming = c.stream.next() => c.receive(incoming).await,
            };
        }

        let Connection { session, stream, .. } = c;
        let sink = Box::pin(session.close()).await;
        if let Some(End::Close(reason)) = end {
            Box::pin(close_handshake(sink, stream, reason)).await;
        }
        metrics::gauge!("roomcast_connections", "transport" => "ws").decrement(1.0);
        debug!(conn, "websocket closed");
        drop(slot);
    }
}

/// Sends the close frame, then reads (and drops) what the client still
/// sends until its close reply. Closing the socket with unread input would
/// reset the connection, and the client might never see the close frame
/// and its reason.
async fn close_handshake(mut sink: WsSink, mut stream: SplitStream<WebSocket>, reason: CloseReason) {
    let frame = CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static(reason.reason()) };
    if timed(sink.sink.send(Message::Close(Some(frame)))).await.is_ok() {
        let drain = async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, drain).await;
    }
}

fn end_of(e: SessionError) -> End {
    match e {
        SessionError::Sink(SinkError::Stalled) => End::Close(CloseReason::Stalled),
        _ => End::Gone,
    }
}

fn read_error(e: axum::Error) -> End {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => End::Close(CloseReason::TooBig),
        Some(WsError::Protocol(_)) => End::Close(CloseReason::ProtocolError),
        _ => End::Gone,
    }
}

/// Counts refused frames: more than `max` per [`STRIKE_WINDOW`] ends the connection.
fn strike_limiter(max: u32) -> DefaultDirectRateLimiter {
    let max = NonZeroU32::new(max).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(STRIKE_WINDOW / max.get()).unwrap_or_else(|| Quota::per_second(max));
    RateLimiter::direct(quota.allow_burst(max))
}

/// How a client frame was answered.
enum Answer {
    /// Done as asked.
    Done,
    /// Refused with an `error` frame (a strike).
    Refused,
}

/// `?room=` subscribes as a `subscribe` frame would, answered the same way.
async fn auto_subscribe(session: &mut Session<WsSink>, query: WsQuery) -> Result<(), SessionError> {
    let Some(room) = query.room else {
        return Ok(());
    };
    let parsed =
        RoomName::parse(&room).map_err(|e| FrameError::new(ErrorCode::BadRoom, e.to_string(), None)).and_then(|room| {
            match query.last_event_id.as_deref().map(EventId::parse) {
                None => Ok((room, None)),
                Some(Ok(id)) => Ok((room, Some(id))),
                Some(Err(e)) => Err(FrameError::new(ErrorCode::BadEventId, e.to_string(), None)),
            }
        });
    let outcome = match parsed {
        Ok((room, last)) => session.subscribe(room, last).await,
        Err(e) => Err(SessionError::Refused(e)),
    };
    answer(session, outcome).await.map(|_| ())
}

/// Turns a refusal into an `error` frame; other failures end the connection.
async fn answer(session: &mut Session<WsSink>, outcome: Result<(), SessionError>) -> Result<Answer, SessionError> {
    match outcome {
        Ok(()) => Ok(Answer::Done),
        Err(SessionError::Refused(e)) => {
            session.send(&ServerFrame::from(e)).await?;
            Ok(Answer::Refused)
        }
        Err(e) => Err(e),
    }
}

async fn handle(session: &mut Session<WsSink>, format: Format, msg: Message) -> Result<Answer, SessionError> {
    let decoded = match (&msg, format) {
        (Message::Text(text), _) => decode_client(Format::Json, text.as_bytes()),
        (Message::Binary(bytes), Format::MsgPack) => decode_client(Format::MsgPack, bytes),
        (Message::Binary(_), Format::Json) => Err(FrameError::new(
            ErrorCode::UnsupportedFrame,
            "binary frames need format=msgpack or the roomcast.v1.msgpack subprotocol",
            None,
        )),
        // Pings are answered by tungstenite itself.
        _ => return Ok(Answer::Done),
    };
    let outcome = match decoded {
        Err(e) => Err(SessionError::Refused(e)),
        Ok(ClientFrame::Subscribe { room, last_event_id }) => session.subscribe(room, last_event_id).await,
        Ok(ClientFrame::Unsubscribe { room }) => session.unsubscribe(room).await,
        Ok(ClientFrame::Publish { room, data, reference }) => session.publish(room, data, reference).await,
    };
    answer(session, outcome).await
}
