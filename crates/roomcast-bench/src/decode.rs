//! Decoding what a subscriber receives, cheaply.
//!
//! The generator shares the machine with the servers it measures, so every
//! microsecond it spends per event is taken from them. A general JSON parser
//! validates and matches every key and string (perf: 40% of the generator's
//! CPU at a million deliveries per second). `events` frames in the exact
//! compact shape roomcast and the reference server write, carrying the
//! harness's own payloads (their keys in any order), take a direct scan
//! instead; anything else (other frame kinds, escapes, whitespace, frame or
//! event keys in another order, foreign payloads) goes through serde, so the
//! fast path can only be faster, never more lenient.

use serde::Deserialize;

/// One delivered event: all the harness checks about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The event ID as `(milliseconds, sequence)`; `(0, 0)` if malformed.
    pub id: (u64, u64),
    /// The payload's intended send time (µs on the harness clock).
    pub t: u64,
    /// The payload's publish sequence number.
    pub s: u64,
}

/// What kind of frame arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `events`: the events were appended to the output.
    Events,
    /// `subscribed`.
    Subscribed,
    /// `gap`.
    Gap,
    /// Anything else, or not a frame the harness understands.
    Other,
}

/// A server frame as serde reads it (the general path, and publishers' acks).
#[derive(Deserialize)]
pub struct Frame<'a> {
    /// The frame's `type`.
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default, borrow)]
    events: Vec<EventIn<'a>>,
    /// The `ref` a reply echoes.
    #[serde(rename = "ref", default)]
    pub reference: Option<u64>,
}

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(borrow)]
    id: &'a str,
    data: Payload,
}

#[derive(Deserialize)]
struct Payload {
    t: u64,
    s: u64,
}

/// Decodes one subscriber frame; an `events` frame's events replace `out`'s contents.
pub fn decode(frame: &[u8], out: &mut Vec<Delivered>) -> Kind {
    out.clear();
    if fast_events(frame, out).is_some() {
        return Kind::Events;
    }
    out.clear();
    let Ok(frame) = serde_json::from_slice::<Frame>(frame) else { return Kind::Other };
    match frame.kind {
        "events" => {
            out.extend(frame.events.iter().map(|e| Delivered { id: parse_id(e.id), t: e.data.t, s: e.data.s }));
            Kind::Events
        }
        "subscribed" => Kind::Subscribed,
        "gap" => Kind::Gap,
        _ => Kind::Other,
    }
}

/// Decodes one subscriber frame the way an ordinary client does: the whole
/// frame into a JSON document (room, every payload field), then the events.
pub fn decode_document(frame: &[u8], out: &mut Vec<Delivered>) -> Kind {
    out.clear();
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(frame) else { return Kind::Other };
    match doc.get("type").and_then(|t| t.as_str()) {
        Some("events") => {
            let events = doc.get("events").and_then(|e| e.as_array()).map(Vec::as_slice).unwrap_or_default();
            out.extend(events.iter().map(|e| {
                let field = |k: &str| e.get("data").and_then(|d| d.get(k)).and_then(|v| v.as_u64()).unwrap_or(0);
                Delivered {
                    id: parse_id(e.get("id").and_then(|i| i.as_str()).unwrap_or("")),
                    t: field("t"),
                    s: field("s"),
                }
            }));
            Kind::Events
        }
        Some("subscribed") => Kind::Subscribed,
        Some("gap") => Kind::Gap,
        _ => Kind::Other,
    }
}

