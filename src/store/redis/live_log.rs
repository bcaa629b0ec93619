//! The live log on Redis: a hash of counts per room, the nodes' liveness
//! hash, and one notes stream.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use fred::prelude::*;
use tracing::warn;

use super::fault::unavailable;
use super::{now_ms, reply, RedisStore};
use crate::protocol::{EventId, RoomName};
use crate::store::live_log::{FORGET_AFTER_PERIODS, MAX_NOTE_BYTES, NOTES_KEPT, NOTES_PER_READ};
use crate::store::{LiveLog, LiveNote, NoteCursor, StoreError};

#[async_trait]
impl LiveLog for RedisStore {
    async fn report_audience(&self, node: &str, counts: &[(RoomName, usize)]) -> Result<(), StoreError> {
        let alive_until = now_ms() + self.options.presence_ttl.as_millis() as u64;
        let pipeline = self.client.pipeline();
        let _: () = pipeline.hset(self.keys.nodes(), (node, alive_until)).await.map_err(unavailable)?;
        for (room, count) in counts {
            let key = self.keys.audience(room);
            if *count == 0 {
                let _: () = pipeline.hdel(&key, node).await.map_err(unavailable)?;
            } else {
                let _: () = pipeline.hset(&key, (node, *count as u64)).await.map_err(unavailable)?;
                // Counts of rooms nobody reports on for a day go on their own.
                let ttl = self.options.room_ttl.as_millis() as i64;
                let _: () = pipeline.pexpire(&key, ttl, None).await.map_err(unavailable)?;
            }
        }
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(())
    }

    async fn audience_by_node(&self, rooms: &[RoomName]) -> Result<Vec<HashMap<String, u64>>, StoreError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        let _: () = pipeline.hkeys(self.keys.nodes()).await.map_err(unavailable)?;
        for room in rooms {
            let _: () = pipeline.hgetall(self.keys.audience(room)).await.map_err(unavailable)?;
        }
        let mut replies: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        let known: HashSet<String> =
            if replies.is_empty() { HashSet::new() } else { replies.remove(0).convert().map_err(unavailable)? };
        let mut out = Vec::with_capacity(rooms.len());
        for (room, reply) in rooms.iter().zip(replies) {
            let counts: HashMap<String, String> = reply.convert().map_err(unavailable)?;
            // A node that is not even remembered (killed, and forgotten
            // since) still has its counts here: drop them now.
            let gone: Vec<&String> = counts.keys().filter(|node| !known.contains(*node)).collect();
            if !gone.is_empty() {
                let _: Result<(), _> = self.client.hdel(self.keys.audience(room), gone).await;
            }
            out.push(
                counts
                    .iter()
                    .filter(|(node, _)| known.contains(*node))
                    // Older nodes wrote "<count>:<expires-ms>".
                    .filter_map(|(node, v)| Some((node.clone(), v.split(':').next()?.parse::<u64>().ok()?)))
                    .collect(),
            );
        }
        Ok(out)
    }

    async fn live_nodes(&self) -> Result<HashSet<String>, StoreError> {
        let nodes: HashMap<String, u64> = self.client.hgetall(self.keys.nodes()).await.map_err(unavailable)?;
        let now = now_ms();
        // A node gone for a while is forgotten by whoever notices.
        let forget = self.options.presence_ttl.as_millis() as u64 * u64::from(FORGET_AFTER_PERIODS);
        let forgotten: Vec<&String> =
            nodes.iter().filter(|(_, until)| **until + forget < now).map(|(node, _)| node).collect();
        if !forgotten.is_empty() {
            let _: Result<(), _> = self.client.hdel(self.keys.nodes(), forgotten).await;
        }
        Ok(nodes.into_iter().filter(|(_, until)| *until > now).map(|(node, _)| node).collect())
    }

    async fn append_note(&self, note: &LiveNote) -> Result<(), StoreError> {
        let json = note.to_json();
        if json.len() > MAX_NOTE_BYTES {
            return Err(StoreError::Protocol(format!(
                "a live note of {} bytes (at most {MAX_NOTE_BYTES})",
                json.len()
            )));
        }
        let _: Value = self
            .client
            .xadd(self.keys.notes(), false, ("MAXLEN", "~", NOTES_KEPT as u64), "*", ("d", json))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn read_notes(&self, after: Option<&NoteCursor>) -> Result<(Vec<LiveNote>, NoteCursor), StoreError> {
        let key = self.keys.notes();
        let Some(after) = after else {
            let value: Value = self.client.xrevrange(&key, "+", "-", Some(1)).await.map_err(unavailable)?;
            let last = match value {
                Value::Array(items) => items.first().map(reply::entry_id).transpose()?,
                _ => None,
            };
            return Ok((Vec::new(), NoteCursor(last.unwrap_or(EventId::ZERO).to_string())));
        };
        let value: Value =
            self.client.xread(Some(NOTES_PER_READ as u64), None, key, after.0.clone()).await.map_err(unavailable)?;
        let mut notes = Vec::new();
        let mut cursor = after.clone();
        for (_, items) in reply::xread_streams(value)? {
            for item in &items {
                let (id, data) = reply::id_and_field(item, b"d")?;
                cursor = NoteCursor(id.to_string());
                match data.map(|d| serde_json::from_slice::<LiveNote>(&d)) {
                    Some(Ok(note)) => notes.push(note),
                    _ => warn!(%id, "a live note that is not roomcast's; skipped"),
                }
            }
        }
        Ok((notes, cursor))
    }
}
