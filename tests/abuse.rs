//! What one hostile client, or a store out of memory, can do to a node: each
//! test holds a node to serving everybody else, with clear closes and codes.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::client::{Client, Closed};
use support::{eventually, publish, Node, Redis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "publisher-key-0123456789";

/// Whether the node closed `socket`: a read ends (EOF or reset) within `wait`.
async fn closed_within(socket: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline.into(), socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (e.g. 408) may come before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn connections_that_never_finish_a_request_are_closed_and_streams_are_not() {
    let node = Node::memory(&["--header-timeout", "1"]);
    let mut ws = Client::connect(&node.ws_url("?room=r")).await;
    ws.expect_type("subscribed").await;
    let sse = reqwest::get(node.http("/rooms/r/sse")).await.unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = sse.bytes_stream();

    let mut silent = Vec::new();
    let mut slowloris = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(node.addr).await.unwrap());
        let mut slow = TcpStream::connect(node.addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slowloris.push(slow);
    }
    // The slowloris clients keep sending a header line now and then, for
    // well past the timeout; the node must not wait for the blank line.
    for _ in 0..6 {
        for slow in &mut slowloris {
            let _ = slow.write_all(b"X-Slow: 1\r\n").await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for (i, socket) in silent.iter_mut().chain(slowloris.iter_mut()).enumerate() {
        assert!(closed_within(socket, Duration::from_secs(10)).await, "connection {i} is still open");
    }

    // Streams that have long finished their request are not cut off.
    let id = publish(&node, "r", json!("still here")).await;
    let (events, _) = ws.events("r", 1).await;
    assert_eq!(events[0].0, id);
    let mut text = String::new();
    while !text.contains(&id) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.next()).await.expect("sse event").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
}

#[tokio::test]
async fn connections_without_a_request_are_bounded_and_the_oldest_go_first() {
    let node = Node::memory(&["--header-timeout", "60", "--max-pending-connections", "50"]);
    let mut sockets = Vec::new();
    for _ in 0..200 {
        sockets.push(TcpStream::connect(node.addr).await.unwrap());
    }
    // Each socket is accepted in order; the 150 oldest are shed.
    for (i, socket) in sockets.iter_mut().enumerate().take(150) {
        assert!(closed_within(socket, Duration::from_secs(10)).await, "old idle connection {i} still open");
    }
    for (i, socket) in sockets.iter_mut().enumerate().skip(150) {
        assert!(!closed_within(socket, Duration::from_millis(50)).await, "newer idle connection {i} was shed");
    }
    // Real clients still get in, and a connection that sent its request is
    // never shed however many idle ones follow.
    let mut ws = Client::connect(&node.ws_url("?room=r")).await;
    ws.expect_type("subscribed").await;
    for _ in 0..100 {
        sockets.push(TcpStream::connect(node.addr).await.unwrap());
    }
    let id = publish(&node, "r", json!(1)).await;
    assert_eq!(ws.events("r", 1).await.0[0].0, id);
}

#[tokio::test]
async fn a_node_out_of_descriptors_keeps_serving_and_says_so_once() {
    let node = Node::start_with_fd_limit(None, &["--header-timeout", "60"], 256);
    // One client takes every descriptor the node has, and more.
    let mut hog = Vec::new();
    for _ in 0..400 {
        hog.push(TcpStream::connect(node.addr).await.unwrap());
    }
    let started = Instant::now();
    let mut ws = tokio::time::timeout(Duration::from_secs(15), Client::connect(&node.ws_url("?room=r")))
        .await
        .expect("a legitimate WebSocket connects while the node is out of descriptors");
    ws.expect_type("subscribed").await;
    let id = tokio::time::timeout(Duration::from_secs(15), publish(&node, "r", json!("through")))
        .await
        .expect("an HTTP publish gets through too");
    assert_eq!(ws.events("r", 1).await.0[0].0, id);
    assert!(started.elapsed() < Duration::from_secs(30));
    for _ in 0..100 {
        hog.push(TcpStream::connect(node.addr).await.unwrap());
    }
    publish(&node, "r", json!("again")).await;
    let warnings = node.logs().lines().filter(|l| l.contains("out of file descriptors")).count();
    assert_eq!(warnings, 1, "the shortage is logged once, not per attempt:\n{}", node.logs());
}

#[tokio::test]
async fn a_ping_flood_is_closed_and_memory_stays_bounded() {
    let node = Node::memory(&[]);
    let before = node.rss_kib();
    let mut flood = Client::connect_small_buffer(node.addr, &node.ws_url("")).await;
    let mut sent = 0;
    while sent < 200_000 {
        if !flood.try_send(Message::Ping(vec![7u8; 125].into())).await {
            break;
        }
        sent += 1;
    }
    assert_eq!(flood.closed().await, Closed::Code(1008, "too many pings".into()), "after {sent} pings");
    let grown = node.rss_kib().saturating_sub(before);
    assert!(grown < 50 * 1024, "a ping flood grew the node by {grown} KiB");
    // Nobody else noticed.
    let mut ws = Client::connect(&node.ws_url("?room=r")).await;
    ws.expect_type("subscribed").await;
}

#[tokio::test]
async fn malformed_frames_get_the_matching_close_code() {
    let node = Node::memory(&[]);
    let mut c = Client::connect(&node.ws_url("")).await;
    let invalid = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(invalid)).await;
    assert!(matches!(c.closed().await, Closed::Code(1007, _)), "invalid UTF-8 in a text frame is 1007");

    let mut c = Client::connect(&node.ws_url("")).await;
    let bad_close = Frame::close(Some(CloseFrame { code: CloseCode::from(999), reason: "nope".into() }));
    c.send_raw(Message::Frame(bad_close)).await;
    assert!(matches!(c.closed().await, Closed::Code(1002, _)), "an invalid close code is answered with 1002");

    // An oversized message is answered with 1009 every time, not a reset.
    for attempt in 0..10 {
        let mut c = Client::connect(&node.ws_url("")).await;
        c.send_raw(Message::Binary(vec![0u8; 8 << 20].into())).await;
        assert_eq!(c.closed().await, Closed::Code(1009, "message too big".into()), "attempt {attempt}");
    }
    let mut ws = Client::connect(&node.ws_url("?room=r")).await;
    ws.expect_type("subscribed").await;
}

#[tokio::test]
async fn the_api_key_is_header_only_and_never_throttled() {
    let node = Node::memory(&["--api-key", API_KEY]);
    let in_url = node.ws_url(&format!("?token={API_KEY}"));
    assert_eq!(Client::try_connect(&in_url, &[]).await.err(), Some(401), "the API key in a URL is refused");
    let response = reqwest::Client::new()
        .post(node.http(&format!("/rooms/r/events?token={API_KEY}")))
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The broadcaster's backend publishes far past the per-connection rate.
    let header = format!("Bearer {API_KEY}");
    let mut backend = Client::try_connect(&node.ws_url(""), &[("authorization", &header)]).await.expect("key");
    for i in 0..300u64 {
        backend.send(json!({"type": "publish", "room": "r", "data": i, "ref": i})).await;
    }
    for i in 0..300u64 {
        let frame = backend.next().await.expect("open");
        assert_eq!((frame["type"].as_str(), frame["ref"].as_u64()), (Some("ack"), Some(i)), "{frame}");
    }
}

#[tokio::test]
async fn subscribe_churn_is_rate_limited_then_closed() {
    let node = Node::memory(&[]);
    let mut churn = Client::connect(&node.ws_url("")).await;
    let mut limited = 0;
    for _ in 0..2_000 {
        if !churn.try_send(Message::Text(json!({"type": "subscribe", "room": "r"}).to_string().into())).await
            || !churn.try_send(Message::Text(json!({"type": "unsubscribe", "room": "r"}).to_string().into())).await
        {
            break;
        }
    }
    let closed = loop {
        match churn.next().await {
            Ok(frame) if frame["code"] == "rate_limited" => limited += 1,
            Ok(_) => {}
            Err(closed) => break closed,
        }
    };
    assert!(limited >= 1, "churn must be refused as rate_limited");
    assert!(matches!(closed, Closed::Code(1008, _)), "and then closed for strikes: {closed:?}");
}

#[tokio::test]
async fn a_store_out_of_memory_refuses_with_its_own_code_and_eviction_is_warned_of() {
    let redis = Redis::start();
    redis.command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let evicting = Node::redis(&redis, &[]);
    eventually("the eviction warning", || async { evicting.logs().contains("can EVICT keys").then_some(()) }).await;
    drop(evicting);

    redis.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let node = Node::redis(&redis, &[]);
    assert!(!node.logs().contains("can EVICT keys"));
    redis.command(&["CONFIG", "SET", "maxmemory", "4mb"]);
    let big = "x".repeat(60_000);
    let http = reqwest::Client::new();
    let mut refusal = None;
    for _ in 0..500 {
        let response = http.post(node.http("/rooms/big/events")).json(&json!(big)).send().await.unwrap();
        if response.status() != 201 {
            refusal = Some((response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap()));
            break;
        }
    }
    let (status, body) = refusal.expect("Redis must run out of memory");
    assert_eq!((status, body["error"].as_str()), (507, Some("store_full")), "{body}");
    let mut ws = Client::connect(&node.ws_url("")).await;
    ws.send(json!({"type": "publish", "room": "big", "data": big, "ref": 1})).await;
    let error = ws.expect_type("error").await;
    assert_eq!(error["code"], "store_full", "{error}");
    let metrics = reqwest::get(node.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("roomcast_store_errors_total{kind=\"out_of_memory\"}"), "{metrics}");
}

#[tokio::test]
async fn a_slow_request_does_not_hold_shutdown_past_the_grace() {
    let mut node = Node::memory(&["--shutdown-grace", "2"]);
    // A publish whose body never finishes arriving.
    let mut slow = TcpStream::connect(node.addr).await.unwrap();
    slow.write_all(b"POST /rooms/r/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":").await.unwrap();
    // An idle keep-alive connection too.
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    assert!(idle.read(&mut buf).await.unwrap() > 0, "healthz answered");
    let started = Instant::now();
    node.sigterm();
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?} with a 2 s grace", started.elapsed());
    assert!(closed_within(&mut slow, Duration::from_secs(1)).await);
}

/// Empty continuation frames, a few bytes each, are counted: a message cut
/// into more than 1,024 frames closes the connection with 1008, and nobody
/// else notices. (Before, a client could stream them forever and keep a
/// core busy.)
#[tokio::test]
async fn a_flood_of_empty_continuation_frames_is_closed() {
    let node = Node::memory(&[]);
    let mut bystander = Client::connect(&node.ws_url("?room=calm")).await;
    bystander.expect_type("subscribed").await;
    let mut flood = Client::connect_small_buffer(node.addr, &node.ws_url("")).await;
    flood.send_raw(Message::Frame(Frame::message(b"{".to_vec(), OpCode::Data(Data::Text), false))).await;
    let mut sent = 0;
    while sent < 20_000 {
        let empty = Frame::message(Vec::new(), OpCode::Data(Data::Continue), false);
        if !flood.try_send(Message::Frame(empty)).await {
            break;
        }
        sent += 1;
    }
    assert_eq!(flood.closed().await, Closed::Code(1008, "too many frames".into()), "after {sent} fragments");
    let id = publish(&node, "calm", json!("still here")).await;
    assert_eq!(bystander.events("calm", 1).await.0[0].0, id);
}

/// Junk reaction keys from many connections neither silence honest ones
/// nor make nodes disagree: a key many viewers send goes out, on every
/// node, with its exact count.
#[tokio::test]
async fn junk_reaction_keys_do_not_silence_honest_ones_on_any_node() {
    let redis = Redis::start();
    let nodes = [Node::redis(&redis, &[]), Node::redis(&redis, &[])];
    let mut watchers = Vec::new();
    for node in &nodes {
        let mut c = Client::connect(&node.ws_url("?room=show")).await;
        c.expect_type("subscribed").await;
        watchers.push(c);
    }
    let mut junk = Vec::new();
    for i in 0..40 {
        let mut c = Client::connect(&nodes[0].ws_url("?room=show")).await;
        c.expect_type("subscribed").await;
        junk.push((i, c));
    }
    let mut honest = Vec::new();
    for (node, key) in [(0, "🔥"), (0, "🔥"), (0, "🔥"), (1, "👏"), (1, "👏")] {
        let mut c = Client::connect(&nodes[node].ws_url("?room=show")).await;
        c.expect_type("subscribed").await;
        honest.push((key, c));
    }
    // The junk first, as fast as each connection may: every key new, and
    // each sent again and again.
    for (i, c) in &mut junk {
        for k in 0..4 {
            for _ in 0..5 {
                c.send(json!({"type": "react", "room": "show", "key": format!("junk-{i}-{k}")})).await;
            }
        }
    }
    for (key, c) in &mut honest {
        c.send(json!({"type": "react", "room": "show", "key": key})).await;
    }
    for watcher in &mut watchers {
        let mut summed: std::collections::BTreeMap<String, u64> = Default::default();
        tokio::time::timeout(Duration::from_secs(10), async {
            while summed.get("🔥") != Some(&3) || summed.get("👏") != Some(&2) {
                let frame = watcher.expect_type("reactions").await;
                assert!(frame["counts"].as_object().unwrap().len() <= 32, "at most 32 keys a frame: {frame}");
                for (key, n) in frame["counts"].as_object().unwrap() {
                    *summed.entry(key.clone()).or_default() += n.as_u64().unwrap();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("honest keys lost among the junk: {summed:?}"));
    }
}

/// A connection may not use more than a few different reaction keys a
/// second: the rest are refused, and its known keys still count.
#[tokio::test]
async fn one_connection_may_use_only_a_few_reaction_keys_a_second() {
    let node = Node::memory(&[]);
    let mut c = Client::connect(&node.ws_url("?room=show")).await;
    c.expect_type("subscribed").await;
    for k in 0..4 {
        c.send(json!({"type": "react", "room": "show", "key": format!("k{k}")})).await;
    }
    c.send(json!({"type": "react", "room": "show", "key": "k4"})).await;
    let error = c.expect_type("error").await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert!(error["message"].as_str().unwrap().contains("different reaction keys"), "{error}");
    c.send(json!({"type": "react", "room": "show", "key": "k0"})).await;
    let mut summed: std::collections::BTreeMap<String, u64> = Default::default();
    while summed.values().sum::<u64>() < 5 {
        let frame = c.expect_type("reactions").await;
        for (key, n) in frame["counts"].as_object().unwrap() {
            *summed.entry(key.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    assert_eq!(summed.get("k0"), Some(&2));
    assert!(!summed.contains_key("k4"));
}

/// Reactions in many rooms at once: every live note the store keeps is at
/// most 16 KiB (one node's viewers in 200 rooms made 87 KiB notes before),
/// and the rooms' viewers still get their counts.
#[tokio::test]
async fn live_notes_are_bounded_in_bytes() {
    let redis = Redis::start();
    let node = Node::redis(&redis, &[]);
    let mut viewers = Vec::new();
    for r in 0..200 {
        let mut c = Client::connect(&node.ws_url(&format!("?room=party-{r}"))).await;
        c.expect_type("subscribed").await;
        viewers.push(c);
    }
    for (r, c) in viewers.iter_mut().enumerate() {
        for k in 0..4 {
            c.send(json!({"type": "react", "room": format!("party-{r}"), "key": format!("key-number-{k:02}-{r:04}")}))
                .await;
        }
    }
    for c in viewers.iter_mut().take(5) {
        let frame = c.expect_type("reactions").await;
        assert_eq!(frame["counts"].as_object().unwrap().len(), 4, "{frame}");
    }
    let notes = roomcast::store::redis::keys::Keys::new("rc").notes();
    let client = support::RedisClient::connect(redis.port);
    let count: usize = client.command(&["XLEN", &notes]).unwrap().trim_start_matches(':').parse().unwrap();
    assert!(count > 0, "the node wrote notes");
    let sizes = support::stream_field_sizes(redis.port, &notes, "d");
    assert_eq!(sizes.len(), count);
    let largest = sizes.iter().max().copied().unwrap_or(0);
    assert!(largest <= 16 * 1024, "a live note of {largest} bytes");
    assert!(sizes.len() >= 2, "200 rooms' reactions took several notes: {sizes:?}");
}

/// New rooms are budgeted per connection and per token subject: past the
/// budget, publishes and subscribes that would make a room are refused
/// with `too_many_rooms`; rooms that exist are not counted, and the API
/// key is not limited.
#[tokio::test]
async fn new_rooms_are_limited_per_connection_and_per_credential() {
    let secret = "a-secret-long-enough-for-hs256-keys!";
    let node = Node::memory(&["--jwt-secret", secret, "--api-key", API_KEY, "--new-rooms-per-minute", "5"]);
    let token =
        support::hs256(secret, json!({"sub": "viewer", "exp": support::now() + 600, "rooms": ["*"], "publish": ["*"]}));
    let mut c = Client::try_connect(&node.ws_url(&format!("?token={token}")), &[]).await.unwrap();
    for i in 0..5 {
        let id = c.publish(&format!("made-{i}"), json!(i), i).await;
        assert!(id.contains('-'));
    }
    c.send(json!({"type": "publish", "room": "made-5", "data": 5, "ref": 5})).await;
    let error = c.expect_type("error").await;
    assert_eq!((error["code"].as_str(), error["ref"].as_u64()), (Some("too_many_rooms"), Some(5)), "{error}");
    c.subscribe("never-made", None).await;
    assert_eq!(c.expect_type("error").await["code"], "too_many_rooms");
    // Rooms that exist cost nothing.
    c.publish("made-0", json!("again"), 6).await;
    c.subscribe("made-1", None).await;
    c.expect_type("subscribed").await;
    // The same subject on a new connection, or over HTTP, shares the budget.
    let mut again = Client::try_connect(&node.ws_url(&format!("?token={token}")), &[]).await.unwrap();
    again.send(json!({"type": "publish", "room": "made-6", "data": 6, "ref": 1})).await;
    assert_eq!(again.expect_type("error").await["code"], "too_many_rooms");
    let http = reqwest::Client::new()
        .post(node.http("/rooms/made-7/events"))
        .bearer_auth(&token)
        .json(&json!(7))
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 429);
    assert_eq!(http.json::<serde_json::Value>().await.unwrap()["error"], "too_many_rooms");
    // The API key makes what rooms it likes.
    for i in 0..10 {
        let status = reqwest::Client::new()
            .post(node.http(&format!("/rooms/backend-{i}/events")))
            .bearer_auth(API_KEY)
            .json(&json!(i))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
    }
}

/// Smaller things a client can send: the largest event ID as a position is
/// a client past the end (a gap), not a store failure; unknown paths and
/// methods, and repeated query fields, get the JSON error body.
#[tokio::test]
async fn odd_positions_paths_and_queries_get_clear_answers() {
    let redis = Redis::start();
    let node = Node::redis(&redis, &[]);
    let first = publish(&node, "edge", json!(1)).await;
    let max = "18446744073709551615-18446744073709551615";
    let mut c = Client::connect(&node.ws_url(&format!("?room=edge&last_event_id={max}"))).await;
    assert_eq!(c.expect_type("subscribed").await["resumed"], false);
    assert_eq!(c.expect_type("gap").await["after"], max);
    let (status, body) = support::get_json(&node.http(&format!("/rooms/edge/events?after={max}"))).await;
    assert_eq!((status, body["gap"].clone()), (200, json!(true)), "{body}");
    let (status, body) = support::get_json(&node.http("/rooms/edge/events?after=0&after=1")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_frame")), "{body}");
    let (status, body) = support::get_json(&node.http("/no/such/thing")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    let deleted = reqwest::Client::new().delete(node.http("/rooms/edge/events")).send().await.unwrap();
    assert_eq!(deleted.status(), 405);
    assert_eq!(deleted.json::<serde_json::Value>().await.unwrap()["error"], "method_not_allowed");
    let _ = first;
}
