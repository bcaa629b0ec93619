//! `GET /app/{key}`: Pusher's WebSocket protocol (7), so pusher-js and
//! Laravel Echo connect unchanged. A Pusher connection joins the same hub
//! as roomcast's own: a channel is the room of its app's prefix and name,
//! events published either way reach both, and presence channels are
//! roomcast presence with the member named by the signed `channel_data`.
//!
//! What Pusher clients lack, a slow one cannot be caught up: one that falls
//! behind its outbox is closed with 4100 and reconnects (Pusher's meaning:
//! over capacity, try again with backoff).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::slot;
use super::ws::{bad_handshake, handshake, socket_config, switching};
use crate::app::{App, ConnectionSlot, Transport};
use crate::auth::Grant;
use crate::config::PusherApp;
use crate::http::Params;
use crate::hub::outbox::{Item, Outbox, OutboxLimits, OutboxReceiver, Pending};
use crate::hub::{Encoded, RoomFlags, Subscriber, PRESENCE_WANTED};
use crate::protocol::{EventName, PresenceMember, RoomName, ServerFrame};
use crate::publish::{Publication, Via};
use crate::pusher::{self, Kind, ACTIVITY_TIMEOUT_SECS};
use crate::store::presence::{ClientEvent, WebhookOptions};

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Client events a connection may send per second (Pusher's limit).
const CLIENT_EVENTS_PER_SECOND: u32 = 10;
/// Silence from the client after which the connection is closed (4201):
/// twice the activity timeout clients are told to ping within.
const SILENCE: Duration = Duration::from_secs(2 * ACTIVITY_TIMEOUT_SECS);

/// Query parameters of `/app/{key}`.
#[derive(Debug, Deserialize)]
pub struct PusherQuery {
    protocol: Option<u32>,
}

/// Upgrades to a Pusher session. An unknown key or an old protocol is told
/// in Pusher's way once upgraded (an error event, then close 4001 / 4007).
pub async fn handler(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
    Params(query): Params<PusherQuery>,
    mut request: Request,
) -> Response {
    let accept = match handshake(request.headers()) {
        Ok(accept) => accept,
        Err(why) => return bad_handshake(why),
    };
    if app.shutdown.is_cancelled() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !app.config.origins.allows(request.headers()) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let slot = match slot(&app, Transport::WebSocket) {
        Ok(slot) => slot,
        Err(refusal) => return refusal.into_response(),
    };
    let pusher_app = pusher::by_key(&app.config.pusher_apps, &key).cloned();
    // The native transport's buffers: an idle connection costs the same.
    let config = socket_config(app.config.limits.max_message_bytes);
    let tracker = app.tracker.clone();
    tracker.clone().spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            debug!("pusher upgrade did not complete");
            return;
        };
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        tracker.spawn(run(app, socket, pusher_app, query.protocol.unwrap_or(0), slot));
    });
    switching(&accept, None)
}

/// One subscribed channel.
struct Channel {
    room: RoomName,
    kind: Kind,
    /// The hub's signals about the room (a full outbox marks it lagged).
    flags: Arc<RoomFlags>,
    /// On a presence channel, the user this connection is.
    user: Option<String>,
    /// Presence: whether `subscription_succeeded` went out, and the members
    /// the client was told of (user_id -> info).
    succeeded: bool,
    members: BTreeMap<String, Value>,
}

/// A Pusher connection's state.
struct Conn {
    app: Arc<App>,
    pusher: PusherApp,
    socket_id: String,
    id: u64,
    outbox: Arc<Outbox>,
    sink: SplitSink<Socket, Message>,
    channels: HashMap<String, Channel>,
    client_events: DefaultDirectRateLimiter,
    /// New rooms this connection made lately (`--new-rooms-per-minute`).
    new_rooms: crate::budget::Window,
}

