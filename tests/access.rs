//! Access control and per-connection limits, against real nodes.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::client::{Client, Closed};
use support::Node;

const SECRET: &str = "a-test-secret-of-some-length";
const API_KEY: &str = "publisher-key-0123456789";

use support::now;

fn hs256(claims: Value) -> String {
    support::hs256(SECRET, claims)
}

async fn post(node: &Node, room: &str, auth: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().post(node.http(&format!("/rooms/{room}/events"))).json(&json!(1));
    if let Some(token) = auth {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn jwt_tokens_gate_connections_rooms_and_publishing() {
    let node = Node::memory(&["--jwt-secret", SECRET, "--api-key", API_KEY]);
    let url = node.ws_url("");
    assert_eq!(Client::try_connect(&url, &[]).await.err(), Some(401), "no token");
    let bad = format!("{url}?token=not.a.token");
    assert_eq!(Client::try_connect(&bad, &[]).await.err(), Some(401), "garbage token");
    let expired = hs256(json!({"sub": "old", "exp": now() - 30, "rooms": ["*"]}));
    assert_eq!(Client::try_connect(&node.ws_url(&format!("?token={expired}")), &[]).await.err(), Some(401));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 60, "rooms": ["*"]}),
        &EncodingKey::from_secret(b"someone else's secret"),
    )
    .unwrap();
    assert_eq!(Client::try_connect(&node.ws_url(&format!("?token={forged}")), &[]).await.err(), Some(401));

    let token = hs256(json!({"sub": "viewer", "exp": now() + 600, "rooms": ["show-*"], "publish": ["show-chat"]}));
    let mut viewer =
        Client::try_connect(&url, &[("authorization", &format!("Bearer {token}"))]).await.expect("bearer accepted");
    viewer.subscribe("show-1", None).await;
    viewer.expect_type("subscribed").await;
    viewer.subscribe("backstage", None).await;
    assert_eq!(viewer.expect_type("error").await["code"], "forbidden");
    viewer.send(json!({"type": "publish", "room": "show-1", "data": 1, "ref": 3})).await;
    let refused = viewer.expect_type("error").await;
    assert_eq!((refused["code"].as_str(), refused["ref"].as_u64()), (Some("forbidden"), Some(3)));
    viewer.publish("show-chat", json!("hi"), 4).await;

    // HTTP publishing: the API key, or a token allowed to publish there.
    assert_eq!(post(&node, "show-1", None).await, 401);
    assert_eq!(post(&node, "show-1", Some("wrong-key-0123456789")).await, 401);
    assert_eq!(post(&node, "show-1", Some(API_KEY)).await, 201);
    assert_eq!(post(&node, "show-chat", Some(&token)).await, 201);
    assert_eq!(post(&node, "show-1", Some(&token)).await, 403);
    let (events, _) = viewer.events("show-1", 1).await;
    assert_eq!(events[0].1, json!(1), "the API key's publish reached the viewer");

    // Reads need a credential too.
    let history = reqwest::Client::new().get(node.http("/rooms/show-1/events")).send().await.unwrap();
    assert_eq!(history.status(), 401);
    let history =
        reqwest::Client::new().get(node.http("/rooms/show-1/events")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(history.status(), 200);
    let sse = reqwest::get(node.http(&format!("/rooms/backstage/sse?token={token}"))).await.unwrap();
    assert_eq!(sse.status(), 403);
}

