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
    /// Members reported per room, as the store holds them from this node.
    reported: HashMap<RoomName, HashMap<Arc<str>, Arc<str>>>,
    /// Rooms reported occupied here (with webhooks on).
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
}

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
    ) -> Self {
        Presence {
            node,
            store,
            hub,
            webhooks,
            max_members,
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
        let local = self.hub.local_members();
        let mut changed = self.report(&local).await?;
        if self.rounds % DEAD_CHECK_EVERY == 0 {
            changed.extend(self.forget_dead(live_nodes).await?);
        }
        self.changed.extend(changed.iter().cloned());
        self.refresh_views().await?;
        self.push(&local);
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
                    if self.webhooks.enabled {
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
        let hooks = self.webhooks.enabled;
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
    async fn forget_dead(&self, live_nodes: &HashSet<String>) -> Result<Changed, StoreError> {
        let mut changed = Vec::new();
        if !live_nodes.contains(&self.node) {
            // Liveness not known yet (or this node's own lapsed): judge no one.
            return Ok(changed);
        }
        for node in self.store.presence_nodes().await? {
            if node == self.node || live_nodes.contains(&node) {
                continue;
            }
            let now = crate::clock::now_ms();
            let rooms = self.store.forget_presence(&node, &self.webhooks, now).await?;
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
                    self.views.insert(room, View { members, at: loaded.at, pushed });
                }
            }
        }
        Ok(())
    }

    /// Sends each watched room's watchers a snapshot (those waiting for one)
    /// or the diff since the last frame (if anything changed).
    fn push(&mut self, local: &HashMap<RoomName, LocalRoom>) {
        let max = self.max_members;
        for (room, view) in &mut self.views {
            // The deployment's members, and this node's own subscribers at
            // once (the store hears of them within the round).
            let mut now: BTreeMap<String, String> = view.members.clone().into_iter().collect();
            if let Some(l) = local.get(room) {
                for (sub, info) in &l.members {
                    now.insert(sub.to_string(), info.to_string());
                }
            }
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
            let snapshot = || {
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
            view.pushed = Some(now);
        }
    }
}
