//! The buckets a reader watches, and their mailboxes: each bucket's signal
//! stream, to which the publish script appends the name of every room it
//! appends to. A mailbox read from an explicit position never misses a
//! signal unless trimming took it, and a full page says that it may have:
//! then every watched room of the bucket is named, a read too many rather
//! than an event late.

use std::collections::{HashMap, HashSet};

use fred::prelude::*;

use super::keys::Keys;
use super::layout::Layout;
use super::reply;
use crate::protocol::{EventId, RoomName};
use crate::store::StoreError;

/// Most signals taken per mailbox per read. Mailboxes keep at least this
/// many (`MAXLEN ~`), so fewer new signals than this were all kept.
pub(super) const SIGNALS_PER_READ: u64 = 4096;

/// One watched bucket.
#[derive(Default)]
struct Mailbox {
    /// Watched rooms in this bucket.
    rooms: HashSet<RoomName>,
    /// Last signal seen; `None` until resolved.
    position: Option<EventId>,
}

/// The watched mailboxes and their positions: one per bucket on a
/// cluster, one for the whole store on a single Redis (mailbox 0).
pub(super) struct Mailboxes {
    keys: Keys,
    layout: Layout,
    buckets: HashMap<u16, Mailbox>,
}

impl Mailboxes {
    /// The mailboxes `layout` gives: per bucket, or the store's one.
    pub(super) fn new(keys: Keys, layout: Layout) -> Self {
        Mailboxes { keys, layout, buckets: HashMap::new() }
    }

    fn of(&self, room: &RoomName) -> u16 {
        self.layout.mailbox(room)
    }

    fn key(&self, b: u16) -> String {
        self.layout.mailbox_key(&self.keys, b)
    }

    /// Watches `room`; returns its bucket if the bucket was not watched before.
    pub(super) fn watch(&mut self, room: &RoomName) -> Option<u16> {
        let b = self.of(room);
        let mailbox = self.buckets.entry(b).or_default();
        let new = mailbox.rooms.is_empty();
        mailbox.rooms.insert(room.clone());
        new.then_some(b)
    }

    /// Stops watching `room`; returns its bucket if nothing in it is watched now.
    pub(super) fn unwatch(&mut self, room: &RoomName) -> Option<u16> {
        let b = self.of(room);
        let mailbox = self.buckets.get_mut(&b)?;
        mailbox.rooms.remove(room);
        if mailbox.rooms.is_empty() {
            self.buckets.remove(&b);
            return Some(b);
        }
        None
    }

    /// Whether `bucket` is watched.
    pub(super) fn is_watched(&self, bucket: u16) -> bool {
        self.buckets.contains_key(&bucket)
    }

    /// Watched buckets.
    pub(super) fn buckets(&self) -> impl Iterator<Item = u16> + '_ {
        self.buckets.keys().copied()
    }

    /// Resolves the position of every mailbox that has none yet (its last
    /// signal now), one read per mailbox, all at once.
    pub(super) async fn resolve(&mut self, client: &Client) -> Result<(), StoreError> {
        let unresolved: Vec<u16> = self.buckets.iter().filter(|(_, m)| m.position.is_none()).map(|(b, _)| *b).collect();
        let reads = unresolved.iter().map(|b| {
            let key = self.key(*b);
            async move {
                let value: Value = client.xrevrange(key, "+", "-", Some(1)).await.map_err(super::fault::unavailable)?;
                match value {
                    Value::Array(items) => items.first().map(reply::entry_id).transpose(),
                    _ => Ok(None),
                }
            }
        });
        let positions = futures::future::join_all(reads).await;
        for (b, position) in unresolved.into_iter().zip(positions) {
            if let Some(mailbox) = self.buckets.get_mut(&b) {
                mailbox.position = Some(position?.unwrap_or(EventId::ZERO));
            }
        }
        Ok(())
    }

    /// Each resolved mailbox's key and position.
    pub(super) fn positions(&self) -> Vec<(u16, String, EventId)> {
        self.buckets.iter().filter_map(|(b, m)| m.position.map(|p| (*b, self.key(*b), p))).collect()
    }

    /// Takes the signals read from `bucket`'s mailbox after its position:
    /// moves the position on and returns the rooms they name (every watched
    /// room of the bucket, after a full page).
    pub(super) fn take(&mut self, bucket: u16, items: &[Value]) -> Result<Vec<RoomName>, StoreError> {
        let Some(mailbox) = self.buckets.get_mut(&bucket) else {
            return Ok(Vec::new());
        };
        let mut rooms = Vec::with_capacity(items.len());
        for item in items {
            let (id, room) = reply::id_and_field(item, b"r")?;
            mailbox.position = Some(id);
            if let Some(room) = room.and_then(|r| std::str::from_utf8(&r).ok().and_then(|s| RoomName::parse(s).ok())) {
                rooms.push(room);
            }
        }
        if items.len() as u64 >= SIGNALS_PER_READ {
            metrics::counter!("roomcast_mailbox_overflows_total").increment(1);
            rooms.extend(mailbox.rooms.iter().cloned());
        }
        Ok(rooms)
    }
}