/// How the connection ends.
struct Close(u16, &'static str);

async fn run(app: Arc<App>, socket: Socket, pusher_app: Option<PusherApp>, protocol: u32, _slot: ConnectionSlot) {
    let (mut sink, mut stream) = socket.split();
    let refusal = match &pusher_app {
        None => Some((4001, "App key not in this cluster")),
        Some(_) if protocol < 7 => Some((4007, "Unsupported protocol version (7 is supported)")),
        Some(_) => None,
    };
    let Some(pusher_app) = pusher_app.filter(|_| refusal.is_none()) else {
        let (code, message) = refusal.unwrap_or((4001, "App key not in this cluster"));
        let error = pusher::message("pusher:error", None, &json!({"code": code, "message": message}).to_string());
        let _ = sink.send(Message::text(error)).await;
        let _ =
            sink.send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: message.into() }))).await;
        return;
    };
    let limits = &app.config.limits;
    let (outbox, mut rx) = Outbox::new(OutboxLimits { frames: limits.outbox_frames, bytes: limits.outbox_bytes });
    let id = crate::session::next_connection_id();
    app.sessions.hub.connect(id, &outbox, None, None);
    let quota = Quota::per_second(NonZeroU32::new(CLIENT_EVENTS_PER_SECOND).unwrap_or(NonZeroU32::MIN));
    let mut conn = Conn {
        app: app.clone(),
        pusher: pusher_app,
        socket_id: pusher::socket_id(),
        id,
        outbox,
        sink,
        channels: HashMap::new(),
        client_events: RateLimiter::direct(quota),
        new_rooms: crate::budget::Window::default(),
    };
    metrics::counter!("roomcast_pusher_connections_total").increment(1);
    let established = json!({"socket_id": conn.socket_id, "activity_timeout": ACTIVITY_TIMEOUT_SECS}).to_string();
    let mut close = conn.send(&pusher::message("pusher:connection_established", None, &established)).await.err();
    while close.is_none() {
        close = tokio::select! {
            _ = app.shutdown.cancelled() => Some(Close(4200, "server shutting down; reconnect")),
            message = tokio::time::timeout(SILENCE, stream.next()) => match message {
                Err(_) => Some(Close(4201, "no activity from the client")),
                Ok(None) | Ok(Some(Err(_))) => break,
                // Boxed: the rare large steps (a subscribe, a client event)
                // stay out of an idle connection's future.
                Ok(Some(Ok(Message::Text(text)))) => Box::pin(conn.client(text.as_str())).await.err(),
                Ok(Some(Ok(Message::Close(_)))) => break,
                Ok(Some(Ok(_))) => None,
            },
            pending = rx.next() => Box::pin(conn.deliver(pending, &mut rx)).await.err(),
        };
    }
    if let Some(Close(code, reason)) = close {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.sink.send(Message::Close(Some(frame)))).await;
    }
    drop(rx);
    for channel in conn.channels.values() {
        app.sessions.hub.leave(&channel.room, conn.id).await;
    }
    app.sessions.hub.disconnect(conn.id);
}

/// A subscription request's data.
#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

/// What a client sends.
#[derive(Deserialize)]
struct ClientMessage {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Value,
}

/// `data` as an object: clients send it as one, or as its JSON text.
fn object(data: Value) -> Value {
    match data {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
        other => other,
    }
}

