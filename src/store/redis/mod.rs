//! The Redis Streams store, through fred.
//!
//! Each room is a stream appended by a Lua script that writes the entry's
//! predecessor ID beside it (exact gaps), trims with `MAXLEN ~`, refreshes
//! the room's idle expiry and signals the room's bucket (see [`keys`]).
//! Commands run on a client with a command timeout and a bounded queue, so
//! a publish during an outage fails fast instead of waiting. The feed learns
//! of changes from a blocking `XREAD` on its own connection on one Redis
//! ([`changes`]), and from doorbells on a cluster ([`doorbell`]); every
//! command that names several keys names keys of one slot on a cluster.

mod changes;
mod doorbell;
mod fault;
pub mod keys;
mod layout;
mod live_log;
mod loss;
mod mailbox;
mod presence;
mod reply;
mod rules;
mod scripts;
mod topology;
mod versions;

pub use self::layout::Layout;
pub use self::topology::Topology;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use tracing::{debug, info, warn};

use self::fault::{retrying, unavailable};
use self::keys::Keys;
use super::feed::ChangeSource;
use super::{
    payload_fingerprint, AppendOptions, Appended, BackPage, EventLog, Page, Position, Snapshot, StoreError,
    StoreOptions, IDEMPOTENCY_WINDOW,
};
use crate::config::RedisSettings;
use crate::protocol::{Event, EventId, IdempotencyKey, OpKind, RoomName};

/// Entries kept per bucket signal stream: at least a mailbox read's page,
/// so a reader that gets less than a full page missed nothing.
const SIGNALS_KEPT: u64 = mailbox::SIGNALS_PER_READ;
/// How long `connect` waits for the first connection before carrying on.
const FIRST_CONNECT: Duration = Duration::from_secs(2);
/// Reads of an empty range that an append raced before a page says so.
const RACING_READS: usize = 3;
/// Shortest time an append's replay record is kept. fred resends a call only
/// before its command timeout fires (a timed-out call is dropped from its
/// queue), so a few timeouts' worth is ample; each record costs Redis about
/// 100 bytes for that long.
const MIN_REPLAY_WINDOW: Duration = Duration::from_secs(10);

/// Where a room ends, and what says so.
enum End {
    /// Its stream's last entry.
    Stream(EventId),
    /// Its floor (`0-0` without one): the stream is gone.
    Floor(EventId),
}

/// Connection settings for [`RedisStore::connect`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Which Redis: one server, a Cluster, or a master behind Sentinel.
    pub topology: Topology,
    /// Key prefix (namespaces a deployment).
    pub prefix: String,
    /// Timeout of ordinary commands: a publish fails after this, never hangs.
    pub command_timeout: Duration,
}

impl RedisOptions {
    /// The connection settings, when the node is given a Redis at all.
    pub fn from_settings(settings: &RedisSettings) -> Option<Self> {
        let topology = if !settings.cluster.is_empty() {
            Topology::Cluster(settings.cluster.clone())
        } else if !settings.sentinel.is_empty() {
            Topology::Sentinel { sentinels: settings.sentinel.clone(), master: settings.sentinel_master.clone() }
        } else {
            Topology::Single(settings.url.clone()?)
        };
        Some(RedisOptions { topology, prefix: settings.key_prefix.clone(), command_timeout: settings.timeout })
    }
}

/// The Redis store. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    append: Script,
    anchor: Script,
    epoch: Script,
    state: Script,
    ban: Script,
    versions: Script,
    presence: Arc<presence::PresenceScripts>,
    /// Single server or Cluster, decided at connect.
    layout: Layout,
    /// Bumped by every (re)connection of this store's clients.
    generation: Arc<AtomicU64>,
    keys: Keys,
    options: StoreOptions,
    redis: RedisOptions,
}

pub(super) use crate::clock::now_ms;

/// A change source's own client (a blocking reader or a subscriber),
/// connected on the source's first `prepare`, so that the node builds its
/// feed before its store first answers; fred reconnects it from then on.
pub(super) struct OwnClient {
    client: Client,
    connected: bool,
}

