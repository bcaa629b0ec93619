//! Encoding server frames and decoding client frames, per wire format.
//!
//! Events are stored as compact JSON. A JSON `events` frame is assembled by
//! splicing those bytes in (room names and IDs need no escaping); MessagePack
//! frames transcode each payload into the equivalent MessagePack value, so
//! both formats carry the same values.

use std::fmt::Write as _;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frames::{RawClientFrame, RefOnly};
use super::{
    ClientFrame, ErrorCode, Event, EventId, EventName, FrameError, OpKind, RoomName, ServerFrame, Shown, StateKey,
};

/// Deepest nesting accepted in a client's MessagePack frame (serde_json's
/// own limit for JSON is 128 as well).
const MAX_MSGPACK_DEPTH: usize = 128;

/// The subprotocol that selects MessagePack frames.
pub const MSGPACK_SUBPROTOCOL: &str = "roomcast.v1.msgpack";

/// A WebSocket connection's wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON in text frames (the default).
    Json,
    /// MessagePack (maps with named fields) in binary frames.
    MsgPack,
}

/// One encoded WebSocket frame, cheap to clone (reference-counted bytes).
#[derive(Clone, Debug)]
pub enum Wire {
    /// A text frame (JSON).
    Text(Utf8Bytes),
    /// A binary frame (MessagePack).
    Binary(Bytes),
}

impl Wire {
    /// Payload size in bytes, for outbox accounting.
    pub fn len(&self) -> usize {
        match self {
            Wire::Text(t) => t.len(),
            Wire::Binary(b) => b.len(),
        }
    }

    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes one `events` frame for `room`.
pub fn encode_events(format: Format, room: &RoomName, events: &[Event]) -> Wire {
    match format {
        Format::Json => Wire::Text(Utf8Bytes::from(json_events(room, events))),
        Format::MsgPack => Wire::Binary(msgpack_events(room, events)),
    }
}

/// Encodes a control frame (everything but `events`).
pub fn encode_frame(format: Format, frame: &ServerFrame) -> Wire {
    match format {
        Format::Json => Wire::Text(Utf8Bytes::from(
            // Serialising these plain structs cannot fail.
            serde_json::to_string(frame).unwrap_or_default(),
        )),
        Format::MsgPack => Wire::Binary(Bytes::from(rmp_serde::to_vec_named(frame).unwrap_or_default())),
    }
}

/// Decodes one client frame. Every failure carries the precise error code.
pub fn decode_client(format: Format, bytes: &[u8]) -> Result<ClientFrame, FrameError> {
    let raw: Result<RawClientFrame, String> = match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Format::MsgPack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            de.set_max_depth(MAX_MSGPACK_DEPTH);
            serde::Deserialize::deserialize(&mut de).map_err(|e: rmp_serde::decode::Error| e.to_string())
        }
    };
    match raw {
        Ok(raw) => raw.validate(),
        Err(message) => {
            let reference = match format {
                Format::Json => serde_json::from_slice::<RefOnly>(bytes).ok(),
                Format::MsgPack => rmp_serde::from_slice::<RefOnly>(bytes).ok(),
            }
            .and_then(|r| r.reference);
            Err(FrameError::new(ErrorCode::BadFrame, message, reference))
        }
    }
}

/// Serialises a published value to the compact JSON kept in the store.
pub fn data_to_json(data: &Value) -> Bytes {
    // A `Value` always serialises.
    Bytes::from(serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec()))
}

/// Reads a MessagePack HTTP body into a JSON value.
pub fn msgpack_to_value(bytes: &[u8]) -> Result<Value, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_MSGPACK_DEPTH);
    serde::Deserialize::deserialize(&mut de).map_err(|e: rmp_serde::decode::Error| e.to_string())
}

/// The stored JSON of an event as text; stored data is validated on entry,
/// so the fallback only guards against foreign writes to the store.
fn data_text(event: &Event) -> &str {
    std::str::from_utf8(&event.data).unwrap_or("null")
}

