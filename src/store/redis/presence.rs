//! Presence and webhooks on Redis. Every key shares one hash tag (one
//! Cluster slot), so a node's report for a room, its change log entry and
//! its webhook events are written in one atomic script.
//!
//! ```text
//! {P}:m:<room>          hash: member -> how many nodes hold it
//! {P}:i:<room>          hash: member -> its info (JSON)
//! {P}:h:<room>|<node>   set: the members <node> holds in <room>
//! {P}:r:<node>          set: rooms <node> holds members or subscribers in
//! {P}:o:<room>          set: nodes with subscribers in <room> (occupancy)
//! {P}:l:<room>          stream: the room's member changes (n: sequence; j/l: sub; i: info)
//! {P}:q:<room>          the room's last change sequence number
//! {P}:nodes             set: nodes that report presence
//! {P}:wh                stream: undelivered webhook events
//! {P}:wh:cursor:<sink>  the last event a sink delivered (`roomcast`, `pusher`)
//! {P}:wh:lease:<sink>   the node delivering a sink's webhooks (with a TTL)
//! {P}:wh:dropped        events dropped past the bound, not yet counted by a node
//! {P}:vacating          zset: room -> when its room_vacated is due
//! ```
//! `{P}` is `{<prefix>:p}`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use futures::{StreamExt, TryStreamExt};

use super::fault::{retrying, unavailable};
use super::{timed, RedisStore};
use crate::protocol::{EventId, RoomName};
use crate::store::presence::{
    ChangePos, ClientEvent, Member, MemberChange, Members, PresenceLog, Reported, RoomReport, WebhookEvent,
    WebhookOptions, CHANGES_KEPT, MEMBERS_PER_STEP,
};
use crate::store::StoreError;

/// Appends one webhook event within the bound (shared by the scripts).
/// Expects KEYS[whk] (stream) and KEYS[dropk] (dropped counter) in locals
/// `wh` and `dropped`, and `max` (the bound).
macro_rules! webhook_lua {
    () => {
        r#"
local function webhook(fields)
  local n = redis.call('XLEN', wh)
  if n >= max then
    redis.call('XTRIM', wh, 'MAXLEN', max - 1)
    redis.call('INCRBY', dropped, n - max + 1)
  end
  redis.call('XADD', wh, '*', unpack(fields))
end
"#
    };
}

/// Applies one node's report for one room.
/// KEYS: 1 members, 2 info, 3 held (this node's members here), 4 this
/// node's rooms, 5 occupancy, 6 changes, 7 sequence, 8 nodes, 9 webhooks,
/// 10 dropped, 11 vacating.
/// ARGV: 1 node, 2 room, 3 now (ms), 4 occupied ('1', '0' or ''), 5 mode
/// ('d': delta from a known node, 'r': resync, 'x': a dead node forgotten),
/// 6 webhooks ('1' or ''), 7 max pending, 8 vacate delay (ms), 9 changes
/// kept, 10 idle expiry (ms), 11 joined count, then sub/info pairs, then
/// left subs. Returns -1 (unknown node: resync), else 1 if members changed.
const REPORT_LUA: &str = concat!(
    r#"
local node, room, now, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
if mode == 'd' and redis.call('SISMEMBER', KEYS[8], node) == 0 then return -1 end
if mode ~= 'x' then redis.call('SADD', KEYS[8], node) end
local hooks = ARGV[6] == '1'
local wh, dropped, max = KEYS[9], KEYS[10], tonumber(ARGV[7])
"#,
    webhook_lua!(),
    r#"
local changed = 0
local function hook(name, sub, info)
  if not hooks then return end
  if sub then
    webhook({'name', name, 'room', room, 'time_ms', now, 'sub', sub, 'info', info})
  else
    webhook({'name', name, 'room', room, 'time_ms', now})
  end
end
local function change(kind, sub, info)
  changed = 1
  local seq = redis.call('INCR', KEYS[7])
  if info then
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[9], '*', 'n', seq, kind, sub, 'i', info)
  else
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[9], '*', 'n', seq, kind, sub)
  end
  redis.call('PEXPIRE', KEYS[6], ARGV[10])
  redis.call('PEXPIRE', KEYS[7], ARGV[10])
