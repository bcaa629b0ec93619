//! Wire frames: what clients send and what the node answers.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use std::collections::BTreeMap;

use super::{EventId, EventName, IdempotencyKey, ReactionKey, RoomName, StateKey};

/// Most events a `rewind` may ask for.
pub const MAX_REWIND: u16 = 1000;

/// How a subscription starts, beyond its room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Resume position; `None` means live only, `0` means from the oldest kept.
    pub last_event_id: Option<EventId>,
    /// Also receive the room's audience count.
    pub audience: bool,
    /// Start with the room's last N kept events (ignored beside a resume position).
    pub rewind: Option<u16>,
    /// Start with a `state` frame: each key's current value.
    pub state: bool,
    /// Also receive who is present: a `presence` snapshot, then diffs.
    pub presence: bool,
}

/// A member as presence frames show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceMember {
    /// The subject.
    pub sub: String,
    /// Its token's `info` (`{}` without one).
    pub info: Value,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Reads a yes/no query parameter (`1` or `true` is yes).
pub fn query_flag(raw: Option<&str>) -> bool {
    matches!(raw, Some("1" | "true"))
}

/// Reads a `rewind=N` query parameter.
pub fn query_rewind(raw: Option<&str>) -> Result<Option<u16>, FrameError> {
    raw.map(|n| n.parse::<u64>().map_err(|_| format!("rewind is 1 to {MAX_REWIND} events")).and_then(parse_rewind))
        .transpose()
        .map_err(|e| FrameError::new(ErrorCode::BadFrame, e, None))
}

/// Reads a `rewind` count, 1 to [`MAX_REWIND`].
pub fn parse_rewind(n: u64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(n) if (1..=MAX_REWIND).contains(&n) => Ok(n),
        _ => Err(format!("rewind is 1 to {MAX_REWIND} events")),
    }
}

/// A frame a client sent, validated field by field.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// Join a room: live, resuming, rewinding, with its state.
    Subscribe {
        /// The room to join.
        room: RoomName,
        /// Where and how it starts.
        options: SubscribeOptions,
    },
    /// A reaction to a subscribed room: counted, not stored.
    React {
        /// The room reacted to.
        room: RoomName,
        /// What the viewer reacted with.
        key: ReactionKey,
    },
    /// Leave a room.
    Unsubscribe {
        /// The room to leave.
        room: RoomName,
    },
    /// Append `data` to a room; acked with the new event's ID.
    Publish {
        /// The room to publish to.
        room: RoomName,
        /// Any JSON value.
        data: Value,
        /// Client's correlation number, echoed in the ack or error.
        reference: Option<u64>,
        /// Names the publish, so a retry stores nothing twice.
        idempotency_key: Option<IdempotencyKey>,
        /// Makes the event this key's current value in the room.
        key: Option<StateKey>,
        /// The event's name (`message` to Pusher subscribers without one).
        name: Option<EventName>,
    },
    /// Hands the node a fresh credential before the connection's own
    /// expires, so the connection need not end.
    Refresh {
        /// A JWT, verified like the one the connection opened with.
        token: String,
    },
}

