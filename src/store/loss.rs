//! Loss detection: telling that the store may have lost data that no
//! predecessor chain can show (a room whose whole history, even its
//! existence, was lost), part by part.

use async_trait::async_trait;

use super::StoreError;
use crate::protocol::RoomName;

/// Who holds the data now, compared by the feed after reconnections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// A token stored beside the data; it changes when the data (or just the
    /// token) was deleted while the server kept running.
    pub data: String,
    /// The server process answering (Redis `run_id`); it changes when the
    /// store restarted or failed over, when acknowledged writes may be lost
    /// even though every key looks intact (a snapshot older than the acks).
    pub server: String,
}

/// How two incarnations differ, which decides what the feed must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Same data, same server: nothing happened.
    None,
    /// Same server, new token: keys were deleted or evicted. Each followed
    /// room's history can be checked exactly from its position.
    DataTouched,
    /// Another server process: acked writes may be gone without a trace.
    /// Every followed room gets a gap.
    ServerChanged,
}

impl Change {
    /// The metric label and log word for this change.
    pub fn label(self) -> &'static str {
        match self {
            Change::None => "none",
            Change::DataTouched => "data_touched",
            Change::ServerChanged => "server_changed",
        }
    }
}

impl Incarnation {
    /// What changed from `earlier` to `self`.
    pub fn since(&self, earlier: &Incarnation) -> Change {
        if self.server != earlier.server {
            Change::ServerChanged
        } else if self.data != earlier.data {
            Change::DataTouched
        } else {
            Change::None
        }
    }
}

/// How a store tells the live feed that it may have lost data: per domain
/// (a part of the data that can be lost, or fail over, alone), an
/// incarnation to compare after every reconnection and now and then.
#[async_trait]
pub trait LossDetection: Send + Sync + 'static {
    /// How many loss-detection domains the store has: parts of the data
    /// that can be lost, or fail over, independently (Redis: the buckets,
    /// each in one slot of one master; the embedded store: one).
    fn domains(&self) -> usize {
        1
    }

    /// The domain `room`'s data lives in, below [`domains`](LossDetection::domains).
    fn domain(&self, _room: &RoomName) -> usize {
        0
    }

    /// Identifies the data and the server holding it for each of `domains`,
    /// in order (see [`Incarnation`]). The feed compares them after every
    /// reconnection and sweep: events acked just before a loss may never
    /// have been read, so followed rooms of a changed domain must be
    /// checked, or told of a possible gap; other domains' rooms are left be.
    async fn incarnations(&self, domains: &[usize]) -> Result<Vec<Incarnation>, StoreError>;

    /// The incarnation of domain 0, which is the whole store when it has one domain.
    async fn incarnation(&self) -> Result<Incarnation, StoreError> {
        let mut all = self.incarnations(&[0]).await?;
        all.pop().ok_or_else(|| StoreError::Protocol("no incarnation for domain 0".into()))
    }

    /// Increases with every (re)connection to the store, so the feed knows
    /// when to compare incarnations (and the live task when to report its
    /// counts afresh). Constant for the embedded store.
    fn connection_generation(&self) -> u64;
}
