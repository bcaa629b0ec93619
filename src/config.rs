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

/// `roomcast serve` flags, in groups. Every flag also reads an environment
/// variable. Each setting is declared once, here, with its parsed type; the
/// validated [`Config`] holds these groups as they are.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// The node itself.
    #[command(flatten)]
    pub node: NodeSettings,
    /// Where events live.
    #[command(flatten)]
    pub store: StoreSettings,
    /// How to reach Redis.
    #[command(flatten)]
    pub redis: RedisSettings,
    /// What one connection, and the node, may hold.
    #[command(flatten)]
    pub limits: Limits,
    /// Who may do what.
    #[command(flatten)]
    pub auth: AuthSettings,
    /// What the node tells the application's backend, and asks it.
    #[command(flatten)]
    pub backend: BackendSettings,
    /// The Pusher protocol beside roomcast's own.
    #[command(flatten)]
    pub pusher: PusherSettings,
}

/// Pusher apps: one from flags, or several from a file.
#[derive(Clone, Debug, Args)]
pub struct PusherSettings {
    /// The Pusher app's ID (with --pusher-key and --pusher-secret): the node
    /// then speaks Pusher's protocol at /app/{key} and its HTTP API at /apps/{id}.
    #[arg(long = "pusher-app-id", env = "ROOMCAST_PUSHER_APP_ID")]
    pub app_id: Option<String>,

    /// The Pusher app's key (public: clients connect with it).
    #[arg(long = "pusher-key", env = "ROOMCAST_PUSHER_KEY")]
    pub key: Option<String>,

    /// The Pusher app's secret (signs channel auth and HTTP API requests).
    #[arg(long = "pusher-secret", env = "ROOMCAST_PUSHER_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// A JSON file of Pusher apps: `[{"id","key","secret","prefix"}]`, each
    /// app's channels being the rooms of its prefix.
    #[arg(long = "pusher-apps", env = "ROOMCAST_PUSHER_APPS")]
    pub apps_file: Option<std::path::PathBuf>,

    /// URL the deployment POSTs Pusher-shaped webhooks to (channel_occupied,
    /// channel_vacated, member_added, member_removed, client_event), signed
    /// per app with X-Pusher-Key and X-Pusher-Signature.
    #[arg(long = "pusher-webhook-url", env = "ROOMCAST_PUSHER_WEBHOOK_URL")]
    pub pusher_webhook_url: Option<String>,
}

/// One Pusher app.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct PusherApp {
    /// The app's ID (in HTTP API paths).
    pub id: String,
    /// Its key (in WebSocket paths and signed requests).
    pub key: String,
    /// Its secret.
    pub secret: String,
    /// The prefix its channels' rooms carry (`""` for the app from flags):
    /// apps with different prefixes never share a room.
    #[serde(default)]
    pub prefix: String,
}

/// The application's backend: the publish hook and the signing secret.
#[derive(Clone, Debug, Args)]
pub struct BackendSettings {
    /// URL the node asks before storing a client's publish (WebSocket, or
    /// HTTP with a token): the backend approves, rewrites or refuses it.
    #[arg(long = "publish-hook", env = "ROOMCAST_PUBLISH_HOOK")]
    pub publish_hook: Option<String>,

    /// Milliseconds the publish hook has to answer.
    #[arg(long = "publish-hook-timeout-ms", env = "ROOMCAST_PUBLISH_HOOK_TIMEOUT_MS", default_value = "2000", value_parser = millis)]
    pub publish_hook_timeout: Duration,

    /// Store a publish as sent when the hook fails or does not answer
    /// (default: refuse it with `hook_unavailable`).
    #[arg(long = "publish-hook-fail-open", env = "ROOMCAST_PUBLISH_HOOK_FAIL_OPEN")]
    pub publish_hook_fail_open: bool,

    /// Secret that signs the node's requests to the backend
    /// (`Roomcast-Signature: sha256=<HMAC-SHA256 of the body>`).
    #[arg(long = "webhook-secret", env = "ROOMCAST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// URL the deployment POSTs room and member events to (room_occupied,
    /// room_vacated, member_joined, member_left), at least once each.
    #[arg(long = "webhook-url", env = "ROOMCAST_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Milliseconds a room stays empty before `room_vacated` is sent (a
    /// reconnect within it sends nothing).
    #[arg(long = "webhook-vacate-delay-ms", env = "ROOMCAST_WEBHOOK_VACATE_DELAY_MS", default_value = "3000", value_parser = millis)]
    pub webhook_vacate_delay: Duration,

