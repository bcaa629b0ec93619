//! `GET /ws`: the WebSocket transport.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::meter::{FrameFlood, FrameMeter};
use super::{admit, slot, within_write_timeout};
use crate::app::App;
use crate::app::{ConnectionSlot, Transport};
use crate::auth::Grant;
use crate::http::error::Refusal;
use crate::http::Params;
use crate::protocol::{
    decode_client, encode_events, encode_frame, encode_state, query_flag, query_rewind, ClientFrame, CloseReason,
    ErrorCode, EventId, Format, FrameError, RoomName, SubscribeOptions, Wire, MSGPACK_SUBPROTOCOL,
};
use crate::session::limiters::rate_limiter;
use crate::session::{Answer, Flow, Outgoing, Session, SessionError, Sink, SinkError, Wakeup};

/// The upgraded connection, straight into tokio-tungstenite: the close path
/// needs the raw socket back (see [`close_handshake`]).
type Socket = WebSocketStream<FrameMeter<TokioIo<Upgraded>>>;

/// tungstenite's read buffer, allocated for every connection: its 128 KiB
/// default costs that much per idle connection. Client frames are small; a
/// larger one just takes more reads (tungstenite still reserves the whole
/// frame once its header is read). Measured with the `idle` preset: 11.8 KiB
/// of RSS per idle connection with 4 KiB here, 8.6 KiB with 1 KiB; 512 bytes
/// saves another half KiB on top of the later changes.
const READ_BUFFER: usize = 512;
/// Write buffering target; `flush` always writes everything anyway.
const WRITE_BUFFER: usize = 64 * 1024;
/// Most bytes tungstenite may hold unwritten beyond [`WRITE_BUFFER`]: a
/// client that sends pings and never reads fills it with pongs, and is
/// then closed rather than growing the node's memory.
const MAX_WRITE_SLACK: usize = 1 << 20;
/// How long a closing connection waits for the client's close reply.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);
/// Most bytes read and dropped while closing (a client in the middle of an
/// oversized message): reading them is what lets the close frame arrive
/// instead of a reset.
const CLOSE_DRAIN_BYTES: usize = 32 << 20;

/// Refused frames are counted over this window (see `--max-strikes`).
const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// Pings a client may send in a burst; browsers send none, libraries one
/// every few seconds.
const PING_BURST: u32 = 10;
/// Pings per second a client may keep sending; past it the connection is
/// closed (1008).
const PINGS_PER_SECOND: u32 = 2;

/// Query parameters of `/ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    room: Option<String>,
    last_event_id: Option<String>,
    format: Option<String>,
    token: Option<String>,
    audience: Option<String>,
    presence: Option<String>,
    rewind: Option<String>,
    state: Option<String>,
}

pub(crate) fn bad_handshake(message: &str) -> Response {
    Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::UnsupportedFrame, message).into_response()
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Upgrades to a WebSocket session, after checking the handshake, origin,
/// credential and the node's connection limit.
pub async fn handler(State(app): State<Arc<App>>, Params(query): Params<WsQuery>, mut request: Request) -> Response {
    let headers = request.headers();
    let key = match handshake(headers) {
        Ok(key) => key,
        Err(why) => return bad_handshake(why),
    };
    let negotiated = header_has(headers, header::SEC_WEBSOCKET_PROTOCOL, MSGPACK_SUBPROTOCOL);
    let forced = match query.format.as_deref() {
        None => None,
        Some("json") => Some(Format::Json),
        Some("msgpack") => Some(Format::MsgPack),
        Some(_) => return bad_handshake("format must be json or msgpack"),
    };
    let grant = match admit(&app, headers, query.token.as_deref()) {
        Ok(grant) => grant,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return bad_handshake("this connection cannot be upgraded");
    };
    let slot = match slot(&app, Transport::WebSocket) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let format = forced.unwrap_or(if negotiated { Format::MsgPack } else { Format::Json });
    let config = socket_config(app.config.limits.max_message_bytes);
    let tracker = app.tracker.clone();
    // A task of its own rather than the upgrade's, whose state would stay
    // allocated beside ours for the connection's whole life.
    tracker.clone().spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            debug!("websocket upgrade did not complete");
            return;
        };
        let raw = FrameMeter::new(TokioIo::new(upgraded));
        let socket = WebSocketStream::from_raw_socket(raw, Role::Server, Some(config)).await;
        tracker.spawn(run(Connection::new(app, socket, format, grant), Box::new(query), slot));
    });
    switching(&key, negotiated.then_some(MSGPACK_SUBPROTOCOL))
}