impl OwnClient {
    fn new(client: Client) -> Self {
        OwnClient { client, connected: false }
    }

    /// The client, once its first connection is up.
    pub(super) async fn ready(&mut self) -> Result<&Client, StoreError> {
        if !self.connected {
            if self.client.state() == fred::types::ClientState::Disconnected {
                drop(self.client.connect());
            }
            self.client.wait_for_connect().await.map_err(unavailable)?;
            self.connected = true;
        }
        Ok(&self.client)
    }

    /// The client, connected or not (its commands wait or fail as fred's do).
    pub(super) fn client(&self) -> &Client {
        &self.client
    }
}

/// Bumps `generation` on every connection the client makes.
fn count_connections(client: &Client, generation: &Arc<AtomicU64>) {
    let generation = generation.clone();
    client.on_reconnect(move |_| {
        generation.fetch_add(1, Ordering::AcqRel);
        async { Ok(()) }
    });
}

/// Warns loudly when Redis may evict keys: an evicted room stream is a gap
/// for its subscribers (never a silent hole or a replay, but lost history),
/// and room keys carry a TTL, so `volatile-*` policies evict them too.
async fn check_eviction_policy(client: &Client) {
    let policy: Result<HashMap<String, String>, Error> = client.config_get("maxmemory-policy").await;
    match policy {
        Ok(map) => {
            let policy = map.get("maxmemory-policy").map(String::as_str).unwrap_or("unknown");
            let evicts = policy.starts_with("allkeys-") || policy.starts_with("volatile-");
            metrics::gauge!("roomcast_store_may_evict").set(if evicts { 1.0 } else { 0.0 });
            if evicts {
                warn!(policy, "Redis maxmemory-policy can EVICT keys: when memory runs out, rooms lose their history and subscribers get gaps; use maxmemory-policy noeviction (publishes then fail with store_full instead)");
            } else {
                debug!(policy, "Redis maxmemory-policy keeps keys");
            }
        }
        Err(e) => {
            info!(cause = %e, "could not read Redis maxmemory-policy (CONFIG may be disabled); make sure it is noeviction")
        }
    }
}

impl RedisStore {
    /// Starts connecting, and keeps trying with backoff until Redis answers:
    /// a node started before its Redis serves `/healthz` and answers
    /// `store_unavailable` until then. Fails only on a malformed URL.
    /// Scripts load on first use (and again after a Redis restart).
    pub async fn connect(redis: RedisOptions, options: StoreOptions) -> Result<Self, StoreError> {
        let client = redis.topology.client(redis.command_timeout)?;
        let generation = Arc::new(AtomicU64::new(0));
        count_connections(&client, &generation);
        // Checked on every (re)connection: the server may have changed.
        let checker = client.clone();
        client.on_reconnect(move |_| {
            let checker = checker.clone();
            tokio::spawn(async move { check_eviction_policy(&checker).await });
            async { Ok(()) }
        });
        drop(client.connect());
        // Usually Redis is there: give the first connection (on a cluster,
        // the slot map) a moment, so the node is ready from its first
        // request. If it is not there, the node serves, not ready, meanwhile.
        if tokio::time::timeout(FIRST_CONNECT, client.wait_for_connect()).await.is_err() {
            warn!(
                waited_ms = FIRST_CONNECT.as_millis() as u64,
                "Redis does not answer yet; connecting in the background"
            );
        }
        let append = Script::from_lua(scripts::APPEND_LUA);
        let anchor = Script::from_lua(scripts::ANCHOR_LUA);
        let epoch = Script::from_lua(scripts::EPOCH_LUA);
        let state = Script::from_lua(scripts::STATE_LUA);
        let ban = Script::from_lua(scripts::BAN_LUA);
        let versions = Script::from_lua(scripts::VERSIONS_LUA);
        let layout = Layout::of(&redis.topology);
        let keys = Keys::new(&redis.prefix);
        let presence = presence::PresenceScripts::new();
        Ok(RedisStore {
            client,
            append,
            anchor,
            epoch,
            state,
            ban,
            versions,
            presence,
            layout,
            generation,
            keys,
            options,
            redis,
        })
    }

