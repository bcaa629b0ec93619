//! The one publish path, for WebSocket and HTTP alike: authorise, size,
//! append (once per idempotency key), count. What is particular to a
//! transport (a connection's rate limit, an HTTP body's format) stays in
//! the transport; everything a publish must pass, whatever carried it, is
//! here. (The publish hook, when it comes, is one more step here.)

use std::sync::Arc;

use serde_json::Value;

use crate::auth::Grant;
use crate::protocol::{data_to_json, ErrorCode, IdempotencyKey, RoomName};
use crate::store::{Appended, EventLog, StoreError};

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
            Refused::Store(e) => e.error_code(),
        }
    }
}

/// The node's publish path.
pub struct Publisher {
    log: Arc<dyn EventLog>,
    /// Largest payload, as compact JSON (`--max-message-bytes`).
    max_payload: usize,
}

impl Publisher {
    /// Publishes into `log`, refusing payloads over `max_payload` bytes.
    pub fn new(log: Arc<dyn EventLog>, max_payload: usize) -> Self {
        Publisher { log, max_payload }
    }

    /// Stores `data` in `room` for `grant` and answers its ID; never
    /// answers an ID the store did not confirm. With an idempotency key, a
    /// repeat within the window stores nothing and answers the first ID.
    pub async fn publish(
        &self,
        grant: &Grant,
        room: &RoomName,
        data: &Value,
        key: Option<&IdempotencyKey>,
        via: Via,
    ) -> Result<Appended, Refused> {
        if !grant.may_publish(room) {
            return Err(Refused::Forbidden(room.clone()));
        }
        let json = data_to_json(data);
        if json.len() > self.max_payload {
            return Err(Refused::TooLarge { size: json.len(), limit: self.max_payload });
        }
        let appended = self.log.append(room, json, key).await?;
        match appended {
            Appended::Stored(_) => metrics::counter!("roomcast_published_total", "via" => via.label()).increment(1),
            Appended::Repeated(_) => {
                metrics::counter!("roomcast_publish_repeats_total", "via" => via.label()).increment(1)
            }
        }
        Ok(appended)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::StoreOptions;

    #[tokio::test]
    async fn authorises_sizes_and_stores_once_per_key() {
        let options =
            StoreOptions { history: 10, room_ttl: Duration::from_secs(60), presence_ttl: Duration::from_secs(6) };
        let publisher = Publisher::new(Arc::new(MemoryStore::new(options)), 16);
        let room = RoomName::parse("r").unwrap();
        let key = IdempotencyKey::parse("k").unwrap();
        let first = publisher.publish(&Grant::Open, &room, &Value::from(1), Some(&key), Via::Http).await.unwrap();
        assert!(matches!(first, Appended::Stored(_)));
        let again = publisher.publish(&Grant::Open, &room, &Value::from(2), Some(&key), Via::WebSocket).await.unwrap();
        assert_eq!(again, Appended::Repeated(first.id()));
        let big = Value::from("x".repeat(20));
        assert!(matches!(
            publisher.publish(&Grant::Open, &room, &big, None, Via::Http).await,
            Err(Refused::TooLarge { size: 22, limit: 16 })
        ));
        assert!(matches!(
            publisher.publish(&Grant::Anonymous, &room, &Value::from(1), None, Via::Http).await,
            Err(Refused::Forbidden(_))
        ));
    }
}