#[tokio::test]
async fn a_connection_whose_token_expires_is_closed_with_a_reason() {
    let node = Node::memory(&["--jwt-secret", SECRET]);
    let token = hs256(json!({"sub": "brief", "exp": now() + 2, "rooms": ["*"]}));
    let mut client = Client::try_connect(&node.ws_url(&format!("?room=r&token={token}")), &[]).await.unwrap();
    client.expect_type("subscribed").await;
    match client.closed().await {
        Closed::Code(code, reason) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("token expired"), "{reason}");
        }
        other => panic!("expected 1008, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refresh_frame_extends_the_connection_and_can_narrow_it() {
    let node = Node::memory(&["--jwt-secret", SECRET, "--api-key", API_KEY]);
    let brief = hs256(json!({"sub": "viewer", "exp": now() + 2, "rooms": ["*"]}));
    let mut client = Client::try_connect(&node.ws_url(&format!("?token={brief}")), &[]).await.unwrap();
    client.subscribe("show-1", None).await;
    client.expect_type("subscribed").await;
    client.subscribe("backstage", None).await;
    client.expect_type("subscribed").await;

    // A token that does not verify is refused; the connection keeps its own.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 600, "rooms": ["*"]}),
        &EncodingKey::from_secret(b"someone else's secret"),
    )
    .unwrap();
    client.send(json!({"type": "refresh", "token": forged})).await;
    assert_eq!(client.expect_type("error").await["code"], "bad_token");
    client.send(json!({"type": "refresh"})).await;
    assert_eq!(client.expect_type("error").await["code"], "bad_frame");
    // A valid token for another subject does not take over the connection.
    let someone_else = hs256(json!({"sub": "admin", "exp": now() + 600, "rooms": ["*"], "publish": ["*"]}));
    client.send(json!({"type": "refresh", "token": someone_else})).await;
    let refused = client.expect_type("error").await;
    assert_eq!(refused["code"], "bad_token", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("same subject"), "{refused}");

    // A fresh token that covers show-* only: backstage is left, with word.
    let fresh = hs256(json!({"sub": "viewer", "exp": now() + 600, "rooms": ["show-*"]}));
    client.send(json!({"type": "refresh", "token": fresh})).await;
    let left = client.expect_type("unsubscribed").await;
    assert_eq!(left["room"], "backstage");
    let refreshed = client.expect_type("refreshed").await;
    assert!(refreshed["expires_in"].as_u64().is_some_and(|s| s > 590), "{refreshed}");

    // Past the first token's expiry the connection is still up and live.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(post(&node, "show-1", Some(API_KEY)).await, 201);
    let (events, _) = client.events("show-1", 1).await;
    assert_eq!(events[0].1, json!(1));
}

#[tokio::test]
async fn rs256_public_keys_verify_tokens() {
    let public = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/test-rs256.pub.pem");
    let node = Node::memory(&["--jwt-public-key", public]);
    let private = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/test-rs256.key")).unwrap();
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let token =
        encode(&Header::new(Algorithm::RS256), &json!({"exp": now() + 60, "rooms": ["a"], "publish": ["a"]}), &key)
            .unwrap();
    let mut client = Client::try_connect(&node.ws_url(&format!("?room=a&token={token}")), &[]).await.unwrap();
    client.expect_type("subscribed").await;
    client.publish("a", json!("signed"), 1).await;
    // An HS256 token is not accepted where RS256 is configured.
    let hs = hs256(json!({"exp": now() + 60, "rooms": ["*"]}));
    assert_eq!(Client::try_connect(&node.ws_url(&format!("?token={hs}")), &[]).await.err(), Some(401));
}

#[tokio::test]
async fn an_api_key_alone_keeps_viewing_open_and_guards_publishing() {
    let node = Node::memory(&["--api-key", API_KEY]);
    let mut viewer = Client::connect(&node.ws_url("?room=open")).await;
    viewer.expect_type("subscribed").await;
    viewer.send(json!({"type": "publish", "room": "open", "data": 1})).await;
    assert_eq!(viewer.expect_type("error").await["code"], "forbidden");
    assert_eq!(post(&node, "open", None).await, 401);
    assert_eq!(post(&node, "open", Some(API_KEY)).await, 201);
    viewer.events("open", 1).await;
}