/// tungstenite's settings for a node's WebSockets (either protocol): small
/// read buffers, bounded writes, messages of at most `max` bytes.
pub(crate) fn socket_config(max: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max + MAX_WRITE_SLACK)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Checks a WebSocket upgrade request's headers; the accept key to answer,
/// or what is wrong.
pub(crate) fn handshake(headers: &HeaderMap) -> Result<String, &'static str> {
    if !header_has(headers, header::CONNECTION, "upgrade") || !header_has(headers, header::UPGRADE, "websocket") {
        return Err("a WebSocket upgrade request is expected here");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .ok_or("Sec-WebSocket-Key is missing")
}

/// The `101 Switching Protocols` answer to an upgrade (with the
/// subprotocol chosen, if any).
pub(crate) fn switching(accept: &str, subprotocol: Option<&'static str>) -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let out = response.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(accept) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(subprotocol) = subprotocol {
        out.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(subprotocol));
    }
    response
}

/// The write half of a WebSocket, as a session sink.
struct WsSink {
    sink: SplitSink<Socket, Message>,
    format: Format,
    /// Bytes fed since the last flush. Past [`WRITE_BUFFER`] the sink is
    /// [full](Sink::full) and the session flushes before writing more, so
    /// tungstenite never holds more than that plus one frame (and frames are
    /// bounded in bytes): a backlog is written at the pace the client
    /// reads, never refused as too large.
    /// (A `u32` beside `format` fits the struct's padding: a wider field
    /// cost every idle connection 72 bytes.)
    unflushed: u32,
}

fn message(wire: Wire) -> Message {
    match wire {
        Wire::Text(text) => Message::Text(text),
        Wire::Binary(bytes) => Message::Binary(bytes),
    }
}

/// Runs a write under the shared write timeout.
async fn timed<F: std::future::Future<Output = Result<(), WsError>>>(f: F) -> Result<(), SinkError> {
    match within_write_timeout(f).await {
        None => Err(SinkError::Stalled),
        Some(Ok(())) => Ok(()),
        // tungstenite's buffer bound: the client is not taking what it is sent.
        Some(Err(WsError::WriteBufferFull(_))) => Err(SinkError::Stalled),
        Some(Err(_)) => Err(SinkError::Closed),
    }
}

impl WsSink {
    /// The frame to feed, counted towards [`WsSink::unflushed`].
    fn counted(&mut self, wire: Wire) -> Message {
        self.unflushed = self.unflushed.saturating_add(u32::try_from(wire.len()).unwrap_or(u32::MAX));
        message(wire)
    }
}

impl Sink for WsSink {
    async fn write(&mut self, out: Outgoing<'_>) -> Result<(), SinkError> {
        let msg = self.counted(match out {
            Outgoing::Batch(batch) => batch.wire(self.format).clone(),
            Outgoing::Events(room, events) => encode_events(self.format, room, events),
            Outgoing::Frame(frame) => encode_frame(self.format, frame),
            Outgoing::Notice(notice) => notice.wire(self.format).clone(),
            Outgoing::State(room, state) => encode_state(self.format, room, state.position, state.values.values()),
        });
        timed(self.sink.feed(msg)).await
    }

    fn full(&self) -> bool {
        self.unflushed as usize >= WRITE_BUFFER
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.unflushed = 0;
        timed(self.sink.flush()).await
    }
}

/// How a connection ended.
enum End {
    /// The client vanished.
    Gone,
    /// The client sent a close frame; tungstenite has queued the reply (an
    /// echo, or 1002 for an invalid code), which must still be flushed.
    PeerClosed,
    /// The node closes it.
    Close(CloseReason),
    /// A moderator disconnected the subject (4403), saying this.
    Kicked(Arc<String>),
}

