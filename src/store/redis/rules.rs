//! Room rules (bans and settings) in Redis: one hash of bans and one of
//! settings per room, in the room's slot.

use async_trait::async_trait;
use fred::prelude::*;

use super::fault::{retrying, unavailable};
use super::{now_ms, timed, RedisStore};
use crate::protocol::RoomName;
use crate::store::{RoomRules, RoomSettings, Rules, StoreError};

#[async_trait]
impl Rules for RedisStore {
    async fn room_rules(&self, room: &RoomName) -> Result<RoomRules, StoreError> {
        timed("rules", async {
            let pipeline = self.client.pipeline();
            let _: () = pipeline.hgetall(self.keys.bans(room)).await.map_err(unavailable)?;
            let _: () = pipeline.hgetall(self.keys.settings(room)).await.map_err(unavailable)?;
            let (bans, settings): (std::collections::HashMap<String, u64>, std::collections::HashMap<String, u64>) =
                pipeline.all().await.map_err(unavailable)?;
            Ok(RoomRules {
                bans: bans.into_iter().collect(),
                settings: RoomSettings { slow_mode_ms: settings.get("slow_mode_ms").copied().unwrap_or(0) },
            })
        })
        .await
    }

    async fn ban(&self, room: &RoomName, sub: &str, until_ms: u64) -> Result<(), StoreError> {
        let keys = vec![self.keys.bans(room)];
        let args: Vec<Value> = vec![sub.into(), (until_ms as i64).into(), (now_ms() as i64).into()];
        let _: Value =
            timed("rules", retrying(|| self.ban.evalsha_with_reload(&self.client, keys.clone(), args.clone()))).await?;
        Ok(())
    }

    async fn unban(&self, room: &RoomName, sub: &str) -> Result<bool, StoreError> {
        let removed: i64 =
            timed("rules", async { self.client.hdel(self.keys.bans(room), sub).await.map_err(unavailable) }).await?;
        Ok(removed > 0)
    }

    async fn set_settings(&self, room: &RoomName, settings: RoomSettings) -> Result<(), StoreError> {
        let key = self.keys.settings(room);
        let ttl = (self.options.room_ttl.as_millis() as i64).saturating_mul(2);
        timed("rules", async {
            let pipeline = self.client.pipeline();
            let _: () =
                pipeline.hset(&key, ("slow_mode_ms", settings.slow_mode_ms as i64)).await.map_err(unavailable)?;
            let _: () = pipeline.pexpire(&key, ttl, None).await.map_err(unavailable)?;
            let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}
