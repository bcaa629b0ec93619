//! The resume promise where it broke: acknowledged events a Redis restore
//! lost, told to clients that come back later; an empty room's first event
//! lost while its node was behind; and a client far behind in large events.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::time::Duration;

use roomcast::protocol::RoomName;
use roomcast::store::redis::keys::Keys;
use serde_json::{json, Value};
use support::client::{Client, Closed};
use support::{get_json, publish, publish_when_ready, sse_events, Node, Redis};

/// A client resuming `room` from `after`: its `subscribed` frame, then the
/// gaps and events that follow, until `n` events arrived.
async fn resume(node: &Node, room: &str, after: &str, n: usize) -> (Value, Vec<String>, Vec<String>) {
    let mut client = Client::connect(&node.ws_url(&format!("?room={room}&last_event_id={after}"))).await;
    let subscribed = client.expect_type("subscribed").await;
    let (events, gaps) = client.events(room, n).await;
    (subscribed, gaps, events.into_iter().map(|(id, _)| id).collect())
}

#[tokio::test]
async fn a_restore_that_lost_acked_events_is_a_gap_for_clients_that_come_back_later() {
    let mut redis = Redis::start();
    let nodes = [Node::redis(&redis, &[]), Node::redis(&redis, &[])];
    let mut kept = Vec::new();
    for i in 1..=20 {
        kept.push(publish(&nodes[i % 2], "restored", json!(i)).await);
    }
    assert_eq!(redis.command(&["SAVE"]).as_deref(), Some("+OK"));
    let mut lost = Vec::new();
    for i in 21..=30 {
        lost.push(publish(&nodes[i % 2], "restored", json!(i)).await);
    }
    // Redis comes back from the snapshot: e21..e30 were acked, and are gone.
    redis.restart_from_disk();
    let next = publish_when_ready(&nodes[0], "restored", json!(31)).await;
    for node in &nodes {
        for after in [&kept[19], &lost[4], &lost[9]] {
            let (subscribed, gaps, events) = resume(node, "restored", after, 1).await;
            assert_eq!(subscribed["resumed"], false, "after {after}: {subscribed}");
            assert_eq!(gaps, vec![after.clone()], "after {after}: told of the loss");
            assert_eq!(events, vec![next.clone()]);
        }
        let (status, body) = get_json(&node.http(&format!("/rooms/restored/events?after={}", kept[19]))).await;
        assert_eq!(status, 200);
        assert_eq!((body["gap"].clone(), body["events"][0]["id"].clone()), (json!(true), json!(next)));
        let sse = reqwest::Client::new()
            .get(node.http("/rooms/restored/sse"))
            .header("Last-Event-ID", kept[19].as_str())
            .send()
            .await
            .unwrap();
        let (events, gaps) = sse_events(sse, 1).await;
        assert_eq!((gaps, events[0].0.clone()), (vec![kept[19].clone()], next.clone()));
    }
    // A client that had read nothing past the snapshot's middle gets the
    // rest of what was kept, then the gap.
    let (_, gaps, events) = resume(&nodes[1], "restored", &kept[9], 11).await;
    assert_eq!(events[..10], kept[10..20]);
    assert_eq!((gaps, events[10].clone()), (vec![kept[19].clone()], next));
}

#[tokio::test]
async fn an_empty_rooms_first_event_lost_while_its_node_is_behind_is_a_gap() {
    let redis = Redis::start();
    let (behind, other) = (Node::redis(&redis, &[]), Node::redis(&redis, &[]));
    let mut ws = Client::connect(&behind.ws_url("?room=quiet")).await;
    let start = ws.expect_type("subscribed").await["last_event_id"].as_str().unwrap().to_owned();
    let sse = reqwest::get(behind.http("/rooms/quiet/sse")).await.unwrap();
    assert_eq!(sse.status(), 200);
    // The viewers' node stops for a moment; meanwhile the room's first event
    // is published and its keys go (DEL, eviction, expiry), then another.
    behind.freeze();
    publish(&other, "quiet", json!(1)).await;
    let keys = Keys::new("rc");
    let room = RoomName::parse("quiet").unwrap();
    assert_eq!(redis.command(&["DEL", &keys.room(&room), &keys.floor(&room)]).as_deref(), Some(":2"));
    let second = publish(&other, "quiet", json!(2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    behind.thaw();
    let (events, gaps) = ws.events("quiet", 1).await;
    assert_eq!(gaps, vec![start.clone()], "the lost first event is a gap on WebSocket");
    assert_eq!(events[0].0, second);
    let (events, gaps) = sse_events(sse, 1).await;
    assert_eq!(gaps, vec![start], "and on SSE");
    assert_eq!(events[0].0, second);
}

#[tokio::test]
async fn a_client_far_behind_in_large_events_catches_up_whatever_its_pace() {
    let node = Node::memory(&["--history", "100000"]);
    // 3,200 events of 16 KB: 52 MB of history.
    let http = reqwest::Client::new();
    let payload = json!("q".repeat(16_000));
    let mut ids = Vec::new();
    for _ in 0..3_200 {
        let response = http.post(node.http("/rooms/far/events")).json(&payload).send().await.unwrap();
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    // A reader with a small socket buffer that takes a few ms per frame.
    let url = node.ws_url(&format!("?room=far&last_event_id={}", ids[9]));
    let mut client = Client::connect_small_buffer(node.addr, &url).await;
    assert_eq!(client.expect_type("subscribed").await["resumed"], true);
    let mut got = Vec::new();
    while got.len() < ids.len() - 10 {
        match client.next().await {
            Ok(frame) if frame["type"] == "events" => {
                got.extend(frame["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(frame) => panic!("unexpected {frame}"),
            Err(Closed::Code(code, reason)) => panic!("closed {code} {reason} after {} events", got.len()),
            Err(other) => panic!("closed {other:?}"),
        }
    }
    assert_eq!(got, ids[10..], "every event once, in order");
    eprintln!("caught up 52 MB; node RSS {} KiB", node.rss_kib());
}
