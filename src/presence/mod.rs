//! Presence: who is in each room, across the deployment.
//!
//! Once a second ([`Presence::round`], run by the live-audience task) the
//! node compares its rooms' local members (one per subject, however many
//! connections) with what it last reported, and reports only the
//! difference, one store step per changed room: a show whose 100,000
//! viewers come and go costs each node one step per room per second, not
//! one per viewer. The store decides who joined or left the deployment as
//! a whole and logs it per room; nodes with presence watchers keep a view
//! of each watched room (loaded once, then read on from its change log
//! when the live log says the room changed) and send their watchers a
//! snapshot, then at most one diff a second, only when something changed.
//! A dead node's members are removed by whichever node notices first.
//! See `docs/architecture.md`, "Presence".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tracing::{debug, info};

use crate::hub::{Hub, LocalRoom, Notice};
use crate::protocol::{PresenceMember, RoomName, ServerFrame};
use crate::store::presence::{ChangePos, Member, MemberChange, Reported, RoomReport, WebhookOptions};
use crate::store::{Store, StoreError};

/// Rounds between checks for dead nodes' members.
const DEAD_CHECK_EVERY: u64 = 2;
/// Rounds between reads of every watched room, whatever the live log said
/// (a note lost to the log's bound costs at most this many seconds).
const SWEEP_EVERY: u64 = 10;

/// What a node's presence rounds keep between them.
pub struct Presence {
    node: String,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    webhooks: WebhookOptions,
    max_members: usize,
    /// Whether each room's occupancy is reported (for webhooks, and for
    /// the Pusher API's channel lists).
    occupancy: bool,
    /// Members reported per room, as the store holds them from this node.
    reported: HashMap<RoomName, HashMap<Arc<str>, Arc<str>>>,
    /// Rooms reported occupied here (with occupancy on).
    occupied: HashSet<RoomName>,
    /// The next report is in full (a new store connection, or the store
    /// forgot this node).
    resync: bool,
    generation: Option<u64>,
    /// Watched rooms' members as the deployment sees them.
    views: HashMap<RoomName, View>,
    /// Rooms whose members changed lately (the live log, or our report).
    changed: HashSet<RoomName>,
    rounds: u64,
}

/// A watched room: its members and what its watchers were last sent.
struct View {
    members: HashMap<String, String>,
    at: ChangePos,
    /// The members as last sent (sorted, so frames list them in order).
    pushed: Option<BTreeMap<String, String>>,
    /// The members as of the last round, waiting for [`MIN_GAP`] to pass.
    due: Option<BTreeMap<String, String>>,
    /// When the room's watchers were last sent a frame.
    last_push: Option<Instant>,
}

/// The shortest time between two presence frames of one room.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// The rooms a round found changed, for the live log.
pub type Changed = Vec<RoomName>;

fn member(sub: &str, info: &str) -> PresenceMember {
    PresenceMember { sub: sub.to_owned(), info: serde_json::from_str(info).unwrap_or_else(|_| serde_json::json!({})) }
}

/// The first `max` members by subject, as frames and the HTTP API list them.
pub fn listed<'a>(members: impl Iterator<Item = (&'a str, &'a str)>, max: usize) -> Vec<PresenceMember> {
    let sorted: BTreeMap<&str, &str> = members.collect();
    sorted.into_iter().take(max).map(|(sub, info)| member(sub, info)).collect()
}

impl Presence {
    /// A node's presence, reported as `node`.
    pub fn new(
        node: String,
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        webhooks: WebhookOptions,
        max_members: usize,
        occupancy: bool,
    ) -> Self {
        Presence {
            node,
            store,
            hub,
            webhooks,
            max_members,
            occupancy: occupancy || webhooks.enabled,
            reported: HashMap::new(),
            occupied: HashSet::new(),
            resync: true,
            generation: None,
            views: HashMap::new(),
            changed: HashSet::new(),
            rounds: 0,
        }
    }

    /// The live log says these rooms' members changed.
    pub fn mark_changed(&mut self, rooms: impl IntoIterator<Item = RoomName>) {
        self.changed.extend(rooms);
    }

    /// One round: report, forget the dead, refresh views, push frames.
    /// Returns the rooms whose members changed by this node's doing.
    pub async fn round(&mut self, live_nodes: &HashSet<String>) -> Result<Changed, StoreError> {
        self.rounds += 1;
        let mut changed = Vec::new();
        if self.rounds % DEAD_CHECK_EVERY == 0 {
            let known = self.store.presence_nodes().await?;
            // Forgotten while alive (cut off longer than its liveness): the
            // store dropped what this node reported, so report it again.
            if !known.contains(&self.node) && (!self.reported.is_empty() || !self.occupied.is_empty()) {
                self.resync = true;
            }
            changed.extend(self.forget_dead(&known, live_nodes).await?);
        }
        let local = self.hub.local_members();
        changed.extend(self.report(&local).await?);
        self.changed.extend(changed.iter().cloned());
        self.refresh_views().await?;
        self.stage(&local);
        self.flush();
        Ok(changed)
    }

