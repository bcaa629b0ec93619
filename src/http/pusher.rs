//! Pusher's HTTP API at `/apps/{id}/...`, signed as Pusher signs it, so
//! Pusher's server libraries work unchanged: trigger events (one or a
//! batch, excluding a socket), list channels, read a channel and its users,
//! and terminate a user's connections. Triggered events are stored like any
//! publish: IDs, history, resume and SSE for roomcast's subscribers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::auth::Grant;
use crate::config::PusherApp;
use crate::protocol::{EventName, RoomName};
use crate::publish::{Publication, Via};
use crate::pusher::{self, Kind};
use crate::store::{LiveLog, PresenceLog};

/// Channels one `events` request may name (Pusher's limit).
const MAX_CHANNELS: usize = 100;
/// Events one `batch_events` request may hold (Pusher's limit).
const MAX_BATCH: usize = 10;

/// A refusal of the Pusher API: a status and what is wrong.
#[derive(Debug)]
pub struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused(status, message.into())
}

/// A signed request's query parameters.
type Query = BTreeMap<String, String>;

/// The app of the path and the request's query, once its signature checks out.
fn signed<'a>(
    app: &'a App,
    id: &str,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<(&'a PusherApp, Query), Refused> {
    let Some(pusher_app) = pusher::by_id(&app.config.pusher_apps, id) else {
        return Err(refuse(StatusCode::NOT_FOUND, format!("no app {id:?}")));
    };
    let query: Query = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    let now = crate::clock::now_ms() / 1000;
    pusher::verify_request(pusher_app, method.as_str(), uri.path(), &query, body, now).map_err(|e| {
        metrics::counter!("roomcast_pusher_auth_refused_total").increment(1);
        refuse(StatusCode::UNAUTHORIZED, e.to_string())
    })?;
    Ok((pusher_app, query))
}

/// One event to trigger.
#[derive(Deserialize)]
struct Trigger {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

/// Stores `t` in each of its channels' rooms.
async fn trigger(app: &App, pusher_app: &PusherApp, t: Trigger) -> Result<(), Refused> {
    let channels: Vec<String> = t.channel.into_iter().chain(t.channels).collect();
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("name 1 to {MAX_CHANNELS} channels")));
    }
    let name = EventName::parse(&t.name).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    if let Some(socket) = t.socket_id.as_deref().filter(|s| !pusher::is_socket_id(s)) {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("invalid socket_id {socket:?}")));
    }
    let rooms: Vec<RoomName> = channels
        .iter()
        .map(|c| {
            pusher::room_of(pusher_app, c)
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("invalid channel {c:?}")))
        })
        .collect::<Result<_, _>>()?;
    let data = pusher::stored_data(&t.data);
    for room in &rooms {
        let publication = Publication {
            grant: &Grant::ApiKey,
            anonymous: None,
            room,
            data: data.clone(),
            idempotency: None,
            key: None,
            name: Some(&name),
            skip: t.socket_id.as_deref(),
            via: Via::Http,
        };
        app.sessions.publisher.publish(publication, None).await.map_err(|e| {
            let status = if e.code() == crate::protocol::ErrorCode::TooLarge {
                StatusCode::PAYLOAD_TOO_LARGE
            } else if e.code() == crate::protocol::ErrorCode::Unavailable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            };
            refuse(status, e.to_string())
        })?;
    }
    metrics::counter!("roomcast_pusher_triggers_total").increment(rooms.len() as u64);
    Ok(())
}

/// `POST /apps/{id}/events`: `{"name","data","channels"|"channel","socket_id"}`.
pub async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Refused> {
    let (pusher_app, _) = signed(&app, &id, &method, &uri, &body)?;
    let t: Trigger = serde_json::from_slice(&body).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    trigger(&app, pusher_app, t).await?;
    Ok(Json(json!({})).into_response())
}