    /// Undelivered webhook events kept at most (the oldest go past it).
    #[arg(long = "webhook-max-pending", env = "ROOMCAST_WEBHOOK_MAX_PENDING", default_value = "100000")]
    pub webhook_max_pending: u64,

    /// Seconds an undelivered webhook event is retried before it is dropped.
    #[arg(long = "webhook-retry-secs", env = "ROOMCAST_WEBHOOK_RETRY_SECS", default_value = "3600", value_parser = seconds)]
    pub webhook_retry: Duration,

    /// Members listed in presence frames at most (the count stays exact).
    #[arg(long = "presence-max-members", env = "ROOMCAST_PRESENCE_MAX_MEMBERS", default_value = "1000")]
    pub presence_max_members: usize,
}

/// Parses whole seconds into a duration.
fn seconds(raw: &str) -> Result<Duration, String> {
    raw.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{raw:?} is not a whole number of seconds"))
}

/// Parses whole milliseconds into a duration.
fn millis(raw: &str) -> Result<Duration, String> {
    raw.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("{raw:?} is not a whole number of milliseconds"))
}

/// The node's own settings.
#[derive(Clone, Debug, Args)]
pub struct NodeSettings {
    /// Address to listen on.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve `/metrics` on this address instead of the main one (which then
    /// has no `/metrics`): keep it off the public listener.
    #[arg(long, env = "ROOMCAST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// This node's name in audience reports (default: random).
    #[arg(long, env = "ROOMCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// Log format.
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Seconds given to connections to close on SIGTERM/SIGINT.
    #[arg(long = "shutdown-grace", env = "ROOMCAST_SHUTDOWN_GRACE", default_value = "10", value_parser = seconds)]
    pub shutdown_grace: Duration,

    /// Runtime worker threads (0: one per core). Running several nodes on
    /// one host, give each its share of the cores.
    #[arg(long, env = "ROOMCAST_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Coalescing window of the live feed, in milliseconds (0: off). Events
    /// arriving within this time of the feed's previous delivery wait out
    /// the rest of it and go out together, one frame per room: it caps
    /// frames per room per second, so high rates cost fewer writes and
    /// wake-ups. When events are further apart than this, nothing waits.
    #[arg(long = "coalesce-ms", env = "ROOMCAST_COALESCE_MS", default_value = "10", value_parser = millis)]
    pub coalesce: Duration,

    /// Longest coalescing window, in milliseconds, reached when one room
    /// carries a firehose (1,000 events/s or more; from 100/s the window
    /// grows from `--coalesce-ms` toward this). Fewer, fuller writes are
    /// what lets a node keep up at such rates; set it to `--coalesce-ms`
    /// for a fixed window. A value below `--coalesce-ms` means that.
    #[arg(long = "coalesce-max-ms", env = "ROOMCAST_COALESCE_MAX_MS", default_value = "30", value_parser = millis)]
    pub coalesce_max: Duration,

    /// Seconds between heartbeat ticks (1-15): a connection the node has
    /// said nothing on since the previous tick gets a `heartbeat` frame, so
    /// no client hears nothing for two ticks (30 s by default).
    #[arg(long = "heartbeat-secs", env = "ROOMCAST_HEARTBEAT_SECS", default_value = "15", value_parser = seconds)]
    pub heartbeat: Duration,
}

/// Where events live, whichever store holds them.
#[derive(Clone, Debug, Args)]
pub struct StoreSettings {
    /// Events kept per room (`MAXLEN ~ N`: at least N).
    #[arg(long, env = "ROOMCAST_HISTORY", default_value_t = 10_000)]
    pub history: usize,

    /// Seconds after its last publish a room's history expires.
    #[arg(long = "room-ttl", env = "ROOMCAST_ROOM_TTL", default_value = "86400", value_parser = seconds)]
    pub room_ttl: Duration,

    /// Most state keys a room keeps; a publish with a new key past it is
    /// refused (`too_many_keys`).
    #[arg(long = "max-state-keys", env = "ROOMCAST_MAX_STATE_KEYS", default_value_t = 1000)]
    pub max_state_keys: usize,
}

/// How to reach Redis; without a URL the node runs on the embedded store.
#[derive(Clone, Debug, Args)]
pub struct RedisSettings {
    /// Redis URL (`redis://host:port[/db]`); without it (or a cluster or
    /// sentinels) the node runs on the embedded store.
    #[arg(long = "redis", env = "REDIS_URL", conflicts_with_all = ["cluster", "sentinel"])]
    pub url: Option<String>,

