//! A client that stops reading must cost neither the feed, nor other
//! clients, nor unbounded memory, and must still see every event or a gap.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use support::client::{assert_ordered, Client, Closed};
use support::{Deployment, Node};

const EVENTS: usize = 5_000;

/// Reads until `want` events arrived, reconnecting with the last ID if the
/// node closes the connection (1013: too slow). Returns events and gaps.
async fn read_all_resuming(
    node: &Node,
    room: &str,
    mut client: Client,
    want: &HashSet<String>,
) -> (Vec<String>, usize) {
    let (mut ids, mut gaps): (Vec<String>, usize) = (Vec::new(), 0);
    let mut reconnects = 0;
    while !want.iter().all(|id| ids.contains(id)) {
        match client.next().await {
            Ok(frame) if frame["type"] == "events" => {
                ids.extend(frame["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()))
            }
            Ok(frame) if frame["type"] == "gap" => gaps += 1,
            Ok(_) => {}
            Err(Closed::Code(1013, _)) => {
                reconnects += 1;
                assert!(reconnects < 20, "too many reconnects");
                let last = ids.last().cloned().unwrap_or_else(|| "0".into());
                client = Client::connect(&node.ws_url(&format!("?room={room}&last_event_id={last}"))).await;
            }
            Err(other) => panic!("unexpected close: {other:?}"),
        }
    }
    (ids, gaps)
}

#[tokio::test]
async fn a_stalled_client_harms_nobody_and_catches_up_exactly() {
    let d = Deployment::redis(1, &["--publish-rate", "100000", "--publish-burst", "100000"]);
    let node = d.node(0);
    let mut fast = Client::connect(&node.ws_url("?room=firehose")).await;
    fast.expect_type("subscribed").await;
    let mut slow = Client::connect_small_buffer(node.addr, &node.ws_url("?room=firehose")).await;
    slow.expect_type("subscribed").await;
    let rss_before = node.rss_kib();

    // Publish 5,000 events of 1 KiB, pipelined on one connection.
    let payload = "x".repeat(1024);
    let mut publisher = Client::connect(&node.ws_url("")).await;
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..EVENTS as u64 {
            publisher
                .send(json!({"type": "publish", "room": "firehose", "data": {"i": i, "p": payload}, "ref": i}))
                .await;
        }
        let mut acked = Vec::with_capacity(EVENTS);
        while acked.len() < EVENTS {
            let ack = publisher.expect_type("ack").await;
            acked.push(ack["id"].as_str().unwrap().to_owned());
        }
        acked
    });

    // The fast client receives everything in order while the slow one is stalled.
    let (events, gaps) = fast.events("firehose", EVENTS).await;
    let fast_elapsed = started.elapsed();
    let acked = sender.await.unwrap();
    assert!(gaps.is_empty());
    let ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
    assert_ordered(&ids);
    assert_eq!(ids.iter().collect::<HashSet<_>>(), acked.iter().collect::<HashSet<_>>(), "exactly the acked events");
    let rss_peak = node.rss_kib();
    println!(
        "slow consumer: fast client got {EVENTS} x 1 KiB in {fast_elapsed:?}; node RSS {rss_before} KiB before, {rss_peak} KiB with the stalled client"
    );
    assert!(rss_peak < rss_before + 64 * 1024, "node memory grew by {} KiB", rss_peak - rss_before);

    // The slow client now reads: every event once, in order (or a gap).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let want: HashSet<String> = acked.iter().cloned().collect();
    let (slow_ids, slow_gaps) = read_all_resuming(node, "firehose", slow, &want).await;
    assert_eq!(slow_gaps, 0, "history holds all 5,000 events: no gap expected");
    assert_ordered(&slow_ids);
    assert_eq!(slow_ids.len(), EVENTS, "no duplicates, nothing missing");
    let metrics = reqwest::get(node.http("/metrics")).await.unwrap().text().await.unwrap();
    // Summed over the metric's labels (catch-ups are counted by reason).
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (overflows, catch_ups) = (counter("roomcast_outbox_overflows_total"), counter("roomcast_catch_ups_total"));
    println!(
        "slow consumer caught up: RSS now {} KiB; {overflows} outbox overflows, {catch_ups} catch-ups",
        node.rss_kib()
    );
    assert!(
        overflows >= 1.0 && catch_ups >= 1.0,
        "the stalled client must have overflowed and caught up from the store"
    );
}