end
local function join(sub, info)
  local old = redis.call('HGET', KEYS[2], sub)
  if redis.call('SADD', KEYS[3], sub) == 1 and redis.call('HINCRBY', KEYS[1], sub, 1) == 1 then
    redis.call('HSET', KEYS[2], sub, info)
    change('j', sub, info)
    hook('member_joined', sub, info)
  elseif old ~= info then
    redis.call('HSET', KEYS[2], sub, info)
    change('j', sub, info)
  end
end
local function leave(sub)
  if redis.call('SREM', KEYS[3], sub) == 0 then return end
  if redis.call('HINCRBY', KEYS[1], sub, -1) <= 0 then
    redis.call('HDEL', KEYS[1], sub)
    local info = redis.call('HGET', KEYS[2], sub) or '{}'
    redis.call('HDEL', KEYS[2], sub)
    change('l', sub)
    hook('member_left', sub, info)
  end
end
local function occupy(on)
  if on then
    if redis.call('SADD', KEYS[5], node) == 1 and redis.call('SCARD', KEYS[5]) == 1 then
      if redis.call('ZREM', KEYS[11], room) == 0 then hook('room_occupied') end
    end
  elseif redis.call('SREM', KEYS[5], node) == 1 and redis.call('SCARD', KEYS[5]) == 0 and hooks then
    redis.call('ZADD', KEYS[11], tonumber(now) + tonumber(ARGV[8]), room)
  end
end
local joined = tonumber(ARGV[11])
if ARGV[4] == '1' then occupy(true) end
for k = 0, joined - 1 do join(ARGV[12 + 2 * k], ARGV[13 + 2 * k]) end
for k = 12 + 2 * joined, #ARGV do leave(ARGV[k]) end
if ARGV[4] == '0' then occupy(false) end
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('SISMEMBER', KEYS[5], node) == 1 then
  redis.call('SADD', KEYS[4], room)
else
  redis.call('SREM', KEYS[4], room)
end
return changed
"#
);

