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
mod mailbox;
mod reply;
mod topology;

pub use self::topology::Topology;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use tracing::{debug, info, warn};

use self::fault::{retrying, unavailable};
use self::keys::{bucket, Keys};
use super::feed::ChangeSource;
use super::notes::{NOTES_KEPT, NOTES_PER_READ};
use super::{
    Appended, Incarnation, LiveNote, NoteCursor, Page, Position, Store, StoreError, StoreOptions, IDEMPOTENCY_WINDOW,
};
use crate::config::RedisSettings;
use crate::protocol::{Event, EventId, IdempotencyKey, RoomName};

/// Appends one event: predecessor, trim, expiry, floor and bucket signal
/// (and, on a cluster, doorbell), atomically, at most once per call.
///
/// KEYS: room stream, mailbox (the bucket's on a cluster, the store's on one
/// Redis), room floor, and the call's record: the publish's idempotency key,
/// or else a replay key named by the call's nonce.
/// ARGV: history, data, room ttl ms, room name, signal stream length, floor
/// ttl ms, record ttl ms, doorbell channel (empty: none), nonce.
/// Returns `{id, 1}` for an event stored by this call (now, or by an earlier
/// send of it whose reply was lost), `{first id, 0}` for a repeated key.
///
/// Every append records `"<id> <nonce>"` under KEYS[4]. fred sends a call
/// again when the connection drops before the reply (after a Redis restart
/// from an AOF that has the write, say): the resend finds its own nonce and
/// stores nothing. Another call with the same idempotency key has another
/// nonce: a repeat.
///
/// The floor holds the room's last position and the server that wrote it
/// (the first 16 hex digits of `run_id`). A stream with no entry starts
/// strictly above the floor and names it as its predecessor: a reader that
/// was there missed nothing, one below it gets a gap. If the floor is gone
/// too, the room starts at `<now_ms + 1>-<µs within the ms × 1000>`: that
/// virtual clock grows by 1,000 sequence numbers per microsecond, faster
/// than any stream (even one rebuilt the same way a moment earlier) can
/// append, so it is above every ID handed out before; its predecessor is
/// `0-0`, which no reader past the start holds.
///
/// When the floor was written by another server process (Redis restarted
/// from a snapshot or an AOF, or a replica was promoted), acknowledged
/// writes after the floor may be lost with no trace in the keys. The entry
/// then names [`NEW_SERVER`](crate::store::NEW_SERVER) (`0-2`) as its
/// predecessor: a gap to every reader that resumes across it, whenever it
/// comes back, not only to those the feed was following at the time.
const APPEND_LUA: &str = r#"
local run = string.sub(string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '', 1, 16)
local seen = redis.call('GET', KEYS[4])
if seen then
  local first, nonce = string.match(seen, '^(%S+) ?(%S*)$')
  if nonce == ARGV[9] then return {first, 1} end
  return {first, 0}
end
local floor = redis.call('GET', KEYS[3])
local fid, frun
if floor then fid, frun = string.match(floor, '^(%d+%-%d+) ?(%x*)$') end
local moved = frun ~= nil and frun ~= '' and frun ~= run
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id
if last[1] then
  local prev = last[1][1]
  if moved then prev = '0-2' end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', prev, 'd', ARGV[2])
else
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local now = math.floor(us / 1000)
  local ms, seq = now + 1, (us % 1000) * 1000
  local prev = '0-0'
  if fid then
    prev = fid
    if moved then prev = '0-2' end
    local fms, fseq = string.match(fid, '^(%d+)-(%d+)$')
    fms, fseq = tonumber(fms), tonumber(fseq)
    if now > fms then ms, seq = now, 0 else ms, seq = fms, fseq + 1 end
  end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%.0f-%.0f', ms, seq), 'p', prev, 'd', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[3], id .. ' ' .. run, 'PX', ARGV[6])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'r', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[8] ~= '' then redis.call('SPUBLISH', ARGV[8], ARGV[4]) end
redis.call('SET', KEYS[4], id .. ' ' .. ARGV[9], 'PX', ARGV[7])
return {id, 1}
"#;

/// A live subscriber's starting position: the room's end, or a fresh
/// anchor recorded as the room's floor (see [`Store::anchor`]), on the same
/// virtual clock as a new room's first ID. KEYS: room stream, room floor.
/// ARGV: floor ttl ms.
const ANCHOR_LUA: &str = r#"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then return last[1][1] end
local floor = redis.call('GET', KEYS[2])
if floor then
  local fid = string.match(floor, '^(%d+%-%d+)')
  if fid then return fid end
