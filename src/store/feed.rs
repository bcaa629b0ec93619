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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use futures::StreamExt;

use super::{Change, Position, Store, StoreError};
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
/// Every watched room is re-read this often, whatever the signals said: a
/// backstop for signals lost to trimming or a store restart.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

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

/// The node's handle on its feed loop.
#[derive(Clone)]
pub struct Feed {
    commands: mpsc::Sender<Command>,
    waker: Arc<dyn Wake>,
}

impl Feed {
    /// Starts the feed loop; it stops when `shutdown` is cancelled.
    pub fn spawn(
        store: Arc<dyn Store>,
        source: Box<dyn ChangeSource>,
        sink: Arc<dyn FeedSink>,
        coalesce: Duration,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Feed {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let waker = source.waker();
        tracker.spawn(run(store, source, sink, rx, coalesce, shutdown));
        Feed { commands, waker }
    }

    /// Follows `room` (the hub's `generation` of it) from just after `from`,
    /// its tail when the first local subscriber joined. Takes effect
    /// promptly, even if the loop is waiting.
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

async fn run(
    store: Arc<dyn Store>,
    mut source: Box<dyn ChangeSource>,
    sink: Arc<dyn FeedSink>,
    mut commands: mpsc::Receiver<Command>,
    coalesce: Duration,
    shutdown: CancellationToken,
) {
    let mut followed: HashMap<RoomName, Followed> = HashMap::new();
    let mut pending: HashSet<RoomName> = HashSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut failing = false;
    let mut last_sweep = Instant::now();
    // The store's incarnation, compared after every reconnection and sweep.
    let mut incarnation: Option<super::Incarnation> = None;
    let mut seen_generation = u64::MAX;
    // When the feed last delivered anything (see `coalesce`).
    let mut delivered_at: Option<Instant> = None;

    loop {
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Watch(room, generation, from) => {
                    match followed.get_mut(&room) {
                        // A new life of a room whose old life's unwatch is
                        // still queued: start from the earlier position, the
                        // subscribers' cursors drop what they already have.
                        Some(f) => {
                            f.generation = generation;
                            f.position = f.position.min(from);
                        }
                        None => {
                            source.watch(&room);
                            followed.insert(room.clone(), Followed { generation, position: from });
                        }
                    }
                    pending.insert(room);
                }
                Command::Unwatch(room, generation) => {
                    if followed.get(&room).is_some_and(|f| f.generation == generation) {
                        source.unwatch(&room);
                        followed.remove(&room);
                        pending.remove(&room);
                    }
                }
            }
        }
        let sweep = last_sweep.elapsed() >= SWEEP_EVERY;
        if sweep {
            followed.retain(|room, f| {
                let wanted = sink.wants(room, f.generation);
                if !wanted {
                    source.unwatch(room);
                }
                wanted
            });
            pending.extend(followed.keys().cloned());
            last_sweep = Instant::now();
        }

        let step = async {
            let generation = store.connection_generation();
            if failing || sweep || generation != seen_generation {
                let now = store.incarnation().await?;
                seen_generation = generation;
                if let Some(change) = incarnation.as_ref().map(|old| now.since(old)) {
                    if change != Change::None {
                        recover(&*store, &*sink, &mut followed, change).await?;
                        pending.extend(followed.keys().cloned());
                    }
                }
                incarnation = Some(now);
            }
            source.prepare().await?;
            // Coalescing: events arriving within `coalesce` of the last
            // delivery wait out the rest of it and go out together, so a
            // busy room costs each subscriber one write per window rather
            // than one per event. When deliveries are further apart than
            // the window, nothing waits.
            if let Some(rest) = delivered_at.and_then(|at| coalesce.checked_sub(at.elapsed())) {
                if !pending.is_empty() && !rest.is_zero() {
                    tokio::time::sleep(rest).await;
                }
            }
            if read_pending(&*store, &*sink, &mut followed, &mut pending, &mut incarnation).await? {
                delivered_at = Some(Instant::now());
            }
            source.wait(WAIT_TIMEOUT).await
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            outcome = step => outcome,
        };
        match outcome {
            Ok(changed) => {
                debug!(changed = changed.len(), followed = followed.len(), "feed woke");
                if failing {
                    info!("live feed recovered; re-reading every watched room");
                    pending.extend(followed.keys().cloned());
                    failing = false;
                }
                backoff.reset();
                pending.extend(changed.into_iter().filter(|r| followed.contains_key(r)));
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(cause = %e, retry_in_ms = delay.as_millis() as u64, "live feed read failed");
                failing = true;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    debug!("live feed stopped");
}

/// After the store's incarnation changed, finds the followed rooms whose
/// subscribers must be told of a possible loss, and tells them. Positions
/// never move past what was delivered and never rewind into history that
/// is still kept, so nobody is handed an event twice: a room's position
/// only drops to its tail when the tail is below it (the history is gone,
/// and every ID the store hands out from now on is above both).
///
/// - [`Change::DataTouched`]: keys were deleted or evicted on a running
///   server. Each room's history after its position is checked exactly; a
///   lost incarnation token alone costs one read per room and no gap.
/// - [`Change::ServerChanged`]: the store restarted or failed over, and
///   writes acknowledged before may be gone without a trace: every room is
///   told.
async fn recover(
    store: &dyn Store,
    sink: &dyn FeedSink,
    followed: &mut HashMap<RoomName, Followed>,
    change: Change,
) -> Result<(), StoreError> {
    let rooms: Vec<(RoomName, EventId)> = followed.iter().map(|(room, f)| (room.clone(), f.position)).collect();
    let checks = futures::stream::iter(rooms.into_iter().map(|(room, position)| async move {
        let page = store.read(&room, Position::After(position), 1).await?;
        Ok::<_, StoreError>((room, page))
    }))
    .buffer_unordered(RECOVERY_READS)
    .collect::<Vec<_>>()
    .await;
    let mut told = 0usize;
    for check in checks {
        let (room, page) = check?;
        let Some(f) = followed.get_mut(&room) else { continue };
        // Continuity is proven only by the stream itself: a first new event
        // naming our position as its predecessor, or (nothing new) our last
        // event still being the stream's tail. A stream that no longer holds
        // our position, or a room we had read nothing of, may have lost
        // events we never read: tell, a gap too many rather than one too few.
        let unproven = f.position.is_zero() || (page.events.is_empty() && page.tail != f.position);
        if page.gap || unproven || change == Change::ServerChanged {
            sink.lost(&room);
            f.position = f.position.min(page.tail);
            told += 1;
        }
    }
    metrics::counter!("roomcast_store_incarnation_changes_total", "change" => change.label()).increment(1);
    warn!(
        rooms = followed.len(),
        told,
        change = change.label(),
        "the store's incarnation changed; followed rooms checked"
    );
    Ok(())
}

/// Reads every pending room until it has nothing new, delivering in order.
/// Returns whether anything was delivered.
///
/// A stream's first entries (predecessor `0-0`) read for a room the feed
/// has read nothing of are held until the store's incarnation is checked
/// *after* the read: a new room and one whose first events were flushed
/// before the feed saw them look alike, and only a changed incarnation
/// tells them apart. Once a room has a position, the predecessor chain
/// tells.
async fn read_pending(
    store: &dyn Store,
    sink: &dyn FeedSink,
    followed: &mut HashMap<RoomName, Followed>,
    pending: &mut HashSet<RoomName>,
    incarnation: &mut Option<super::Incarnation>,
) -> Result<bool, StoreError> {
    let mut delivered = false;
    let mut firsts: Vec<(RoomName, Vec<Event>)> = Vec::new();
    while !pending.is_empty() {
        let chunk: Vec<(RoomName, EventId)> = pending
            .iter()
            .take(ROOMS_PER_READ)
            .filter_map(|room| followed.get(room).map(|f| (room.clone(), f.position)))
            .collect();
        let read = store.read_many(&chunk, EVENTS_PER_ROOM).await?;
        let mut more: HashSet<RoomName> = HashSet::new();
        for (room, events) in read {
            let Some(last) = events.last().map(|e| e.id) else {
                continue;
            };
            if events.len() >= EVENTS_PER_ROOM {
                more.insert(room.clone());
            }
            if let Some(f) = followed.get_mut(&room) {
                if f.position.is_zero() && events.first().is_some_and(|e| e.prev.is_zero()) {
                    firsts.push((room, events));
                    continue;
                }
                f.position = last;
                debug!(room = %room, events = events.len(), last = %last, "feed delivers");
                metrics::histogram!("roomcast_reader_lag_seconds").record(crate::metrics::age_seconds(last));
                sink.deliver(&room, events);
                delivered = true;
            }
        }
        for (room, _) in &chunk {
            if !more.contains(room) {
                pending.remove(room);
            }
        }
        // Rooms no longer watched can linger in `pending`; drop them too.
        pending.retain(|room| followed.contains_key(room));
        // Held first entries are not read again: they wait for the check.
        pending.retain(|room| !firsts.iter().any(|(r, _)| r == room));
    }
    if firsts.is_empty() {
        return Ok(delivered);
    }
    let now = store.incarnation().await?;
    if let Some(change) = incarnation.as_ref().map(|old| now.since(old)).filter(|c| *c != Change::None) {
        // Rooms at position 0 are told of a possible loss by `recover`.
        recover(store, sink, followed, change).await?;
        pending.extend(followed.keys().cloned());
    }
    *incarnation = Some(now);
    for (room, events) in firsts {
        let (Some(f), Some(last)) = (followed.get_mut(&room), events.last().map(|e| e.id)) else { continue };
        if !f.position.is_zero() {
            continue;
        }
        f.position = last;
        sink.deliver(&room, events);
        delivered = true;
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::StoreOptions;

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

    #[tokio::test]
    async fn events_inside_the_window_share_a_delivery_and_a_lone_event_does_not_wait() {
        const WINDOW: Duration = Duration::from_millis(400);
        let options =
            StoreOptions { history: 1000, room_ttl: Duration::from_secs(60), presence_ttl: Duration::from_secs(6) };
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(options));
        let recorder = Arc::new(Recorder::default());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let source = store.change_source("test").await.unwrap();
        let feed = Feed::spawn(store.clone(), source, recorder.clone(), WINDOW, shutdown.clone(), &tracker);
        let room = RoomName::parse("r").unwrap();
        feed.watch(room.clone(), 1, EventId::ZERO).await;

        let first = Instant::now();
        store.append(&room, Bytes::from_static(b"0")).await.unwrap();
        let batches = until_batches(&recorder, 1).await;
        assert_eq!(batches.first().map(|b| b.1), Some(1));
        assert!(batches[0].0 - first < WINDOW, "the first event waited for nothing");

        // A burst right after a delivery gathers for the rest of the window.
        for i in 1..=5 {
            store.append(&room, Bytes::from(i.to_string())).await.unwrap();
        }
        let batches = until_batches(&recorder, 2).await;
        assert_eq!(batches.len(), 2, "one delivery for the burst: {batches:?}");
        assert_eq!(batches[1].1, 5);
        assert!(batches[1].0 - batches[0].0 >= WINDOW - Duration::from_millis(20));

        // After a quiet spell longer than the window, nothing waits.
        tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
        let lone = Instant::now();
        store.append(&room, Bytes::from_static(b"6")).await.unwrap();
        let batches = until_batches(&recorder, 3).await;
        assert_eq!(batches.get(2).map(|b| b.1), Some(1));
        assert!(batches[2].0 - lone < WINDOW, "a lone event was held back");

        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
