//! The Redis key layout.
//!
//! Every room belongs to one of [`BUCKETS`] buckets, and all keys of a room
//! carry its bucket's hash tag (`{T}` below), so they share one Redis
//! Cluster slot with the bucket's signal stream, doorbell and epoch. That
//! lets the publish script touch the room and its bucket atomically, and
//! lets one `XREAD` cover many rooms of a bucket on a cluster.
//!
//! Tags are chosen, not hashed at random: bucket `b` owns slots
//! `16b .. 16b+15`, and its tag is the first string `s<n>` whose slot lies
//! there. Clusters split the 16,384 slots into contiguous ranges, so every
//! master holds `1024 / masters` buckets, within one or two, from 3 masters
//! to 100 and more.
//!
//! ```text
//! {prefix}:{T}:r:<room>     the room's stream: fields p (predecessor ID), k (state key,
//!                           for a keyed event), d (JSON)
//! {prefix}:{T}:s:<room>     hash: state key -> "<id> <data>", the key's current value
//! {prefix}:{T}:v:<room>     hash: event id -> what moderators did to it ("e|<edits>|<data>",
//!                           "x|<prev>" for a deleted event, "o|<prev>|<target>" for a deleted edit)
//! {prefix}:{T}:b:<room>     hash: banned subject -> ban end (ms since the epoch)
//! {prefix}:{T}:c:<room>     hash: the room's settings (slow_mode_ms)
//! {prefix}:{T}:w:<room>|<p> set while publisher p must wait under the room's slow mode
//! {prefix}:{T}:a:<room>     hash: node -> its local subscriber count (audience)
//! {prefix}:{T}:f:<room>     "<id> <server>": the last position the room handed out (its
//!                           floor) and the server process that wrote it
//! {prefix}:{T}:i:<room>|<k> "<id> <nonce>": what a publish with idempotency key k got (5 min;
//!                           `|` never occurs in a room name, so pairs cannot collide)
//! {prefix}:{T}:x:<room>|<n> "<id> <nonce>": what the append call with nonce n got, for a
//!                           resend of the same call (seconds)
//! {prefix}:{T}:sig          stream of changed room names in the bucket (its mailbox; cluster)
//! {prefix}:sig              stream of changed room names (the mailbox of a single Redis)
//! {prefix}:{T}:ring         shard channel rung with the room's name on every publish
//!                           (cluster only: the doorbell the reader waits on)
//! {prefix}:{T}:epoch        random token; missing or changed = the bucket lost data
//! {prefix}:ctl:<node>       a node's wake-up stream for its reader (single Redis)
//! {prefix}:nodes            hash: node -> alive until (ms); counts of others are ignored
//! {prefix}:notes            stream of live notes (audience changes, reaction windows)
//! ```

use std::sync::OnceLock;

use crate::protocol::RoomName;

/// Number of buckets rooms are hashed into. Part of the stored layout:
/// changing it moves every room to new keys (see `docs/architecture.md`).
pub const BUCKETS: u16 = 1024;

/// Redis Cluster's slot count.
const SLOTS: u16 = 16_384;

/// Each bucket's hash tag, in bucket order (see the module docs).
pub fn tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let per_bucket = SLOTS / BUCKETS;
        let mut tags: Vec<Option<String>> = vec![None; BUCKETS as usize];
        let mut missing = BUCKETS as usize;
        let mut n = 0u32;
        while missing > 0 {
            let tag = format!("s{n}");
            let bucket = usize::from(fred::util::redis_keyslot(tag.as_bytes()) / per_bucket);
            if tags[bucket].is_none() {
                tags[bucket] = Some(tag);
                missing -= 1;
            }
            n += 1;
        }
        tags.into_iter().flatten().collect()
    })
}

