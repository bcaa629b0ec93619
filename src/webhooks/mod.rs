//! Webhooks: the deployment tells the application's backend what happens
//! in its rooms (`room_occupied`, `room_vacated`, `member_joined`,
//! `member_left`), at least once each, in order per room.
//!
//! The events are recorded by the store as presence changes happen (see
//! `store::presence`), so they outlive the node that saw them. Every node
//! runs a sender; one at a time holds the store's delivery lease and sends
//! batches of up to [`BATCH`] events from the store's cursor, in order,
//! signed like the publish hook. A batch the receiver does not take (not
//! 2xx, or no answer within [`REQUEST_TIMEOUT`]) is sent again with backoff
//! until it is taken or its events are older than `--webhook-retry-secs`
//! (then they are dropped, counted and logged). When the holder dies its
//! lease lapses within [`LEASE`]; the next holder sends from the cursor, so
//! a batch in flight at the death is sent again: receivers deduplicate by
//! the events' `id`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::clock::now_ms;
use crate::config::PusherApp;
use crate::protocol::RoomName;
use crate::signing::signature;
use crate::store::presence::{WebhookEvent, WebhookOptions};
use crate::store::Store;

/// Events per request at most.
pub const BATCH: usize = 100;
/// How long a holder keeps the lease without renewing it.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a sender with nothing to send looks again.
const POLL: Duration = Duration::from_millis(250);
/// How long the receiver has to answer one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The shape a receiver expects.
#[derive(Clone, Debug)]
pub enum Shape {
    /// roomcast's: `{"events":[...]}`, signed with `Roomcast-Signature`
    /// when a secret is given.
    Roomcast {
        /// The signing secret.
        secret: Option<String>,
    },
    /// Pusher's: per app, `{"time_ms","events":[...]}` with `X-Pusher-Key`
    /// and `X-Pusher-Signature` (the app's secret).
    Pusher {
        /// The apps whose channels are reported.
        apps: Vec<PusherApp>,
    },
}

impl Shape {
    /// The sink's name in the store (its lease and cursor).
    pub fn sink(&self) -> &'static str {
        match self {
            Shape::Roomcast { .. } => "roomcast",
            Shape::Pusher { .. } => "pusher",
        }
    }
}

/// Where and how webhooks go.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// The receiver.
    pub url: String,
    /// The shape it expects.
    pub shape: Shape,
    /// Every sink of the deployment (events are trimmed once all took them).
    pub sinks: Vec<&'static str>,
    /// How long an undelivered event is retried.
    pub retry_for: Duration,
    /// What the store records.
    pub options: WebhookOptions,
}

/// Starts the node's webhook sender; it runs until `shutdown`.
pub fn spawn(
    settings: WebhookSettings,
    store: Arc<dyn Store>,
    node: String,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(4)
        .build()
        .map_err(|e| format!("the webhook client: {e}"))?;
    if matches!(settings.shape, Shape::Roomcast { secret: None }) {
        warn!("--webhook-url without --webhook-secret: webhooks are not signed");
    }
    let sender = Sender { settings, store, node, client };
    tracker.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = sender.run() => {}
        }
    });
    Ok(())
}

struct Sender {
    settings: WebhookSettings,
    store: Arc<dyn Store>,
    node: String,
    client: reqwest::Client,
}

/// What one delivery attempt came to.
enum Attempt {
    /// Nothing to send, or not this node's turn.
    Idle,
    /// A batch was taken by the receiver.
    Delivered,
    /// The receiver (or the store) failed.
    Failed,
}