/// The refusal codes of `error` frames: a stable, documented catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a decodable frame: broken JSON/MessagePack, wrong field types, missing fields.
    BadFrame,
    /// A well-formed frame whose `type` the node does not know.
    UnknownType,
    /// A room name outside the allowed charset or length.
    BadRoom,
    /// A `last_event_id` that is not an event ID.
    BadEventId,
    /// An `idempotency_key` (or `Idempotency-Key` header) that is not 1-128
    /// bytes of visible ASCII.
    BadIdempotencyKey,
    /// `subscribe` to a room this connection already follows.
    AlreadySubscribed,
    /// `unsubscribe` from a room this connection does not follow.
    NotSubscribed,
    /// The store did not confirm in time. Nothing was acked; a publish whose
    /// command had already reached the store may still be stored.
    StoreUnavailable,
    /// The store refuses writes for lack of memory: nothing was stored, and
    /// retrying soon will not help until an operator makes room.
    StoreFull,
    /// A frame type the transport does not accept (e.g. binary on a JSON socket).
    UnsupportedFrame,
    /// The frame or payload exceeds a size limit.
    TooLarge,
    /// A per-connection limit (subscriptions) was reached.
    LimitExceeded,
    /// The connection's token does not allow this room.
    Forbidden,
    /// A `react` key that is empty, longer than 32 bytes, or holds
    /// whitespace or control characters.
    BadReaction,
    /// A `refresh` token that does not verify (bad signature, expired,
    /// not yet valid); the connection keeps its current credential.
    BadToken,
    /// Publishing faster than the per-connection rate limit.
    RateLimited,
    /// The node cannot take this now (shutting down, full); try another node.
    Unavailable,
    /// An idempotency key used within the window for another payload: the
    /// first publish stands (its ID is in the message), this one is not
    /// stored.
    IdempotencyConflict,
    /// Creating new rooms faster than a connection or credential may.
    TooManyRooms,
    /// A state key that is empty, over 64 bytes, or holds whitespace,
    /// control or format characters.
    BadKey,
    /// A publish with a new state key to a room that has `--max-state-keys`.
    TooManyKeys,
    /// The connection's subject is banned from the room.
    Banned,
    /// The room is in slow mode and this publisher published too recently.
    SlowMode,
    /// The application's publish hook refused the publish.
    Rejected,
    /// The publish hook did not answer in time, or failed.
    HookUnavailable,
    /// The credential may not moderate this room (HTTP 403).
    NotModerator,
    /// No resource at this path (HTTP).
    NotFound,
    /// The resource does not take this method (HTTP).
    MethodNotAllowed,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::BadEventId => "bad_event_id",
            ErrorCode::BadIdempotencyKey => "bad_idempotency_key",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::StoreFull => "store_full",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadReaction => "bad_reaction",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::BadKey => "bad_key",
            ErrorCode::TooManyKeys => "too_many_keys",
            ErrorCode::Banned => "banned",
            ErrorCode::SlowMode => "slow_mode",
            ErrorCode::Rejected => "rejected",
            ErrorCode::HookUnavailable => "hook_unavailable",
            ErrorCode::NotModerator => "not_moderator",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
        }
    }
}

/// A refused frame: what to tell the client.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The client's `ref`, when it could be read.
    pub reference: Option<u64>,
    /// When trying again makes sense (slow mode), in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl FrameError {
    /// Builds a refusal.
    pub fn new(code: ErrorCode, message: impl Into<String>, reference: Option<u64>) -> Self {
        FrameError { code, message: message.into(), reference, retry_after_ms: None }
    }

    /// The same refusal, saying when a retry makes sense.
    pub fn retry_after(mut self, ms: Option<u64>) -> Self {
        self.retry_after_ms = ms;
        self
    }
}

/// Server frames other than `events` (which are assembled by the codec).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// Answer to `subscribe`; `resumed` is true when a resume point was given
    /// and the kept history covers it (no gap).
    Subscribed {
        /// The room joined.
        room: RoomName,
        /// Whether the resume is complete.
        resumed: bool,
        /// The position the subscription delivers after: the resume point
        /// given, or the room's last event ID when joining live. A client
        /// that resumes from it after a drop misses nothing.
        last_event_id: EventId,
    },
    /// Answer to `refresh`: the new credential is in force.
    Refreshed {
        /// Seconds until the new credential expires (absent: never).
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_in: Option<u64>,
    },
    /// Answer to `unsubscribe`, or the node ending a subscription.
    Unsubscribed {
        /// The room left.
        room: RoomName,
        /// Why the node ended it (`banned`); absent for an `unsubscribe`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    /// Events after `after` are no longer kept; live delivery follows.
    Gap {
        /// The room.
        room: RoomName,
        /// The client's position when the hole was found.
        after: EventId,
    },
    /// A publish was stored under `id`.
    Ack {
        /// The client's correlation number.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
        /// The new event's ID (for a repeated idempotency key: the first
        /// publish's ID).
        id: EventId,
        /// Set when the idempotency key was seen before and nothing was stored.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        repeated: bool,
    },
    /// A refused frame.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// The client's `ref`, when known.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
        /// When trying again makes sense (slow mode), in milliseconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The room's live subscribers across all nodes (to subscribers that
    /// asked for it).
    Audience {
        /// The room.
        room: RoomName,
        /// Live subscribers, all nodes together.
        count: u64,
    },
    /// Who is in the room, across the deployment (to subscribers that
    /// asked for presence): first of all, and again after a lost diff.
    Presence {
        /// The room.
        room: RoomName,
        /// Its members (at most `--presence-max-members`).
        members: Vec<PresenceMember>,
        /// Members, all of them.
        count: u64,
        /// Whether `members` lists fewer than `count`.
        #[serde(skip_serializing_if = "is_false")]
        members_truncated: bool,
    },
    /// What changed in the room's members since the last presence frame
    /// (at most once a second, only when something did).
    #[serde(rename = "presence_diff")]
    PresenceDiff {
        /// The room.
        room: RoomName,
        /// Members that joined (or whose info changed).
        joined: Vec<PresenceMember>,
        /// Subjects that left.
        left: Vec<String>,
        /// Members, all of them.
        count: u64,
        /// Whether `joined` or `left` lists fewer than changed.
        #[serde(skip_serializing_if = "is_false")]
        members_truncated: bool,
    },
    /// The room's reactions of one window, summed over every node.
    Reactions {
        /// The room.
        room: RoomName,
        /// Reactions per key in the window.
        counts: BTreeMap<ReactionKey, u64>,
    },
    /// Sent on a connection the node has said nothing on for a while, so
    /// clients (browsers cannot see WebSocket pings) can tell a quiet link
    /// from a dead one.
    Heartbeat,
}

