//! The embedded store's presence and webhook events, with the Redis
//! store's rules (see `store::presence`), in memory.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{lock, MemoryStore};
use crate::protocol::RoomName;
use crate::store::presence::{
    ChangePos, ClientEvent, Member, MemberChange, Members, PresenceLog, Reported, RoomReport, WebhookEvent,
    WebhookOptions, CHANGES_KEPT,
};
use crate::store::StoreError;

/// Presence kept by the embedded store.
#[derive(Default)]
pub(super) struct PresenceState {
    rooms: HashMap<RoomName, RoomPresence>,
    /// Nodes that report presence.
    nodes: HashSet<String>,
    /// Rooms each node holds members or subscribers in.
    node_rooms: HashMap<String, HashSet<RoomName>>,
    /// Undelivered webhook events, oldest first.
    webhooks: VecDeque<WebhookEvent>,
    /// The last webhook event's number (IDs are `<ms>-<n>`).
    webhook_seq: u64,
    /// The last webhook event each sink delivered (by number).
    delivered: HashMap<String, u64>,
    /// Each sink's lease.
    leases: HashMap<String, (String, Instant)>,
    dropped: u64,
    /// room -> when its room_vacated is due (ms).
    vacating: BTreeMap<RoomName, u64>,
}

#[derive(Default)]
struct RoomPresence {
    /// member -> (nodes holding it, info)
    members: HashMap<String, (u32, String)>,
    /// node -> members it holds here
    held: HashMap<String, HashSet<String>>,
    occupancy: HashSet<String>,
    changes: VecDeque<(u64, MemberChange)>,
    seq: u64,
}

impl RoomPresence {
    fn change(&mut self, change: MemberChange) {
        self.seq += 1;
        self.changes.push_back((self.seq, change));
        while self.changes.len() as u64 > CHANGES_KEPT {
            self.changes.pop_front();
        }
    }
}

impl PresenceState {
    fn webhook(&mut self, options: &WebhookOptions, name: &str, room: &RoomName, now_ms: u64, member: Option<Member>) {
        self.webhook_with(options, name, room, now_ms, member, None);
    }

    fn webhook_with(
        &mut self,
        options: &WebhookOptions,
        name: &str,
        room: &RoomName,
        now_ms: u64,
        member: Option<Member>,
        client: Option<ClientEvent>,
    ) {
        if !options.enabled {
            return;
        }
        while self.webhooks.len() as u64 >= options.max_pending.max(1) {
            self.webhooks.pop_front();
            self.dropped += 1;
        }
        self.webhook_seq += 1;
        let (sub, info) = match member {
            Some(m) => (Some(m.sub), serde_json::from_str(&m.info).ok()),
            None => (None, None),
        };
        self.webhooks.push_back(WebhookEvent {
            id: format!("{now_ms}-{}", self.webhook_seq),
            name: name.to_owned(),
            room: room.to_string(),
            time_ms: now_ms,
            sub,
            info,
            client,
        });
    }