impl Sender {
    async fn run(&self) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut holding = false;
        loop {
            match self.attempt(&mut holding).await {
                Attempt::Delivered => backoff.reset(),
                Attempt::Idle => {
                    backoff.reset();
                    tokio::time::sleep(POLL).await;
                }
                Attempt::Failed => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }

    async fn attempt(&self, holding: &mut bool) -> Attempt {
        let options = &self.settings.options;
        let sink = self.settings.shape.sink();
        let held = match self.store.webhook_lease(sink, &self.node, LEASE).await {
            Ok(held) => held,
            Err(e) => {
                warn!(cause = %e, "webhooks: the store does not answer");
                return Attempt::Failed;
            }
        };
        if held != *holding {
            info!(
                held,
                sink,
                "webhooks: this node {} the delivery lease",
                if held { "holds" } else { "no longer holds" }
            );
            *holding = held;
        }
        if !held {
            return Attempt::Idle;
        }
        // The sweep records room_vacated for every sink: the first sink's
        // holder runs it, not each.
        if self.settings.sinks.first() == Some(&sink) {
            if let Err(e) = self.store.vacate_due(options, now_ms()).await {
                warn!(cause = %e, "webhooks: could not look for vacated rooms");
            }
        }
        let (events, dropped) = match self.store.webhook_pending(sink, BATCH).await {
            Ok(pending) => pending,
            Err(e) => {
                warn!(cause = %e, "webhooks: could not read pending events");
                return Attempt::Failed;
            }
        };
        if dropped > 0 {
            warn!(dropped, "webhooks: undelivered events past --webhook-max-pending were dropped");
            metrics::counter!("roomcast_webhook_events_total", "outcome" => "dropped").increment(dropped);
        }
        let Some(last) = events.last().map(|e| e.id.clone()) else {
            return Attempt::Idle;
        };
        let expired = now_ms().saturating_sub(self.settings.retry_for.as_millis() as u64);
        let (stale, fresh): (Vec<WebhookEvent>, Vec<WebhookEvent>) =
            events.into_iter().partition(|e| e.time_ms < expired);
        if !stale.is_empty() {
            warn!(events = stale.len(), "webhooks: events older than --webhook-retry-secs were dropped");
            metrics::counter!("roomcast_webhook_events_total", "outcome" => "expired").increment(stale.len() as u64);
        }
        if !fresh.is_empty() {
            if let Err(e) = self.send(&fresh).await {
                metrics::counter!("roomcast_webhook_requests_total", "outcome" => "failed").increment(1);
                warn!(cause = %e, events = fresh.len(), "webhooks: the receiver did not take a batch; sending it again");
                return Attempt::Failed;
            }
            metrics::counter!("roomcast_webhook_requests_total", "outcome" => "ok").increment(1);
            metrics::counter!("roomcast_webhook_events_total", "outcome" => "delivered").increment(fresh.len() as u64);
            let now = now_ms();
            for event in &fresh {
                let delay = now.saturating_sub(event.time_ms) as f64 / 1e3;
                metrics::histogram!("roomcast_webhook_delay_seconds").record(delay);
            }
        }
        match self.store.webhook_delivered(sink, &self.settings.sinks, &self.node, &last).await {
            Ok(true) => Attempt::Delivered,
            Ok(false) => {
                // Another node took the lease meanwhile: it sends from the
                // cursor, so this batch may arrive twice (ids tell).
                *holding = false;
                Attempt::Idle
            }
            Err(e) => {
                warn!(cause = %e, "webhooks: could not record a delivery; the batch may be sent again");
                Attempt::Failed
            }
        }
    }

    async fn send(&self, events: &[WebhookEvent]) -> Result<(), String> {
        match &self.settings.shape {
            Shape::Roomcast { secret } => {
                let events: Vec<&WebhookEvent> = events.iter().filter(|e| e.client.is_none()).collect();
                if events.is_empty() {
                    return Ok(());
                }
                let body = json!({ "events": events }).to_string();
                let signature = secret.as_ref().map(|s| ("roomcast-signature", signature(s, body.as_bytes())));
                self.post(body, signature.into_iter().collect()).await
            }
            Shape::Pusher { apps } => {
                for app in apps {
                    let events: Vec<Value> = events.iter().filter_map(|e| pusher_event(app, e)).collect();
                    if events.is_empty() {
                        continue;
                    }
                    let body = json!({ "time_ms": now_ms(), "events": events }).to_string();
                    let headers = vec![
                        ("x-pusher-key", app.key.clone()),
                        ("x-pusher-signature", crate::pusher::hmac_hex(&app.secret, &body)),
                    ];
                    self.post(body, headers).await?;
                }
                Ok(())
            }
        }
    }

    async fn post(&self, body: String, headers: Vec<(&'static str, String)>) -> Result<(), String> {
        let mut request = self.client.post(&self.settings.url).header("content-type", "application/json").body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Drain the body so the connection is reused.
        let _ = response.bytes().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

/// An event as Pusher's webhooks name it, for `app`'s channels (member
/// events only for presence channels, as Pusher sends them).
fn pusher_event(app: &PusherApp, e: &WebhookEvent) -> Option<Value> {
    let room = RoomName::parse(&e.room).ok()?;
    let channel = crate::pusher::channel_of(app, &room)?;
    let presence = channel.starts_with("presence-");
    Some(match (e.name.as_str(), &e.client) {
        ("room_occupied", _) => json!({"name": "channel_occupied", "channel": channel}),
        ("room_vacated", _) => json!({"name": "channel_vacated", "channel": channel}),
        ("member_joined", _) if presence => json!({"name": "member_added", "channel": channel, "user_id": e.sub}),
        ("member_left", _) if presence => json!({"name": "member_removed", "channel": channel, "user_id": e.sub}),
        ("client_event", Some(c)) => {
            let mut v = json!({"name": "client_event", "channel": channel, "event": c.event, "data": c.data, "socket_id": c.socket_id});
            if let Some(user) = &c.user_id {
                v["user_id"] = json!(user);
            }
            v
        }
        _ => return None,
    })
}
