//! Which Redis the node talks to: one server, a Cluster, or a master found
//! through Sentinel; and the fred client settings each needs.

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ReconnectError, ServerConfig};

use crate::store::StoreError;

/// Where the data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One Redis (`redis://host:port[/db]`).
    Single(String),
    /// A Redis Cluster, from one or more seed nodes; the rest is discovered.
    Cluster(Vec<String>),
    /// The master `master` as the sentinels at `sentinels` name it.
    Sentinel {
        /// Sentinel URLs (`redis://host:port`).
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
    },
}

/// Most commands queued in a client while Redis is unreachable; past it,
/// commands fail at once.
const COMMAND_QUEUE: usize = 16_384;
/// Pub/Sub messages a subscriber may hold unread before it misses some (and
/// falls back to reading its mailboxes). Only the doorbell subscriber gets
/// this: fred sizes every notification channel of a client by it, and at
/// 16,384 slots each a client held 10 MB (measured: 20 MB of a node's heap
/// for its two clients on one Redis).
const MESSAGE_QUEUE: usize = 16_384;
/// The same for clients that subscribe to nothing (fred's default).
const NOTIFICATION_QUEUE: usize = 32;

/// Errors after which fred reconnects (and re-resolves the topology)
/// rather than failing every later command: a master demoted to replica
/// answers writes with `READONLY` and unblocks blocked reads with
/// `UNBLOCKED`, on a connection that stays up.
fn reconnect_errors() -> Vec<ReconnectError> {
    vec![
        ReconnectError::ClusterDown,
        ReconnectError::Loading,
        ReconnectError::ReadOnly,
        ReconnectError::MasterDown,
        ReconnectError::Custom("UNBLOCKED"),
    ]
}

/// The host and port of a `redis://` URL.
fn host_port(url: &str) -> Result<(String, u16), StoreError> {
    let config = Config::from_url_centralized(url).map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
    match config.server {
        ServerConfig::Centralized { server } => Ok((server.host.to_string(), server.port)),
        _ => Err(StoreError::Unavailable(format!("{url}: not a host:port URL"))),
    }
}

impl Topology {
    /// The fred configuration: credentials and database from the first URL,
    /// servers from all of them.
    pub fn config(&self) -> Result<Config, StoreError> {
        let bad = |url: &str, e: Error| StoreError::Unavailable(format!("{url}: {e}"));
        match self {
            Topology::Single(url) => Config::from_url(url).map_err(|e| bad(url, e)),
            Topology::Cluster(urls) | Topology::Sentinel { sentinels: urls, .. } => {
                let first = urls.first().ok_or_else(|| StoreError::Unavailable("no Redis URL given".into()))?;
                let mut config = Config::from_url_centralized(first).map_err(|e| bad(first, e))?;
                let hosts = urls.iter().map(|u| host_port(u)).collect::<Result<Vec<_>, _>>()?;
                config.server = match self {
                    Topology::Sentinel { master, .. } => ServerConfig::new_sentinel(hosts, master.clone()),
                    _ => {
                        // A cluster has no databases.
                        config.database = None;
                        ServerConfig::new_clustered(hosts)
                    }
                };
                Ok(config)
            }
        }
    }

    /// Builds a client that reconnects forever with backoff, with a
    /// command timeout (zero: none, for blocking readers) and a bounded
    /// queue, so a publish during an outage fails fast instead of waiting.
    pub fn client(&self, command_timeout: Duration) -> Result<Client, StoreError> {
        self.build(command_timeout, NOTIFICATION_QUEUE)
    }

    /// A client for a Pub/Sub subscriber (no command timeout: it also
    /// reads), which may hold many messages unread.
    pub fn subscriber(&self) -> Result<Client, StoreError> {
        self.build(Duration::ZERO, MESSAGE_QUEUE)
    }

    fn build(&self, command_timeout: Duration, messages: usize) -> Result<Client, StoreError> {
        let mut config = self.config()?;
        // A Redis that is not up yet is retried like one that went away: the
        // node runs (not ready) meanwhile, instead of exiting into a crash loop.
        config.fail_fast = false;
        Builder::from_config(config)
            .with_performance_config(|p| {
                p.default_command_timeout = command_timeout;
                p.broadcast_channel_capacity = messages;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_buffer_len = COMMAND_QUEUE;
                c.reconnect_errors = reconnect_errors();
                // Slots move and masters fail over: refresh the map promptly.
                c.max_redirections = 16;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topology_builds_its_server_config() {
        let single = Topology::Single("redis://127.0.0.1:6379/2".into()).config().unwrap();
        assert_eq!(single.database, Some(2));
        let cluster = Topology::Cluster(vec!["redis://:pw@10.0.0.1:7000".into(), "redis://10.0.0.2:7001".into()])
            .config()
            .unwrap();
        assert!(matches!(&cluster.server, ServerConfig::Clustered { hosts, .. } if hosts.len() == 2));
        assert_eq!(cluster.password.as_deref(), Some("pw"));
        let sentinel = Topology::Sentinel { sentinels: vec!["redis://10.0.0.3:26379".into()], master: "shows".into() }
            .config()
            .unwrap();
        assert!(
            matches!(&sentinel.server, ServerConfig::Sentinel { hosts, service_name, .. } if hosts.len() == 1 && service_name == "shows")
        );
        assert!(Topology::Cluster(vec![]).config().is_err());
        assert!(Topology::Cluster(vec!["nonsense".into()]).config().is_err());
    }
}
