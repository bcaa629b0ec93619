//! The HTTP resources: one file per resource (the router in the crate root
//! assembles them with the streaming transports), the room extractors they
//! share, and the error shape in [`error`]. Handlers return
//! `Result<_, Refusal>`: a refusal is a response.

pub mod error;
pub mod health;
pub mod history;
pub mod moderation;
pub mod publish;
pub mod pusher;
pub mod rooms;
pub mod web;

pub use self::error::{error_response, Refusal};

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::auth::Grant;
use crate::protocol::{ErrorCode, RoomName};

/// A room named in the path, and the credential the request carries: the
/// first step of every room resource. A bad name is 400, a bad credential
/// 401.
async fn room_and_grant(parts: &mut Parts, app: &Arc<App>) -> Result<(RoomName, Grant), Refusal> {
    let Path(raw) = Path::<String>::from_request_parts(parts, app)
        .await
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRoom, e.body_text()))?;
    let room =
        RoomName::parse(&raw).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadRoom, e.to_string()))?;
    let grant = app
        .config
        .auth
        .authenticate(&parts.headers, None)
        .map_err(|e| Refusal::new(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, e.to_string()))?;
    Ok((room, grant))
}

/// A credential that does not cover what it asks: 401 without one (the
/// request may succeed with a credential), 403 with one.
pub fn forbidden(grant: &Grant, message: impl Into<String>) -> Refusal {
    let status = if matches!(grant, Grant::Anonymous) { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
    Refusal::new(status, ErrorCode::Forbidden, message)
}

/// Query parameters, refused (a repeated field, a bad value) with the JSON
/// error body every other refusal has, not the framework's plain text.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Refusal> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| Params(params))
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadFrame, e.body_text()))
    }
}

/// No resource at this path: a JSON 404.
pub async fn not_found() -> Refusal {
    Refusal::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such resource")
}

/// A resource asked with a method it does not take: a JSON 405.
pub async fn method_not_allowed() -> Refusal {
    Refusal::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, "this resource does not take this method")
}

/// A room the request may read (history, room info).
pub struct Readable(pub RoomName);

impl FromRequestParts<Arc<App>> for Readable {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Refusal> {
        let (room, grant) = room_and_grant(parts, app).await?;
        if grant.may_subscribe(&room) {
            Ok(Readable(room))
        } else {
            Err(forbidden(&grant, "this credential does not cover this room"))
        }
    }
}

/// A room the request publishes to, with its credential: what the
/// credential may do there is for the publish path to say.
pub struct Publishing(pub RoomName, pub Grant);

impl FromRequestParts<Arc<App>> for Publishing {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Refusal> {
        let (room, grant) = room_and_grant(parts, app).await?;
        Ok(Publishing(room, grant))
    }
}
