//! How many new rooms a connection, and a credential, may create.
//!
//! A room costs the store something for a day or two once it exists (a
//! stream's first listpack, its floor), and a token whose `publish` or
//! `rooms` pattern holds a `*` lets its holder name rooms without end. So
//! a publish or a live subscribe that would create a room (one the store
//! has no trace of) spends from two budgets: the connection's, and on this
//! node the credential's (a token's subject). Rooms the node has seen
//! exist are remembered, so publishing to existing rooms costs nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Grant;
use crate::protocol::RoomName;
use crate::store::{EventLog, StoreError};

/// The period the budgets count over.
const PERIOD: Duration = Duration::from_secs(60);
/// Rooms remembered as existing (oldest forgotten first).
const KNOWN_ROOMS: usize = 65_536;
/// Subjects tracked at once; past it, subjects whose period ended are forgotten.
const SUBJECTS: usize = 65_536;

/// Why a room may not be created now.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Past the new rooms a connection or credential may create per minute.
    #[error("more than {0} new rooms a minute")]
    TooMany(u32),
    /// The store could not say whether the room exists.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// New rooms made within the current period.
#[derive(Debug, Default)]
pub struct Window {
    start: Option<Instant>,
    made: u32,
}

impl Window {
    fn current(&mut self, now: Instant) -> &mut u32 {
        if self.start.is_none_or(|start| now.duration_since(start) >= PERIOD) {
            *self = Window { start: Some(now), made: 0 };
        }
        &mut self.made
    }
}

/// Rooms seen to exist, bounded.
#[derive(Default)]
struct Known {
    set: HashSet<RoomName>,
    order: VecDeque<RoomName>,
}

impl Known {
    fn insert(&mut self, room: &RoomName) {
        if self.set.insert(room.clone()) {
            self.order.push_back(room.clone());
            if self.order.len() > KNOWN_ROOMS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node's new-room budgets.
pub struct RoomBudget {
    per_minute: u32,
    known: Mutex<Known>,
    subjects: Mutex<HashMap<String, Window>>,
}

impl RoomBudget {
    /// Budgets of `per_minute` new rooms per connection and per subject.
    pub fn new(per_minute: u32) -> Self {
        RoomBudget { per_minute, known: Mutex::default(), subjects: Mutex::default() }
    }

    /// Lets `grant` (on the connection whose window is `conn`, if any) go on
    /// to publish to or follow `room`: at once for a room known to exist
    /// and for the API key, after a look at the store otherwise; a new room
    /// spends from the budgets, and is refused when one is spent.
    pub async fn admit(
        &self,
        room: &RoomName,
        grant: &Grant,
        conn: Option<&mut Window>,
        log: &dyn EventLog,
    ) -> Result<(), Refused> {
        if matches!(grant, Grant::ApiKey) || lock(&self.known).set.contains(room) {
            return Ok(());
        }
        if !log.tail(room).await?.is_zero() {
            lock(&self.known).insert(room);
            return Ok(());
        }
        let now = Instant::now();
        let mut subjects = lock(&self.subjects);
        if subjects.len() > SUBJECTS {
            subjects.retain(|_, w| w.start.is_some_and(|start| now.duration_since(start) < PERIOD));
        }
        let mut subject = grant.sub().map(|sub| subjects.entry(sub.to_owned()).or_default());
        let mut conn = conn;
        let spent = |w: &mut Option<&mut Window>| w.as_mut().is_some_and(|w| *w.current(now) >= self.per_minute);
        if spent(&mut conn) || spent(&mut subject) {
            metrics::counter!("roomcast_rooms_refused_total").increment(1);
            return Err(Refused::TooMany(self.per_minute));
        }
        for window in [conn, subject].into_iter().flatten() {
            *window.current(now) += 1;
        }
        drop(subjects);
        lock(&self.known).insert(room);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;
    use crate::store::memory::MemoryStore;
    use crate::store::{AppendOptions, StoreOptions};

    fn token(sub: &str) -> Grant {
        Grant::Token(Claims {
            sub: Some(sub.into()),
            exp: u64::MAX,
            rooms: vec!["*".into()],
            publish: vec!["*".into()],
            moderate: vec![],
            info: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn new_rooms_are_counted_per_connection_and_per_subject_existing_ones_are_free() {
        let store = MemoryStore::new(StoreOptions {
            history: 10,
            room_ttl: PERIOD * 60,
            presence_ttl: Duration::from_secs(6),
            max_state_keys: 1000,
        });
        let budget = RoomBudget::new(3);
        let room = |i: usize| RoomName::parse(&format!("r{i}")).unwrap();
        let (mut a, mut b) = (Window::default(), Window::default());
        let viewer = token("viewer");
        for i in 0..3 {
            budget.admit(&room(i), &viewer, Some(&mut a), &store).await.unwrap();
        }
        assert!(matches!(budget.admit(&room(3), &viewer, Some(&mut a), &store).await, Err(Refused::TooMany(3))));
        // Another connection of the same subject shares the subject's budget.
        assert!(budget.admit(&room(4), &viewer, Some(&mut b), &store).await.is_err());
        // A room that exists costs nothing, and neither does the API key.
        store.append(&room(9), bytes::Bytes::from_static(b"1"), AppendOptions::default()).await.unwrap();
        budget.admit(&room(9), &viewer, Some(&mut a), &store).await.unwrap();
        budget.admit(&room(5), &Grant::ApiKey, None, &store).await.unwrap();
        // Another subject has its own; a minute later the budget is whole.
        budget.admit(&room(6), &token("other"), Some(&mut b), &store).await.unwrap();
        tokio::time::advance(PERIOD).await;
        budget.admit(&room(7), &viewer, Some(&mut a), &store).await.unwrap();
    }
}
