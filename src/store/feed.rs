//! The live feed: one loop per node that follows exactly the rooms with local
//! subscribers and hands each room's new events to the hub.
//!
//! The loop is the same for both stores. A store's [`ChangeSource`] says
//! which rooms may have changed (Redis: signal streams written by the publish
//! script; memory: an in-process set), and [`Store::read_many`] reads them
//! from the positions this loop tracks. The loop never asks the store for
//! "whatever is new" (`$`): positions are always explicit IDs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use futures::StreamExt;
use tokio::time::Instant;

use super::coalesce::{Coalescing, Window};
use super::{Change, EventLog, Incarnation, Position, Store, StoreError};
use crate::backoff::Backoff;
use crate::protocol::{Event, EventId, RoomName};

/// Most rooms read in one `read_many` call (Redis spends ~1.5 µs per key).
const ROOMS_PER_READ: usize = 256;
/// Most events read per room per call.
const EVENTS_PER_ROOM: usize = 512;
/// Rooms checked at once after the store's incarnation changed.
const RECOVERY_READS: usize = 32;
/// Bound on queued watch/unwatch commands.
const COMMAND_QUEUE: usize = 4096;
/// How long one wait for changes may block before the loop looks around.
const WAIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Rooms nobody wants are dropped this often.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// The store's incarnations are compared this often, besides after every
/// reconnection (which is how a restart or failover shows): this catches
/// keys deleted on a live server. On a cluster it is one small script per
/// watched bucket, so not every sweep.
const CHECK_EVERY: Duration = Duration::from_secs(15);
/// Every watched room is re-read this often, whatever the signals said: a
/// last backstop. Change sources report lost signals themselves (a full
/// mailbox page names every watched room of its bucket), and reconnections
/// and incarnation changes re-read everything, so this is rarely needed;
/// it is slow because at 20,000 rooms a re-read every 5 s cost a node 16%
/// of a core and delayed live delivery.
const REREAD_EVERY: Duration = Duration::from_secs(30);

/// Receives each room's new events, in ID order.
pub trait FeedSink: Send + Sync + 'static {
    /// Called with one or more new events of `room`.
    fn deliver(&self, room: &RoomName, events: Vec<Event>);
    /// The store may have lost events of `room` that nobody here saw. Every
    /// subscriber must be told (a `gap` after its cursor) before the room's
    /// next events; cursors stay where they are.
    fn lost(&self, room: &RoomName);
    /// Whether this life (`generation`) of `room` still has local subscribers;
    /// the feed drops rooms nobody wants at its periodic sweep.
    fn wants(&self, room: &RoomName, generation: u64) -> bool;
}

/// Something that makes a waiting [`ChangeSource::wait`] return promptly.
pub trait Wake: Send + Sync + 'static {
    /// Fire-and-forget; a lost wake costs latency (up to the wait timeout), never events.
    fn wake(&self);
}

/// Tells the feed loop which rooms may have new events.
#[async_trait]
pub trait ChangeSource: Send + 'static {
    /// Starts listening for `room`'s changes. Takes effect at the next
    /// [`prepare`](ChangeSource::prepare).
    fn watch(&mut self, room: &RoomName);
    /// Stops listening for `room`'s changes.
    fn unwatch(&mut self, room: &RoomName);
    /// Makes pending `watch`es effective: after it returns, every change to
    /// a watched room is reported by a later `wait`.
    async fn prepare(&mut self) -> Result<(), StoreError>;
    /// Waits up to `timeout` and returns the rooms that may have changed
    /// (possibly including unwatched ones, which the loop ignores).
    async fn wait(&mut self, timeout: Duration) -> Result<Vec<RoomName>, StoreError>;
    /// A handle that interrupts a `wait`, for newly watched rooms.
    fn waker(&self) -> Arc<dyn Wake>;
}

enum Command {
    Watch(RoomName, u64, EventId),
    Unwatch(RoomName, u64),
}

/// What the loop knows of one followed room.
struct Followed {
    /// The hub's generation of the room, to ignore stale unwatches.
    generation: u64,
    /// Last ID read (and handed to the hub).
    position: EventId,
}

