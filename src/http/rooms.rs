//! `GET /rooms/{room}`: last event ID and audience across nodes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{room_access, store_error_response, Access};
use crate::app::App;

/// `{"room", "last_event_id" (null without history), "audience"}`.
pub async fn info(State(app): State<Arc<App>>, Path(room): Path<String>, headers: HeaderMap) -> Response {
    let room = match room_access(&app, &headers, &room, Access::Read) {
        Ok(room) => room,
        Err(refusal) => return refusal.into_response(),
    };
    let (tail, audience) = tokio::join!(app.store.tail(&room), app.store.audience(&room));
    match (tail, audience) {
        (Ok(tail), Ok(audience)) => Json(serde_json::json!({
            "room": room,
            "last_event_id": (!tail.is_zero()).then_some(tail),
            "audience": audience,
        }))
        .into_response(),
        (Err(e), _) | (_, Err(e)) => store_error_response(&e),
    }
}