/// A room's members and where its change log stands, at once.
/// KEYS: 1 info, 2 sequence, 3 changes. Returns {seq, last change ID, info pairs...}.
const MEMBERS_LUA: &str = r#"
local seq = redis.call('GET', KEYS[2]) or '0'
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local id = '0-0'
if last[1] then id = last[1][1] end
local out = {seq, id}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do out[#out + 1] = all[i] end
return out
"#;

/// Takes or keeps the webhook lease. KEYS: 1 lease. ARGV: 1 holder, 2 ttl (ms).
const LEASE_LUA: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"#;

/// Moves a sink's delivery cursor while the caller holds its lease, and
/// trims what every sink delivered. KEYS: 1 lease, 2 cursor, 3 webhooks,
/// then the other sinks' cursors. ARGV: 1 holder, 2 last delivered ID, 3
/// the ID just after it.
const DELIVERED_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local upto, last = ARGV[3], ARGV[2]
for i = 4, #KEYS do
  local other = redis.call('GET', KEYS[i])
  -- A sink that delivered nothing yet holds everything back.
  if not other then return 1 end
  if older(other, last) then
    last = other
    upto = nil
  end
end
if upto then
  redis.call('XTRIM', KEYS[3], 'MINID', upto)
else
  -- Trim what the slowest sink delivered: entries up to and with `last`.
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  redis.call('XTRIM', KEYS[3], 'MINID', ms .. '-' .. (tonumber(seq) + 1))
end
return 1
"#;

/// Records one Pusher client event for the webhooks, within the bound.
/// KEYS: 1 webhooks, 2 dropped. ARGV: 1 max, then field/value pairs.
const RECORD_LUA: &str = concat!(
    r#"
local wh, dropped, max = KEYS[1], KEYS[2], tonumber(ARGV[1])
"#,
    webhook_lua!(),
    r#"
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
webhook(fields)
return 1
"#
);

/// Records room_vacated for rooms whose delay ran out and that are still
/// empty. KEYS: 1 vacating, 2 webhooks, 3 dropped. ARGV: 1 now (ms), 2 the
/// occupancy key prefix, 3 max pending.
const VACATE_LUA: &str = concat!(
    r#"
local wh, dropped, max = KEYS[2], KEYS[3], tonumber(ARGV[3])
"#,
    webhook_lua!(),
    r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, room in ipairs(due) do
  redis.call('ZREM', KEYS[1], room)
  if redis.call('SCARD', ARGV[2] .. room) == 0 then
    webhook({'name', 'room_vacated', 'room', room, 'time_ms', ARGV[1]})
  end
end
return #due
"#
);

/// The presence scripts, loaded once per store.
pub(super) struct PresenceScripts {
    report: Script,
    members: Script,
    lease: Script,
    delivered: Script,
    vacate: Script,
    record: Script,
}

impl PresenceScripts {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(PresenceScripts {
            report: Script::from_lua(REPORT_LUA),
            members: Script::from_lua(MEMBERS_LUA),
            lease: Script::from_lua(LEASE_LUA),
            delivered: Script::from_lua(DELIVERED_LUA),
            vacate: Script::from_lua(VACATE_LUA),
            record: Script::from_lua(RECORD_LUA),
        })
    }
}

/// Presence key names (one hash tag for all).
struct PresenceKeys<'a>(&'a str);

impl PresenceKeys<'_> {
    fn key(&self, part: &str) -> String {
        format!("{}:{{{}:p}}:{}", self.0, self.0, part)
    }
    fn members(&self, room: &str) -> String {
        self.key(&format!("m:{room}"))
    }
    fn info(&self, room: &str) -> String {
        self.key(&format!("i:{room}"))
    }
    fn held(&self, room: &str, node: &str) -> String {
        self.key(&format!("h:{room}|{node}"))
    }
    fn rooms(&self, node: &str) -> String {
        self.key(&format!("r:{node}"))
    }
    fn occupancy_prefix(&self) -> String {
        self.key("o:")
    }
    fn occupancy(&self, room: &str) -> String {
        self.key(&format!("o:{room}"))
    }
    fn changes(&self, room: &str) -> String {
        self.key(&format!("l:{room}"))
    }
    fn seq(&self, room: &str) -> String {
        self.key(&format!("q:{room}"))
    }
    fn nodes(&self) -> String {
        self.key("nodes")
    }
    fn webhooks(&self) -> String {
        self.key("wh")
    }
    fn cursor(&self, sink: &str) -> String {
        self.key(&format!("wh:cursor:{sink}"))
    }
    fn lease(&self, sink: &str) -> String {
        self.key(&format!("wh:lease:{sink}"))
    }
    fn dropped(&self) -> String {
        self.key("wh:dropped")
    }
    fn vacating(&self) -> String {
        self.key("vacating")
    }
}

/// Steps run at once (fred pipelines them on its connection).
const STEPS_IN_FLIGHT: usize = 32;

fn text(v: &Value) -> Option<String> {
    v.as_bytes().and_then(|b| std::str::from_utf8(b).ok()).map(str::to_owned)
}

/// A stream entry's ID and its fields, from an XRANGE reply item.
fn entry(item: Value) -> Option<(String, HashMap<String, String>)> {
    let Value::Array(mut parts) = item else { return None };
    let fields = parts.pop()?;
    let id = text(parts.first()?)?;
    let Value::Array(fields) = fields else { return None };
    let mut map = HashMap::new();
    let mut it = fields.iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(text(k)?, text(v)?);
    }
    Some((id, map))
}

