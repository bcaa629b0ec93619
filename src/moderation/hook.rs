//! The publish hook: before a client's publish is stored, the node asks the
//! application's backend (`--publish-hook URL`), which approves it, rewrites
//! its data, or refuses it.
//!
//! The request is `POST URL` with `{"room","sub","data","idempotency_key"}`,
//! signed like webhooks (`Roomcast-Signature: sha256=<hex HMAC-SHA256 of the
//! body>` with `--webhook-secret`). `200` with `{"data": V}` stores V (the
//! data as sent when `data` is absent); `403` with `{"reason": R}` refuses
//! with R; anything else, or no answer within the timeout, is the hook
//! failing: refused with `hook_unavailable` (fail closed), or stored as
//! sent with `--publish-hook-fail-open`. At most [`MAX_IN_FLIGHT`] calls
//! are in flight per node; the rest wait, within the same timeout.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::warn;

pub use crate::signing::signature;

/// Hook calls in flight at once, per node.
pub const MAX_IN_FLIGHT: usize = 256;
/// Longest refusal reason passed on to the client.
const MAX_REASON: usize = 200;

/// The hook's answer.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Store this data (the original, or the backend's rewrite).
    Store(Value),
    /// The backend refused, saying why.
    Refuse(String),
}

/// The hook did not answer usably (and the node fails closed).
#[derive(Debug, thiserror::Error)]
#[error("the publish hook is unavailable: {0}")]
pub struct Unavailable(pub String);

/// A configured publish hook.
pub struct PublishHook {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
    timeout: Duration,
    fail_open: bool,
    permits: Semaphore,
}

/// What the hook is asked.
#[derive(serde::Serialize)]
struct Ask<'a> {
    room: &'a str,
    sub: Option<&'a str>,
    data: &'a Value,
    idempotency_key: Option<&'a str>,
}

#[derive(Deserialize)]
struct Approval {
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct Refusal {
    #[serde(default)]
    reason: Option<String>,
}

impl PublishHook {
    /// A hook at `url`, signed with `secret` when given.
    pub fn new(url: String, secret: Option<String>, timeout: Duration, fail_open: bool) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("the publish hook's HTTP client: {e}"))?;
        if secret.is_none() {
            warn!("--publish-hook without --webhook-secret: hook requests are not signed");
        }
        Ok(PublishHook { client, url, secret, timeout, fail_open, permits: Semaphore::new(MAX_IN_FLIGHT) })
    }

    /// Asks the backend about one publish.
    pub async fn check(
        &self,
        room: &str,
        sub: Option<&str>,
        data: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Verdict, Unavailable> {
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.call(room, sub, data, idempotency_key)).await;
        metrics::histogram!("roomcast_publish_hook_seconds").record(started.elapsed().as_secs_f64());
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(Unavailable(format!("no answer within {} ms", self.timeout.as_millis()))),
        };
        let label = match &outcome {
            Ok(Verdict::Store(stored)) if stored == data => "allowed",
            Ok(Verdict::Store(_)) => "rewritten",
            Ok(Verdict::Refuse(_)) => "refused",
            Err(_) if self.fail_open => "failed_open",
            Err(_) => "unavailable",
        };
        metrics::counter!("roomcast_publish_hook_total", "outcome" => label).increment(1);
        match outcome {
            Err(e) if self.fail_open => {
                warn!(cause = %e, "publish hook failed; storing as sent (--publish-hook-fail-open)");
                Ok(Verdict::Store(data.clone()))
            }
            other => other,
        }
    }

    async fn call(
        &self,
        room: &str,
        sub: Option<&str>,
        data: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Verdict, Unavailable> {
        let _permit = self.permits.acquire().await.map_err(|e| Unavailable(e.to_string()))?;
        // Serialised straight from the publish's data: no copy of it.
        let ask = Ask { room, sub, data, idempotency_key };
        let body = serde_json::to_string(&ask).map_err(|e| Unavailable(e.to_string()))?;
        let mut request = self.client.post(&self.url).header("content-type", "application/json");
        if let Some(secret) = &self.secret {
            request = request.header("roomcast-signature", signature(secret, body.as_bytes()));
        }
        let response = request.body(body).send().await.map_err(|e| Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Unavailable(e.without_url().to_string()))?;
        match status.as_u16() {
            200 => {
                let approval: Approval = serde_json::from_slice(&bytes)
                    .map_err(|e| Unavailable(format!("a 200 whose body is not {{\"data\": ...}}: {e}")))?;
                Ok(Verdict::Store(approval.data.unwrap_or_else(|| data.clone())))
            }
            403 => {
                let reason = serde_json::from_slice::<Refusal>(&bytes).ok().and_then(|r| r.reason);
                let mut reason = reason.unwrap_or_else(|| "refused by the application".to_owned());
                if reason.len() > MAX_REASON {
                    let cut = (0..=MAX_REASON).rev().find(|i| reason.is_char_boundary(*i)).unwrap_or(0);
                    reason.truncate(cut);
                }
                Ok(Verdict::Refuse(reason))
            }
            other => Err(Unavailable(format!("the hook answered {other}"))),
        }
    }
}
