//! One connection's subscriptions, whatever the transport.
//!
//! A session keeps, per room, a cursor: the last event it delivered. Live
//! batches are merged by that cursor, so an event reaches the client at most
//! once and in order, and a batch that does not continue the cursor (the
//! outbox overflowed, the store lost history) sends the session to the store
//! to catch up, which either fills the hole or reports a `gap`. Subscribing
//! with a resume point registers for live delivery first, then reads the
//! missed history in pages; the same merge makes the seam exact.

pub mod cursor;
pub mod limiters;
pub mod rooms;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tracing::debug;

use self::cursor::{accept, Accept};
use self::limiters::{
    Limiters, ReactLimit, REACTION_BURST, REACTION_KEYS, REACTION_RATE, SUBSCRIBE_BURST, SUBSCRIBE_RATE,
};
use self::rooms::{RoomState, Rooms};
use crate::auth::Grant;
use crate::config::Limits;
use crate::hub::outbox::{Item, Outbox, OutboxLimits, OutboxReceiver, Pending};
use crate::hub::{Batch, Hub, Notice, RoomFlags, State, Subscriber, PRESENCE_WANTED};
use crate::live::Live;
use crate::protocol::{
    frames, ErrorCode, Event, EventId, EventName, FrameError, IdempotencyKey, ReactionKey, RoomName, ServerFrame,
    StateKey, SubscribeOptions, EVENT_OVERHEAD, FRAME_BUDGET,
};
use crate::publish::{Publication, Publisher, Refused, Via};
use crate::store::{EventLog, Page, Position, StoreError};

/// Most events read per history page.
pub const PAGE: usize = 256;
/// Bytes of history one read aims at: a page is held while it is written,
/// so this, with the outbox and the socket's buffer, bounds what a client
/// that is behind costs the node.
pub const PAGE_BYTES: usize = 1 << 20;
/// Most queued batches written before one flush.
const MAX_COALESCE: usize = 256;
/// Wait before retrying a catch-up the store refused.
const CATCH_UP_RETRY: Duration = Duration::from_secs(1);

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A number for a new connection of any protocol, unique in the process
/// (the hub knows connections by it).
pub fn next_connection_id() -> u64 {
    NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed)
}

/// A random number fixed for the process: with a connection's number, a
/// name for an anonymous publisher that no other node's connection shares.
fn process_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(rand::random)
}

/// What a session writes; the transport encodes it for its wire.
pub enum Outgoing<'a> {
    /// A live batch, whose shared encoding can be reused as is.
    Batch(&'a Batch),
    /// Events only this connection gets (history, or part of a batch).
    Events(&'a RoomName, &'a [Event]),
    /// A control frame.
    Frame(&'a ServerFrame),
    /// A room-wide notice (audience, reactions), shared like a batch.
    Notice(&'a Notice),
    /// A room's current state.
    State(&'a RoomName, &'a State),
}

/// The transport could not write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The peer is gone.
    #[error("connection closed")]
    Closed,
    /// A write did not complete within the write timeout: the client stopped reading.
    #[error("write stalled")]
    Stalled,
}

/// Where a session's output goes (a WebSocket, an SSE body).
pub trait Sink: Send {
    /// Queues one item for writing (may write if buffers are full).
    fn write(&mut self, out: Outgoing<'_>) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Writes everything queued.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Whether enough is queued that the sink must be flushed before more
    /// is written (see the WebSocket's write bound).
    fn full(&self) -> bool {
        false
    }
}

/// Why a session operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request is refused; tell the client with an `error` frame.
    #[error("{}", .0.message)]
    Refused(FrameError),
    /// The connection can no longer be written.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Per-connection limits.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Bounds of the outbox.
    pub outbox: OutboxLimits,
    /// Most rooms one connection may follow.
    pub max_subscriptions: usize,
    /// Largest published payload (compact JSON bytes).
    pub max_payload: usize,
    /// Sustained publishes per second.
    pub publish_rate: u32,
    /// Publishes allowed in a burst.
    pub publish_burst: u32,
}

impl From<&Limits> for SessionLimits {
    fn from(l: &Limits) -> Self {
        SessionLimits {
            outbox: OutboxLimits { frames: l.outbox_frames, bytes: l.outbox_bytes },
            max_subscriptions: l.max_subscriptions,
            max_payload: l.max_message_bytes,
            publish_rate: l.publish_rate,
            publish_burst: l.publish_burst,
        }
    }
}

/// One connection in this many records the delivery delay.
const DELAY_SAMPLE: u64 = 16;
/// The heartbeat frame, kept static: a temporary frame held across the
/// write would be a slot in every idle connection's future.
static HEARTBEAT: ServerFrame = ServerFrame::Heartbeat;

/// What woke the session up.
pub enum Wakeup {
    /// A live batch arrived.
    Batch(Arc<Batch>),
    /// An audience count or a window of reactions arrived.
    Notice(Arc<Notice>),
    /// Some room must catch up from the store.
    CatchUp,
    /// The credential expired: the connection must end.
    Expired,
    /// A moderator disconnected the connection's subject, saying this.
    Kicked(Arc<String>),
    /// The node's heartbeat tick.
    Heartbeat,
}

/// What a wake-up leaves the connection to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Carry on.
    Continue,
    /// The credential expired: the transport ends the connection.
    Expired,
    /// A moderator disconnected the subject: the transport closes (4403).
    Kicked(Arc<String>),
}

/// How a client's request was answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Done as asked.
    Done,
    /// Refused with an `error` frame (a strike against the connection).
    Refused,
}

/// What every session of a node shares: where events are followed, read
/// and published, and the live audience.
pub struct Context {
    /// The room registry and fanout.
    pub hub: Arc<Hub>,
    /// Where history is read.
    pub log: Arc<dyn EventLog>,
    /// Reactions and audience counts.
    pub live: Arc<Live>,
    /// The one publish path.
    pub publisher: Publisher,
    /// Limits applied to every connection.
    pub limits: SessionLimits,
}