    /// Seed nodes of a Redis Cluster (`redis://host:port`, comma-separated);
    /// the node finds the rest and follows slot moves and failovers.
    #[arg(long = "redis-cluster", env = "REDIS_CLUSTER_URLS", value_delimiter = ',', conflicts_with = "sentinel")]
    pub cluster: Vec<String>,

    /// Sentinels (`redis://host:port`, comma-separated) to ask for the
    /// master named by `--redis-sentinel-master`; the node follows failovers.
    #[arg(long = "redis-sentinel", env = "REDIS_SENTINEL_URLS", value_delimiter = ',')]
    pub sentinel: Vec<String>,

    /// The master's name, as the sentinels monitor it.
    #[arg(long = "redis-sentinel-master", env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub sentinel_master: String,

    /// Prefix of every Redis key (lets deployments share one Redis).
    #[arg(long, env = "ROOMCAST_KEY_PREFIX", default_value = "rc")]
    pub key_prefix: String,

    /// Milliseconds a Redis command may take before it fails (publishes fail fast in an outage).
    #[arg(long = "redis-timeout-ms", env = "ROOMCAST_REDIS_TIMEOUT_MS", default_value = "2000", value_parser = millis)]
    pub timeout: Duration,
}

/// What one connection, and the node, may hold.
#[derive(Clone, Copy, Debug, Args)]
pub struct Limits {
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

    /// Most open WebSocket and SSE connections on this node.
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Seconds a connection has to send complete request headers (on
    /// arrival and between keep-alive requests) before it is closed.
    #[arg(long = "header-timeout", env = "ROOMCAST_HEADER_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub header_timeout: Duration,

    /// Most connections that have not sent a request yet; past it the
    /// oldest of them is closed to admit a new one.
    #[arg(long, env = "ROOMCAST_MAX_PENDING_CONNECTIONS", default_value_t = 4096)]
    pub max_pending_connections: usize,

    /// Publishes per second one connection may make (sustained).
    #[arg(long, env = "ROOMCAST_PUBLISH_RATE", default_value_t = 50)]
    pub publish_rate: u32,

    /// Publishes one connection may make in a burst.
    #[arg(long, env = "ROOMCAST_PUBLISH_BURST", default_value_t = 100)]
    pub publish_burst: u32,

    /// Refused frames a connection may send per 10 seconds before it is closed (1008).
    #[arg(long, env = "ROOMCAST_MAX_STRIKES", default_value_t = 20)]
    pub max_strikes: u32,

    /// New rooms (ones the store has no trace of) one connection, and one
    /// token subject on this node, may create per minute by publishing or
    /// subscribing; the API key is not limited.
    #[arg(long, env = "ROOMCAST_NEW_ROOMS_PER_MINUTE", default_value_t = 120)]
    pub new_rooms_per_minute: u32,
}

/// Credentials and origins, as given; [`Config`] holds them verified.
#[derive(Clone, Debug, Args)]
pub struct AuthSettings {
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
}

/// A configuration error: the process exits 64 before binding anything.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Validated settings of a node, in the groups they are declared in.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node itself.
    pub node: NodeSettings,
    /// The node's name in audience reports (given, or random).
    pub node_id: String,
    /// Where events live.
    pub store: StoreSettings,
    /// How to reach Redis.
    pub redis: RedisSettings,
    /// What one connection, and the node, may hold.
    pub limits: Limits,
    /// Who may do what.
    pub auth: Auth,
    /// Browser origins allowed.
    pub origins: Origins,
    /// The application's backend.
    pub backend: BackendSettings,
    /// Pusher apps (none: the node does not speak Pusher).
    pub pusher_apps: Vec<PusherApp>,
    /// Where Pusher-shaped webhooks go.
    pub pusher_webhook_url: Option<String>,
}

