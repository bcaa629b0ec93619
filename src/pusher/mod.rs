//! The words of Pusher's protocol (Channels protocol 7): apps, channel
//! kinds, auth and request signatures, and how a roomcast event reads as a
//! Pusher message. The WebSocket side is `transport::pusher`, the HTTP API
//! `http::pusher`. A Pusher channel is the roomcast room of the app's
//! prefix followed by the channel's name.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use serde_json::Value;

use crate::config::PusherApp;
use crate::protocol::RoomName;
use crate::signing::{constant_time_eq, hex, hmac_sha256_hex};

/// How long a signed HTTP API request stays valid (Pusher's window).
pub const REQUEST_WINDOW_SECS: u64 = 600;

/// Seconds of silence after which a client should ping (told at connect).
pub const ACTIVITY_TIMEOUT_SECS: u64 = 120;

/// What a channel's name makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: subscribing needs the app's signature.
    Private,
    /// `presence-`: signed, and its members are known.
    Presence,
}

impl Kind {
    /// The kind of channel `name`; `None` for kinds not supported
    /// (`private-encrypted-`, whose payloads only the clients can read).
    pub fn of(name: &str) -> Option<Kind> {
        if name.starts_with("private-encrypted-") {
            None
        } else if name.starts_with("private-") {
            Some(Kind::Private)
        } else if name.starts_with("presence-") {
            Some(Kind::Presence)
        } else {
            Some(Kind::Public)
        }
    }

    /// Whether subscribing needs a signature (and clients may send events).
    pub fn signed(self) -> bool {
        self != Kind::Public
    }
}

/// The app whose key is `key`.
pub fn by_key<'a>(apps: &'a [PusherApp], key: &str) -> Option<&'a PusherApp> {
    apps.iter().find(|a| a.key == key)
}

/// The app whose ID is `id`.
pub fn by_id<'a>(apps: &'a [PusherApp], id: &str) -> Option<&'a PusherApp> {
    apps.iter().find(|a| a.id == id)
}

/// The room of `app`'s channel `channel`.
pub fn room_of(app: &PusherApp, channel: &str) -> Option<RoomName> {
    RoomName::parse(&format!("{}{channel}", app.prefix)).ok()
}

/// The channel of `app` that `room` is, if it is one of the app's.
pub fn channel_of<'a>(app: &PusherApp, room: &'a RoomName) -> Option<&'a str> {
    room.as_str().strip_prefix(app.prefix.as_str()).filter(|c| !c.is_empty())
}

/// Lowercase hex of the HMAC-SHA256 of `text` with `secret`.
pub fn hmac_hex(secret: &str, text: &str) -> String {
    hmac_sha256_hex(secret, text.as_bytes())
}

fn same(a: &str, b: &str) -> bool {
    constant_time_eq(a.as_bytes(), b.as_bytes())
}

/// Whether `auth` (`<key>:<signature>`) signs a subscription of socket
/// `socket_id` to `channel` (with `channel_data` for presence channels).
pub fn channel_auth_ok(
    app: &PusherApp,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    let text = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    same(key, &app.key) && same(signature, &hmac_hex(&app.secret, &text))
}

/// A socket ID as Pusher's clients expect: two numbers joined by a dot.
pub fn socket_id() -> String {
    format!("{}.{}", rand::random_range(1..1_000_000_000u64), rand::random_range(1..1_000_000_000u64))
}

/// Whether `s` looks like a socket ID (`123.456`).
pub fn is_socket_id(s: &str) -> bool {
    s.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// A Pusher event's data string as stored data: its JSON value when the
/// string is JSON, else the string itself.
pub fn stored_data(data: &Value) -> Value {
    match data {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        other => other.clone(),
    }
}

/// Stored data (compact JSON) as a Pusher data string: a JSON string is
/// sent as the string it holds, anything else as its JSON text.
pub fn data_string(json: &[u8]) -> String {
    let text = String::from_utf8_lossy(json);
    if text.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(&text) {
            return s;
        }
    }
    text.into_owned()
}

/// One Pusher message: `{"event","channel","data"}` (data a string).
pub fn message(event: &str, channel: Option<&str>, data: &str) -> String {
    let mut m = serde_json::Map::new();
    m.insert("event".into(), Value::String(event.into()));
    if let Some(channel) = channel {
        m.insert("channel".into(), Value::String(channel.into()));
    }
    m.insert("data".into(), Value::String(data.into()));
    Value::Object(m).to_string()
}

