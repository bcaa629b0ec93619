//! Multi-node behaviour that only Redis deployments have: a blocked reader
//! picking up new rooms, store outages and restarts, nodes dying.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::{assert_ordered, Client};
use support::{eventually, get_json, publish, publish_when_ready, wait_ready_status, Deployment, Node, Redis};

#[tokio::test]
async fn a_new_rooms_first_event_arrives_while_the_reader_is_blocked() {
    let d = Deployment::redis(2, &[]);
    // Node 0's reader is blocked on one busy room...
    let mut busy = Client::connect(&d.node(0).ws_url("?room=busy")).await;
    busy.expect_type("subscribed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...when rooms it has never followed gain their first subscriber. Each
    // event must arrive well before the reader's 2 s block would time out.
    for i in 0..5 {
        let room = format!("fresh-{i}");
        let mut client = Client::connect(&d.node(0).ws_url(&format!("?room={room}"))).await;
        client.expect_type("subscribed").await;
        let started = Instant::now();
        let id = publish(d.node(1), &room, json!(i)).await;
        let frame = client
            .next_within(Duration::from_millis(1500))
            .await
            .unwrap_or_else(|| panic!("room {room}: first event not delivered within 1.5 s"))
            .expect("open");
        assert_eq!(frame["events"][0]["id"], id.as_str(), "{frame}");
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
}

#[tokio::test]
async fn history_lost_in_a_redis_restart_is_a_gap_and_live_carries_on() {
    let mut d = Deployment::redis(2, &[]);
    let mut live = Client::connect(&d.node(0).ws_url("?room=show")).await;
    live.expect_type("subscribed").await;
    // A live client of a room that is still empty stands at the room's
    // anchor; after the restart the new stream's first event chains from
    // 0-0, which no longer names it: events acked before the restart may
    // have been lost unseen.
    let mut quiet = Client::connect(&d.node(0).ws_url("?room=quiet")).await;
    let anchor = quiet.expect_type("subscribed").await["last_event_id"].as_str().unwrap().to_owned();
    assert_ne!(anchor, "0-0", "an empty room's live position is its anchor");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(d.publish(i, "show", json!(i)).await);
    }
    let (before, _) = live.events("show", 10).await;
    assert_eq!(before.len(), 10);

    d.redis.as_mut().unwrap().restart_empty();
    // Publishing works again once the nodes have reconnected.
    let after = publish_when_ready(d.node(1), "show", json!("after")).await;

    // The client that stayed connected is told about the loss, then gets live events.
    let (events, gaps) = live.events("show", 1).await;
    assert_eq!(gaps, vec![ids[9].clone()], "the live client must be told its history is gone");
    assert_eq!(events[0].0, after);

    let quiet_id = d.publish(1, "quiet", json!("first after restart")).await;
    let (events, gaps) = quiet.events("quiet", 1).await;
    assert_eq!(gaps, vec![anchor], "a possible loss must be reported, never hidden");
    assert_eq!(events[0].0, quiet_id);

    // A client resuming from an old ID on another node gets a gap, not silence.
    let mut resumed = Client::connect(&d.node(1).ws_url("")).await;
    resumed.subscribe("show", Some(&ids[4])).await;
    assert_eq!(resumed.expect_type("subscribed").await["resumed"], false);
    assert_eq!(resumed.expect_type("gap").await["after"], ids[4].as_str());
    let (events, _) = resumed.events("show", 1).await;
    assert_eq!(events[0].0, after);
}

#[tokio::test]
async fn redis_outage_fails_publishes_clearly_and_recovers() {
    let mut d = Deployment::redis(2, &["--redis-timeout-ms", "500"]);
    let mut client = Client::connect(&d.node(0).ws_url("?room=up")).await;
    client.expect_type("subscribed").await;
    let first = d.publish(1, "up", json!("before")).await;
    let (seen, _) = client.events("up", 1).await;
    assert_eq!(seen[0].0, first);
    let redis = d.redis.as_mut().unwrap();
    redis.kill();

    wait_ready_status(d.node(0), 503).await;
    let refused = reqwest::Client::new().post(d.node(1).http("/rooms/up/events")).json(&json!(1)).send().await.unwrap();
    assert_eq!(refused.status(), 503, "a publish during an outage is refused, never acked");
    assert_eq!(refused.json::<Value>().await.unwrap()["error"], "store_unavailable");
    let mut ws_pub = Client::connect(&d.node(1).ws_url("")).await;
    ws_pub.send(json!({"type": "publish", "room": "up", "data": 1, "ref": 9})).await;
    let error = ws_pub.expect_type("error").await;
    assert_eq!((error["code"].as_str(), error["ref"].as_u64()), (Some("store_unavailable"), Some(9)));

    d.redis.as_mut().unwrap().restart_empty();
    wait_ready_status(d.node(0), 200).await;
    // The connection stayed open throughout; it learns the history is gone,
    // then receives what is published after the outage.
    let after = publish_when_ready(d.node(1), "up", json!("after")).await;
    let (events, gaps) = client.events("up", 1).await;
    assert_eq!(gaps, vec![first.clone()], "the open connection learns the history is gone");
    assert_eq!(events[0].0, after);
    assert_ordered(&[first, after]);
}

#[tokio::test]
async fn a_crashed_nodes_viewers_leave_the_audience() {
    let mut d = Deployment::redis(2, &[]);
    let mut viewers = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(&d.node(i % 2).ws_url("?room=stage")).await;
        c.expect_type("subscribed").await;
        viewers.push(c);
    }
    let url = d.node(0).http("/rooms/stage");
    eventually("both nodes' viewers to be counted", || {
        let url = url.clone();
        async move { (get_json(&url).await.1["audience"] == 5).then_some(()) }
    })
    .await;
    d.nodes[1].kill();
    eventually("the dead node's 2 viewers to vanish", || {
        let url = url.clone();
        async move { (get_json(&url).await.1["audience"] == 3).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn clients_resume_across_a_killed_node() {
    let redis = Redis::start();
    let mut a = Node::redis(&redis, &[]);
    let b = Node::redis(&redis, &[]);
    let mut client = Client::connect(&a.ws_url("?room=relay")).await;
    client.expect_type("subscribed").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(publish(&b, "relay", json!(i)).await);
    }
    let (seen, _) = client.events("relay", 20).await;
    a.kill();
    for i in 20..40 {
        ids.push(publish(&b, "relay", json!(i)).await);
    }
    let last = seen.last().unwrap().0.clone();
    let mut again = Client::connect(&b.ws_url(&format!("?room=relay&last_event_id={last}"))).await;
    assert_eq!(again.expect_type("subscribed").await["resumed"], true);
    let (rest, gaps) = again.events("relay", 20).await;
    assert!(gaps.is_empty());
    assert_eq!(rest.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), ids[20..].to_vec());
}

#[tokio::test]
async fn a_stalled_redis_delays_but_loses_nothing() {
    let d = Deployment::redis(2, &["--redis-timeout-ms", "500"]);
    let mut client = Client::connect(&d.node(0).ws_url("?room=steady")).await;
    client.expect_type("subscribed").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(d.publish(i, "steady", json!(i)).await);
    }
    let redis = d.redis.as_ref().unwrap();
    redis.freeze();
    wait_ready_status(d.node(1), 503).await;
    let refused =
        reqwest::Client::new().post(d.node(1).http("/rooms/steady/events")).json(&json!("x")).send().await.unwrap();
    assert_eq!(refused.status(), 503, "no false ack while the store does not answer");
    redis.thaw();
    for i in 5..10 {
        ids.push(publish_when_ready(d.node(1), "steady", json!(i)).await);
    }
    // Before and after the stall, every event arrives once, in order, no gap.
    // The refused publish was already on its way to Redis when it timed
    // out, so Redis may still have stored it: unconfirmed, not undone.
    let mut got = Vec::new();
    while got.len() < 10 {
        let (events, gaps) = client.events("steady", 1).await;
        assert!(gaps.is_empty(), "the data survived: no gap");
        got.extend(events.into_iter().filter(|(_, data)| *data != json!("x")).map(|(id, _)| id));
    }
    assert_eq!(got, ids);
    client.expect_silence(Duration::from_millis(300)).await;
}

/// Reads frames of `room` until `want` events arrived or `quiet` passed
/// without any frame; returns every event ID and gap in arrival order.
async fn drain_room(client: &mut Client, room: &str, want: usize, quiet: Duration) -> (Vec<String>, Vec<String>) {
    let (mut ids, mut gaps) = (Vec::new(), Vec::new());
    while ids.len() < want {
        let Some(Ok(frame)) = client.next_within(quiet).await else { break };
        if frame["room"] != room {
            continue;
        }
        match frame["type"].as_str() {
            Some("events") => {
                ids.extend(frame["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()))
            }
            Some("gap") => gaps.push(frame["after"].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    (ids, gaps)
}

#[tokio::test]
async fn a_lost_incarnation_key_replays_nothing_and_costs_no_gap() {
    let d = Deployment::redis(2, &[]);
    let mut live = Client::connect(&d.node(0).ws_url("?room=show")).await;
    live.expect_type("subscribed").await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(d.publish(1, "show", json!(i)).await);
    }
    let (got, _) = live.events("show", 100).await;
    assert_eq!(got.len(), 100);
    let redis = d.redis.as_ref().unwrap();
    // One Redis is one loss domain, tracked by bucket 0's epoch.
    let epoch = roomcast::store::redis::keys::Keys::new("rc").epoch(0);
    assert_eq!(redis.command(&["DEL", &epoch]).as_deref(), Some(":1"));
    // The feed notices at its next sweep, and must recreate the token.
    eventually("the incarnation token is recreated", || async {
        (redis.command(&["EXISTS", &epoch]).as_deref() == Some(":1")).then_some(())
    })
    .await;
    let after = d.publish(1, "show", json!("after")).await;
    let (events, gaps) = drain_room(&mut live, "show", 1, Duration::from_secs(3)).await;
    assert_eq!(events, vec![after], "nothing replayed, nothing skipped");
    assert!(gaps.is_empty(), "the history is intact: no gap is due ({gaps:?})");
    live.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn deleted_room_keys_and_flushall_are_never_replays_and_gaps_when_events_were_lost() {
    let d = Deployment::redis(2, &[]);
    let redis = d.redis.as_ref().unwrap();
    let mut live = Client::connect(&d.node(0).ws_url("?room=show")).await;
    live.expect_type("subscribed").await;
    let mut seen: Vec<String> = Vec::new();
    for (round, fault) in ["DEL", "FLUSHALL"].iter().enumerate() {
        let mut acked = Vec::new();
        for i in 0..20 {
            acked.push(d.publish(1, "show", json!([round, i])).await);
        }
        let (got, gaps) = drain_room(&mut live, "show", 20, Duration::from_secs(3)).await;
        assert_eq!(got, acked, "round {round}: live delivery before the fault");
        assert!(gaps.is_empty());
        seen.extend(got);
        match *fault {
            "DEL" => {
                let key = roomcast::store::redis::keys::Keys::new("rc")
                    .room(&roomcast::protocol::RoomName::parse("show").unwrap());
                assert_eq!(redis.command(&["DEL", &key]).as_deref(), Some(":1"));
            }
            _ => assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK")),
        }
        let next = d.publish(1, "show", json!([round, "after"])).await;
        let (got, gaps) = drain_room(&mut live, "show", 1, Duration::from_secs(8)).await;
        if *fault == "DEL" {
            // The room's floor outlived its stream: the rebuilt stream names
            // the last event as its predecessor, and the client that had
            // everything continues exactly.
            assert!(gaps.is_empty(), "round {round} ({fault}): nothing was lost that the client had not seen");
        } else {
            assert_eq!(gaps.first(), Some(seen.last().unwrap()), "round {round} ({fault}): the rebuild is a gap");
        }
        assert_eq!(got, vec![next.clone()], "round {round} ({fault}): only the new event, once");
        seen.push(next);
    }
    assert_ordered(&seen);
}

#[tokio::test]
async fn a_publish_retried_after_a_timeout_with_its_key_is_stored_once() {
    let d = Deployment::redis(2, &["--redis-timeout-ms", "500"]);
    let http = reqwest::Client::new();
    let post = |node: usize| {
        http.post(d.node(node).http("/rooms/bids/events")).header("Idempotency-Key", "bid-99").json(&json!(99)).send()
    };
    let redis = d.redis.as_ref().unwrap();
    // Redis stalls: the publish is not confirmed, yet it already reached
    // Redis and runs once Redis wakes up.
    redis.freeze();
    let unconfirmed = post(0).await.unwrap();
    assert_eq!(unconfirmed.status(), 503, "not confirmed while Redis is frozen");
    redis.thaw();
    // The publisher retries on another node with the same key.
    let retry = eventually("the retry is answered", || async {
        let r = post(1).await.ok()?;
        (r.status() == 200 || r.status() == 201).then_some(r)
    })
    .await;
    let id = retry.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (status, history) = get_json(&d.node(0).http("/rooms/bids/events")).await;
    assert_eq!(status, 200);
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "stored once: {history}");
    assert_eq!(events[0]["id"], id.as_str());
}

#[tokio::test]
async fn a_node_started_before_its_redis_serves_and_becomes_ready() {
    let mut redis = Redis::later();
    let node = Node::redis(&redis, &[]);
    // Up, not ready; publishes and subscribes get a clear answer.
    assert_eq!(get_json(&node.http("/healthz")).await.0, 200);
    wait_ready_status(&node, 503).await;
    let refused = reqwest::Client::new().post(node.http("/rooms/early/events")).json(&json!(1)).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"], "store_unavailable");
    let mut early = Client::connect(&node.ws_url("")).await;
    early.subscribe("early", None).await;
    assert_eq!(early.expect_type("error").await["code"], "store_unavailable");

    redis.begin();
    wait_ready_status(&node, 200).await;
    // Ready by itself: subscribes, publishes and live delivery all work.
    early.subscribe("early", None).await;
    early.expect_type("subscribed").await;
    let id = publish(&node, "early", json!("first")).await;
    let (events, _) = early.events("early", 1).await;
    assert_eq!(events[0].0, id);
}

/// A state subscriber never keeps believing values from before a loss: the
/// `gap` is followed by the current state, read again from the store.
#[tokio::test]
async fn after_a_loss_a_state_subscriber_gets_the_gap_then_the_current_state() {
    let d = Deployment::redis(2, &[]);
    let redis = d.redis.as_ref().unwrap();
    let publish_lead = |node: usize, value: Value| {
        let url = d.node(node).http("/rooms/auction/events?key=lead");
        async move {
            let response = reqwest::Client::new().post(url).json(&value).send().await.unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        }
    };
    let before = publish_lead(1, json!(100)).await;
    let mut viewer = Client::connect(&d.node(0).ws_url("?room=auction&state=1")).await;
    viewer.expect_type("subscribed").await;
    let state = viewer.expect_type("state").await;
    assert_eq!(state["values"]["lead"]["id"], json!(before));
    assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    let after = publish_lead(1, json!(5)).await;
    // Merging frames as a client does: a state replaces the values, a keyed
    // event newer than a value takes its place.
    let mut lead: Option<(String, Value)> = Some((before.clone(), json!(100)));
    let (mut gap, mut restated) = (false, false);
    while lead.as_ref().map(|(id, _)| id) != Some(&after) || !restated {
        let frame = viewer.next().await.unwrap();
        match frame["type"].as_str() {
            Some("gap") => gap = true,
            Some("state") => {
                assert!(gap, "a fresh state follows the gap: {frame}");
                restated = true;
                let value = &frame["values"]["lead"];
                assert_ne!(value["id"], json!(before), "the lost value is not restated as current");
                lead = value["id"].as_str().map(|id| (id.to_owned(), value["data"].clone()));
            }
            Some("events") => {
                for e in frame["events"].as_array().unwrap() {
                    if e["key"] == "lead" {
                        lead = Some((e["id"].as_str().unwrap().to_owned(), e["data"].clone()));
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(lead, Some((after, json!(5))), "the value from before the loss is not current any more");
}