impl Conn {
    async fn send(&mut self, text: &str) -> Result<(), Close> {
        match tokio::time::timeout(super::WRITE_TIMEOUT, self.sink.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close(4200, "closed")),
            Err(_) => Err(Close(4100, "the client is not reading; reconnect later")),
        }
    }

    async fn error(&mut self, code: Option<u16>, message: &str) -> Result<(), Close> {
        self.send(&pusher::message("pusher:error", None, &json!({"code": code, "message": message}).to_string())).await
    }

    async fn subscription_error(&mut self, channel: &str, status: u16, error: &str) -> Result<(), Close> {
        let data = json!({"type": "AuthError", "error": error, "status": status}).to_string();
        self.send(&pusher::message("pusher:subscription_error", Some(channel), &data)).await
    }

    /// One message from the client.
    async fn client(&mut self, text: &str) -> Result<(), Close> {
        let Ok(message) = serde_json::from_str::<ClientMessage>(text) else {
            return self.error(Some(4200), "a message must be a JSON object with an event").await;
        };
        match message.event.as_str() {
            "pusher:ping" => self.send(&pusher::message("pusher:pong", None, "{}")).await,
            "pusher:pong" => Ok(()),
            "pusher:subscribe" => match serde_json::from_value::<SubscribeData>(object(message.data)) {
                Ok(data) => self.subscribe(data).await,
                Err(_) => self.error(None, "pusher:subscribe needs data.channel").await,
            },
            "pusher:unsubscribe" => {
                if let Some(channel) = object(message.data)["channel"].as_str() {
                    if let Some(c) = self.channels.remove(channel) {
                        self.app.sessions.hub.leave(&c.room, self.id).await;
                    }
                }
                Ok(())
            }
            name if name.starts_with("client-") => {
                let channel = message.channel.unwrap_or_default();
                self.client_event(name, &channel, message.data).await
            }
            name if name.starts_with("pusher:") => self.error(None, &format!("{name} is not supported here")).await,
            _ => self.error(None, "clients may only send client- events").await,
        }
    }

    async fn subscribe(&mut self, data: SubscribeData) -> Result<(), Close> {
        let channel = data.channel;
        if self.channels.contains_key(&channel) {
            return Ok(());
        }
        let Some(kind) = Kind::of(&channel) else {
            return self.subscription_error(&channel, 400, "encrypted channels are not supported").await;
        };
        let Some(room) = pusher::room_of(&self.pusher, &channel) else {
            return self.subscription_error(&channel, 400, "invalid channel name").await;
        };
        let max = self.app.config.limits.max_subscriptions;
        if self.channels.len() >= max {
            return self.subscription_error(&channel, 429, &format!("at most {max} channels per connection")).await;
        }
        if kind.signed() {
            let auth = data.auth.as_deref().unwrap_or("");
            let channel_data = if kind == Kind::Presence { data.channel_data.as_deref() } else { None };
            if !pusher::channel_auth_ok(&self.pusher, &self.socket_id, &channel, channel_data, auth) {
                metrics::counter!("roomcast_pusher_auth_refused_total").increment(1);
                return self.subscription_error(&channel, 401, "invalid signature").await;
            }
        }
        // Following a room the store has no trace of makes it: the same
        // budget as roomcast's own subscribers.
        let budget = self.app.sessions.publisher.budget();
        let admitted = budget.admit(&room, &Grant::Anonymous, Some(&mut self.new_rooms), &*self.app.store).await;
        if let Err(e) = admitted {
            return self.subscription_error(&channel, 429, &e.to_string()).await;
        }
        let flags = Arc::new(RoomFlags::default());
        let mut member = None;
        let mut user = None;
        if kind == Kind::Presence {
            let parsed: Value =
                data.channel_data.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
            let user_id = match &parsed["user_id"] {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return self.subscription_error(&channel, 400, "channel_data needs a user_id").await,
            };
            let info = if parsed["user_info"].is_object() { parsed["user_info"].to_string() } else { "{}".into() };
            // The user, for terminate_connections (and presence on every channel).
            self.app.sessions.hub.connect(self.id, &self.outbox, Some(&user_id), Some(&info));
            member = Some(Arc::new((Arc::from(user_id.as_str()), Arc::from(info.as_str()))));
            user = Some(user_id);
            flags.presence.store(PRESENCE_WANTED, std::sync::atomic::Ordering::Relaxed);
        }
        let subscriber = Subscriber { outbox: self.outbox.clone(), flags: flags.clone(), member };
        if self.app.sessions.hub.join(&room, self.id, subscriber).await.is_err() {
            return self.subscription_error(&channel, 503, "the store is unavailable; try again").await;
        }
        self.channels
            .insert(channel.clone(), Channel { room, kind, flags, user, succeeded: false, members: BTreeMap::new() });
        if kind != Kind::Presence {
            // Presence waits for the members (the next presence round).
            if let Some(c) = self.channels.get_mut(&channel) {
                c.succeeded = true;
            }
            self.send(&pusher::message("pusher_internal:subscription_succeeded", Some(&channel), "{}")).await?;
        }
        Ok(())
    }

    /// A client event: to the others on a private or presence channel this
    /// connection is subscribed to; stored like any event, never echoed.
    async fn client_event(&mut self, name: &str, channel: &str, data: Value) -> Result<(), Close> {
        let (room, user) = match self.channels.get(channel) {
            Some(c) if c.kind.signed() => (c.room.clone(), c.user.clone()),
            _ => {
                return self
                    .error(None, "client events go to private and presence channels you are subscribed to")
                    .await
            }
        };
        if self.client_events.check().is_err() {
            metrics::counter!("roomcast_rate_limited_total", "what" => "client_event").increment(1);
            return self.error(Some(4301), "more than 10 client events a second").await;
        }
        let Ok(event_name) = EventName::parse(name) else {
            return self.error(None, "invalid event name").await;
        };
        let publication = Publication {
            grant: &Grant::ApiKey,
            anonymous: None,
            room: &room,
            data: pusher::stored_data(&data),
            idempotency: None,
            key: None,
            name: Some(&event_name),
            skip: Some(&self.socket_id),
            via: Via::WebSocket,
        };
        if let Err(e) = self.app.sessions.publisher.publish(publication, None).await {
            return self.error(None, &e.to_string()).await;
        }
        let webhooks = WebhookOptions::from_settings(&self.app.config);
        if webhooks.enabled {
            let text = match &data {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let event =
                ClientEvent { event: name.to_owned(), data: text, socket_id: self.socket_id.clone(), user_id: user };
            let recorded = self.app.store.record_client_event(&webhooks, &room, event, crate::clock::now_ms()).await;
            if let Err(e) = recorded {
                debug!(cause = %e, "a client event's webhook was not recorded");
            }
        }
        Ok(())
    }

    /// What the hub queued for this connection.
    async fn deliver(&mut self, pending: Pending, rx: &mut OutboxReceiver) -> Result<(), Close> {
        let mut next = Some(pending);
        // Whatever else is queued goes out before one flush.
        for _ in 0..256 {
            let Some(pending) = next.take() else { break };
            match pending {
                Pending::Item(Item::Batch(batch)) => {
                    let Some(channel) = pusher::channel_of(&self.pusher, &batch.room) else {
                        continue;
                    };
                    // Encoded once per batch, shared by every Pusher subscriber.
                    let messages = batch.messages(|events| {
                        events
                            .iter()
                            .filter(|e| e.op.is_none())
                            .map(|e| Encoded {
                                skip: e.meta.as_ref().and_then(|m| m.skip.clone()),
                                text: pusher::message(
                                    e.name().map_or("message", EventName::as_str),
                                    Some(channel),
                                    &pusher::data_string(&e.data),
                                )
                                .into(),
                            })
                            .collect()
                    });
                    for m in messages {
                        if m.skip.as_deref() == Some(self.socket_id.as_str()) {
                            continue;
                        }
                        self.feed(Message::Text(m.text.clone())).await?;
                    }
                }
                Pending::Item(Item::Notice(notice)) => self.presence(notice.frame()).await?,
                Pending::Item(Item::Kick(_)) => return Err(Close(4009, "connection terminated by the app")),
                Pending::Heartbeat => {}
                Pending::Signal => {
                    let lagged =
                        self.channels.values().any(|c| c.flags.lagged.swap(false, std::sync::atomic::Ordering::AcqRel));
                    if lagged {
                        metrics::counter!("roomcast_pusher_closed_lagging_total").increment(1);
                        return Err(Close(4100, "the client fell behind; reconnect"));
                    }
                }
            }
            next = rx.try_next();
        }
        match tokio::time::timeout(super::WRITE_TIMEOUT, self.sink.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close(4200, "closed")),
            Err(_) => Err(Close(4100, "the client is not reading; reconnect later")),
        }
    }

    async fn feed(&mut self, message: Message) -> Result<(), Close> {
        match tokio::time::timeout(super::WRITE_TIMEOUT, self.sink.feed(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close(4200, "closed")),
            Err(_) => Err(Close(4100, "the client is not reading; reconnect later")),
        }
    }

    /// Presence as Pusher tells it: the members with
    /// `subscription_succeeded`, then `member_added` / `member_removed`.
    async fn presence(&mut self, frame: &ServerFrame) -> Result<(), Close> {
        let (room, joined, left, snapshot) = match frame {
            ServerFrame::Presence { room, members, .. } => (room, members.as_slice(), &[][..], true),
            ServerFrame::PresenceDiff { room, joined, left, .. } => (room, joined.as_slice(), left.as_slice(), false),
            _ => return Ok(()),
        };
        let Some(channel) = pusher::channel_of(&self.pusher, room).map(str::to_owned) else {
            return Ok(());
        };
        let Some(c) = self.channels.get_mut(&channel).filter(|c| c.kind == Kind::Presence) else {
            return Ok(());
        };
        let all = |members: &[PresenceMember]| -> BTreeMap<String, Value> {
            members.iter().map(|m| (m.sub.clone(), m.info.clone())).collect()
        };
        if snapshot && !c.succeeded {
            c.succeeded = true;
            c.members = all(joined);
            let ids: Vec<&String> = c.members.keys().collect();
            let data = json!({"presence": {"ids": ids, "hash": c.members, "count": c.members.len()}}).to_string();
            return self.send(&pusher::message("pusher_internal:subscription_succeeded", Some(&channel), &data)).await;
        }
        if !c.succeeded {
            return Ok(());
        }
        // A snapshot after the first (a lost diff) is told as the difference.
        let (added, removed): (Vec<(String, Value)>, Vec<String>) = if snapshot {
            let now = all(joined);
            let added = now
                .iter()
                .filter(|(k, v)| c.members.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let removed = c.members.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
            (added, removed)
        } else {
            (joined.iter().map(|m| (m.sub.clone(), m.info.clone())).collect(), left.to_vec())
        };
        let mut out = Vec::new();
        for (user_id, info) in added {
            if c.members.insert(user_id.clone(), info.clone()).is_none() {
                let data = json!({"user_id": user_id, "user_info": info}).to_string();
                out.push(pusher::message("pusher_internal:member_added", Some(&channel), &data));
            }
        }
        for user_id in removed {
            if c.members.remove(&user_id).is_some() {
                let data = json!({"user_id": user_id}).to_string();
                out.push(pusher::message("pusher_internal:member_removed", Some(&channel), &data));
            }
        }
        for text in out {
            self.feed(Message::text(text)).await?;
        }
        Ok(())
    }
}
