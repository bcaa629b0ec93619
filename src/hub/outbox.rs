//! A connection's outbox: bounded in batches and in bytes.
//!
//! One per connection, so it is kept small: a mutex-guarded deque that
//! allocates only once something is queued (an idle subscriber's outbox
//! holds no buffer) and one [`Notify`] for every kind of wake-up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{Batch, Notice};

/// Bounds of one connection's outbox.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    /// Most batches queued.
    pub frames: usize,
    /// Most bytes queued (approximate: payloads plus framing).
    pub bytes: usize,
}

/// The hub's side of a connection's queue. Offering never blocks: what
/// does not fit marks the room lagged, and the connection catches up from
/// the store, so a slow client costs neither the feed nor other clients.
pub struct Outbox {
    queue: Mutex<VecDeque<Item>>,
    queued_bytes: AtomicUsize,
    limits: OutboxLimits,
    /// Set when one of the connection's rooms needs its flags looked at.
    signalled: AtomicBool,
    /// Set by the node's heartbeat tick: the connection should say something
    /// if it has been silent since the previous tick.
    beat: AtomicBool,
    /// Set once the connection is gone: nothing more is queued.
    closed: AtomicBool,
    /// Wakes the connection (a batch was queued, or it was signalled).
    wake: Notify,
}

/// The connection's side of its queue; dropping it closes the outbox.
pub struct OutboxReceiver {
    outbox: Arc<Outbox>,
}

/// What an outbox queues, in order: events, or a room-wide notice.
pub enum Item {
    /// A room's new events.
    Batch(Arc<Batch>),
    /// An audience count or a window of reactions.
    Notice(Arc<Notice>),
    /// A moderator disconnected the connection's subject, saying this.
    Kick(Arc<String>),
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Batch(batch) => batch.size(),
            Item::Notice(notice) => notice.size(),
            Item::Kick(_) => 0,
        }
    }
}

/// What is waiting in an outbox.
pub enum Pending {
    /// A room was signalled (lagged, or its store lost data).
    Signal,
    /// A queued batch or notice.
    Item(Item),
    /// The heartbeat tick came round.
    Heartbeat,
}