/// The ID just after a stream entry ID.
fn after(id: &str) -> Result<String, StoreError> {
    let id = EventId::parse(id).map_err(|e| StoreError::Protocol(format!("webhook id: {e}")))?;
    Ok(match id.seq.checked_add(1) {
        Some(seq) => EventId::new(id.ms, seq),
        None => EventId::new(id.ms + 1, 0),
    }
    .to_string())
}

impl RedisStore {
    fn presence_keys(&self) -> PresenceKeys<'_> {
        PresenceKeys(&self.redis.prefix)
    }

    /// One step of a report: the script over one room and some members.
    async fn report_step(
        &self,
        node: &str,
        step: &RoomReport,
        mode: &str,
        webhooks: &WebhookOptions,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        let k = self.presence_keys();
        let room = step.room.as_str();
        let keys = vec![
            k.members(room),
            k.info(room),
            k.held(room, node),
            k.rooms(node),
            k.occupancy(room),
            k.changes(room),
            k.seq(room),
            k.nodes(),
            k.webhooks(),
            k.dropped(),
            k.vacating(),
        ];
        let occupied = match step.occupied {
            Some(true) => "1",
            Some(false) => "0",
            None => "",
        };
        let mut args: Vec<Value> = vec![
            node.into(),
            room.into(),
            (now_ms as i64).into(),
            occupied.into(),
            mode.into(),
            (if webhooks.enabled { "1" } else { "" }).into(),
            (webhooks.max_pending.max(1) as i64).into(),
            (webhooks.vacate_delay.as_millis() as i64).into(),
            (CHANGES_KEPT as i64).into(),
            (self.options.room_ttl.as_millis() as i64).into(),
            (step.joined.len() as i64).into(),
        ];
        for m in &step.joined {
            args.push(m.sub.as_str().into());
            args.push(m.info.as_str().into());
        }
        args.extend(step.left.iter().map(|s| Value::from(s.as_str())));
        let reply: i64 = timed(
            "presence",
            retrying(|| self.presence.report.evalsha_with_reload(&self.client, keys.clone(), args.clone())),
        )
        .await?;
        Ok(reply)
    }

    /// A full report made a delta: whatever the store holds from `node` in
    /// the room and the report does not name has left.
    async fn full_to_delta(&self, node: &str, report: &RoomReport) -> Result<RoomReport, StoreError> {
        let held: HashSet<String> =
            self.client.smembers(self.presence_keys().held(report.room.as_str(), node)).await.map_err(unavailable)?;
        let named: HashSet<&str> = report.joined.iter().map(|m| m.sub.as_str()).collect();
        let mut delta = report.clone();
        delta.full = false;
        delta.left.extend(held.into_iter().filter(|s| !named.contains(s.as_str())));
        Ok(delta)
    }

    /// Runs `reports` as steps of at most [`MEMBERS_PER_STEP`] members in
    /// `mode`; the rooms whose members changed, or `None` on a resync.
    async fn run_reports(
        &self,
        node: &str,
        reports: Vec<RoomReport>,
        mode: &str,
        webhooks: &WebhookOptions,
        now_ms: u64,
    ) -> Result<Option<Vec<RoomName>>, StoreError> {
        let steps = reports.into_iter().flat_map(split_report);
        let replies: Vec<(RoomName, i64)> = futures::stream::iter(steps)
            .map(|step| async move {
                let reply = self.report_step(node, &step, mode, webhooks, now_ms).await?;
                Ok::<_, StoreError>((step.room, reply))
            })
            .buffered(STEPS_IN_FLIGHT)
            .try_collect()
            .await?;
        if replies.iter().any(|(_, r)| *r < 0) {
            return Ok(None);
        }
        let mut changed: Vec<RoomName> = replies.into_iter().filter(|(_, r)| *r > 0).map(|(room, _)| room).collect();
        changed.dedup();
        Ok(Some(changed))
    }
}

