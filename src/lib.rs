//! roomcast: live-event fanout over WebSocket and SSE, scaled out on Redis Streams.
//!
//! # Architecture
//! - [`protocol`]: wire frames, codecs (JSON, MessagePack, SSE), `EventId` and `RoomName`.
//! - [`store`]: the `Store` contract with its two implementations (embedded
//!   memory, Redis Streams) and the live [`store::feed`] that follows the
//!   rooms with local subscribers.
//! - [`hub`]: the node-local room registry; each batch is encoded once per
//!   format and shared by every subscriber's bounded outbox.
//! - [`session`]: one connection's rooms and cursors: resume, merge, catch-up.
//! - [`live`]: the live audience: pushed counts and reactions combined
//!   across nodes through the store's live log.
//! - [`transport`]: WebSocket and SSE adapters around a session.
//! - [`http`]: the REST resources (publish, history, room info, health) and
//!   the embedded browser files (client module, demo page).
//!
//! A publish (HTTP or WebSocket) is appended to the room's stream. Each
//! node's feed reads the rooms its hub holds and hands new batches to the
//! hub, which offers them to subscribers; sessions write them, dropping
//! what their cursor already covers and catching up from the store when a
//! batch does not continue their cursor. See `docs/protocol.md`.

pub mod app;
pub mod auth;
pub mod backoff;
pub mod budget;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod live;
pub mod metrics;
pub mod moderation;
pub mod presence;
pub mod protocol;
pub mod publish;
pub mod pusher;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod transport;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};

pub use crate::config::Config;
pub use crate::error::Error;

use crate::app::App;
use crate::auth::Origins;
use crate::http::{health, history, moderation as moderating, rooms, web};
use crate::hub::Hub;
use crate::live::Live;
use crate::moderation::hook::PublishHook;
use crate::moderation::Moderation;
use crate::presence::Presence;
use crate::publish::Publisher;
use crate::server::AcceptLimits;
use crate::session::{Context, SessionLimits};
use crate::store::coalesce::Coalescing;
use crate::store::feed::Feed;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::{Store, StoreOptions};
use crate::transport::{sse, ws};

/// Every route of a node (`/metrics` only when it has no address of its own).
fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.limits.max_message_bytes;
    let router = match app.config.node.metrics_listen {
        None => Router::new().route("/metrics", get(health::metrics)),
        Some(_) => Router::new(),
    };
    // Pages of other sites may read rooms with plain `fetch` and
    // `EventSource`: the room resources answer CORS for the allowed origins.
    let rooms = Router::new()
        .route("/rooms/{room}", get(rooms::info))
        .route("/rooms/{room}/events", get(history::list).post(http::publish::create))
        .route("/rooms/{room}/sse", get(sse::handler))
        .route("/rooms/{room}/state", get(rooms::state))
        .route("/rooms/{room}/presence", get(rooms::presence))
        .route("/app/{key}", get(crate::transport::pusher::handler))
        .route("/apps/{id}/events", axum::routing::post(crate::http::pusher::events))
        .route("/apps/{id}/batch_events", axum::routing::post(crate::http::pusher::batch_events))
        .route("/apps/{id}/channels", get(crate::http::pusher::channels))
        .route("/apps/{id}/channels/{name}", get(crate::http::pusher::channel))
        .route("/apps/{id}/channels/{name}/users", get(crate::http::pusher::users))
        .route("/apps/{id}/users/{user}/terminate_connections", axum::routing::post(crate::http::pusher::terminate))
        .route("/rooms/{room}/events/{id}", axum::routing::patch(moderating::edit).delete(moderating::delete))
        .route("/rooms/{room}/bans", get(moderating::bans).post(moderating::ban))
        .route("/rooms/{room}/bans/{sub}", axum::routing::delete(moderating::unban))
        .route("/rooms/{room}/settings", get(moderating::settings).put(moderating::put_settings))
        // Before the CORS layer, so a preflight (OPTIONS) is answered by it.
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(cors(app.config.origins.clone()));
    router
        .merge(rooms)
        .route("/", get(web::demo))
        .route("/client.js", get(web::client))
        .route("/ws", get(ws::handler))
        .route("/users/{sub}/disconnect", axum::routing::post(moderating::disconnect))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// CORS for the room resources: the allowed origins (any, on a node