    /// Reports what changed here since the last report (all of it after a
    /// resync).
    async fn report(&mut self, local: &HashMap<RoomName, LocalRoom>) -> Result<Changed, StoreError> {
        let generation = self.store.connection_generation();
        if self.generation != Some(generation) {
            self.resync = true;
        }
        for _ in 0..2 {
            let reports = self.reports(local);
            if reports.is_empty() {
                self.generation = Some(generation);
                return Ok(Vec::new());
            }
            let now = crate::clock::now_ms();
            match self.store.report_presence(&self.node, &reports, &self.webhooks, now).await? {
                Reported::Applied(changed) => {
                    self.reported = local
                        .iter()
                        .filter(|(_, l)| !l.members.is_empty())
                        .map(|(room, l)| (room.clone(), l.members.clone()))
                        .collect();
                    if self.occupancy {
                        self.occupied = local.keys().cloned().collect();
                    }
                    if self.resync {
                        info!(rooms = reports.len(), "presence: reported every room in full");
                    }
                    self.resync = false;
                    self.generation = Some(generation);
                    return Ok(changed);
                }
                Reported::Resync => {
                    debug!("presence: the store does not know this node; reporting in full");
                    self.resync = true;
                }
            }
        }
        Ok(Vec::new())
    }

    /// This round's reports: per room, the members that joined or left here
    /// and whether it became occupied or empty here.
    fn reports(&self, local: &HashMap<RoomName, LocalRoom>) -> Vec<RoomReport> {
        let hooks = self.occupancy;
        let mut rooms: HashSet<&RoomName> = local.keys().collect();
        rooms.extend(self.reported.keys());
        rooms.extend(self.occupied.iter());
        let empty = HashMap::new();
        let mut reports = Vec::new();
        for room in rooms {
            let now = local.get(room).map_or(&empty, |l| &l.members);
            let before = self.reported.get(room).unwrap_or(&empty);
            let here = local.contains_key(room);
            let occupied = if self.resync {
                hooks.then_some(here)
            } else {
                (hooks && here != self.occupied.contains(room)).then_some(here)
            };
            let joined: Vec<Member> = now
                .iter()
                .filter(|(sub, info)| self.resync || before.get(*sub) != Some(*info))
                .map(|(sub, info)| Member { sub: sub.to_string(), info: info.to_string() })
                .collect();
            let left: Vec<String> = if self.resync {
                Vec::new()
            } else {
                before.keys().filter(|sub| !now.contains_key(*sub)).map(|s| s.to_string()).collect()
            };
            if self.resync || !joined.is_empty() || !left.is_empty() || occupied.is_some() {
                reports.push(RoomReport { room: room.clone(), joined, left, occupied, full: self.resync });
            }
        }
        reports
    }

    /// At shutdown: this node's members leave (and its rooms empty) at once.
    pub async fn withdraw(&self) -> Result<Changed, StoreError> {
        self.store.forget_presence(&self.node, &self.webhooks, crate::clock::now_ms()).await
    }

    /// Removes the members of nodes that report presence but are no longer
    /// alive (killed, or cut off for longer than their liveness).
    async fn forget_dead(&self, known: &HashSet<String>, live_nodes: &HashSet<String>) -> Result<Changed, StoreError> {
        let mut changed = Vec::new();
        if !live_nodes.contains(&self.node) {
            // Liveness not known yet (or this node's own lapsed): judge no one.
            return Ok(changed);
        }
        for node in known {
            if *node == self.node || live_nodes.contains(node) {
                continue;
            }
            let now = crate::clock::now_ms();
            let rooms = self.store.forget_presence(node, &self.webhooks, now).await?;
            info!(%node, rooms = rooms.len(), "presence: a node that stopped reporting is gone; its members left");
            metrics::counter!("roomcast_presence_nodes_forgotten_total").increment(1);
            changed.extend(rooms);
        }
        Ok(changed)
    }

