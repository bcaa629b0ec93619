//! The fast tier's end-to-end cases: a node on the embedded store run inside
//! the test process (`roomcast::run` on port 0), real sockets, no spawned
//! binaries. What needs a process boundary (signals, descriptor limits,
//! Redis, chaos) is in the other suites.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use serde_json::{json, Value};
use support::client::{Client, Closed, Format};
use support::in_process::InProcess;
use support::sse_events;

async fn publish(node: &InProcess, room: &str, data: Value) -> String {
    let response =
        reqwest::Client::new().post(node.http(&format!("/rooms/{room}/events"))).json(&data).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn live_then_an_exact_resume_then_a_gap_past_the_kept_history() {
    let node = InProcess::start(&["--history", "10"]).await;
    let mut live = Client::connect(&node.ws_url("?room=show")).await;
    live.expect_type("subscribed").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&node, "show", json!(i)).await);
    }
    let (got, gaps) = live.events("show", 5).await;
    assert!(gaps.is_empty());
    assert_eq!(got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids);
    drop(live);
    for i in 5..8 {
        ids.push(publish(&node, "show", json!(i)).await);
    }
    let mut back = Client::connect(&node.ws_url(&format!("?room=show&last_event_id={}", ids[4]))).await;
    assert_eq!(back.expect_type("subscribed").await["resumed"], true);
    let (missed, gaps) = back.events("show", 3).await;
    assert!(gaps.is_empty());
    assert_eq!(missed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids[5..8]);
    // Far more than the history keeps: a resume from the start is a gap.
    for i in 8..300 {
        ids.push(publish(&node, "show", json!(i)).await);
    }
    let mut late = Client::connect(&node.ws_url(&format!("?room=show&last_event_id={}", ids[0]))).await;
    assert_eq!(late.expect_type("subscribed").await["resumed"], false);
    assert_eq!(late.expect_type("gap").await["after"], ids[0].as_str());
    node.stop().await;
}

#[tokio::test]
async fn a_backlog_of_large_events_arrives_whole_over_websocket_and_sse() {
    let node = InProcess::start(&[]).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(publish(&node, "big", json!(format!("{i:04}{}", "b".repeat(16_000)))).await);
    }
    let mut client = Client::connect_with(&node.ws_url("?room=big&last_event_id=0"), Format::MsgPack, None).await;
    client.expect_type("subscribed").await;
    let (events, gaps) = client.events("big", ids.len()).await;
    assert!(gaps.is_empty());
    assert_eq!(events.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), ids);
    let sse = reqwest::get(node.http("/rooms/big/sse?last_event_id=0")).await.unwrap();
    let (events, _) = sse_events(sse, ids.len()).await;
    assert_eq!(events.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), ids);
    node.stop().await;
}

#[tokio::test]
async fn an_empty_rooms_subscriber_holds_its_anchor_and_the_first_event_follows_it() {
    let node = InProcess::start(&[]).await;
    let mut client = Client::connect(&node.ws_url("?room=new")).await;
    let anchor = client.expect_type("subscribed").await["last_event_id"].as_str().unwrap().to_owned();
    assert_ne!(anchor, "0-0");
    let first = publish(&node, "new", json!("first")).await;
    assert_eq!(client.events("new", 1).await.0[0].0, first);
    // Resuming from the anchor elsewhere gets the first event, no gap.
    let mut again = Client::connect(&node.ws_url(&format!("?room=new&last_event_id={anchor}"))).await;
    assert_eq!(again.expect_type("subscribed").await["resumed"], true);
    let (events, gaps) = again.events("new", 1).await;
    assert!(gaps.is_empty());
    assert_eq!(events[0].0, first);
    node.stop().await;
}

#[tokio::test]
async fn stopping_the_node_closes_its_sockets_with_1012() {
    let node = InProcess::start(&[]).await;
    let mut client = Client::connect(&node.ws_url("?room=bye")).await;
    client.expect_type("subscribed").await;
    node.stop().await;
    match client.closed().await {
        Closed::Code(code, _) => assert_eq!(code, 1012),
        other => panic!("expected 1012, got {other:?}"),
    }
}
