//! One conformance suite for the `Store` contract, run against the embedded
//! memory store and against Redis (a real `redis-server` per test).

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use roomcast::protocol::{EventId, RoomName};
use roomcast::store::memory::MemoryStore;
use roomcast::store::presence::{
    ClientEvent, Member, MemberChange, Members, Reported, RoomReport, WebhookOptions, CHANGES_KEPT,
};
use roomcast::store::redis::{RedisOptions, RedisStore, Topology};
use roomcast::store::{AppendOptions, LiveNote, Position, Store, StoreOptions};
use support::{eventually, Redis};

fn options(history: usize, room_ttl: Duration) -> StoreOptions {
    StoreOptions { history, room_ttl, presence_ttl: Duration::from_secs(60), max_state_keys: 1000 }
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

fn data(i: usize) -> Bytes {
    Bytes::from(format!("{{\"i\":{i}}}"))
}

async fn append_n(store: &dyn Store, r: &RoomName, n: usize) -> Vec<EventId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(store.append(r, data(i), AppendOptions::default()).await.unwrap().id().unwrap());
    }
    ids
}

/// Keeps the Redis server (if any) alive as long as the store is used.
struct Fixture {
    store: Arc<dyn Store>,
    _redis: Option<Redis>,
}

async fn memory(opts: StoreOptions) -> Fixture {
    Fixture { store: Arc::new(MemoryStore::new(opts)), _redis: None }
}

async fn redis(opts: StoreOptions) -> Fixture {
    let server = Redis::start();
    let redis = RedisOptions {
        topology: Topology::Single(server.url()),
        prefix: "t".into(),
        command_timeout: Duration::from_secs(2),
    };
    let store = RedisStore::connect(redis, opts).await.unwrap();
    Fixture { store: Arc::new(store), _redis: Some(server) }
}

