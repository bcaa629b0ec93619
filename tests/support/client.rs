//! A protocol-speaking WebSocket test client.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::PATIENCE;

/// Which frames the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

/// What the client received that is not a frame.
#[derive(Debug, PartialEq)]
pub enum Closed {
    /// A close frame with its code and reason.
    Code(u16, String),
    /// The stream ended without a close frame.
    Eof,
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub format: Format,
    /// Drop heartbeat frames (the default).
    pub skip_heartbeats: bool,
}

impl Client {
    /// Connects to `url` (a full `ws://.../ws?...` URL).
    pub async fn connect(url: &str) -> Client {
        Client::connect_with(url, Format::Json, None).await
    }

    /// Connects with extra request headers; `Err(status)` when the upgrade is refused.
    pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let mut request = url.into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("header value"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Client { ws, format: Format::Json, skip_heartbeats: true }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    /// Connects through a socket whose receive buffer is tiny, so that a
    /// client that stops reading stalls the server's writes quickly.
    pub async fn connect_small_buffer(addr: std::net::SocketAddr, url: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.expect("handshake");
        Client { ws, format: Format::Json, skip_heartbeats: true }
    }

    /// Connects with a format; `subprotocol` asks for one in the handshake.
    pub async fn connect_with(url: &str, format: Format, subprotocol: Option<&str>) -> Client {
        let mut request = url.into_client_request().expect("request");
        if let Some(p) = subprotocol {
            request.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connect");
        Client { ws, format, skip_heartbeats: true }
    }

    /// Sends one frame (a JSON value, encoded in the client's format).
    pub async fn send(&mut self, frame: Value) {
        let msg = match self.format {
            Format::Json => Message::Text(frame.to_string().into()),
            Format::MsgPack => Message::Binary(rmp_serde::to_vec_named(&frame).expect("msgpack").into()),
        };
        self.ws.send(msg).await.expect("send");
    }

    /// Sends a raw message as is.
    pub async fn send_raw(&mut self, msg: Message) {
        let _ = self.ws.send(msg).await;
    }

    /// Sends a raw message; false once the connection no longer takes any.
    pub async fn try_send(&mut self, msg: Message) -> bool {
        self.ws.send(msg).await.is_ok()
    }

    pub async fn subscribe(&mut self, room: &str, last_event_id: Option<&str>) {
        let mut frame = json!({"type": "subscribe", "room": room});
        if let Some(id) = last_event_id {
            frame["last_event_id"] = json!(id);
        }
        self.send(frame).await;
    }

    /// Publishes and waits for the ack; returns the ID.
    pub async fn publish(&mut self, room: &str, data: Value, reference: u64) -> String {
        self.send(json!({"type": "publish", "room": room, "data": data, "ref": reference})).await;
        let ack = self.expect_type("ack").await;
        assert_eq!(ack["ref"], reference, "ack for another ref: {ack}");
        ack["id"].as_str().expect("ack id").to_owned()
    }

    /// The next frame, decoded; `Err` if the connection closed.
    pub async fn next(&mut self) -> Result<Value, Closed> {
        self.next_within(PATIENCE).await.unwrap_or_else(|| panic!("no frame within {PATIENCE:?}"))
    }

    /// The next frame within `wait`; `None` when nothing arrived.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Result<Value, Closed>> {
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Err(Closed::Eof)),
                Ok(Some(Ok(msg))) => msg,
            };
            let frame: Value = match msg {
                Message::Text(t) => serde_json::from_str(t.as_str()).expect("server sent invalid JSON"),
                Message::Binary(b) => {
                    assert_eq!(self.format, Format::MsgPack, "binary frame on a JSON connection");
                    rmp_serde::from_slice(&b).expect("server sent invalid MessagePack")
                }
                Message::Close(Some(frame)) => {
                    return Some(Err(Closed::Code(frame.code.into(), frame.reason.to_string())))
                }
                Message::Close(None) => return Some(Err(Closed::Eof)),
                _ => continue,
            };
            // The node's heartbeat on quiet connections is not part of
            // what most tests read (tests/heartbeat.rs checks it).
            if self.skip_heartbeats && frame["type"] == "heartbeat" {
                continue;
            }
            return Some(Ok(frame));
        }
    }

    /// The next frame, which must be of `kind`.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let frame = self.next().await.unwrap_or_else(|c| panic!("closed ({c:?}) while expecting {kind}"));
        assert_eq!(frame["type"], kind, "expected a {kind} frame, got {frame}");
        frame
    }

    /// Reads frames until `n` events of `room` arrived; returns (id, data)
    /// pairs and every gap's `after`, failing on anything out of order.
    pub async fn events(&mut self, room: &str, n: usize) -> (Vec<(String, Value)>, Vec<String>) {
        let mut events: Vec<(String, Value)> = Vec::new();
        let mut gaps = Vec::new();
        while events.len() < n {
            let frame = self.next().await.unwrap_or_else(|c| panic!("closed ({c:?}) after {} events", events.len()));
            match frame["type"].as_str() {
                Some("events") if frame["room"] == room => {
                    for e in frame["events"].as_array().expect("events array") {
                        events.push((e["id"].as_str().expect("id").to_owned(), e["data"].clone()));
                    }
                }
                Some("gap") if frame["room"] == room => gaps.push(frame["after"].as_str().unwrap_or("").to_owned()),
                _ => {}
            }
        }
        (events, gaps)
    }

    /// Asserts nothing but pings arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(frame) = self.next_within(wait).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// Waits for a close frame; returns its code and reason.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match self.next().await {
                Err(c) => return c,
                Ok(_) => continue,
            }
        }
    }
}

/// Parses `ms-seq` for ordering checks.
pub fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// Asserts IDs strictly increase.
pub fn assert_ordered(ids: &[String]) {
    for pair in ids.windows(2) {
        assert!(id_key(&pair[0]) < id_key(&pair[1]), "out of order: {} then {}", pair[0], pair[1]);
    }
}
