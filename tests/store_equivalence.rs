//! Property: the embedded store and the Redis store give the same answers to
//! the same sequence of operations. IDs differ (both are clock-based), so
//! answers are compared with every ID replaced by its append index.
//!
//! Sequences stay below the history bound: trimming is "at least N" in both
//! stores but drops different amounts (Redis frees whole macro nodes), which
//! the conformance suite checks on its own terms.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use roomcast::protocol::{EventId, RoomName};
use roomcast::store::memory::MemoryStore;
use roomcast::store::redis::{RedisOptions, RedisStore, Topology};
use roomcast::store::{AppendOptions, Page, Position, Store, StoreOptions};

#[derive(Clone, Debug)]
enum Op {
    Append(u16),
    ReadOldest(usize),
    /// After the n-th appended ID (clamped), or 0-0 when none yet.
    ReadAfter(usize, usize),
    ReadFuture(usize),
    ReadZero(usize),
    Tail,
    ReadMany(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u16>().prop_map(Op::Append),
        1 => (1usize..20).prop_map(Op::ReadOldest),
        3 => (0usize..64, 1usize..20).prop_map(|(n, l)| Op::ReadAfter(n, l)),
        1 => (1usize..5).prop_map(Op::ReadFuture),
        1 => (1usize..20).prop_map(Op::ReadZero),
        1 => Just(Op::Tail),
        1 => (0usize..64).prop_map(Op::ReadMany),
    ]
}

/// An answer with IDs replaced by append indices (`-1` for 0-0, `-2` for an
/// ID the store never issued).
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Appended(i64),
    Page { events: Vec<(i64, i64, Bytes)>, gap: bool, tail: Option<i64> },
    Tail(i64),
    Many(Vec<(i64, i64)>),
}

fn index(ids: &[EventId], id: EventId) -> i64 {
    if id.is_zero() {
        return -1;
    }
    ids.iter().position(|x| *x == id).map(|i| i as i64).unwrap_or(-2)
}

fn page_answer(ids: &[EventId], page: Page) -> Answer {
    // The tail is only meaningful when a read found no events.
    let tail = page.events.is_empty().then(|| index(ids, page.tail));
    let events = page.events.into_iter().map(|e| (index(ids, e.id), index(ids, e.prev), e.data)).collect();
    Answer::Page { events, gap: page.gap, tail }
}

async fn apply(store: &dyn Store, room: &RoomName, ids: &mut Vec<EventId>, op: &Op) -> Answer {
    let read = |from, limit| async move { store.read(room, from, limit).await.unwrap() };
    match op {
        Op::Append(n) => {
            let id = store
                .append(room, Bytes::from(format!("{{\"n\":{n}}}")), AppendOptions::default())
                .await
                .unwrap()
                .id()
                .unwrap();
            ids.push(id);
            Answer::Appended(ids.len() as i64 - 1)
        }
        Op::ReadOldest(limit) => page_answer(ids, read(Position::Oldest, *limit).await),
        Op::ReadAfter(n, limit) => {
            let after = if ids.is_empty() { EventId::ZERO } else { ids[(*n).min(ids.len() - 1)] };
            page_answer(ids, read(Position::After(after), *limit).await)
        }
        Op::ReadFuture(limit) => {
            let last = ids.last().copied().unwrap_or(EventId::new(1, 0));
            page_answer(ids, read(Position::After(EventId::new(last.ms + 3_600_000, 0)), *limit).await)
        }
        Op::ReadZero(limit) => page_answer(ids, read(Position::After(EventId::ZERO), *limit).await),
        Op::Tail => Answer::Tail(index(ids, store.tail(room).await.unwrap())),
        Op::ReadMany(n) => {
            let after = if ids.is_empty() { EventId::ZERO } else { ids[(*n).min(ids.len() - 1)] };
            let got = store.read_many(&[(room.clone(), after)], 100).await.unwrap();
            Answer::Many(
                got.into_iter()
                    .flat_map(|(_, events)| events)
                    .map(|e| (index(ids, e.id), index(ids, e.prev)))
                    .collect(),
            )
        }
    }
}

static CASE: AtomicU64 = AtomicU64::new(0);

#[test]
fn memory_and_redis_stores_answer_alike() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let server = support::Redis::start();
    let options = StoreOptions {
        history: 1000,
        room_ttl: Duration::from_secs(600),
        presence_ttl: Duration::from_secs(60),
        max_state_keys: 1000,
    };
    let redis: Arc<dyn Store> = Arc::new(
        runtime
            .block_on(RedisStore::connect(
                RedisOptions {
                    topology: Topology::Single(server.url()),
                    prefix: "eq".into(),
                    command_timeout: Duration::from_secs(5),
                },
                options.clone(),
            ))
            .unwrap(),
    );
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new(options));
    let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..60))| {
        let room = RoomName::parse(&format!("case-{}", CASE.fetch_add(1, Ordering::Relaxed))).unwrap();
        let (mut mem_ids, mut redis_ids) = (Vec::new(), Vec::new());
        for op in &ops {
            let a = runtime.block_on(apply(&*memory, &room, &mut mem_ids, op));
            let b = runtime.block_on(apply(&*redis, &room, &mut redis_ids, op));
            prop_assert_eq!(a, b, "after {:?}", op);
        }
    });
}