/// One connection's rooms, cursors and outbox.
pub struct Session<S: Sink> {
    id: u64,
    ctx: Arc<Context>,
    inbox: OutboxReceiver,
    rooms: Rooms,
    /// When a catch-up the store refused is retried.
    retry_at: Option<Instant>,
    /// When the credential expires.
    expires_at: Option<Instant>,
    /// What this connection's credential allows.
    grant: Grant,
    /// Whether anything was written since the last heartbeat tick.
    spoke: bool,
    /// What this connection has left of its rates.
    limiters: Limiters,
    sink: S,
}

fn store_refusal(e: StoreError, reference: Option<u64>) -> SessionError {
    SessionError::Refused(FrameError::new(e.error_code(), e.to_string(), reference))
}

fn refuse(code: ErrorCode, message: impl Into<String>, reference: Option<u64>) -> SessionError {
    SessionError::Refused(FrameError::new(code, message, reference))
}

/// Events the next history read asks for: about [`PAGE_BYTES`] of events as
/// large as `largest` (the largest seen last, or the largest allowed).
pub fn page_limit(largest: usize) -> usize {
    (PAGE_BYTES / (largest + EVENT_OVERHEAD)).clamp(1, PAGE)
}

/// How a new subscription starts (see [`Session::subscribe`]).
struct Started {
    /// The position it delivers after.
    cursor: EventId,
    /// The first page of history to send, for a resume or a rewind.
    page: Option<Page>,
    /// The state to send first, when asked for.
    state: Option<Arc<State>>,
    /// Events the next history read asks for.
    first_limit: usize,
    /// A resume whose history is complete.
    resumed: bool,
}

/// Why a room catches up from the store (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// A live batch did not fit the outbox or did not follow the cursor.
    Lagged,
    /// The store may have lost events: a gap first, then what is kept.
    StoreLoss,
}

impl CatchUp {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CatchUp::Lagged => "lagged",
            CatchUp::StoreLoss => "store_loss",
        }
    }
}

/// Why a client is told of a gap (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The store may have lost events the client had not received.
    StoreLoss,
    /// Events after the client's position are no longer kept (trimmed,
    /// expired, rebuilt, or written across a change of store server).
    NotKept,
    /// The client's position is beyond the room's end (a token from a
    /// history the store lost).
    BeyondTail,
}

impl GapReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            GapReason::StoreLoss => "store_loss",
            GapReason::NotKept => "not_kept",
            GapReason::BeyondTail => "beyond_tail",
        }
    }
}

impl<S: Sink> Session<S> {
    /// A session writing to `sink`, acting with `grant`'s permissions.
    pub fn new(ctx: Arc<Context>, sink: S, grant: Grant) -> Self {
        let limits = ctx.limits;
        let (outbox, inbox) = Outbox::new(limits.outbox);
        let id = next_connection_id();
        ctx.hub.connect(id, &outbox, grant.sub(), grant.info());
        Session {
            id,
            ctx,
            inbox,
            rooms: Rooms::default(),
            retry_at: None,
            expires_at: grant.remaining().map(|left| Instant::now() + left),
            grant,
            // The first tick after connecting never beats: the connection
            // has just been answered.
            spoke: true,
            limiters: Limiters::new(limits.publish_rate, limits.publish_burst),
            sink,
        }
    }

    /// Writes one item to the sink, noting that the connection spoke.
    async fn write_out(&mut self, out: Outgoing<'_>) -> Result<(), SinkError> {
        self.spoke = true;
        self.sink.write(out).await
    }

    /// Writes one control frame and flushes.
    pub async fn send(&mut self, frame: &ServerFrame) -> Result<(), SinkError> {
        self.write_out(Outgoing::Frame(frame)).await?;
        self.sink.flush().await
    }

    /// Joins `room`: live only, from the oldest kept (`0`), resuming after
    /// an ID, or rewinding the last N events; optionally with the room's
    /// state first. Answers `subscribed`, then any `state`, `gap` and
    /// missed events, then live events.
    pub async fn subscribe(&mut self, room: RoomName, options: SubscribeOptions) -> Result<(), SessionError> {
        if !self.grant.may_subscribe(&room) {
            return Err(refuse(ErrorCode::Forbidden, format!("this token may not subscribe to {room}"), None));
        }
        self.check_churn()?;
        if self.rooms.contains(&room) {
            return Err(refuse(ErrorCode::AlreadySubscribed, format!("already subscribed to {room}"), None));
        }
        let max = self.ctx.limits.max_subscriptions;
        if self.rooms.len() >= max {
            return Err(refuse(ErrorCode::LimitExceeded, format!("at most {max} subscriptions per connection"), None));
        }
        let banned = self.ctx.publisher.moderation().banned_until(&room, &self.grant).await;
        if let Some(until_ms) = banned.map_err(|e| store_refusal(e, None))? {
            let message = format!("banned from {room} until {until_ms} (ms since the epoch)");
            return Err(refuse(ErrorCode::Banned, message, None));
        }
        // Following a room the store has no trace of makes it (its anchor):
        // that spends from the new-room budgets.
        let budget = self.ctx.publisher.budget();
        budget.admit(&room, &self.grant, Some(self.limiters.rooms()), &*self.ctx.log).await.map_err(|e| match e {
            crate::budget::Refused::TooMany(_) => refuse(ErrorCode::TooManyRooms, e.to_string(), None),
            crate::budget::Refused::Store(e) => store_refusal(e, None),
        })?;
        let flags = Arc::new(RoomFlags::default());
        flags.audience.store(options.audience, Ordering::Relaxed);
        if options.presence {
            flags.presence.store(PRESENCE_WANTED, Ordering::Relaxed);
        }
        let subscriber = Subscriber { outbox: self.inbox.outbox().clone(), flags: flags.clone(), member: None };
        let live = self.ctx.hub.join(&room, self.id, subscriber).await.map_err(|e| store_refusal(e, None))?;
        match self.start(&room, live, options).await {
            Ok(started) => {
                let mut state = RoomState::new(started.cursor, flags, started.first_limit);
                state.state = options.state;
                self.rooms.insert(room.clone(), state);
                Ok(self.begin(&room, started, options.audience).await?)
            }
            Err(e) => {
                self.ctx.hub.leave(&room, self.id).await;
                Err(store_refusal(e, None))
            }
        }
    }

