//! What clients see, run against every deployment: one node on the embedded
//! store, three nodes sharing one real `redis-server`, and three nodes on a
//! real 3-master Redis Cluster with replicas (publishers and subscribers
//! spread over the nodes).

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::client::{assert_ordered, Client, Closed, Format};
use support::{get_json, sse_events, Deployment};
use tokio_tungstenite::tungstenite::Message;

async fn subscribed(client: &mut Client, room: &str, last: Option<&str>) -> Value {
    client.subscribe(room, last).await;
    let frame = client.expect_type("subscribed").await;
    assert_eq!(frame["room"], room);
    frame
}

async fn fanout_in_order(d: Deployment) {
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&d.node(i).ws_url("")).await;
        assert_eq!(subscribed(&mut c, "show", None).await["resumed"], false);
        clients.push(c);
    }
    let mut published = Vec::new();
    for i in 0..150 {
        published.push(d.publish(i, "show", json!({"seq": i})).await);
    }
    for c in &mut clients {
        let (events, gaps) = c.events("show", 150).await;
        assert!(gaps.is_empty(), "no gap expected: {gaps:?}");
        let ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, published, "every subscriber gets every event, in publish order");
        assert!(events.iter().enumerate().all(|(i, (_, data))| data["seq"] == i));
        c.expect_silence(Duration::from_millis(300)).await;
    }
}

async fn resume_on_another_node_exactly_once(d: Deployment) {
    let mut first = Client::connect(&d.node(0).ws_url("")).await;
    subscribed(&mut first, "match", None).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(d.publish(i, "match", json!(i)).await);
    }
    let (seen, _) = first.events("match", 40).await;
    let resume_at = seen[19].0.clone();
    drop(first);
    for i in 40..70 {
        ids.push(d.publish(i, "match", json!(i)).await);
    }

    let mut second = Client::connect(&d.node(1).ws_url("")).await;
    assert_eq!(subscribed(&mut second, "match", Some(&resume_at)).await["resumed"], true);
    let (missed, gaps) = second.events("match", 50).await;
    assert!(gaps.is_empty());
    let got: Vec<String> = missed.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, ids[20..70].to_vec(), "exactly the events after the resume point");
    // Then live, with nothing repeated.
    let live = d.publish(2, "match", json!("live")).await;
    let (after, _) = second.events("match", 1).await;
    assert_eq!(after, vec![(live, json!("live"))]);
    second.expect_silence(Duration::from_millis(300)).await;
}

async fn resume_while_publishing_is_exact(d: Deployment) {
    // Publishing never stops while a client resumes: the seam between
    // history and live must hold no duplicate and no hole.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(d.publish(i, "seam", json!(i)).await);
    }
    let publisher = {
        let urls: Vec<String> = d.nodes.iter().map(|n| n.http("/rooms/seam/events")).collect();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ids = Vec::new();
            for i in 20..220 {
                let r = http.post(&urls[i % urls.len()]).json(&json!(i)).send().await.unwrap();
                let body: Value = r.json().await.unwrap();
                ids.push(body["id"].as_str().unwrap().to_owned());
            }
            ids
        })
    };
    let mut client = Client::connect(&d.node(1).ws_url(&format!("?room=seam&last_event_id={}", ids[4]))).await;
    assert_eq!(client.expect_type("subscribed").await["resumed"], true);
    ids.extend(publisher.await.unwrap());
    let (events, gaps) = client.events("seam", ids.len() - 5).await;
    assert!(gaps.is_empty());
    let got: Vec<String> = events.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[5..].to_vec());
    client.expect_silence(Duration::from_millis(300)).await;
}

async fn gap_after_trimming(d: Deployment) {
    let oldest = d.publish(0, "busy", json!(0)).await;
    let mut last = String::new();
    for i in 1..800 {
        last = d.publish(i, "busy", json!(i)).await;
    }
    let mut client = Client::connect(&d.node(1).ws_url("")).await;
    assert_eq!(subscribed(&mut client, "busy", Some(&oldest)).await["resumed"], false, "a gap is not a resume");
    let gap = client.expect_type("gap").await;
    assert_eq!(gap["after"], oldest.as_str());
    let mut ids = Vec::new();
    while ids.last() != Some(&last) {
        let (events, _) = client.events("busy", 1).await;
        ids.extend(events.into_iter().map(|(id, _)| id));
    }
    assert!(ids.len() >= 10 && ids.len() < 799, "kept history only: {}", ids.len());
    assert_ordered(&ids);

    let (status, body) = get_json(&d.node(2).http(&format!("/rooms/busy/events?after={oldest}&limit=5"))).await;
    assert_eq!(status, 200);
    assert_eq!(body["gap"], true);
    assert_eq!(body["events"].as_array().unwrap().len(), 5);
}

async fn from_zero_and_from_the_future(d: Deployment) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(d.publish(i, "replay", json!(i)).await);
    }
    let mut client = Client::connect(&d.node(0).ws_url("")).await;
    assert_eq!(subscribed(&mut client, "replay", Some("0")).await["resumed"], true);
    let (events, gaps) = client.events("replay", 5).await;
    assert!(gaps.is_empty());
    assert_eq!(events.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), ids);

    let (ms, _) = ids[4].split_once('-').unwrap();
    let future = format!("{}-0", ms.parse::<u64>().unwrap() + 3_600_000);
    let mut other = Client::connect(&d.node(1).ws_url("")).await;
    assert_eq!(subscribed(&mut other, "replay", Some(&future)).await["resumed"], false);
    assert_eq!(other.expect_type("gap").await["after"], future.as_str());
    // Live delivery follows the gap.
    let next = d.publish(2, "replay", json!("next")).await;
    let (events, _) = other.events("replay", 1).await;
    assert_eq!(events[0].0, next);
}