/// `POST /apps/{id}/batch_events`: `{"batch":[{"channel","name","data","socket_id"}]}`.
pub async fn batch_events(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Refused> {
    #[derive(Deserialize)]
    struct Batch {
        batch: Vec<Trigger>,
    }
    let (pusher_app, _) = signed(&app, &id, &method, &uri, &body)?;
    let batch: Batch = serde_json::from_slice(&body).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    if batch.batch.len() > MAX_BATCH {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("at most {MAX_BATCH} events a batch")));
    }
    let n = batch.batch.len();
    for t in batch.batch {
        trigger(&app, pusher_app, t).await?;
    }
    Ok(Json(json!({ "batch": vec![json!({}); n] })).into_response())
}

fn unavailable(e: crate::store::StoreError) -> Refused {
    refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The request's `info` names `what`.
fn info_asks(query: &Query, what: &str) -> bool {
    query.get("info").is_some_and(|i| i.split(',').any(|x| x == what))
}

/// `GET /apps/{id}/channels?filter_by_prefix=P&info=user_count`: occupied channels.
pub async fn channels(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
) -> Result<Response, Refused> {
    let (pusher_app, query) = signed(&app, &id, &method, &uri, &[])?;
    let filter = query.get("filter_by_prefix").cloned().unwrap_or_default();
    let user_count = info_asks(&query, "user_count");
    if user_count && !filter.starts_with("presence-") {
        return Err(refuse(StatusCode::BAD_REQUEST, "info=user_count needs filter_by_prefix=presence-"));
    }
    let prefix = format!("{}{filter}", pusher_app.prefix);
    let rooms = PresenceLog::occupied_rooms(&*app.store, &prefix).await.map_err(unavailable)?;
    let mut out = serde_json::Map::new();
    for room in &rooms {
        let Some(channel) = pusher::channel_of(pusher_app, room) else { continue };
        let mut info = serde_json::Map::new();
        if user_count {
            let n = PresenceLog::member_count(&*app.store, room).await.map_err(unavailable)?;
            info.insert("user_count".into(), json!(n));
        }
        out.insert(channel.to_owned(), Value::Object(info));
    }
    Ok(Json(json!({ "channels": out })).into_response())
}

/// `GET /apps/{id}/channels/{name}?info=user_count,subscription_count`.
pub async fn channel(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Response, Refused> {
    let (pusher_app, query) = signed(&app, &id, &method, &uri, &[])?;
    let room =
        pusher::room_of(pusher_app, &name).ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "invalid channel name"))?;
    let subscriptions = LiveLog::audience(&*app.store, &room).await.map_err(unavailable)?;
    let mut body = json!({ "occupied": subscriptions > 0 });
    if info_asks(&query, "subscription_count") {
        body["subscription_count"] = json!(subscriptions);
    }
    if info_asks(&query, "user_count") {
        if Kind::of(&name) != Some(Kind::Presence) {
            return Err(refuse(StatusCode::BAD_REQUEST, "user_count is for presence channels"));
        }
        body["user_count"] = json!(PresenceLog::member_count(&*app.store, &room).await.map_err(unavailable)?);
    }
    Ok(Json(body).into_response())
}

/// `GET /apps/{id}/channels/{name}/users`: a presence channel's users.
pub async fn users(
    State(app): State<Arc<App>>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Response, Refused> {
    let (pusher_app, _) = signed(&app, &id, &method, &uri, &[])?;
    if Kind::of(&name) != Some(Kind::Presence) {
        return Err(refuse(StatusCode::BAD_REQUEST, "users are listed for presence channels"));
    }
    let room =
        pusher::room_of(pusher_app, &name).ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "invalid channel name"))?;
    let members = PresenceLog::members(&*app.store, &room).await.map_err(unavailable)?;
    let mut ids: Vec<String> = members.members.into_iter().map(|m| m.sub).collect();
    ids.sort();
    Ok(Json(json!({ "users": ids.into_iter().map(|id| json!({"id": id})).collect::<Vec<_>>() })).into_response())
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections`: closes every
/// connection of the user on every node (Pusher sockets with 4009).
pub async fn terminate(
    State(app): State<Arc<App>>,
    Path((id, user)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Refused> {
    signed(&app, &id, &method, &uri, &body)?;
    app.sessions.publisher.moderation().disconnect(&user, "terminated by the app").await.map_err(unavailable)?;
    Ok(Json(json!({})).into_response())
}
