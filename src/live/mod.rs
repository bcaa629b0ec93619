//! The live audience: viewer counts pushed to those who asked, and
//! reactions aggregated across nodes into a few frames per second.
//!
//! One task per node runs in windows of [`WINDOW`]. Each window it writes
//! the reactions its viewers sent as one note to the store's shared live
//! log, reads every node's notes since its last read, and sends each of its
//! rooms one `reactions` frame with the sums. Every [`AUDIENCE_EVERY`]
//! windows it also reports the local counts that changed (and that it is
//! alive), and pushes each watched room's audience if it changed. Redis work
//! follows change: a node with 20,000 idle rooms writes nothing per room.
//! See `docs/architecture.md`, "Live audience".

mod table;
mod tally;

pub use self::tally::{Count, Tally, Top, MAX_KEYS_PER_WINDOW, MAX_KEYS_TRACKED};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use self::table::AudienceTable;
use crate::hub::{Audience, Hub, Notice};
use crate::moderation::Moderation;
use crate::presence::Presence;
use crate::protocol::{ReactionKey, RoomName, ServerFrame};
use crate::store::live_log::NOTES_PER_READ;
use crate::store::{LiveNote, NoteCursor, Store, StoreError};

/// One reaction window: how often reactions are combined and sent.
pub const WINDOW: Duration = Duration::from_millis(250);
/// Windows per audience round: counts are pushed at most every 2 s.
pub const AUDIENCE_EVERY: u64 = 8;
/// Windows per presence round: presence frames go out at most once a second.
pub const PRESENCE_EVERY: u64 = 4;
/// How long a node counts as alive after its last audience round.
pub const PRESENCE_TTL: Duration = Duration::from_secs(6);
/// Notes of reactions one node writes per window at most (each at most
/// `MAX_NOTE_BYTES`): what one node's viewers can make the shared log
/// carry, however many rooms they react in (past it, counted and dropped).
const REACTION_NOTES_PER_WINDOW: usize = 4;
/// Note reads per window at most (each up to `NOTES_PER_READ`).
const READS_PER_WINDOW: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the node's connections share with its live-audience task: the
/// reactions its viewers sent in the current window, and each room's
/// audience as last pushed.
#[derive(Debug, Default)]
pub struct Live {
    /// Reactions counted on this node since the last window closed.
    reactions: Mutex<Tally>,
    /// Each room's audience as last pushed to its watchers (rooms with
    /// local subscribers only; pruned every audience round).
    pushed: Mutex<HashMap<RoomName, u64>>,
}

impl Live {
    /// Counts one reaction in this node's current window (`new_reactor`:
    /// its viewer's first with this key lately); `false` when the window
    /// already tracks as many distinct keys for the room as allowed.
    pub fn react(&self, room: &RoomName, key: &ReactionKey, new_reactor: bool) -> bool {
        lock(&self.reactions).add(room, key, new_reactor)
    }

    /// The room's audience as last pushed, if one was: a new watcher gets
    /// it at once.
    pub fn known_audience(&self, room: &RoomName) -> Option<u64> {
        lock(&self.pushed).get(room).copied()
    }

    /// Closes the current reaction window and returns what it counted.
    fn take_reactions(&self) -> Tally {
        std::mem::take(&mut *lock(&self.reactions))
    }

    /// Pushes `room`'s audience to its watchers if it changed (or was never
    /// pushed).
    fn push_audience(&self, hub: &Hub, room: &RoomName, count: u64) {
        if lock(&self.pushed).insert(room.clone(), count) == Some(count) {
            return;
        }
        let notice = Arc::new(Notice::new(room.clone(), ServerFrame::Audience { room: room.clone(), count }));
        hub.offer(room, &notice, Audience::Watchers);
    }

    /// Forgets what was pushed for rooms no longer held here.
    fn retain_pushed(&self, held: &HashMap<RoomName, usize>) {
        lock(&self.pushed).retain(|room, _| held.contains_key(room));
    }
}

/// Sends every local subscriber of `room` one window of reactions.
fn push_reactions(hub: &Hub, room: &RoomName, counts: BTreeMap<ReactionKey, u64>) {
    let notice = Arc::new(Notice::new(room.clone(), ServerFrame::Reactions { room: room.clone(), counts }));
    if hub.offer(room, &notice, Audience::Everyone) {
        metrics::counter!("roomcast_reaction_frames_total").increment(1);
    }
}

/// What the live-audience task works with.
pub struct Parts {
    /// Shared with the node's connections.
    pub live: Arc<Live>,
    /// The node's rooms and subscribers.
    pub hub: Arc<Hub>,
    /// Where counts, notes and members are kept.
    pub store: Arc<dyn Store>,
    /// Acts on the moderators' signals the log carries.
    pub moderation: Arc<Moderation>,
    /// Who is in each room.
    pub presence: Presence,
    /// This node's name in the deployment.
    pub node: String,
}