end
local run = string.sub(string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '', 1, 16)
local t = redis.call('TIME')
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id = string.format('%.0f-%.0f', math.floor(us / 1000) + 1, (us % 1000) * 1000)
redis.call('SET', KEYS[2], id .. ' ' .. run, 'PX', ARGV[1])
return id
"#;

/// Returns the server's run ID, then each bucket's epoch token, creating
/// the ones that are missing (as they are after Redis lost its data, or
/// just these keys). KEYS: epoch keys. ARGV: a fresh token.
const EPOCH_LUA: &str = r#"
local info = redis.call('INFO', 'server')
local out = {string.match(info, 'run_id:(%w+)') or ''}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, ARGV[1])
    v = ARGV[1]
  end
  out[i + 1] = v
end
return out
"#;

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
    /// Bumped by every (re)connection of this store's clients.
    generation: Arc<AtomicU64>,
    keys: Keys,
    options: StoreOptions,
    redis: RedisOptions,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
        let append = Script::from_lua(APPEND_LUA);
        let anchor = Script::from_lua(ANCHOR_LUA);
        let epoch = Script::from_lua(EPOCH_LUA);
        Ok(RedisStore { client, append, anchor, epoch, generation, keys: Keys::new(&redis.prefix), options, redis })
    }

    /// Runs the append script, with the publish's idempotency key if it has
    /// one, and a fresh nonce either way (see [`APPEND_LUA`]).
    async fn run_append(
        &self,
        room: &RoomName,
        key: Option<&IdempotencyKey>,
        data: Bytes,
    ) -> Result<Appended, StoreError> {
        let cluster = self.redis.topology.is_cluster();
        let mailbox = mailbox::mailbox_key(&self.keys, mailbox::mailbox_of(room, cluster), cluster);
        let nonce = format!("{:016x}", rand::random::<u64>());
        let (record, record_ttl) = match key {
            Some(k) => (self.keys.idempotency(room, k.as_str()), IDEMPOTENCY_WINDOW),
            None => (self.keys.replay(room, &nonce), MIN_REPLAY_WINDOW.max(self.redis.command_timeout * 3)),
        };
        let keys = vec![self.keys.room(room), mailbox, self.keys.floor(room), record];
        let ttl_ms = self.options.room_ttl.as_millis() as i64;
        let args: Vec<Value> = vec![
            Value::from(self.options.history as i64),
            Value::Bytes(data),
            Value::from(ttl_ms),
            Value::from(room.as_str()),
            Value::from(SIGNALS_KEPT as i64),
            Value::from(self.floor_ttl_ms()),
            Value::from(record_ttl.as_millis() as i64),
            Value::from(if cluster { self.keys.doorbell(bucket(room)) } else { String::new() }),
            Value::from(nonce),
        ];
        let reply: Value =
            retrying(|| self.append.evalsha_with_reload(&self.client, keys.clone(), args.clone())).await?;
        let Value::Array(parts) = reply else {
            return Err(StoreError::Protocol("append reply is not an array".into()));
        };
        let id = reply::event_id(parts.first().unwrap_or(&Value::Null))?;
        match parts.get(1).and_then(|v| v.as_i64()) {
            Some(1) => Ok(Appended::Stored(id)),
            Some(0) => Ok(Appended::Repeated(id)),
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
        if let Some(last) = reply::entries(last)?.last() {
            return Ok(End::Stream(last.id));
        }
        Ok(End::Floor(
            floor
                .as_deref()
                .and_then(|f| f.split(' ').next())
                .and_then(|id| EventId::parse(id).ok())
                .unwrap_or(EventId::ZERO),
        ))
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
        for _ in 0..RACING_READS {
            let value: Value = self
                .client
                .xrange(self.keys.room(room), start.as_str(), "+", Some(limit as u64))
                .await
                .map_err(unavailable)?;
            let events = reply::entries(value)?;
            let tail = match events.last() {
                Some(last) => last.id,
                None => match (self.end_of(room).await?, from) {
                    (End::Stream(last), Position::After(x)) if last > x => continue,
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

    /// Events after each position, for the live feed.
    async fn read_rooms(
        &self,
        positions: &[(RoomName, EventId)],
        limit: usize,
    ) -> Result<Vec<(RoomName, Vec<Event>)>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        if !self.redis.topology.is_cluster() {
            return self.read_slot(positions, limit).await;
        }
        // On a cluster one XREAD names one slot: a read per bucket, all at once.
        let mut by_bucket: HashMap<u16, Vec<(RoomName, EventId)>> = HashMap::new();
        for (room, position) in positions {
            by_bucket.entry(bucket(room)).or_default().push((room.clone(), *position));
        }
        let reads = by_bucket.values().map(|group| self.read_slot(group, limit));
        let mut out = Vec::new();
        for read in futures::future::join_all(reads).await {
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

    /// Runs the epoch script over `buckets` (of one slot, on a cluster).
    async fn epochs(&self, buckets: &[usize]) -> Result<Vec<Incarnation>, StoreError> {
        let fresh = format!("{:016x}", rand::random::<u64>());
        let keys: Vec<String> = buckets.iter().map(|b| self.keys.epoch(*b as u16)).collect();
        let value: Value =
            retrying(|| self.epoch.evalsha_with_reload(&self.client, keys.clone(), vec![fresh.clone()])).await?;
        let Value::Array(parts) = value else {
            return Err(StoreError::Protocol("epoch reply is not an array".into()));
        };
        let mut parts = parts.into_iter().map(|v| v.into_string().unwrap_or_default());
        let server = parts.next().filter(|s| !s.is_empty());
        let server = server.ok_or_else(|| StoreError::Protocol("INFO server has no run_id".into()))?;
        let epochs: Vec<Incarnation> = parts.map(|data| Incarnation { data, server: server.clone() }).collect();
        if epochs.len() != buckets.len() {
            return Err(StoreError::Protocol("epoch reply is short".into()));
        }
        Ok(epochs)
    }
}

/// Runs a store command, recording its latency by operation.
async fn timed<T>(
    op: &'static str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let outcome = f.await;
    metrics::histogram!("roomcast_store_command_seconds", "op" => op).record(started.elapsed().as_secs_f64());
    outcome
}

#[async_trait]
impl Store for RedisStore {
    async fn append(&self, room: &RoomName, data: Bytes, key: Option<&IdempotencyKey>) -> Result<Appended, StoreError> {
        timed("append", self.run_append(room, key, data)).await
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

    async fn report_audience(&self, node: &str, counts: &[(RoomName, usize)]) -> Result<(), StoreError> {
        let alive_until = now_ms() + self.options.presence_ttl.as_millis() as u64;
        let pipeline = self.client.pipeline();
        let _: () = pipeline.hset(self.keys.nodes(), (node, alive_until)).await.map_err(unavailable)?;
        for (room, count) in counts {
            let key = self.keys.audience(room);
            if *count == 0 {
                let _: () = pipeline.hdel(&key, node).await.map_err(unavailable)?;
            } else {
                let _: () = pipeline.hset(&key, (node, *count as u64)).await.map_err(unavailable)?;
                // Counts of rooms nobody reports on for a day go on their own.
                let ttl = self.options.room_ttl.as_millis() as i64;
                let _: () = pipeline.pexpire(&key, ttl, None).await.map_err(unavailable)?;
            }
        }
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(())
    }

    async fn audience(&self, room: &RoomName) -> Result<usize, StoreError> {
        let live = self.live_nodes().await?;
        let by_node = self.audience_by_node(std::slice::from_ref(room)).await?;
        Ok(by_node
            .iter()
            .flat_map(|counts| counts.iter())
            .filter(|(node, _)| live.contains(*node))
            .map(|(_, n)| *n as usize)
            .sum())
    }

    async fn audience_by_node(&self, rooms: &[RoomName]) -> Result<Vec<HashMap<String, u64>>, StoreError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for room in rooms {
            let _: () = pipeline.hgetall(self.keys.audience(room)).await.map_err(unavailable)?;
        }
        let replies: Vec<HashMap<String, String>> = pipeline.all().await.map_err(unavailable)?;
        Ok(replies
            .into_iter()
            .map(|counts| {
                counts
                    .into_iter()
                    // Older nodes wrote "<count>:<expires-ms>".
                    .filter_map(|(node, v)| Some((node, v.split(':').next()?.parse::<u64>().ok()?)))
                    .collect()
            })
            .collect())
    }

    async fn live_nodes(&self) -> Result<HashSet<String>, StoreError> {
        let nodes: HashMap<String, u64> = self.client.hgetall(self.keys.nodes()).await.map_err(unavailable)?;
        let now = now_ms();
        // A node gone for a minute is forgotten by whoever notices.
        let forgotten: Vec<&String> =
            nodes.iter().filter(|(_, until)| **until + 60_000 < now).map(|(node, _)| node).collect();
        if !forgotten.is_empty() {
            let _: Result<(), _> = self.client.hdel(self.keys.nodes(), forgotten).await;
        }
        Ok(nodes.into_iter().filter(|(_, until)| *until > now).map(|(node, _)| node).collect())
    }

    async fn append_note(&self, note: &LiveNote) -> Result<(), StoreError> {
        let json = serde_json::to_string(note).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let _: Value = self
            .client
            .xadd(self.keys.notes(), false, ("MAXLEN", "~", NOTES_KEPT as u64), "*", ("d", json))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn read_notes(&self, after: Option<&NoteCursor>) -> Result<(Vec<LiveNote>, NoteCursor), StoreError> {
        let key = self.keys.notes();
        let Some(after) = after else {
            let value: Value = self.client.xrevrange(&key, "+", "-", Some(1)).await.map_err(unavailable)?;
            let last = match value {
                Value::Array(items) => items.first().map(reply::entry_id).transpose()?,
                _ => None,
            };
            return Ok((Vec::new(), NoteCursor(last.unwrap_or(EventId::ZERO).to_string())));
        };
        let value: Value =
            self.client.xread(Some(NOTES_PER_READ as u64), None, key, after.0.clone()).await.map_err(unavailable)?;
        let mut notes = Vec::new();
        let mut cursor = after.clone();
        for (_, items) in reply::xread_streams(value)? {
            for item in &items {
                let (id, data) = reply::id_and_field(item, b"d")?;
                cursor = NoteCursor(id.to_string());
                match data.map(|d| serde_json::from_slice::<LiveNote>(&d)) {
                    Some(Ok(note)) => notes.push(note),
                    _ => warn!(%id, "a live note that is not roomcast's; skipped"),
                }
            }
        }
        Ok((notes, cursor))
    }

    /// On a cluster, each bucket can fail over alone (with its master); one
    /// Redis (or Sentinel's master) is one domain, tracked by bucket 0's epoch.
    fn domains(&self) -> usize {
        if self.redis.topology.is_cluster() {
            usize::from(keys::BUCKETS)
        } else {
            1
        }
    }

    fn domain(&self, room: &RoomName) -> usize {
        if self.redis.topology.is_cluster() {
            usize::from(bucket(room))
        } else {
            0
        }
    }

    async fn incarnations(&self, domains: &[usize]) -> Result<Vec<Incarnation>, StoreError> {
        if !self.redis.topology.is_cluster() {
            return timed("epoch", self.epochs(domains)).await;
        }
        // Each bucket is its own slot, and lives on the master that owns it:
        // the run ID each script answers is that master's.
        let reads = domains.iter().map(|d| self.epochs(std::slice::from_ref(d)));
        let mut out = Vec::with_capacity(domains.len());
        for read in futures::future::join_all(reads).await {
            out.extend(read?);
        }
        Ok(out)
    }

    fn connection_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        timed("ping", async {
            let _: Value = self.client.ping(None).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn change_source(&self, node: &str) -> Result<Box<dyn ChangeSource>, StoreError> {
        // The blocking XREAD, or the subscriber, gets its own connections:
        // fred queues other commands behind a blocking one on the same
        // client, and a subscribed connection takes no other commands.
        let cluster = self.redis.topology.is_cluster();
        let reader =
            if cluster { self.redis.topology.subscriber()? } else { self.redis.topology.client(Duration::ZERO)? };
        count_connections(&reader, &self.generation);
        let source: Box<dyn ChangeSource> = if cluster {
            Box::new(doorbell::Doorbells::new(reader.clone(), self.client.clone(), self.keys.clone()))
        } else {
            Box::new(changes::RedisChanges::new(reader.clone(), self.client.clone(), self.keys.clone(), node))
        };
        reader.init().await.map_err(unavailable)?;
        Ok(source)
    }
}
