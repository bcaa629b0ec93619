//! Presence and webhooks end to end: members across tabs and nodes, a
//! killed node's members leaving, the member cap, and webhooks through a
//! real local receiver that checks signatures, fails and recovers, with a
//! node killed while events were undelivered; on the memory node, three
//! nodes on Redis and three on the cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::Client;
use support::{hs256, now, Deployment};

const SECRET: &str = "a-presence-test-secret";
const HOOK_SECRET: &str = "the-webhook-signing-secret";

fn auth() -> Vec<&'static str> {
    vec!["--jwt-secret", SECRET]
}

fn token(sub: Option<&str>, info: Option<Value>) -> String {
    let mut claims = json!({"exp": now() + 600, "rooms": ["*"], "publish": ["*"]});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    if let Some(info) = info {
        claims["info"] = info;
    }
    hs256(SECRET, claims)
}

/// A connection of `sub` subscribed to `room` (watching its presence when `watch`).
async fn join(d: &Deployment, node: usize, sub: Option<&str>, info: Option<Value>, room: &str, watch: bool) -> Client {
    let presence = if watch { "&presence=1" } else { "" };
    let url = d.node(node).ws_url(&format!("?token={}&room={room}{presence}", token(sub, info)));
    let mut c = Client::connect(&url).await;
    c.expect_type("subscribed").await;
    c
}

/// The next presence frame (snapshot or diff), skipping the rest.
async fn presence_frame(c: &mut Client, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = c
            .next_within(left)
            .await
            .unwrap_or_else(|| panic!("no presence frame within {within:?}"))
            .unwrap_or_else(|closed| panic!("closed ({closed:?}) waiting for presence"));
        if frame["type"] == "presence" || frame["type"] == "presence_diff" {
            return frame;
        }
    }
}

/// A watcher's view of the members, kept from the frames it gets.
#[derive(Default)]
struct View {
    members: std::collections::BTreeMap<String, Value>,
    count: u64,
    frames: usize,
}

impl View {
    fn apply(&mut self, frame: &Value) {
        self.frames += 1;
        if frame["type"] == "presence" {
            self.members.clear();
            for m in frame["members"].as_array().unwrap() {
                self.members.insert(m["sub"].as_str().unwrap().into(), m["info"].clone());
            }
        } else {
            for m in frame["joined"].as_array().unwrap() {
                self.members.insert(m["sub"].as_str().unwrap().into(), m["info"].clone());
            }
            for s in frame["left"].as_array().unwrap() {
                self.members.remove(s.as_str().unwrap());
            }
        }
        self.count = frame["count"].as_u64().unwrap();
    }

    fn subs(&self) -> Vec<&str> {
        self.members.keys().map(String::as_str).collect()
    }

    /// Applies frames until `done` holds.
    async fn until(&mut self, c: &mut Client, what: &str, done: impl Fn(&View) -> bool) {
        while !done(self) {
            let frame = presence_frame(c, Duration::from_secs(30)).await;
            self.apply(&frame);
            assert!(self.frames < 200, "{what}: too many presence frames");
        }
    }
}

async fn members_across_tabs_and_nodes(d: Deployment) {
    let room = "show";
    let mut host = join(&d, 0, Some("host"), Some(json!({"name": "Host"})), room, true).await;
    let first = presence_frame(&mut host, Duration::from_secs(10)).await;
    assert_eq!(first["type"], "presence", "a snapshot comes first");
    assert_eq!(first["count"], 1);
    assert_eq!(
        first["members"],
        json!([{"sub": "host", "info": {"name": "Host"}}]),
        "the watcher is in its own snapshot"
    );
    let mut view = View::default();
    view.apply(&first);
    // Ann in two tabs on two other nodes is one member.
    let ann_1 = join(&d, 1, Some("ann"), Some(json!({"seat": 7})), room, false).await;
    let ann_2 = join(&d, 2, Some("ann"), Some(json!({"seat": 7})), room, false).await;
    // A connection without a subject counts in the audience, not as a member.
    let _anonymous = join(&d, 1, None, None, room, false).await;
    view.until(&mut host, "ann joins", |v| v.members.contains_key("ann")).await;
    assert_eq!(view.members["ann"], json!({"seat": 7}));
    assert_eq!(view.count, 2);
    let (status, body) = get(&d, 2, &format!("/rooms/{room}/presence")).await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 2);
    assert_eq!(
        body["members"],
        json!([{"sub": "ann", "info": {"seat": 7}}, {"sub": "host", "info": {"name": "Host"}}])
    );
    // One tab closes: ann stays. Bob joins: the next diff is his alone.
    drop(ann_1);
    let _bob = join(&d, 1, Some("bob"), None, room, false).await;
    let frame = loop {
        let frame = presence_frame(&mut host, Duration::from_secs(10)).await;
        view.apply(&frame);
        if view.members.contains_key("bob") {
            break frame;
        }
        assert_eq!(frame["left"], json!([]), "ann's other tab keeps her in: {frame}");
    };
    assert_eq!(frame["joined"], json!([{"sub": "bob", "info": {}}]));
    assert_eq!(view.subs(), vec!["ann", "bob", "host"]);
    // Her last tab closes: she leaves.
    drop(ann_2);
    view.until(&mut host, "ann leaves", |v| !v.members.contains_key("ann")).await;
    assert_eq!((view.subs(), view.count), (vec!["bob", "host"], 2));
    // A burst of joins comes in few diffs: at most one a second per node round.
    let started = Instant::now();
    let frames_before = view.frames;
    let mut crowd = Vec::new();
    for i in 0..20 {
        crowd.push(join(&d, i, Some(&format!("fan{i:02}")), None, room, false).await);
    }
    view.until(&mut host, "the crowd joins", |v| v.count == 22).await;
    let seconds = started.elapsed().as_secs() + 1;
    let frames = (view.frames - frames_before) as u64;
    assert!(frames <= seconds + 1, "{frames} diffs in {seconds} s: at most one a second");
    // A late watcher on another node gets the same members in its snapshot.
    let mut late = join(&d, 2, None, None, room, true).await;
    let snapshot = presence_frame(&mut late, Duration::from_secs(10)).await;
    assert_eq!(snapshot["type"], "presence");
    assert_eq!(snapshot["count"], 22);
    let mut late_view = View::default();
    late_view.apply(&snapshot);
    assert_eq!(late_view.members, view.members);
}