    /// Runs the append script, with the publish's idempotency key if it has
    /// one, and a fresh nonce either way (see [`APPEND_LUA`]).
    async fn run_append(
        &self,
        room: &RoomName,
        options: AppendOptions<'_>,
        data: Bytes,
        op: Option<(OpKind, EventId)>,
    ) -> Result<Appended, StoreError> {
        let mailbox = self.layout.mailbox_key(&self.keys, self.layout.mailbox(room));
        let nonce = format!("{:016x}", rand::random::<u64>());
        let (record, record_ttl, print) = match options.idempotency {
            Some(k) => (self.keys.idempotency(room, k.as_str()), IDEMPOTENCY_WINDOW, payload_fingerprint(&data)),
            None => {
                (self.keys.replay(room, &nonce), MIN_REPLAY_WINDOW.max(self.redis.command_timeout * 3), String::new())
            }
        };
        let slow = options.slow.filter(|s| s.interval_ms > 0);
        let keys = vec![
            self.keys.room(room),
            mailbox,
            self.keys.floor(room),
            record,
            self.keys.state(room),
            self.keys.slow(room, slow.map_or("", |s| s.publisher)),
            self.keys.versions(room),
        ];
        let ttl_ms = self.options.room_ttl.as_millis() as i64;
        let args: Vec<Value> = vec![
            Value::from(self.options.history as i64),
            Value::Bytes(data),
            Value::from(ttl_ms),
            Value::from(room.as_str()),
            Value::from(SIGNALS_KEPT as i64),
            Value::from(self.floor_ttl_ms()),
            Value::from(record_ttl.as_millis() as i64),
            Value::from(self.layout.doorbell(&self.keys, room).unwrap_or_default()),
            Value::from(nonce),
            Value::from(print),
            Value::from(options.key.map(|k| k.as_str()).unwrap_or_default()),
            Value::from(self.options.max_state_keys as i64),
            Value::from(slow.map_or(0, |s| s.interval_ms) as i64),
            Value::from(op.map_or("", |(kind, _)| kind.as_str())),
            Value::from(op.map(|(_, target)| target.to_string()).unwrap_or_default()),
            Value::from(options.name.map(|n| n.as_str()).unwrap_or_default()),
            Value::from(options.skip.unwrap_or_default()),
        ];
        let reply: Value =
            retrying(|| self.append.evalsha_with_reload(&self.client, keys.clone(), args.clone())).await?;
        let Value::Array(parts) = reply else {
            return Err(StoreError::Protocol("append reply is not an array".into()));
        };
        match parts.get(1).and_then(|v| v.as_i64()) {
            Some(3) => return Ok(Appended::TooManyKeys),
            Some(5) => return Ok(Appended::NotFound),
            Some(4) => {
                let left = parts.get(2).and_then(|v| v.as_i64()).unwrap_or(1).max(1) as u64;
                return Ok(Appended::SlowMode { retry_after_ms: left });
            }
            _ => {}
        }
        let id = reply::event_id(parts.first().unwrap_or(&Value::Null))?;
        match parts.get(1).and_then(|v| v.as_i64()) {
            Some(1) => Ok(Appended::Stored(id)),
            Some(0) => Ok(Appended::Repeated(id)),
            Some(2) => Ok(Appended::Conflict(id)),
            _ => Err(StoreError::Protocol("append reply has no outcome".into())),
        }
    }

    /// How long a room's floor is kept: it matters exactly when the stream
    /// vanished early, and costs one small key per room, so it outlives the
    /// room's idle expiry.
    fn floor_ttl_ms(&self) -> i64 {
        (self.options.room_ttl.as_millis() as i64).saturating_mul(2)
    }