/// Starts the node's live-audience task; it runs until `shutdown`, then
/// withdraws this node's counts and members.
pub fn spawn(parts: Parts, shutdown: CancellationToken, tracker: &TaskTracker) {
    let mut live = LiveTask::new(parts);
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => live.window().await,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), live.withdraw()).await;
    });
}

/// The task's state between windows.
struct LiveTask {
    shared: Arc<Live>,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    /// Acts on the moderators' signals the log carries.
    moderation: Arc<Moderation>,
    /// Who is in each room, reported and pushed once a second.
    presence: Presence,
    node: String,
    /// Where this node stands in the live log (`None` until first read).
    cursor: Option<NoteCursor>,
    /// The local counts the store holds for this node.
    reported: HashMap<RoomName, usize>,
    /// The store connection the counts were reported over: a new one may
    /// be a new (empty) server, so everything is reported and loaded again.
    generation: Option<u64>,
    table: AudienceTable,
    live_nodes: HashSet<String>,
    /// Reactions read from the log this window, to send.
    combined: Tally,
    windows: u64,
    /// Whether the last store call failed (to warn once per outage).
    failing: bool,
}

impl LiveTask {
    fn new(parts: Parts) -> Self {
        let Parts { live: shared, hub, store, moderation, presence, node } = parts;
        LiveTask {
            shared,
            hub,
            store,
            moderation,
            presence,
            node,
            cursor: None,
            reported: HashMap::new(),
            generation: None,
            table: AudienceTable::default(),
            live_nodes: HashSet::new(),
            combined: Tally::default(),
            windows: 0,
            failing: false,
        }
    }

    /// One window: write ours, read everyone's, send the sums; every
    /// [`AUDIENCE_EVERY`] windows, an audience round.
    async fn window(&mut self) {
        let outcome = async {
            self.write_reactions().await?;
            self.read_notes().await?;
            self.send_reactions();
            if self.windows % AUDIENCE_EVERY == 0 {
                self.audience_round().await?;
            }
            if self.windows % PRESENCE_EVERY == 0 {
                self.presence_round().await?;
            } else {
                self.presence.flush();
            }
            Ok::<_, StoreError>(())
        }
        .await;
        self.windows += 1;
        match outcome {
            Ok(()) if self.failing => {
                self.failing = false;
                info!("live audience: the store answers again");
            }
            Ok(()) => {}
            Err(e) => {
                if !self.failing {
                    warn!(cause = %e, "live audience: the store did not answer; counts and reactions wait");
                }
                self.failing = true;
            }
        }
    }

    /// Writes the reactions this node counted in the window as one note.
    /// A window the store refuses is lost (and counted): reactions are
    /// moments, not data.
    async fn write_reactions(&mut self) -> Result<(), StoreError> {
        let tally = self.shared.take_reactions();
        if tally.is_empty() {
            return Ok(());
        }
        // Each room's most popular keys only: junk keys neither crowd out
        // honest ones nor fill the log.
        let (top, past_the_cap) = tally.into_top();
        metrics::counter!("roomcast_reactions_dropped_total", "reason" => "keys").increment(past_the_cap);
        let mut note = LiveNote { node: self.node.clone(), ..LiveNote::default() };
        for (room, keys) in top {
            let room = room.to_string();
            note.reactions.insert(room.clone(), keys.iter().map(|(k, c)| (k.to_string(), c.n)).collect());
            note.reactors.insert(room, keys.iter().map(|(k, c)| (k.to_string(), c.reactors)).collect());
        }
        let sum = |note: &LiveNote| note.reactions.values().flat_map(|keys| keys.values()).sum::<u64>();
        let total = sum(&note);
        let mut written = 0;
        for part in note.split().into_iter().take(REACTION_NOTES_PER_WINDOW) {
            let n = sum(&part);
            self.store.append_note(&part).await.inspect_err(|_| {
                metrics::counter!("roomcast_reactions_dropped_total", "reason" => "store").increment(total - written);
            })?;
            written += n;
        }
        metrics::counter!("roomcast_reactions_dropped_total", "reason" => "bytes").increment(total - written);
        Ok(())
    }

    /// Reads every node's notes since the last read: reactions for rooms
    /// with local subscribers are combined, audience counts applied.
    async fn read_notes(&mut self) -> Result<(), StoreError> {
        for _ in 0..READS_PER_WINDOW {
            let (notes, cursor) = self.store.read_notes(self.cursor.as_ref()).await?;
            let first = self.cursor.is_none();
            self.cursor = Some(cursor);
            let full = notes.len() >= NOTES_PER_READ;
            for note in notes {
                self.apply(note);
            }
            if first || !full {
                break;
            }
        }
        Ok(())
    }