    /// Where a new subscription starts and what it sends first; reads only.
    async fn start(&self, room: &RoomName, live: EventId, options: SubscribeOptions) -> Result<Started, StoreError> {
        let hub = &self.ctx.hub;
        let first_limit = page_limit(self.ctx.limits.max_payload);
        let state = if options.state { Some(hub.state(room).await?) } else { None };
        // A position given wins over a rewind: that is a resume.
        let from = match (options.last_event_id, options.rewind) {
            (Some(resume), _) => Some(if resume.is_zero() { Position::Oldest } else { Position::After(resume) }),
            (None, Some(n)) => Some(hub.rewind(room, usize::from(n)).await?),
            (None, None) => None,
        };
        let Some(from) = from else {
            // Live: from the state's position when there is one (the first
            // event after it is the first delivered), else from joining.
            let cursor = state.as_ref().map_or(live, |s| s.position);
            return Ok(Started { cursor, page: None, state, first_limit, resumed: false });
        };
        let page = hub.history(room, from, first_limit).await?;
        let cursor = match from {
            Position::After(x) => x,
            Position::Oldest => EventId::ZERO,
        };
        let resumed = options.last_event_id.is_some() && !page.gap;
        Ok(Started { cursor, page: Some(page), state, first_limit, resumed })
    }

    /// Sends what a new subscription starts with: `subscribed`, the state,
    /// the audience, and the first page of history.
    async fn begin(&mut self, room: &RoomName, started: Started, audience: bool) -> Result<(), SinkError> {
        let subscribed =
            ServerFrame::Subscribed { room: room.clone(), resumed: started.resumed, last_event_id: started.cursor };
        self.write_out(Outgoing::Frame(&subscribed)).await?;
        if let Some(state) = &started.state {
            self.write_out(Outgoing::State(room, state)).await?;
        }
        self.send_known_audience(room, audience).await?;
        match started.page {
            // The rest of a long history follows page by page, between the
            // client's own frames, as the client takes it.
            Some(page) => self.apply_page(room, page, false).await,
            None => self.sink.flush().await,
        }
    }

    /// A new watcher gets the room's audience at once when this node knows
    /// it; otherwise the next audience round brings it (within 2 s).
    async fn send_known_audience(&mut self, room: &RoomName, audience: bool) -> Result<(), SinkError> {
        match self.ctx.live.known_audience(room).filter(|_| audience) {
            Some(count) => self.write_out(Outgoing::Frame(&ServerFrame::Audience { room: room.clone(), count })).await,
            None => Ok(()),
        }
    }

    /// Counts a reaction to a room this connection follows. Reactions are
    /// not stored and not acked; past the per-connection rate they are
    /// dropped with an error.
    pub fn react(&mut self, room: &RoomName, key: &ReactionKey) -> Result<(), SessionError> {
        if !self.rooms.contains(room) {
            return Err(refuse(ErrorCode::NotSubscribed, format!("react to a room you follow; not to {room}"), None));
        }
        let new_reactor = match self.limiters.react(key) {
            Ok(new_reactor) => new_reactor,
            Err(ReactLimit::Rate) => {
                metrics::counter!("roomcast_reactions_dropped_total", "reason" => "rate").increment(1);
                let message = format!("more than {REACTION_RATE} reactions per second (burst {REACTION_BURST})");
                return Err(refuse(ErrorCode::RateLimited, message, None));
            }
            Err(ReactLimit::Keys) => {
                metrics::counter!("roomcast_reactions_dropped_total", "reason" => "connection_keys").increment(1);
                let message = format!("more than {REACTION_KEYS} different reaction keys a second");
                return Err(refuse(ErrorCode::RateLimited, message, None));
            }
        };
        if self.ctx.live.react(room, key, new_reactor) {
            metrics::counter!("roomcast_reactions_total").increment(1);
        } else {
            metrics::counter!("roomcast_reactions_dropped_total", "reason" => "keys").increment(1);
        }
        Ok(())
    }

    /// Refuses subscribe/unsubscribe churn past the per-connection rate.
    fn check_churn(&self) -> Result<(), SessionError> {
        if self.limiters.churn(&self.grant) {
            return Ok(());
        }
        metrics::counter!("roomcast_rate_limited_total", "what" => "subscribe").increment(1);
        let message =
            format!("more than {SUBSCRIBE_RATE} subscribes or unsubscribes per second (burst {SUBSCRIBE_BURST})");
        Err(refuse(ErrorCode::RateLimited, message, None))
    }

    /// Puts a fresh credential in force without ending the connection.
    /// Rooms the new credential no longer allows are left, each answered
    /// with `unsubscribed`, so a refresh can narrow access as well as extend it.
    /// The new credential must name the same subject as the one the
    /// connection was opened with: a refresh extends or narrows access, it
    /// never turns one user's connection into another's.
    pub async fn refresh(&mut self, grant: Grant) -> Result<(), SessionError> {
        if self.grant.sub() != grant.sub() {
            let message = "a refreshed token must name the same subject (`sub`) as the connection's";
            return Err(refuse(ErrorCode::BadToken, message, None));
        }
        let dropped: Vec<RoomName> =
            self.rooms.iter().map(|(room, _)| room).filter(|room| !grant.may_subscribe(room)).cloned().collect();
        for room in dropped {
            self.rooms.remove(&room);
            self.ctx.hub.leave(&room, self.id).await;
            self.write_out(Outgoing::Frame(&ServerFrame::Unsubscribed { room, reason: None })).await?;
        }
        let remaining = grant.remaining();
        self.expires_at = remaining.map(|left| Instant::now() + left);
        self.grant = grant;
        Ok(self.send(&ServerFrame::Refreshed { expires_in: remaining.map(|d| d.as_secs()) }).await?)
    }

    /// Leaves `room`.
    pub async fn unsubscribe(&mut self, room: RoomName) -> Result<(), SessionError> {
        self.check_churn()?;
        if self.rooms.remove(&room).is_none() {
            return Err(refuse(ErrorCode::NotSubscribed, format!("not subscribed to {room}"), None));
        }
        self.ctx.hub.leave(&room, self.id).await;
        Ok(self.send(&ServerFrame::Unsubscribed { room, reason: None }).await?)
    }

