//! The Redis key layout.
//!
//! Every room belongs to one of [`BUCKETS`] buckets, and all keys of a room
//! carry its bucket as the hash tag (`{b17}`), so they share one Redis
//! Cluster slot with the bucket's signal stream. That lets the publish script
//! touch the room and its bucket's signal atomically, and lets one `XREAD`
//! cover many rooms of a bucket on a cluster.
//!
//! ```text
//! {prefix}:{b<N>}:r:<room>     the room's stream: fields p (predecessor ID), d (JSON)
//! {prefix}:{b<N>}:a:<room>     hash: node -> its local subscriber count (audience)
//! {prefix}:{b<N>}:f:<room>     the last ID the room ever handed out (its ID floor)
//! {prefix}:{b<N>}:i:<room>|<k> the ID a publish with idempotency key k got (5 min;
//!                              `|` never occurs in a room name, so pairs cannot collide)
//! {prefix}:{b<N>}:sig          stream of changed room names in bucket N
//! {prefix}:ctl:<node>          a node's wake-up stream for its reader
//! {prefix}:incarnation         random token; missing or changed = Redis lost its data
//! {prefix}:nodes               hash: node -> alive until (ms); counts of others are ignored
//! {prefix}:notes               stream of live notes (audience changes, reaction windows)
//! ```

use crate::protocol::RoomName;

/// Number of buckets rooms are hashed into. Part of the stored layout:
/// changing it moves every room to new keys.
pub const BUCKETS: u16 = 64;

/// A room's bucket: FNV-1a of its name, modulo [`BUCKETS`]. Stable across
/// nodes, versions and platforms.
pub fn bucket(room: &RoomName) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in room.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(BUCKETS)) as u16
}

/// Builds key names under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (several deployments can share one Redis).
    pub fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned() }
    }

    /// The room's event stream.
    pub fn room(&self, room: &RoomName) -> String {
        format!("{}:{{b{}}}:r:{}", self.prefix, bucket(room), room)
    }

    /// The room's audience hash.
    pub fn audience(&self, room: &RoomName) -> String {
        format!("{}:{{b{}}}:a:{}", self.prefix, bucket(room), room)
    }

    /// The room's ID floor: the last ID it handed out, kept apart from the
    /// stream so a rebuilt stream never reissues an ID.
    pub fn floor(&self, room: &RoomName) -> String {
        format!("{}:{{b{}}}:f:{}", self.prefix, bucket(room), room)
    }

    /// What a publish with idempotency key `key` to `room` got.
    pub fn idempotency(&self, room: &RoomName, key: &str) -> String {
        format!("{}:{{b{}}}:i:{}|{}", self.prefix, bucket(room), room, key)
    }

    /// A bucket's signal stream.
    pub fn signals(&self, bucket: u16) -> String {
        format!("{}:{{b{}}}:sig", self.prefix, bucket)
    }

    /// The deployment's incarnation token.
    pub fn incarnation(&self) -> String {
        format!("{}:incarnation", self.prefix)
    }

    /// Every node's liveness.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The live notes every node reads.
    pub fn notes(&self) -> String {
        format!("{}:notes", self.prefix)
    }

    /// A node's wake-up stream.
    pub fn control(&self, node: &str) -> String {
        format!("{}:ctl:{}", self.prefix, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_keys_share_its_bucket_tag() {
        let keys = Keys::new("rc");
        let room = RoomName::parse("show-42").unwrap();
        let b = bucket(&room);
        assert!(b < BUCKETS);
        let tag = format!("{{b{b}}}");
        assert!(keys.room(&room).contains(&tag));
        assert!(keys.audience(&room).contains(&tag));
        assert!(keys.floor(&room).contains(&tag));
        assert!(keys.signals(b).contains(&tag));
        assert_eq!(keys.room(&room), format!("rc:{tag}:r:show-42"));
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Pinned: the layout is shared by every node of a deployment.
        assert_eq!(bucket(&RoomName::parse("a").unwrap()), 0xe40c292c_u32 as u16 % BUCKETS);
        let used: std::collections::HashSet<u16> =
            (0..1000).map(|i| bucket(&RoomName::parse(&format!("room-{i}")).unwrap())).collect();
        assert_eq!(used.len(), BUCKETS as usize);
    }
}
