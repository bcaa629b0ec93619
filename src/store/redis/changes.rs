//! The single-Redis change source: which watched rooms have new entries.
//!
//! The publish script appends each changed room's name to the store's one
//! mailbox. The reader blocks in one `XREAD` over its node's control
//! stream and that mailbox, so a call costs two keys, not a key per room
//! (nor one per bucket: measured, 1,025 keys per blocking call cost Redis
//! about 1.5 ms each time); the feed then reads only the rooms that changed. (On a
//! cluster one `XREAD` cannot span slots: see [`doorbell`](super::doorbell).)
//!
//! Wake-ups for newly watched rooms are entries on the control stream: an
//! entry added while the reader is between calls is still seen by the next
//! call (its position is explicit), so no wake-up is lost. Positions are
//! always resolved IDs, never `$`; the control stream is read from its
//! start (`0-0`), not from its last entry when the reader first looked:
//! a wake added before that look would be behind the position, and the
//! first subscriber of a node that had just started waited out a whole
//! block (the chaos run found it: a subscriber saw nothing for 2 s, left,
//! and the history it had not seen was flushed meanwhile). Reading a
//! node's old wake entries once costs one spurious turn.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use tracing::debug;

use super::fault::unavailable;
use super::keys::Keys;
use super::layout::Layout;
use super::mailbox::{Mailboxes, SIGNALS_PER_READ};
use super::reply;
use super::OwnClient;
use crate::protocol::{EventId, RoomName};
use crate::store::feed::{ChangeSource, Wake};
use crate::store::StoreError;

/// Control entries kept; they only wake the reader.
const CONTROL_KEPT: i64 = 64;
/// A dead node's control stream disappears after this.
const CONTROL_TTL_MS: i64 = 3_600_000;
/// Slack on top of BLOCK before the client gives up on the reply.
const REPLY_SLACK: Duration = Duration::from_secs(5);

/// The single-Redis (and Sentinel) change source: one blocking `XREAD`.
pub(super) struct RedisChanges {
    reader: OwnClient,
    control_key: String,
    control_position: EventId,
    mailboxes: Mailboxes,
    waker: Arc<ControlWake>,
}

impl RedisChanges {
    pub(super) fn new(reader: OwnClient, commands: Client, keys: Keys, node: &str) -> Self {
        let control_key = keys.control(node);
        let waker = Arc::new(ControlWake { client: commands, key: control_key.clone() });
        RedisChanges {
            reader,
            control_key,
            control_position: EventId::ZERO,
            mailboxes: Mailboxes::new(keys, Layout::Single),
            waker,
        }
    }
}

#[async_trait]
impl ChangeSource for RedisChanges {
    fn watch(&mut self, room: &RoomName) {
        self.mailboxes.watch(room);
    }

    fn unwatch(&mut self, room: &RoomName) {
        self.mailboxes.unwatch(room);
    }

    async fn prepare(&mut self) -> Result<(), StoreError> {
        let reader = self.reader.ready().await?;
        self.mailboxes.resolve(reader).await
    }

    async fn wait(&mut self, timeout: Duration) -> Result<Vec<RoomName>, StoreError> {
        let mut keys = vec![self.control_key.clone()];
        let mut ids = vec![self.control_position.to_string()];
        let mut order = vec![None];
        for (b, key, position) in self.mailboxes.positions() {
            keys.push(key);
            ids.push(position.to_string());
            order.push(Some(b));
        }
        let options = Options { timeout: Some(timeout + REPLY_SLACK), ..Default::default() };
        let value: Value = self
            .reader
            .client()
            .with_options(&options)
            .xread(Some(SIGNALS_PER_READ), Some(timeout.as_millis() as u64), keys.clone(), ids)
            .await
            .map_err(unavailable)?;
        let mut changed = Vec::new();
        for (key, items) in reply::xread_streams(value)? {
            let Some(index) = keys.iter().position(|k| k.as_bytes() == key.as_ref()) else {
                continue;
            };
            match order[index] {
                None => {
                    if let Some(last) = items.last() {
                        self.control_position = reply::entry_id(last)?;
                    }
                }
                Some(b) => changed.extend(self.mailboxes.take(b, &items)?),
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