impl From<FrameError> for ServerFrame {
    fn from(e: FrameError) -> Self {
        ServerFrame::Error {
            code: e.code,
            message: e.message,
            reference: e.reference,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

/// The loose shape every client frame is first read into, so that each
/// problem gets its own precise error code instead of one serde message.
#[derive(Deserialize)]
pub(crate) struct RawClientFrame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub last_event_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub data: Option<Value>,
    #[serde(rename = "ref", default)]
    pub reference: Option<u64>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub audience: Option<bool>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub rewind: Option<u64>,
    #[serde(default)]
    pub state: Option<bool>,
    #[serde(default)]
    pub presence: Option<bool>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Only the `ref`, read leniently from a frame that failed to decode.
#[derive(Deserialize)]
pub(crate) struct RefOnly {
    #[serde(rename = "ref", default)]
    pub reference: Option<u64>,
}

/// Distinguishes `"data": null` (present) from an absent field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl RawClientFrame {
    /// Validates the loose frame into a [`ClientFrame`].
    pub(crate) fn validate(self) -> Result<ClientFrame, FrameError> {
        let reference = self.reference;
        let err = |code, msg: String| FrameError::new(code, msg, reference);
        let room = |room: Option<String>| -> Result<RoomName, FrameError> {
            let room = room.ok_or_else(|| err(ErrorCode::BadFrame, "missing field `room`".into()))?;
            RoomName::parse(&room).map_err(|e| err(ErrorCode::BadRoom, e.to_string()))
        };
        match self.kind.as_str() {
            "subscribe" => {
                let room = room(self.room)?;
                let last_event_id = match self.last_event_id {
                    Some(id) => Some(EventId::parse(&id).map_err(|e| err(ErrorCode::BadEventId, e.to_string()))?),
                    None => None,
                };
                let rewind = match self.rewind {
                    Some(n) => Some(parse_rewind(n).map_err(|e| err(ErrorCode::BadFrame, e))?),
                    None => None,
                };
                let options = SubscribeOptions {
                    last_event_id,
                    audience: self.audience.unwrap_or(false),
                    rewind,
                    state: self.state.unwrap_or(false),
                    presence: self.presence.unwrap_or(false),
                };
                Ok(ClientFrame::Subscribe { room, options })
            }
            "unsubscribe" => Ok(ClientFrame::Unsubscribe { room: room(self.room)? }),
            "publish" => {
                let room = room(self.room)?;
                let data = self.data.ok_or_else(|| err(ErrorCode::BadFrame, "missing field `data`".into()))?;
                let idempotency_key = match self.idempotency_key {
                    Some(k) => {
                        Some(IdempotencyKey::parse(&k).map_err(|e| err(ErrorCode::BadIdempotencyKey, e.to_string()))?)
                    }
                    None => None,
                };
                let key = match self.key {
                    Some(k) => Some(StateKey::parse(&k).map_err(|e| err(ErrorCode::BadKey, e.to_string()))?),
                    None => None,
                };
                let name = match self.name {
                    Some(n) => Some(EventName::parse(&n).map_err(|e| err(ErrorCode::BadFrame, e.to_string()))?),
                    None => None,
                };
                Ok(ClientFrame::Publish { room, data, reference, idempotency_key, key, name })
            }
            "react" => {
                let room = room(self.room)?;
                let key = self.key.ok_or_else(|| err(ErrorCode::BadFrame, "missing field `key`".into()))?;
                let key = ReactionKey::parse(&key).map_err(|e| err(ErrorCode::BadReaction, e.to_string()))?;
                Ok(ClientFrame::React { room, key })
            }
            "refresh" => {
                let token = self.token.ok_or_else(|| err(ErrorCode::BadFrame, "missing field `token`".into()))?;
                Ok(ClientFrame::Refresh { token })
            }
            other => Err(err(
                ErrorCode::UnknownType,
                format!("unknown frame type {:?}", other.chars().take(32).collect::<String>()),
            )),
        }
    }
}