/// A store on the test binary's shared Redis Cluster, under its own prefix.
async fn cluster(opts: StoreOptions) -> Fixture {
    static PREFIXES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ports = support::topology::RedisCluster::shared();
    let seeds = support::topology::RedisCluster::seeds(ports).split(',').map(str::to_owned).collect();
    let prefix = format!("t{}", PREFIXES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let redis = RedisOptions { topology: Topology::Cluster(seeds), prefix, command_timeout: Duration::from_secs(2) };
    let store = RedisStore::connect(redis, opts).await.unwrap();
    Fixture { store: Arc::new(store), _redis: None }
}

mod cases {
    use super::*;
    use roomcast::protocol::IdempotencyKey;
    use roomcast::store::Appended;

    pub async fn an_idempotency_key_stores_once_per_room(f: Fixture) {
        let (r, other) = (room("bids"), room("bids-2"));
        let key = IdempotencyKey::parse("bid-17").unwrap();
        let Appended::Stored(first) = f.store.append(&r, data(1), AppendOptions::idempotent(Some(&key))).await.unwrap()
        else {
            panic!("a new key stores")
        };
        // A retry stores nothing and answers the first ID; the same key with
        // another payload is a conflict, which stores nothing either.
        assert_eq!(
            f.store.append(&r, data(1), AppendOptions::idempotent(Some(&key))).await.unwrap(),
            Appended::Repeated(first)
        );
        assert_eq!(
            f.store.append(&r, data(2), AppendOptions::idempotent(Some(&key))).await.unwrap(),
            Appended::Conflict(first)
        );
        let page = f.store.read(&r, Position::Oldest, 10).await.unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].data, data(1));
        // Keys are per room, and other keys are other publishes.
        assert!(matches!(
            f.store.append(&other, data(3), AppendOptions::idempotent(Some(&key))).await.unwrap(),
            Appended::Stored(_)
        ));
        let key2 = IdempotencyKey::parse("bid-18").unwrap();
        assert!(matches!(
            f.store.append(&r, data(4), AppendOptions::idempotent(Some(&key2))).await.unwrap(),
            Appended::Stored(_)
        ));
        // Concurrent retries store one event.
        let key3 = IdempotencyKey::parse("bid-19").unwrap();
        let outcomes = futures::future::join_all((0..20).map(|i| {
            let (store, r, key3) = (f.store.clone(), r.clone(), key3.clone());
            async move { store.append(&r, data(i % 2), AppendOptions::idempotent(Some(&key3))).await.unwrap() }
        }))
        .await;
        let stored: Vec<_> = outcomes.iter().filter(|o| matches!(o, Appended::Stored(_))).collect();
        assert_eq!(stored.len(), 1, "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| matches!(o, Appended::Conflict(_))).count(), 10, "{outcomes:?}");
        assert!(outcomes.iter().all(|o| o.id() == stored[0].id()));
        assert_eq!(f.store.read(&r, Position::Oldest, 100).await.unwrap().events.len(), 3);
    }

    pub async fn history_reads_backwards(f: Fixture) {
        let r = room("scroll");
        assert_eq!(f.store.read_back(&r, None, 10).await.unwrap(), roomcast::store::BackPage::default());
        let ids = append_n(&*f.store, &r, 25).await;
        // The newest N, oldest first, and whether older ones are kept.
        let page = f.store.read_back(&r, None, 10).await.unwrap();
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[15..].to_vec());
        assert!(page.more && !page.gap);
        // Scrolling back: before the oldest shown, until nothing more.
        let page = f.store.read_back(&r, Some(ids[15]), 10).await.unwrap();
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[5..15].to_vec());
        assert!(page.more);
        let page = f.store.read_back(&r, Some(ids[5]), 10).await.unwrap();
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..5].to_vec());
        assert!(!page.more && !page.gap);
        assert!(f.store.read_back(&r, Some(ids[0]), 10).await.unwrap().events.is_empty());
        // A position that is no event: the events below it.
        let between = EventId::new(ids[3].ms, ids[3].seq + 1);
        let expected: Vec<EventId> = ids.iter().copied().filter(|id| *id < between).collect();
        let page = f.store.read_back(&r, Some(between), 100).await.unwrap();
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), expected);
        assert_eq!(f.store.read_back(&r, Some(EventId::MAX), 3).await.unwrap().events.len(), 3);
    }

    pub async fn state_keeps_each_keys_latest_and_survives_trimming(f: Fixture) {
        use roomcast::protocol::StateKey;
        let r = room("auction");
        let empty = f.store.state(&r).await.unwrap();
        assert!(empty.values.is_empty() && empty.position.is_zero());
        let (bid, lot) = (StateKey::parse("bid").unwrap(), StateKey::parse("lot-17").unwrap());
        let keyed = |key| AppendOptions { key: Some(key), ..Default::default() };
        let first_lot = f.store.append(&r, data(1), keyed(&lot)).await.unwrap().id().unwrap();
        for i in 0..60 {
            f.store.append(&r, data(100 + i), keyed(&bid)).await.unwrap();
            append_n(&*f.store, &r, 2).await;
        }
        let top = f.store.append(&r, data(999), keyed(&bid)).await.unwrap().id().unwrap();
        let end = append_n(&*f.store, &r, 1).await[0];
        let state = f.store.state(&r).await.unwrap();
        assert_eq!(state.position, end, "the state says which position it reflects");
        let values: std::collections::HashMap<_, _> = state.values.iter().cloned().collect();
        assert_eq!(values.len(), 2);
        assert_eq!((values[&bid].id, values[&bid].data.clone()), (top, data(999)));
        assert_eq!(values[&bid].key.as_ref(), Some(&bid));
        // The first lot event was trimmed from the history (10 kept), not from the state.
        assert_eq!(values[&lot].id, first_lot);
        assert!(f.store.read(&r, Position::Oldest, 1).await.unwrap().events[0].id > first_lot);
        // Keyed events carry their key in the history too.
        let page = f.store.read_back(&r, None, 2).await.unwrap();
        assert_eq!(page.events[0].key.as_ref(), Some(&bid));
        assert_eq!(page.events[1].key, None);
    }

    pub async fn a_room_keeps_at_most_its_state_keys(f: Fixture) {
        use roomcast::protocol::StateKey;
        let r = room("poll");
        let key = |i: usize| StateKey::parse(&format!("k{i}")).unwrap();
        for i in 0..3 {
            let k = key(i);
            assert!(matches!(
                f.store.append(&r, data(i), AppendOptions { key: Some(&k), ..Default::default() }).await.unwrap(),
                Appended::Stored(_)
            ));
        }
        let (k3, k0) = (key(3), key(0));
        let refused =
            f.store.append(&r, data(3), AppendOptions { key: Some(&k3), ..Default::default() }).await.unwrap();
        assert_eq!(refused, Appended::TooManyKeys);
        // Nothing was stored; a known key still takes new values.
        assert_eq!(f.store.read(&r, Position::Oldest, 10).await.unwrap().events.len(), 3);
        let again = f.store.append(&r, data(9), AppendOptions { key: Some(&k0), ..Default::default() }).await.unwrap();
        assert!(matches!(again, Appended::Stored(_)));
        assert_eq!(f.store.state(&r).await.unwrap().values.len(), 3);
    }

    pub async fn bans_and_settings_are_kept_per_room(f: Fixture) {
        use roomcast::store::RoomSettings;
        let (r, other) = (room("stage"), room("stage-2"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert_eq!(f.store.room_rules(&r).await.unwrap(), Default::default());
        f.store.ban(&r, "troll", now + 60_000).await.unwrap();
        f.store.ban(&r, "spammer", now + 1).await.unwrap();
        f.store.set_settings(&r, RoomSettings { slow_mode_ms: 3_000 }).await.unwrap();
        let rules = f.store.room_rules(&r).await.unwrap();
        assert_eq!(rules.banned_until("troll", now), Some(now + 60_000));
        assert_eq!(rules.settings.slow_mode_ms, 3_000);
        assert_eq!(f.store.room_rules(&other).await.unwrap(), Default::default(), "rules are per room");
        assert!(f.store.unban(&r, "troll").await.unwrap());
        assert!(!f.store.unban(&r, "troll").await.unwrap(), "nothing to lift twice");
        assert_eq!(f.store.room_rules(&r).await.unwrap().banned_until("troll", now), None);
    }

    pub async fn slow_mode_lets_each_publisher_publish_once_per_interval(f: Fixture) {
        use roomcast::store::Slow;
        let r = room("slow");
        let slow =
            |publisher| AppendOptions { slow: Some(Slow { publisher, interval_ms: 60_000 }), ..Default::default() };
        assert!(matches!(f.store.append(&r, data(1), slow("ann")).await.unwrap(), Appended::Stored(_)));
        let early = f.store.append(&r, data(2), slow("ann")).await.unwrap();
        assert!(
            matches!(early, Appended::SlowMode { retry_after_ms } if (1..=60_000).contains(&retry_after_ms)),
            "{early:?}"
        );
        assert!(matches!(f.store.append(&r, data(3), slow("bob")).await.unwrap(), Appended::Stored(_)));
        // Concurrent publishes of one publisher: exactly one gets through.
        let outcomes = futures::future::join_all((0..10).map(|i| {
            let (store, r) = (f.store.clone(), r.clone());
            async move { store.append(&r, data(i), slow("cat")).await.unwrap() }
        }))
        .await;
        assert_eq!(outcomes.iter().filter(|o| matches!(o, Appended::Stored(_))).count(), 1, "{outcomes:?}");
        assert_eq!(f.store.read(&r, Position::Oldest, 100).await.unwrap().events.len(), 3);
    }

    pub async fn edits_and_deletes_show_in_every_read_and_keep_the_chain(f: Fixture) {
        use roomcast::protocol::{OpKind, Shown, StateKey};
        let r = room("mod");
        let score = StateKey::parse("score").unwrap();
        let mut ids = append_n(&*f.store, &r, 3).await;
        let keyed = AppendOptions { key: Some(&score), ..Default::default() };
        ids.push(f.store.append(&r, data(3), keyed).await.unwrap().id().unwrap());
        ids.extend(append_n(&*f.store, &r, 1).await);
        let edit = |target, d| {
            let store = f.store.clone();
            let r = r.clone();
            async move { store.moderate(&r, target, OpKind::Edit, d).await.unwrap() }
        };
        let delete = |target| {
            let store = f.store.clone();
            let r = r.clone();
            async move { store.moderate(&r, target, OpKind::Delete, Bytes::new()).await.unwrap() }
        };
        // Edit event 1 twice, then delete it; edit the keyed event 3; delete 2.
        let e1 = edit(ids[1], Bytes::from_static(b"\"first edit\"")).await.id().unwrap();
        let e2 = edit(ids[1], Bytes::from_static(b"\"second edit\"")).await.id().unwrap();
        let e3 = edit(ids[3], Bytes::from_static(b"\"score edited\"")).await.id().unwrap();
        assert_eq!(f.store.state(&r).await.unwrap().values[0].1.data, Bytes::from_static(b"\"score edited\""));
        let d1 = delete(ids[1]).await.id().unwrap();
        let d2 = delete(ids[2]).await.id().unwrap();
        // Not found: an unknown ID, an operation, something deleted already.
        assert_eq!(delete(EventId::new(ids[0].ms, ids[0].seq + 1)).await, Appended::NotFound);
        assert_eq!(delete(e1).await, Appended::NotFound);
        assert_eq!(delete(ids[1]).await, Appended::NotFound);
        assert_eq!(edit(ids[2], Bytes::from_static(b"1")).await, Appended::NotFound);
        let page = f.store.read(&r, Position::Oldest, 100).await.unwrap();
        let shown: Vec<(EventId, Shown, bool)> = page.events.iter().map(|e| (e.id, e.shown, e.op.is_some())).collect();
        assert_eq!(
            shown,
            vec![
                (ids[0], Shown::Original, false),
                (ids[1], Shown::Deleted, false),
                (ids[2], Shown::Deleted, false),
                (ids[3], Shown::Edited, false),
                (ids[4], Shown::Original, false),
                (e1, Shown::Deleted, true),
                (e2, Shown::Deleted, true),
                (e3, Shown::Original, true),
                (d1, Shown::Original, true),
                (d2, Shown::Original, true),
            ],
            "every event in its place, as moderated"
        );
        assert!(page.events.windows(2).all(|w| w[1].prev == w[0].id), "the chain holds across deletions");
        assert!(page.events[1].data.is_empty() && page.events[5].data.is_empty(), "deleted data is gone");
        assert_eq!(page.events[3].data, Bytes::from_static(b"\"score edited\""));
        // No read from any position sees a gap, or an event twice.
        for (i, at) in page.events.iter().enumerate() {
            let after = f.store.read(&r, Position::After(at.id), 100).await.unwrap();
            assert!(!after.gap, "after {}", at.id);
            assert_eq!(
                after.events.iter().map(|e| e.id).collect::<Vec<_>>(),
                page.events[i + 1..].iter().map(|e| e.id).collect::<Vec<_>>()
            );
        }
        // Backwards too.
        let back = f.store.read_back(&r, None, 100).await.unwrap();
        assert_eq!(back.events, page.events);
        assert!(!back.gap);
        let back = f.store.read_back(&r, Some(ids[3]), 2).await.unwrap();
        assert_eq!(back.events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[1], ids[2]]);
        assert!(!back.gap);
        // Deleting the newest event: what follows continues it.
        let last = append_n(&*f.store, &r, 1).await[0];
        let d3 = delete(last).await.id().unwrap();
        let next = append_n(&*f.store, &r, 1).await[0];
        let after = f.store.read(&r, Position::After(d2), 10).await.unwrap();
        assert!(!after.gap);
        assert_eq!(after.events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![last, d3, next]);
        assert_eq!(after.events[0].shown, Shown::Deleted);
        // A deleted keyed value leaves the state.
        delete(ids[3]).await;
        assert!(f.store.state(&r).await.unwrap().values.is_empty());
    }

    pub async fn ids_increase_and_chain(f: Fixture) {
        let r = room("chain");
        let ids = append_n(&*f.store, &r, 50).await;
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "IDs must strictly increase: {ids:?}");
        let page = f.store.read(&r, Position::Oldest, 100).await.unwrap();
        assert!(!page.gap);
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
        assert_eq!(page.events[0].prev, EventId::ZERO, "a room's first event follows 0-0");
        for w in page.events.windows(2) {
            assert_eq!(w[1].prev, w[0].id, "each event names its predecessor");
        }
        assert_eq!(page.events[7].data, data(7));
    }

    pub async fn reads_are_exclusive_and_paged(f: Fixture) {
        let r = room("paged");
        let ids = append_n(&*f.store, &r, 10).await;
        let page = f.store.read(&r, Position::After(ids[2]), 3).await.unwrap();
        assert!(!page.gap);
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[3..6].to_vec());
        let end = f.store.read(&r, Position::After(ids[9]), 3).await.unwrap();
        assert!(!end.gap && end.events.is_empty());
        assert_eq!(end.tail, ids[9]);
        assert_eq!(f.store.tail(&r).await.unwrap(), ids[9]);
    }

    pub async fn trimming_keeps_at_least_history_and_reports_exact_gaps(f: Fixture) {
        let r = room("trimmed");
        let ids = append_n(&*f.store, &r, 600).await;
        let kept = f.store.read(&r, Position::Oldest, 1000).await.unwrap();
        assert!(!kept.gap, "reading from the oldest is never a gap");
        assert!(kept.events.len() >= 10, "kept {} < history", kept.events.len());
        assert!(kept.events.len() < 600, "nothing was trimmed");
        assert_eq!(kept.events.last().unwrap().id, ids[599]);
        let first_kept = kept.events[0].clone();

        let stale = f.store.read(&r, Position::After(ids[0]), 10).await.unwrap();
        assert!(stale.gap, "the client at the first ID missed trimmed events");
        assert_eq!(stale.events[0].id, first_kept.id);

        // The last trimmed event's successor is kept: no gap there, exactly.
        let boundary = f.store.read(&r, Position::After(first_kept.prev), 10).await.unwrap();
        assert!(!boundary.gap, "nothing is missing after the newest trimmed ID");
        assert_eq!(boundary.events[0].id, first_kept.id);
    }

    pub async fn unknown_positions_are_gaps(f: Fixture) {
        let r = room("future");
        let ids = append_n(&*f.store, &r, 3).await;
        let future = EventId::new(ids[2].ms + 60_000, 0);
        let page = f.store.read(&r, Position::After(future), 10).await.unwrap();
        assert!(page.gap, "a token from the future is a gap");
        assert!(page.events.is_empty());
        assert_eq!(page.tail, ids[2], "the reader continues from the real tail");

        let fresh = room("never-used");
        let page = f.store.read(&fresh, Position::After(ids[0]), 10).await.unwrap();
        assert!(page.gap, "a position in a room without history is a gap");
        assert_eq!(page.tail, EventId::ZERO);
        let zero = f.store.read(&fresh, Position::After(EventId::ZERO), 10).await.unwrap();
        assert!(!zero.gap, "0-0 in an empty room misses nothing");
        assert!(!f.store.read(&fresh, Position::Oldest, 10).await.unwrap().gap);
        assert_eq!(f.store.tail(&fresh).await.unwrap(), EventId::ZERO);
    }

    pub async fn expired_history_keeps_its_floor(f: Fixture) {
        let r = room("idle");
        let ids = append_n(&*f.store, &r, 3).await;
        let store = f.store.clone();
        let r2 = r.clone();
        eventually("the idle room's history to expire", || {
            let store = store.clone();
            let r2 = r2.clone();
            async move { store.read(&r2, Position::Oldest, 10).await.ok()?.events.is_empty().then_some(()) }
        })
        .await;
        assert_eq!(f.store.tail(&r).await.unwrap(), ids[2], "the room ends at its floor");
        let gone = f.store.read(&r, Position::After(ids[1]), 10).await.unwrap();
        assert!(gone.gap && gone.events.is_empty(), "history lost to expiry is a gap: {gone:?}");
        let complete = f.store.read(&r, Position::After(ids[2]), 10).await.unwrap();
        assert!(!complete.gap, "a reader at the floor missed nothing: {complete:?}");
        let new_id = f.store.append(&r, data(9), AppendOptions::default()).await.unwrap().id().unwrap();
        assert!(new_id > ids[2], "IDs carry on above the floor");
        let page = f.store.read(&r, Position::After(ids[1]), 10).await.unwrap();
        assert!(page.gap, "a rebuilt room does not continue where its history was lost");
        assert_eq!(page.events[0].id, new_id);
        // The rebuilt room's first entry names the floor: exactly the reader
        // that had everything continues.
        let page = f.store.read(&r, Position::After(ids[2]), 10).await.unwrap();
        assert!(!page.gap, "{page:?}");
        assert_eq!(page.events[0].prev, ids[2]);
    }

    pub async fn an_anchor_is_named_by_the_rooms_first_event(f: Fixture) {
        let r = room("anchored");
        assert_eq!(f.store.tail(&r).await.unwrap(), EventId::ZERO);
        let anchor = f.store.anchor(&r).await.unwrap();
        assert!(!anchor.is_zero(), "an empty room's live position is not 0-0");
        assert_eq!(f.store.anchor(&r).await.unwrap(), anchor, "stable until the first event");
        assert_eq!(f.store.tail(&r).await.unwrap(), anchor, "the room ends at its anchor");
        let waiting = f.store.read(&r, Position::After(anchor), 10).await.unwrap();
        assert!(!waiting.gap && waiting.events.is_empty(), "{waiting:?}");
        let first = f.store.append(&r, data(1), AppendOptions::default()).await.unwrap().id().unwrap();
        assert!(first > anchor);
        let page = f.store.read(&r, Position::After(anchor), 10).await.unwrap();
        assert!(!page.gap, "the first event continues the anchor: {page:?}");
        assert_eq!(page.events.iter().map(|e| (e.id, e.prev)).collect::<Vec<_>>(), vec![(first, anchor)]);
        assert_eq!(f.store.anchor(&r).await.unwrap(), first, "a room with events anchors at its end");
        // Reading from the oldest is unchanged.
        let oldest = f.store.read(&r, Position::Oldest, 10).await.unwrap();
        assert_eq!(oldest.events.len(), 1);
        assert!(!oldest.gap);
    }

    const RACING_APPENDS: usize = 600;

    /// A reader following a room while it is appended to is never told of
    /// a gap: a read that raced an append is read again, not misjudged.
    pub async fn reads_racing_appends_see_no_gap(f: Fixture) {
        let r = room("racing");
        let first = f.store.append(&r, data(0), AppendOptions::default()).await.unwrap().id().unwrap();
        let writer = {
            let (store, r) = (f.store.clone(), r.clone());
            // Slower than the reader, which so keeps finding nothing new.
            tokio::spawn(async move {
                for i in 1..RACING_APPENDS {
                    store.append(&r, data(i), AppendOptions::default()).await.unwrap();
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            })
        };
        let mut cursor = first;
        let mut read = 1;
        while !writer.is_finished() || read < RACING_APPENDS {
            tokio::task::yield_now().await;
            let page = f.store.read(&r, Position::After(cursor), 1).await.unwrap();
            assert!(!page.gap, "a gap after {cursor} while nothing was lost: {page:?}");
            if let Some(e) = page.events.first() {
                assert_eq!(e.prev, cursor);
                cursor = e.id;
                read += 1;
            }
        }
        writer.await.unwrap();
        assert_eq!(read, RACING_APPENDS);
    }

    pub async fn events_of_every_size_round_trip(f: Fixture) {
        let r = room("sizes");
        let sizes = [1usize, 100, 4 << 10, 16 << 10, 60 << 10];
        let mut ids = Vec::new();
        for size in sizes {
            let payload = Bytes::from(format!("\"{}\"", "x".repeat(size)));
            ids.push((
                f.store.append(&r, payload.clone(), AppendOptions::default()).await.unwrap().id().unwrap(),
                payload,
            ));
        }
        let page = f.store.read(&r, Position::Oldest, 100).await.unwrap();
        let got: Vec<(EventId, Bytes)> = page.events.into_iter().map(|e| (e.id, e.data)).collect();
        assert_eq!(got, ids);
    }

    pub async fn read_many_returns_only_rooms_with_news(f: Fixture) {
        let (a, b, c) = (room("many-a"), room("many-b"), room("many-c"));
        let ia = append_n(&*f.store, &a, 3).await;
        let ib = append_n(&*f.store, &b, 2).await;
        let got =
            f.store.read_many(&[(a.clone(), ia[0]), (b.clone(), ib[1]), (c.clone(), EventId::ZERO)], 10).await.unwrap();
        assert_eq!(got.len(), 1, "only room a has events after its position: {got:?}");
        assert_eq!(got[0].0, a);
        assert_eq!(got[0].1.iter().map(|e| e.id).collect::<Vec<_>>(), ia[1..].to_vec());
    }

    pub async fn audience_sums_nodes_and_withdraws(f: Fixture) {
        let r = room("stage");
        f.store.report_audience("node-a", &[(r.clone(), 3)]).await.unwrap();
        f.store.report_audience("node-b", &[(r.clone(), 2)]).await.unwrap();
        assert_eq!(f.store.audience(&r).await.unwrap(), 5);
        f.store.report_audience("node-a", &[(r.clone(), 0)]).await.unwrap();
        assert_eq!(f.store.audience(&r).await.unwrap(), 2);
        assert_eq!(f.store.audience(&room("empty-stage")).await.unwrap(), 0);
    }

    pub async fn audience_counts_only_live_nodes(f: Fixture) {
        let r = room("arena");
        f.store.report_audience("node-a", &[(r.clone(), 4)]).await.unwrap();
        f.store.report_audience("node-b", &[(r.clone(), 1)]).await.unwrap();
        let live = f.store.live_nodes().await.unwrap();
        assert!(live.contains("node-a") && live.contains("node-b"), "{live:?}");
        let by_node = f.store.audience_by_node(&[r.clone(), room("nobody")]).await.unwrap();
        assert_eq!(by_node[0].get("node-a"), Some(&4));
        assert_eq!(by_node[0].get("node-b"), Some(&1));
        assert!(by_node[1].is_empty());
        // A report with no rooms still says the node is alive.
        f.store.report_audience("node-c", &[]).await.unwrap();
        assert!(f.store.live_nodes().await.unwrap().contains("node-c"));
    }

    /// A killed node's counts go once it is forgotten (ten liveness
    /// periods after it stopped reporting), not with the room a day later.
    pub async fn a_forgotten_nodes_counts_go(f: Fixture) {
        let r = room("left-behind");
        f.store.report_audience("killed", &[(r.clone(), 3)]).await.unwrap();
        f.store.report_audience("alive", &[(r.clone(), 2)]).await.unwrap();
        let store = f.store.clone();
        let r2 = r.clone();
        eventually("the killed node to be forgotten", || {
            let (store, r2) = (store.clone(), r2.clone());
            async move {
                store.report_audience("alive", &[]).await.ok()?;
                let live = store.live_nodes().await.ok()?;
                let counts = store.audience_by_node(std::slice::from_ref(&r2)).await.ok()?;
                (live.contains("alive") && !counts[0].contains_key("killed")).then_some(())
            }
        })
        .await;
        assert_eq!(f.store.audience_by_node(&[r]).await.unwrap()[0].get("alive"), Some(&2));
    }

    pub async fn live_notes_are_read_once_in_order(f: Fixture) {
        let note = |node: &str, n: u64| LiveNote {
            node: node.to_owned(),
            audience: [("r".to_owned(), n)].into(),
            ..LiveNote::default()
        };
        f.store.append_note(&note("old", 0)).await.unwrap();
        // A reader starts at the log's present end.
        let (none, start) = f.store.read_notes(None).await.unwrap();
        assert!(none.is_empty());
        for i in 1..=5 {
            f.store.append_note(&note("a", i)).await.unwrap();
        }
        let (notes, cursor) = f.store.read_notes(Some(&start)).await.unwrap();
        assert_eq!(notes, (1..=5).map(|i| note("a", i)).collect::<Vec<_>>());
        let (again, same) = f.store.read_notes(Some(&cursor)).await.unwrap();
        assert!(again.is_empty(), "each note once");
        assert_eq!(same, cursor);
        let reactions = LiveNote {
            node: "b".into(),
            reactions: [("r".into(), [("👏".into(), 3)].into())].into(),
            ..Default::default()
        };
        f.store.append_note(&reactions).await.unwrap();
        assert_eq!(f.store.read_notes(Some(&cursor)).await.unwrap().0, vec![reactions]);
    }

    pub async fn change_source_reports_watched_rooms(f: Fixture) {
        let r = room("watched");
        let mut source = f.store.change_source("n1").unwrap();
        source.watch(&r);
        source.prepare().await.unwrap();
        f.store.append(&r, data(1), AppendOptions::default()).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.extend(source.wait(Duration::from_millis(500)).await.unwrap());
            if seen.contains(&r) {
                break;
            }
        }
        assert!(seen.contains(&r), "the append to a watched room was not signalled: {seen:?}");
    }

    fn m(sub: &str, info: &str) -> Member {
        Member { sub: sub.into(), info: info.into() }
    }

    fn report(r: &RoomName, joined: Vec<Member>, left: &[&str], occupied: Option<bool>) -> RoomReport {
        RoomReport {
            room: r.clone(),
            joined,
            left: left.iter().map(|s| s.to_string()).collect(),
            occupied,
            full: false,
        }
    }

    fn hooks() -> WebhookOptions {
        WebhookOptions { enabled: true, vacate_delay: Duration::from_millis(0), max_pending: 1000 }
    }

    fn sorted(members: Members) -> Vec<(String, String)> {
        let mut v: Vec<_> = members.members.into_iter().map(|m| (m.sub, m.info)).collect();
        v.sort();
        v
    }

    pub async fn members_are_subjects_across_nodes(f: Fixture) {
        let s = &f.store;
        let r = room("pres");
        let opts = WebhookOptions::default();
        // A node the store does not know reports in full first.
        assert_eq!(
            s.report_presence("a", &[report(&r, vec![m("ann", "{}")], &[], None)], &opts, 1).await.unwrap(),
            Reported::Resync
        );
        let mut full = report(&r, vec![m("ann", r#"{"n":1}"#)], &[], None);
        full.full = true;
        assert_eq!(
            s.report_presence("a", &[full.clone()], &opts, 1).await.unwrap(),
            Reported::Applied(vec![r.clone()])
        );
        let start = s.members(&r).await.unwrap();
        assert_eq!(sorted(start.clone()), vec![("ann".into(), r#"{"n":1}"#.into())]);
        // The same subject on another node is the same member: no change.
        full.joined = vec![m("ann", r#"{"n":1}"#), m("bob", "{}")];
        s.report_presence("b", &[full], &opts, 2).await.unwrap();
        assert_eq!(s.member_count(&r).await.unwrap(), 2);
        let (changes, at) = s.member_changes(&r, &start.at).await.unwrap().unwrap();
        assert_eq!(changes, vec![MemberChange::Joined(m("bob", "{}"))], "ann was a member already");
        // Ann leaves node a: still a member through node b.
        s.report_presence("a", &[report(&r, vec![], &["ann"], None)], &opts, 3).await.unwrap();
        assert_eq!(s.member_count(&r).await.unwrap(), 2);
        assert_eq!(s.member_changes(&r, &at).await.unwrap().unwrap(), (vec![], at.clone()));
        // ... until node b is forgotten (it died): ann and bob leave.
        assert_eq!(s.presence_nodes().await.unwrap(), ["a", "b"].iter().map(|n| n.to_string()).collect());
        assert_eq!(s.forget_presence("b", &opts, 4).await.unwrap(), vec![r.clone()]);
        assert_eq!(s.member_count(&r).await.unwrap(), 0);
        let (changes, at2) = s.member_changes(&r, &at).await.unwrap().unwrap();
        let mut left: Vec<_> = changes.iter().map(|c| format!("{c:?}")).collect();
        left.sort();
        assert_eq!(left, vec![r#"Left("ann")"#, r#"Left("bob")"#]);
        assert_eq!(at2.seq, at.seq + 2);
        assert_eq!(s.presence_nodes().await.unwrap(), ["a"].iter().map(|n| n.to_string()).collect());
        // A forgotten node that reports again is told to resync.
        let bob = report(&r, vec![m("bob", "{}")], &[], None);
        assert_eq!(s.report_presence("b", &[bob], &opts, 5).await.unwrap(), Reported::Resync);
        // Info changes show as a join; the log tells a reader that fell
        // behind its bound to reload.
        s.report_presence("a", &[report(&r, vec![m("cy", "{}")], &[], None)], &opts, 6).await.unwrap();
        s.report_presence("a", &[report(&r, vec![m("cy", r#"{"x":2}"#)], &[], None)], &opts, 7).await.unwrap();
        let (changes, _) = s.member_changes(&r, &at2).await.unwrap().unwrap();
        assert_eq!(changes, vec![MemberChange::Joined(m("cy", "{}")), MemberChange::Joined(m("cy", r#"{"x":2}"#))]);
        for i in 0..(CHANGES_KEPT as usize + 150) {
            let sub = format!("u{i}");
            s.report_presence("a", &[report(&r, vec![m(&sub, "{}")], &[], None)], &opts, 8).await.unwrap();
        }
        assert_eq!(s.member_changes(&r, &at2).await.unwrap(), None, "too far behind: reload");
        let now = s.members(&r).await.unwrap();
        assert_eq!(now.members.len(), CHANGES_KEPT as usize + 151);
        assert_eq!(s.member_changes(&r, &now.at).await.unwrap().unwrap().0, vec![]);
    }

    pub async fn large_reports_apply_whole(f: Fixture) {
        let s = &f.store;
        let r = room("crowd");
        let opts = WebhookOptions::default();
        let joined: Vec<Member> = (0..1_700).map(|i| m(&format!("v{i}"), r#"{"seat":1}"#)).collect();
        let mut full = report(&r, joined, &[], None);
        full.full = true;
        s.report_presence("a", &[full.clone()], &opts, 1).await.unwrap();
        assert_eq!(s.member_count(&r).await.unwrap(), 1_700);
        // A full report names what the node holds now: the rest left.
        full.joined.truncate(200);
        s.report_presence("a", &[full], &opts, 2).await.unwrap();
        assert_eq!(s.member_count(&r).await.unwrap(), 200);
        let left: Vec<String> = (0..200).map(|i| format!("v{i}")).collect();
        let left: Vec<&str> = left.iter().map(String::as_str).collect();
        s.report_presence("a", &[report(&r, vec![], &left, None)], &opts, 3).await.unwrap();
        assert_eq!(s.members(&r).await.unwrap().members, vec![]);
    }

    pub async fn webhook_events_follow_the_deployment_in_order(f: Fixture) {
        let s = &f.store;
        let r = room("hooked");
        let opts = hooks();
        let mut first = report(&r, vec![m("ann", r#"{"a":1}"#)], &[], Some(true));
        first.full = true;
        s.report_presence("a", &[first], &opts, 10).await.unwrap();
        let mut second = report(&r, vec![m("ann", r#"{"a":1}"#), m("bob", "{}")], &[], Some(true));
        second.full = true;
        s.report_presence("b", &[second], &opts, 11).await.unwrap();
        s.report_presence("a", &[report(&r, vec![], &["ann"], Some(false))], &opts, 12).await.unwrap();
        s.report_presence("b", &[report(&r, vec![], &["ann", "bob"], Some(false))], &opts, 13).await.unwrap();
        // Only the lease holder delivers; a second node cannot take it.
        assert!(s.webhook_lease("roomcast", "a", Duration::from_secs(10)).await.unwrap());
        assert!(!s.webhook_lease("roomcast", "b", Duration::from_secs(10)).await.unwrap());
        s.vacate_due(&opts, 1_000_000).await.unwrap();
        let (events, dropped) = s.webhook_pending("roomcast", 100).await.unwrap();
        assert_eq!(dropped, 0);
        let names: Vec<(&str, Option<&str>)> = events.iter().map(|e| (e.name.as_str(), e.sub.as_deref())).collect();
        assert_eq!(
            names,
            vec![
                ("room_occupied", None),
                ("member_joined", Some("ann")),
                ("member_joined", Some("bob")),
                ("member_left", Some("ann")),
                ("member_left", Some("bob")),
                ("room_vacated", None),
            ]
        );
        assert_eq!(events[1].info, Some(serde_json::json!({"a": 1})));
        assert_eq!(events[3].info, Some(serde_json::json!({"a": 1})), "a leaver's info goes with it");
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), 6, "unique ids");
        // Delivered in part: the rest stays; a node without the lease cannot move the cursor.
        assert!(!s.webhook_delivered("roomcast", &["roomcast"], "b", &events[5].id).await.unwrap());
        assert!(s.webhook_delivered("roomcast", &["roomcast"], "a", &events[2].id).await.unwrap());
        let (rest, _) = s.webhook_pending("roomcast", 100).await.unwrap();
        assert_eq!(rest, events[3..].to_vec());
        assert!(s.webhook_delivered("roomcast", &["roomcast"], "a", &events[5].id).await.unwrap());
        assert_eq!(s.webhook_pending("roomcast", 100).await.unwrap().0, vec![]);
        // A room that empties and fills again within the delay sends nothing.
        let slow = WebhookOptions { vacate_delay: Duration::from_secs(60), ..opts };
        s.report_presence("a", &[report(&r, vec![], &[], Some(true))], &slow, 20).await.unwrap();
        s.report_presence("a", &[report(&r, vec![], &[], Some(false))], &slow, 21).await.unwrap();
        s.report_presence("a", &[report(&r, vec![], &[], Some(true))], &slow, 22).await.unwrap();
        s.vacate_due(&slow, 23).await.unwrap();
        let (events, _) = s.webhook_pending("roomcast", 100).await.unwrap();
        assert_eq!(events.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["room_occupied"]);
    }

    pub async fn undelivered_webhook_events_are_bounded(f: Fixture) {
        let s = &f.store;
        let opts = WebhookOptions { max_pending: 50, ..hooks() };
        for i in 0..80 {
            let r = room(&format!("b{i}"));
            let mut full = report(&r, vec![], &[], Some(true));
            full.full = true;
            s.report_presence("a", &[full], &opts, i).await.unwrap();
        }
        let (events, dropped) = s.webhook_pending("roomcast", 100).await.unwrap();
        assert_eq!(events.len(), 50, "the bound holds");
        assert_eq!(dropped, 30, "and what went past it is counted, once");
        assert_eq!(events[0].room, "b30", "the oldest went");
        assert_eq!(s.webhook_pending("roomcast", 100).await.unwrap().1, 0);
        // A holder whose lease lapsed loses it to another node.
        assert!(s.webhook_lease("roomcast", "a", Duration::from_millis(50)).await.unwrap());
        eventually("the lease lapses", || async {
            s.webhook_lease("roomcast", "b", Duration::from_secs(10)).await.unwrap().then_some(())
        })
        .await;
        assert!(!s.webhook_delivered("roomcast", &["roomcast"], "a", &events[0].id).await.unwrap());
    }

    pub async fn names_and_skips_are_kept_with_the_event(f: Fixture) {
        let r = room("named");
        let name = roomcast::protocol::EventName::parse("App\\Events\\OrderShipped").unwrap();
        let options = AppendOptions { name: Some(&name), skip: Some("123.456"), ..AppendOptions::default() };
        let named = f.store.append(&r, data(1), options).await.unwrap().id().unwrap();
        let plain = f.store.append(&r, data(2), AppendOptions::default()).await.unwrap().id().unwrap();
        let page = f.store.read(&r, Position::Oldest, 10).await.unwrap();
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![named, plain]);
        let meta = page.events[0].meta.as_deref().expect("a named event keeps its name");
        assert_eq!((meta.name.as_ref(), meta.skip.as_deref()), (Some(&name), Some("123.456")));
        assert_eq!(page.events[1].meta, None);
        let back = f.store.read_back(&r, None, 10).await.unwrap();
        assert_eq!(back.events[0].name(), Some(&name));
    }

    pub async fn two_sinks_each_get_every_event(f: Fixture) {
        let s = &f.store;
        let r = room("presence-shared");
        let opts = hooks();
        let mut full = report(&r, vec![m("ann", "{}")], &[], Some(true));
        full.full = true;
        s.report_presence("a", &[full], &opts, 1).await.unwrap();
        let client = ClientEvent {
            event: "client-typing".into(),
            data: r#"{"x":1}"#.into(),
            socket_id: "1.2".into(),
            user_id: Some("ann".into()),
        };
        s.record_client_event(&opts, &r, client.clone(), 2).await.unwrap();
        let sinks = ["roomcast", "pusher"];
        assert!(s.webhook_lease("roomcast", "a", Duration::from_secs(10)).await.unwrap());
        assert!(s.webhook_lease("pusher", "b", Duration::from_secs(10)).await.unwrap(), "each sink has its own lease");
        let (events, _) = s.webhook_pending("roomcast", 100).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            vec!["room_occupied", "member_joined", "client_event"]
        );
        assert_eq!(events[2].client.as_ref(), Some(&client));
        // The roomcast sink delivers everything: the pusher sink still has it all.
        assert!(s.webhook_delivered("roomcast", &sinks, "a", &events[2].id).await.unwrap());
        assert_eq!(s.webhook_pending("roomcast", 100).await.unwrap().0, vec![]);
        assert_eq!(s.webhook_pending("pusher", 100).await.unwrap().0, events);
        assert!(s.webhook_delivered("pusher", &sinks, "b", &events[0].id).await.unwrap());
        assert_eq!(s.webhook_pending("pusher", 100).await.unwrap().0, events[1..].to_vec());
        assert!(s.webhook_delivered("pusher", &sinks, "b", &events[2].id).await.unwrap());
        assert_eq!(s.webhook_pending("pusher", 100).await.unwrap().0, vec![]);
    }
}

/// Redis can lose any key at any time (DEL, eviction, expiry, FLUSHALL):
/// whatever it loses, a room's IDs never repeat and a rebuild is a gap.
mod key_loss {
    use super::*;
    use futures::StreamExt;
    use roomcast::store::redis::keys::Keys;
    use roomcast::store::Change;

    #[tokio::test]
    async fn a_stream_rebuilt_within_a_millisecond_never_reissues_an_id() {
        let f = redis(options(100_000, Duration::from_secs(60))).await;
        let r = room("rebuilt");
        let keys = Keys::new("t");
        let server = f._redis.as_ref().unwrap();
        let (port, key, floor) = (server.port, keys.room(&r), keys.floor(&r));
        // Publishes arrive several per millisecond while the stream is
        // deleted again and again; half the time its floor goes with it.
        let store = f.store.clone();
        let appends = tokio::spawn(async move {
            futures::stream::iter(0..4000)
                .map(|i| {
                    let (store, r) = (store.clone(), r.clone());
                    async move { store.append(&r, data(i), AppendOptions::default()).await.unwrap().id().unwrap() }
                })
                .buffer_unordered(64)
                .collect::<Vec<EventId>>()
                .await
        });
        let deleter = std::thread::spawn(move || {
            let server = support::RedisClient::connect(port);
            for i in 0..60 {
                if i % 2 == 0 {
                    server.command(&["DEL", &key]);
                } else {
                    server.command(&["DEL", &key, &floor]);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let mut ids = appends.await.unwrap();
        deleter.join().unwrap();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{} IDs were handed out twice", n - ids.len());
    }

    #[tokio::test]
    async fn a_deleted_events_data_is_gone_from_redis() {
        use roomcast::protocol::OpKind;
        let f = redis(options(1000, Duration::from_secs(60))).await;
        let server = f._redis.as_ref().unwrap();
        let keys = Keys::new("t");
        let r = room("gone");
        let secret = Bytes::from_static(b"\"a secret phone number\"");
        let id = f.store.append(&r, secret, AppendOptions::default()).await.unwrap().id().unwrap();
        let edited = Bytes::from_static(b"\"the number again, edited\"");
        f.store.moderate(&r, id, OpKind::Edit, edited).await.unwrap();
        f.store.moderate(&r, id, OpKind::Delete, Bytes::new()).await.unwrap();
        let range = server.command(&["XRANGE", &keys.room(&r), &id.to_string(), &id.to_string()]);
        assert_eq!(range.as_deref(), Some("*0"), "the entry is gone from the stream");
        // No entry, and no version, holds either text any more.
        let dump = std::process::Command::new("redis-cli")
            .args(["-p", &server.port.to_string(), "--raw", "XRANGE", &keys.room(&r), "-", "+"])
            .output()
            .unwrap();
        let versions = std::process::Command::new("redis-cli")
            .args(["-p", &server.port.to_string(), "--raw", "HGETALL", &keys.versions(&r)])
            .output()
            .unwrap();
        for out in [dump.stdout, versions.stdout] {
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("phone number") && !text.contains("number again"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_deleted_stream_is_a_gap_and_its_ids_carry_on_above_the_old_ones() {
        let f = redis(options(1000, Duration::from_secs(60))).await;
        let server = f._redis.as_ref().unwrap();
        let keys = Keys::new("t");
        for (name, lose) in [("kept-floor", 1), ("lost-floor", 2)] {
            let r = room(name);
            let old = append_n(&*f.store, &r, 20).await;
            let last = *old.last().unwrap();
            let mut del = vec!["DEL".to_owned(), keys.room(&r)];
            if lose == 2 {
                del.push(keys.floor(&r));
            }
            server.command(&del.iter().map(String::as_str).collect::<Vec<_>>());
            // Nothing kept: a client inside the old history is told.
            let page = f.store.read(&r, Position::After(old[4]), 10).await.unwrap();
            assert!(page.gap && page.events.is_empty(), "{name}: {page:?}");
            let new = f.store.append(&r, data(99), AppendOptions::default()).await.unwrap().id().unwrap();
            assert!(new > last, "{name}: the rebuilt room reissued {new} (old last {last})");
            let page = f.store.read(&r, Position::After(old[4]), 10).await.unwrap();
            assert!(page.gap, "{name}: a rebuild must be a gap after {}: {page:?}", old[4]);
            assert_eq!(page.events.first().map(|e| e.id), Some(new));
            // A client that had everything continues exactly when the floor
            // is kept, and is told when it is not (nothing says otherwise).
            let page = f.store.read(&r, Position::After(last), 10).await.unwrap();
            assert_eq!(page.gap, lose == 2, "{name}: after {last}: {page:?}");
            assert_eq!(page.events.first().map(|e| e.id), Some(new));
        }
    }

    /// A subscriber that joins a node the moment it starts wakes its
    /// reader: the wake may land before the reader first looks at its
    /// control stream, and must not be taken as already seen.
    #[tokio::test]
    async fn a_wake_sent_before_the_reader_first_looks_is_not_lost() {
        let f = redis(options(100, Duration::from_secs(60))).await;
        let server = f._redis.as_ref().unwrap();
        let control = Keys::new("t").control("early");
        let mut source = f.store.change_source("early").unwrap();
        source.waker().wake();
        eventually("the wake is on the control stream", || async {
            server.command(&["XLEN", &control]).filter(|n| n != ":0").map(|_| ())
        })
        .await;
        source.prepare().await.unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), source.wait(Duration::from_secs(60))).await;
        assert!(woke.is_ok(), "the wait ignored a wake sent before it began");
    }

    #[tokio::test]
    async fn incarnation_tells_touched_data_from_a_changed_server() {
        let mut f = redis(options(10, Duration::from_secs(60))).await;
        let a = f.store.incarnation().await.unwrap();
        assert_eq!(f.store.incarnation().await.unwrap().since(&a), Change::None);
        let server = f._redis.as_mut().unwrap();
        assert_eq!(server.command(&["DEL", &Keys::new("t").epoch(0)]).as_deref(), Some(":1"));
        let b = f.store.incarnation().await.unwrap();
        assert_eq!(b.since(&a), Change::DataTouched, "a lost token on the same server");
        server.restart_empty();
        let c = eventually("the store reconnects", || async { f.store.incarnation().await.ok() }).await;
        assert_eq!(c.since(&b), Change::ServerChanged);
    }
}

/// Redis can lose acknowledged writes without losing keys (a restart from
/// a snapshot, a promoted replica), and can run a script twice (its client
/// resends a call whose reply was lost): every later reader is told of the
/// first, and the second stores nothing.
mod lost_writes {
    use super::*;
    use futures::StreamExt;
    use roomcast::store::redis::keys::Keys;
    use roomcast::store::NEW_SERVER;

    /// A store that keeps everything its tests write.
    async fn connect(server: &Redis) -> Arc<dyn Store> {
        let redis = RedisOptions {
            topology: Topology::Single(server.url()),
            prefix: "t".into(),
            command_timeout: Duration::from_secs(2),
        };
        Arc::new(RedisStore::connect(redis, options(1_000_000, Duration::from_secs(600))).await.unwrap())
    }

    /// Appends once the store answers again.
    async fn append_when_back(store: &Arc<dyn Store>, r: &RoomName, i: usize) -> EventId {
        eventually("the store answers again", || async {
            store.append(r, data(i), AppendOptions::default()).await.ok()
        })
        .await
        .id()
        .unwrap()
    }

    #[tokio::test]
    async fn a_restart_from_a_snapshot_is_a_gap_to_every_later_reader() {
        let mut server = Redis::start_with(&[]);
        let store = connect(&server).await;
        let r = room("restored");
        let kept = append_n(&*store, &r, 20).await;
        assert_eq!(server.command(&["SAVE"]).as_deref(), Some("+OK"));
        let lost = append_n(&*store, &r, 10).await;
        server.restart_from_disk();
        let next = append_when_back(&store, &r, 31).await;
        assert!(next > lost[9], "IDs carry on above every ID handed out");
        // Readers that were between connections when Redis lost e21..e30:
        // at the snapshot's end, inside the lost writes, and past them.
        for after in [kept[19], lost[4], lost[9]] {
            let page = store.read(&r, Position::After(after), 100).await.unwrap();
            assert!(page.gap, "a reader after {after} must be told: {page:?}");
            assert_eq!(page.events.first().map(|e| e.id), Some(next));
        }
        assert_eq!(store.read(&r, Position::After(kept[19]), 10).await.unwrap().events[0].prev, NEW_SERVER);
        // Reading the whole room stops at the break; the next page tells.
        let oldest = store.read(&r, Position::Oldest, 100).await.unwrap();
        assert_eq!(oldest.events.iter().map(|e| e.id).collect::<Vec<_>>(), kept);
        assert!(oldest.more, "the page ends at the break, with more to read");
        // After the first event on the new server, the chain is plain again.
        let after = append_n(&*store, &r, 2).await;
        let page = store.read(&r, Position::After(next), 10).await.unwrap();
        assert!(!page.gap);
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), after);
    }

    #[tokio::test]
    async fn an_anchored_room_whose_keys_go_is_a_gap_not_a_continuation() {
        let server = Redis::start();
        let store = connect(&server).await;
        let keys = Keys::new("t");
        let r = room("empty-then-deleted");
        let anchor = store.anchor(&r).await.unwrap();
        let first = store.append(&r, data(1), AppendOptions::default()).await.unwrap().id().unwrap();
        // The room's keys go before the reader at the anchor saw `first`.
        assert_eq!(server.command(&["DEL", &keys.room(&r), &keys.floor(&r)]).as_deref(), Some(":2"));
        let second = store.append(&r, data(2), AppendOptions::default()).await.unwrap().id().unwrap();
        let page = store.read(&r, Position::After(anchor), 10).await.unwrap();
        assert!(page.gap, "the first event was lost: {page:?}");
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![second]);
        assert!(second > first);
    }

    #[tokio::test]
    async fn a_resent_append_is_stored_once_through_redis_restarts() {
        let mut server = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
        let store = connect(&server).await;
        let r = room("replayed");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let publishers = (0..24).map(|p| {
            let (store, r, done) = (store.clone(), r.clone(), done.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let payload = format!("{{\"p\":{p},\"i\":{i}}}");
                    if let Ok(appended) = store.append(&r, Bytes::from(payload.clone()), AppendOptions::default()).await
                    {
                        acked.push((payload, appended.id().unwrap_or_default()));
                    }
                    i += 1;
                }
                acked
            })
        });
        let publishers: Vec<_> = publishers.collect();
        for _ in 0..5 {
            eventually("appends go through", || async { (store.tail(&r).await.ok()? > EventId::ZERO).then_some(()) })
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.restart_from_disk();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = Vec::new();
        for publisher in publishers {
            acked.extend(publisher.await.unwrap());
        }
        let stored: Vec<(String, EventId)> = futures::stream::unfold(Position::Oldest, |from| {
            let store = store.clone();
            let r = r.clone();
            async move {
                let page = eventually("the store answers", || async { store.read(&r, from, 1000).await.ok() }).await;
                let last = page.events.last()?.id;
                Some((page.events, Position::After(last)))
            }
        })
        .flat_map(|events| {
            futures::stream::iter(events.into_iter().map(|e| (String::from_utf8_lossy(&e.data).into_owned(), e.id)))
        })
        .collect()
        .await;
        let mut by_payload: std::collections::HashMap<&str, Vec<EventId>> = std::collections::HashMap::new();
        for (payload, id) in &stored {
            by_payload.entry(payload).or_default().push(*id);
        }
        let twice: Vec<_> = by_payload.iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(twice.is_empty(), "{} publishes stored twice: {:?}", twice.len(), &twice[..twice.len().min(5)]);
        for (payload, id) in &acked {
            assert_eq!(by_payload.get(payload.as_str()), Some(&vec![*id]), "acked {payload} as {id}");
        }
        eprintln!("{} acked, {} stored over 5 restarts", acked.len(), stored.len());
        assert!(acked.len() > 100, "the publishers hardly ran: {}", acked.len());
    }
}

mod incarnation {
    use super::*;

    #[tokio::test]
    async fn memory_incarnation_is_stable() {
        let f = memory(options(10, Duration::from_secs(60))).await;
        let a = f.store.incarnation().await.unwrap();
        assert_eq!(f.store.incarnation().await.unwrap(), a);
    }

    #[tokio::test]
    async fn redis_incarnation_changes_when_redis_loses_its_data() {
        let f = redis(options(10, Duration::from_secs(60))).await;
        let a = f.store.incarnation().await.unwrap();
        assert_eq!(f.store.incarnation().await.unwrap(), a, "stable while the data is there");
        let server = f._redis.as_ref().unwrap();
        assert_eq!(server.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
        let b = f.store.incarnation().await.unwrap();
        assert_ne!(a, b, "an emptied Redis is a new incarnation");
        assert_eq!(f.store.incarnation().await.unwrap(), b);
    }
}

macro_rules! conformance {
    ($store:ident) => {
        mod $store {
            use super::*;

            #[tokio::test]
            async fn an_idempotency_key_stores_once_per_room() {
                cases::an_idempotency_key_stores_once_per_room($store(options(1000, Duration::from_secs(60))).await)
                    .await
            }

            #[tokio::test]
            async fn history_reads_backwards() {
                cases::history_reads_backwards($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn state_keeps_each_keys_latest_and_survives_trimming() {
                cases::state_keeps_each_keys_latest_and_survives_trimming(
                    $store(options(10, Duration::from_secs(60))).await,
                )
                .await
            }

            #[tokio::test]
            async fn a_room_keeps_at_most_its_state_keys() {
                let mut opts = options(1000, Duration::from_secs(60));
                opts.max_state_keys = 3;
                cases::a_room_keeps_at_most_its_state_keys($store(opts).await).await
            }

            #[tokio::test]
            async fn bans_and_settings_are_kept_per_room() {
                cases::bans_and_settings_are_kept_per_room($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn slow_mode_lets_each_publisher_publish_once_per_interval() {
                cases::slow_mode_lets_each_publisher_publish_once_per_interval(
                    $store(options(1000, Duration::from_secs(60))).await,
                )
                .await
            }

            #[tokio::test]
            async fn edits_and_deletes_show_in_every_read_and_keep_the_chain() {
                cases::edits_and_deletes_show_in_every_read_and_keep_the_chain(
                    $store(options(1000, Duration::from_secs(60))).await,
                )
                .await
            }

            #[tokio::test]
            async fn ids_increase_and_chain() {
                cases::ids_increase_and_chain($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn reads_are_exclusive_and_paged() {
                cases::reads_are_exclusive_and_paged($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn trimming_keeps_at_least_history_and_reports_exact_gaps() {
                cases::trimming_keeps_at_least_history_and_reports_exact_gaps(
                    $store(options(10, Duration::from_secs(60))).await,
                )
                .await
            }

            #[tokio::test]
            async fn unknown_positions_are_gaps() {
                cases::unknown_positions_are_gaps($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn expired_history_keeps_its_floor() {
                cases::expired_history_keeps_its_floor($store(options(1000, Duration::from_secs(1))).await).await
            }

            #[tokio::test]
            async fn an_anchor_is_named_by_the_rooms_first_event() {
                cases::an_anchor_is_named_by_the_rooms_first_event($store(options(1000, Duration::from_secs(60))).await)
                    .await
            }

            #[tokio::test]
            async fn reads_racing_appends_see_no_gap() {
                cases::reads_racing_appends_see_no_gap($store(options(10_000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn events_of_every_size_round_trip() {
                cases::events_of_every_size_round_trip($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn read_many_returns_only_rooms_with_news() {
                cases::read_many_returns_only_rooms_with_news($store(options(1000, Duration::from_secs(60))).await)
                    .await
            }

            #[tokio::test]
            async fn audience_sums_nodes_and_withdraws() {
                cases::audience_sums_nodes_and_withdraws($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn audience_counts_only_live_nodes() {
                cases::audience_counts_only_live_nodes($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn a_forgotten_nodes_counts_go() {
                let mut opts = options(1000, Duration::from_secs(60));
                opts.presence_ttl = Duration::from_millis(100);
                cases::a_forgotten_nodes_counts_go($store(opts).await).await
            }

            #[tokio::test]
            async fn live_notes_are_read_once_in_order() {
                cases::live_notes_are_read_once_in_order($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn members_are_subjects_across_nodes() {
                cases::members_are_subjects_across_nodes($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn large_reports_apply_whole() {
                cases::large_reports_apply_whole($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn webhook_events_follow_the_deployment_in_order() {
                cases::webhook_events_follow_the_deployment_in_order(
                    $store(options(1000, Duration::from_secs(60))).await,
                )
                .await
            }

            #[tokio::test]
            async fn undelivered_webhook_events_are_bounded() {
                cases::undelivered_webhook_events_are_bounded($store(options(1000, Duration::from_secs(60))).await)
                    .await
            }

            #[tokio::test]
            async fn names_and_skips_are_kept_with_the_event() {
                cases::names_and_skips_are_kept_with_the_event($store(options(1000, Duration::from_secs(60))).await)
                    .await
            }

            #[tokio::test]
            async fn two_sinks_each_get_every_event() {
                cases::two_sinks_each_get_every_event($store(options(1000, Duration::from_secs(60))).await).await
            }

            #[tokio::test]
            async fn change_source_reports_watched_rooms() {
                cases::change_source_reports_watched_rooms($store(options(1000, Duration::from_secs(60))).await).await
            }
        }
    };
}

conformance!(memory);
conformance!(redis);
conformance!(cluster);