/// Reads the Pusher apps the flags name, checked.
fn pusher_apps(p: &PusherSettings) -> Result<Vec<PusherApp>, ConfigError> {
    let mut apps = Vec::new();
    match (&p.app_id, &p.key, &p.secret) {
        (None, None, None) => {}
        (Some(id), Some(key), Some(secret)) => {
            apps.push(PusherApp { id: id.clone(), key: key.clone(), secret: secret.clone(), prefix: String::new() })
        }
        _ => return Err(ConfigError("--pusher-app-id, --pusher-key and --pusher-secret go together".into())),
    }
    if let Some(path) = &p.apps_file {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("--pusher-apps {}: {e}", path.display())))?;
        let listed: Vec<PusherApp> =
            serde_json::from_str(&text).map_err(|e| ConfigError(format!("--pusher-apps {}: {e}", path.display())))?;
        apps.extend(listed);
    }
    for (i, app) in apps.iter().enumerate() {
        check(plain_name(&app.id) && plain_name(&app.key), || {
            format!("Pusher app ids and keys are 1-64 bytes of A-Z a-z 0-9 _ . - ({:?})", app.id)
        })?;
        check(app.secret.len() >= 8, || format!("Pusher app {:?}: a secret of at least 8 bytes", app.id))?;
        check(app.prefix.is_empty() || crate::protocol::RoomName::parse(&app.prefix).is_ok(), || {
            format!("Pusher app {:?}: its prefix must be room-name characters", app.id)
        })?;
        for other in &apps[..i] {
            check(other.id != app.id && other.key != app.key, || {
                format!("Pusher apps {:?} and {:?} share an id or a key", other.id, app.id)
            })?;
            check(!other.prefix.starts_with(&app.prefix) && !app.prefix.starts_with(&other.prefix), || {
                format!(
                    "Pusher apps {:?} and {:?}: one's prefix starts the other's, so their rooms would mix",
                    other.id, app.id
                )
            })?;
        }
    }
    Ok(apps)
}

impl Config {
    /// The configuration `roomcast serve ARGS` would run with (the flags,
    /// then the environment, then the defaults): for a node run in-process.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        /// `roomcast serve`'s flags as a command of their own.
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("serve")).chain(args.into_iter().map(Into::into));
        let serve = <Serve as clap::Parser>::try_parse_from(argv).map_err(|e| ConfigError(e.to_string()))?;
        Config::try_from(serve.args)
    }

    /// Runtime worker threads; `None` for one per core.
    pub fn threads(&self) -> Option<usize> {
        (self.node.threads > 0).then_some(self.node.threads)
    }
}

fn check(ok: bool, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError(message()))
    }
}