/// Cuts a report into steps of at most [`MEMBERS_PER_STEP`] members each
/// (occupied first, empty last, as the script orders them).
fn split_report(report: RoomReport) -> Vec<RoomReport> {
    let size = report.joined.len() + report.left.len();
    if size <= MEMBERS_PER_STEP {
        return vec![report];
    }
    let mut steps = Vec::new();
    let occupied = report.occupied;
    let blank =
        || RoomReport { room: report.room.clone(), joined: Vec::new(), left: Vec::new(), occupied: None, full: false };
    for chunk in report.joined.chunks(MEMBERS_PER_STEP) {
        steps.push(RoomReport { joined: chunk.to_vec(), ..blank() });
    }
    for chunk in report.left.chunks(MEMBERS_PER_STEP) {
        steps.push(RoomReport { left: chunk.to_vec(), ..blank() });
    }
    match occupied {
        Some(true) => steps[0].occupied = occupied,
        Some(false) => {
            if let Some(last) = steps.last_mut() {
                last.occupied = occupied;
            }
        }
        None => {}
    }
    steps
}

#[async_trait]
impl PresenceLog for RedisStore {
    async fn report_presence(
        &self,
        node: &str,
        reports: &[RoomReport],
        webhooks: &WebhookOptions,
        now_ms: u64,
    ) -> Result<Reported, StoreError> {
        let full = reports.iter().any(|r| r.full);
        let mut steps = Vec::with_capacity(reports.len());
        for report in reports {
            steps.push(if report.full { self.full_to_delta(node, report).await? } else { report.clone() });
        }
        let mode = if full { "r" } else { "d" };
        Ok(match self.run_reports(node, steps, mode, webhooks, now_ms).await? {
            Some(changed) => Reported::Applied(changed),
            None => Reported::Resync,
        })
    }

    async fn members(&self, room: &RoomName) -> Result<Members, StoreError> {
        let k = self.presence_keys();
        let keys = vec![k.info(room.as_str()), k.seq(room.as_str()), k.changes(room.as_str())];
        let reply: Value = timed(
            "presence",
            retrying(|| self.presence.members.evalsha_with_reload(&self.client, keys.clone(), Vec::<Value>::new())),
        )
        .await?;
        let Value::Array(parts) = reply else {
            return Err(StoreError::Protocol("members reply is not an array".into()));
        };
        let mut parts = parts.iter().map(text);
        let seq = parts.next().flatten().and_then(|s| s.parse().ok()).unwrap_or(0);
        let id = parts.next().flatten().unwrap_or_else(|| "0-0".into());
        let mut members = Vec::new();
        while let (Some(Some(sub)), Some(Some(info))) = (parts.next(), parts.next()) {
            members.push(Member { sub, info });
        }
        Ok(Members { members, at: ChangePos { seq, cursor: id } })
    }

    async fn member_count(&self, room: &RoomName) -> Result<u64, StoreError> {
        self.client.hlen(self.presence_keys().members(room.as_str())).await.map_err(unavailable)
    }