    /// The room's end: its stream's last entry, else its floor, else `0-0`.
    async fn end_of(&self, room: &RoomName) -> Result<End, StoreError> {
        let pipeline = self.client.pipeline();
        let _: () = pipeline.xrevrange(self.keys.room(room), "+", "-", Some(1)).await.map_err(unavailable)?;
        let _: () = pipeline.get(self.keys.floor(room)).await.map_err(unavailable)?;
        let (last, floor): (Value, Option<String>) = pipeline.all().await.map_err(unavailable)?;
        let floor = floor
            .as_deref()
            .and_then(|f| f.split(' ').next())
            .and_then(|id| EventId::parse(id).ok())
            .unwrap_or_default();
        // The floor is above the last entry when the newest events were deleted.
        if let Some(last) = reply::entries(last)?.last() {
            return Ok(End::Stream(last.id.max(floor)));
        }
        Ok(End::Floor(floor))
    }

    /// Entries read from the stream, and whether moderators changed
    /// anything in the room (its versions hash exists): one round trip.
    async fn range(
        &self,
        room: &RoomName,
        start: &str,
        end: &str,
        count: u64,
        reverse: bool,
    ) -> Result<(Vec<Event>, bool), StoreError> {
        let pipeline = self.client.pipeline();
        let key = self.keys.room(room);
        if reverse {
            let _: () = pipeline.xrevrange(&key, start, end, Some(count)).await.map_err(unavailable)?;
        } else {
            let _: () = pipeline.xrange(&key, start, end, Some(count)).await.map_err(unavailable)?;
        }
        let _: () = pipeline.exists(self.keys.versions(room)).await.map_err(unavailable)?;
        let (entries, moderated): (Value, i64) = pipeline.all().await.map_err(unavailable)?;
        Ok((reply::entries(entries)?, moderated > 0))
    }

    /// `entries` (oldest first) as a read shows them, moderators' changes
    /// applied (see [`versions::apply`]): nothing shown at or below
    /// `bound`, and deleted events above the last entry only with `top`.
    async fn moderated(
        &self,
        room: &RoomName,
        entries: Vec<Event>,
        bound: EventId,
        top: bool,
    ) -> Result<Vec<Event>, StoreError> {
        let keys = vec![self.keys.versions(room), self.keys.floor(room)];
        let mut args: Vec<Value> = vec![Value::from(if bound.is_zero() { String::new() } else { bound.to_string() })];
        for e in &entries {
            args.push(Value::from(e.id.to_string()));
            args.push(Value::from(e.prev.to_string()));
        }
        let value: Value =
            timed("read", retrying(|| self.versions.evalsha_with_reload(&self.client, keys.clone(), args.clone())))
                .await?;
        let Value::Array(parts) = value else {
            return Err(StoreError::Protocol("versions reply is not an array".into()));
        };
        let mut parts = parts.into_iter();
        let floor =
            parts.next().and_then(|v| v.as_bytes().and_then(|b| std::str::from_utf8(b).ok().map(str::to_owned)));
        let floor = floor.and_then(|f| EventId::parse(&f).ok());
        let mut found = HashMap::new();
        while let (Some(id), Some(version)) = (parts.next(), parts.next()) {
            let id = reply::event_id(&id)?;
            let raw = match version {
                Value::Bytes(b) => b,
                Value::String(s) => Bytes::copy_from_slice(s.as_bytes()),
                _ => continue,
            };
            if let Some(version) = versions::Version::parse(&raw) {
                found.insert(id, version);
            }
        }
        Ok(versions::apply(entries, &found, bound, floor.filter(|_| top)))
    }

