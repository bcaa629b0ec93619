//! The one publish path, for WebSocket and HTTP alike: authorise, size,
//! append (once per idempotency key), count. What is particular to a
//! transport (a connection's rate limit, an HTTP body's format) stays in
//! the transport; everything a publish must pass, whatever carried it, is
//! here. (The publish hook, when it comes, is one more step here.)

use std::sync::Arc;

use serde_json::Value;

use crate::auth::Grant;
use crate::budget::{self, RoomBudget, Window};
use crate::moderation::hook::{PublishHook, Verdict};
use crate::moderation::Moderation;
use crate::protocol::{data_to_json, ErrorCode, EventId, EventName, IdempotencyKey, RoomName, StateKey};
use crate::store::{AppendOptions, Appended, EventLog, Slow, StoreError};

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
    /// The publisher's subject is banned from the room.
    #[error("banned from this room until {until_ms} (ms since the epoch)")]
    Banned {
        /// When the ban ends.
        until_ms: u64,
    },
    /// Slow mode: the publisher published to the room too recently.
    #[error("slow mode: publish again in {retry_after_ms} ms")]
    SlowMode {
        /// When it may publish again.
        retry_after_ms: u64,
    },
    /// The publish hook refused, saying why.
    #[error("{0}")]
    Rejected(String),
    /// The publish hook did not answer usably (the node fails closed).
    #[error("the publish hook is unavailable: {0}")]
    HookUnavailable(String),
    /// The store did not confirm the append: it may or may not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Refused {
    /// When a retry makes sense, for slow mode.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Refused::SlowMode { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The error code a client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refused::Forbidden(_) => ErrorCode::Forbidden,
            Refused::TooLarge { .. } => ErrorCode::TooLarge,
            Refused::Conflict(_) => ErrorCode::IdempotencyConflict,
            Refused::TooManyRooms(_) => ErrorCode::TooManyRooms,
            Refused::TooManyKeys => ErrorCode::TooManyKeys,
            Refused::Banned { .. } => ErrorCode::Banned,
            Refused::SlowMode { .. } => ErrorCode::SlowMode,
            Refused::Rejected(_) => ErrorCode::Rejected,
            Refused::HookUnavailable(_) => ErrorCode::HookUnavailable,
            Refused::Store(e) => e.error_code(),
        }
    }
}

/// One publish, as a transport hands it over.
pub struct Publication<'a> {
    /// Who publishes.
    pub grant: &'a Grant,
    /// For slow mode, who an anonymous publisher is (its connection); a
    /// token's subject is used when there is one. `None`: not limited.
    pub anonymous: Option<&'a str>,
    /// The room.
    pub room: &'a RoomName,
    /// The payload (the hook may rewrite it).
    pub data: Value,
    /// Names the publish, so a retry stores nothing twice.
    pub idempotency: Option<&'a IdempotencyKey>,
    /// Makes the event this state key's current value.
    pub key: Option<&'a StateKey>,
    /// The event's name.
    pub name: Option<&'a EventName>,
    /// A Pusher socket the event is not delivered to.
    pub skip: Option<&'a str>,
    /// What carried it.
    pub via: Via,
}

/// The node's publish path.
pub struct Publisher {
    log: Arc<dyn EventLog>,
    /// Largest payload, as compact JSON (`--max-message-bytes`).
    max_payload: usize,
    /// New rooms per connection and credential (`--new-rooms-per-minute`).
    budget: RoomBudget,
    /// Bans and slow mode.
    moderation: Arc<Moderation>,
    /// The application's say before a client's publish is stored.
    hook: Option<PublishHook>,
}