async fn the_member_list_is_capped_and_the_count_exact(d: Deployment) {
    let room = "big";
    let mut keep = Vec::new();
    for i in 0..6 {
        keep.push(join(&d, i, Some(&format!("m{i}")), None, room, false).await);
    }
    let (_, body) = support::eventually("six members", || async {
        let (status, body) = get(&d, 0, &format!("/rooms/{room}/presence")).await;
        (body["count"] == 6).then_some((status, body))
    })
    .await;
    assert_eq!(body["members"].as_array().unwrap().len(), 3);
    assert_eq!(body["members_truncated"], true);
    let mut watcher = join(&d, 1, None, None, room, true).await;
    let snapshot = presence_frame(&mut watcher, Duration::from_secs(10)).await;
    assert_eq!(snapshot["count"], 6);
    assert_eq!(snapshot["members"].as_array().unwrap().len(), 3);
    assert_eq!(snapshot["members_truncated"], true);
    drop(keep.pop());
    let diff = presence_frame(&mut watcher, Duration::from_secs(10)).await;
    assert_eq!(
        (diff["type"].clone(), diff["left"].clone(), diff["count"].clone()),
        (json!("presence_diff"), json!(["m5"]), json!(5))
    );
}

async fn get(d: &Deployment, node: usize, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(d.node(node).http(path))
        .bearer_auth(token(Some("reader"), None))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

macro_rules! deployments {
    ($name:ident, $deployment:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn members_across_tabs_and_nodes() {
                super::members_across_tabs_and_nodes($deployment(&auth())).await
            }

            #[tokio::test]
            async fn the_member_list_is_capped_and_the_count_exact() {
                let mut args = auth();
                args.extend(["--presence-max-members", "3"]);
                super::the_member_list_is_capped_and_the_count_exact($deployment(&args)).await
            }
        }
    };
}

deployments!(memory, Deployment::memory);
deployments!(redis_three_nodes, |extra: &[&str]| Deployment::redis(3, extra));
deployments!(cluster_three_nodes, |extra: &[&str]| Deployment::cluster(3, extra));

#[tokio::test]
async fn a_killed_nodes_members_leave() {
    for mut d in [Deployment::redis(3, &auth()), Deployment::cluster(3, &auth())] {
        let mut host = join(&d, 0, Some("host"), None, "wake", true).await;
        let mut view = View::default();
        let _carl = join(&d, 2, Some("carl"), None, "wake", false).await;
        view.until(&mut host, "carl joins", |v| v.members.contains_key("carl")).await;
        let killed = Instant::now();
        d.nodes[2].kill();
        view.until(&mut host, "carl's node is gone", |v| !v.members.contains_key("carl")).await;
        eprintln!("a killed node's member left within {:?}", killed.elapsed());
        assert!(killed.elapsed() < Duration::from_secs(30), "within 30 s");
        assert_eq!(view.subs(), vec!["host"]);
    }
}