    /// Publishes `data` to `room` through the node's publish path and acks
    /// with its ID; never acks what the store did not confirm. Past the
    /// connection's publish rate it is refused before anything else.
    pub async fn publish(
        &mut self,
        room: RoomName,
        data: Value,
        reference: Option<u64>,
        key: Option<IdempotencyKey>,
        state_key: Option<StateKey>,
        name: Option<EventName>,
    ) -> Result<(), SessionError> {
        if !self.limiters.publish(&self.grant) {
            metrics::counter!("roomcast_rate_limited_total", "what" => "publish").increment(1);
            let limits = &self.ctx.limits;
            let message =
                format!("more than {} publishes per second (burst {})", limits.publish_rate, limits.publish_burst);
            return Err(refuse(ErrorCode::RateLimited, message, reference));
        }
        // Slow mode counts an anonymous connection as a publisher of its own.
        let anonymous = format!("c{:x}-{}", process_nonce(), self.id);
        let publication = Publication {
            grant: &self.grant,
            anonymous: Some(&anonymous),
            room: &room,
            data,
            idempotency: key.as_ref(),
            key: state_key.as_ref(),
            name: name.as_ref(),
            skip: None,
            via: Via::WebSocket,
        };
        let appended =
            self.ctx.publisher.publish(publication, Some(self.limiters.rooms())).await.map_err(|e: Refused| {
                let retry = e.retry_after_ms();
                SessionError::Refused(FrameError::new(e.code(), e.to_string(), reference).retry_after(retry))
            })?;
        let repeated = matches!(appended, crate::publish::Published::Repeated(_));
        Ok(self.send(&ServerFrame::Ack { reference, id: appended.id(), repeated }).await?)
    }