impl Publisher {
    /// Publishes into `log`, refusing payloads over `max_payload` bytes and
    /// more than `new_rooms_per_minute` new rooms per connection or
    /// credential, under `moderation`'s bans and slow mode, asking `hook`.
    pub fn new(
        log: Arc<dyn EventLog>,
        max_payload: usize,
        new_rooms_per_minute: u32,
        moderation: Arc<Moderation>,
        hook: Option<PublishHook>,
    ) -> Self {
        Publisher { log, max_payload, budget: RoomBudget::new(new_rooms_per_minute), moderation, hook }
    }

    /// The new-room budgets, which a live subscribe spends from too.
    pub fn budget(&self) -> &RoomBudget {
        &self.budget
    }

    /// The node's moderation.
    pub fn moderation(&self) -> &Arc<Moderation> {
        &self.moderation
    }

    /// Stores a publication (on the connection whose new-room window is
    /// `conn`, if any) and answers its ID; never answers an ID the store did
    /// not confirm. With an idempotency key, a repeat within the window
    /// stores nothing and answers the first ID (without asking the hook
    /// again); with a state key, the event becomes that key's current value.
    pub async fn publish(&self, p: Publication<'_>, conn: Option<&mut Window>) -> Result<Published, Refused> {
        let Publication { grant, anonymous, room, mut data, idempotency, key, name, skip, via } = p;
        if !grant.may_publish(room) {
            return Err(Refused::Forbidden(room.clone()));
        }
        self.check_size(&data)?;
        if let Some(until_ms) = self.moderation.banned_until(room, grant).await? {
            return Err(Refused::Banned { until_ms });
        }
        self.budget.admit(room, grant, conn, &*self.log).await.map_err(|e| match e {
            budget::Refused::TooMany(n) => Refused::TooManyRooms(n),
            budget::Refused::Store(e) => Refused::Store(e),
        })?;
        // Moderators and the API key are not slowed down; the API key is
        // the application's own backend, which the hook does not ask.
        let slow = match (grant.may_moderate(room), grant.sub().or(anonymous)) {
            (false, Some(publisher)) => {
                let interval_ms = self.moderation.rules(room).await?.settings.slow_mode_ms;
                (interval_ms > 0).then_some(Slow { publisher, interval_ms })
            }
            _ => None,
        };
        let asks_hook = match (grant, via) {
            (Grant::ApiKey, _) => false,
            (Grant::Token(_), Via::Http) => true,
            (_, Via::Http) => false,
            (_, Via::WebSocket) => true,
        };
        if let Some(hook) = self.hook.as_ref().filter(|_| asks_hook) {
            let stored_before = match idempotency {
                Some(k) => self.log.recorded(room, k).await?,
                None => None,
            };
            if stored_before.is_none() {
                match hook.check(room.as_str(), grant.sub(), &data, idempotency.map(IdempotencyKey::as_str)).await {
                    Ok(Verdict::Store(approved)) => data = approved,
                    Ok(Verdict::Refuse(reason)) => return Err(Refused::Rejected(reason)),
                    Err(e) => return Err(Refused::HookUnavailable(e.0)),
                }
                self.check_size(&data)?;
            }
        }
        let options = AppendOptions { idempotency, key, slow, name, skip };
        match self.log.append(room, data_to_json(&data), options).await? {
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
            Appended::SlowMode { retry_after_ms } => Err(Refused::SlowMode { retry_after_ms }),
            Appended::NotFound => {
                Err(Refused::Store(StoreError::Protocol("a publish answered as an operation".into())))
            }
        }
    }