/// The node's handle on its feed loop: made before the loop runs (the hub
/// holds it from its start), and cheap to clone.
#[derive(Clone)]
pub struct Feed {
    commands: mpsc::Sender<Command>,
    waker: Arc<dyn Wake>,
    log: Arc<dyn EventLog>,
    /// Turns true once the loop's first look at the store succeeded.
    live: watch::Receiver<bool>,
}

/// The feed loop, built but not running yet (see [`Feed::new`]).
pub struct FeedRunner {
    feed: FeedLoop,
}

impl Feed {
    /// A feed over `store` fed by `source`: its handle, and the loop to
    /// start with [`FeedRunner::spawn`] once its sink exists.
    pub fn new(store: Arc<dyn Store>, source: Box<dyn ChangeSource>, coalesce: Coalescing) -> (Feed, FeedRunner) {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let (live, live_rx) = watch::channel(false);
        let feed = Feed { commands, waker: source.waker(), log: store.clone(), live: live_rx };
        let now = Instant::now();
        let runner = FeedRunner {
            feed: FeedLoop {
                store,
                source,
                commands: rx,
                window: Window::new(coalesce),
                followed: HashMap::new(),
                pending: HashSet::new(),
                incarnations: None,
                seen_generation: u64::MAX,
                failing: false,
                live,
                last_sweep: now,
                last_check: now,
                last_reread: now,
                delivered_at: None,
            },
        };
        (feed, runner)
    }

    /// A handle with no loop behind it, as if the store answered: rooms are
    /// anchored, nothing is read. For tests of what sits above the feed,
    /// which hand batches to the hub themselves.
    #[cfg(test)]
    pub(crate) fn unattended(log: Arc<dyn EventLog>) -> Feed {
        struct Nobody;
        impl Wake for Nobody {
            fn wake(&self) {}
        }
        let (commands, _) = mpsc::channel(1);
        Feed { commands, waker: Arc::new(Nobody), log, live: watch::channel(true).1 }
    }

