//! `GET /rooms/{room}`: last event ID and audience across nodes.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use super::{Readable, Refusal};
use crate::app::App;
use crate::store::{EventLog, LiveLog};

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