    /// One page of a room's history, with exact gap detection.
    ///
    /// The range and, when it comes back empty, the room's end are two
    /// reads: an append between them makes the stream end above a position
    /// with nothing after it, which only a lost history can do when the
    /// reads see the same moment. So that answer is read again; a room that
    /// keeps racing gets "nothing new yet, no gap", which holds (the events
    /// after the position are kept) and the caller reads again.
    async fn read_page(&self, room: &RoomName, from: Position, limit: usize) -> Result<Page, StoreError> {
        let start = match from {
            Position::Oldest => "-".to_owned(),
            Position::After(x) => format!("({x}"),
        };
        for attempt in 1..=RACING_READS {
            // Nothing comes after the largest ID (and Redis refuses it as an
            // exclusive start): a client holding it is past the room's end.
            let events = if from == Position::After(EventId::MAX) {
                Vec::new()
            } else {
                let (entries, moderated) = self.range(room, &start, "+", limit as u64, false).await?;
                if moderated {
                    // Deleted events back in place (not below the position,
                    // nor below the oldest kept entry), and those after the
                    // last entry when the read reached the end.
                    let bound = match from {
                        Position::After(x) => x,
                        Position::Oldest => entries.first().map_or(EventId::ZERO, |e| e.prev),
                    };
                    let reached_end = entries.len() < limit;
                    self.moderated(room, entries, bound, reached_end).await?
                } else {
                    entries
                }
            };
            let tail = match events.last() {
                Some(last) => last.id,
                None => match (self.end_of(room).await?, from) {
                    (End::Stream(last), Position::After(x)) if last > x => continue,
                    // The stream's first entry and the floor it moved are
                    // written by one script, but read by two commands: an
                    // append between them shows a floor past an empty
                    // range. Read again; a floor still past it is a loss.
                    (End::Floor(end), Position::After(x)) if end > x && attempt < RACING_READS => continue,
                    (End::Stream(end) | End::Floor(end), _) => end,
                },
            };
            return Ok(Page::new(from, events, limit, tail));
        }
        // Only a read after a position races (see above): it stands there.
        let at = match from {
            Position::After(x) => x,
            Position::Oldest => EventId::ZERO,
        };
        Ok(Page::new(from, Vec::new(), limit, at))
    }

    /// Kept events before `before` (the newest for `None`), newest first:
    /// one `XREVRANGE` from the position itself, whose entry (when it is
    /// one) names the predecessor the page must end at.
    async fn read_before(
        &self,
        room: &RoomName,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<BackPage, StoreError> {
        let start = before.map_or_else(|| "+".to_owned(), |x| x.to_string());
        let count = limit as u64 + if before.is_some() { 2 } else { 1 };
        let (mut older, moderated) = self.range(room, &start, "-", count, true).await?;
        let above = match (before, older.first()) {
            (Some(x), Some(first)) if first.id == x => Some(older.remove(0).prev),
            _ => None,
        };
        older.truncate(limit + 1);
        if moderated && !older.is_empty() {
            // Oldest first, deleted events back in place: below the oldest
            // entry is the next page's.
            older.reverse();
            let bound = older.first().map_or(EventId::ZERO, |e| e.prev);
            // The event read at `before` leads the walk down to the newest
            // entry; it is not part of the page.
            if let (Some(id), Some(prev)) = (before, above) {
                older.push(Event { id, prev, ..Event::default() });
            }
            let mut shown = self.moderated(room, older, bound, before.is_none()).await?;
            if let Some(before) = before {
                shown.retain(|e| e.id < before);
            }
            shown.reverse();
            return Ok(BackPage::new(above, shown, limit));
        }
        Ok(BackPage::new(above, older, limit))
    }

    /// Events after each position, for the live feed: one `XREAD` per
    /// group the layout allows, all at once.
    async fn read_rooms(
        &self,
        positions: &[(RoomName, EventId)],
        limit: usize,
    ) -> Result<Vec<(RoomName, Vec<Event>)>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.layout.reads(positions);
        let mut out = Vec::new();
        for read in futures::future::join_all(groups.iter().map(|group| self.read_slot(group, limit))).await {
            out.extend(read?);
        }
        Ok(out)
    }

    /// One XREAD over the rooms given (of one slot, on a cluster).
    async fn read_slot(
        &self,
        positions: &[(RoomName, EventId)],
        limit: usize,
    ) -> Result<Vec<(RoomName, Vec<Event>)>, StoreError> {
        let keys: Vec<String> = positions.iter().map(|(room, _)| self.keys.room(room)).collect();
        let ids: Vec<String> = positions.iter().map(|(_, id)| id.to_string()).collect();
        let value: Value =
            retrying(|| self.client.xread::<Value, _, _>(Some(limit as u64), None, keys.clone(), ids.clone())).await?;
        let mut out = Vec::new();
        for (key, items) in reply::xread_streams(value)? {
            let Some(index) = keys.iter().position(|k| k.as_bytes() == key.as_ref()) else {
                continue;
            };
            let events = reply::events_of(items)?;
            if !events.is_empty() {
                out.push((positions[index].0.clone(), events));
            }
        }
        Ok(out)
    }
}

