//! `FrameMeter`: counts the WebSocket frames a client sends, as they pass
//! from the socket to tungstenite, and stops a flood.
//!
//! tungstenite assembles fragmented messages itself, so the frames of one
//! message never reach the node one by one: a client could stream empty
//! continuation frames, each a few bytes, for as long as it liked, and keep
//! a core busy parsing them (measured: 13 million a second took 87% of a
//! core). The meter reads the frame headers in the bytes it passes on and
//! fails the read once a client sends more frames in a second, or more
//! fragments in one message, than any honest client does; the connection
//! then closes with 1008.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Frames a client may send in one second. Generous: the API key's
/// publisher sends one frame per publish, unthrottled.
pub const FRAMES_PER_SECOND: u32 = 50_000;
/// Frames one message may be cut into (its first and its continuations).
pub const FRAMES_PER_MESSAGE: u32 = 1_024;

/// Where the meter stands in the byte stream.
#[derive(Clone, Copy, Debug)]
enum Parse {
    /// Reading a frame header: its first `have` bytes are in `head`.
    Header { head: [u8; 14], have: usize },
    /// Skipping the payload's remaining bytes.
    Payload(u64),
}

/// An `AsyncRead + AsyncWrite` that passes everything through, counting
/// the frames read.
pub struct FrameMeter<S> {
    inner: S,
    parse: Parse,
    /// Frames in the current second, and when it began.
    window: (u32, Option<Instant>),
    /// Frames of the message under way (0 when none is).
    in_message: u32,
    /// Set once the meter stopped a flood: every later read fails too.
    tripped: bool,
}

/// The error a read fails with once the meter stopped a flood (inside an
/// `io::Error`, so the connection can tell it from a vanished peer).
#[derive(Debug, thiserror::Error)]
#[error("too many websocket frames")]
pub struct FrameFlood;

impl FrameFlood {
    /// Whether `e` is the meter's.
    pub fn is(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<FrameFlood>())
    }
}

impl<S> FrameMeter<S> {
    /// A meter over `inner`.
    pub fn new(inner: S) -> Self {
        FrameMeter {
            inner,
            parse: Parse::Header { head: [0; 14], have: 0 },
            window: (0, None),
            in_message: 0,
            tripped: false,
        }
    }

    /// Counts one frame whose header is `head`; `false` past a bound.
    fn count(&mut self, head: &[u8]) -> bool {
        let now = Instant::now();
        match self.window.1 {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => self.window.0 += 1,
            _ => self.window = (1, Some(now)),
        }
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0F);
        if opcode < 0x8 {
            // A data frame (text, binary, continuation): control frames may
            // come between fragments and are not part of the message.
            self.in_message = if fin { 0 } else { self.in_message + 1 };
        }
        self.window.0 <= FRAMES_PER_SECOND && self.in_message <= FRAMES_PER_MESSAGE
    }

    /// Feeds the bytes read through the parser; `false` once a bound is passed.
    fn meter(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.parse {
                Parse::Payload(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[take as usize..];
                    if *left == 0 {
                        self.parse = Parse::Header { head: [0; 14], have: 0 };
                    }
                }
                Parse::Header { head, have } => {
                    head[*have] = bytes[0];
                    *have += 1;
                    bytes = &bytes[1..];
                    let Some((len, size)) = header_len(&head[..*have]) else { continue };
                    if *have < size {
                        continue;
                    }
                    let header = *head;
                    self.parse = if len == 0 { Parse::Header { head: [0; 14], have: 0 } } else { Parse::Payload(len) };
                    if !self.count(&header) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// A frame header's payload length and whole size, once enough of it is
/// known (`None` until then).
fn header_len(head: &[u8]) -> Option<(u64, usize)> {
    let second = *head.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (len, size) = match second & 0x7F {
        126 => (u64::from(u16::from_be_bytes([*head.get(2)?, *head.get(3)?])), 4),
        127 => {
            let bytes: [u8; 8] = head.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    Some((len, size + mask))
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameMeter<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.tripped {
            return Poll::Ready(Err(flood()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if !this.meter(&buf.filled()[before..]) {
                this.tripped = true;
                buf.set_filled(before);
                return Poll::Ready(Err(flood()));
            }
        }
        polled
    }
}

fn flood() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, FrameFlood)
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameMeter<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `payload` bytes.
    fn frame(fin: bool, opcode: u8, payload: usize) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(b'x', payload));
        out
    }

    fn meter() -> FrameMeter<()> {
        FrameMeter::new(())
    }

    #[test]
    fn the_floods_error_is_told_apart() {
        assert!(FrameFlood::is(&flood()));
        assert!(!FrameFlood::is(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted)));
    }

    #[tokio::test(start_paused = true)]
    async fn honest_traffic_passes_in_any_split() {
        let mut m = meter();
        let mut stream = Vec::new();
        for size in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(true, 1, size));
        }
        stream.extend(frame(false, 2, 10));
        stream.extend(frame(true, 9, 0));
        stream.extend(frame(true, 0, 10));
        for chunk in stream.chunks(7) {
            assert!(m.meter(chunk));
        }
        assert_eq!((m.window.0, m.in_message), (9, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_of_too_many_fragments_is_stopped() {
        let mut m = meter();
        assert!(m.meter(&frame(false, 1, 0)));
        for _ in 0..FRAMES_PER_MESSAGE - 1 {
            assert!(m.meter(&frame(false, 0, 0)));
        }
        assert!(!m.meter(&frame(false, 0, 0)), "one fragment too many");
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_frames_in_a_second_are_stopped_and_the_next_second_starts_afresh() {
        let mut m = meter();
        let one = frame(true, 1, 2);
        for _ in 0..FRAMES_PER_SECOND {
            assert!(m.meter(&one));
        }
        assert!(!m.meter(&one));
        let mut m = meter();
        for _ in 0..FRAMES_PER_SECOND {
            assert!(m.meter(&one));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(m.meter(&one), "a new second");
    }
}
