//! The application-level heartbeat: browsers cannot see WebSocket pings,
//! so a quiet connection is sent `{"type":"heartbeat"}` instead.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::client::{Client, Format};
use support::{publish, Node};

/// Counts heartbeat frames (and other frames) arriving within `window`.
async fn count(client: &mut Client, window: Duration) -> (usize, usize) {
    let deadline = Instant::now() + window;
    let (mut beats, mut other) = (0, 0);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match client.next_within(left).await {
            None => break,
            Some(Ok(frame)) if frame["type"] == "heartbeat" => beats += 1,
            Some(Ok(_)) => other += 1,
            Some(Err(closed)) => panic!("closed: {closed:?}"),
        }
    }
    (beats, other)
}

#[tokio::test]
async fn quiet_connections_hear_a_heartbeat_and_busy_ones_do_not() {
    let node = Node::memory(&["--heartbeat-secs", "1"]);
    let mut quiet = Client::connect(&node.ws_url("?room=quiet")).await;
    quiet.expect_type("subscribed").await;
    quiet.skip_heartbeats = false;
    let mut packed = Client::connect_with(&node.ws_url("?format=msgpack"), Format::MsgPack, None).await;
    packed.skip_heartbeats = false;
    let mut busy = Client::connect(&node.ws_url("?room=busy")).await;
    busy.expect_type("subscribed").await;
    busy.skip_heartbeats = false;

    let publisher = async {
        for i in 0..16 {
            publish(&node, "busy", json!(i)).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let window = Duration::from_millis(4200);
    let ((quiet_beats, quiet_other), (packed_beats, _), (busy_beats, busy_events), ()) =
        tokio::join!(count(&mut quiet, window), count(&mut packed, window), count(&mut busy, window), publisher);
    // Ticks every second; the first tick after connecting never beats:
    // about three heartbeats in four seconds, never silence past two ticks.
    assert!((2..=5).contains(&quiet_beats), "quiet connection got {quiet_beats} heartbeats");
    assert_eq!(quiet_other, 0);
    assert!((2..=5).contains(&packed_beats), "MessagePack connection got {packed_beats} heartbeats");
    assert!(busy_events > 0);
    assert_eq!(busy_beats, 0, "a connection that hears events needs no heartbeat");
}
