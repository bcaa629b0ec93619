//! Loss detection on Redis: each domain's epoch token and the `run_id` of
//! the server that holds it (see `docs/architecture.md`, "When the store may
//! have lost data").

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use fred::prelude::*;

use super::fault::retrying;
use super::{timed, RedisStore};
use crate::protocol::RoomName;
use crate::store::{Incarnation, LossDetection, StoreError};

impl RedisStore {
    /// Runs the epoch script over `buckets` (of one slot, on a cluster).
    async fn epochs(&self, buckets: &[usize]) -> Result<Vec<Incarnation>, StoreError> {
        let fresh = format!("{:016x}", rand::random::<u64>());
        let keys: Vec<String> = buckets.iter().map(|b| self.keys.epoch(*b as u16)).collect();
        let value: Value =
            retrying(|| self.epoch.evalsha_with_reload(&self.client, keys.clone(), vec![fresh.clone()])).await?;
        let Value::Array(parts) = value else {
            return Err(StoreError::Protocol("epoch reply is not an array".into()));
        };
        let mut parts = parts.into_iter().map(|v| v.into_string().unwrap_or_default());
        let server = parts.next().filter(|s| !s.is_empty());
        let server = server.ok_or_else(|| StoreError::Protocol("INFO server has no run_id".into()))?;
        let epochs: Vec<Incarnation> = parts.map(|data| Incarnation { data, server: server.clone() }).collect();
        if epochs.len() != buckets.len() {
            return Err(StoreError::Protocol("epoch reply is short".into()));
        }
        Ok(epochs)
    }
}

#[async_trait]
impl LossDetection for RedisStore {
    fn domains(&self) -> usize {
        self.layout.domains()
    }

    fn domain(&self, room: &RoomName) -> usize {
        self.layout.domain(room)
    }

    async fn incarnations(&self, domains: &[usize]) -> Result<Vec<Incarnation>, StoreError> {
        timed("epoch", async {
            let calls = self.layout.epoch_calls(domains);
            let mut out = Vec::with_capacity(domains.len());
            for answer in futures::future::join_all(calls.iter().map(|call| self.epochs(call))).await {
                out.extend(answer?);
            }
            Ok(out)
        })
        .await
    }

    fn connection_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
