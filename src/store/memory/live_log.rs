//! The embedded store's live log: per-node counts and notes, in memory.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{lock, MemoryStore};
use crate::protocol::RoomName;
use crate::store::live_log::{FORGET_AFTER_PERIODS, MAX_NOTE_BYTES, NOTES_KEPT, NOTES_PER_READ};
use crate::store::{LiveLog, LiveNote, NoteCursor, StoreError};

#[async_trait]
impl LiveLog for MemoryStore {
    async fn report_audience(&self, node: &str, counts: &[(RoomName, usize)]) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let alive_until = Instant::now() + self.options.presence_ttl;
        inner.nodes.insert(node.to_owned(), alive_until);
        for (room, count) in counts {
            if *count == 0 {
                if let Some(nodes) = inner.audience.get_mut(room) {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        inner.audience.remove(room);
                    }
                }
            } else {
                inner.audience.entry(room.clone()).or_default().insert(node.to_owned(), *count as u64);
            }
        }
        Ok(())
    }

    async fn audience_by_node(&self, rooms: &[RoomName]) -> Result<Vec<HashMap<String, u64>>, StoreError> {
        let inner = lock(&self.inner);
        // Counts of nodes no longer remembered (killed, and forgotten) are
        // left out, as the Redis store drops them.
        let known = |node: &String| inner.nodes.contains_key(node);
        Ok(rooms
            .iter()
            .map(|room| {
                let counts = inner.audience.get(room);
                counts.map(|c| c.iter().filter(|(n, _)| known(n)).map(|(n, c)| (n.clone(), *c)).collect())
            })
            .map(Option::unwrap_or_default)
            .collect())
    }

    async fn live_nodes(&self) -> Result<HashSet<String>, StoreError> {
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        // A node gone for a while is forgotten by whoever notices.
        let forget = self.options.presence_ttl * FORGET_AFTER_PERIODS;
        inner.nodes.retain(|_, until| now.saturating_duration_since(*until) < forget);
        Ok(inner.nodes.iter().filter(|(_, until)| **until > now).map(|(node, _)| node.clone()).collect())
    }

    async fn append_note(&self, note: &LiveNote) -> Result<(), StoreError> {
        let size = note.to_json().len();
        if size > MAX_NOTE_BYTES {
            return Err(StoreError::Protocol(format!("a live note of {size} bytes (at most {MAX_NOTE_BYTES})")));
        }
        let mut inner = lock(&self.inner);
        inner.note_seq += 1;
        let seq = inner.note_seq;
        inner.notes.push_back((seq, note.clone()));
        if inner.notes.len() > NOTES_KEPT {
            inner.notes.pop_front();
        }
        Ok(())
    }

    async fn read_notes(&self, after: Option<&NoteCursor>) -> Result<(Vec<LiveNote>, NoteCursor), StoreError> {
        let inner = lock(&self.inner);
        let Some(after) = after.and_then(|c| c.0.parse::<u64>().ok()) else {
            return Ok((Vec::new(), NoteCursor(inner.note_seq.to_string())));
        };
        let notes: Vec<(u64, LiveNote)> =
            inner.notes.iter().filter(|(seq, _)| *seq > after).take(NOTES_PER_READ).cloned().collect();
        let next = notes.last().map_or(after, |(seq, _)| *seq);
        Ok((notes.into_iter().map(|(_, note)| note).collect(), NoteCursor(next.to_string())))
    }
}
