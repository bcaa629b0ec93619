//! `GET /rooms/{room}`: last event ID and audience across nodes; and
//! `GET /rooms/{room}/state`: each state key's current value; and
//! `GET /rooms/{room}/presence`: who is in it across the deployment.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{Readable, Refusal};
use crate::app::App;
use crate::presence::listed;
use crate::protocol::json_room_state;
use crate::store::{EventLog, LiveLog, PresenceLog};

/// `{"room", "last_event_id" (null without history), "audience"}`.
pub async fn info(State(app): State<Arc<App>>, Readable(room): Readable) -> Result<Json<Value>, Refusal> {
    let (tail, audience) = tokio::join!(EventLog::tail(&*app.store, &room), LiveLog::audience(&*app.store, &room));
    let tail = tail?;
    Ok(Json(serde_json::json!({
        "room": room,
        "last_event_id": (!tail.is_zero()).then_some(tail),
        "audience": audience?,
    })))
}

/// `{"room", "last_event_id", "values": {K: {"id", "data"}}}`: the room's
/// state as of `last_event_id`, read from the store at one moment.
pub async fn state(State(app): State<Arc<App>>, Readable(room): Readable) -> Result<Response, Refusal> {
    let snapshot = EventLog::state(&*app.store, &room).await?;
    let body = json_room_state(&room, snapshot.position, snapshot.values.iter().map(|(_, e)| e));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `{"room", "members": [{"sub", "info"}...], "count"}`, with
/// `"members_truncated": true` past `--presence-max-members`.
pub async fn presence(State(app): State<Arc<App>>, Readable(room): Readable) -> Result<Json<Value>, Refusal> {
    let members = PresenceLog::members(&*app.store, &room).await?;
    let count = members.members.len() as u64;
    let max = app.config.backend.presence_max_members;
    let mut body = serde_json::json!({
        "room": room,
        "members": listed(members.members.iter().map(|m| (m.sub.as_str(), m.info.as_str())), max),
        "count": count,
    });
    if count > max as u64 {
        body["members_truncated"] = Value::Bool(true);
    }
    Ok(Json(body))
}
