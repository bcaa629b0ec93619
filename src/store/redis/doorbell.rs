//! The Redis Cluster change source: doorbells, with mailboxes behind them.
//!
//! A blocking `XREAD` may name keys of one slot only, and every bucket is its
//! own slot, so one blocking read cannot watch many buckets on a cluster
//! (one per bucket would cost a blocked connection per watched bucket). So
//! the publish script also rings the bucket's doorbell: it `SPUBLISH`es the
//! room's name on a shard channel in the bucket's slot. The reader holds one
//! sharded subscriber (fred keeps a connection per master) subscribed to
//! the doorbells of the buckets it watches and wakes on the first ring:
//! single-Redis latency, no polling on the hot path.
//!
//! A doorbell is not stored: one rung while the subscriber was reconnecting,
//! or while its slot moved, is missed. So every watched mailbox (the
//! bucket's signal stream, written by the same script) is also read once a
//! second, one non-blocking read per bucket, all at once: a lost doorbell
//! costs at most that much latency, never an event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Message;
use tokio::sync::{broadcast, Notify};
use tracing::debug;

use super::fault::unavailable;
use super::keys::Keys;
use super::layout::Layout;
use super::mailbox::{Mailboxes, SIGNALS_PER_READ};
use super::reply;
use super::OwnClient;
use crate::protocol::RoomName;
use crate::store::feed::{ChangeSource, Wake};
use crate::store::StoreError;

/// How often every watched mailbox is read, doorbells or not.
const MAILBOX_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Doorbells {
    subscriber: OwnClient,
    commands: Client,
    keys: Keys,
    mailboxes: Mailboxes,
    messages: broadcast::Receiver<Message>,
    /// Buckets whose doorbell the subscriber listens to now.
    subscribed: std::collections::HashSet<u16>,
    /// Buckets no longer watched, to unsubscribe from.
    leaving: Vec<u16>,
    /// The subscriber's connections so far; a new one has no subscriptions.
    connections: Arc<AtomicU64>,
    seen_connections: u64,
    last_poll: Instant,
    waker: Arc<NotifyWake>,
}

impl Doorbells {
    /// A change source on `subscriber` (a client of its own: subscribed
    /// connections take no other commands), reading mailboxes on `commands`.
    pub(super) fn new(subscriber: OwnClient, commands: Client, keys: Keys) -> Self {
        let messages = subscriber.client().message_rx();
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        subscriber.client().on_reconnect(move |_| {
            counter.fetch_add(1, Ordering::AcqRel);
            async { Ok(()) }
        });
        Doorbells {
            subscriber,
            commands,
            mailboxes: Mailboxes::new(keys.clone(), Layout::Cluster),
            keys,
            messages,
            subscribed: Default::default(),
            leaving: Vec::new(),
            connections,
            seen_connections: 0,
            last_poll: Instant::now(),
            waker: Arc::new(NotifyWake(Notify::new())),
        }
    }

    /// Reads every watched mailbox after its position, one read per bucket
    /// (each its own slot), all at once.
    async fn poll(&mut self) -> Result<Vec<RoomName>, StoreError> {
        self.last_poll = Instant::now();
        let positions = self.mailboxes.positions();
        let commands = &self.commands;
        let reads = positions.iter().map(|(b, key, position)| async move {
            let value: Value = super::fault::retrying(|| {
                commands.xread::<Value, _, _>(Some(SIGNALS_PER_READ), None, key.clone(), position.to_string())
            })
            .await?;
            Ok::<_, StoreError>((*b, value))
        });
        let mut changed = Vec::new();
        for read in futures::future::join_all(reads).await {
            let (b, value) = read?;
            for (_, items) in reply::xread_streams(value)? {
                changed.extend(self.mailboxes.take(b, &items)?);
            }
        }
        Ok(changed)
    }
}

/// The room a doorbell names.
fn rung_room(message: &Message) -> Option<RoomName> {
    let bytes = message.value.as_bytes()?;
    RoomName::parse(std::str::from_utf8(bytes).ok()?).ok()
}

#[async_trait]
impl ChangeSource for Doorbells {
    fn watch(&mut self, room: &RoomName) {
        self.mailboxes.watch(room);
    }

    fn unwatch(&mut self, room: &RoomName) {
        if let Some(b) = self.mailboxes.unwatch(room) {
            self.leaving.push(b);
        }
    }

    async fn prepare(&mut self) -> Result<(), StoreError> {
        self.subscriber.ready().await?;
        let connections = self.connections.load(Ordering::Acquire);
        if connections != self.seen_connections {
            // A new connection holds no subscriptions.
            self.subscribed.clear();
            self.seen_connections = connections;
        }
        for b in std::mem::take(&mut self.leaving) {
            if !self.mailboxes.is_watched(b) && self.subscribed.remove(&b) {
                // Best effort: a stray doorbell only names an unwatched room.
                if let Err(e) = self.subscriber.client().sunsubscribe(self.keys.doorbell(b)).await {
                    debug!(cause = %e, bucket = b, "could not leave a doorbell");
                }
            }
        }
        let new: Vec<u16> = self.mailboxes.buckets().filter(|b| !self.subscribed.contains(b)).collect();
        let subscriber = self.subscriber.client();
        let keys = &self.keys;
        let joins = new.iter().map(|b| async move { subscriber.ssubscribe(keys.doorbell(*b)).await });
        for (b, joined) in new.iter().zip(futures::future::join_all(joins).await) {
            joined.map_err(unavailable)?;
            self.subscribed.insert(*b);
        }
        self.mailboxes.resolve(&self.commands).await
    }

    async fn wait(&mut self, timeout: Duration) -> Result<Vec<RoomName>, StoreError> {
        let until_poll = MAILBOX_EVERY.saturating_sub(self.last_poll.elapsed());
        if until_poll.is_zero() {
            return self.poll().await;
        }
        let received = tokio::select! {
            received = self.messages.recv() => received,
            _ = self.waker.0.notified() => return Ok(Vec::new()),
            _ = tokio::time::sleep(until_poll.min(timeout)) => {
                return if self.last_poll.elapsed() >= MAILBOX_EVERY { self.poll().await } else { Ok(Vec::new()) };
            }
        };
        let mut rooms = Vec::new();
        let mut missed = false;
        let mut next = Some(received);
        while let Some(received) = next.take() {
            match received {
                Ok(message) => rooms.extend(rung_room(&message)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(missed = n, "doorbells came faster than the reader; reading mailboxes");
                    missed = true;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Unavailable("the doorbell subscriber stopped".into()))
                }
            }
            next = match self.messages.try_recv() {
                Ok(message) => Some(Ok(message)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                Err(_) => None,
            };
        }
        if missed {
            rooms.extend(self.poll().await?);
        }
        Ok(rooms)
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }
}

/// Wakes a waiting reader in-process (the wait happens here, not in Redis).
struct NotifyWake(Notify);

impl Wake for NotifyWake {
    fn wake(&self) {
        // Stores a permit when nobody waits: the next wait returns at once.
        self.0.notify_one();
    }
}
