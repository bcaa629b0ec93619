//! One conformance suite for the `Store` contract, run against the embedded
//! memory store and against Redis (a real `redis-server` per test).

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use roomcast::protocol::{EventId, RoomName};
use roomcast::store::memory::MemoryStore;
use roomcast::store::redis::{RedisOptions, RedisStore, Topology};
use roomcast::store::{LiveNote, Position, Store, StoreOptions};
use support::{eventually, Redis};

fn options(history: usize, room_ttl: Duration) -> StoreOptions {
    StoreOptions { history, room_ttl, presence_ttl: Duration::from_secs(60) }
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
        ids.push(store.append(r, data(i)).await.unwrap());
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
        let Appended::Stored(first) = f.store.append_once(&r, &key, data(1)).await.unwrap() else {
            panic!("a new key stores")
        };
        // A retry, even with other data, stores nothing and answers the first ID.
        assert_eq!(f.store.append_once(&r, &key, data(2)).await.unwrap(), Appended::Repeated(first));
        let page = f.store.read(&r, Position::Oldest, 10).await.unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].data, data(1));
        // Keys are per room, and other keys are other publishes.
        assert!(matches!(f.store.append_once(&other, &key, data(3)).await.unwrap(), Appended::Stored(_)));
        let key2 = IdempotencyKey::parse("bid-18").unwrap();
        assert!(matches!(f.store.append_once(&r, &key2, data(4)).await.unwrap(), Appended::Stored(_)));
        // Concurrent retries store one event.
        let key3 = IdempotencyKey::parse("bid-19").unwrap();
        let outcomes = futures::future::join_all((0..20).map(|i| {
            let (store, r, key3) = (f.store.clone(), r.clone(), key3.clone());
            async move { store.append_once(&r, &key3, data(i)).await.unwrap() }
        }))
        .await;
        let stored: Vec<_> = outcomes.iter().filter(|o| matches!(o, Appended::Stored(_))).collect();
        assert_eq!(stored.len(), 1, "{outcomes:?}");
        assert!(outcomes.iter().all(|o| o.id() == stored[0].id()));
        assert_eq!(f.store.read(&r, Position::Oldest, 100).await.unwrap().events.len(), 3);
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

    pub async fn expired_history_is_a_gap(f: Fixture) {
        let r = room("idle");
        let ids = append_n(&*f.store, &r, 3).await;
        let store = f.store.clone();
        let r2 = r.clone();
        eventually("the idle room to expire", || {
            let store = store.clone();
            let r2 = r2.clone();
            async move { (store.tail(&r2).await.ok()? == EventId::ZERO).then_some(()) }
        })
        .await;
        let gone = f.store.read(&r, Position::After(ids[1]), 10).await.unwrap();
        assert!(gone.gap, "history lost to expiry is a gap");
        let new_id = f.store.append(&r, data(9)).await.unwrap();
        let page = f.store.read(&r, Position::After(ids[2]), 10).await.unwrap();
        assert!(page.gap, "a rebuilt room does not continue the old one");
        assert_eq!(page.events[0].id, new_id);
        // Its first entry names a predecessor no kept event has (`0-0` on
        // the embedded store, `0-1` above a floor on Redis), so no reader
        // takes it as a continuation.
        assert!(page.events[0].prev <= EventId::new(0, 1), "{:?}", page.events[0].prev);
        assert!(!ids.contains(&page.events[0].prev));
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
        let mut source = f.store.change_source("n1").await.unwrap();
        source.watch(&r);
        source.prepare().await.unwrap();
        f.store.append(&r, data(1)).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.extend(source.wait(Duration::from_millis(500)).await.unwrap());
            if seen.contains(&r) {
                break;
            }
        }
        assert!(seen.contains(&r), "the append to a watched room was not signalled: {seen:?}");
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
                    async move { store.append(&r, data(i)).await.unwrap() }
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
            // Nothing kept: a client past the old history is told.
            let page = f.store.read(&r, Position::After(old[4]), 10).await.unwrap();
            assert!(page.gap && page.events.is_empty(), "{name}: {page:?}");
            let new = f.store.append(&r, data(99)).await.unwrap();
            assert!(new > last, "{name}: the rebuilt room reissued {new} (old last {last})");
            for after in [old[4], last] {
                let page = f.store.read(&r, Position::After(after), 10).await.unwrap();
                assert!(page.gap, "{name}: a rebuild must be a gap after {after}: {page:?}");
                assert_eq!(page.events.first().map(|e| e.id), Some(new));
            }
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
        let mut source = f.store.change_source("early").await.unwrap();
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
            async fn expired_history_is_a_gap() {
                cases::expired_history_is_a_gap($store(options(1000, Duration::from_secs(1))).await).await
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
            async fn live_notes_are_read_once_in_order() {
                cases::live_notes_are_read_once_in_order($store(options(1000, Duration::from_secs(60))).await).await
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
