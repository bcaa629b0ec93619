//! Moderation over HTTP: bans (`/rooms/{room}/bans`), room settings
//! (`/rooms/{room}/settings`), disconnects (`/users/{sub}/disconnect`), and
//! edits and deletes of events (`/rooms/{room}/events/{id}`).
//! Moderators are the API key, or a token whose `moderate` patterns cover
//! the room; disconnecting a user takes the API key.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{forbidden, room_and_grant, Refusal};
use crate::app::App;
use crate::auth::Grant;
use crate::moderation::{MAX_BAN, MAX_REASON, MAX_SLOW_MODE_MS};
use crate::protocol::{data_to_json, msgpack_to_value, ErrorCode, EventId, OpKind, RoomName};
use crate::store::RoomSettings;

/// A room the request's credential moderates.
pub struct Moderating(pub RoomName, pub Grant);

fn not_moderator(grant: &Grant) -> Refusal {
    let refusal = forbidden(grant, "this credential does not moderate this room");
    if matches!(grant, Grant::Anonymous) {
        return refusal;
    }
    Refusal::new(StatusCode::FORBIDDEN, ErrorCode::NotModerator, "this credential does not moderate this room")
}

impl FromRequestParts<Arc<App>> for Moderating {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Refusal> {
        let (room, grant) = room_and_grant(parts, app).await?;
        if grant.may_moderate(&room) {
            Ok(Moderating(room, grant))
        } else {
            Err(not_moderator(&grant))
        }
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, message)
}

/// A subject as a moderator names it: 1-256 bytes, no control characters.
fn subject(raw: &str) -> Result<&str, Refusal> {
    if raw.is_empty() || raw.len() > 256 || raw.chars().any(char::is_control) {
        return Err(bad("a subject is 1-256 bytes without control characters"));
    }
    Ok(raw)
}

/// The body of `POST /rooms/{room}/bans`.
#[derive(Deserialize)]
pub struct BanRequest {
    sub: String,
    seconds: u64,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))
}

/// Bans a subject from the room for `seconds`, on every node: its
/// subscriptions there end within a second, and it may neither subscribe
/// nor publish there until the ban ends.
pub async fn ban(
    State(app): State<Arc<App>>,
    Moderating(room, _): Moderating,
    bytes: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let request: BanRequest = body(&bytes)?;
    let sub = subject(&request.sub)?;
    if request.seconds == 0 || request.seconds > MAX_BAN.as_secs() {
        return Err(bad(format!("seconds is 1 to {}", MAX_BAN.as_secs())));
    }
    let moderation = app.sessions.publisher.moderation();
    let until_ms = moderation.ban(&room, sub, Duration::from_secs(request.seconds)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "room": room, "sub": sub, "until_ms": until_ms }))).into_response())
}

/// The room's current bans.
pub async fn bans(State(app): State<Arc<App>>, Moderating(room, _): Moderating) -> Result<Response, Refusal> {
    let bans = app.sessions.publisher.moderation().bans(&room).await?;
    Ok(Json(json!({ "room": room, "bans": bans })).into_response())
}

/// Lifts a subject's ban of the room; 404 when it had none.
pub async fn unban(
    State(app): State<Arc<App>>,
    Path((raw, sub)): Path<(String, String)>,
    parts: axum::http::HeaderMap,
) -> Result<Response, Refusal> {
    let room =
        RoomName::parse(&raw).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRoom, e.to_string()))?;
    let grant = app
        .config
        .auth
        .authenticate(&parts, None)
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, e.to_string()))?;
    if !grant.may_moderate(&room) {
        return Err(not_moderator(&grant));
    }
    let sub = subject(&sub)?;
    if app.sessions.publisher.moderation().unban(&room, sub).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Refusal::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such ban"))
    }
}

/// Replaces the room's settings (`{"slow_mode_ms": N}`, 0 to turn slow mode off).
pub async fn put_settings(
    State(app): State<Arc<App>>,
    Moderating(room, _): Moderating,
    bytes: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let settings: RoomSettings = body(&bytes)?;
    if settings.slow_mode_ms > MAX_SLOW_MODE_MS {
        return Err(bad(format!("slow_mode_ms is 0 to {MAX_SLOW_MODE_MS}")));
    }
    app.sessions.publisher.moderation().set_settings(&room, settings).await?;
    Ok(Json(json!({ "room": room, "slow_mode_ms": settings.slow_mode_ms })).into_response())
}