    /// One room's report from `node`: whether its members changed.
    fn apply(&mut self, node: &str, report: &RoomReport, options: &WebhookOptions, now_ms: u64) -> bool {
        let room = &report.room;
        let mut hooks: Vec<(&'static str, Option<Member>)> = Vec::new();
        let mut changed = false;
        let entry = self.rooms.entry(room.clone()).or_default();
        let mut occupied_now = false;
        if report.occupied == Some(true) && entry.occupancy.insert(node.to_owned()) && entry.occupancy.len() == 1 {
            occupied_now = true;
        }
        let mut left: Vec<String> = report.left.clone();
        if report.full {
            let named: HashSet<&str> = report.joined.iter().map(|m| m.sub.as_str()).collect();
            if let Some(held) = entry.held.get(node) {
                left.extend(held.iter().filter(|s| !named.contains(s.as_str())).cloned());
            }
        }
        for m in &report.joined {
            let newly_held = entry.held.entry(node.to_owned()).or_default().insert(m.sub.clone());
            let record = entry.members.entry(m.sub.clone()).or_insert((0, m.info.clone()));
            if newly_held {
                record.0 += 1;
            }
            if newly_held && record.0 == 1 {
                record.1 = m.info.clone();
                entry.change(MemberChange::Joined(m.clone()));
                hooks.push(("member_joined", Some(m.clone())));
                changed = true;
            } else if record.1 != m.info {
                record.1 = m.info.clone();
                entry.change(MemberChange::Joined(m.clone()));
                changed = true;
            }
        }
        for sub in &left {
            let held = entry.held.get_mut(node).is_some_and(|h| h.remove(sub));
            if !held {
                continue;
            }
            let gone = match entry.members.get_mut(sub) {
                Some(record) => {
                    record.0 = record.0.saturating_sub(1);
                    record.0 == 0
                }
                None => false,
            };
            if gone {
                let info = entry.members.remove(sub).map(|(_, info)| info).unwrap_or_else(|| "{}".into());
                entry.change(MemberChange::Left(sub.clone()));
                hooks.push(("member_left", Some(Member { sub: sub.clone(), info })));
                changed = true;
            }
        }
        if entry.held.get(node).is_some_and(HashSet::is_empty) {
            entry.held.remove(node);
        }
        let mut vacated_now = false;
        if report.occupied == Some(false) && entry.occupancy.remove(node) && entry.occupancy.is_empty() {
            vacated_now = true;
        }
        let holds = entry.held.contains_key(node) || entry.occupancy.contains(node);
        let unused = entry.members.is_empty() && entry.occupancy.is_empty() && entry.held.is_empty();
        if unused && entry.changes.is_empty() {
            self.rooms.remove(room);
        }
        let rooms = self.node_rooms.entry(node.to_owned()).or_default();
        if holds {
            rooms.insert(room.clone());
        } else {
            rooms.remove(room);
        }
        if occupied_now && self.vacating.remove(room).is_none() {
            self.webhook(options, "room_occupied", room, now_ms, None);
        }
        for (name, member) in hooks {
            self.webhook(options, name, room, now_ms, member);
        }
        if vacated_now && options.enabled {
            self.vacating.insert(room.clone(), now_ms + options.vacate_delay.as_millis() as u64);
        }
        changed
    }
}

#[async_trait]
impl PresenceLog for MemoryStore {
    async fn report_presence(
        &self,
        node: &str,
        reports: &[RoomReport],
        webhooks: &WebhookOptions,
        now_ms: u64,
    ) -> Result<Reported, StoreError> {
        let mut inner = lock(&self.inner);
        let state = &mut inner.presence;
        let full = reports.iter().any(|r| r.full);
        if !full && !state.nodes.contains(node) {
            return Ok(Reported::Resync);
        }
        state.nodes.insert(node.to_owned());
        let mut changed = Vec::new();
        for report in reports {
            if state.apply(node, report, webhooks, now_ms) {
                changed.push(report.room.clone());
            }
        }
        Ok(Reported::Applied(changed))
    }

    async fn members(&self, room: &RoomName) -> Result<Members, StoreError> {
        let inner = lock(&self.inner);
        let Some(entry) = inner.presence.rooms.get(room) else {
            return Ok(Members::default());
        };
        Ok(Members {
            members: entry
                .members
                .iter()
                .map(|(sub, (_, info))| Member { sub: sub.clone(), info: info.clone() })
                .collect(),
            at: ChangePos { seq: entry.seq, cursor: entry.seq.to_string() },
        })
    }

    async fn member_count(&self, room: &RoomName) -> Result<u64, StoreError> {
        Ok(lock(&self.inner).presence.rooms.get(room).map_or(0, |e| e.members.len() as u64))
    }

    async fn member_changes(
        &self,
        room: &RoomName,
        at: &ChangePos,
    ) -> Result<Option<(Vec<MemberChange>, ChangePos)>, StoreError> {
        let inner = lock(&self.inner);
        let seq = inner.presence.rooms.get(room).map_or(0, |e| e.seq);
        if seq == at.seq {
            return Ok(Some((Vec::new(), at.clone())));
        }
        let Some(entry) = inner.presence.rooms.get(room).filter(|_| seq > at.seq) else {
            return Ok(None);
        };
        if entry.changes.front().is_none_or(|(n, _)| *n > at.seq + 1) {
            return Ok(None);
        }
        let changes = entry.changes.iter().filter(|(n, _)| *n > at.seq).map(|(_, c)| c.clone()).collect();
        Ok(Some((changes, ChangePos { seq, cursor: seq.to_string() })))
    }