/// A WebSocket connection's state while it runs. It all lives in the
/// connection's task for as long as the client stays, so it holds only what
/// waiting needs; rare paths (subscribing, answering a frame, catching up,
/// closing) run in boxed futures of their own. Measured with the `idle`
/// preset: 8.3 KiB of RSS per idle connection before this layout.
struct Connection {
    app: Arc<App>,
    session: Session<WsSink>,
    stream: SplitStream<Socket>,
    strikes: DefaultDirectRateLimiter,
    pings: DefaultDirectRateLimiter,
    format: Format,
}

impl Connection {
    fn new(app: Arc<App>, socket: Socket, format: Format, grant: Grant) -> Self {
        let (sink, stream) = socket.split();
        let session = Session::new(app.sessions.clone(), WsSink { sink, format, unflushed: 0 }, grant);
        let strikes = strike_limiter(app.config.limits.max_strikes);
        let pings = rate_limiter(PINGS_PER_SECOND, PING_BURST);
        Connection { app, session, stream, strikes, pings, format }
    }

    /// Reacts to what woke the connection; `Some` ends it.
    async fn step(&mut self, wakeup: Wakeup) -> Option<End> {
        match self.session.handle(wakeup).await {
            Ok(Flow::Continue) => None,
            Ok(Flow::Expired) => Some(End::Close(CloseReason::TokenExpired)),
            Ok(Flow::Kicked(reason)) => Some(End::Kicked(reason)),
            Err(e) => Some(end_of(e.into())),
        }
    }

    /// Answers one client message; `Some` ends the connection.
    async fn receive(&mut self, incoming: Option<Result<Message, WsError>>) -> Option<End> {
        match incoming {
            None => Some(End::Gone),
            Some(Ok(Message::Close(_))) => Some(End::PeerClosed),
            Some(Ok(Message::Ping(_))) if self.pings.check().is_err() => {
                metrics::counter!("roomcast_ping_floods_total").increment(1);
                Some(End::Close(CloseReason::PingFlood))
            }
            Some(Ok(msg)) => match Box::pin(handle(&self.app, &mut self.session, self.format, msg)).await {
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
        let mut sink = Box::pin(session.close()).await;
        match end {
            Some(End::Close(reason)) => {
                metrics::counter!("roomcast_closes_total", "code" => reason.code().to_string()).increment(1);
                let text = Utf8Bytes::from_static(reason.reason());
                Box::pin(close_handshake(sink, stream, reason.code(), text)).await;
            }
            Some(End::Kicked(said)) => {
                let reason = CloseReason::Disconnected;
                metrics::counter!("roomcast_closes_total", "code" => reason.code().to_string()).increment(1);
                Box::pin(close_handshake(sink, stream, reason.code(), kick_text(&said))).await;
            }
            Some(End::PeerClosed) => {
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, sink.sink.flush()).await;
            }
            Some(End::Gone) | None => {}
        }
        debug!(conn, "websocket closed");
        drop(slot);
    }
}

/// Sends the close frame, then reads (and drops) what the client still
/// sends until it closes too. Closing a socket with unread input resets the
/// connection, and the client may never see the close frame and its reason:
/// the case of a client in the middle of an oversized message, whose rest
/// tungstenite cannot parse. So after the close frame the write side is
/// shut and the raw socket drained, bounded in time and bytes.
async fn close_handshake(mut sink: WsSink, stream: SplitStream<Socket>, code: u16, text: Utf8Bytes) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: text };
    if timed(sink.sink.send(Message::Close(Some(frame)))).await.is_err() {
        return;
    }
    let Ok(mut socket) = stream.reunite(sink.sink) else { return };
    let drain = async {
        let raw = socket.get_mut();
        let _ = raw.shutdown().await;
        let mut buf = [0u8; 8192];
        let mut drained = 0;
        while drained < CLOSE_DRAIN_BYTES {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, drain).await;
}

/// The close reason of a moderator's disconnect: the node's words, then the
/// moderator's, within a close frame's 123 bytes.
fn kick_text(said: &str) -> Utf8Bytes {
    let mut text = CloseReason::Disconnected.reason().to_owned();
    if !said.is_empty() {
        text.push_str(": ");
        text.push_str(said);
    }
    let cut = (0..=text.len().min(123)).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    text.truncate(cut);
    Utf8Bytes::from(text)
}