    fn check_size(&self, data: &Value) -> Result<(), Refused> {
        let size = data_to_json(data).len();
        if size > self.max_payload {
            return Err(Refused::TooLarge { size, limit: self.max_payload });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hub::Hub;
    use crate::protocol::{IdempotencyKey, StateKey};
    use crate::store::feed::Feed;
    use crate::store::memory::MemoryStore;
    use crate::store::{RoomSettings, Rules, StoreOptions};

    fn publisher(max_state_keys: usize) -> (Publisher, Arc<MemoryStore>) {
        let options = StoreOptions {
            history: 10,
            room_ttl: Duration::from_secs(60),
            presence_ttl: Duration::from_secs(6),
            max_state_keys,
        };
        let store = Arc::new(MemoryStore::new(options));
        let hub = Hub::new(Feed::unattended(store.clone()));
        let moderation = Arc::new(Moderation::new(store.clone(), hub, "n".into()));
        (Publisher::new(store.clone(), 16, 100, moderation, None), store)
    }

    fn publication<'a>(grant: &'a Grant, room: &'a RoomName, data: Value) -> Publication<'a> {
        Publication {
            grant,
            anonymous: None,
            room,
            data,
            idempotency: None,
            key: None,
            name: None,
            skip: None,
            via: Via::Http,
        }
    }

    #[tokio::test]
    async fn authorises_sizes_and_stores_once_per_key() {
        let (publisher, _) = publisher(1);
        let room = RoomName::parse("r").unwrap();
        let key = IdempotencyKey::parse("k").unwrap();
        let open = Grant::Open;
        let once = |data: Value| Publication { idempotency: Some(&key), ..publication(&open, &room, data) };
        let first = publisher.publish(once(Value::from(1)), None).await.unwrap();
        assert!(matches!(first, Published::Stored(_)));
        let again = publisher.publish(Publication { via: Via::WebSocket, ..once(Value::from(1)) }, None).await.unwrap();
        assert_eq!(again, Published::Repeated(first.id()));
        let other = publisher.publish(once(Value::from(2)), None).await;
        assert!(matches!(other, Err(Refused::Conflict(id)) if id == first.id()), "{other:?}");
        let big = Value::from("x".repeat(20));
        assert!(matches!(
            publisher.publish(publication(&open, &room, big), None).await,
            Err(Refused::TooLarge { size: 22, limit: 16 })
        ));
        assert!(matches!(
            publisher.publish(publication(&Grant::Anonymous, &room, Value::from(1)), None).await,
            Err(Refused::Forbidden(_))
        ));
        // One state key at most here: the second is refused, the first takes new values.
        let (score, poll) = (StateKey::parse("score").unwrap(), StateKey::parse("poll").unwrap());
        let keyed = |key, data: Value| Publication { key: Some(key), ..publication(&open, &room, data) };
        publisher.publish(keyed(&score, Value::from(1)), None).await.unwrap();
        publisher.publish(keyed(&score, Value::from(2)), None).await.unwrap();
        let refused = publisher.publish(keyed(&poll, Value::from(3)), None).await;
        assert!(matches!(refused, Err(Refused::TooManyKeys)), "{refused:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_mode_holds_each_publisher_to_the_interval_and_spares_moderators() {
        let (publisher, store) = publisher(10);
        let room = RoomName::parse("chat").unwrap();
        store.set_settings(&room, RoomSettings { slow_mode_ms: 5_000 }).await.unwrap();
        let viewer = |sub: &str| {
            Grant::Token(crate::auth::Claims {
                sub: Some(sub.into()),
                exp: u64::MAX,
                rooms: vec!["*".into()],
                publish: vec!["*".into()],
                moderate: vec![],
                info: None,
            })
        };
        let (ann, bob) = (viewer("ann"), viewer("bob"));
        publisher.publish(publication(&ann, &room, Value::from(1)), None).await.unwrap();
        let early = publisher.publish(publication(&ann, &room, Value::from(2)), None).await;
        assert!(matches!(early, Err(Refused::SlowMode { retry_after_ms }) if retry_after_ms <= 5_000), "{early:?}");
        // Others are not held by ann's publish; the API key never is.
        publisher.publish(publication(&bob, &room, Value::from(3)), None).await.unwrap();
        for i in 0..3 {
            publisher.publish(publication(&Grant::ApiKey, &room, Value::from(i)), None).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        publisher.publish(publication(&ann, &room, Value::from(4)), None).await.unwrap();
    }
}
