//! A receive-only WebSocket client for the harness's subscribers.
//!
//! The generator shares the machine with the servers it measures, so every
//! microsecond it spends per frame is taken from them. tungstenite zeroes
//! the free part of its read buffer before every read, which made a large
//! buffer cost a memset per read and a small one a syscall per frame. This
//! reader keeps one growing buffer that the kernel fills directly, takes
//! every queued frame per read, and parses the few frame shapes a server
//! sends (unmasked, unfragmented). Publishers still use tungstenite.

use std::net::SocketAddr;

use anyhow::{bail, ensure, Context};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Free space kept ahead of every read.
const READ_AHEAD: usize = 32 * 1024;
/// Largest response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;
/// Largest frame accepted (the server's frames are far smaller).
const MAX_FRAME: usize = 64 << 20;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One subscriber connection, after the upgrade.
pub struct Reader {
    stream: TcpStream,
    buf: BytesMut,
}

impl Reader {
    /// Upgrades `stream` (already connected to `node`) to a WebSocket on `/ws{query}`.
    pub async fn handshake(mut stream: TcpStream, node: SocketAddr, query: &str) -> anyhow::Result<Reader> {
        let request = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: {node}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: cm9vbWNhc3QtYmVuY2gtMQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.context("sending the upgrade request")?;
        let mut buf = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(buf.len() < MAX_HEAD, "upgrade response head too large");
            ensure!(stream.read_buf(&mut buf).await? > 0, "connection closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        ensure!(status.split_whitespace().nth(1) == Some("101"), "upgrade refused: {status}");
        buf.advance(end);
        Ok(Reader { stream, buf })
    }

    /// The next text or binary message; `None` once the server closed.
    pub async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            while let Some((opcode, payload)) = self.frame()? {
                match opcode {
                    OP_TEXT | OP_BINARY => return Ok(Some(payload)),
                    OP_CLOSE => return Ok(None),
                    OP_PING | OP_PONG => {}
                    other => bail!("unexpected frame opcode {other:#x} (fragmented or unknown)"),
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_AHEAD {
                self.buf.reserve(READ_AHEAD);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Splits one complete frame off the buffer, if there is one.
    fn frame(&mut self) -> anyhow::Result<Option<(u8, Bytes)>> {
        let Some(&[b0, b1]) = self.buf.get(..2) else {
            return Ok(None);
        };
        ensure!(b0 & 0x80 != 0, "fragmented frames are not expected from the server");
        ensure!(b1 & 0x80 == 0, "a server frame must not be masked");
        let (header, len) = match b1 & 0x7f {
            126 => match self.buf.get(2..4) {
                Some(b) => (4, u16::from_be_bytes([b[0], b[1]]) as usize),
                None => return Ok(None),
            },
            127 => match self.buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => (10, u64::from_be_bytes(b) as usize),
                None => return Ok(None),
            },
            n => (2, n as usize),
        };
        ensure!(len <= MAX_FRAME, "frame of {len} bytes is too large");
        if self.buf.len() < header + len {
            self.buf.reserve(header + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(header);
        Ok(Some((b0 & 0x0f, self.buf.split_to(len).freeze())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (Reader, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(s.read_u8().await.unwrap());
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
            s
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let reader = Reader::handshake(client, addr, "?room=r").await.unwrap();
        (reader, server.await.unwrap())
    }

    #[tokio::test]
    async fn reads_short_medium_and_split_frames_then_close() {
        let (mut reader, mut server) = pair().await;
        let medium = vec![b'm'; 300];
        let mut wire = vec![0x81, 5];
        wire.extend_from_slice(b"hello");
        wire.extend_from_slice(&[0x89, 0]); // a ping, skipped
        wire.extend_from_slice(&[0x82, 126, 1, 44]);
        wire.extend_from_slice(&medium);
        server.write_all(&wire[..7]).await.unwrap();
        assert_eq!(reader.next().await.unwrap().unwrap(), Bytes::from_static(b"hello"));
        // The rest arrives in two pieces, split inside a header.
        server.write_all(&wire[7..11]).await.unwrap();
        server.write_all(&wire[11..]).await.unwrap();
        assert_eq!(reader.next().await.unwrap().unwrap(), Bytes::from(medium));
        server.write_all(&[0x88, 0]).await.unwrap();
        assert!(reader.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_masked_frame_is_an_error() {
        let (mut reader, mut server) = pair().await;
        server.write_all(&[0x81, 0x81, 0, 0, 0, 0, b'x']).await.unwrap();
        assert!(reader.next().await.is_err());
    }
}
