//! Micro-benchmarks of the fanout hot paths: encoding a batch once per
//! format, EventId parsing and ordering, the outbox, and the embedded
//! store's append and range read. `cargo bench --bench hot_paths`.

// Benchmarks may unwrap, and criterion's macros generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roomcast::hub::outbox::{Outbox, OutboxLimits};
use roomcast::hub::Batch;
use roomcast::protocol::{encode_events, Event, EventId, Format, RoomName};
use roomcast::store::memory::MemoryStore;
use roomcast::store::{AppendOptions, EventLog, Position, StoreOptions};

fn events(n: u64, payload: usize) -> Vec<Event> {
    let data = Bytes::from(format!("{{\"msg\":\"{}\"}}", "x".repeat(payload.saturating_sub(10))));
    (1..=n)
        .map(|i| Event {
            id: EventId::new(1_732_270_000_000 + i, 0),
            prev: EventId::new(1_732_270_000_000 + i - 1, 0),
            data: data.clone(),
            ..Event::default()
        })
        .collect()
}

fn encoding(c: &mut Criterion) {
    let room = RoomName::parse("show-42").unwrap();
    let mut group = c.benchmark_group("encode_batch_16x64B");
    let batch = events(16, 64);
    group.throughput(Throughput::Elements(16));
    group.bench_function("json", |b| b.iter(|| encode_events(Format::Json, &room, black_box(&batch))));
    group.bench_function("msgpack", |b| b.iter(|| encode_events(Format::MsgPack, &room, black_box(&batch))));
    group.finish();
}

fn event_ids(c: &mut Criterion) {
    c.bench_function("event_id_parse", |b| b.iter(|| EventId::parse(black_box("1732270000000-42"))));
    let a = EventId::new(1_732_270_000_000, 3);
    let z = EventId::new(1_732_270_000_000, 4);
    c.bench_function("event_id_cmp", |b| b.iter(|| black_box(a) < black_box(z)));
}

fn outbox(c: &mut Criterion) {
    let room = RoomName::parse("show-42").unwrap();
    let batch = Arc::new(Batch::new(room, events(1, 64)));
    c.bench_function("outbox_offer_recv", |b| {
        b.iter_batched(
            || Outbox::new(OutboxLimits { frames: 1024, bytes: 1 << 20 }),
            |(outbox, mut rx)| {
                let lagged = AtomicBool::new(false);
                for _ in 0..64 {
                    outbox.offer(&batch, &lagged);
                }
                while rx.try_recv().is_some() {}
            },
            BatchSize::SmallInput,
        )
    });
}

fn memory_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let options = StoreOptions {
        history: 10_000,
        room_ttl: Duration::from_secs(3600),
        presence_ttl: Duration::from_secs(6),
        max_state_keys: 1000,
    };
    let store = MemoryStore::new(options);
    let room = RoomName::parse("bench").unwrap();
    let data = Bytes::from_static(br#"{"msg":"hello, world"}"#);
    c.bench_function("memory_append", |b| {
        b.iter(|| runtime.block_on(store.append(&room, data.clone(), AppendOptions::default())))
    });
    let after = runtime.block_on(store.tail(&room)).unwrap();
    for _ in 0..100 {
        runtime.block_on(store.append(&room, data.clone(), AppendOptions::default())).unwrap();
    }
    c.bench_function("memory_read_100", |b| {
        b.iter(|| runtime.block_on(store.read(&room, Position::After(black_box(after)), 100)))
    });
}

criterion_group!(benches, encoding, event_ids, outbox, memory_store);
criterion_main!(benches);
