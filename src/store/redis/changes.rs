//! The Redis change source: which watched rooms have new entries.
//!
//! The publish script appends each changed room's name to its bucket's
//! signal stream. The reader blocks in one `XREAD` over its node's control
//! stream and the signal streams of the buckets it watches, so a call costs
//! a key per watched bucket (at most [`BUCKETS`](super::keys::BUCKETS)), not
//! a key per room; the feed then reads only the rooms that changed.
//!
//! Wake-ups for newly watched rooms are entries on the control stream: an
//! entry added while the reader is between calls is still seen by the next
//! call (its position is explicit), so no wake-up is lost. Positions are
//! always resolved IDs, never `$`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use tracing::debug;

use super::keys::{bucket, Keys};
use super::{reply, unavailable};
use crate::protocol::{EventId, RoomName};
use crate::store::feed::{ChangeSource, Wake};
use crate::store::StoreError;

/// Most signal entries taken per stream per call.
const SIGNALS_PER_CALL: u64 = 4096;
/// Control entries kept; they only wake the reader.
const CONTROL_KEPT: i64 = 64;
/// A dead node's control stream disappears after this.
const CONTROL_TTL_MS: i64 = 3_600_000;
/// Slack on top of BLOCK before the client gives up on the reply.
const REPLY_SLACK: Duration = Duration::from_secs(5);

struct Bucket {
    /// Watched rooms in this bucket.
    rooms: usize,
    /// Last signal seen; `None` until resolved by `prepare`.
    position: Option<EventId>,
}

pub(super) struct RedisChanges {
    reader: Client,
    keys: Keys,
    control_key: String,
    control_position: Option<EventId>,
    buckets: HashMap<u16, Bucket>,
    waker: Arc<ControlWake>,
}

impl RedisChanges {
    pub(super) fn new(reader: Client, commands: Client, keys: Keys, node: &str) -> Self {
        let control_key = keys.control(node);
        let waker = Arc::new(ControlWake { client: commands, key: control_key.clone() });
        RedisChanges { reader, keys, control_key, control_position: None, buckets: HashMap::new(), waker }
    }

    async fn last_id(&self, key: &str) -> Result<EventId, StoreError> {
        let value: Value = self.reader.xrevrange(key, "+", "-", Some(1)).await.map_err(unavailable)?;
        let Value::Array(items) = value else {
            return Ok(EventId::ZERO);
        };
        match items.first() {
            Some(item) => reply::entry_id(item),
            None => Ok(EventId::ZERO),
        }
    }
}

#[async_trait]
impl ChangeSource for RedisChanges {
    fn watch(&mut self, room: &RoomName) {
        self.buckets.entry(bucket(room)).or_insert(Bucket { rooms: 0, position: None }).rooms += 1;
    }

    fn unwatch(&mut self, room: &RoomName) {
        let b = bucket(room);
        if let Some(entry) = self.buckets.get_mut(&b) {
            entry.rooms = entry.rooms.saturating_sub(1);
            if entry.rooms == 0 {
                self.buckets.remove(&b);
            }
        }
    }

    async fn prepare(&mut self) -> Result<(), StoreError> {
        if self.control_position.is_none() {
            self.control_position = Some(self.last_id(&self.control_key).await?);
        }
        let unresolved: Vec<u16> = self.buckets.iter().filter(|(_, b)| b.position.is_none()).map(|(k, _)| *k).collect();
        for b in unresolved {
            let position = self.last_id(&self.keys.signals(b)).await?;
            if let Some(entry) = self.buckets.get_mut(&b) {
                entry.position = Some(position);
            }
        }
        Ok(())
    }

    async fn wait(&mut self, timeout: Duration) -> Result<Vec<RoomName>, StoreError> {
        let mut keys = vec![self.control_key.clone()];
        let mut ids = vec![self.control_position.unwrap_or_default().to_string()];
        let mut order = vec![None];
        for (b, state) in &self.buckets {
            if let Some(position) = state.position {
                keys.push(self.keys.signals(*b));
                ids.push(position.to_string());
                order.push(Some(*b));
            }
        }
        let options = Options { timeout: Some(timeout + REPLY_SLACK), ..Default::default() };
        let value: Value = self
            .reader
            .with_options(&options)
            .xread(Some(SIGNALS_PER_CALL), Some(timeout.as_millis() as u64), keys.clone(), ids)
            .await
            .map_err(unavailable)?;
        let mut changed = Vec::new();
        for (key, items) in reply::xread_streams(value)? {
            let Some(index) = keys.iter().position(|k| k.as_bytes() == key.as_ref()) else {
                continue;
            };
            let mut last = None;
            for item in &items {
                let (id, room) = reply::id_and_field(item, b"r")?;
                last = Some(id);
                if let Some(room) =
                    room.and_then(|r| std::str::from_utf8(&r).ok().and_then(|s| RoomName::parse(s).ok()))
                {
                    changed.push(room);
                }
            }
            let Some(last) = last else { continue };
            match order[index] {
                None => self.control_position = Some(last),
                Some(b) => {
                    if let Some(state) = self.buckets.get_mut(&b) {
                        state.position = Some(last);
                    }
                }
            }
        }
        changed.sort_unstable();
        changed.dedup();
        Ok(changed)
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }
}

/// Wakes the reader by appending to its control stream.
struct ControlWake {
    client: Client,
    key: String,
}

impl Wake for ControlWake {
    fn wake(&self) {
        let client = self.client.clone();
        let key = self.key.clone();
        tokio::spawn(async move {
            let added: Result<Value, _> =
                client.xadd(&key, false, ("MAXLEN", "~", CONTROL_KEPT), "*", ("w", "1")).await;
            if let Err(e) = added {
                // The reader's block timeout is the backstop.
                debug!(cause = %e, "could not wake the live feed");
                return;
            }
            let _: Result<Value, _> = client.pexpire(&key, CONTROL_TTL_MS, None).await;
        });
    }
}