    fn apply(&mut self, note: LiveNote) {
        self.moderation.apply(&note.moderation);
        self.presence.mark_changed(note.presence.iter().filter_map(|r| RoomName::parse(r).ok()));
        for (room, count) in note.audience {
            if let Ok(room) = RoomName::parse(&room) {
                self.table.apply(&note.node, &room, count);
            }
        }
        for (room_name, keys) in note.reactions {
            let Ok(room) = RoomName::parse(&room_name) else { continue };
            let reactors = note.reactors.get(&room_name);
            for (key_name, n) in keys {
                let Ok(key) = ReactionKey::parse(&key_name) else { continue };
                let reactors = reactors.and_then(|r| r.get(&key_name)).copied().unwrap_or(n);
                if !self.combined.add_n(&room, &key, Count { n, reactors }) {
                    metrics::counter!("roomcast_reactions_dropped_total", "reason" => "keys").increment(n);
                }
            }
        }
    }

    /// One `reactions` frame per room with reactions this window (rooms
    /// without local subscribers are skipped by the hub).
    fn send_reactions(&mut self) {
        let (top, past_the_cap) = std::mem::take(&mut self.combined).into_top();
        metrics::counter!("roomcast_reactions_dropped_total", "reason" => "keys").increment(past_the_cap);
        for (room, keys) in top {
            push_reactions(&self.hub, &room, keys.into_iter().map(|(k, c)| (k, c.n)).collect());
        }
    }

    /// Reports the local counts that changed, learns who is alive, and
    /// pushes every watched room's audience (the hub skips unchanged ones).
    async fn audience_round(&mut self) -> Result<(), StoreError> {
        let generation = self.store.connection_generation();
        let fresh_connection = self.generation != Some(generation);
        let now = self.hub.local_counts();
        let mut changed: Vec<(RoomName, usize)> = now
            .iter()
            .filter(|(room, count)| fresh_connection || self.reported.get(*room) != Some(*count))
            .map(|(room, count)| (room.clone(), *count))
            .collect();
        changed.extend(self.reported.keys().filter(|room| !now.contains_key(*room)).map(|room| (room.clone(), 0)));
        self.report(&changed).await?;
        self.reported = now;
        self.generation = Some(generation);
        for (room, count) in &changed {
            self.table.apply(&self.node, room, *count as u64);
        }

        self.live_nodes = self.store.live_nodes().await?;
        if fresh_connection {
            self.table.clear();
        }
        let watched = self.hub.watched_audiences();
        let missing = self.table.retain_watched(&watched);
        for (room, counts) in missing.iter().cloned().zip(self.store.audience_by_node(&missing).await?) {
            self.table.load(room, counts);
        }
        self.shared.retain_pushed(&self.reported);
        for room in self.table.rooms() {
            self.shared.push_audience(&self.hub, room, self.table.sum(room, &self.live_nodes));
        }
        Ok(())
    }

    /// Reports this node's members, pushes presence frames, and tells the
    /// other nodes which rooms' members changed.
    async fn presence_round(&mut self) -> Result<(), StoreError> {
        let changed = self.presence.round(&self.live_nodes).await?;
        if changed.is_empty() {
            return Ok(());
        }
        let presence = changed.iter().map(|room| room.to_string()).collect();
        for note in (LiveNote { node: self.node.clone(), presence, ..LiveNote::default() }).split() {
            self.store.append_note(&note).await?;
        }
        Ok(())
    }

    /// Records `changed` (and this node's liveness) and tells the others.
    async fn report(&self, changed: &[(RoomName, usize)]) -> Result<(), StoreError> {
        self.store.report_audience(&self.node, changed).await?;
        let audience = changed.iter().map(|(room, count)| (room.to_string(), *count as u64)).collect();
        for note in (LiveNote { node: self.node.clone(), audience, ..LiveNote::default() }).split() {
            self.store.append_note(&note).await?;
        }
        Ok(())
    }

    /// At shutdown: this node's viewers leave every count at once.
    async fn withdraw(&self) {
        let zeros: Vec<(RoomName, usize)> = self.reported.keys().map(|room| (room.clone(), 0)).collect();
        if let Err(e) = self.report(&zeros).await {
            warn!(cause = %e, "could not withdraw this node's audience; it expires on its own");
        }
        match self.presence.withdraw().await {
            Ok(changed) if !changed.is_empty() => {
                let presence = changed.iter().map(|room| room.to_string()).collect();
                for note in (LiveNote { node: self.node.clone(), presence, ..LiveNote::default() }).split() {
                    let _ = self.store.append_note(&note).await;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(cause = %e, "could not withdraw this node's members; they leave when it is found gone"),
        }
    }
}