    /// The event log the feed reads.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Whether the loop runs: it has reached the store once. Until then the
    /// node is not ready, and no room is followed.
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// Waits up to `within` for the loop to reach the store; whether it did.
    pub async fn wait_live(&self, within: Duration) -> bool {
        let mut live = self.live.clone();
        let reached = tokio::time::timeout(within, live.wait_for(|l| *l)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Follows `room` (the hub's `generation` of it) for its first local
    /// subscriber; returns where: the room's [anchor](EventLog::anchor).
    /// Every event after it will be handed to the sink, none before it.
    pub async fn follow(&self, room: &RoomName, generation: u64) -> Result<EventId, StoreError> {
        if !self.is_live() {
            // A room joined before the loop ever reached the store would
            // not be read until it did; say so rather than wait.
            return Err(StoreError::Unavailable("the node is still connecting to its store".into()));
        }
        let from = self.log.anchor(room).await?;
        self.watch(room.clone(), generation, from).await;
        Ok(from)
    }

    /// Follows `room` from just after `from`. Takes effect promptly, even
    /// if the loop is waiting.
    pub async fn watch(&self, room: RoomName, generation: u64, from: EventId) {
        if self.commands.send(Command::Watch(room, generation, from)).await.is_ok() {
            self.waker.wake();
        }
    }

    /// Stops following `room`, unless a newer generation of it is followed.
    pub async fn unwatch(&self, room: RoomName, generation: u64) {
        // No wake: an extra read of an unwatched room is harmless.
        let _ = self.commands.send(Command::Unwatch(room, generation)).await;
    }
}

impl FeedRunner {
    /// Runs the loop, handing batches to `sink`, until `shutdown`.
    pub fn spawn(self, sink: Arc<dyn FeedSink>, shutdown: CancellationToken, tracker: &TaskTracker) {
        tracker.spawn(self.feed.run(sink, shutdown));
    }
}

/// The feed loop's state; each turn of [`FeedLoop::run`] is a few named steps.
struct FeedLoop {
    store: Arc<dyn Store>,
    source: Box<dyn ChangeSource>,
    commands: mpsc::Receiver<Command>,
    /// How long to gather after a delivery (see [`Window`]).
    window: Window,
    followed: HashMap<RoomName, Followed>,
    /// Rooms to read at the next turn.
    pending: HashSet<RoomName>,
    /// Each domain's incarnation at the last check; `None` before the first.
    incarnations: Option<Vec<Incarnation>>,
    /// The store's connection generation at the last check.
    seen_generation: u64,
    /// The last turn failed: the next one checks the store before reading.
    failing: bool,
    /// Shared with the handles: true once the store first answered.
    live: watch::Sender<bool>,
    last_sweep: Instant,
    last_check: Instant,
    last_reread: Instant,
    /// When the feed last delivered anything (see [`FeedLoop::gather`]).
    delivered_at: Option<Instant>,
}

impl FeedLoop {
    async fn run(mut self, sink: Arc<dyn FeedSink>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            self.take_commands();
            let sweep = self.sweep(&*sink);
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => break,
                outcome = self.turn(&*sink, sweep) => outcome,
            };
            match outcome {
                Ok(changed) => {
                    debug!(changed = changed.len(), followed = self.followed.len(), "feed woke");
                    backoff.reset();
                    self.pending.extend(changed.into_iter().filter(|r| self.followed.contains_key(r)));
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(cause = %e, retry_in_ms = delay.as_millis() as u64, "live feed read failed");
                    self.failing = true;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        debug!("live feed stopped");
    }

    /// One turn: check the store if due, make new watches effective, read
    /// what is pending, then wait for the next changes.
    async fn turn(&mut self, sink: &dyn FeedSink, sweep: bool) -> Result<Vec<RoomName>, StoreError> {
        self.check_store(sink, sweep).await?;
        self.source.prepare().await?;
        if !*self.live.borrow() {
            self.live.send_replace(true);
            info!("the store answers: the live feed runs");
        }
        if let Some(rest) = self.gather() {
            tokio::time::sleep(rest).await;
        }
        let busiest = self.read_pending(sink).await?;
        if busiest > 0 {
            let now = Instant::now();
            if let Some(before) = self.delivered_at {
                self.window.delivered(busiest, now - before);
            }
            self.delivered_at = Some(now);
        }
        self.source.wait(WAIT_TIMEOUT).await
    }

    /// Applies queued watch and unwatch commands.
    fn take_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Watch(room, generation, from) => {
                    match self.followed.get_mut(&room) {
                        // A new life of a room whose old life's unwatch is
                        // still queued: start from the earlier position, the
                        // subscribers' cursors drop what they already have.
                        Some(f) => {
                            f.generation = generation;
                            f.position = f.position.min(from);
                        }
                        None => {
                            self.source.watch(&room);
                            self.followed.insert(room.clone(), Followed { generation, position: from });
                        }
                    }
                    self.pending.insert(room);
                }
                Command::Unwatch(room, generation) => {
                    if self.followed.get(&room).is_some_and(|f| f.generation == generation) {
                        self.source.unwatch(&room);
                        self.followed.remove(&room);
                        self.pending.remove(&room);
                    }
                }
            }
        }
    }

    /// Drops rooms nobody wants any more, and now and then queues every
    /// followed room for a read. Returns whether the store is due a check.
    fn sweep(&mut self, sink: &dyn FeedSink) -> bool {
        if self.last_sweep.elapsed() < SWEEP_EVERY {
            return false;
        }
        let source = &mut self.source;
        self.followed.retain(|room, f| {
            let wanted = sink.wants(room, f.generation);
            if !wanted {
                source.unwatch(room);
            }
            wanted
        });
        if self.last_reread.elapsed() >= REREAD_EVERY {
            self.pending.extend(self.followed.keys().cloned());
            self.last_reread = Instant::now();
        }
        self.last_sweep = Instant::now();
        if self.last_check.elapsed() >= CHECK_EVERY {
            self.last_check = Instant::now();
            return true;
        }
        false
    }

    /// After a failure, a reconnection, or at a sweep: compares every
    /// domain's incarnation with the last check and recovers the followed
    /// rooms of domains that changed. After a reconnection or a failure,
    /// every followed room's tail is checked too: a tail below the position
    /// is a gap (the store lost writes), whatever the incarnations say.
    async fn check_store(&mut self, sink: &dyn FeedSink, sweep: bool) -> Result<(), StoreError> {
        let generation = self.store.connection_generation();
        let reconnected = generation != self.seen_generation || self.failing;
        if !reconnected && !sweep {
            return Ok(());
        }
        let domains: Vec<usize> = (0..self.store.domains()).collect();
        let now = self.store.incarnations(&domains).await?;
        self.seen_generation = generation;
        let Some(old) = self.incarnations.replace(now.clone()) else {
            self.failing = false;
            return Ok(());
        };
        // A domain without an earlier answer has nothing to compare yet.
        let changes: Vec<Change> =
            now.iter().enumerate().map(|(d, n)| old.get(d).map_or(Change::None, |o| n.since(o))).collect();
        if reconnected || changes.iter().any(|c| *c != Change::None) {
            self.recover(sink, &changes, reconnected).await?;
            if reconnected {
                info!("live feed (re)connected; every watched room checked and re-read");
            }
        }
        self.failing = false;
        Ok(())
    }

    /// Finds the followed rooms whose subscribers must be told of a possible
    /// loss, and tells them (see [`Change`]); `changes` is by domain. With
    /// `all`, rooms of unchanged domains are checked for a tail below their
    /// position too; without, they are left alone. Positions never move
    /// past what was delivered and never rewind into history that is still
    /// kept, so nobody is handed an event twice: a position only drops to
    /// the tail when the tail is below it (the history is gone, and every ID
    /// the store hands out from now on is above both).
    async fn recover(&mut self, sink: &dyn FeedSink, changes: &[Change], all: bool) -> Result<(), StoreError> {
        let store = &*self.store;
        let rooms: Vec<(RoomName, EventId, Change)> = self
            .followed
            .iter()
            .map(|(room, f)| {
                (room.clone(), f.position, changes.get(store.domain(room)).copied().unwrap_or(Change::None))
            })
            .filter(|(_, _, change)| all || *change != Change::None)
            .collect();
        let checked = rooms.len();
        let checks = futures::stream::iter(rooms.into_iter().map(|(room, position, change)| async move {
            let page = store.read(&room, Position::After(position), 1).await?;
            Ok::<_, StoreError>((room, page, change))
        }))
        .buffer_unordered(RECOVERY_READS)
        .collect::<Vec<_>>()
        .await;
        let mut told = 0usize;
        for check in checks {
            let (room, page, change) = check?;
            let Some(f) = self.followed.get_mut(&room) else { continue };
            // Continuity is proven only by the stream itself: a first new
            // event naming our position as its predecessor, or (nothing new)
            // our position still being the room's end; that is the page's gap
            // rule. Another server may have lost acknowledged events nobody
            // here read: tell, a gap too many rather than one too few.
            if page.gap || change == Change::ServerChanged {
                sink.lost(&room);
                f.position = f.position.min(page.tail);
                told += 1;
            }
        }
        for change in [Change::DataTouched, Change::ServerChanged] {
            let domains = changes.iter().filter(|c| **c == change).count();
            if domains > 0 {
                metrics::counter!("roomcast_store_incarnation_changes_total", "change" => change.label())
                    .increment(domains as u64);
                warn!(domains, change = change.label(), "the store's incarnation changed");
            }
        }
        if told > 0 || changes.iter().any(|c| *c != Change::None) {
            warn!(checked, told, "followed rooms checked for lost events");
        }
        self.pending.extend(self.followed.keys().cloned());
        Ok(())
    }

    /// Coalescing: events arriving within the window of the last delivery
    /// wait out the rest of it and go out together, so a busy room costs
    /// each subscriber one write per window rather than one per event. When
    /// deliveries are further apart than the window, nothing waits.
    /// Returns how long to wait before reading.
    fn gather(&self) -> Option<Duration> {
        let rest = self.delivered_at.and_then(|at| self.window.current().checked_sub(at.elapsed()))?;
        (!self.pending.is_empty() && !rest.is_zero()).then_some(rest)
    }

    /// Reads every pending room until it has nothing new, delivering in
    /// order. Returns the most events delivered to one room (0: nothing).
    ///
    /// Each delivery is one unbroken run of the room's chain: where an event
    /// does not name the one before it as its predecessor (the store lost
    /// events, or changed servers, between them), the run ends, so the hub
    /// hands subscribers the break as the start of a batch, where their
    /// cursors see it.
    async fn read_pending(&mut self, sink: &dyn FeedSink) -> Result<usize, StoreError> {
        let mut busiest = 0;
        while !self.pending.is_empty() {
            let chunk: Vec<(RoomName, EventId)> = self
                .pending
                .iter()
                .take(ROOMS_PER_READ)
                .filter_map(|room| self.followed.get(room).map(|f| (room.clone(), f.position)))
                .collect();
            let read = self.store.read_many(&chunk, EVENTS_PER_ROOM).await?;
            let mut more: HashSet<RoomName> = HashSet::new();
            for (room, events) in read {
                let Some(last) = events.last().map(|e| e.id) else {
                    continue;
                };
                if events.len() >= EVENTS_PER_ROOM {
                    more.insert(room.clone());
                }
                if let Some(f) = self.followed.get_mut(&room) {
                    f.position = last;
                    debug!(room = %room, events = events.len(), last = %last, "feed delivers");
                    metrics::histogram!("roomcast_reader_lag_seconds").record(crate::metrics::age_seconds(last));
                    busiest = busiest.max(events.len());
                    for run in chain_runs(events) {
                        sink.deliver(&room, run);
                    }
                }
            }
            for (room, _) in &chunk {
                if !more.contains(room) {
                    self.pending.remove(room);
                }
            }
            // Rooms no longer watched can linger in `pending`; drop them too.
            let followed = &self.followed;
            self.pending.retain(|room| followed.contains_key(room));
        }
        Ok(busiest)
    }
}

/// Splits events read in ID order into unbroken runs of the room's chain.
fn chain_runs(mut events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut runs = Vec::new();
    while let Some(i) = events.windows(2).position(|w| w[1].prev != w[0].id) {
        let rest = events.split_off(i + 1);
        runs.push(std::mem::replace(&mut events, rest));
    }
    runs.push(events);
    runs
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{AppendOptions, StoreOptions};

    /// Records each delivery's size and time.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<(Instant, usize)>>,
    }

