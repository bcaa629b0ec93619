//! Moderation end to end: bans and disconnects across nodes (with how long
//! they took), slow mode, unauthorised moderation, and the publish hook
//! (allow, rewrite, refuse, timeout, 5xx, fail-open), on the memory node,
//! three nodes on Redis and three on the cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::{Client, Closed};
use support::{hs256, now, Deployment};

const SECRET: &str = "a-moderation-test-secret";
const API_KEY: &str = "moderation-test-api-key-0123";
const HOOK_SECRET: &str = "the-hook-signing-secret";

fn auth() -> Vec<&'static str> {
    vec!["--jwt-secret", SECRET, "--api-key", API_KEY]
}

fn token(sub: &str, moderate: &[&str]) -> String {
    hs256(SECRET, json!({"sub": sub, "exp": now() + 600, "rooms": ["*"], "publish": ["*"], "moderate": moderate}))
}

async fn viewer(d: &Deployment, node: usize, sub: &str, room: &str) -> Client {
    let mut c = Client::connect(&d.node(node).ws_url(&format!("?token={}&room={room}", token(sub, &[])))).await;
    c.expect_type("subscribed").await;
    c
}

/// A request with `bearer` as its credential.
async fn call(
    d: &Deployment,
    node: usize,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut request = http.request(method.parse().unwrap(), d.node(node).http(path));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Publishes as the application's backend (the API key); the event's ID.
async fn backend_publish(d: &Deployment, node: usize, room: &str, data: Value) -> String {
    let (status, body) = call(d, node, "POST", &format!("/rooms/{room}/events"), Some(API_KEY), Some(data)).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// A frame of `kind` for `room`, skipping others (events, heartbeats).
async fn frame_of(c: &mut Client, kind: &str) -> Value {
    loop {
        let frame = c.next().await.unwrap_or_else(|closed| panic!("closed ({closed:?}) waiting for {kind}"));
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn bans_end_subscriptions_on_every_node(d: Deployment) {
    let mut on_a = viewer(&d, 1, "troll", "stage").await;
    let mut on_b = viewer(&d, 2, "troll", "stage").await;
    let mut fan = viewer(&d, 2, "fan", "stage").await;
    let banned_at = Instant::now();
    let (status, body) =
        call(&d, 0, "POST", "/rooms/stage/bans", Some(API_KEY), Some(json!({"sub": "troll", "seconds": 600}))).await;
    assert_eq!(status, 201, "{body}");
    for c in [&mut on_a, &mut on_b] {
        let frame = frame_of(c, "unsubscribed").await;
        assert_eq!(frame, json!({"type": "unsubscribed", "room": "stage", "reason": "banned"}));
    }
    eprintln!("ban took effect on two other nodes within {:?}", banned_at.elapsed());
    assert!(banned_at.elapsed() < Duration::from_secs(5), "a ban ends subscriptions within seconds");
    // The fan is untouched and still gets events; the troll can neither
    // subscribe nor publish there, and is told why.
    let id = backend_publish(&d, 0, "stage", json!("after the ban")).await;
    assert_eq!(fan.events("stage", 1).await.0, vec![(id, json!("after the ban"))]);
    on_a.send(json!({"type": "subscribe", "room": "stage"})).await;
    assert_eq!(on_a.expect_type("error").await["code"], "banned");
    on_a.send(json!({"type": "publish", "room": "stage", "data": 1, "ref": 3})).await;
    let refused = on_a.expect_type("error").await;
    assert_eq!((refused["code"].clone(), refused["ref"].clone()), (json!("banned"), json!(3)));
    let (status, body) = call(&d, 1, "POST", "/rooms/stage/events", Some(&token("troll", &[])), Some(json!(1))).await;
    assert_eq!((status, body["error"].clone()), (403, json!("banned")));
    // Other rooms are not affected.
    on_a.send(json!({"type": "subscribe", "room": "elsewhere"})).await;
    assert_eq!(on_a.expect_type("subscribed").await["room"], "elsewhere");
    // Listed, then lifted: the troll may come back.
    let (status, list) = call(&d, 2, "GET", "/rooms/stage/bans", Some(API_KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["bans"][0]["sub"], "troll");
    assert!(list["bans"][0]["expires_in"].as_u64().unwrap() > 590);
    assert_eq!(call(&d, 1, "DELETE", "/rooms/stage/bans/troll", Some(API_KEY), None).await.0, 204);
    assert_eq!(call(&d, 1, "DELETE", "/rooms/stage/bans/troll", Some(API_KEY), None).await.0, 404);
    support::eventually("the troll may subscribe again", || async {
        let url = d.node(2).ws_url(&format!("?token={}&room=stage", token("troll", &[])));
        let mut c = Client::connect(&url).await;
        (c.next().await.ok()?["type"] == "subscribed").then_some(())
    })
    .await;
}

async fn moderation_needs_a_moderator(d: Deployment) {
    let body = Some(json!({"sub": "x", "seconds": 60}));
    assert_eq!(call(&d, 0, "POST", "/rooms/stage/bans", None, body.clone()).await.0, 401);
    let (status, refused) = call(&d, 0, "POST", "/rooms/stage/bans", Some(&token("fan", &[])), body.clone()).await;
    assert_eq!((status, refused["error"].clone()), (403, json!("not_moderator")));
    // A token moderates the rooms its `moderate` patterns cover, no others.
    let host = token("host", &["stage"]);
    assert_eq!(call(&d, 1, "POST", "/rooms/stage/bans", Some(&host), body.clone()).await.0, 201);
    assert_eq!(call(&d, 1, "POST", "/rooms/backstage/bans", Some(&host), body.clone()).await.0, 403);
    assert_eq!(
        call(&d, 1, "PUT", "/rooms/backstage/settings", Some(&host), Some(json!({"slow_mode_ms": 1}))).await.0,
        403
    );
    // Disconnecting a user takes the API key.
    assert_eq!(call(&d, 2, "POST", "/users/x/disconnect", Some(&host), None).await.0, 403);
    // Bad requests.
    for bad in [json!({"sub": "", "seconds": 60}), json!({"sub": "x", "seconds": 0}), json!({"seconds": 5})] {
        assert_eq!(call(&d, 0, "POST", "/rooms/stage/bans", Some(API_KEY), Some(bad.clone())).await.0, 400, "{bad}");
    }
}

async fn disconnects_close_every_connection_of_the_subject(d: Deployment) {
    let mut a = viewer(&d, 0, "u-7", "show").await;
    let mut b = viewer(&d, 2, "u-7", "show").await;
    let mut other = viewer(&d, 1, "u-8", "show").await;
    let started = Instant::now();
    let (status, _) =
        call(&d, 1, "POST", "/users/u-7/disconnect", Some(API_KEY), Some(json!({"reason": "spamming"}))).await;
    assert_eq!(status, 202);
    for c in [&mut a, &mut b] {
        let closed = c.closed().await;
        assert_eq!(
            closed,
            Closed::Code(4403, "disconnected by a moderator: do not reconnect: spamming".into()),
            "closed with 4403 and the reason"
        );
    }
    eprintln!("disconnect closed two connections on two nodes within {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5));
    let id = backend_publish(&d, 0, "show", json!("still here")).await;
    assert_eq!(other.events("show", 1).await.0, vec![(id, json!("still here"))]);
}

async fn slow_mode_holds_publishers_to_the_interval(d: Deployment) {
    let (status, _) =
        call(&d, 0, "PUT", "/rooms/chat/settings", Some(API_KEY), Some(json!({"slow_mode_ms": 60_000}))).await;
    assert_eq!(status, 200);
    assert_eq!(call(&d, 2, "GET", "/rooms/chat/settings", Some(API_KEY), None).await.1["slow_mode_ms"], 60_000);
    let mut ann = viewer(&d, 1, "ann", "chat").await;
    ann.send(json!({"type": "publish", "room": "chat", "data": "first", "ref": 1})).await;
    assert_eq!(ann.expect_type("ack").await["ref"], 1);
    ann.send(json!({"type": "publish", "room": "chat", "data": "again", "ref": 2})).await;
    let refused = frame_of(&mut ann, "error").await;
    assert_eq!(refused["code"], "slow_mode");
    assert!((1..=60_000).contains(&refused["retry_after_ms"].as_u64().unwrap()), "{refused}");
    // On another node too: the interval is the deployment's, not a node's.
    let (status, body) = call(&d, 2, "POST", "/rooms/chat/events", Some(&token("ann", &[])), Some(json!(3))).await;
    assert_eq!((status, body["error"].clone()), (429, json!("slow_mode")));
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    // Others, moderators and the API key publish freely.
    assert_eq!(call(&d, 2, "POST", "/rooms/chat/events", Some(&token("bob", &[])), Some(json!(4))).await.0, 201);
    for i in 0..3 {
        assert_eq!(
            call(&d, 0, "POST", "/rooms/chat/events", Some(&token("host", &["chat"])), Some(json!(i))).await.0,
            201
        );
        assert_eq!(call(&d, 1, "POST", "/rooms/chat/events", Some(API_KEY), Some(json!(i))).await.0, 201);
    }
    // Off again.
    call(&d, 0, "PUT", "/rooms/chat/settings", Some(API_KEY), Some(json!({"slow_mode_ms": 0}))).await;
    support::eventually("slow mode off on every node", || async {
        let (status, _) = call(&d, 1, "POST", "/rooms/chat/events", Some(&token("ann", &[])), Some(json!(5))).await;
        (status == 201).then_some(())
    })
    .await;
}

fn ids_of(events: &Value) -> Vec<String> {
    events.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

/// Every frame's events of `room` until `n` arrived, as the node sent them.
async fn raw_events(c: &mut Client, room: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = c.next().await.unwrap();
        if frame["type"] == "events" && frame["room"] == room {
            out.extend(frame["events"].as_array().unwrap().iter().cloned());
        }
        assert_ne!(frame["type"], "gap", "a moderated room never reads as a gap");
    }
    out
}

async fn edits_and_deletes_are_seen_live_and_in_every_read(d: Deployment) {
    let host = token("host", &["mod-*"]);
    let mut live = viewer(&d, 1, "fan", "mod-chat").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(backend_publish(&d, i, "mod-chat", json!({"text": format!("message {i}")})).await);
    }
    raw_events(&mut live, "mod-chat", 8).await;
    let mut resumer = Client::connect(&d.node(2).ws_url(&format!("?token={}", token("late", &[])))).await;
    // Edit 2, delete 4, edit 6 then delete it (its edit's data goes too).
    let path = |id: &str| format!("/rooms/mod-chat/events/{id}");
    let (status, edit) = call(&d, 0, "PATCH", &path(&ids[2]), Some(&host), Some(json!({"text": "edited"}))).await;
    assert_eq!(status, 200, "{edit}");
    assert_eq!(edit["target"], json!(ids[2]));
    let (_, delete) = call(&d, 1, "DELETE", &path(&ids[4]), Some(&host), None).await;
    let (_, edit6) = call(&d, 2, "PATCH", &path(&ids[6]), Some(API_KEY), Some(json!({"text": "oops"}))).await;
    let (_, delete6) = call(&d, 0, "DELETE", &path(&ids[6]), Some(API_KEY), None).await;
    let ops: Vec<String> =
        [&edit, &delete, &edit6, &delete6].iter().map(|v| v["id"].as_str().unwrap().to_owned()).collect();
    // Refused: not a moderator, unknown or deleted targets, operations as targets.
    assert_eq!(call(&d, 0, "DELETE", &path(&ids[1]), Some(&token("fan", &[])), None).await.0, 403);
    assert_eq!(call(&d, 0, "DELETE", &path(&ids[1]), None, None).await.0, 401);
    assert_eq!(call(&d, 0, "DELETE", &path(&ids[4]), Some(&host), None).await.0, 404);
    assert_eq!(call(&d, 0, "DELETE", &path(&ops[0]), Some(&host), None).await.0, 404);
    assert_eq!(call(&d, 0, "DELETE", &path("1-1"), Some(&host), None).await.0, 404);
    assert_eq!(call(&d, 0, "PATCH", &path("nonsense"), Some(&host), Some(json!(1))).await.0, 400);
    // Live: the operations, in order, like any event.
    let got = raw_events(&mut live, "mod-chat", 4).await;
    assert_eq!(got[0], json!({"id": ops[0], "op": "edit", "target": ids[2], "data": {"text": "edited"}}));
    assert_eq!(got[1], json!({"id": ops[1], "op": "delete", "target": ids[4]}));
    assert_eq!(got[3], json!({"id": ops[3], "op": "delete", "target": ids[6]}));
    // Every read shows each target in place, as it now stands.
    let expected = {
        let mut all: Vec<Value> =
            (0..8).map(|i| json!({"id": ids[i], "data": {"text": format!("message {i}")}})).collect();
        all[2] = json!({"id": ids[2], "edited": true, "data": {"text": "edited"}});
        all[4] = json!({"id": ids[4], "deleted": true});
        all[6] = json!({"id": ids[6], "deleted": true});
        all.push(json!({"id": ops[0], "op": "edit", "target": ids[2], "data": {"text": "edited"}}));
        all.push(json!({"id": ops[1], "op": "delete", "target": ids[4]}));
        all.push(json!({"id": ops[2], "op": "edit", "target": ids[6], "deleted": true}));
        all.push(json!({"id": ops[3], "op": "delete", "target": ids[6]}));
        all
    };
    let (_, forward) = call(&d, 1, "GET", "/rooms/mod-chat/events", Some(API_KEY), None).await;
    assert_eq!(forward["events"], json!(expected), "forward history");
    assert_eq!(forward["gap"], false);
    let (_, backward) = call(&d, 2, "GET", "/rooms/mod-chat/events?before=latest&limit=100", Some(API_KEY), None).await;
    assert_eq!(backward["events"], json!(expected), "backwards history");
    let mut rewinder =
        Client::connect(&d.node(0).ws_url(&format!("?token={}&room=mod-chat&rewind=12", token("r", &[])))).await;
    rewinder.expect_type("subscribed").await;
    assert_eq!(raw_events(&mut rewinder, "mod-chat", 12).await, expected, "rewind");
    // A resume from before the changes, on another node: what followed, as it stands, no gap.
    resumer.send(json!({"type": "subscribe", "room": "mod-chat", "last_event_id": ids[1]})).await;
    assert_eq!(resumer.expect_type("subscribed").await["resumed"], true);
    assert_eq!(raw_events(&mut resumer, "mod-chat", 10).await, expected[2..].to_vec(), "resume");
    // The live subscriber, and every read, continue after the operations.
    let next = backend_publish(&d, 0, "mod-chat", json!("next")).await;
    assert_eq!(raw_events(&mut live, "mod-chat", 1).await, vec![json!({"id": next, "data": "next"})]);
    let (_, after) = call(&d, 0, "GET", &format!("/rooms/mod-chat/events?after={}", ids[6]), Some(API_KEY), None).await;
    assert_eq!(ids_of(&after["events"]), [&ids[7..], &ops[..], &[next]].concat());
    assert_eq!(after["gap"], false, "after a deleted event's id: no gap");
}

/// Trimmed events cannot be edited; a room edited and deleted in then
/// trimmed still reads without a gap from its oldest kept event.
async fn moderated_rooms_trim_like_any_other(d: Deployment) {
    let host = token("host", &["mod-*"]);
    let first = backend_publish(&d, 0, "mod-trim", json!(0)).await;
    let second = backend_publish(&d, 1, "mod-trim", json!(1)).await;
    assert_eq!(call(&d, 0, "DELETE", &format!("/rooms/mod-trim/events/{second}"), Some(&host), None).await.0, 200);
    for i in 2..260 {
        backend_publish(&d, i, "mod-trim", json!(i)).await;
    }
    assert_eq!(
        call(&d, 1, "PATCH", &format!("/rooms/mod-trim/events/{first}"), Some(&host), Some(json!(9))).await.0,
        404,
        "trimmed"
    );
    let (_, page) = call(&d, 2, "GET", "/rooms/mod-trim/events?limit=1000", Some(API_KEY), None).await;
    assert_eq!(page["gap"], false);
    assert!(!ids_of(&page["events"]).contains(&first));
}

macro_rules! deployments {
    ($name:ident, $deployment:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn bans_end_subscriptions_on_every_node() {
                super::bans_end_subscriptions_on_every_node($deployment(&auth())).await
            }
            #[tokio::test]
            async fn moderation_needs_a_moderator() {
                super::moderation_needs_a_moderator($deployment(&auth())).await
            }
            #[tokio::test]
            async fn disconnects_close_every_connection_of_the_subject() {
                super::disconnects_close_every_connection_of_the_subject($deployment(&auth())).await
            }
            #[tokio::test]
            async fn edits_and_deletes_are_seen_live_and_in_every_read() {
                super::edits_and_deletes_are_seen_live_and_in_every_read($deployment(&auth())).await
            }
            #[tokio::test]
            async fn moderated_rooms_trim_like_any_other() {
                let mut args = auth();
                args.extend(["--history", "50"]);
                super::moderated_rooms_trim_like_any_other($deployment(&args)).await
            }
            #[tokio::test]
            async fn slow_mode_holds_publishers_to_the_interval() {
                super::slow_mode_holds_publishers_to_the_interval($deployment(&auth())).await
            }
        }
    };
}

deployments!(memory, Deployment::memory);
deployments!(redis_three_nodes, |extra: &[&str]| Deployment::redis(3, extra));
deployments!(cluster_three_nodes, |extra: &[&str]| Deployment::cluster(3, extra));

/// What the test's hook server does with a request.
#[derive(Clone, Copy)]
enum Mode {
    Allow,
    Rewrite,
    Refuse,
    Hang,
    Fail,
}

/// A publish hook served by the test: it checks every request's signature,
/// records what it was asked, and answers as its mode says.
struct Hook {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    asked: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> Hook {
        use axum::routing::post;
        let mode = Arc::new(Mutex::new(Mode::Allow));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (m, a) = (mode.clone(), asked.clone());
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (mode, asked) = (m.clone(), a.clone());
                async move {
                    let signature = headers.get("roomcast-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
                    assert_eq!(signature, roomcast::moderation::hook::signature(HOOK_SECRET, &body), "signed");
                    let request: Value = serde_json::from_slice(&body).unwrap();
                    asked.lock().unwrap().push(request.clone());
                    let mode = *mode.lock().unwrap();
                    match mode {
                        Mode::Allow => (axum::http::StatusCode::OK, axum::Json(json!({"data": request["data"]}))),
                        Mode::Rewrite => (
                            axum::http::StatusCode::OK,
                            axum::Json(json!({"data": {"text": "***", "by": request["sub"]}})),
                        ),
                        Mode::Refuse => {
                            (axum::http::StatusCode::FORBIDDEN, axum::Json(json!({"reason": "no links, please"})))
                        }
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            (axum::http::StatusCode::OK, axum::Json(json!({})))
                        }
                        Mode::Fail => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({}))),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Hook { addr, mode, asked }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn asked(&self) -> usize {
        self.asked.lock().unwrap().len()
    }
}

/// Publishes `data` with idempotency key `k<r>`; the ack or error.
async fn publish(c: &mut Client, data: Value, r: u64) -> Value {
    let frame =
        json!({"type": "publish", "room": "hooked", "data": data, "ref": r, "idempotency_key": format!("k{r}")});
    c.send(frame).await;
    loop {
        let f = c.next().await.unwrap();
        if f["type"] == "ack" || f["type"] == "error" {
            return f;
        }
    }
}

async fn history(d: &Deployment, room: &str) -> Vec<Value> {
    let (_, body) = call(d, 0, "GET", &format!("/rooms/{room}/events"), Some(API_KEY), None).await;
    body["events"].as_array().unwrap().iter().map(|e| e["data"].clone()).collect()
}

#[tokio::test]
async fn the_publish_hook_allows_rewrites_refuses_and_fails_closed() {
    let hook = Hook::start().await;
    let url = hook.url();
    let mut args = auth();
    args.extend(["--publish-hook", &url, "--webhook-secret", HOOK_SECRET, "--publish-hook-timeout-ms", "300"]);
    let d = Deployment::redis(2, &args);
    let mut c = viewer(&d, 0, "ann", "hooked").await;
    // Allowed as sent; the hook was asked with the room, subject, data and key.
    assert_eq!(publish(&mut c, json!({"text": "hello"}), 1).await["type"], "ack");
    let first = hook.asked.lock().unwrap()[0].clone();
    assert_eq!(first, json!({"room": "hooked", "sub": "ann", "data": {"text": "hello"}, "idempotency_key": "k1"}));
    // A retry of a stored publish does not ask again.
    assert_eq!(publish(&mut c, json!({"text": "hello"}), 1).await["type"], "ack");
    assert_eq!(hook.asked(), 1, "a repeat is answered without the hook");
    // Rewritten.
    hook.set(Mode::Rewrite);
    assert_eq!(publish(&mut c, json!({"text": "a link"}), 2).await["type"], "ack");
    // Refused, with the backend's reason; over HTTP with a token too.
    hook.set(Mode::Refuse);
    let refused = publish(&mut c, json!({"text": "http://spam"}), 3).await;
    assert_eq!((refused["code"].clone(), refused["message"].clone()), (json!("rejected"), json!("no links, please")));
    let (status, body) = call(&d, 1, "POST", "/rooms/hooked/events", Some(&token("ann", &[])), Some(json!(1))).await;
    assert_eq!((status, body["error"].clone()), (403, json!("rejected")));
    // The API key skips the hook.
    let asked = hook.asked();
    assert_eq!(
        call(&d, 1, "POST", "/rooms/hooked/events", Some(API_KEY), Some(json!("from the backend"))).await.0,
        201
    );
    assert_eq!(hook.asked(), asked);
    // No answer in time, or a 5xx: refused, nothing stored.
    for mode in [Mode::Hang, Mode::Fail] {
        hook.set(mode);
        let failed = publish(&mut c, json!({"text": "lost?"}), 4).await;
        assert_eq!(failed["code"], "hook_unavailable", "{failed}");
    }
    assert_eq!(
        history(&d, "hooked").await,
        vec![json!({"text": "hello"}), json!({"text": "***", "by": "ann"}), json!("from the backend")],
        "exactly what the hook let through, as it let it through"
    );
}

#[tokio::test]
async fn a_fail_open_hook_stores_as_sent_when_it_fails() {
    let hook = Hook::start().await;
    hook.set(Mode::Fail);
    let url = hook.url();
    let mut args = auth();
    args.extend(["--publish-hook", &url, "--webhook-secret", HOOK_SECRET, "--publish-hook-fail-open"]);
    let d = Deployment::memory(&args);
    let mut c = viewer(&d, 0, "ann", "open").await;
    c.send(json!({"type": "publish", "room": "open", "data": "kept", "ref": 1})).await;
    assert_eq!(frame_of(&mut c, "ack").await["ref"], 1);
    hook.set(Mode::Refuse);
    c.send(json!({"type": "publish", "room": "open", "data": "refused", "ref": 2})).await;
    assert_eq!(frame_of(&mut c, "error").await["code"], "rejected", "fail-open is for failures, not refusals");
    assert_eq!(history(&d, "open").await, vec![json!("kept")]);
    assert_eq!(hook.asked(), 2);
}