fn end_of(e: SessionError) -> End {
    match e {
        SessionError::Sink(SinkError::Stalled) => End::Close(CloseReason::Stalled),
        _ => End::Gone,
    }
}

fn read_error(e: WsError) -> End {
    match e {
        WsError::Capacity(_) => End::Close(CloseReason::TooBig),
        // A peer that vanished (reset, or its process died) is gone, not a
        // protocol breach: there is nobody to tell.
        WsError::Protocol(tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            End::Gone
        }
        WsError::Protocol(_) => End::Close(CloseReason::ProtocolError),
        WsError::Utf8(_) => End::Close(CloseReason::InvalidData),
        WsError::WriteBufferFull(_) => End::Close(CloseReason::Stalled),
        WsError::Io(e) if FrameFlood::is(&e) => {
            metrics::counter!("roomcast_frame_floods_total").increment(1);
            End::Close(CloseReason::FrameFlood)
        }
        _ => End::Gone,
    }
}

/// Counts refused frames: more than `max` per [`STRIKE_WINDOW`] ends the connection.
fn strike_limiter(max: u32) -> DefaultDirectRateLimiter {
    let max = NonZeroU32::new(max).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(STRIKE_WINDOW / max.get()).unwrap_or_else(|| Quota::per_second(max));
    RateLimiter::direct(quota.allow_burst(max))
}

/// `?room=` subscribes as a `subscribe` frame would, answered the same way.
async fn auto_subscribe(session: &mut Session<WsSink>, query: WsQuery) -> Result<(), SessionError> {
    let Some(room) = query.room else {
        return Ok(());
    };
    let parsed =
        RoomName::parse(&room).map_err(|e| FrameError::new(ErrorCode::BadRoom, e.to_string(), None)).and_then(|room| {
            let last_event_id = match query.last_event_id.as_deref().map(EventId::parse) {
                None => None,
                Some(Ok(id)) => Some(id),
                Some(Err(e)) => return Err(FrameError::new(ErrorCode::BadEventId, e.to_string(), None)),
            };
            let rewind = query_rewind(query.rewind.as_deref())?;
            let audience = query_flag(query.audience.as_deref());
            let state = query_flag(query.state.as_deref());
            let presence = query_flag(query.presence.as_deref());
            Ok((room, SubscribeOptions { last_event_id, audience, rewind, state, presence }))
        });
    let outcome = match parsed {
        Ok((room, options)) => session.subscribe(room, options).await,
        Err(e) => Err(SessionError::Refused(e)),
    };
    session.answer(outcome).await.map(|_| ())
}

async fn handle(
    app: &App,
    session: &mut Session<WsSink>,
    format: Format,
    msg: Message,
) -> Result<Answer, SessionError> {
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
        Ok(ClientFrame::Subscribe { room, options }) => session.subscribe(room, options).await,
        Ok(ClientFrame::React { room, key }) => session.react(&room, &key),
        Ok(ClientFrame::Unsubscribe { room }) => session.unsubscribe(room).await,
        Ok(ClientFrame::Publish { room, data, reference, idempotency_key, key, name }) => {
            session.publish(room, data, reference, idempotency_key, key, name).await
        }
        Ok(ClientFrame::Refresh { token }) => match app.config.auth.authenticate(&HeaderMap::new(), Some(&token)) {
            Ok(grant) => session.refresh(grant).await,
            Err(e) => Err(SessionError::Refused(FrameError::new(ErrorCode::BadToken, e.to_string(), None))),
        },
    };
    session.answer(outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_output<A, B, C, F>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_idle_connections_task_stays_small() {
        let size = size_of_output(run);
        eprintln!("websocket connection future: {size} bytes");
        // Measured 1,416 bytes (x86-64): the connection's state and what
        // waiting needs (1,336 before the in-band token refresh, the
        // reaction limiter's box and notices in the outbox). A change that
        // inlines a rare path's state here costs every idle connection;
        // box that path instead.
        assert!(
            size <= 1_440,
            "the WebSocket connection's future grew to {size} bytes: every idle connection pays this"
        );
    }
}