    impl FeedSink for Recorder {
        fn deliver(&self, _: &RoomName, events: Vec<Event>) {
            self.batches.lock().unwrap().push((Instant::now(), events.len()));
        }
        fn lost(&self, _: &RoomName) {}
        fn wants(&self, _: &RoomName, _: u64) -> bool {
            true
        }
    }

    async fn until_batches(recorder: &Recorder, n: usize) -> Vec<(Instant, usize)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let batches = recorder.batches.lock().unwrap().clone();
            if batches.len() >= n || Instant::now() > deadline {
                return batches;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// On a paused clock: the window's timing is exact, whatever the machine.
    #[tokio::test(start_paused = true)]
    async fn events_inside_the_window_share_a_delivery_and_a_lone_event_does_not_wait() {
        const WINDOW: Duration = Duration::from_millis(400);
        let options = StoreOptions {
            history: 1000,
            room_ttl: Duration::from_secs(60),
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 1000,
        };
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(options));
        let recorder = Arc::new(Recorder::default());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let source = store.change_source("test").unwrap();
        let (feed, runner) = Feed::new(store.clone(), source, Coalescing::fixed(WINDOW));
        runner.spawn(recorder.clone(), shutdown.clone(), &tracker);
        while !feed.is_live() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let room = RoomName::parse("r").unwrap();
        assert_eq!(
            feed.follow(&room, 1).await.unwrap(),
            store.tail(&room).await.unwrap(),
            "it follows from the anchor"
        );

        let first = Instant::now();
        store.append(&room, Bytes::from_static(b"0"), AppendOptions::default()).await.unwrap();
        let batches = until_batches(&recorder, 1).await;
        assert_eq!(batches.first().map(|b| b.1), Some(1));
        assert!(batches[0].0 - first < WINDOW, "the first event waited for nothing");

        // A burst right after a delivery gathers for the rest of the window.
        for i in 1..=5 {
            store.append(&room, Bytes::from(i.to_string()), AppendOptions::default()).await.unwrap();
        }
        let batches = until_batches(&recorder, 2).await;
        assert_eq!(batches.len(), 2, "one delivery for the burst: {batches:?}");
        assert_eq!(batches[1].1, 5);
        assert!(batches[1].0 - batches[0].0 >= WINDOW - Duration::from_millis(20));

        // After a quiet spell longer than the window, nothing waits.
        tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
        let lone = Instant::now();
        store.append(&room, Bytes::from_static(b"6"), AppendOptions::default()).await.unwrap();
        let batches = until_batches(&recorder, 3).await;
        assert_eq!(batches.get(2).map(|b| b.1), Some(1));
        assert!(batches[2].0 - lone < WINDOW, "a lone event was held back");

        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