impl Outbox {
    /// A new outbox and its receiving end.
    pub fn new(limits: OutboxLimits) -> (Arc<Outbox>, OutboxReceiver) {
        let outbox = Arc::new(Outbox {
            queue: Mutex::new(VecDeque::new()),
            queued_bytes: AtomicUsize::new(0),
            limits: OutboxLimits { frames: limits.frames.max(1), bytes: limits.bytes },
            signalled: AtomicBool::new(false),
            beat: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
        });
        (outbox.clone(), OutboxReceiver { outbox })
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Item>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `item` if it fits both bounds, waking the receiver when the
    /// queue was empty (a non-empty queue already has a wake-up on its
    /// way). `false` when it does not fit.
    fn push(&self, item: Item) -> bool {
        let size = item.size();
        let was_empty = {
            let mut queue = self.queue();
            let fits = queue.len() < self.limits.frames
                && self.queued_bytes.load(Ordering::Relaxed) + size <= self.limits.bytes;
            if !fits {
                return false;
            }
            queue.push_back(item);
            self.queued_bytes.fetch_add(size, Ordering::Relaxed);
            queue.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Queues `batch`, or marks the room `lagged` when it does not fit.
    pub fn offer(&self, batch: &Arc<Batch>, lagged: &AtomicBool) {
        if lagged.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire) {
            // Already catching up from the store, which will cover this
            // batch; or nobody is listening any more.
            return;
        }
        if !self.push(Item::Batch(batch.clone())) {
            lagged.store(true, Ordering::Release);
            self.signal();
            metrics::counter!("roomcast_outbox_overflows_total").increment(1);
        }
    }

    /// Queues a notice unless the outbox is full: a notice carries no event,
    /// so a connection that is behind simply misses it (counted), and is
    /// never sent to the store to catch up for it.
    pub fn offer_notice(&self, notice: &Arc<Notice>) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let queued = self.push(Item::Notice(notice.clone()));
        if !queued {
            metrics::counter!("roomcast_notices_dropped_total").increment(1);
        }
        queued
    }

    /// Ends the connection as a moderator asked: ahead of anything queued,
    /// whatever the bounds.
    pub fn kick(&self, reason: Arc<String>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.queue().push_front(Item::Kick(reason));
        self.wake.notify_one();
    }

    /// Wakes the connection to look at its rooms' flags.
    pub fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Wakes the connection for the heartbeat tick.
    pub fn heartbeat(&self) {
        self.beat.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

impl OutboxReceiver {
    /// What is waiting now, if anything: a signal first, then batches in order.
    pub fn try_next(&mut self) -> Option<Pending> {
        if self.outbox.signalled.swap(false, Ordering::AcqRel) {
            return Some(Pending::Signal);
        }
        if let Some(item) = self.try_recv() {
            return Some(Pending::Item(item));
        }
        self.outbox.beat.swap(false, Ordering::AcqRel).then_some(Pending::Heartbeat)
    }

    /// Waits for what is waiting. Cancel-safe: nothing is taken before it
    /// is returned.
    pub async fn next(&mut self) -> Pending {
        loop {
            if let Some(pending) = self.try_next() {
                return pending;
            }
            // A wake-up sent since the check above is kept as a permit.
            self.outbox.wake.notified().await;
        }
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<Item> {
        let mut queue = self.outbox.queue();
        let item = queue.pop_front()?;
        self.outbox.queued_bytes.fetch_sub(item.size(), Ordering::Relaxed);
        if queue.is_empty() && queue.capacity() > SHRINK_ABOVE {
            // A burst is over: give back what an idle connection need not hold.
            queue.shrink_to(SHRINK_ABOVE);
        }
        Some(item)
    }

    /// The shared outbox, to register with the hub.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

/// Queue slots kept once a burst has drained.
const SHRINK_ABOVE: usize = 32;

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.outbox.closed.store(true, Ordering::Release);
        let mut queue = self.outbox.queue();
        queue.clear();
        queue.shrink_to_fit();
        self.outbox.queued_bytes.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Event, EventId, RoomName};
    use bytes::Bytes;

    fn batch_of(item: Option<Item>) -> Arc<Batch> {
        match item {
            Some(Item::Batch(batch)) => batch,
            _ => panic!("expected a batch"),
        }
    }

    fn batch(n: u64, size: usize) -> Arc<Batch> {
        let data = Bytes::from(vec![b'1'; size]);
        Arc::new(Batch::new(
            RoomName::parse("r").unwrap(),
            vec![Event { id: EventId::new(n, 0), prev: EventId::new(n - 1, 0), data, ..Event::default() }],
        ))
    }

    #[tokio::test]
    async fn full_outbox_marks_lagged_instead_of_blocking() {
        let (outbox, mut rx) = Outbox::new(OutboxLimits { frames: 2, bytes: 1 << 20 });
        let lagged = AtomicBool::new(false);
        outbox.offer(&batch(1, 10), &lagged);
        outbox.offer(&batch(2, 10), &lagged);
        assert!(!lagged.load(Ordering::Acquire));
        outbox.offer(&batch(3, 10), &lagged);
        assert!(lagged.load(Ordering::Acquire));
        // The lag is reported first; later batches are left to the catch-up.
        assert!(matches!(rx.next().await, Pending::Signal));
        assert_eq!(batch_of(rx.try_recv()).events[0].id.ms, 1);
        outbox.offer(&batch(4, 10), &lagged);
        assert_eq!(batch_of(rx.try_recv()).events[0].id.ms, 2);
        assert!(rx.try_recv().is_none());
        assert!(rx.try_next().is_none());
    }

    #[tokio::test]
    async fn byte_bound_applies_and_is_released() {
        let (outbox, mut rx) = Outbox::new(OutboxLimits { frames: 100, bytes: 3000 });
        let lagged = AtomicBool::new(false);
        outbox.offer(&batch(1, 2000), &lagged);
        assert!(outbox.queued_bytes() > 2000);
        outbox.offer(&batch(2, 2000), &lagged);
        assert!(lagged.load(Ordering::Acquire));
        assert!(matches!(rx.next().await, Pending::Signal));
        assert!(matches!(rx.next().await, Pending::Item(Item::Batch(_))));
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_batch_offered_while_waiting_wakes_the_receiver() {
        let (outbox, mut rx) = Outbox::new(OutboxLimits { frames: 4, bytes: 1 << 20 });
        let waiter = tokio::spawn(async move {
            let Pending::Item(Item::Batch(b)) = rx.next().await else { panic!("expected a batch") };
            b.events[0].id.ms
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        outbox.offer(&batch(7, 10), &AtomicBool::new(false));
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), waiter).await.unwrap().unwrap();
        assert_eq!(got, 7);
    }

    #[test]
    fn a_closed_outbox_takes_nothing_and_flags_nothing() {
        let (outbox, rx) = Outbox::new(OutboxLimits { frames: 1, bytes: 1 << 20 });
        drop(rx);
        let lagged = AtomicBool::new(false);
        outbox.offer(&batch(1, 10), &lagged);
        outbox.offer(&batch(2, 10), &lagged);
        assert!(!lagged.load(Ordering::Acquire));
        assert_eq!(outbox.queued_bytes(), 0);
    }
}