/// The room's settings.
pub async fn settings(State(app): State<Arc<App>>, Moderating(room, _): Moderating) -> Result<Response, Refusal> {
    let rules = app.sessions.publisher.moderation().rules(&room).await?;
    Ok(Json(json!({ "room": room, "slow_mode_ms": rules.settings.slow_mode_ms })).into_response())
}

/// The body of `POST /users/{sub}/disconnect` (optional).
#[derive(Deserialize, Default)]
pub struct DisconnectRequest {
    #[serde(default)]
    reason: String,
}

/// Closes every connection of a subject on every node (4403, with the
/// reason given); the API key only.
pub async fn disconnect(
    State(app): State<Arc<App>>,
    Path(sub): Path<String>,
    headers: axum::http::HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let grant = app
        .config
        .auth
        .authenticate(&headers, None)
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, e.to_string()))?;
    if !matches!(grant, Grant::ApiKey | Grant::Open) {
        return Err(forbidden(&grant, "disconnecting a user takes the API key"));
    }
    let sub = subject(&sub)?;
    let request: DisconnectRequest = if bytes.is_empty() { DisconnectRequest::default() } else { body(&bytes)? };
    if request.reason.len() > MAX_REASON || request.reason.chars().any(char::is_control) {
        return Err(bad(format!("a reason is at most {MAX_REASON} bytes without control characters")));
    }
    app.sessions.publisher.moderation().disconnect(sub, &request.reason).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "sub": sub }))).into_response())
}

/// The target of an edit or delete: `/rooms/{room}/events/{id}`, moderated
/// by the request's credential.
async fn target(
    app: &App,
    raw: &str,
    id: &str,
    headers: &axum::http::HeaderMap,
) -> Result<(RoomName, EventId), Refusal> {
    let room =
        RoomName::parse(raw).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRoom, e.to_string()))?;
    let grant = app
        .config
        .auth
        .authenticate(headers, None)
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, e.to_string()))?;
    if !grant.may_moderate(&room) {
        return Err(not_moderator(&grant));
    }
    let id =
        EventId::parse(id).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadEventId, e.to_string()))?;
    Ok((room, id))
}

fn changed(room: &RoomName, target: EventId, id: Option<EventId>) -> Result<Response, Refusal> {
    match id {
        Some(id) => Ok(Json(json!({ "room": room, "id": id, "target": target })).into_response()),
        None => Err(Refusal::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "the room keeps no such event")),
    }
}

/// Edits an event: the body (JSON, or MessagePack) is its new data. Appends
/// an `edit` operation to the room; `{"id": <the operation's>, "target"}`.
pub async fn edit(
    State(app): State<Arc<App>>,
    Path((raw, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let (room, target) = target(&app, &raw, &id, &headers).await?;
    let msgpack = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/msgpack") || v.starts_with("application/x-msgpack"));
    let value: serde_json::Value =
        if msgpack { msgpack_to_value(&bytes) } else { serde_json::from_slice(&bytes).map_err(|e| e.to_string()) }
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, e))?;
    let data = data_to_json(&value);
    let limit = app.sessions.limits.max_payload;
    if data.len() > limit {
        let message = format!("payload is {} bytes; the limit is {limit}", data.len());
        return Err(Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, message));
    }
    let id = app.sessions.publisher.moderation().change(&room, target, OpKind::Edit, data).await?;
    changed(&room, target, id)
}

/// Deletes an event: appends a `delete` operation; its data, and that of
/// its edits, is gone from every read and from the store.
pub async fn delete(
    State(app): State<Arc<App>>,
    Path((raw, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Refusal> {
    let (room, target) = target(&app, &raw, &id, &headers).await?;
    let id = app.sessions.publisher.moderation().change(&room, target, OpKind::Delete, bytes::Bytes::new()).await?;
    changed(&room, target, id)
}
