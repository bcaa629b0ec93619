//! Command line and environment, validated before anything is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::auth::{Auth, JwtKey, Origins};

/// Largest accepted `--threads`.
const MAX_THREADS: usize = 1024;
/// Largest accepted `--coalesce-ms`: beyond this the wait is a delay, not batching.
const MAX_COALESCE_MS: u64 = 1_000;
/// Largest accepted `--max-message-bytes` (16 MiB).
const MAX_MESSAGE_CEILING: usize = 16 << 20;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `roomcast serve` flags. Every flag also reads an environment variable.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Redis URL (`redis://host:port[/db]`); without it the node runs on the embedded store.
    #[arg(long, env = "REDIS_URL")]
    pub redis: Option<String>,

    /// Events kept per room (`MAXLEN ~ N`: at least N).
    #[arg(long, env = "ROOMCAST_HISTORY", default_value_t = 10_000)]
    pub history: usize,

    /// Seconds after its last publish a room's history expires.
    #[arg(long, env = "ROOMCAST_ROOM_TTL", default_value_t = 86_400)]
    pub room_ttl: u64,

    /// Prefix of every Redis key (lets deployments share one Redis).
    #[arg(long, env = "ROOMCAST_KEY_PREFIX", default_value = "rc")]
    pub key_prefix: String,

    /// This node's name in audience reports (default: random).
    #[arg(long, env = "ROOMCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// Log format.
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Seconds given to connections to close on SIGTERM/SIGINT.
    #[arg(long, env = "ROOMCAST_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,

    /// Largest client message (WebSocket message, HTTP body), in bytes.
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Most rooms one connection may subscribe to.
    #[arg(long, env = "ROOMCAST_MAX_SUBSCRIPTIONS", default_value_t = 64)]
    pub max_subscriptions: usize,

    /// Most batches queued for one connection before it catches up from history.
    #[arg(long, env = "ROOMCAST_OUTBOX_FRAMES", default_value_t = 256)]
    pub outbox_frames: usize,

    /// Most bytes queued for one connection before it catches up from history.
    #[arg(long, env = "ROOMCAST_OUTBOX_BYTES", default_value_t = 1 << 20)]
    pub outbox_bytes: usize,

    /// Runtime worker threads (0: one per core). Running several nodes on
    /// one host, give each its share of the cores.
    #[arg(long, env = "ROOMCAST_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Coalescing window of the live feed, in milliseconds (0: off). Events
    /// arriving within this time of the feed's previous delivery wait out
    /// the rest of it and go out together, one frame per room: it caps
    /// frames per room per second, so high rates cost fewer writes and
    /// wake-ups. When events are further apart than this, nothing waits.
    #[arg(long, env = "ROOMCAST_COALESCE_MS", default_value_t = 10)]
    pub coalesce_ms: u64,

    /// Milliseconds a Redis command may take before it fails (publishes fail fast in an outage).
    #[arg(long, env = "ROOMCAST_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,

    /// HS256 secret that signs client tokens (JWT).
    #[arg(long, env = "ROOMCAST_JWT_SECRET", conflicts_with = "jwt_public_key", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// RS256 public key (PEM file) that verifies client tokens (JWT).
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Key for trusted publishers (`Authorization: Bearer KEY`); grants everything.
    #[arg(long, env = "ROOMCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Comma-separated browser origins allowed to connect (default: any).
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// Seconds a connection has to send complete request headers (on
    /// arrival and between keep-alive requests) before it is closed.
    #[arg(long, env = "ROOMCAST_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout: u64,

    /// Most connections that have not sent a request yet; past it the
    /// oldest of them is closed to admit a new one.
    #[arg(long, env = "ROOMCAST_MAX_PENDING_CONNECTIONS", default_value_t = 4096)]
    pub max_pending_connections: usize,

    /// Serve `/metrics` on this address instead of the main one (which then
    /// has no `/metrics`): keep it off the public listener.
    #[arg(long, env = "ROOMCAST_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Most open WebSocket and SSE connections on this node.
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Publishes per second one connection may make (sustained).
    #[arg(long, env = "ROOMCAST_PUBLISH_RATE", default_value_t = 50)]
    pub publish_rate: u32,

    /// Publishes one connection may make in a burst.
    #[arg(long, env = "ROOMCAST_PUBLISH_BURST", default_value_t = 100)]
    pub publish_burst: u32,

    /// Refused frames a connection may send per 10 seconds before it is closed (1008).
    #[arg(long, env = "ROOMCAST_MAX_STRIKES", default_value_t = 20)]
    pub max_strikes: u32,
}