    /// Waits for the next thing to do. Cancel-safe. One timer serves both
    /// deadlines (a catch-up retry, the credential's expiry), and none is
    /// armed without one: this future lives in every idle connection.
    pub async fn next(&mut self) -> Wakeup {
        let deadline = match (self.retry_at, self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let pending = match deadline {
            None => self.inbox.next().await,
            Some(at) => tokio::select! {
                pending = self.inbox.next() => pending,
                _ = tokio::time::sleep_until(at) => {
                    if self.expires_at.is_some_and(|e| e <= Instant::now()) {
                        return Wakeup::Expired;
                    }
                    Pending::Signal
                }
            },
        };
        match pending {
            Pending::Item(Item::Batch(batch)) => Wakeup::Batch(batch),
            Pending::Item(Item::Notice(notice)) => Wakeup::Notice(notice),
            Pending::Item(Item::Kick(reason)) => Wakeup::Kicked(reason),
            Pending::Signal => Wakeup::CatchUp,
            Pending::Heartbeat => Wakeup::Heartbeat,
        }
    }

    /// Reacts to what woke the session, the same way for every transport:
    /// writes the batch (and whatever else is queued), catches up, or says
    /// the credential ran out.
    pub async fn handle(&mut self, wakeup: Wakeup) -> Result<Flow, SinkError> {
        match wakeup {
            Wakeup::Batch(batch) => self.deliver(Item::Batch(batch)).await.map(|()| Flow::Continue),
            // Boxed: notices are rare next to batches, and a second inline
            // delivery would be a second slot in every connection's state.
            Wakeup::Notice(notice) => Box::pin(self.deliver(Item::Notice(notice))).await.map(|()| Flow::Continue),
            // Boxed: catching up is rare, and its state would otherwise sit
            // in every idle connection's future.
            Wakeup::CatchUp => Box::pin(self.catch_up()).await.map(|()| Flow::Continue),
            Wakeup::Expired => Ok(Flow::Expired),
            Wakeup::Kicked(reason) => Ok(Flow::Kicked(reason)),
            Wakeup::Heartbeat => {
                // Silent since the last tick: say something, so the client
                // knows the link is alive.
                if !self.spoke {
                    self.send(&HEARTBEAT).await?;
                }
                self.spoke = false;
                Ok(Flow::Continue)
            }
        }
    }

    /// Turns a refusal into an `error` frame to the client; a failure to
    /// write is handed back, to end the connection.
    pub async fn answer(&mut self, outcome: Result<(), SessionError>) -> Result<Answer, SessionError> {
        match outcome {
            Ok(()) => Ok(Answer::Done),
            Err(SessionError::Refused(e)) => {
                self.send(&ServerFrame::from(e)).await?;
                Ok(Answer::Refused)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `first` and whatever else is queued, then flushes once.
    pub async fn deliver(&mut self, first: Item) -> Result<(), SinkError> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(item) = next.take() {
            if let Item::Kick(reason) = item {
                // Not written: the connection ends at its next turn.
                self.inbox.outbox().kick(reason);
                break;
            }
            // One await for every kind of item: each await point of a
            // large future is a slot in every idle connection's state.
            if let Some(out) = self.plan(&item) {
                self.write_out(out).await?;
            }
            written += 1;
            // The rest waits for the next turn (the queue wakes it at once)
            // once the socket holds enough to write.
            if written < MAX_COALESCE && !self.sink.full() {
                next = self.inbox.try_recv();
            }
        }
        self.sink.flush().await
    }

    /// What to write for a queued item, if anything, moving the room's
    /// cursor past what is written.
    fn plan<'i>(&mut self, item: &'i Item) -> Option<Outgoing<'i>> {
        match item {
            Item::Batch(batch) => self.plan_batch(batch),
            Item::Notice(notice) => self.rooms.contains(&notice.room).then_some(Outgoing::Notice(notice)),
            Item::Kick(_) => None,
        }
    }

    fn plan_batch<'i>(&mut self, batch: &'i Batch) -> Option<Outgoing<'i>> {
        let state = self.rooms.get_mut(&batch.room)?;
        let last = batch.events.last()?.id;
        // One connection in DELAY_SAMPLE measures append-to-write delay:
        // representative, and no histogram update per delivery.
        if self.id % DELAY_SAMPLE == 0 {
            metrics::histogram!("roomcast_delivery_delay_seconds").record(crate::metrics::age_seconds(last));
        }
        // A possible loss is reported before anything that follows it.
        let lost = state.flags.lost.load(Ordering::Acquire);
        match accept(state.cursor, &batch.events) {
            Accept::Skip => None,
            Accept::All | Accept::From(_) if lost => {
                state.flags.lagged.store(true, Ordering::Release);
                self.retry_at = Some(Instant::now());
                None
            }
            Accept::All => {
                state.cursor = last;
                Some(Outgoing::Batch(batch))
            }
            Accept::From(i) => {
                state.cursor = last;
                Some(Outgoing::Events(&batch.room, &batch.events[i..]))
            }
            Accept::Discontinuous => {
                debug!(conn = self.id, room = %batch.room, "live batch does not follow the cursor; catching up");
                state.flags.lagged.store(true, Ordering::Release);
                self.retry_at = Some(Instant::now());
                None
            }
        }
    }

    /// Catches up every lagged room from the store, a page each: a room with
    /// more to read is woken again at once, so a long catch-up takes turns
    /// with the client's own frames and goes at the pace the client reads.
    pub async fn catch_up(&mut self) -> Result<(), SinkError> {
        self.retry_at = None;
        self.leave_banned().await?;
        let max_payload = self.ctx.limits.max_payload;
        let lagged: Vec<RoomName> = self
            .rooms
            .iter_mut()
            .filter_map(|(room, state)| {
                let lagged = state.flags.lagged.swap(false, Ordering::AcqRel);
                let reason =
                    if state.flags.lost.load(Ordering::Acquire) { CatchUp::StoreLoss } else { CatchUp::Lagged };
                if !(lagged || reason == CatchUp::StoreLoss) {
                    return None;
                }
                if !state.paging {
                    metrics::counter!("roomcast_catch_ups_total", "reason" => reason.label()).increment(1);
                    state.read_limit = page_limit(max_payload);
                }
                Some(room.clone())
            })
            .collect();
        for room in lagged {
            self.sync_or_retry(&room).await?;
        }
        Ok(())
    }

    /// Leaves the rooms the connection's subject was banned from, telling
    /// the client why.
    async fn leave_banned(&mut self) -> Result<(), SinkError> {
        let banned: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, state)| state.flags.banned.load(Ordering::Acquire))
            .map(|(room, _)| room.clone())
            .collect();
        for room in banned {
            self.rooms.remove(&room);
            self.ctx.hub.leave(&room, self.id).await;
            metrics::counter!("roomcast_bans_enforced_total").increment(1);
            let frame = ServerFrame::Unsubscribed { room, reason: Some("banned") };
            self.send(&frame).await?;
        }
        Ok(())
    }

    /// Reads the next page of `room`'s history after its cursor and sends
    /// it; if the store refuses, flags the room to be retried shortly.
    async fn sync_or_retry(&mut self, room: &RoomName) -> Result<(), SinkError> {
        // A possible loss is a gap after the cursor, which stays: what the
        // store hands out next is above it, and what it kept is not resent.
        let mut told = false;
        if let Some(after) =
            self.rooms.get(room).filter(|s| s.flags.lost.swap(false, Ordering::AcqRel)).map(|s| s.cursor)
        {
            self.write_gap(room, after, GapReason::StoreLoss).await?;
            told = true;
        }
        let Some((cursor, limit)) = self.rooms.get(room).map(|s| (s.cursor, s.read_limit)) else {
            return Ok(());
        };
        if self.rooms.get(room).is_some_and(|s| s.state_due) {
            self.send_state(room).await?;
        }
        match self.ctx.hub.history(room, Position::After(cursor), limit).await {
            Ok(page) => self.apply_page(room, page, told).await,
            Err(e) => {
                debug!(conn = self.id, room = %room, cause = %e, "catch-up deferred");
                if let Some(state) = self.rooms.get(room) {
                    state.flags.lagged.store(true, Ordering::Release);
                }
                self.retry_at = Some(Instant::now() + CATCH_UP_RETRY);
                if told {
                    self.sink.flush().await?;
                }
                Ok(())
            }
        }
    }

    /// Sends a page of history (with its gap, unless the client was just
    /// told of one) in frames bounded in bytes, advances the cursor, and
    /// wakes the session again for the next page when there is one.
    async fn apply_page(&mut self, room: &RoomName, page: Page, gap_told: bool) -> Result<(), SinkError> {
        let Some(state) = self.rooms.get_mut(room) else {
            return Ok(());
        };
        let before = state.cursor;
        match page.events.last() {
            Some(last) => state.cursor = last.id,
            // A gap with nothing after it: continue from the room's real
            // tail (below a token from the future: live delivery follows
            // the gap, and nothing kept at or below the tail is resent).
            // A reader from the oldest of a room with nothing kept stands
            // at the room's end, which its next event names.
            None if page.gap || before.is_zero() => state.cursor = page.tail,
            None => {}
        }
        if let Some(largest) = page.events.iter().map(|e| e.data.len()).max() {
            state.read_limit = page_limit(largest);
        }
        state.paging = page.more;
        if page.more {
            state.flags.lagged.store(true, Ordering::Release);
            self.retry_at = Some(Instant::now());
        }
        if page.gap && !gap_told {
            // Past the room's end (a token from elsewhere, or from before a
            // loss), or history no longer kept (trimmed, expired, rebuilt).
            let reason =
                if page.events.is_empty() && before > page.tail { GapReason::BeyondTail } else { GapReason::NotKept };
            self.write_gap(room, before, reason).await?;
        }
        for frame in frames(&page.events, FRAME_BUDGET) {
            if self.sink.full() {
                self.sink.flush().await?;
            }
            self.write_out(Outgoing::Events(room, frame)).await?;
        }
        self.sink.flush().await
    }

    /// Tells the client that events of `room` after `after` are gone, unless
    /// it was told just that already (nothing was delivered since).
    async fn write_gap(&mut self, room: &RoomName, after: EventId, reason: GapReason) -> Result<(), SinkError> {
        let Some(state) = self.rooms.get_mut(room) else {
            return Ok(());
        };
        if state.told == Some(after) {
            return Ok(());
        }
        state.told = Some(after);
        state.state_due = state.state;
        metrics::counter!("roomcast_gaps_total", "reason" => reason.label()).increment(1);
        self.write_out(Outgoing::Frame(&ServerFrame::Gap { room: room.clone(), after })).await?;
        // Values the client holds may be from before the loss: a state
        // subscriber gets the current ones right after the gap.
        self.send_state(room).await
    }

    /// Sends `room`'s current state if its subscriber is due one; when the
    /// store cannot say now, tries again with the next catch-up.
    async fn send_state(&mut self, room: &RoomName) -> Result<(), SinkError> {
        if !self.rooms.get(room).is_some_and(|s| s.state_due) {
            return Ok(());
        }
        match self.ctx.hub.state(room).await {
            Ok(state) => {
                if let Some(s) = self.rooms.get_mut(room) {
                    s.state_due = false;
                }
                self.write_out(Outgoing::State(room, &state)).await
            }
            Err(e) => {
                debug!(conn = self.id, room = %room, cause = %e, "state deferred");
                if let Some(s) = self.rooms.get(room) {
                    s.flags.lagged.store(true, Ordering::Release);
                }
                self.retry_at = Some(Instant::now() + CATCH_UP_RETRY);
                Ok(())
            }
        }
    }

    /// Leaves every room and hands back the sink (to close it).
    pub async fn close(mut self) -> S {
        self.ctx.hub.disconnect(self.id);
        for room in std::mem::take(&mut self.rooms).into_names() {
            self.ctx.hub.leave(&room, self.id).await;
        }
        self.sink
    }

    /// Who the connection's credential names (for logs).
    pub fn subject(&self) -> &str {
        self.grant.subject()
    }

    /// The connection's ID (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of rooms followed.
    pub fn subscriptions(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::store::AppendOptions;

    /// Moderation over a store of its own: these sessions' open grants are
    /// never banned or slowed down.
    fn moderation(hub: &Arc<Hub>) -> Arc<crate::moderation::Moderation> {
        let options = StoreOptions {
            history: 10,
            room_ttl: Duration::from_secs(60),
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 10,
        };
        Arc::new(crate::moderation::Moderation::new(Arc::new(MemoryStore::new(options)), hub.clone(), "n".into()))
    }
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use crate::store::feed::{Feed, FeedSink};
    use crate::store::memory::MemoryStore;
    use crate::store::StoreOptions;

    /// Records what the session writes, one line per item, and the JSON
    /// size of every frame and of what was written between flushes.
    #[derive(Default)]
    struct Recorder {
        lines: Vec<String>,
        /// (events in the frame, its encoded bytes), for every events frame.
        frames: Vec<(usize, usize)>,
        unflushed: usize,
        most_unflushed: usize,
    }

    /// What the WebSocket sink buffers before it says it is full.
    const RECORDER_BUFFER: usize = 64 * 1024;

    fn ids(events: &[Event]) -> String {
        events.iter().map(|e| e.id.to_string()).collect::<Vec<_>>().join(",")
    }

    impl Sink for Recorder {
        async fn write(&mut self, out: Outgoing<'_>) -> Result<(), SinkError> {
            let room = RoomName::parse("r").unwrap();
            let (line, bytes) = match out {
                Outgoing::Batch(batch) => {
                    let bytes = batch.wire(crate::protocol::Format::Json).len();
                    self.frames.push((batch.events.len(), bytes));
                    (format!("events {}", ids(&batch.events)), bytes)
                }
                Outgoing::Events(_, events) => {
                    let bytes = crate::protocol::encode_events(crate::protocol::Format::Json, &room, events).len();
                    self.frames.push((events.len(), bytes));
                    (format!("events {}", ids(events)), bytes)
                }
                Outgoing::Frame(frame) => {
                    let json = serde_json::to_string(frame).unwrap_or_default();
                    let n = json.len();
                    (json, n)
                }
                Outgoing::Notice(notice) => {
                    let json = serde_json::to_string(notice.frame()).unwrap_or_default();
                    let n = json.len();
                    (json, n)
                }
                Outgoing::State(room, state) => {
                    let wire = crate::protocol::encode_state(
                        crate::protocol::Format::Json,
                        room,
                        state.position,
                        state.values.values(),
                    );
                    let crate::protocol::Wire::Text(text) = wire else { unreachable!("JSON is text") };
                    (text.as_str().to_owned(), text.len())
                }
            };
            self.lines.push(line);
            self.unflushed += bytes;
            self.most_unflushed = self.most_unflushed.max(self.unflushed);
            Ok(())
        }

        async fn flush(&mut self) -> Result<(), SinkError> {
            self.unflushed = 0;
            Ok(())
        }

        fn full(&self) -> bool {
            self.unflushed >= RECORDER_BUFFER
        }
    }

    fn f_limits(max_payload: usize) -> SessionLimits {
        SessionLimits {
            outbox: OutboxLimits { frames: 16, bytes: 1 << 20 },
            max_subscriptions: 4,
            max_payload,
            publish_rate: 10,
            publish_burst: 10,
        }
    }

    struct Fixture {
        store: Arc<MemoryStore>,
        hub: Arc<Hub>,
        room: RoomName,
    }

    fn fixture() -> Fixture {
        let options = StoreOptions {
            history: 100_000,
            room_ttl: Duration::from_secs(60),
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 1000,
        };
        let store = Arc::new(MemoryStore::new(options));
        let hub = Hub::new(Feed::unattended(store.clone()));
        Fixture { store, hub, room: RoomName::parse("r").unwrap() }
    }

    impl Fixture {
        fn session(&self) -> Session<Recorder> {
            self.session_with(1024)
        }

        fn session_with(&self, max_payload: usize) -> Session<Recorder> {
            let limits = f_limits(max_payload);
            let ctx = Context {
                hub: self.hub.clone(),
                log: self.store.clone(),
                live: Arc::default(),
                publisher: Publisher::new(self.store.clone(), max_payload, 1000, moderation(&self.hub), None),
                limits,
            };
            Session::new(Arc::new(ctx), Recorder::default(), Grant::Open)
        }

        /// Appends events of the given payload sizes (JSON strings).
        async fn append_sized(&self, sizes: &[usize]) -> Vec<EventId> {
            let mut out = Vec::new();
            for size in sizes {
                let data = Bytes::from(format!("\"{}\"", "x".repeat(size.saturating_sub(2))));
                out.push(self.store.append(&self.room, data, AppendOptions::default()).await.unwrap().id().unwrap());
            }
            out
        }

        async fn append(&self, n: usize) -> Vec<EventId> {
            let mut out = Vec::new();
            for i in 0..n {
                out.push(
                    self.store
                        .append(&self.room, Bytes::from(i.to_string()), AppendOptions::default())
                        .await
                        .unwrap()
                        .id()
                        .unwrap(),
                );
            }
            out
        }

        async fn read_after(&self, after: EventId) -> Vec<Event> {
            self.store.read(&self.room, Position::After(after), 100).await.unwrap().events
        }
    }

    /// Handles wake-ups until nothing more is pending right away.
    async fn settle(session: &mut Session<Recorder>) {
        while let Ok(wakeup) = tokio::time::timeout(Duration::from_millis(50), session.next()).await {
            assert_eq!(session.handle(wakeup).await.unwrap(), Flow::Continue);
        }
    }

    #[tokio::test]
    async fn a_resume_sends_exactly_what_followed_the_token() {
        let f = fixture();
        let ids = f.append(5).await;
        let mut session = f.session();
        session
            .subscribe(
                f.room.clone(),
                SubscribeOptions { last_event_id: Some(ids[1]), audience: false, ..Default::default() },
            )
            .await
            .unwrap();
        let out = session.close().await.lines;
        let expected = format!("events {},{},{}", ids[2], ids[3], ids[4]);
        assert_eq!(
            out,
            vec![
                format!(r#"{{"type":"subscribed","room":"r","resumed":true,"last_event_id":"{}"}}"#, ids[1]),
                expected
            ]
        );
    }

    #[tokio::test]
    async fn a_batch_that_skips_events_sends_the_session_to_the_store() {
        let f = fixture();
        let ids = f.append(2).await;
        let mut session = f.session();
        session
            .subscribe(f.room.clone(), SubscribeOptions { last_event_id: None, audience: false, ..Default::default() })
            .await
            .unwrap();
        // Three more events, of which the feed hands over only the last:
        // the session must not jump its cursor over the other two.
        let more = f.append(3).await;
        let last = f.read_after(more[1]).await;
        f.hub.deliver(&f.room, last);
        settle(&mut session).await;
        let out = session.close().await.lines;
        assert_eq!(out[1..], [format!("events {},{},{}", more[0], more[1], more[2])], "{out:?}");
        assert!(out[0].contains(&format!(r#""last_event_id":"{}""#, ids[1])), "joined after the last event: {out:?}");
        assert!(!out[1..].iter().any(|l| l.contains(&ids[1].to_string())), "nothing before the live cursor: {out:?}");
    }

    #[tokio::test]
    async fn a_store_loss_is_a_gap_after_the_cursor_and_nothing_is_resent() {
        let f = fixture();
        let ids = f.append(3).await;
        let mut session = f.session();
        session
            .subscribe(
                f.room.clone(),
                SubscribeOptions { last_event_id: Some(EventId::ZERO), audience: false, ..Default::default() },
            )
            .await
            .unwrap();
        f.hub.lost(&f.room);
        settle(&mut session).await;
        let next = f.append(1).await;
        f.hub.deliver(&f.room, f.read_after(ids[2]).await);
        settle(&mut session).await;
        let out = session.close().await.lines;
        let gap = format!(r#"{{"type":"gap","room":"r","after":"{}"}}"#, ids[2]);
        assert_eq!(
            out,
            vec![
                format!(r#"{{"type":"subscribed","room":"r","resumed":true,"last_event_id":"{}"}}"#, EventId::ZERO),
                format!("events {},{},{}", ids[0], ids[1], ids[2]),
                gap,
                format!("events {}", next[0]),
            ]
        );
    }

    /// Every event delivered, in order, from the recorded lines.
    fn delivered(lines: &[String]) -> Vec<EventId> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("events "))
            .flat_map(|ids| ids.split(',').map(|id| EventId::parse(id).unwrap()))
            .collect()
    }

    /// A catch-up of events of any size: each once, in order, in frames
    /// bounded in bytes, and never more written between flushes than the
    /// socket's buffer plus one frame.
    fn catch_up_holds(sizes: &[usize], max_payload: usize) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let f = fixture();
            let ids = f.append_sized(sizes).await;
            let mut session = f.session_with(max_payload);
            session
                .subscribe(
                    f.room.clone(),
                    SubscribeOptions { last_event_id: Some(EventId::ZERO), audience: false, ..Default::default() },
                )
                .await
                .unwrap();
            settle(&mut session).await;
            let recorder = session.close().await;
            assert_eq!(delivered(&recorder.lines), ids, "every event once, in order");
            let bound = FRAME_BUDGET + max_payload + 256;
            for (events, bytes) in &recorder.frames {
                assert!(*events == 1 || *bytes <= bound, "a frame of {events} events is {bytes} bytes");
            }
            assert!(recorder.most_unflushed <= RECORDER_BUFFER + bound, "{} bytes unflushed", recorder.most_unflushed);
        });
    }

    #[test]
    fn a_backlog_of_large_events_is_paced_in_bounded_frames() {
        // 500 events of 8 KB: one page of them used to exceed the write bound.
        catch_up_holds(&[8 << 10; 500], 64 << 10);
        catch_up_holds(&[60 << 10; 40], 64 << 10);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn catch_up_delivers_every_size_once_in_bounded_frames(
            sizes in proptest::collection::vec(2usize..=65_536, 1..300),
        ) {
            catch_up_holds(&sizes, 65_536);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn large_live_batches_are_cut_into_bounded_frames() {
        let f = fixture();
        let mut session = f.session_with(64 << 10);
        session
            .subscribe(f.room.clone(), SubscribeOptions { last_event_id: None, audience: false, ..Default::default() })
            .await
            .unwrap();
        let ids = f.append_sized(&[20 << 10; 12]).await;
        f.hub.deliver(&f.room, f.read_after(EventId::ZERO).await);
        settle(&mut session).await;
        let recorder = session.close().await;
        assert_eq!(delivered(&recorder.lines), ids);
        assert!(recorder.frames.len() >= 4, "12 events of 20 KB in {} frames", recorder.frames.len());
        assert!(recorder.frames.iter().all(|(n, bytes)| *n == 1 || *bytes <= FRAME_BUDGET + 256));
    }

    /// Heartbeats on a paused clock: the first tick after connecting never
    /// beats, a silent connection beats at every later tick, and one that
    /// spoke since the last tick does not.
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_beats_at_each_tick_after_the_first() {
        let f = fixture();
        let mut session = f.session();
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        f.hub.spawn_heartbeat(Duration::from_secs(15), shutdown.clone(), &tracker);
        let beats = |s: &Session<Recorder>| s.sink.lines.iter().filter(|l| l.contains("heartbeat")).count();
        tokio::time::sleep(Duration::from_secs(16)).await;
        settle(&mut session).await;
        assert_eq!(beats(&session), 0, "the first tick after connecting is quiet");
        tokio::time::sleep(Duration::from_secs(15)).await;
        settle(&mut session).await;
        assert_eq!(beats(&session), 1);
        session.send(&ServerFrame::Unsubscribed { room: f.room.clone(), reason: None }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        settle(&mut session).await;
        assert_eq!(beats(&session), 1, "a connection that spoke since the last tick does not beat");
        tokio::time::sleep(Duration::from_secs(15)).await;
        settle(&mut session).await;
        assert_eq!(beats(&session), 2);
        shutdown.cancel();
    }

    /// A token's expiry ends the session at its time, on a paused clock.
    #[tokio::test(start_paused = true)]
    async fn an_expiring_token_ends_the_session_at_its_expiry() {
        let f = fixture();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = crate::auth::Claims {
            sub: None,
            exp: now + 60,
            rooms: vec!["*".into()],
            publish: vec![],
            moderate: vec![],
            info: None,
        };
        let ctx = f.session().ctx.clone();
        let mut session = Session::new(ctx, Recorder::default(), Grant::Token(claims));
        let started = Instant::now();
        loop {
            let wakeup = session.next().await;
            if matches!(session.handle(wakeup).await.unwrap(), Flow::Expired) {
                break;
            }
        }
        let after = started.elapsed();
        assert!(after >= Duration::from_secs(58) && after <= Duration::from_secs(61), "expired after {after:?}");
    }

    /// An event log whose reads fail while `failing` is set.
    struct Flaky {
        inner: MemoryStore,
        failing: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StoreError> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("down for the test".into()));
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl EventLog for Flaky {
        async fn append(
            &self,
            room: &RoomName,
            data: Bytes,
            options: AppendOptions<'_>,
        ) -> Result<crate::store::Appended, StoreError> {
            self.inner.append(room, data, options).await
        }
        async fn moderate(
            &self,
            room: &RoomName,
            target: EventId,
            kind: crate::protocol::OpKind,
            data: Bytes,
        ) -> Result<crate::store::Appended, StoreError> {
            self.inner.moderate(room, target, kind, data).await
        }
        async fn recorded(
            &self,
            room: &RoomName,
            key: &crate::protocol::IdempotencyKey,
        ) -> Result<Option<EventId>, StoreError> {
            self.inner.recorded(room, key).await
        }
        async fn read_back(
            &self,
            room: &RoomName,
            before: Option<EventId>,
            limit: usize,
        ) -> Result<crate::store::BackPage, StoreError> {
            self.check()?;
            self.inner.read_back(room, before, limit).await
        }
        async fn state(&self, room: &RoomName) -> Result<crate::store::Snapshot, StoreError> {
            self.check()?;
            self.inner.state(room).await
        }
        async fn read(&self, room: &RoomName, from: Position, limit: usize) -> Result<Page, StoreError> {
            self.check()?;
            self.inner.read(room, from, limit).await
        }
        async fn tail(&self, room: &RoomName) -> Result<EventId, StoreError> {
            self.inner.tail(room).await
        }
        async fn anchor(&self, room: &RoomName) -> Result<EventId, StoreError> {
            self.inner.anchor(room).await
        }
        async fn read_many(
            &self,
            positions: &[(RoomName, EventId)],
            limit: usize,
        ) -> Result<Vec<(RoomName, Vec<Event>)>, StoreError> {
            self.inner.read_many(positions, limit).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn change_source(&self, node: &str) -> Result<Box<dyn crate::store::feed::ChangeSource>, StoreError> {
            self.inner.change_source(node)
        }
    }

    /// A catch-up the store refuses is retried a second later, not sooner,
    /// and then delivers what was missed.
    #[tokio::test(start_paused = true)]
    async fn a_refused_catch_up_is_retried_after_a_second() {
        let options = StoreOptions {
            history: 1000,
            room_ttl: Duration::from_secs(60),
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 1000,
        };
        let flaky = Arc::new(Flaky { inner: MemoryStore::new(options), failing: Default::default() });
        let hub = Hub::new(Feed::unattended(flaky.clone()));
        let room = RoomName::parse("r").unwrap();
        let limits = f_limits(1024);
        let ctx = Context {
            hub: hub.clone(),
            log: flaky.clone(),
            live: Arc::default(),
            publisher: Publisher::new(flaky.clone(), 1024, 1000, moderation(&hub), None),
            limits,
        };
        let mut session = Session::new(Arc::new(ctx), Recorder::default(), Grant::Open);
        session
            .subscribe(room.clone(), SubscribeOptions { last_event_id: None, audience: false, ..Default::default() })
            .await
            .unwrap();
        let ids: Vec<EventId> = {
            let mut ids = Vec::new();
            for i in 0..3 {
                ids.push(
                    flaky
                        .append(&room, Bytes::from(i.to_string()), AppendOptions::default())
                        .await
                        .unwrap()
                        .id()
                        .unwrap(),
                );
            }
            ids
        };
        // Only the last event is handed over: the session must catch up.
        flaky.failing.store(true, Ordering::Relaxed);
        let last = flaky.inner.read(&room, Position::After(ids[1]), 10).await.unwrap().events;
        hub.deliver(&room, last);
        // The batch sends the session to the store at once, which refuses.
        for _ in 0..2 {
            let wakeup = session.next().await;
            session.handle(wakeup).await.unwrap();
        }
        assert_eq!(delivered(&session.sink.lines), Vec::<EventId>::new(), "nothing while the store refuses");
        let refused = Instant::now();
        flaky.failing.store(false, Ordering::Relaxed);
        let wakeup = session.next().await;
        assert!(refused.elapsed() >= CATCH_UP_RETRY, "retried after {:?}", refused.elapsed());
        session.handle(wakeup).await.unwrap();
        assert_eq!(delivered(&session.sink.lines), ids);
    }
}
