//! A connection's outbox: bounded in batches and in bytes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::hub::Batch;

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
    tx: mpsc::Sender<Arc<Batch>>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Wakes the connection when one of its rooms lagged.
    lag: Notify,
}

/// The connection's side of its queue.
pub struct OutboxReceiver {
    outbox: Arc<Outbox>,
    rx: mpsc::Receiver<Arc<Batch>>,
}

impl Outbox {
    /// A new outbox and its receiving end.
    pub fn new(limits: OutboxLimits) -> (Arc<Outbox>, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(limits.frames.max(1));
        let outbox =
            Arc::new(Outbox { tx, queued_bytes: AtomicUsize::new(0), max_bytes: limits.bytes, lag: Notify::new() });
        (outbox.clone(), OutboxReceiver { outbox, rx })
    }

    /// Queues `batch`, or marks the room `lagged` when it does not fit.
    pub fn offer(&self, batch: &Arc<Batch>, lagged: &AtomicBool) {
        if lagged.load(Ordering::Acquire) {
            // Already catching up from the store, which will cover this batch.
            return;
        }
        let size = batch.size();
        let fits = self.queued_bytes.load(Ordering::Relaxed) + size <= self.max_bytes;
        if fits && self.tx.try_send(batch.clone()).is_ok() {
            self.queued_bytes.fetch_add(size, Ordering::Relaxed);
            return;
        }
        if !self.tx.is_closed() {
            lagged.store(true, Ordering::Release);
            self.signal();
            metrics::counter!("roomcast_outbox_overflows_total").increment(1);
        }
    }

    /// Wakes the connection to look at its rooms' flags.
    pub fn signal(&self) {
        self.lag.notify_one();
    }

    /// Resolves when a room of this connection lagged (one permit is kept).
    pub async fn lagged(&self) {
        self.lag.notified().await;
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

impl OutboxReceiver {
    /// The next batch; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Arc<Batch>> {
        let batch = self.rx.recv().await?;
        self.release(&batch);
        Some(batch)
    }

    /// The next batch if one is queued now.
    pub fn try_recv(&mut self) -> Option<Arc<Batch>> {
        let batch = self.rx.try_recv().ok()?;
        self.release(&batch);
        Some(batch)
    }

    fn release(&self, batch: &Batch) {
        self.outbox.queued_bytes.fetch_sub(batch.size(), Ordering::Relaxed);
    }

    /// Resolves when a room of this connection lagged (one permit is kept,
    /// so a lag signalled before the call is not missed).
    pub async fn lagged(&self) {
        self.outbox.lagged().await;
    }

    /// The shared outbox, to register with the hub.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Event, EventId, RoomName};
    use bytes::Bytes;

    fn batch(n: u64, size: usize) -> Arc<Batch> {
        let data = Bytes::from(vec![b'1'; size]);
        Arc::new(Batch::new(
            RoomName::parse("r").unwrap(),
            vec![Event { id: EventId::new(n, 0), prev: EventId::new(n - 1, 0), data }],
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
        // Once lagged, later batches are left to the catch-up.
        assert_eq!(rx.recv().await.unwrap().events[0].id.ms, 1);
        outbox.offer(&batch(4, 10), &lagged);
        assert_eq!(rx.recv().await.unwrap().events[0].id.ms, 2);
        assert!(rx.try_recv().is_none());
        // The lag wake-up was remembered.
        tokio::time::timeout(std::time::Duration::from_secs(1), rx.lagged()).await.unwrap();
    }

    #[tokio::test]
    async fn byte_bound_applies_and_is_released() {
        let (outbox, mut rx) = Outbox::new(OutboxLimits { frames: 100, bytes: 3000 });
        let lagged = AtomicBool::new(false);
        outbox.offer(&batch(1, 2000), &lagged);
        assert!(outbox.queued_bytes() > 2000);
        outbox.offer(&batch(2, 2000), &lagged);
        assert!(lagged.load(Ordering::Acquire));
        rx.recv().await.unwrap();
        assert_eq!(outbox.queued_bytes(), 0);
    }
}
