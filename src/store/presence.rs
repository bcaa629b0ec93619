//! Presence and webhooks in the store: who is in each room across the
//! deployment, and the webhook events that follow from it.
//!
//! Nodes report their own rooms' changes (members that joined or left
//! here, the room becoming occupied or empty here) at most once a second
//! per room. The store turns them into the deployment's truth in one
//! atomic step per room: a subject is a member while any node holds it,
//! and each transition of the whole (first holder, last holder gone) is
//! appended once to the room's change log (which nodes with presence
//! watchers read) and, with webhooks on, to the webhook log.
//!
//! The webhook log is delivered by one node at a time (a lease), from a
//! cursor kept beside it: a node that dies mid-delivery leaves the lease to
//! lapse and the next holder sends from the cursor again (at least once, in
//! order). Delivered events are trimmed; undelivered ones are bounded by
//! [`WebhookOptions::max_pending`], past which the oldest go (counted).

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::protocol::RoomName;

/// One member: a subject and what its token said about it (a JSON object).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The subject (a token's `sub`).
    pub sub: String,
    /// Its `info`, as JSON text (`{}` without one).
    pub info: String,
}

/// One node's news about one room since its last report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomReport {
    /// The room.
    pub room: RoomName,
    /// Members that joined here (or whose info changed).
    pub joined: Vec<Member>,
    /// Subjects that left here (their last connection here is gone).
    pub left: Vec<String>,
    /// Whether the room has subscribers here now, when that changed.
    pub occupied: Option<bool>,
    /// `joined` is everything this node holds in the room: whatever else
    /// the store has from it there is gone.
    pub full: bool,
}

/// What a node's report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reported {
    /// Applied; these rooms' membership changed for the deployment.
    Applied(Vec<RoomName>),
    /// The store no longer knows this node (declared dead, or a new store):
    /// nothing was applied; report every room in full.
    Resync,
}

/// A change to a room's members, as the deployment sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Joined, or its info changed.
    Joined(Member),
    /// Left (its last connection on any node is gone, or its node died).
    Left(String),
}

/// A position in a room's change log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangePos {
    /// The last change's sequence number (changes are numbered 1, 2, ...).
    pub seq: u64,
    /// Where the store reads on from (opaque).
    pub cursor: String,
}

/// A room's members at one position of its change log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// Every member.
    pub members: Vec<Member>,
    /// The change log position they are as of.
    pub at: ChangePos,
}

/// Webhook settings every node of a deployment shares.
#[derive(Clone, Copy, Debug)]
pub struct WebhookOptions {
    /// Whether webhook events are recorded at all.
    pub enabled: bool,
    /// How long a room stays empty before `room_vacated` (a reconnect
    /// within it sends neither `room_vacated` nor `room_occupied`).
    pub vacate_delay: Duration,
    /// Undelivered events kept at most; past it, the oldest are dropped.
    pub max_pending: u64,
}

impl WebhookOptions {
    /// The webhook settings of a node's flags.
    pub fn from_settings(config: &crate::config::Config) -> Self {
        let backend = &config.backend;
        WebhookOptions {
            enabled: backend.webhook_url.is_some() || config.pusher_webhook_url.is_some(),
            vacate_delay: backend.webhook_vacate_delay,
            max_pending: backend.webhook_max_pending,
        }
    }
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions { enabled: false, vacate_delay: Duration::from_secs(3), max_pending: 100_000 }
    }
}

/// One webhook event, as stored and sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique within the deployment: receivers deduplicate by it.
    pub id: String,
    /// `room_occupied`, `room_vacated`, `member_joined` or `member_left`.
    pub name: String,
    /// The room.
    pub room: String,
    /// When it happened (ms since the epoch).
    pub time_ms: u64,
    /// The member, for member events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The member's info (raw JSON), for member events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// For a Pusher client event: its name, data, and who sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientEvent>,
}

/// A Pusher client event, as its webhook tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEvent {
    /// The event's name (`client-...`).
    pub event: String,
    /// Its data, as the client sent it (a string).
    pub data: String,
    /// The sending socket.
    pub socket_id: String,
    /// The sender's user, on a presence channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Change log entries a room keeps: a watcher further behind reloads.
pub const CHANGES_KEPT: u64 = 1_000;

/// Members per report step: a larger report is cut into steps.
pub const MEMBERS_PER_STEP: usize = 500;

/// Presence and webhooks in the store.
#[async_trait]
pub trait PresenceLog: Send + Sync + 'static {
    /// Applies `node`'s reports (one atomic step per room, or per
    /// [`MEMBERS_PER_STEP`] members); `now_ms` dates the webhook events.
    async fn report_presence(
        &self,
        node: &str,
        reports: &[RoomReport],
        webhooks: &WebhookOptions,
        now_ms: u64,
    ) -> Result<Reported, StoreError>;

    /// Every member of `room`, as of a change log position.
    async fn members(&self, room: &RoomName) -> Result<Members, StoreError>;

    /// How many members `room` has.
    async fn member_count(&self, room: &RoomName) -> Result<u64, StoreError>;

    /// `room`'s changes after `at`, with the position they reach; `None`
    /// when the log no longer reaches back to `at` (reload the members).
    async fn member_changes(
        &self,
        room: &RoomName,
        at: &ChangePos,
    ) -> Result<Option<(Vec<MemberChange>, ChangePos)>, StoreError>;

    /// The nodes the store holds presence from.
    async fn presence_nodes(&self) -> Result<HashSet<String>, StoreError>;

    /// Rooms with subscribers on some node (as the nodes reported them with
    /// occupancy on), whose names start with `prefix`.
    async fn occupied_rooms(&self, prefix: &str) -> Result<Vec<RoomName>, StoreError>;

    /// Removes a dead node's members and occupancy (as if it had reported
    /// every room empty), and the node; the rooms whose members changed.
    async fn forget_presence(
        &self,
        node: &str,
        webhooks: &WebhookOptions,
        now_ms: u64,
    ) -> Result<Vec<RoomName>, StoreError>;

    /// Records a Pusher client event for the webhooks (with webhooks on).
    async fn record_client_event(
        &self,
        webhooks: &WebhookOptions,
        room: &RoomName,
        event: ClientEvent,
        now_ms: u64,
    ) -> Result<(), StoreError>;

    /// Takes or keeps `sink`'s delivery lease for `holder` for `ttl`;
    /// whether `holder` holds it now. Each sink (a receiver in its shape)
    /// has its lease and its cursor.
    async fn webhook_lease(&self, sink: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Records `room_vacated` for rooms empty for their whole delay by
    /// `now_ms` (the lease holder calls it).
    async fn vacate_due(&self, webhooks: &WebhookOptions, now_ms: u64) -> Result<(), StoreError>;

    /// Up to `max` events `sink` has not delivered, oldest first, and how
    /// many were dropped past the bound since the last call (any sink's).
    async fn webhook_pending(&self, sink: &str, max: usize) -> Result<(Vec<WebhookEvent>, u64), StoreError>;

    /// Marks `sink`'s events up to `last_id` delivered (only while `holder`
    /// holds its lease: a holder that lost it cannot move the cursor), and
    /// trims what every one of `sinks` delivered.
    async fn webhook_delivered(
        &self,
        sink: &str,
        sinks: &[&str],
        holder: &str,
        last_id: &str,
    ) -> Result<bool, StoreError>;
}