/// A configuration error: the process exits 64 before binding anything.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Validated settings of a node.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Redis URL, or `None` for the embedded store.
    pub redis: Option<String>,
    /// Events kept per room.
    pub history: usize,
    /// Idle expiry of a room.
    pub room_ttl: Duration,
    /// Redis key prefix.
    pub key_prefix: String,
    /// Node name.
    pub node_id: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Largest client message.
    pub max_message_bytes: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Outbox bound in batches.
    pub outbox_frames: usize,
    /// Outbox bound in bytes.
    pub outbox_bytes: usize,
    /// Redis command timeout.
    pub redis_timeout: Duration,
    /// Shortest time between two live deliveries (the coalescing window).
    pub coalesce: Duration,
    /// Runtime worker threads; `None` for one per core.
    pub threads: Option<usize>,
    /// Who may do what.
    pub auth: Auth,
    /// Browser origins allowed.
    pub origins: Origins,
    /// Most connections on this node.
    pub max_connections: usize,
    /// Time to send complete request headers.
    pub header_timeout: Duration,
    /// Most connections without a request yet.
    pub max_pending_connections: usize,
    /// Where `/metrics` is served, when not on the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Sustained publishes per second per connection.
    pub publish_rate: u32,
    /// Publish burst per connection.
    pub publish_burst: u32,
    /// Refused frames tolerated per 10 s.
    pub max_strikes: u32,
}