/// A name of 1-64 bytes of `A-Z a-z 0-9 _ . -`.
fn plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        let ServeArgs { node, store, redis, limits: l, auth, backend, pusher } = a;
        let pusher_apps = pusher_apps(&pusher)?;
        if let Some(url) = &pusher.pusher_webhook_url {
            check(url.starts_with("http://") || url.starts_with("https://"), || {
                format!("--pusher-webhook-url {url:?} must be an http:// or https:// URL")
            })?;
            check(!pusher_apps.is_empty(), || "--pusher-webhook-url needs a Pusher app".into())?;
        }
        let pusher_webhook_url = pusher.pusher_webhook_url.clone();
        if let Some(url) = &backend.publish_hook {
            check(url.starts_with("http://") || url.starts_with("https://"), || {
                format!("--publish-hook {url:?} must be an http:// or https:// URL")
            })?;
        }
        if let Some(url) = &backend.webhook_url {
            check(url.starts_with("http://") || url.starts_with("https://"), || {
                format!("--webhook-url {url:?} must be an http:// or https:// URL")
            })?;
        }
        check(backend.webhook_max_pending >= 1, || "--webhook-max-pending must be at least 1".into())?;
        check(backend.webhook_retry >= Duration::from_secs(600), || {
            "--webhook-retry-secs must be at least 600 (events are retried for ten minutes at least)".into()
        })?;
        check((1..=100_000).contains(&backend.presence_max_members), || {
            "--presence-max-members must be between 1 and 100000".into()
        })?;
        check((Duration::from_millis(10)..=Duration::from_secs(60)).contains(&backend.publish_hook_timeout), || {
            "--publish-hook-timeout-ms must be between 10 and 60000".into()
        })?;
        if let Some(url) = &redis.url {
            check(url.starts_with("redis://") || url.starts_with("rediss://"), || {
                format!("--redis {url:?} must be a redis:// URL")
            })?;
            fred::prelude::Config::from_url(url).map_err(|e| ConfigError(format!("--redis {url:?}: {e}")))?;
        }
        for (flag, urls) in [("--redis-cluster", &redis.cluster), ("--redis-sentinel", &redis.sentinel)] {
            for url in urls {
                check(url.starts_with("redis://") || url.starts_with("rediss://"), || {
                    format!("{flag} {url:?} must be redis:// URLs")
                })?;
                fred::prelude::Config::from_url_centralized(url)
                    .map_err(|e| ConfigError(format!("{flag} {url:?}: {e}")))?;
            }
        }
        check((1..=10_000_000).contains(&store.history), || "--history must be between 1 and 10000000".into())?;
        check(store.room_ttl >= Duration::from_secs(1), || "--room-ttl must be at least 1 second".into())?;
        check(store.max_state_keys >= 1, || "--max-state-keys must be at least 1".into())?;
        check(plain_name(&redis.key_prefix), || "--key-prefix must be 1-64 bytes of A-Z a-z 0-9 _ . -".into())?;
        let node_id = match &node.node_id {
            Some(id) => {
                check(plain_name(id), || "--node-id must be 1-64 bytes of A-Z a-z 0-9 _ . -".into())?;
                id.clone()
            }
            None => format!("{:016x}", rand::random::<u64>()),
        };
        check((256..=MAX_MESSAGE_CEILING).contains(&l.max_message_bytes), || {
            format!("--max-message-bytes must be between 256 and {MAX_MESSAGE_CEILING}")
        })?;
        check(l.max_subscriptions >= 1, || "--max-subscriptions must be at least 1".into())?;
        check(node.threads <= MAX_THREADS, || format!("--threads must be at most {MAX_THREADS}"))?;
        check(node.coalesce <= Duration::from_millis(MAX_COALESCE_MS), || {
            format!("--coalesce-ms must be at most {MAX_COALESCE_MS}")
        })?;
        check(node.coalesce_max <= Duration::from_millis(MAX_COALESCE_MS), || {
            format!("--coalesce-max-ms must be at most {MAX_COALESCE_MS}")
        })?;
        check((Duration::from_secs(1)..=Duration::from_secs(15)).contains(&node.heartbeat), || {
            "--heartbeat-secs must be between 1 and 15".into()
        })?;
        check(l.outbox_frames >= 1, || "--outbox-frames must be at least 1".into())?;
        check(l.outbox_bytes >= 4096, || "--outbox-bytes must be at least 4096".into())?;
        check(redis.timeout >= Duration::from_millis(10), || "--redis-timeout-ms must be at least 10".into())?;
        check(l.max_connections >= 1, || "--max-connections must be at least 1".into())?;
        check((Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&l.header_timeout), || {
            "--header-timeout must be between 1 and 3600 seconds".into()
        })?;
        check(l.max_pending_connections >= 1, || "--max-pending-connections must be at least 1".into())?;
        check(l.publish_rate >= 1 && l.publish_burst >= 1, || {
            "--publish-rate and --publish-burst must be at least 1".into()
        })?;
        check(l.max_strikes >= 1, || "--max-strikes must be at least 1".into())?;
        let AuthSettings { jwt_secret, jwt_public_key, api_key, allowed_origins } = auth;
        check(jwt_secret.as_ref().is_none_or(|s| s.len() >= 16), || "--jwt-secret must be at least 16 bytes".into())?;
        check(api_key.as_ref().is_none_or(|k| k.len() >= 16), || "--api-key must be at least 16 bytes".into())?;
        let jwt = match (jwt_secret, jwt_public_key) {
            (Some(secret), _) => Some(JwtKey::Secret(secret)),
            (None, Some(path)) => Some(JwtKey::RsaPem(
                std::fs::read(&path).map_err(|e| ConfigError(format!("--jwt-public-key {}: {e}", path.display())))?,
            )),
            (None, None) => None,
        };
        let auth = Auth::new(jwt, api_key).map_err(|e| ConfigError(format!("--jwt-public-key: {e}")))?;
        let origins = Origins::parse(allowed_origins.as_deref());
        Ok(Config { node, node_id, store, redis, limits: l, auth, origins, backend, pusher_apps, pusher_webhook_url })
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
        assert_eq!(c.node.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.store.history, 10_000);
        assert_eq!(c.store.room_ttl, Duration::from_secs(86_400));
        assert!(c.redis.url.is_none());
        assert_eq!(c.redis.timeout, Duration::from_millis(2_000));
        assert_eq!(c.node.coalesce, Duration::from_millis(10));
        assert_eq!(c.node.coalesce_max, Duration::from_millis(30));
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(c.threads(), None);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (vec!["serve", "--listen", "nowhere"], "--listen"),
            (vec!["serve", "--redis", "http://x"], "--redis"),
            (vec!["serve", "--history", "0"], "--history"),
            (vec!["serve", "--header-timeout", "0"], "--header-timeout"),
            (vec!["serve", "--heartbeat-secs", "40"], "--heartbeat-secs"),
            (vec!["serve", "--metrics-listen", "nowhere"], "--metrics-listen"),
            (vec!["serve", "--key-prefix", "a b"], "--key-prefix"),
            (vec!["serve", "--max-message-bytes", "1"], "--max-message-bytes"),
            (vec!["serve", "--coalesce-ms", "5000"], "--coalesce-ms"),
            (vec!["serve", "--coalesce-max-ms", "5000"], "--coalesce-max-ms"),
            (vec!["serve", "--threads", "100000"], "--threads"),
        ] {
            let err = parse(&args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