    async fn member_changes(
        &self,
        room: &RoomName,
        from: &ChangePos,
    ) -> Result<Option<(Vec<MemberChange>, ChangePos)>, StoreError> {
        let k = self.presence_keys();
        let pipeline = self.client.pipeline();
        let _: () = pipeline.get(k.seq(room.as_str())).await.map_err(unavailable)?;
        let _: () = pipeline
            .xrange(k.changes(room.as_str()), format!("({}", from.cursor), "+", Some(CHANGES_KEPT))
            .await
            .map_err(unavailable)?;
        let (seq, entries): (Option<u64>, Value) =
            timed("presence", async { pipeline.all().await.map_err(unavailable) }).await?;
        let seq = seq.unwrap_or(0);
        if seq == from.seq {
            return Ok(Some((Vec::new(), from.clone())));
        }
        if seq < from.seq {
            return Ok(None);
        }
        let Value::Array(items) = entries else { return Ok(None) };
        let mut changes = Vec::new();
        let (mut at, mut cursor) = (from.seq, from.cursor.clone());
        for item in items {
            let Some((id, fields)) = entry(item) else { return Ok(None) };
            let n: u64 = fields.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
            if n <= at {
                continue;
            }
            if n != at + 1 {
                return Ok(None);
            }
            if let Some(sub) = fields.get("j") {
                let info = fields.get("i").cloned().unwrap_or_else(|| "{}".into());
                changes.push(MemberChange::Joined(Member { sub: sub.clone(), info }));
            } else if let Some(sub) = fields.get("l") {
                changes.push(MemberChange::Left(sub.clone()));
            }
            at = n;
            cursor = id;
        }
        if at == from.seq {
            // The log moved on without us (expired and rebuilt): reload.
            return Ok(None);
        }
        Ok(Some((changes, ChangePos { seq: at, cursor })))
    }

    async fn presence_nodes(&self) -> Result<HashSet<String>, StoreError> {
        self.client.smembers(self.presence_keys().nodes()).await.map_err(unavailable)
    }