/// Runs a store command, recording its latency by operation.
pub(super) async fn timed<T>(
    op: &'static str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = tokio::time::Instant::now();
    let outcome = f.await;
    metrics::histogram!("roomcast_store_command_seconds", "op" => op).record(started.elapsed().as_secs_f64());
    outcome
}

#[async_trait]
impl EventLog for RedisStore {
    async fn append(&self, room: &RoomName, data: Bytes, options: AppendOptions<'_>) -> Result<Appended, StoreError> {
        timed("append", self.run_append(room, options, data, None)).await
    }

    async fn moderate(
        &self,
        room: &RoomName,
        target: EventId,
        kind: OpKind,
        data: Bytes,
    ) -> Result<Appended, StoreError> {
        timed("append", self.run_append(room, AppendOptions::default(), data, Some((kind, target)))).await
    }

    async fn recorded(&self, room: &RoomName, key: &IdempotencyKey) -> Result<Option<EventId>, StoreError> {
        let record: Option<String> = timed("read", async {
            self.client.get(self.keys.idempotency(room, key.as_str())).await.map_err(unavailable)
        })
        .await?;
        Ok(record.as_deref().and_then(|r| r.split(' ').next()).and_then(|id| EventId::parse(id).ok()))
    }

    async fn read_back(&self, room: &RoomName, before: Option<EventId>, limit: usize) -> Result<BackPage, StoreError> {
        timed("read_back", self.read_before(room, before, limit)).await
    }

    async fn state(&self, room: &RoomName) -> Result<Snapshot, StoreError> {
        let keys = vec![self.keys.room(room), self.keys.floor(room), self.keys.state(room)];
        let value: Value = timed(
            "state",
            retrying(|| self.state.evalsha_with_reload(&self.client, keys.clone(), Vec::<Value>::new())),
        )
        .await?;
        reply::snapshot(value)
    }

    async fn read(&self, room: &RoomName, from: Position, limit: usize) -> Result<Page, StoreError> {
        timed("read", self.read_page(room, from, limit)).await
    }

    async fn tail(&self, room: &RoomName) -> Result<EventId, StoreError> {
        timed("tail", self.end_of(room)).await.map(|end| match end {
            End::Stream(id) | End::Floor(id) => id,
        })
    }

    async fn anchor(&self, room: &RoomName) -> Result<EventId, StoreError> {
        let keys = vec![self.keys.room(room), self.keys.floor(room)];
        let args = vec![Value::from(self.floor_ttl_ms())];
        let value: Value =
            timed("anchor", retrying(|| self.anchor.evalsha_with_reload(&self.client, keys.clone(), args.clone())))
                .await?;
        reply::event_id(&value)
    }

    async fn read_many(
        &self,
        positions: &[(RoomName, EventId)],
        limit: usize,
    ) -> Result<Vec<(RoomName, Vec<Event>)>, StoreError> {
        timed("read_many", self.read_rooms(positions, limit)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        timed("ping", async {
            let _: Value = self.client.ping(None).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    fn change_source(&self, node: &str) -> Result<Box<dyn ChangeSource>, StoreError> {
        // The blocking XREAD, or the subscriber, gets its own connections:
        // fred queues other commands behind a blocking one on the same
        // client, and a subscribed connection takes no other commands. The
        // source connects them on its first `prepare`.
        Ok(match self.layout {
            Layout::Single => {
                let reader = self.redis.topology.client(Duration::ZERO)?;
                count_connections(&reader, &self.generation);
                Box::new(changes::RedisChanges::new(
                    OwnClient::new(reader),
                    self.client.clone(),
                    self.keys.clone(),
                    node,
                ))
            }
            Layout::Cluster => {
                let subscriber = self.redis.topology.subscriber()?;
                count_connections(&subscriber, &self.generation);
                Box::new(doorbell::Doorbells::new(OwnClient::new(subscriber), self.client.clone(), self.keys.clone()))
            }
        })
    }
}