/// The hash tag of `bucket`.
fn tag(bucket: u16) -> &'static str {
    &tags()[usize::from(bucket % BUCKETS)]
}

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
        format!("{}:{{{}}}:r:{}", self.prefix, tag(bucket(room)), room)
    }

    /// The room's state: each state key's latest event.
    pub fn state(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:s:{}", self.prefix, tag(bucket(room)), room)
    }

    /// The room's versions: what moderators did to its events.
    pub fn versions(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:v:{}", self.prefix, tag(bucket(room)), room)
    }

    /// The room's bans: subject -> ban end.
    pub fn bans(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:b:{}", self.prefix, tag(bucket(room)), room)
    }

    /// The room's settings hash.
    pub fn settings(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:c:{}", self.prefix, tag(bucket(room)), room)
    }

    /// Set while `publisher` must wait under `room`'s slow mode.
    pub fn slow(&self, room: &RoomName, publisher: &str) -> String {
        format!("{}:{{{}}}:w:{}|{}", self.prefix, tag(bucket(room)), room, publisher)
    }

    /// The room's audience hash.
    pub fn audience(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:a:{}", self.prefix, tag(bucket(room)), room)
    }

    /// The room's ID floor: the last ID it handed out, kept apart from the
    /// stream so a rebuilt stream never reissues an ID.
    pub fn floor(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:f:{}", self.prefix, tag(bucket(room)), room)
    }

    /// What a publish with idempotency key `key` to `room` got.
    pub fn idempotency(&self, room: &RoomName, key: &str) -> String {
        format!("{}:{{{}}}:i:{}|{}", self.prefix, tag(bucket(room)), room, key)
    }

    /// What the append call with `nonce` (and no idempotency key) got: a
    /// resend of the call by the Redis client finds it and stores nothing.
    pub fn replay(&self, room: &RoomName, nonce: &str) -> String {
        format!("{}:{{{}}}:x:{}|{}", self.prefix, tag(bucket(room)), room, nonce)
    }

    /// A bucket's signal stream.
    pub fn signals(&self, bucket: u16) -> String {
        format!("{}:{{{}}}:sig", self.prefix, tag(bucket))
    }

    /// The one mailbox of a single Redis (or Sentinel's master): no slots
    /// to respect there, so one stream names every changed room and the
    /// blocking reader waits on two keys, not a thousand.
    pub fn mailbox(&self) -> String {
        format!("{}:sig", self.prefix)
    }

    /// A bucket's doorbell (a shard channel in the bucket's slot).
    pub fn doorbell(&self, bucket: u16) -> String {
        format!("{}:{{{}}}:ring", self.prefix, tag(bucket))
    }

    /// A bucket's epoch token.
    pub fn epoch(&self, bucket: u16) -> String {
        format!("{}:{{{}}}:epoch", self.prefix, tag(bucket))
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
        let tag = format!("{{{}}}", tag(b));
        for key in [keys.room(&room), keys.audience(&room), keys.floor(&room), keys.signals(b), keys.doorbell(b)] {
            assert!(key.contains(&tag), "{key}");
        }
        assert_eq!(keys.room(&room), format!("rc:{tag}:r:show-42"));
    }

    #[test]
    fn each_bucket_owns_its_own_sixteen_slots() {
        let tags = tags();
        assert_eq!(tags.len(), BUCKETS as usize);
        for (b, tag) in tags.iter().enumerate() {
            let slot = fred::util::redis_keyslot(format!("rc:{{{tag}}}:r:x").as_bytes());
            assert_eq!(usize::from(slot / 16), b, "bucket {b}'s tag {tag}");
        }
        // Pinned: the layout is shared by every node of a deployment.
        assert_eq!((tags[0].as_str(), tags[1].as_str()), ("s1825", "s1322"));
        assert_eq!(bucket(&RoomName::parse("a").unwrap()), (0xe40c292c_u32 % u32::from(BUCKETS)) as u16);
    }

    #[test]
    fn buckets_spread_evenly_over_three_masters_and_a_hundred() {
        // Masters own contiguous slot ranges, as `redis-cli --cluster create` makes them.
        for masters in [3u32, 100] {
            let mut per_master = vec![0u32; masters as usize];
            for tag in tags() {
                let slot = u32::from(fred::util::redis_keyslot(tag.as_bytes()));
                per_master[(slot * masters / u32::from(SLOTS)) as usize] += 1;
            }
            let (min, max) = (per_master.iter().min().unwrap(), per_master.iter().max().unwrap());
            assert!(max - min <= 2, "{masters} masters: {min}..{max} buckets each");
        }
        let used: std::collections::HashSet<u16> =
            (0..20_000).map(|i| bucket(&RoomName::parse(&format!("room-{i}")).unwrap())).collect();
        assert_eq!(used.len(), BUCKETS as usize);
    }
}