#[tokio::test]
async fn browser_origins_are_checked() {
    let node = Node::memory(&["--allowed-origins", "https://show.example, https://admin.example"]);
    let url = node.ws_url("");
    assert_eq!(Client::try_connect(&url, &[("origin", "https://evil.example")]).await.err(), Some(403));
    assert!(Client::try_connect(&url, &[("origin", "https://show.example")]).await.is_ok());
    assert!(Client::try_connect(&url, &[]).await.is_ok(), "non-browser clients send no Origin");
    let sse = reqwest::Client::new()
        .get(node.http("/rooms/r/sse"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 403);

    // CORS answers the allowed origins only.
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, node.http("/rooms/r/events"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "last-event-id")
            .send()
    };
    let allowed = preflight("https://show.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://show.example");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn an_open_node_answers_cors_for_any_origin_and_serves_its_browser_files() {
    let node = Node::memory(&[]);
    support::publish(&node, "r", json!(1)).await;
    for path in ["/rooms/r", "/rooms/r/events?after=0"] {
        let response =
            reqwest::Client::new().get(node.http(path)).header("origin", "https://any.example").send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["access-control-allow-origin"], "https://any.example", "{path}");
    }
    let client = reqwest::get(node.http("/client.js")).await.unwrap();
    assert!(client.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let body = client.text().await.unwrap();
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/roomcast.js")).unwrap();
    assert_eq!(body, source, "the node serves the package's module as it is in the repository");
    let page = reqwest::get(node.http("/?room=show-42")).await.unwrap();
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"from "/client.js""#), "the demo page is built on the client");
    assert!(!html.contains("https://") && !html.contains("http://"), "the page loads nothing from elsewhere");
}

#[tokio::test]
async fn floods_are_rate_limited_then_closed_and_others_are_unharmed() {
    let node = Node::memory(&["--publish-rate", "5", "--publish-burst", "5", "--max-strikes", "10"]);
    let mut bystander = Client::connect(&node.ws_url("?room=calm")).await;
    bystander.expect_type("subscribed").await;
    let mut flooder = Client::connect(&node.ws_url("")).await;
    for i in 0..40u64 {
        flooder.send(json!({"type": "publish", "room": "calm", "data": i, "ref": i})).await;
    }
    let (mut acks, mut limited) = (0, 0);
    let close = loop {
        match flooder.next().await {
            Ok(frame) if frame["type"] == "ack" => acks += 1,
            Ok(frame) if frame["code"] == "rate_limited" => limited += 1,
            Ok(frame) => panic!("unexpected {frame}"),
            Err(closed) => break closed,
        }
    };
    assert!((5..=10).contains(&acks), "the burst (5) is accepted, little more: {acks}");
    assert!(limited >= 1, "excess publishes get rate_limited first");
    match close {
        Closed::Code(code, reason) => assert_eq!((code, reason.as_str()), (1008, "too many refused frames")),
        other => panic!("persisting must close with 1008, got {other:?}"),
    }
    let (events, gaps) = bystander.events("calm", acks).await;
    assert!(gaps.is_empty());
    assert_eq!(events.len(), acks, "exactly the acked publishes were delivered");
    bystander.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn subscription_and_connection_limits() {
    let node = Node::memory(&["--max-subscriptions", "2", "--max-connections", "2"]);
    let mut a = Client::connect(&node.ws_url("?room=one")).await;
    a.expect_type("subscribed").await;
    a.subscribe("two", None).await;
    a.expect_type("subscribed").await;
    a.subscribe("three", None).await;
    assert_eq!(a.expect_type("error").await["code"], "limit_exceeded");
    let _b = Client::connect(&node.ws_url("")).await;
    assert_eq!(Client::try_connect(&node.ws_url(""), &[]).await.err(), Some(503), "the node is full");
    drop(a);
    support::eventually("a slot to free up", || async {
        Client::try_connect(&node.ws_url(""), &[]).await.ok().map(|_| ())
    })
    .await;
}
