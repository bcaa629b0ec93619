//! The one publish path, for WebSocket and HTTP alike: authorise, size,
//! append (once per idempotency key), count. What is particular to a
//! transport (a connection's rate limit, an HTTP body's format) stays in
//! the transport; everything a publish must pass, whatever carried it, is
//! here. (The publish hook, when it comes, is one more step here.)

use std::sync::Arc;

use serde_json::Value;

use crate::auth::Grant;
use crate::budget::{self, RoomBudget, Window};
use crate::protocol::{data_to_json, ErrorCode, EventId, RoomName};
use crate::store::{AppendOptions, Appended, EventLog, StoreError};

/// What carried a publish, for its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A `publish` frame on a WebSocket.
    WebSocket,
    /// `POST /rooms/{room}/events`.
    Http,
}

impl Via {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Via::WebSocket => "ws",
            Via::Http => "http",
        }
    }
}

/// A publish the store confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored now, as this event.
    Stored(EventId),
    /// A repeat of an idempotent publish: nothing stored, the first one's ID.
    Repeated(EventId),
}

impl Published {
    /// The event's ID, stored now or before.
    pub fn id(self) -> EventId {
        match self {
            Published::Stored(id) | Published::Repeated(id) => id,
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The credential does not allow publishing to the room.
    #[error("this credential may not publish to {0}")]
    Forbidden(RoomName),
    /// The payload is over `--max-message-bytes` (as compact JSON).
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Past the new rooms the connection or credential may create per minute.
    #[error("more than {0} new rooms a minute")]
    TooManyRooms(u32),
    /// The idempotency key was used within the window for another payload.
    #[error("this idempotency key was used for another payload in this room; the first publish stands as {0}")]
    Conflict(EventId),
    /// A new state key in a room that has as many as it may keep.
    #[error("this room has as many state keys as it may keep; publish to an existing key")]
    TooManyKeys,
    /// The store did not confirm the append: it may or may not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Refused {
    /// The error code a client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refused::Forbidden(_) => ErrorCode::Forbidden,
            Refused::TooLarge { .. } => ErrorCode::TooLarge,
            Refused::Conflict(_) => ErrorCode::IdempotencyConflict,
            Refused::TooManyRooms(_) => ErrorCode::TooManyRooms,
            Refused::TooManyKeys => ErrorCode::TooManyKeys,
            Refused::Store(e) => e.error_code(),
        }
    }
}

/// The node's publish path.
pub struct Publisher {
    log: Arc<dyn EventLog>,
    /// Largest payload, as compact JSON (`--max-message-bytes`).
    max_payload: usize,
    /// New rooms per connection and credential (`--new-rooms-per-minute`).
    budget: RoomBudget,
}

impl Publisher {
    /// Publishes into `log`, refusing payloads over `max_payload` bytes and
    /// more than `new_rooms_per_minute` new rooms per connection or credential.
    pub fn new(log: Arc<dyn EventLog>, max_payload: usize, new_rooms_per_minute: u32) -> Self {
        Publisher { log, max_payload, budget: RoomBudget::new(new_rooms_per_minute) }
    }

    /// The new-room budgets, which a live subscribe spends from too.
    pub fn budget(&self) -> &RoomBudget {
        &self.budget
    }

    /// Stores `data` in `room` for `grant` (on the connection whose new-room
    /// window is `conn`, if any) and answers its ID; never answers an ID the
    /// store did not confirm. With an idempotency key, a repeat within the
    /// window stores nothing and answers the first ID; with a state key, the
    /// event becomes that key's current value.
    pub async fn publish(
        &self,
        grant: &Grant,
        conn: Option<&mut Window>,
        room: &RoomName,
        data: &Value,
        options: AppendOptions<'_>,
        via: Via,
    ) -> Result<Published, Refused> {
        if !grant.may_publish(room) {
            return Err(Refused::Forbidden(room.clone()));
        }
        let json = data_to_json(data);
        if json.len() > self.max_payload {
            return Err(Refused::TooLarge { size: json.len(), limit: self.max_payload });
        }
        self.budget.admit(room, grant, conn, &*self.log).await.map_err(|e| match e {
            budget::Refused::TooMany(n) => Refused::TooManyRooms(n),
            budget::Refused::Store(e) => Refused::Store(e),
        })?;
        match self.log.append(room, json, options).await? {
            Appended::Stored(id) => {
                metrics::counter!("roomcast_published_total", "via" => via.label()).increment(1);
                Ok(Published::Stored(id))
            }
            Appended::Repeated(id) => {
                metrics::counter!("roomcast_publish_repeats_total", "via" => via.label()).increment(1);
                Ok(Published::Repeated(id))
            }
            Appended::Conflict(id) => Err(Refused::Conflict(id)),
            Appended::TooManyKeys => Err(Refused::TooManyKeys),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::{IdempotencyKey, StateKey};
    use crate::store::memory::MemoryStore;
    use crate::store::StoreOptions;

    #[tokio::test]
    async fn authorises_sizes_and_stores_once_per_key() {
        let options = StoreOptions {
            history: 10,
            room_ttl: Duration::from_secs(60),
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 1,
        };
        let publisher = Publisher::new(Arc::new(MemoryStore::new(options)), 16, 100);
        let room = RoomName::parse("r").unwrap();
        let key = IdempotencyKey::parse("k").unwrap();
        let once = AppendOptions::idempotent(Some(&key));
        let none = AppendOptions::default();
        let first = publisher.publish(&Grant::Open, None, &room, &Value::from(1), once, Via::Http).await.unwrap();
        assert!(matches!(first, Published::Stored(_)));
        let again = publisher.publish(&Grant::Open, None, &room, &Value::from(1), once, Via::WebSocket).await.unwrap();
        assert_eq!(again, Published::Repeated(first.id()));
        let other = publisher.publish(&Grant::Open, None, &room, &Value::from(2), once, Via::Http).await;
        assert!(matches!(other, Err(Refused::Conflict(id)) if id == first.id()), "{other:?}");
        let big = Value::from("x".repeat(20));
        assert!(matches!(
            publisher.publish(&Grant::Open, None, &room, &big, none, Via::Http).await,
            Err(Refused::TooLarge { size: 22, limit: 16 })
        ));
        assert!(matches!(
            publisher.publish(&Grant::Anonymous, None, &room, &Value::from(1), none, Via::Http).await,
            Err(Refused::Forbidden(_))
        ));
        // One state key at most here: the second is refused, the first takes new values.
        let (score, poll) = (StateKey::parse("score").unwrap(), StateKey::parse("poll").unwrap());
        let keyed = |key| AppendOptions { idempotency: None, key: Some(key) };
        publisher.publish(&Grant::Open, None, &room, &Value::from(1), keyed(&score), Via::Http).await.unwrap();
        publisher.publish(&Grant::Open, None, &room, &Value::from(2), keyed(&score), Via::Http).await.unwrap();
        let refused = publisher.publish(&Grant::Open, None, &room, &Value::from(3), keyed(&poll), Via::Http).await;
        assert!(matches!(refused, Err(Refused::TooManyKeys)), "{refused:?}");
    }
}