async fn idempotent_publishes_store_once_on_any_node(d: Deployment) {
    let mut sub = Client::connect(&d.node(0).ws_url("")).await;
    subscribed(&mut sub, "auction", None).await;
    let http = reqwest::Client::new();
    let post = |node: usize, key: &str, body: Value| {
        http.post(d.node(node).http("/rooms/auction/events")).header("Idempotency-Key", key).json(&body).send()
    };
    let first = post(0, "bid-1", json!({"amount": 10})).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // A retry, on another node where there is one, answers the same ID and stores nothing.
    let retry = post(2 % d.nodes.len(), "bid-1", json!({"amount": 10})).await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    // Over WebSocket too, with the same key for the same room.
    let mut publisher = Client::connect(&d.node(1 % d.nodes.len()).ws_url("")).await;
    let frame =
        json!({"type": "publish", "room": "auction", "data": {"amount": 10}, "ref": 7, "idempotency_key": "bid-1"});
    publisher.send(frame).await;
    let ack = publisher.expect_type("ack").await;
    assert_eq!((ack["id"].clone(), ack["repeated"].clone()), (first["id"].clone(), json!(true)), "{ack}");
    // The same key with another payload is refused, naming the first ID.
    let changed = post(1 % d.nodes.len(), "bid-1", json!({"amount": 11})).await.unwrap();
    assert_eq!(changed.status(), 409);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!((changed["error"].as_str(), &changed["id"]), (Some("idempotency_conflict"), &first["id"]), "{changed}");
    let frame =
        json!({"type": "publish", "room": "auction", "data": {"amount": 11}, "ref": 6, "idempotency_key": "bid-1"});
    publisher.send(frame).await;
    let error = publisher.expect_type("error").await;
    assert_eq!((error["code"].as_str(), error["ref"].as_u64()), (Some("idempotency_conflict"), Some(6)), "{error}");
    assert!(error["message"].as_str().unwrap().contains(first["id"].as_str().unwrap()), "{error}");
    let fresh =
        json!({"type": "publish", "room": "auction", "data": {"amount": 12}, "ref": 8, "idempotency_key": "bid-2"});
    publisher.send(fresh).await;
    let ack = publisher.expect_type("ack").await;
    assert!(ack.get("repeated").is_none(), "a first publish is not a repeat: {ack}");
    let second = ack["id"].as_str().unwrap().to_owned();
    // Subscribers see each bid once.
    let (events, _) = sub.events("auction", 2).await;
    assert_eq!(events.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), [first["id"].as_str().unwrap(), &second]);
    sub.expect_silence(Duration::from_millis(300)).await;
    // A bad key is refused, and harms nothing.
    let bad = post(0, "has space", json!(1)).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"], "bad_idempotency_key");
    let frame = json!({"type": "publish", "room": "auction", "data": 1, "ref": 9, "idempotency_key": ""});
    publisher.send(frame).await;
    let error = publisher.expect_type("error").await;
    assert_eq!((error["code"].as_str(), error["ref"].as_u64()), (Some("bad_idempotency_key"), Some(9)));
}

async fn json_and_msgpack_interoperate(d: Deployment) {
    let value = json!({"n": 1, "f": 2.5, "s": "é✓", "a": [1, null, true], "o": {"k": "v"}, "neg": -7});
    let mut mp_sub = Client::connect_with(&d.node(0).ws_url("?format=msgpack"), Format::MsgPack, None).await;
    let mut json_sub = Client::connect(&d.node(1).ws_url("")).await;
    subscribed(&mut mp_sub, "mixed", None).await;
    subscribed(&mut json_sub, "mixed", None).await;

    let mut json_pub = Client::connect(&d.node(2).ws_url("")).await;
    let a = json_pub.publish("mixed", value.clone(), 1).await;
    let mut mp_pub = Client::connect_with(&d.node(1).ws_url(""), Format::MsgPack, Some("roomcast.v1.msgpack")).await;
    let b = mp_pub.publish("mixed", value.clone(), 2).await;

    for sub in [&mut mp_sub, &mut json_sub] {
        let (events, _) = sub.events("mixed", 2).await;
        assert_eq!(events, vec![(a.clone(), value.clone()), (b.clone(), value.clone())]);
    }
    // HTTP MessagePack bodies too.
    let body = rmp_serde::to_vec_named(&value).unwrap();
    let response = reqwest::Client::new()
        .post(d.node(0).http("/rooms/mixed/events"))
        .header("content-type", "application/msgpack")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let (events, _) = mp_sub.events("mixed", 1).await;
    assert_eq!(events[0].1, value);
}

/// Publishes `n` events whose JSON payload is `size` bytes, over HTTP, a few
/// at a time; returns their IDs in publish order.
async fn publish_sized(d: &Deployment, room: &str, sizes: &[usize]) -> Vec<(String, Value)> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        // A JSON string of exactly `size` bytes, quotes included.
        let value = json!(format!("{i:06}{}", "z".repeat(size.saturating_sub(8))));
        let url = d.node(i % 3).http(&format!("/rooms/{room}/events"));
        let response = http.post(url).json(&value).send().await.unwrap();
        assert_eq!(response.status(), 201, "a {size}-byte event is accepted");
        let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        out.push((id, value));
    }
    out
}

