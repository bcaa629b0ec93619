//! `POST /rooms/{room}/events`: publish one event.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use serde::Deserialize;

use super::{forbidden, Params, Publishing, Refusal};
use crate::app::App;
use crate::protocol::{msgpack_to_value, ErrorCode, EventName, IdempotencyKey, InvalidIdempotencyKey, StateKey};

/// Query parameters of a publish.
#[derive(Debug, Deserialize)]
pub struct PublishQuery {
    /// The state key the event becomes the value of.
    key: Option<String>,
    /// The event's name.
    name: Option<String>,
}
use crate::publish::{Publication, Published, Refused, Via};

/// Appends the body (JSON, or MessagePack with `Content-Type:
/// application/msgpack`) through the node's publish path and answers
/// `201 {"id": ID}` (`200` with the first ID for a repeated idempotency
/// key); 503 if the store did not confirm it. `?key=K` makes the event K's
/// current value in the room; `?name=N` names it.
pub async fn create(
    State(app): State<Arc<App>>,
    Publishing(room, grant): Publishing,
    Params(query): Params<PublishQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let state_key = match query.key.as_deref() {
        None => None,
        Some(k) => Some(
            StateKey::parse(k).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadKey, e.to_string()))?,
        ),
    };
    let name = match query.name.as_deref() {
        None => None,
        Some(n) => Some(
            EventName::parse(n)
                .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, e.to_string()))?,
        ),
    };
    let msgpack = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/msgpack") || v.starts_with("application/x-msgpack"));
    let value: Value =
        if msgpack { msgpack_to_value(&body) } else { serde_json::from_slice(&body).map_err(|e| e.to_string()) }
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, e))?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(raw) => Some(raw.to_str().ok().and_then(|k| IdempotencyKey::parse(k).ok()).ok_or_else(|| {
            Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadIdempotencyKey, InvalidIdempotencyKey.to_string())
        })?),
    };
    let publication = Publication {
        grant: &grant,
        anonymous: None,
        room: &room,
        data: value,
        idempotency: key.as_ref(),
        key: state_key.as_ref(),
        name: name.as_ref(),
        skip: None,
        via: Via::Http,
    };
    let published = app.sessions.publisher.publish(publication, None).await;
    match published {
        Ok(Published::Stored(id)) => Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response()),
        // A repeat of an idempotent publish: the same body, nothing stored.
        Ok(Published::Repeated(id)) => Ok((StatusCode::OK, Json(serde_json::json!({ "id": id }))).into_response()),
        Err(Refused::Forbidden(_)) if matches!(grant, crate::auth::Grant::Anonymous) => {
            Err(forbidden(&grant, "publishing needs the API key or a token"))
        }
        Err(Refused::Forbidden(_)) => Err(forbidden(&grant, "this credential does not cover this room")),
        Err(e @ Refused::TooLarge { .. }) => Err(Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, e.code(), e.to_string())),
        // The client learns the first publish's ID, as with a repeat.
        Err(Refused::Conflict(id)) => Ok((
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "error": ErrorCode::IdempotencyConflict.as_str(),
                "message": Refused::Conflict(id).to_string(),
                "id": id,
            })),
        )
            .into_response()),
        Err(e @ Refused::TooManyRooms(_)) => Err(Refusal::new(StatusCode::TOO_MANY_REQUESTS, e.code(), e.to_string())),
        Err(e @ Refused::TooManyKeys) => Err(Refusal::new(StatusCode::CONFLICT, e.code(), e.to_string())),
        Err(e @ (Refused::Banned { .. } | Refused::Rejected(_))) => {
            Err(Refusal::new(StatusCode::FORBIDDEN, e.code(), e.to_string()))
        }
        Err(e @ Refused::SlowMode { .. }) => {
            let retry = e.retry_after_ms();
            Err(Refusal::new(StatusCode::TOO_MANY_REQUESTS, e.code(), e.to_string()).retry_after(retry))
        }
        Err(e @ Refused::HookUnavailable(_)) => {
            Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string()))
        }
        Err(Refused::Store(e)) => Err(e.into()),
    }
}
