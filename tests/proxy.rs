//! A real nginx in front of three nodes on one Redis, configured from
//! `deploy/nginx/roomcast.conf`: WebSocket and SSE viewers connected through
//! it lose nothing while every node is restarted in turn, and an SSE event
//! passes the proxy at once (nothing buffers it).

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use support::client::assert_ordered;
use support::{free_port, Node, Redis};

const WS_VIEWERS: usize = 6;
const SSE_VIEWERS: usize = 3;
const EVENTS: usize = 300;

/// nginx started from the project's config, with its upstreams pointed at
/// the test's nodes.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed (scripts/test.sh installs Debian's nginx)")
}

impl Nginx {
    fn start(nodes: &[u16]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/roomcast.conf")).unwrap();
        let mut rendered = String::new();
        let mut upstreams = nodes.iter();
        for line in conf.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("server node") {
                let node = upstreams.next().expect("as many nodes as upstream lines");
                let rest = trimmed.split_once(' ').unwrap().1.split_once(' ').map_or(";", |(_, r)| r);
                rendered.push_str(&format!("    server 127.0.0.1:{node} {rest}\n"));
            } else if trimmed.starts_with("listen 8080;") {
                rendered.push_str(&format!("    listen 127.0.0.1:{port};\n"));
            } else {
                rendered.push_str(line);
                rendered.push('\n');
            }
        }
        assert!(upstreams.next().is_none(), "the config names one upstream per node");
        let path = dir.path();
        std::fs::write(path.join("roomcast.conf"), rendered).unwrap();
        let root = running_as_root();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n{user}\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             include {d}/roomcast.conf;\n}}\n",
            d = path.display(),
            user = if root { "user root;\n" } else { "" },
        );
        std::fs::write(path.join("nginx.conf"), main).unwrap();
        let child = Command::new(nginx_binary())
            .args(["-c", &path.join("nginx.conf").display().to_string(), "-p", &path.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        Nginx { child, port, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the tests run as root (nginx then needs `user root;` to read
/// the temporary directory).
fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

/// An SSE viewer through the proxy, resuming with `Last-Event-ID` as a
/// browser's EventSource does.
async fn sse_viewer(url: String) -> (Vec<String>, usize, usize) {
    let http = reqwest::Client::new();
    let (mut ids, mut gaps, mut hops) = (Vec::<String>::new(), 0, 0);
    let mut last = "0".to_owned();
    loop {
        let Ok(response) = http.get(&url).header("Last-Event-ID", &last).send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if response.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        let (mut id, mut event) = (None::<String>, None::<String>);
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let line = line.trim_end_matches('\n');
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    if event.as_deref() == Some("gap") {
                        gaps += 1;
                    } else if data == "\"end\"" {
                        return (ids, gaps, hops);
                    } else if let Some(id) = id.clone() {
                        ids.push(id);
                    }
                } else if line.is_empty() {
                    if let Some(id) = id.take() {
                        last = id;
                    }
                    event = None;
                }
            }
        }
        hops += 1;
    }
}

type Alive = Arc<Mutex<Vec<SocketAddr>>>;

/// Publishes straight to the nodes, retrying a refused publish on another
/// with the same idempotency key. Returns the acked IDs.
async fn publisher(alive: Alive) -> Vec<String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut acked = Vec::new();
    let mut turn = 0;
    for i in 0..=EVENTS {
        let data = if i == EVENTS { json!("end") } else { json!(i) };
        loop {
            let addr = {
                let nodes = alive.lock().unwrap();
                nodes[turn % nodes.len()]
            };
            turn += 1;
            let sent = http
                .post(format!("http://{addr}/rooms/live/events"))
                .header("Idempotency-Key", format!("proxy-{i}"))
                .json(&data)
                .send()
                .await;
            if let Ok(response) = sent {
                if response.status().is_success() {
                    let body: Value = response.json().await.unwrap();
                    if i < EVENTS {
                        acked.push(body["id"].as_str().unwrap().to_owned());
                    }
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

#[tokio::test]
async fn viewers_behind_nginx_lose_nothing_while_every_node_restarts() {
    let redis = Redis::start();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Node> = ports.iter().map(|p| Node::redis_on_port(&redis, *p, &[])).collect();
    let nginx = Nginx::start(&ports);
    support::eventually("nginx to proxy /readyz", || {
        let url = nginx.url("/readyz");
        async move { reqwest::get(url).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;

    let ws_url = format!("ws://127.0.0.1:{}/ws", nginx.port);
    let sse_url = nginx.url("/rooms/live/sse");
    let ws: Vec<_> = (0..WS_VIEWERS)
        .map(|_| {
            let url = ws_url.clone();
            tokio::spawn(async move { support::follow_until_end("live", |_| url.clone()).await })
        })
        .collect();
    let sse: Vec<_> = (0..SSE_VIEWERS).map(|_| tokio::spawn(sse_viewer(sse_url.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alive: Alive = Arc::new(Mutex::new(nodes.iter().map(|n| n.addr).collect()));
    let publishing = tokio::spawn(publisher(alive.clone()));

    for (node, port) in nodes.iter_mut().zip(&ports) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let old = node.addr;
        alive.lock().unwrap().retain(|a| *a != old);
        node.sigterm();
        assert_eq!(node.wait_exit(Duration::from_secs(15)).code(), Some(0));
        *node = Node::redis_on_port(&redis, *port, &[]);
        alive.lock().unwrap().push(node.addr);
    }

    let acked = publishing.await.unwrap();
    assert_eq!(acked.len(), EVENTS);
    let mut hops = 0;
    for (kind, handle) in ws.into_iter().map(|h| ("websocket", h)).chain(sse.into_iter().map(|h| ("sse", h))) {
        let (ids, gaps, moved) = tokio::time::timeout(support::PATIENCE, handle).await.expect("viewer stuck").unwrap();
        hops += moved;
        assert_eq!(gaps, 0, "a {kind} viewer was told of a gap");
        assert_ordered(&ids);
        assert_eq!(ids, acked, "a {kind} viewer behind the proxy got every event once, in order");
    }
    assert!(hops >= WS_VIEWERS + SSE_VIEWERS, "every viewer was moved at least once ({hops} moves)");
}

#[tokio::test]
async fn an_sse_event_passes_the_proxy_at_once() {
    let redis = Redis::start();
    let port = free_port();
    let ports = [port, free_port(), free_port()];
    // One node behind all three upstream lines' ports: the others are down.
    let node = Node::redis_on_port(&redis, port, &[]);
    let nginx = Nginx::start(&ports);
    let mut body = support::eventually("an SSE stream through nginx", || {
        let url = nginx.url("/rooms/quick/sse");
        async move { reqwest::get(url).await.ok().filter(|r| r.status() == 200).map(|r| r.bytes_stream()) }
    })
    .await;
    // The stream's opening block arrives before anything is published.
    let opening = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&opening).contains("retry:"));
    for round in 0..5 {
        let sent = Instant::now();
        let id = support::publish(&node, "quick", json!({"round": round})).await;
        let mut seen = String::new();
        while !seen.contains(&id) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(1), "event {round} took {took:?} through the proxy: something buffers SSE");
    }
}