fn json_events(room: &RoomName, events: &[Event]) -> String {
    let mut s = String::with_capacity(48 + room.as_str().len() + json_size(events));
    s.push_str(r#"{"type":"events","room":""#);
    s.push_str(room.as_str());
    s.push_str(r#"","events":"#);
    push_json_events(&mut s, events);
    s.push('}');
    s
}

/// The body of `GET /rooms/{room}/events`: `{"room","events","gap","more"}`.
pub fn json_history(room: &RoomName, events: &[Event], gap: bool, more: bool) -> String {
    let mut s = String::with_capacity(64 + room.as_str().len() + json_size(events));
    s.push_str(r#"{"room":""#);
    s.push_str(room.as_str());
    s.push_str(r#"","events":"#);
    push_json_events(&mut s, events);
    let _ = write!(s, r#","gap":{gap},"more":{more}}}"#);
    s
}

fn json_size(events: &[Event]) -> usize {
    events.iter().map(|e| e.data.len() + 48 + e.key.as_ref().map_or(0, |k| k.as_str().len() + 10)).sum()
}

/// A key as a JSON string (keys hold no control characters, but may hold
/// quotes and backslashes).
fn push_json_key(s: &mut String, key: &StateKey) {
    s.push_str(&serde_json::to_string(key.as_str()).unwrap_or_else(|_| "\"\"".into()));
}

/// Whether an event carries data on the wire: not a delete, nor anything deleted.
fn has_data(event: &Event) -> bool {
    event.shown != Shown::Deleted && !event.op.is_some_and(|op| op.kind == OpKind::Delete)
}

/// Appends `{"id":"..","key":"..","name":"..","data":..}` (`key` only for a
/// keyed event, `name` for a named one); an operation also names `op` and `target`; a moderated event
/// says `edited` or `deleted` (a deleted one has no `data`).
fn push_json_event(s: &mut String, event: &Event) {
    s.push_str(r#"{"id":""#);
    let _ = write!(s, "{}", event.id);
    s.push('"');
    if let Some(key) = &event.key {
        s.push_str(r#","key":"#);
        push_json_key(s, key);
    }
    if let Some(name) = event.name() {
        s.push_str(r#","name":"#);
        // Names may hold anything printable: escaped like any JSON string.
        s.push_str(&serde_json::to_string(name.as_str()).unwrap_or_else(|_| "null".into()));
    }
    if let Some(op) = &event.op {
        let _ = write!(s, r#","op":"{}","target":"{}""#, op.kind.as_str(), op.target);
    }
    match event.shown {
        Shown::Original => {}
        Shown::Edited => s.push_str(r#","edited":true"#),
        Shown::Deleted => s.push_str(r#","deleted":true"#),
    }
    if has_data(event) {
        s.push_str(r#","data":"#);
        s.push_str(data_text(event));
    }
    s.push('}');
}

/// Appends `[{"id":"..","data":..},...]`.
fn push_json_events(s: &mut String, events: &[Event]) {
    s.push('[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_json_event(s, event);
    }
    s.push(']');
}

/// Appends `{"K":{"id":"..","data":..},...}` for keyed events.
fn push_json_values<'a>(s: &mut String, values: impl Iterator<Item = &'a Event>) {
    s.push('{');
    let mut first = true;
    for event in values {
        let Some(key) = &event.key else { continue };
        if !first {
            s.push(',');
        }
        first = false;
        push_json_key(s, key);
        let _ = write!(s, r#":{{"id":"{}","data":{}}}"#, event.id, data_text(event));
    }
    s.push('}');
}

/// A room's current state as `{"room","last_event_id","values"}` (the body
/// of `GET /rooms/{room}/state`), or with `"type":"state"` first, the
/// WebSocket frame.
fn json_state<'a>(frame: bool, room: &RoomName, position: EventId, values: impl Iterator<Item = &'a Event>) -> String {
    let mut s = String::with_capacity(256);
    if frame {
        s.push_str(r#"{"type":"state","room":""#);
    } else {
        s.push_str(r#"{"room":""#);
    }
    s.push_str(room.as_str());
    let _ = write!(s, r#"","last_event_id":"{position}","values":"#);
    push_json_values(&mut s, values);
    s.push('}');
    s
}

/// The body of `GET /rooms/{room}/state`.
pub fn json_room_state<'a>(room: &RoomName, position: EventId, values: impl Iterator<Item = &'a Event>) -> String {
    json_state(false, room, position, values)
}

#[derive(Serialize)]
struct MsgPackValue {
    id: EventId,
    data: Value,
}

#[derive(Serialize)]
struct MsgPackState<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    last_event_id: EventId,
    values: std::collections::BTreeMap<&'a str, MsgPackValue>,
}

/// Encodes one `state` frame: each key's current value as of `position`.
pub fn encode_state<'a>(
    format: Format,
    room: &RoomName,
    position: EventId,
    values: impl Iterator<Item = &'a Event>,
) -> Wire {
    match format {
        Format::Json => Wire::Text(Utf8Bytes::from(json_state(true, room, position, values))),
        Format::MsgPack => {
            let frame = MsgPackState {
                kind: "state",
                room: room.as_str(),
                last_event_id: position,
                values: values
                    .filter_map(|e| {
                        let key = e.key.as_ref()?;
                        let data = serde_json::from_slice(&e.data).unwrap_or(Value::Null);
                        Some((key.as_str(), MsgPackValue { id: e.id, data }))
                    })
                    .collect(),
            };
            Wire::Binary(Bytes::from(rmp_serde::to_vec_named(&frame).unwrap_or_default()))
        }
    }
}

/// Encodes a state as a Server-Sent Event named `state`.
pub fn sse_state<'a>(position: EventId, values: impl Iterator<Item = &'a Event>) -> Bytes {
    let mut s = String::with_capacity(256);
    let _ = write!(s, r#"event: state{}data: {{"last_event_id":"{position}","values":"#, '\n');
    push_json_values(&mut s, values);
    s.push_str("}\n\n");
    Bytes::from(s)
}

#[derive(Serialize)]
struct MsgPackEvents<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    events: Vec<MsgPackEvent<'a>>,
}

#[derive(Serialize)]
struct MsgPackEvent<'a> {
    id: EventId,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<EventId>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    edited: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

fn msgpack_events(room: &RoomName, events: &[Event]) -> Bytes {
    let frame = MsgPackEvents {
        kind: "events",
        room: room.as_str(),
        events: events
            .iter()
            .map(|e| MsgPackEvent {
                id: e.id,
                key: e.key.as_ref().map(StateKey::as_str),
                name: e.name().map(EventName::as_str),
                op: e.op.map(|op| op.kind.as_str()),
                target: e.op.map(|op| op.target),
                edited: e.shown == Shown::Edited,
                deleted: e.shown == Shown::Deleted,
                data: has_data(e).then(|| serde_json::from_slice(&e.data).unwrap_or(Value::Null)),
            })
            .collect(),
    };
    Bytes::from(rmp_serde::to_vec_named(&frame).unwrap_or_default())
}

/// Encodes events as Server-Sent Events: one `id:`/`data:` block each.
pub fn sse_events(events: &[Event]) -> Bytes {
    let payload: usize = events.iter().map(|e| e.data.len() + 40).sum();
    let mut s = String::with_capacity(payload);
    for event in events {
        // Stored JSON is compact (no raw newlines), so one `data:` line holds
        // it. Operations and deleted events are named events of their own,
        // so a plain `onmessage` sees only messages.
        let _ = writeln!(s, "id: {}", event.id);
        match (event.op, event.shown) {
            (Some(op), _) => {
                let _ = write!(s, "event: {}\ndata: {{\"target\":\"{}\"", op.kind.as_str(), op.target);
                if has_data(event) {
                    let _ = write!(s, ",\"data\":{}", data_text(event));
                }
                s.push_str("}\n\n");
            }
            (None, Shown::Deleted) => s.push_str("event: deleted\ndata: {}\n\n"),
            (None, _) => {
                let _ = write!(s, "data: {}\n\n", data_text(event));
            }
        }
    }
    Bytes::from(s)
}

/// Encodes a gap notice as a Server-Sent Event named `gap`.
pub fn sse_gap(after: EventId) -> Bytes {
    Bytes::from(format!("event: gap\ndata: {{\"after\":\"{after}\"}}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ms: u64, data: &str) -> Event {
        Event { id: EventId::new(ms, 0), prev: EventId::ZERO, data: Bytes::from(data.to_owned()), ..Event::default() }
    }

    #[test]
    fn operations_and_moderated_events_in_every_format() {
        use crate::protocol::{Op, OpKind, Shown};
        let room = RoomName::parse("r").unwrap();
        let target = EventId::new(1, 0);
        let events = vec![
            Event { shown: Shown::Edited, ..ev(1, r#"{"t":"new"}"#) },
            Event { shown: Shown::Deleted, data: Bytes::new(), ..ev(2, "") },
            Event { op: Some(Op { kind: OpKind::Edit, target }), ..ev(3, r#"{"t":"new"}"#) },
            Event {
                op: Some(Op { kind: OpKind::Delete, target: EventId::new(2, 0) }),
                data: Bytes::new(),
                ..ev(4, "")
            },
        ];
        let Wire::Text(json) = encode_events(Format::Json, &room, &events) else { panic!() };
        let json: Value = serde_json::from_str(json.as_str()).unwrap();
        let expected = serde_json::json!([
            {"id": "1-0", "edited": true, "data": {"t": "new"}},
            {"id": "2-0", "deleted": true},
            {"id": "3-0", "op": "edit", "target": "1-0", "data": {"t": "new"}},
            {"id": "4-0", "op": "delete", "target": "2-0"},
        ]);
        assert_eq!(json["events"], expected);
        let Wire::Binary(pack) = encode_events(Format::MsgPack, &room, &events) else { panic!() };
        let pack: Value = rmp_serde::from_slice(&pack).unwrap();
        assert_eq!(pack["events"], expected, "MessagePack carries the same values");
        let sse = String::from_utf8(sse_events(&events).to_vec()).unwrap();
        assert_eq!(
            sse,
            "id: 1-0\ndata: {\"t\":\"new\"}\n\nid: 2-0\nevent: deleted\ndata: {}\n\n\
             id: 3-0\nevent: edit\ndata: {\"target\":\"1-0\",\"data\":{\"t\":\"new\"}}\n\n\
             id: 4-0\nevent: delete\ndata: {\"target\":\"2-0\"}\n\n"
        );
    }

    #[test]
    fn json_events_frame_is_valid_json() {
        let room = RoomName::parse("r1").unwrap();
        let Wire::Text(t) = encode_events(Format::Json, &room, &[ev(1, r#"{"a":[1,"x"]}"#), ev(2, "null")]) else {
            panic!("json must be text")
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["type"], "events");
        assert_eq!(v["events"][0]["id"], "1-0");
        assert_eq!(v["events"][0]["data"]["a"][1], "x");
        assert_eq!(v["events"][1]["data"], Value::Null);
    }

    #[test]
    fn msgpack_events_carry_the_same_values() {
        let room = RoomName::parse("r1").unwrap();
        let Wire::Binary(b) = encode_events(Format::MsgPack, &room, &[ev(7, r#"{"n":1.5,"s":"é"}"#)]) else {
            panic!("msgpack must be binary")
        };
        let v: Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(v["events"][0]["id"], "7-0");
        assert_eq!(v["events"][0]["data"]["n"], 1.5);
        assert_eq!(v["events"][0]["data"]["s"], "é");
    }

    #[test]
    fn decoding_gives_precise_codes() {
        let code = |s: &str| decode_client(Format::Json, s.as_bytes()).unwrap_err().code;
        assert_eq!(code("{"), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"subscribe","room":"a b"}"#), ErrorCode::BadRoom);
        assert_eq!(code(r#"{"type":"subscribe","room":"a","last_event_id":"x"}"#), ErrorCode::BadEventId);
        assert_eq!(code(r#"{"type":"publish","room":"a"}"#), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":"subscribe","room":5}"#), ErrorCode::BadFrame);
        let deep = "[".repeat(500) + &"]".repeat(500);
        assert_eq!(code(&format!(r#"{{"type":"publish","room":"a","data":{deep}}}"#)), ErrorCode::BadFrame);
    }

    #[test]
    fn ref_is_echoed_even_when_the_frame_is_refused() {
        let e = decode_client(Format::Json, br#"{"type":"publish","room":"no way","ref":9}"#).unwrap_err();
        assert_eq!(e.reference, Some(9));
        let e = decode_client(Format::Json, br#"{"type":7,"ref":4}"#).unwrap_err();
        assert_eq!(e.reference, Some(4));
    }

    #[test]
    fn null_data_is_a_valid_publish() {
        let f = decode_client(Format::Json, br#"{"type":"publish","room":"a","data":null}"#).unwrap();
        assert!(matches!(f, ClientFrame::Publish { data: Value::Null, .. }));
    }

    #[test]
    fn floats_survive_the_trip_through_stored_json_exactly() {
        // Found by fuzzing: without exact float parsing, a MessagePack
        // subscriber received this value one ULP off what was published.
        let published = 4.6022780497643396e-92_f64;
        let frame =
            rmp_serde::to_vec_named(&serde_json::json!({"type":"publish","room":"r","data":published})).unwrap();
        let ClientFrame::Publish { data, .. } = decode_client(Format::MsgPack, &frame).unwrap() else { panic!() };
        let stored = data_to_json(&data);
        let event = Event { id: EventId::new(1, 0), prev: EventId::ZERO, data: stored, ..Event::default() };
        let Wire::Binary(b) = encode_events(Format::MsgPack, &RoomName::parse("r").unwrap(), &[event]) else {
            panic!()
        };
        let delivered: Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(delivered["events"][0]["data"].as_f64().unwrap().to_bits(), published.to_bits());
    }

    #[test]
    fn msgpack_client_frames_decode() {
        let bytes =
            rmp_serde::to_vec_named(&serde_json::json!({"type":"publish","room":"a","data":{"k":[1,2]},"ref":3}))
                .unwrap();
        let f = decode_client(Format::MsgPack, &bytes).unwrap();
        assert_eq!(
            f,
            ClientFrame::Publish {
                room: RoomName::parse("a").unwrap(),
                data: serde_json::json!({"k":[1,2]}),
                reference: Some(3),
                idempotency_key: None,
                key: None,
                name: None,
            }
        );
        assert_eq!(decode_client(Format::MsgPack, &[0xc1, 0xff]).unwrap_err().code, ErrorCode::BadFrame);
    }
}