    /// Loads views of newly watched rooms, reads on the changed ones, and
    /// forgets rooms nobody here watches.
    async fn refresh_views(&mut self) -> Result<(), StoreError> {
        let watched: HashSet<RoomName> = self.hub.watched_presence().into_iter().collect();
        self.views.retain(|room, _| watched.contains(room));
        let sweep = self.rounds % SWEEP_EVERY == 0;
        let changed = std::mem::take(&mut self.changed);
        for room in watched {
            let step = match self.views.get(&room) {
                None => None,
                Some(_) if !sweep && !changed.contains(&room) => continue,
                Some(view) => self.store.member_changes(&room, &view.at).await?,
            };
            match (step, self.views.get_mut(&room)) {
                (Some((changes, at)), Some(view)) => {
                    for change in changes {
                        match change {
                            MemberChange::Joined(m) => {
                                view.members.insert(m.sub, m.info);
                            }
                            MemberChange::Left(sub) => {
                                view.members.remove(&sub);
                            }
                        }
                    }
                    view.at = at;
                }
                _ => {
                    // New here, or the log no longer reaches back: load.
                    let loaded = self.store.members(&room).await?;
                    let members = loaded.members.into_iter().map(|m| (m.sub, m.info)).collect();
                    let pushed = self.views.remove(&room).and_then(|v| v.pushed);
                    self.views.insert(room, View { members, at: loaded.at, pushed, due: None, last_push: None });
                }
            }
        }
        Ok(())
    }

    /// Notes each watched room's members as of this round: the deployment's
    /// (the view) and this node's own subscribers at once (the store hears
    /// of them within the round, and a watcher is in its own snapshot).
    fn stage(&mut self, local: &HashMap<RoomName, LocalRoom>) {
        for (room, view) in &mut self.views {
            let mut now: BTreeMap<String, String> = view.members.clone().into_iter().collect();
            if let Some(l) = local.get(room) {
                for (sub, info) in &l.members {
                    now.insert(sub.to_string(), info.to_string());
                }
            }
            view.due = Some(now);
        }
    }