/// Events of every allowed size, from a few bytes to just under
/// `--max-message-bytes`, reach WebSocket (JSON and MessagePack), SSE and
/// history readers whole and in order, live and from history.
async fn events_of_every_size_arrive_whole(d: Deployment) {
    let max = 65_536;
    let sizes = [8, 100, 1_024, 8_192, 16_384, 40_000, max - 16, max];
    let mut live_json = Client::connect(&d.node(0).ws_url("?room=sizes")).await;
    live_json.expect_type("subscribed").await;
    let mut live_pack = Client::connect_with(&d.node(1).ws_url("?room=sizes"), Format::MsgPack, None).await;
    live_pack.expect_type("subscribed").await;
    let published = publish_sized(&d, "sizes", &sizes).await;
    for client in [&mut live_json, &mut live_pack] {
        let (events, gaps) = client.events("sizes", sizes.len()).await;
        assert!(gaps.is_empty());
        assert_eq!(events, published, "live, each event whole");
    }
    let mut from_zero =
        Client::connect_with(&d.node(2).ws_url("?room=sizes&last_event_id=0"), Format::MsgPack, None).await;
    from_zero.expect_type("subscribed").await;
    assert_eq!(from_zero.events("sizes", sizes.len()).await.0, published, "from history, whole");
    let response = reqwest::get(d.node(1).http("/rooms/sizes/sse?last_event_id=0")).await.unwrap();
    assert_eq!(sse_events(response, sizes.len()).await.0, published, "over SSE, whole");
    let (status, body) = get_json(&d.node(0).http("/rooms/sizes/events?limit=100")).await;
    assert_eq!(status, 200);
    let history: Vec<(String, Value)> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e["data"].clone()))
        .collect();
    assert!(!history.is_empty() && published.starts_with(&history), "history pages hold whole events in order");
}

/// A backlog of megabytes of large events: a client subscribing from `0`
/// gets every event once and in order, at its own pace, never closed for
/// being behind (500 events of 8 KB were refused with 1013, every time).
async fn a_backlog_of_large_events_is_delivered_at_the_clients_pace(d: Deployment) {
    let published = publish_sized(&d, "backlog", &[8_192; 500]).await;
    let ids: Vec<String> = published.iter().map(|(id, _)| id.clone()).collect();
    for (node, format) in [(0, Format::Json), (1, Format::MsgPack)] {
        let url = d.node(node).ws_url("?room=backlog&last_event_id=0");
        let mut client = Client::connect_with(&url, format, None).await;
        client.expect_type("subscribed").await;
        let mut got = Vec::new();
        while got.len() < ids.len() {
            match client.next().await {
                Ok(frame) if frame["type"] == "events" => {
                    got.extend(
                        frame["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()),
                    );
                    // A slow reader: a few milliseconds per frame.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                Ok(frame) => assert_ne!(frame["type"], "gap", "{frame}"),
                Err(closed) => panic!("closed after {} of {} events: {closed:?}", got.len(), ids.len()),
            }
        }
        assert_eq!(got, ids, "{format:?}: every event once, in order");
    }
    let response = reqwest::get(d.node(2).http("/rooms/backlog/sse?last_event_id=0")).await.unwrap();
    let (events, gaps) = sse_events(response, ids.len()).await;
    assert!(gaps.is_empty());
    assert_eq!(events.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), ids);
}

async fn sse_resumes_from_last_event_id(d: Deployment) {
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(d.publish(i, "feed", json!({"i": i})).await);
    }
    let url = d.node(1).http("/rooms/feed/sse");
    let response = reqwest::Client::new().get(&url).header("Last-Event-ID", &ids[2]).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let publisher = {
        let url = d.node(2).http("/rooms/feed/events");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = reqwest::Client::new().post(url).json(&json!({"i": 6})).send().await.unwrap();
            r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        })
    };
    let (events, gaps) = sse_events(response, 4).await;
    ids.push(publisher.await.unwrap());
    assert!(gaps.is_empty());
    assert_eq!(events.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids[3..7].to_vec());
    assert_eq!(events[3].1, json!({"i": 6}));

    // ?last_event_id= works as well, and a lost position is an `event: gap`.
    let response = reqwest::get(format!("{url}?last_event_id=1-0")).await.unwrap();
    let (events, gaps) = sse_events(response, 1).await;
    assert_eq!(gaps, vec!["1-0".to_owned()]);
    assert_eq!(events[0].0, ids[0]);

    let bad = reqwest::get(format!("{url}?last_event_id=nope")).await.unwrap();
    assert_eq!(bad.status(), 400);
}

