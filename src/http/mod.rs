//! The HTTP resources: one file per resource (the router in the crate root
//! assembles them with the streaming transports), the credential check
//! they share, and the error shape in [`error`].

pub mod error;
pub mod health;
pub mod history;
pub mod publish;
pub mod rooms;
pub mod web;

pub use self::error::{error_response, store_error_response, Refusal};

use axum::http::{HeaderMap, StatusCode};

use crate::app::App;
use crate::auth::Grant;
use crate::protocol::{ErrorCode, RoomName};

/// What a request wants to do with a room.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Read history, room info.
    Read,
    /// Publish.
    Publish,
}

/// Validates the room name in a path (400) and the request's credential for
/// `access` to it (401/403): the first step of every room resource.
pub fn room_access(app: &App, headers: &HeaderMap, raw: &str, access: Access) -> Result<RoomName, Refusal> {
    let room =
        RoomName::parse(raw).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRoom, e.to_string()))?;
    authorize(app, headers, &room, access)?;
    Ok(room)
}

/// Checks the request's credential (`Authorization: Bearer`) for `access`
/// to `room`: 401 without a valid one, 403 when it does not cover the room.
pub fn authorize(app: &App, headers: &HeaderMap, room: &RoomName, access: Access) -> Result<(), Refusal> {
    let grant = app
        .config
        .auth
        .authenticate(headers, None)
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, e.to_string()))?;
    let allowed = match access {
        Access::Read => grant.may_subscribe(room),
        Access::Publish => grant.may_publish(room),
    };
    if allowed {
        Ok(())
    } else if matches!(grant, Grant::Anonymous) {
        Err(Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, "publishing needs the API key or a token"))
    } else {
        Err(Refusal::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "this credential does not cover this room"))
    }
}