    async fn occupied_rooms(&self, prefix: &str) -> Result<Vec<RoomName>, StoreError> {
        let k = self.presence_keys();
        let nodes: Vec<String> = self.client.smembers(k.nodes()).await.map_err(unavailable)?;
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| k.rooms(n)).collect();
        let rooms: HashSet<String> = self.client.sunion(keys).await.map_err(unavailable)?;
        let candidates: Vec<RoomName> =
            rooms.iter().filter(|r| r.starts_with(prefix)).filter_map(|r| RoomName::parse(r).ok()).collect();
        // A node's rooms also hold rooms where it has members only briefly:
        // keep those with subscribers.
        let pipeline = self.client.pipeline();
        for room in &candidates {
            let _: () = pipeline.scard(k.occupancy(room.as_str())).await.map_err(unavailable)?;
        }
        let counts: Vec<u64> =
            if candidates.is_empty() { Vec::new() } else { pipeline.all().await.map_err(unavailable)? };
        let mut out: Vec<RoomName> =
            candidates.into_iter().zip(counts).filter(|(_, n)| *n > 0).map(|(room, _)| room).collect();
        out.sort();
        Ok(out)
    }

    async fn forget_presence(
        &self,
        node: &str,
        webhooks: &WebhookOptions,
        now_ms: u64,
    ) -> Result<Vec<RoomName>, StoreError> {
        let k = self.presence_keys();
        let rooms: Vec<String> = self.client.smembers(k.rooms(node)).await.map_err(unavailable)?;
        let mut reports = Vec::new();
        for room in rooms.iter().filter_map(|r| RoomName::parse(r).ok()) {
            let empty = RoomReport { room, joined: Vec::new(), left: Vec::new(), occupied: Some(false), full: true };
            reports.push(self.full_to_delta(node, &empty).await?);
        }
        let changed = self.run_reports(node, reports, "x", webhooks, now_ms).await?.unwrap_or_default();
        let pipeline = self.client.pipeline();
        let _: () = pipeline.srem(k.nodes(), node).await.map_err(unavailable)?;
        let _: () = pipeline.del(k.rooms(node)).await.map_err(unavailable)?;
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(changed)
    }

    async fn record_client_event(
        &self,
        webhooks: &WebhookOptions,
        room: &RoomName,
        event: ClientEvent,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if !webhooks.enabled {
            return Ok(());
        }
        let k = self.presence_keys();
        let keys = vec![k.webhooks(), k.dropped()];
        let mut args: Vec<Value> = vec![(webhooks.max_pending.max(1) as i64).into()];
        let mut field = |name: &str, value: String| {
            args.push(name.into());
            args.push(value.into());
        };
        field("name", "client_event".into());
        field("room", room.to_string());
        field("time_ms", now_ms.to_string());
        field("event", event.event);
        field("data", event.data);
        field("socket_id", event.socket_id);
        if let Some(user) = event.user_id {
            field("user_id", user);
        }
        let _: i64 = timed(
            "webhooks",
            retrying(|| self.presence.record.evalsha_with_reload(&self.client, keys.clone(), args.clone())),
        )
        .await?;
        Ok(())
    }

    async fn webhook_lease(&self, sink: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let keys = vec![self.presence_keys().lease(sink)];
        let args: Vec<Value> = vec![holder.into(), (ttl.as_millis() as i64).into()];
        let held: i64 = timed(
            "webhooks",
            retrying(|| self.presence.lease.evalsha_with_reload(&self.client, keys.clone(), args.clone())),
        )
        .await?;
        Ok(held == 1)
    }

    async fn vacate_due(&self, webhooks: &WebhookOptions, now_ms: u64) -> Result<(), StoreError> {
        let k = self.presence_keys();
        let keys = vec![k.vacating(), k.webhooks(), k.dropped()];
        let args: Vec<Value> =
            vec![(now_ms as i64).into(), k.occupancy_prefix().into(), (webhooks.max_pending.max(1) as i64).into()];
        let _: i64 = timed(
            "webhooks",
            retrying(|| self.presence.vacate.evalsha_with_reload(&self.client, keys.clone(), args.clone())),
        )
        .await?;
        Ok(())
    }

    async fn webhook_pending(&self, sink: &str, max: usize) -> Result<(Vec<WebhookEvent>, u64), StoreError> {
        let k = self.presence_keys();
        let cursor: Option<String> = self.client.get(k.cursor(sink)).await.map_err(unavailable)?;
        let start = cursor.map_or_else(|| "-".to_owned(), |c| format!("({c}"));
        let pipeline = self.client.pipeline();
        let _: () = pipeline.xrange(k.webhooks(), start, "+", Some(max as u64)).await.map_err(unavailable)?;
        let _: () = pipeline.getdel(k.dropped()).await.map_err(unavailable)?;
        let (items, dropped): (Value, Option<u64>) =
            timed("webhooks", async { pipeline.all().await.map_err(unavailable) }).await?;
        let Value::Array(items) = items else {
            return Ok((Vec::new(), dropped.unwrap_or(0)));
        };
        let events = items
            .into_iter()
            .filter_map(entry)
            .map(|(id, f)| WebhookEvent {
                id,
                name: f.get("name").cloned().unwrap_or_default(),
                room: f.get("room").cloned().unwrap_or_default(),
                time_ms: f.get("time_ms").and_then(|t| t.parse().ok()).unwrap_or(0),
                sub: f.get("sub").cloned(),
                info: f.get("info").and_then(|i| serde_json::from_str(i).ok()),
                client: f.get("event").map(|event| ClientEvent {
                    event: event.clone(),
                    data: f.get("data").cloned().unwrap_or_default(),
                    socket_id: f.get("socket_id").cloned().unwrap_or_default(),
                    user_id: f.get("user_id").cloned(),
                }),
            })
            .collect();
        Ok((events, dropped.unwrap_or(0)))
    }

    async fn webhook_delivered(
        &self,
        sink: &str,
        sinks: &[&str],
        holder: &str,
        last_id: &str,
    ) -> Result<bool, StoreError> {
        let k = self.presence_keys();
        let mut keys = vec![k.lease(sink), k.cursor(sink), k.webhooks()];
        keys.extend(sinks.iter().filter(|s| **s != sink).map(|s| k.cursor(s)));
        let args: Vec<Value> = vec![holder.into(), last_id.into(), after(last_id)?.into()];
        let moved: i64 = timed(
            "webhooks",
            retrying(|| self.presence.delivered.evalsha_with_reload(&self.client, keys.clone(), args.clone())),
        )
        .await?;
        Ok(moved == 1)
    }
}