/// without `--allowed-origins`), the methods and headers those resources
/// read. No cookies are involved, so credentials are never allowed.
fn cors(origins: Origins) -> CorsLayer {
    use axum::http::{header, HeaderName, Method};
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| origin.to_str().is_ok_and(|o| origins.allows_origin(o))))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("idempotency-key"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// The routes of the separate metrics address (`--metrics-listen`).
fn metrics_router(app: Arc<App>) -> Router {
    Router::new().route("/metrics", get(health::metrics)).route("/healthz", get(health::healthz)).with_state(app)
}

/// How long a starting node waits for its feed to reach the store before
/// it serves anyway (not ready until it does).
const FIRST_LOOK: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a node on an already-bound listener until `shutdown` is cancelled,
/// then closes every connection (1012) and returns within the grace period.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
    // First: what the store records while connecting must be kept.
    let recorder = metrics::install();
    let tracker = TaskTracker::new();
    let options = StoreOptions::new(&config.store, live::PRESENCE_TTL);
    let store: Arc<dyn Store> = match RedisOptions::from_settings(&config.redis) {
        Some(redis) => Arc::new(RedisStore::connect(redis, options).await?),
        None => {
            let memory = MemoryStore::new(options);
            memory.spawn_janitor(shutdown.clone(), &tracker);
            Arc::new(memory)
        }
    };
    // The feed's loop reaches the store by itself, and retries until it
    // does: meanwhile the node serves, not ready (subscribes and publishes
    // answer `store_unavailable`), so a Redis that is not up yet at deploy
    // time is no crash loop.
    let coalesce = Coalescing { base: config.node.coalesce, max: config.node.coalesce_max };
    let (feed, feed_loop) = Feed::new(store.clone(), store.change_source(&config.node_id)?, coalesce);
    let hub = Hub::new(feed);
    feed_loop.spawn(hub.clone(), shutdown.clone(), &tracker);
    // Usually the store answers at once: serve ready from the first request.
    if !hub.wait_live(FIRST_LOOK).await {
        warn!("the store does not answer yet; serving, not ready, until it does");
    }
    hub.spawn_heartbeat(config.node.heartbeat, shutdown.clone(), &tracker);
    let live = Arc::new(Live::default());
    let moderation = Arc::new(Moderation::new(store.clone(), hub.clone(), config.node_id.clone()));
    let parts = live::Parts {
        live: live.clone(),
        hub: hub.clone(),
        store: store.clone(),
        moderation: moderation.clone(),
        presence: Presence::new(
            config.node_id.clone(),
            store.clone(),
            hub.clone(),
            crate::store::presence::WebhookOptions::from_settings(&config),
            config.backend.presence_max_members,
            !config.pusher_apps.is_empty(),
        ),
        node: config.node_id.clone(),
    };
    live::spawn(parts, shutdown.clone(), &tracker);

    let mut sinks = Vec::new();
    if let Some(url) = &config.backend.webhook_url {
        sinks.push((url.clone(), webhooks::Shape::Roomcast { secret: config.backend.webhook_secret.clone() }));
    }
    if let Some(url) = &config.pusher_webhook_url {
        sinks.push((url.clone(), webhooks::Shape::Pusher { apps: config.pusher_apps.clone() }));
    }
    let names: Vec<&'static str> = sinks.iter().map(|(_, shape)| shape.sink()).collect();
    for (url, shape) in sinks {
        let settings = webhooks::WebhookSettings {
            url,
            shape,
            sinks: names.clone(),
            retry_for: config.backend.webhook_retry,
            options: crate::store::presence::WebhookOptions::from_settings(&config),
        };
        webhooks::spawn(settings, store.clone(), config.node_id.clone(), shutdown.clone(), &tracker)
            .map_err(Error::Setup)?;
    }

    if config.auth.is_open() {
        warn!("no --jwt-secret, --jwt-public-key or --api-key: this node is OPEN, anyone who can reach it may publish and subscribe");
    }
    let limits = SessionLimits::from(&config.limits);
    let grace = config.node.shutdown_grace;
    let backend = &config.backend;
    let hook = match &backend.publish_hook {
        Some(url) => Some(
            PublishHook::new(
                url.clone(),
                backend.webhook_secret.clone(),
                backend.publish_hook_timeout,
                backend.publish_hook_fail_open,
            )
            .map_err(Error::Setup)?,
        ),
        None => None,
    };
    let publisher =
        Publisher::new(store.clone(), limits.max_payload, config.limits.new_rooms_per_minute, moderation, hook);
    let sessions = Arc::new(Context { hub, log: store.clone(), live, publisher, limits });
    let app = Arc::new(App {
        config,
        store,
        sessions,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        metrics: recorder,
        connections: Arc::default(),
    });
    let accept = AcceptLimits {
        header_timeout: app.config.limits.header_timeout,
        max_pending: app.config.limits.max_pending_connections,
        grace,
    };
    if let Some(addr) = app.config.node.metrics_listen {
        let metrics_listener = TcpListener::bind(addr).await?;
        info!(addr = %metrics_listener.local_addr()?, "serving /metrics");
        let router = metrics_router(app.clone());
        let (shutdown, tracker) = (shutdown.clone(), tracker.clone());
        tracker.clone().spawn(async move { server::serve(metrics_listener, router, accept, shutdown, &tracker).await });
    }
    info!(addr = %listener.local_addr()?, "listening");
    server::serve(listener, router(app), accept, shutdown.clone(), &tracker).await;

    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(grace_secs = grace.as_secs(), "connections still open after the grace period; exiting anyway");
    }
    info!("stopped");
    Ok(())
}