async fn bad_input_gets_errors_and_harms_nobody(d: Deployment) {
    let mut watcher = Client::connect(&d.node(0).ws_url("?room=calm")).await;
    watcher.expect_type("subscribed").await;
    let mut bad = Client::connect(&d.node(1).ws_url("")).await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "bad_frame"),
        (Message::Text("[1,2,3]".into()), "bad_frame"),
        (Message::Text(r#"{"type":"dance"}"#.into()), "unknown_type"),
        (Message::Text(r#"{"type":"subscribe","room":"no spaces"}"#.into()), "bad_room"),
        (Message::Text(r#"{"type":"subscribe","room":""}"#.into()), "bad_room"),
        (Message::Text(r#"{"type":"subscribe","room":"ok","last_event_id":"abc"}"#.into()), "bad_event_id"),
        (Message::Text(r#"{"type":"subscribe","room":7}"#.into()), "bad_frame"),
        (Message::Text(r#"{"type":"publish","room":"ok"}"#.into()), "bad_frame"),
        (Message::Text(r#"{"type":"unsubscribe","room":"never"}"#.into()), "not_subscribed"),
        (Message::Binary(vec![0xc1, 0x00, 0xff].into()), "unsupported_frame"),
        (
            Message::Text(
                format!(r#"{{"type":"publish","room":"ok","data":{}}}"#, "[".repeat(300) + &"]".repeat(300)).into(),
            ),
            "bad_frame",
        ),
    ];
    for (i, (msg, code)) in cases.into_iter().enumerate() {
        bad.send_raw(msg).await;
        let frame = bad.expect_type("error").await;
        assert_eq!(frame["code"], code, "case {i}: {frame}");
        assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()));
        d.publish(i, "calm", json!(i)).await;
    }
    bad.send(json!({"type": "publish", "room": "bad room", "data": 1, "ref": 77})).await;
    let frame = bad.expect_type("error").await;
    assert_eq!((frame["code"].as_str(), frame["ref"].as_u64()), (Some("bad_room"), Some(77)));
    subscribed(&mut bad, "twice", None).await;
    bad.subscribe("twice", None).await;
    assert_eq!(bad.expect_type("error").await["code"], "already_subscribed");
    // The misbehaving connection still works, and the bystander got everything.
    let acked = bad.publish("calm", json!("still here"), 5).await;
    assert!(acked.contains('-'), "ack carries an event id: {acked}");
    let (events, gaps) = watcher.events("calm", 12).await;
    assert!(gaps.is_empty());
    assert!(events.iter().take(11).enumerate().all(|(i, (_, v))| *v == json!(i)));
    assert_eq!(events[11].1, json!("still here"));

    // Oversized messages close the connection with 1009 and a reason.
    let mut huge = Client::connect(&d.node(0).ws_url("")).await;
    huge.send_raw(Message::Text("x".repeat(200_000).into())).await;
    match huge.closed().await {
        Closed::Code(code, reason) => assert_eq!((code, reason.is_empty()), (1009, false)),
        other => panic!("expected close 1009, got {other:?}"),
    }
    let (status, body) = get_json(&d.node(0).http("/rooms/bad%20room")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_room")));
    let too_big = reqwest::Client::new()
        .post(d.node(0).http("/rooms/calm/events"))
        .json(&json!("y".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let broken = reqwest::Client::new().post(d.node(0).http("/rooms/calm/events")).body("{oops").send().await.unwrap();
    assert_eq!(broken.status(), 400);
}

async fn unsubscribe_stops_delivery(d: Deployment) {
    let mut c = Client::connect(&d.node(0).ws_url("")).await;
    subscribed(&mut c, "a", None).await;
    subscribed(&mut c, "b", None).await;
    c.send(json!({"type": "unsubscribe", "room": "a"})).await;
    assert_eq!(c.expect_type("unsubscribed").await["room"], "a");
    d.publish(1, "a", json!("not for you")).await;
    let b = d.publish(2, "b", json!("for you")).await;
    let frame = c.expect_type("events").await;
    assert_eq!((frame["room"].as_str(), frame["events"][0]["id"].as_str()), (Some("b"), Some(b.as_str())));
    c.expect_silence(Duration::from_millis(300)).await;
}

async fn room_info_and_history(d: Deployment) {
    let (status, body) = get_json(&d.node(0).http("/rooms/info")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"room": "info", "last_event_id": null, "audience": 0}));
    let mut viewers = Vec::new();
    for i in 0..4 {
        let mut c = Client::connect(&d.node(i).ws_url("?room=info")).await;
        c.expect_type("subscribed").await;
        viewers.push(c);
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(d.publish(i, "info", json!(i)).await);
    }
    let url = d.node(1).http("/rooms/info");
    support::eventually("audience to count every node's viewers", || {
        let url = url.clone();
        let last = ids[2].clone();
        async move {
            let (_, body) = get_json(&url).await;
            (body["audience"] == 4 && body["last_event_id"] == last.as_str()).then_some(())
        }
    })
    .await;
    let (_, page) = get_json(&d.node(2).http(&format!("/rooms/info/events?after={}", ids[0]))).await;
    let got: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, vec![ids[1].as_str(), ids[2].as_str()]);
    assert_eq!(page["gap"], false);
    let (_, all) = get_json(&d.node(0).http("/rooms/info/events?limit=2")).await;
    assert_eq!(all["events"][0]["data"], 0);
    assert_eq!(all["events"].as_array().unwrap().len(), 2);
    let (status, _) = get_json(&d.node(0).http("/rooms/info/events?limit=0")).await;
    assert_eq!(status, 400);
    drop(viewers);
    support::eventually("audience to drop when viewers leave", || {
        let url = url.clone();
        async move { (get_json(&url).await.1["audience"] == 0).then_some(()) }
    })
    .await;
}

async fn sigterm_closes_with_1012_and_exits_0(mut d: Deployment) {
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&d.node(0).ws_url("?room=bye")).await;
        c.expect_type("subscribed").await;
        clients.push(c);
    }
    d.nodes[0].sigterm();
    for c in &mut clients {
        match c.closed().await {
            Closed::Code(code, reason) => {
                assert_eq!(code, 1012);
                assert!(reason.contains("last event id"), "{reason}");
            }
            other => panic!("expected close 1012, got {other:?}"),
        }
    }
    let status = d.nodes[0].wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "logs:\n{}", d.nodes[0].logs());
}

/// The next audience frame for `room`, skipping other frames.
async fn audience(client: &mut Client, room: &str) -> u64 {
    loop {
        let frame = client.expect_type("audience").await;
        if frame["room"] == room {
            return frame["count"].as_u64().unwrap();
        }
    }
}

/// Reads audience frames until one says `count` (counts may pass through
/// in-between values while viewers come and go).
async fn audience_reaches(client: &mut Client, room: &str, count: u64) {
    tokio::time::timeout(Duration::from_secs(10), async { while audience(client, room).await != count {} })
        .await
        .unwrap_or_else(|_| panic!("audience of {room} never reached {count}"));
}

async fn audience_is_pushed_to_those_who_ask(d: Deployment) {
    let mut watcher = Client::connect(&d.node(0).ws_url("?room=stage&audience=1")).await;
    watcher.expect_type("subscribed").await;
    let mut other_watcher = Client::connect(&d.node(1).ws_url("")).await;
    other_watcher.send(json!({"type": "subscribe", "room": "stage", "audience": true})).await;
    other_watcher.expect_type("subscribed").await;
    let mut viewers = Vec::new();
    for i in 0..6 {
        let mut viewer = Client::connect(&d.node(i).ws_url("")).await;
        subscribed(&mut viewer, "stage", None).await;
        viewers.push(viewer);
    }
    audience_reaches(&mut watcher, "stage", 8).await;
    audience_reaches(&mut other_watcher, "stage", 8).await;
    // A late watcher hears the count soon after subscribing.
    let mut late = Client::connect(&d.node(2).ws_url("?room=stage&audience=1")).await;
    late.expect_type("subscribed").await;
    audience_reaches(&mut late, "stage", 9).await;
    drop(late);
    for viewer in viewers.drain(..3) {
        drop(viewer);
    }
    audience_reaches(&mut watcher, "stage", 5).await;
    audience_reaches(&mut other_watcher, "stage", 5).await;
    // Viewers that did not ask never get audience frames, and nothing else
    // of theirs changed.
    for viewer in &mut viewers {
        viewer.expect_silence(Duration::from_millis(2500)).await;
    }
    let (_, info) = get_json(&d.node(0).http("/rooms/stage")).await;
    assert_eq!(info["audience"], 5);
}

async fn reactions_are_summed_across_nodes(d: Deployment) {
    let mut watchers = Vec::new();
    for i in 0..2 {
        let mut c = Client::connect(&d.node(i).ws_url("?room=party")).await;
        c.expect_type("subscribed").await;
        watchers.push(c);
    }
    let mut reactors = Vec::new();
    for i in 0..40 {
        let mut c = Client::connect(&d.node(i).ws_url("?room=party")).await;
        c.expect_type("subscribed").await;
        reactors.push(c);
    }
    let mut expected: std::collections::BTreeMap<String, u64> = Default::default();
    for (i, c) in reactors.iter_mut().enumerate() {
        let key = ["👏", "🔥", "clap"][i % 3];
        for _ in 0..(1 + i % 4) {
            c.send(json!({"type": "react", "room": "party", "key": key})).await;
            *expected.entry(key.to_owned()).or_default() += 1;
        }
    }
    let total: u64 = expected.values().sum();
    for watcher in &mut watchers {
        let mut summed: std::collections::BTreeMap<String, u64> = Default::default();
        let mut frames = 0;
        tokio::time::timeout(Duration::from_secs(10), async {
            while summed.values().sum::<u64>() < total {
                let frame = watcher.expect_type("reactions").await;
                assert_eq!(frame["room"], "party");
                frames += 1;
                for (key, n) in frame["counts"].as_object().unwrap() {
                    *summed.entry(key.clone()).or_default() += n.as_u64().unwrap();
                }
            }
        })
        .await
        .expect("every reaction counted");
        assert_eq!(summed, expected, "exact sums");
        assert!(frames <= 8, "{total} reactions arrived as {frames} frames, not one each");
        watcher.expect_silence(Duration::from_millis(700)).await;
    }
}

async fn bad_reactions_get_errors_and_harm_nobody(d: Deployment) {
    let mut bystander = Client::connect(&d.node(1).ws_url("?room=calm")).await;
    bystander.expect_type("subscribed").await;
    let mut c = Client::connect(&d.node(0).ws_url("?room=calm")).await;
    c.expect_type("subscribed").await;
    for (frame, code) in [
        (json!({"type": "react", "room": "calm"}), "bad_frame"),
        (json!({"type": "react", "room": "calm", "key": "k".repeat(33)}), "bad_reaction"),
        (json!({"type": "react", "room": "calm", "key": "two words"}), "bad_reaction"),
        // Invisible format characters would make keys that look alike.
        (json!({"type": "react", "room": "calm", "key": "\u{200b}"}), "bad_reaction"),
        (json!({"type": "react", "room": "calm", "key": "\u{202e}fire"}), "bad_reaction"),
        (json!({"type": "react", "room": "calm", "key": 7}), "bad_frame"),
        (json!({"type": "react", "room": "elsewhere", "key": "clap"}), "not_subscribed"),
        (json!({"type": "react", "room": "bad room", "key": "clap"}), "bad_room"),
    ] {
        c.send(frame.clone()).await;
        assert_eq!(c.expect_type("error").await["code"], code, "{frame}");
    }
    // Past the burst, reactions are dropped with an error; the rest count.
    for _ in 0..25 {
        c.send(json!({"type": "react", "room": "calm", "key": "clap"})).await;
    }
    let mut counted = 0;
    let mut refused = 0;
    while counted + refused < 25 {
        let frame = c.next().await.unwrap();
        match frame["type"].as_str() {
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited");
                refused += 1;
            }
            Some("reactions") => counted += frame["counts"]["clap"].as_u64().unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((20..=22).contains(&counted), "a burst of 20 counts ({counted} did)");
    // The bystander saw only the reactions that counted, and the room is fine.
    let mut seen = 0;
    while seen < counted {
        let frame = bystander.expect_type("reactions").await;
        seen += frame["counts"]["clap"].as_u64().unwrap();
    }
    assert_eq!(seen, counted);
    let id = d.publish(0, "calm", json!("still fine")).await;
    let (events, _) = bystander.events("calm", 1).await;
    assert_eq!(events[0].0, id);
}

async fn one_idempotency_key_on_two_nodes_at_once_stores_one_event(d: Deployment) {
    let http = reqwest::Client::new();
    for round in 0..10 {
        let key = format!("race-{round}");
        let post = |node: usize| {
            http.post(d.node(node).http("/rooms/race/events"))
                .header("Idempotency-Key", key.clone())
                .json(&round)
                .send()
        };
        let (a, b) = tokio::join!(post(0), post(1));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 201], "one stored, one repeat");
        assert_eq!(a.json::<Value>().await.unwrap(), b.json::<Value>().await.unwrap(), "the same id");
    }
    let (_, history) = get_json(&d.node(0).http("/rooms/race/events?after=0")).await;
    assert_eq!(history["events"].as_array().unwrap().len(), 10);
}

/// Publishes `data` to `room` on node `node`, as state key `key` when given;
/// returns the event ID.
async fn publish_keyed(d: &Deployment, node: usize, room: &str, key: &str, data: Value) -> String {
    let url = d.node(node).http(&format!("/rooms/{room}/events?key={key}"));
    let response = reqwest::Client::new().post(url).json(&data).send().await.unwrap();
    assert_eq!(response.status(), 201, "a keyed publish is stored");
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

/// A late viewer sees the room's last events, then live, each once; fewer
/// kept is all of them with no gap; a position given beside a rewind wins.
async fn rewind_then_live_once_in_order(d: Deployment) {
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(d.publish(i, "stage", json!(i)).await);
    }
    let mut late = Client::connect(&d.node(1).ws_url("")).await;
    late.send(json!({"type": "subscribe", "room": "stage", "rewind": 10})).await;
    let subscribed = late.expect_type("subscribed").await;
    assert_eq!(subscribed["resumed"], false);
    let (rewound, gaps) = late.events("stage", 10).await;
    assert!(gaps.is_empty());
    assert_eq!(
        rewound.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids[20..].to_vec(),
        "the last 10, oldest first"
    );
    let live = d.publish(0, "stage", json!("live")).await;
    assert_eq!(late.events("stage", 1).await.0, vec![(live.clone(), json!("live"))]);
    late.expect_silence(Duration::from_millis(200)).await;
    ids.push(live);
    // More than is kept: everything, no gap (and the query form, on another node).
    let mut all = Client::connect(&d.node(2).ws_url("?room=stage&rewind=1000")).await;
    all.expect_type("subscribed").await;
    let (got, gaps) = all.events("stage", 31).await;
    assert!(gaps.is_empty());
    assert_eq!(got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids);
    all.expect_silence(Duration::from_millis(200)).await;
    // A resume position wins over a rewind.
    let mut resumer = Client::connect(&d.node(0).ws_url("")).await;
    resumer.send(json!({"type": "subscribe", "room": "stage", "rewind": 3, "last_event_id": ids[25]})).await;
    assert_eq!(resumer.expect_type("subscribed").await["resumed"], true);
    let (got, _) = resumer.events("stage", 5).await;
    assert_eq!(got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids[26..].to_vec());
    // A room with nothing kept rewinds to nothing and goes live.
    let mut empty = Client::connect(&d.node(1).ws_url("?room=quiet&rewind=50")).await;
    empty.expect_type("subscribed").await;
    let first = d.publish(2, "quiet", json!("first")).await;
    assert_eq!(empty.events("quiet", 1).await.0, vec![(first, json!("first"))]);
    // SSE rewinds too.
    let response = reqwest::get(d.node(2).http("/rooms/stage/sse?rewind=4")).await.unwrap();
    let (sse, _) = sse_events(response, 4).await;
    assert_eq!(sse.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids[27..].to_vec());
    // Out of range.
    for bad in [json!(0), json!(1001), json!(-1), json!("5")] {
        late.send(json!({"type": "subscribe", "room": "other", "rewind": bad})).await;
        assert_eq!(late.expect_type("error").await["code"], "bad_frame", "rewind {bad}");
    }
}

/// `GET .../events?before=`: the newest N, then older pages, with `more`.
async fn history_backwards(d: Deployment) {
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(d.publish(i, "scroll", json!(i)).await);
    }
    let page = |query: String| {
        let url = d.node(1).http(&format!("/rooms/scroll/events?{query}"));
        async move { get_json(&url).await }
    };
    let ids_of = |body: &Value| -> Vec<String> {
        body["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, newest) = page("before=latest&limit=10".into()).await;
    assert_eq!(status, 200);
    assert_eq!(ids_of(&newest), ids[15..].to_vec());
    assert_eq!(newest["more"], true);
    assert_eq!(newest["events"][9]["data"], json!(24));
    let (_, older) = page(format!("before={}&limit=10", ids[15])).await;
    assert_eq!(ids_of(&older), ids[5..15].to_vec());
    let (_, oldest) = page(format!("before={}&limit=10", ids[5])).await;
    assert_eq!(ids_of(&oldest), ids[..5].to_vec());
    assert_eq!(oldest["more"], false);
    // Forward reads are unchanged, and say `more` too.
    let (_, forward) = page(format!("after={}&limit=5", ids[9])).await;
    assert_eq!(ids_of(&forward), ids[10..15].to_vec());
    assert_eq!((forward["gap"].clone(), forward["more"].clone()), (json!(false), json!(true)));
    for bad in ["before=nonsense", &format!("before=latest&after={}", ids[3]), "before=latest&limit=0"] {
        let (status, body) = page(bad.to_owned()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

/// Keyed events become the room's state; a joiner's state frame and the
/// live events after it agree exactly, while publishing goes on.
async fn state_is_consistent_with_live_delivery(d: Deployment) {
    let mut published: Vec<(String, Option<String>, Value)> = Vec::new();
    for i in 0..5 {
        published.push((publish_keyed(&d, i, "match", "score", json!(i)).await, Some("score".into()), json!(i)));
    }
    // A watcher paces the joins by the events it sees (no sleeps).
    let mut watcher = Client::connect(&d.node(0).ws_url("?room=match")).await;
    watcher.expect_type("subscribed").await;
    let publisher = {
        let d_nodes: Vec<String> = (0..3).map(|i| d.node(i).http("/rooms/match/events")).collect();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut out = Vec::new();
            for i in 5..120u64 {
                let keyed = i % 3 != 0;
                let key = if i % 2 == 0 { "score" } else { "clock" };
                let url = if keyed {
                    format!("{}?key={key}", d_nodes[i as usize % 3])
                } else {
                    d_nodes[i as usize % 3].clone()
                };
                let response = http.post(url).json(&json!(i)).send().await.unwrap();
                assert_eq!(response.status(), 201);
                let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                out.push((id, keyed.then(|| key.to_owned()), json!(i)));
            }
            out
        })
    };
    // Viewers join while the publisher runs, on every node.
    let mut viewers = Vec::new();
    let mut seen = 0;
    for i in 0..6 {
        let mut c = Client::connect(&d.node(i).ws_url("")).await;
        c.send(json!({"type": "subscribe", "room": "match", "state": true})).await;
        let subscribed = c.expect_type("subscribed").await;
        let state = c.expect_type("state").await;
        assert_eq!(
            state["last_event_id"], subscribed["last_event_id"],
            "the subscription starts where the state stands"
        );
        viewers.push((c, state));
        // A frame may carry several events: count what was seen.
        let target = 15 * (i + 1);
        if seen < target {
            seen += watcher.events("match", target - seen).await.0.len();
        }
    }
    published.extend(publisher.await.unwrap());
    let end = d.publish(0, "match", json!("end")).await;
    published.push((end.clone(), None, json!("end")));
    let final_values = |upto: usize| {
        let mut values = std::collections::BTreeMap::new();
        for (id, key, data) in &published[..upto] {
            if let Some(key) = key {
                values.insert(key.clone(), json!({"id": id, "data": data}));
            }
        }
        values
    };
    for (mut c, state) in viewers {
        let position = state["last_event_id"].as_str().unwrap().to_owned();
        let at = published.iter().position(|(id, _, _)| *id == position).map_or(0, |i| i + 1);
        // The state holds exactly the values of the events up to its position...
        let values: std::collections::BTreeMap<String, Value> =
            state["values"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(values, final_values(at), "state as of {position}");
        // ... and live delivery continues with the very next event.
        let expected: Vec<String> = published[at..].iter().map(|(id, _, _)| id.clone()).collect();
        let (events, gaps) = c.events("match", expected.len()).await;
        assert!(gaps.is_empty());
        assert_eq!(events.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), expected);
        c.expect_silence(Duration::from_millis(100)).await;
    }
    // Keyed events carry their key; the state endpoint agrees.
    let (status, body) = get_json(&d.node(2).http("/rooms/match/state")).await;
    assert_eq!(status, 200);
    assert_eq!(body["last_event_id"], json!(end));
    let values: std::collections::BTreeMap<String, Value> =
        body["values"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(values, final_values(published.len()));
    let mut keyed = Client::connect(&d.node(0).ws_url("?room=match")).await;
    keyed.expect_type("subscribed").await;
    keyed.send(json!({"type": "publish", "room": "match", "data": 7, "key": "score", "ref": 1})).await;
    let ack = keyed.expect_type("ack").await;
    let frame = keyed.expect_type("events").await;
    assert_eq!(frame["events"][0], json!({"id": ack["id"], "key": "score", "data": 7}));
}

/// A resume on another node with the state: the current state first, then
/// exactly the missed events; state and rewind together; the key limit.
async fn state_with_resume_rewind_and_limits(d: Deployment) {
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(publish_keyed(&d, i, "bids", "lead", json!({"amount": i})).await);
    }
    let mut resumer = Client::connect(&d.node(1).ws_url("")).await;
    resumer.send(json!({"type": "subscribe", "room": "bids", "state": true, "last_event_id": ids[6]})).await;
    assert_eq!(resumer.expect_type("subscribed").await["resumed"], true);
    let state = resumer.expect_type("state").await;
    assert_eq!(state["values"]["lead"], json!({"id": ids[9], "data": {"amount": 9}}));
    assert_eq!(
        resumer.events("bids", 3).await.0.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids[7..].to_vec()
    );
    let mut both = Client::connect(&d.node(2).ws_url("?room=bids&rewind=2&state=1")).await;
    both.expect_type("subscribed").await;
    assert_eq!(both.expect_type("state").await["last_event_id"], json!(ids[9]));
    assert_eq!(both.events("bids", 2).await.0.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids[8..].to_vec());
    // SSE carries the state as its own event.
    let response = reqwest::get(d.node(0).http("/rooms/bids/sse?state=1")).await.unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("event: state") || !text.ends_with("\n\n") {
        use futures::StreamExt;
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next()).await.unwrap().unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains(&format!(r#""lead":{{"id":"{}","data":{{"amount":9}}}}"#, ids[9])), "{text}");
    // Bad keys, and at most --max-state-keys (3 here) keys a room.
    let http = reqwest::Client::new();
    let post = |key: &str| http.post(d.node(0).http(&format!("/rooms/limits/events?key={key}"))).json(&json!(1)).send();
    let bad = post("two%20words").await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"], "bad_key");
    for key in ["a", "b", "c", "a"] {
        assert_eq!(post(key).await.unwrap().status(), 201);
    }
    let refused = post("d").await.unwrap();
    assert_eq!(refused.status(), 409);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"], "too_many_keys");
    resumer.send(json!({"type": "publish", "room": "limits", "data": 1, "key": "e", "ref": 5})).await;
    let error = resumer.expect_type("error").await;
    assert_eq!((error["code"].clone(), error["ref"].clone()), (json!("too_many_keys"), json!(5)));
    resumer.send(json!({"type": "publish", "room": "limits", "data": 1, "key": "", "ref": 6})).await;
    assert_eq!(resumer.expect_type("error").await["code"], "bad_key");
}

/// A rewind of events near the size limit is paged in bounded frames.
async fn a_rewind_of_large_events_is_paged(d: Deployment) {
    let published = publish_sized(&d, "big", &[60_000; 120]).await;
    let mut c = Client::connect(&d.node(1).ws_url("?room=big&rewind=100")).await;
    c.expect_type("subscribed").await;
    let mut got = Vec::new();
    while got.len() < 100 {
        let frame = c.next().await.unwrap();
        if frame["type"] == "events" {
            let events = frame["events"].as_array().unwrap();
            assert_eq!(events.len(), 1, "one 60 KB event a frame");
            got.push((events[0]["id"].as_str().unwrap().to_owned(), events[0]["data"].clone()));
        }
    }
    assert_eq!(got, published[20..].to_vec());
}

macro_rules! conformance {
    ($name:ident, $deployment:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn fanout_in_order() {
                super::fanout_in_order($deployment(&[])).await
            }
            #[tokio::test]
            async fn resume_on_another_node_exactly_once() {
                super::resume_on_another_node_exactly_once($deployment(&[])).await
            }
            #[tokio::test]
            async fn resume_while_publishing_is_exact() {
                super::resume_while_publishing_is_exact($deployment(&[])).await
            }
            #[tokio::test]
            async fn gap_after_trimming() {
                super::gap_after_trimming($deployment(&["--history", "10"])).await
            }
            #[tokio::test]
            async fn from_zero_and_from_the_future() {
                super::from_zero_and_from_the_future($deployment(&[])).await
            }
            #[tokio::test]
            async fn idempotent_publishes_store_once_on_any_node() {
                super::idempotent_publishes_store_once_on_any_node($deployment(&[])).await
            }
            #[tokio::test]
            async fn json_and_msgpack_interoperate() {
                super::json_and_msgpack_interoperate($deployment(&[])).await
            }
            #[tokio::test]
            async fn sse_resumes_from_last_event_id() {
                super::sse_resumes_from_last_event_id($deployment(&[])).await
            }
            #[tokio::test]
            async fn bad_input_gets_errors_and_harms_nobody() {
                super::bad_input_gets_errors_and_harms_nobody($deployment(&[])).await
            }
            #[tokio::test]
            async fn unsubscribe_stops_delivery() {
                super::unsubscribe_stops_delivery($deployment(&[])).await
            }
            #[tokio::test]
            async fn room_info_and_history() {
                super::room_info_and_history($deployment(&[])).await
            }
            #[tokio::test]
            async fn audience_is_pushed_to_those_who_ask() {
                super::audience_is_pushed_to_those_who_ask($deployment(&[])).await
            }
            #[tokio::test]
            async fn reactions_are_summed_across_nodes() {
                super::reactions_are_summed_across_nodes($deployment(&[])).await
            }
            #[tokio::test]
            async fn bad_reactions_get_errors_and_harm_nobody() {
                super::bad_reactions_get_errors_and_harm_nobody($deployment(&[])).await
            }
            #[tokio::test]
            async fn one_idempotency_key_on_two_nodes_at_once_stores_one_event() {
                super::one_idempotency_key_on_two_nodes_at_once_stores_one_event($deployment(&[])).await
            }
            #[tokio::test]
            async fn events_of_every_size_arrive_whole() {
                super::events_of_every_size_arrive_whole($deployment(&[])).await
            }
            #[tokio::test]
            async fn a_backlog_of_large_events_is_delivered_at_the_clients_pace() {
                super::a_backlog_of_large_events_is_delivered_at_the_clients_pace($deployment(&[])).await
            }
            #[tokio::test]
            async fn rewind_then_live_once_in_order() {
                super::rewind_then_live_once_in_order($deployment(&[])).await
            }
            #[tokio::test]
            async fn history_backwards() {
                super::history_backwards($deployment(&[])).await
            }
            #[tokio::test]
            async fn state_is_consistent_with_live_delivery() {
                super::state_is_consistent_with_live_delivery($deployment(&[])).await
            }
            #[tokio::test]
            async fn state_with_resume_rewind_and_limits() {
                super::state_with_resume_rewind_and_limits($deployment(&["--max-state-keys", "3"])).await
            }
            #[tokio::test]
            async fn a_rewind_of_large_events_is_paged() {
                super::a_rewind_of_large_events_is_paged($deployment(&[])).await
            }
            #[tokio::test]
            async fn sigterm_closes_with_1012_and_exits_0() {
                super::sigterm_closes_with_1012_and_exits_0($deployment(&[])).await
            }
        }
    };
}

conformance!(memory, Deployment::memory);
conformance!(redis_three_nodes, |extra| Deployment::redis(3, extra));
conformance!(cluster_three_nodes, |extra| Deployment::cluster(3, extra));
