//! `POST /rooms/{room}/events`: publish one event.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{error_response, room_access, store_error_response, Access};
use crate::app::App;
use crate::protocol::{data_to_json, msgpack_to_value, ErrorCode, IdempotencyKey, InvalidIdempotencyKey};
use crate::store::Appended;

/// Appends the body (JSON, or MessagePack with `Content-Type:
/// application/msgpack`) and answers `201 {"id": ID}`; 503 if the store did
/// not confirm it.
pub async fn create(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let room = match room_access(&app, &headers, &room, Access::Publish) {
        Ok(room) => room,
        Err(refusal) => return refusal.into_response(),
    };
    let msgpack = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/msgpack") || v.starts_with("application/x-msgpack"));
    let value: Result<Value, String> =
        if msgpack { msgpack_to_value(&body) } else { serde_json::from_slice(&body).map_err(|e| e.to_string()) };
    let value = match value {
        Ok(value) => value,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, &e),
    };
    let key = match headers
        .get("idempotency-key")
        .map(|v| v.to_str().map_err(|_| ()).and_then(|k| IdempotencyKey::parse(k).map_err(|_| ())))
    {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(())) => {
            let message = InvalidIdempotencyKey.to_string();
            return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadIdempotencyKey, &message);
        }
    };
    let data = data_to_json(&value);
    if data.len() > app.limits.max_payload {
        let message = format!("payload is {} bytes; the limit is {}", data.len(), app.limits.max_payload);
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, &message);
    }
    match app.store.append(&room, data, key.as_ref()).await {
        Ok(Appended::Stored(id)) => {
            metrics::counter!("roomcast_published_total", "via" => "http").increment(1);
            (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response()
        }
        // A repeat of an idempotent publish: the same body, nothing stored.
        Ok(Appended::Repeated(id)) => {
            metrics::counter!("roomcast_publish_repeats_total", "via" => "http").increment(1);
            (StatusCode::OK, Json(serde_json::json!({ "id": id }))).into_response()
        }
        Err(e) => store_error_response(&e),
    }
}