    async fn presence_nodes(&self) -> Result<HashSet<String>, StoreError> {
        Ok(lock(&self.inner).presence.nodes.clone())
    }

    async fn occupied_rooms(&self, prefix: &str) -> Result<Vec<RoomName>, StoreError> {
        let inner = lock(&self.inner);
        let mut rooms: Vec<RoomName> = inner
            .presence
            .rooms
            .iter()
            .filter(|(room, p)| !p.occupancy.is_empty() && room.as_str().starts_with(prefix))
            .map(|(room, _)| room.clone())
            .collect();
        rooms.sort();
        Ok(rooms)
    }

    async fn forget_presence(
        &self,
        node: &str,
        webhooks: &WebhookOptions,
        now_ms: u64,
    ) -> Result<Vec<RoomName>, StoreError> {
        let mut inner = lock(&self.inner);
        let state = &mut inner.presence;
        let rooms = state.node_rooms.remove(node).unwrap_or_default();
        let mut changed = Vec::new();
        for room in rooms {
            let empty = RoomReport { room, joined: Vec::new(), left: Vec::new(), occupied: Some(false), full: true };
            if state.apply(node, &empty, webhooks, now_ms) {
                changed.push(empty.room);
            }
        }
        state.node_rooms.remove(node);
        state.nodes.remove(node);
        Ok(changed)
    }

    async fn record_client_event(
        &self,
        webhooks: &WebhookOptions,
        room: &RoomName,
        event: ClientEvent,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        lock(&self.inner).presence.webhook_with(webhooks, "client_event", room, now_ms, None, Some(event));
        Ok(())
    }

    async fn webhook_lease(&self, sink: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        match inner.presence.leases.get(sink) {
            Some((h, until)) if h != holder && *until > now => Ok(false),
            _ => {
                inner.presence.leases.insert(sink.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn vacate_due(&self, webhooks: &WebhookOptions, now_ms: u64) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let state = &mut inner.presence;
        let due: Vec<RoomName> =
            state.vacating.iter().filter(|(_, at)| **at <= now_ms).map(|(r, _)| r.clone()).collect();
        for room in due {
            state.vacating.remove(&room);
            if state.rooms.get(&room).is_none_or(|e| e.occupancy.is_empty()) {
                state.webhook(webhooks, "room_vacated", &room, now_ms, None);
            }
        }
        Ok(())
    }

    async fn webhook_pending(&self, sink: &str, max: usize) -> Result<(Vec<WebhookEvent>, u64), StoreError> {
        let mut inner = lock(&self.inner);
        let state = &mut inner.presence;
        let delivered = state.delivered.get(sink).copied().unwrap_or(0);
        let events = state.webhooks.iter().filter(|e| number(&e.id) > delivered).take(max).cloned().collect();
        Ok((events, std::mem::take(&mut state.dropped)))
    }

    async fn webhook_delivered(
        &self,
        sink: &str,
        sinks: &[&str],
        holder: &str,
        last_id: &str,
    ) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        let state = &mut inner.presence;
        if state.leases.get(sink).is_none_or(|(h, _)| h != holder) {
            return Ok(false);
        }
        let mine = state.delivered.entry(sink.to_owned()).or_insert(0);
        *mine = (*mine).max(number(last_id));
        // Every sink's cursor bounds what may go (one that delivered
        // nothing yet holds everything).
        let upto = sinks.iter().map(|s| state.delivered.get(*s).copied().unwrap_or(0)).min().unwrap_or(0);
        while state.webhooks.front().is_some_and(|e| number(&e.id) <= upto) {
            state.webhooks.pop_front();
        }
        Ok(true)
    }
}

/// A memory webhook ID's number.
fn number(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}