/// Why a signed HTTP API request is refused.
#[derive(Debug, thiserror::Error)]
pub enum BadSignature {
    /// A required parameter is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The key is not the app's.
    #[error("unknown auth_key")]
    Key,
    /// Too old, or from the future.
    #[error("auth_timestamp is more than {REQUEST_WINDOW_SECS} s away from the server's clock")]
    Stale,
    /// The body is not what was signed.
    #[error("body_md5 does not match the body")]
    Body,
    /// The signature does not match.
    #[error("invalid signature")]
    Signature,
}

/// Checks a Pusher HTTP API request: `auth_key`, `auth_timestamp` within
/// [`REQUEST_WINDOW_SECS`], `auth_version`, `body_md5` (for a body) and
/// `auth_signature`, the HMAC-SHA256 of `METHOD\nPATH\nsorted query`.
pub fn verify_request(
    app: &PusherApp,
    method: &str,
    path: &str,
    query: &BTreeMap<String, String>,
    body: &[u8],
    now_secs: u64,
) -> Result<(), BadSignature> {
    let key = query.get("auth_key").ok_or(BadSignature::Missing("auth_key"))?;
    if !same(key, &app.key) {
        return Err(BadSignature::Key);
    }
    let at: u64 =
        query.get("auth_timestamp").and_then(|t| t.parse().ok()).ok_or(BadSignature::Missing("auth_timestamp"))?;
    if at.abs_diff(now_secs) > REQUEST_WINDOW_SECS {
        return Err(BadSignature::Stale);
    }
    query.get("auth_version").ok_or(BadSignature::Missing("auth_version"))?;
    if !body.is_empty() {
        let md5 = query.get("body_md5").ok_or(BadSignature::Missing("body_md5"))?;
        if !same(md5, &hex(&Md5::digest(body))) {
            return Err(BadSignature::Body);
        }
    }
    let signature = query.get("auth_signature").ok_or(BadSignature::Missing("auth_signature"))?;
    let signed: Vec<String> =
        query.iter().filter(|(k, _)| k.as_str() != "auth_signature").map(|(k, v)| format!("{k}={v}")).collect();
    let text = format!("{method}\n{path}\n{}", signed.join("&"));
    if same(signature, &hmac_hex(&app.secret, &text)) {
        Ok(())
    } else {
        Err(BadSignature::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp {
            id: "1".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
            prefix: "".into(),
        }
    }

    #[test]
    fn channel_signatures_match_pushers_documented_examples() {
        // Pusher's documentation: private channel auth.
        let auth = "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert!(channel_auth_ok(&app(), "1234.1234", "private-foobar", None, auth));
        assert!(!channel_auth_ok(&app(), "1234.1235", "private-foobar", None, auth));
        // Presence channel auth covers the channel data.
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80";
        assert!(channel_auth_ok(&app(), "1234.1234", "presence-foobar", Some(data), auth));
        assert!(!channel_auth_ok(&app(), "1234.1234", "presence-foobar", Some("{}"), auth));
    }

    #[test]
    fn requests_are_signed_over_method_path_and_sorted_query() {
        let app = app();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let mut query: BTreeMap<String, String> = [
            ("auth_key", app.key.as_str()),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let text = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        query.insert("auth_signature".into(), hmac_hex(&app.secret, text));
        assert!(verify_request(&app, "POST", "/apps/3/events", &query, body, 1353088179 + 10).is_ok());
        assert!(matches!(
            verify_request(&app, "POST", "/apps/3/events", &query, body, 1353088179 + 601),
            Err(BadSignature::Stale)
        ));
        assert!(matches!(
            verify_request(&app, "POST", "/apps/3/events", &query, b"{}", 1353088179),
            Err(BadSignature::Body)
        ));
        assert!(matches!(
            verify_request(&app, "POST", "/apps/4/events", &query, body, 1353088179),
            Err(BadSignature::Signature)
        ));
    }

    #[test]
    fn data_goes_both_ways() {
        assert_eq!(stored_data(&Value::String(r#"{"a":1}"#.into())), serde_json::json!({"a": 1}));
        assert_eq!(stored_data(&Value::String("hello".into())), Value::String("hello".into()));
        assert_eq!(data_string(br#""hello""#), "hello");
        assert_eq!(data_string(br#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(Kind::of("private-encrypted-x"), None);
        assert_eq!(Kind::of("presence-x"), Some(Kind::Presence));
        assert!(is_socket_id("123.456") && !is_socket_id("123") && !is_socket_id("a.1"));
    }
}