/// `ms-seq` as a sortable pair (malformed IDs sort first).
pub fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// `{"type":"events","room":"R","events":[{"id":"M-S","data":D},...]}`
/// exactly, where `D` holds `"t":T`, `"s":N` and optionally `"p":"P"` in any
/// order (roomcast re-serialises payloads with sorted keys, the reference
/// passes them through), with no escapes in R or P; `None` for anything else.
fn fast_events(frame: &[u8], out: &mut Vec<Delivered>) -> Option<()> {
    let mut c = Cursor(frame);
    c.literal(br#"{"type":"events","room":""#)?;
    c.plain_string()?;
    c.literal(br#","events":["#)?;
    loop {
        c.literal(br#"{"id":""#)?;
        let ms = c.number()?;
        c.literal(b"-")?;
        let seq = c.number()?;
        c.literal(br#"","data":{"#)?;
        let (mut t, mut s, mut padded) = (None, None, false);
        loop {
            if c.literal(br#""t":"#).is_some() {
                once(&mut t, c.number()?)?;
            } else if c.literal(br#""s":"#).is_some() {
                once(&mut s, c.number()?)?;
            } else {
                c.literal(br#""p":""#)?;
                c.plain_string()?;
                if std::mem::replace(&mut padded, true) {
                    return None;
                }
            }
            if c.literal(b",").is_none() {
                break;
            }
        }
        c.literal(b"}}")?;
        out.push(Delivered { id: (ms, seq), t: t?, s: s? });
        if c.literal(b",").is_none() {
            break;
        }
    }
    c.literal(b"]}")?;
    c.0.is_empty().then_some(())
}

/// Fills a field seen for the first time; `None` for a repeated one (serde refuses those).
fn once(slot: &mut Option<u64>, value: u64) -> Option<()> {
    slot.replace(value).is_none().then_some(())
}

/// The unread rest of a frame.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn literal(&mut self, expected: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(expected)?;
        Some(())
    }

    /// A decimal `u64` as JSON writes it: at least one digit, no leading
    /// zero, and short enough that it cannot overflow.
    fn number(&mut self) -> Option<u64> {
        let digits = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 || (digits > 1 && self.0[0] == b'0') {
            return None;
        }
        let mut n: u64 = 0;
        for b in &self.0[..digits] {
            n = n * 10 + u64::from(b - b'0');
        }
        self.0 = &self.0[digits..];
        Some(n)
    }

    /// The rest of a string after its opening quote, through the closing
    /// one; refuses escapes and control characters (serde handles those).
    fn plain_string(&mut self) -> Option<()> {
        let end = self.0.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if self.0[end] != b'"' {
            return None;
        }
        self.0 = &self.0[end + 1..];
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn both(frame: &str) -> (Kind, Vec<Delivered>, Option<()>) {
        let mut out = Vec::new();
        let kind = decode(frame.as_bytes(), &mut out);
        let mut fast = Vec::new();
        (kind, out, fast_events(frame.as_bytes(), &mut fast))
    }

    #[test]
    fn the_compact_shape_takes_the_fast_path() {
        // Payload keys as the harness writes them, and sorted as roomcast stores them.
        let frame = r#"{"type":"events","room":"bench-1-0-0","events":[{"id":"17-2","data":{"t":5,"s":9,"p":"xx"}},{"id":"18-0","data":{"p":"","s":10,"t":6}}]}"#;
        let (kind, out, fast) = both(frame);
        assert_eq!(kind, Kind::Events);
        assert!(fast.is_some());
        assert_eq!(out, vec![Delivered { id: (17, 2), t: 5, s: 9 }, Delivered { id: (18, 0), t: 6, s: 10 }]);
    }

    #[test]
    fn other_shapes_fall_back_to_serde_with_the_same_answer() {
        let reordered = r#"{"type":"events","room":"r","events":[{"data":{"s":4,"t":2,"p":"a"},"id":"3-1"}]}"#;
        let escaped = r#"{"type":"events","room":"r","events":[{"id":"3-1","data":{"t":2,"s":4,"p":"a\"b"}}]}"#;
        let spaced = r#"{ "type": "events", "room": "r", "events": [ {"id":"3-1","data":{"t":2,"s":4}} ] }"#;
        let extra = r#"{"type":"events","room":"r","events":[{"id":"3-1","data":{"t":2,"s":4,"q":1}}]}"#;
        for frame in [reordered, escaped, spaced, extra] {
            let (kind, out, fast) = both(frame);
            assert!(fast.is_none(), "{frame}");
            assert_eq!(kind, Kind::Events, "{frame}");
            assert_eq!(out, vec![Delivered { id: (3, 1), t: 2, s: 4 }], "{frame}");
        }
    }

    #[test]
    fn control_frames_and_garbage_are_classified() {
        let mut out = vec![Delivered { id: (1, 1), t: 1, s: 1 }];
        assert_eq!(decode(br#"{"type":"subscribed","room":"r","resumed":false}"#, &mut out), Kind::Subscribed);
        assert!(out.is_empty());
        assert_eq!(decode(br#"{"type":"gap","room":"r"}"#, &mut out), Kind::Gap);
        assert_eq!(decode(br#"{"type":"pong"}"#, &mut out), Kind::Other);
        assert_eq!(decode(b"not json", &mut out), Kind::Other);
        // A truncated events frame is not half-read.
        assert_eq!(
            decode(br#"{"type":"events","room":"r","events":[{"id":"1-0","data":{"t":1,"s":1,"p":""}}"#, &mut out),
            Kind::Other
        );
        assert!(out.is_empty());
    }

    #[test]
    fn numbers_that_would_overflow_are_not_taken_by_the_fast_path() {
        let frame =
            r#"{"type":"events","room":"r","events":[{"id":"99999999999999999999-0","data":{"t":1,"s":1,"p":""}}]}"#;
        let (_, _, fast) = both(frame);
        assert!(fast.is_none());
        // Nor a repeated field, which serde refuses.
        let frame = r#"{"type":"events","room":"r","events":[{"id":"1-0","data":{"t":1,"s":1,"t":2}}]}"#;
        let (kind, _, fast) = both(frame);
        assert!(fast.is_none());
        assert_eq!(kind, Kind::Other);
        // Nor a leading zero, which JSON does not allow (serde refuses it).
        let frame = r#"{"type":"events","room":"r","events":[{"id":"1-0","data":{"t":01,"s":1,"p":""}}]}"#;
        let (kind, _, fast) = both(frame);
        assert!(fast.is_none());
        assert_eq!(kind, Kind::Other);
    }

    proptest! {
        /// Whatever the events, the fast path reads exactly what serde reads.
        #[test]
        fn fast_path_agrees_with_serde(
            room in "[a-z0-9:._-]{1,20}",
            events in proptest::collection::vec(
                (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), "[ -~]{0,12}", 0..6usize),
                1..6,
            ),
        ) {
            let body: Vec<String> = events
                .iter()
                .map(|(ms, seq, t, s, p, order)| {
                    let p = serde_json::to_string(p).unwrap_or_default();
                    let mut fields = [format!(r#""t":{t}"#), format!(r#""s":{s}"#), format!(r#""p":{p}"#)];
                    fields.rotate_left(order % 3);
                    if *order >= 3 {
                        fields.swap(0, 1);
                    }
                    format!(r#"{{"id":"{ms}-{seq}","data":{{{}}}}}"#, fields.join(","))
                })
                .collect();
            let frame = format!(r#"{{"type":"events","room":"{room}","events":[{}]}}"#, body.join(","));
            let mut fast = Vec::new();
            let took_fast = fast_events(frame.as_bytes(), &mut fast).is_some();
            let parsed: Frame = serde_json::from_str(&frame).unwrap();
            let slow: Vec<Delivered> =
                parsed.events.iter().map(|e| Delivered { id: parse_id(e.id), t: e.data.t, s: e.data.s }).collect();
            // Plain strings and numbers that fit 19 digits must take the fast path.
            let plain = events.iter().all(|(ms, _, t, s, p, _)| {
                [ms, t, s].iter().all(|n| **n < 10_000_000_000_000_000_000) && !p.contains(['"', '\\'])
            });
            prop_assert!(took_fast || !plain, "missed the fast path: {}", frame);
            if took_fast {
                prop_assert_eq!(&fast, &slow);
            }
            let mut out = Vec::new();
            prop_assert_eq!(decode(frame.as_bytes(), &mut out), Kind::Events);
            prop_assert_eq!(out, slow);
        }
    }
}