fn check(ok: bool, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError(message()))
    }
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        let listen: SocketAddr = a
            .listen
            .parse()
            .map_err(|_| ConfigError(format!("--listen {:?} is not an address like 127.0.0.1:8080", a.listen)))?;
        if let Some(url) = &a.redis {
            check(url.starts_with("redis://") || url.starts_with("rediss://"), || {
                format!("--redis {url:?} must be a redis:// URL")
            })?;
            fred::prelude::Config::from_url(url).map_err(|e| ConfigError(format!("--redis {url:?}: {e}")))?;
        }
        check((1..=10_000_000).contains(&a.history), || "--history must be between 1 and 10000000".into())?;
        check(a.room_ttl >= 1, || "--room-ttl must be at least 1 second".into())?;
        check(
            !a.key_prefix.is_empty()
                && a.key_prefix.len() <= 64
                && a.key_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')),
            || "--key-prefix must be 1-64 bytes of A-Z a-z 0-9 _ . -".into(),
        )?;
        let node_id = match a.node_id {
            Some(id) => {
                check(
                    !id.is_empty()
                        && id.len() <= 64
                        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')),
                    || "--node-id must be 1-64 bytes of A-Z a-z 0-9 _ . -".into(),
                )?;
                id
            }
            None => format!("{:016x}", rand::random::<u64>()),
        };
        check((256..=MAX_MESSAGE_CEILING).contains(&a.max_message_bytes), || {
            format!("--max-message-bytes must be between 256 and {MAX_MESSAGE_CEILING}")
        })?;
        check(a.max_subscriptions >= 1, || "--max-subscriptions must be at least 1".into())?;
        check(a.threads <= MAX_THREADS, || format!("--threads must be at most {MAX_THREADS}"))?;
        check(a.coalesce_ms <= MAX_COALESCE_MS, || format!("--coalesce-ms must be at most {MAX_COALESCE_MS}"))?;
        check(a.outbox_frames >= 1, || "--outbox-frames must be at least 1".into())?;
        check(a.outbox_bytes >= 4096, || "--outbox-bytes must be at least 4096".into())?;
        check(a.redis_timeout_ms >= 10, || "--redis-timeout-ms must be at least 10".into())?;
        check(a.max_connections >= 1, || "--max-connections must be at least 1".into())?;
        check((1..=3600).contains(&a.header_timeout), || "--header-timeout must be between 1 and 3600 seconds".into())?;
        check(a.max_pending_connections >= 1, || "--max-pending-connections must be at least 1".into())?;
        let metrics_listen =
            match &a.metrics_listen {
                None => None,
                Some(raw) => Some(raw.parse::<SocketAddr>().map_err(|_| {
                    ConfigError(format!("--metrics-listen {raw:?} is not an address like 127.0.0.1:9090"))
                })?),
            };
        check(a.publish_rate >= 1 && a.publish_burst >= 1, || {
            "--publish-rate and --publish-burst must be at least 1".into()
        })?;
        check(a.max_strikes >= 1, || "--max-strikes must be at least 1".into())?;
        check(a.jwt_secret.as_ref().is_none_or(|s| s.len() >= 16), || "--jwt-secret must be at least 16 bytes".into())?;
        check(a.api_key.as_ref().is_none_or(|k| k.len() >= 16), || "--api-key must be at least 16 bytes".into())?;
        let jwt = match (a.jwt_secret, a.jwt_public_key) {
            (Some(secret), _) => Some(JwtKey::Secret(secret)),
            (None, Some(path)) => Some(JwtKey::RsaPem(
                std::fs::read(&path).map_err(|e| ConfigError(format!("--jwt-public-key {}: {e}", path.display())))?,
            )),
            (None, None) => None,
        };
        let auth = Auth::new(jwt, a.api_key).map_err(|e| ConfigError(format!("--jwt-public-key: {e}")))?;
        let origins = Origins::parse(a.allowed_origins.as_deref());
        Ok(Config {
            listen,
            redis: a.redis,
            history: a.history,
            room_ttl: Duration::from_secs(a.room_ttl),
            key_prefix: a.key_prefix,
            node_id,
            log_format: a.log_format,
            shutdown_grace: Duration::from_secs(a.shutdown_grace),
            max_message_bytes: a.max_message_bytes,
            max_subscriptions: a.max_subscriptions,
            outbox_frames: a.outbox_frames,
            outbox_bytes: a.outbox_bytes,
            redis_timeout: Duration::from_millis(a.redis_timeout_ms),
            coalesce: Duration::from_millis(a.coalesce_ms),
            threads: (a.threads > 0).then_some(a.threads),
            auth,
            origins,
            max_connections: a.max_connections,
            header_timeout: Duration::from_secs(a.header_timeout),
            max_pending_connections: a.max_pending_connections,
            metrics_listen,
            publish_rate: a.publish_rate,
            publish_burst: a.publish_burst,
            max_strikes: a.max_strikes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `roomcast serve`'s flags as a command of their own.
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        let serve = Serve::try_parse_from(args.iter().copied()).map_err(|e| e.to_string())?;
        Config::try_from(serve.args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&["serve"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.history, 10_000);
        assert!(c.redis.is_none());
        assert_eq!(c.coalesce, Duration::from_millis(10));
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (vec!["serve", "--listen", "nowhere"], "--listen"),
            (vec!["serve", "--redis", "http://x"], "--redis"),
            (vec!["serve", "--history", "0"], "--history"),
            (vec!["serve", "--header-timeout", "0"], "--header-timeout"),
            (vec!["serve", "--metrics-listen", "nowhere"], "--metrics-listen"),
            (vec!["serve", "--key-prefix", "a b"], "--key-prefix"),
            (vec!["serve", "--max-message-bytes", "1"], "--max-message-bytes"),
            (vec!["serve", "--coalesce-ms", "5000"], "--coalesce-ms"),
            (vec!["serve", "--threads", "100000"], "--threads"),
        ] {
            let err = parse(&args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
