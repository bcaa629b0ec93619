//! The bare reference server: tokio-tungstenite and a broadcast channel,
//! no store, no rooms, no resume. It speaks just enough of roomcast's
//! frames (`subscribed`, `ack`, `events`) for the same load to drive it, so
//! the stack's ceiling is measured in the same run as roomcast.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tracing::info;

/// Same read buffer as roomcast's, for a like-for-like comparison.
const READ_BUFFER: usize = 4 * 1024;
/// Broadcast backlog per receiver; a receiver further behind lags (and the
/// harness counts what it loses).
const BACKLOG: usize = 4096;

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(rename = "ref", default)]
    reference: Option<u64>,
}

/// Serves until the process is killed.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    info!(addr = %listener.local_addr()?, "listening");
    let (tx, _) = broadcast::channel::<Message>(BACKLOG);
    let seq = Arc::new(AtomicU64::new(0));
    let order = Arc::new(std::sync::Mutex::new(()));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(connection(stream, tx.clone(), seq.clone(), order.clone()));
    }
}

async fn connection(
    stream: TcpStream,
    tx: broadcast::Sender<Message>,
    seq: Arc<AtomicU64>,
    order: Arc<std::sync::Mutex<()>>,
) {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else { return };
    let (mut sink, mut source) = ws.split();
    let mut rx = tx.subscribe();
    // Every connection is in the one broadcast; answer `?room=` at once.
    let subscribed = r#"{"type":"subscribed","room":"r","resumed":false}"#;
    if sink.send(Message::Text(subscribed.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Ok(first) = got else {
                    // Lagged: the harness sees the hole; carry on live.
                    continue;
                };
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(next) = rx.try_recv() {
                    if sink.feed(next).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            msg = source.next() => {
                let Some(Ok(Message::Text(text))) = msg else {
                    if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                        return;
                    }
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<Incoming>(text.as_str()) else { continue };
                let reply = match (frame.kind, frame.data) {
                    ("subscribe", _) => subscribed.to_owned(),
                    ("publish", Some(data)) => {
                        // Numbering and sending under one lock keeps IDs in broadcast order.
                        let n = {
                            let _order = order.lock().unwrap_or_else(|p| p.into_inner());
                            let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
                            let event = format!(r#"{{"type":"events","room":"r","events":[{{"id":"{n}-0","data":{}}}]}}"#, data.get());
                            let _ = tx.send(Message::Text(event.into()));
                            n
                        };
                        format!(r#"{{"type":"ack","ref":{},"id":"{n}-0"}}"#, frame.reference.unwrap_or(0))
                    }
                    _ => continue,
                };
                if sink.send(Message::Text(reply.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}
