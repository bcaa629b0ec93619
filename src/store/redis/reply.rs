//! Reading stream replies (RESP2/RESP3 shapes) into events.

use bytes::Bytes;
use fred::prelude::Value;
use tracing::warn;

use std::sync::Arc;

use crate::protocol::{Event, EventId, EventName, Meta, Op, OpKind, StateKey};
use crate::store::{Snapshot, StoreError};

fn protocol(what: &str) -> StoreError {
    StoreError::Protocol(what.to_owned())
}

/// A bulk string reply as bytes.
fn bytes_of(value: &Value) -> Option<Bytes> {
    match value {
        Value::Bytes(b) => Some(b.clone()),
        Value::String(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

/// An entry ID reply.
pub(crate) fn event_id(value: &Value) -> Result<EventId, StoreError> {
    let raw = bytes_of(value).ok_or_else(|| protocol("entry id is not a string"))?;
    let text = std::str::from_utf8(&raw).map_err(|_| protocol("entry id is not UTF-8"))?;
    EventId::parse(text).map_err(|e| protocol(&e.to_string()))
}

/// One `[id, [field, value, ...]]` entry.
fn entry(value: Value) -> Result<Event, StoreError> {
    let Value::Array(mut parts) = value else {
        return Err(protocol("entry is not an array"));
    };
    if parts.len() != 2 {
        return Err(protocol("entry is not [id, fields]"));
    }
    let fields = parts.pop().unwrap_or(Value::Null);
    let id = event_id(&parts[0])?;
    let fields = match fields {
        Value::Array(fields) => fields,
        Value::Map(map) => map.inner().into_iter().flat_map(|(k, v)| [Value::from(k), v]).collect(),
        _ => return Err(protocol("entry fields are not an array")),
    };
    let mut prev = None;
    let mut data = None;
    let mut key = None;
    let (mut kind, mut target) = (None, None);
    let (mut name, mut skip) = (None, None);
    for pair in fields.chunks(2) {
        let [field, value] = pair else { break };
        match bytes_of(field).as_deref() {
            Some(b"p") => prev = Some(event_id(value)?),
            Some(b"d") => data = bytes_of(value),
            Some(b"k") => key = bytes_of(value).and_then(|k| StateKey::parse(std::str::from_utf8(&k).ok()?).ok()),
            Some(b"o") => {
                kind = match bytes_of(value).as_deref() {
                    Some(b"edit") => Some(OpKind::Edit),
                    Some(b"delete") => Some(OpKind::Delete),
                    _ => return Err(protocol("entry names an unknown operation")),
                }
            }
            Some(b"t") => target = Some(event_id(value)?),
            Some(b"n") => {
                name = bytes_of(value).and_then(|n| EventName::parse(std::str::from_utf8(&n).ok()?).ok());
            }
            Some(b"s") => skip = bytes_of(value).and_then(|s| Some(Arc::from(std::str::from_utf8(&s).ok()?))),
            _ => {}
        }
    }
    let prev = prev.ok_or_else(|| protocol("entry has no predecessor field (not written by roomcast?)"))?;
    let op = match (kind, target) {
        (Some(kind), Some(target)) => Some(Op { kind, target }),
        (None, None) => None,
        _ => return Err(protocol("an operation entry without its target")),
    };
    // A delete carries no data.
    let data = if op.is_some_and(|o| o.kind == OpKind::Delete) { Bytes::new() } else { valid_json(id, data) };
    let meta = (name.is_some() || skip.is_some()).then(|| Arc::new(Meta { name, skip }));
    Ok(Event { id, prev, data, key, op, meta, ..Event::default() })
}

/// Stored data as read, or `null` for data that is not JSON (a foreign write).
fn valid_json(id: EventId, data: Option<Bytes>) -> Bytes {
    match data {
        Some(d) if serde_json::from_slice::<serde::de::IgnoredAny>(&d).is_ok() => d,
        _ => {
            warn!(id = %id, "stored event data is not JSON; delivering null");
            Bytes::from_static(b"null")
        }
    }
}

/// A state reply (see `STATE_LUA`): the position, then each key's value.
pub(crate) fn snapshot(value: Value) -> Result<Snapshot, StoreError> {
    let Value::Array(parts) = value else {
        return Err(protocol("state reply is not an array"));
    };
    let position = event_id(parts.first().ok_or_else(|| protocol("state reply is empty"))?)?;
    let mut values = Vec::new();
    for pair in parts[1..].chunks(2) {
        let [name, value] = pair else { break };
        let (Some(name), Some(value)) = (bytes_of(name), bytes_of(value)) else { continue };
        let Some(key) = std::str::from_utf8(&name).ok().and_then(|k| StateKey::parse(k).ok()) else { continue };
        let Some(space) = value.iter().position(|b| *b == b' ') else { continue };
        let id = std::str::from_utf8(&value[..space]).ok().and_then(|id| EventId::parse(id).ok());
        let Some(id) = id else { continue };
        let data = valid_json(id, Some(value.slice(space + 1..)));
        values.push((key.clone(), Event { id, prev: EventId::ZERO, data, key: Some(key), ..Event::default() }));
    }
    Ok(Snapshot { position, values })
}

/// An `XRANGE`/`XREVRANGE` reply.
pub(crate) fn entries(value: Value) -> Result<Vec<Event>, StoreError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.into_iter().map(entry).collect(),
        _ => Err(protocol("range reply is not an array")),
    }
}

/// An `XREAD` reply as `(key, raw entries)` pairs, for callers that read
/// other fields than events (signals, control).
pub(crate) fn xread_streams(value: Value) -> Result<Vec<(Bytes, Vec<Value>)>, StoreError> {
    let streams: Vec<(Value, Value)> = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let v = kv.pop().unwrap_or(Value::Null);
                    let k = kv.pop().unwrap_or(Value::Null);
                    Ok((k, v))
                }
                _ => Err(protocol("XREAD stream is not [key, entries]")),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(map) => map.inner().into_iter().map(|(k, v)| (Value::from(k), v)).collect(),
        _ => return Err(protocol("XREAD reply is not an array")),
    };
    streams
        .into_iter()
        .map(|(k, v)| {
            let key = bytes_of(&k).ok_or_else(|| protocol("XREAD key is not a string"))?;
            let items = match v {
                Value::Array(items) => items,
                Value::Null => Vec::new(),
                _ => return Err(protocol("XREAD entries are not an array")),
            };
            Ok((key, items))
        })
        .collect()
}

/// Parses raw XREAD entries of a room stream into events.
pub(crate) fn events_of(items: Vec<Value>) -> Result<Vec<Event>, StoreError> {
    items.into_iter().map(entry).collect()
}

/// The ID of a raw `[id, fields]` entry.
pub(crate) fn entry_id(item: &Value) -> Result<EventId, StoreError> {
    let Value::Array(parts) = item else {
        return Err(protocol("entry is not an array"));
    };
    parts.first().map(event_id).ok_or_else(|| protocol("entry has no id"))?
}

/// The ID and the value of field `field` of a raw entry (signals, control).
pub(crate) fn id_and_field(item: &Value, field: &[u8]) -> Result<(EventId, Option<Bytes>), StoreError> {
    let id = entry_id(item)?;
    let Value::Array(parts) = item else {
        return Err(protocol("entry is not an array"));
    };
    let mut found = None;
    if let Some(Value::Array(fields)) = parts.get(1) {
        for pair in fields.chunks(2) {
            if let [name, value] = pair {
                if bytes_of(name).as_deref() == Some(field) {
                    found = bytes_of(value);
                }
            }
        }
    }
    Ok((id, found))
}