    /// Sends each watched room's watchers what is due, once [`MIN_GAP`]
    /// passed since the room's last frame: a snapshot to those waiting for
    /// one, the diff since the last frame (if anything changed) to the
    /// others. Called every live window, so a room held back by the gap
    /// goes out within a window of it.
    pub fn flush(&mut self) {
        let max = self.max_members;
        for (room, view) in &mut self.views {
            if view.last_push.is_some_and(|at| at.elapsed() < MIN_GAP) {
                continue;
            }
            let Some(now) = view.due.take() else { continue };
            let count = now.len() as u64;
            let diff = view.pushed.as_ref().and_then(|before| {
                let joined: Vec<PresenceMember> = now
                    .iter()
                    .filter(|(sub, info)| before.get(*sub) != Some(*info))
                    .map(|(sub, info)| member(sub, info))
                    .collect();
                let left: Vec<String> = before.keys().filter(|sub| !now.contains_key(*sub)).cloned().collect();
                if joined.is_empty() && left.is_empty() {
                    return None;
                }
                let truncated = count > max as u64 || joined.len() > max || left.len() > max;
                let frame = ServerFrame::PresenceDiff {
                    room: room.clone(),
                    joined: joined.into_iter().take(max).collect(),
                    left: left.into_iter().take(max).collect(),
                    count,
                    members_truncated: truncated,
                };
                Some(Arc::new(Notice::new(room.clone(), frame)))
            });
            let mut snapshot_sent = false;
            let snapshot = || {
                snapshot_sent = true;
                let frame = ServerFrame::Presence {
                    room: room.clone(),
                    members: listed(now.iter().map(|(s, i)| (s.as_str(), i.as_str())), max),
                    count,
                    members_truncated: count > max as u64,
                };
                Arc::new(Notice::new(room.clone(), frame))
            };
            self.hub.offer_presence(room, snapshot, diff.as_ref());
            if diff.is_some() {
                metrics::counter!("roomcast_presence_diffs_total").increment(1);
            }
            if diff.is_some() || snapshot_sent {
                view.last_push = Some(Instant::now());
            }
            view.pushed = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::hub::outbox::{Item, Outbox, OutboxLimits, OutboxReceiver};
    use crate::hub::{RoomFlags, Subscriber, PRESENCE_WANTED};
    use crate::store::feed::Feed;
    use crate::store::memory::MemoryStore;
    use crate::store::{PresenceLog, StoreOptions};

    fn store() -> Arc<MemoryStore> {
        let options = StoreOptions {
            history: 10,
            room_ttl: Duration::from_secs(600),
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 10,
        };
        Arc::new(MemoryStore::new(options))
    }

    /// Joins connection `conn` of `sub` to `room` on `hub`; its receiver.
    async fn join(hub: &Hub, room: &RoomName, conn: u64, sub: &str, watch: bool) -> OutboxReceiver {
        let (outbox, rx) = Outbox::new(OutboxLimits { frames: 16, bytes: 1 << 20 });
        hub.connect(conn, &outbox, Some(sub), Some(r#"{"n":1}"#));
        let flags = Arc::new(RoomFlags::default());
        if watch {
            flags.presence.store(PRESENCE_WANTED, Ordering::Relaxed);
        }
        hub.join(room, conn, Subscriber { outbox, flags, member: None }).await.unwrap();
        rx
    }

    /// The presence frames queued for a receiver.
    fn frames(rx: &mut OutboxReceiver) -> Vec<ServerFrame> {
        let mut out = Vec::new();
        while let Some(item) = rx.try_recv() {
            if let Item::Notice(n) = item {
                out.push(n.frame().clone());
            }
        }
        out
    }

    fn subs(members: &[PresenceMember]) -> Vec<&str> {
        members.iter().map(|m| m.sub.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_send_a_snapshot_then_only_what_changed_across_nodes() {
        let store = store();
        let room = RoomName::parse("r").unwrap();
        // Two nodes on one store, each with its own hub.
        let (hub_a, hub_b) = (Hub::new(Feed::unattended(store.clone())), Hub::new(Feed::unattended(store.clone())));
        let off = WebhookOptions::default();
        let mut a = Presence::new("a".into(), store.clone(), hub_a.clone(), off, 2, false);
        let mut b = Presence::new("b".into(), store.clone(), hub_b.clone(), off, 2, false);
        let live: HashSet<String> = ["a".to_owned(), "b".to_owned()].into();
        let mut watcher = join(&hub_a, &room, 1, "host", true).await;
        let _ann_1 = join(&hub_b, &room, 2, "ann", false).await;
        let _ann_2 = join(&hub_b, &room, 3, "ann", false).await;
        b.round(&live).await.unwrap();
        a.round(&live).await.unwrap();
        let got = frames(&mut watcher);
        let [ServerFrame::Presence { members, count, members_truncated, .. }] = &got[..] else {
            panic!("one snapshot first: {got:?}")
        };
        assert_eq!((subs(members), *count, *members_truncated), (vec!["ann", "host"], 2, false));
        assert_eq!(members[0].info, serde_json::json!({"n": 1}));
        // Nothing changed: nothing sent.
        tokio::time::advance(MIN_GAP).await;
        b.round(&live).await.unwrap();
        a.round(&live).await.unwrap();
        assert!(frames(&mut watcher).is_empty());
        // A change within a second of the last frame waits for the second.
        let _dee = join(&hub_a, &room, 6, "dee", false).await;
        a.round(&live).await.unwrap();
        let got = frames(&mut watcher);
        assert_eq!(got.len(), 1, "sent at once: the last frame was a second ago");
        let _eve = join(&hub_a, &room, 7, "eve", false).await;
        a.round(&live).await.unwrap();
        a.flush();
        assert!(frames(&mut watcher).is_empty(), "held back: {:?}", frames(&mut watcher));
        tokio::time::advance(MIN_GAP / 2).await;
        a.flush();
        assert!(frames(&mut watcher).is_empty());
        tokio::time::advance(MIN_GAP / 2).await;
        a.flush();
        let got = frames(&mut watcher);
        let [ServerFrame::PresenceDiff { joined, .. }] = &got[..] else { panic!("one diff: {got:?}") };
        assert_eq!(subs(joined), vec!["eve"]);
        hub_a.leave(&room, 6).await;
        hub_a.leave(&room, 7).await;
        tokio::time::advance(MIN_GAP).await;
        a.round(&live).await.unwrap();
        assert_eq!(frames(&mut watcher).len(), 1, "dee and eve left");
        tokio::time::advance(MIN_GAP).await;
        // One of ann's tabs goes: she stays. Two more join: past the cap of 2.
        hub_b.leave(&room, 2).await;
        let _bob = join(&hub_b, &room, 4, "bob", false).await;
        let _cy = join(&hub_b, &room, 5, "cy", false).await;
        let changed = b.round(&live).await.unwrap();
        assert_eq!(changed, vec![room.clone()]);
        a.mark_changed(changed);
        a.round(&live).await.unwrap();
        let got = frames(&mut watcher);
        let [ServerFrame::PresenceDiff { joined, left, count, members_truncated, .. }] = &got[..] else {
            panic!("one diff: {got:?}")
        };
        assert_eq!((subs(joined), left.len(), *count, *members_truncated), (vec!["bob", "cy"], 0, 4, true));
        // Node b dies: a forgets it, and its members leave.
        let only_a: HashSet<String> = ["a".to_owned()].into();
        tokio::time::advance(MIN_GAP).await;
        a.round(&only_a).await.unwrap();
        a.round(&only_a).await.unwrap();
        let got = frames(&mut watcher);
        let [ServerFrame::PresenceDiff { left, count, members_truncated, .. }] = &got[..] else {
            panic!("one diff: {got:?}")
        };
        // Three left; the diff lists two (the cap) and says so.
        assert_eq!((left.clone(), *count, *members_truncated), (vec!["ann".to_owned(), "bob".to_owned()], 1, true));
        // b comes back: it finds itself forgotten and reports in full.
        b.round(&live).await.unwrap();
        b.round(&live).await.unwrap();
        assert_eq!(store.member_count(&room).await.unwrap(), 4);
    }
}