/// A webhook receiver served by the test: checks every request's
/// signature, records the events, and fails while told to.
struct Receiver {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start() -> Receiver {
        use axum::routing::post;
        let failing = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let (f, e, r) = (failing.clone(), events.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/hooks",
            post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (failing, events, requests) = (f.clone(), e.clone(), r.clone());
                async move {
                    let signature = headers.get("roomcast-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
                    assert_eq!(signature, roomcast::signing::signature(HOOK_SECRET, &body), "signed");
                    *requests.lock().unwrap() += 1;
                    if failing.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let batch: Value = serde_json::from_slice(&body).unwrap();
                    events.lock().unwrap().extend(batch["events"].as_array().unwrap().iter().cloned());
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, failing, events, requests }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// The events received, once each (a resend keeps its id).
    fn unique(&self) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
            .cloned()
            .collect()
    }

    /// `(name, sub)` of the events for `room`, in arrival order, once each.
    fn of(&self, room: &str) -> Vec<(String, String)> {
        self.unique()
            .into_iter()
            .filter(|e| e["room"] == room)
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e["sub"].as_str().unwrap_or("").to_owned()))
            .collect()
    }

    async fn wait_for(&self, room: &str, n: usize) -> Vec<(String, String)> {
        support::eventually(&format!("{n} webhook events for {room}"), || async {
            let events = self.of(room);
            (events.len() >= n).then_some(events)
        })
        .await
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

async fn webhooks_arrive_once_in_order_through_failures(mut d: Deployment, receiver: &Receiver) {
    let ann = join(&d, 0, Some("ann"), Some(json!({"n": 1})), "hall", false).await;
    let got = receiver.wait_for("hall", 2).await;
    assert_eq!(got, pairs(&[("room_occupied", ""), ("member_joined", "ann")]));
    let joined = receiver.unique().into_iter().find(|e| e["name"] == "member_joined").unwrap();
    assert_eq!(joined["info"], json!({"n": 1}));
    assert!(joined["time_ms"].as_u64().unwrap() > 0);
    // The receiver fails; events wait and are sent again once it recovers,
    // in order, even though a node is killed meanwhile.
    receiver.failing.store(true, Ordering::SeqCst);
    let requests_before = *receiver.requests.lock().unwrap();
    let bob = join(&d, 1, Some("bob"), None, "hall", false).await;
    drop(ann);
    support::eventually("the failing receiver is tried again", || async {
        (*receiver.requests.lock().unwrap() >= requests_before + 2).then_some(())
    })
    .await;
    support::eventually("ann has left", || async {
        (get(&d, 0, "/rooms/hall/presence").await.1["count"] == 1).then_some(())
    })
    .await;
    let mut next = 0;
    if d.nodes.len() > 1 {
        // Kill the node delivering webhooks, with events undelivered.
        let holder = support::eventually("a node holds the delivery lease", || async {
            d.nodes.iter().position(|n| n.logs().contains("this node holds the delivery lease"))
        })
        .await;
        d.nodes[holder].kill();
        next = (holder + 1) % d.nodes.len();
    }
    receiver.failing.store(false, Ordering::SeqCst);
    let got = receiver.wait_for("hall", 4).await;
    assert_eq!(
        got,
        pairs(&[("room_occupied", ""), ("member_joined", "ann"), ("member_joined", "bob"), ("member_left", "ann")])
    );
    // The room empties; room_vacated follows its delay.
    drop(bob);
    let got = receiver.wait_for("hall", 6).await;
    assert_eq!(got[4..], pairs(&[("member_left", "bob"), ("room_vacated", "")]));
    // A reconnect within the delay sends neither vacated nor occupied.
    let quick = join(&d, next, None, None, "flap", false).await;
    receiver.wait_for("flap", 1).await;
    drop(quick);
    let _back = join(&d, next, None, None, "flap", false).await;
    let _marker = join(&d, next, None, None, "marker", false).await;
    receiver.wait_for("marker", 1).await;
    assert_eq!(receiver.of("flap"), pairs(&[("room_occupied", "")]));
}

#[tokio::test]
async fn webhooks_on_the_memory_node() {
    let receiver = Receiver::start().await;
    let url = receiver.url();
    webhooks_arrive_once_in_order_through_failures(Deployment::memory(&webhook_args(&url)), &receiver).await;
}

fn webhook_args(url: &str) -> Vec<&str> {
    let mut args = auth();
    args.extend(["--webhook-url", url, "--webhook-secret", HOOK_SECRET, "--webhook-vacate-delay-ms", "2000"]);
    args
}

#[tokio::test]
async fn webhooks_on_three_nodes_survive_the_senders_death() {
    let receiver = Receiver::start().await;
    let url = receiver.url();
    webhooks_arrive_once_in_order_through_failures(Deployment::redis(3, &webhook_args(&url)), &receiver).await;
}

#[tokio::test]
async fn webhooks_on_the_cluster_survive_the_senders_death() {
    let receiver = Receiver::start().await;
    let url = receiver.url();
    webhooks_arrive_once_in_order_through_failures(Deployment::cluster(3, &webhook_args(&url)), &receiver).await;
}
