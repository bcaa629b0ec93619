//! How Redis failures reach the rest of the node: as [`StoreError`]s, with
//! the retries a cluster calls for.

use std::time::Duration;

use fred::prelude::*;

use crate::store::StoreError;

/// Attempts of a command that meets `TRYAGAIN` (a slot migrating).
const TRYAGAIN_ATTEMPTS: u32 = 8;

/// Maps a Redis failure: `OOM` refusals are told apart from outages.
pub(super) fn unavailable(e: Error) -> StoreError {
    let text = e.to_string();
    let error = if e.details().starts_with("OOM") || text.contains("OOM command not allowed") {
        // Redis's text names the script and its line: for the log, not for
        // clients.
        tracing::warn!(cause = %text, "Redis refuses writes: used memory is over maxmemory");
        StoreError::OutOfMemory("used memory is over Redis's maxmemory; nothing was stored".into())
    } else {
        StoreError::Unavailable(text)
    };
    metrics::counter!("roomcast_store_errors_total", "kind" => error.kind()).increment(1);
    error
}

/// Runs a Redis command, again after a short pause while it meets
/// `TRYAGAIN` (a multi-key command on a slot that is migrating).
pub(super) async fn retrying<T, F, Fut>(mut command: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt = 0;
    loop {
        match command().await {
            Err(e) if attempt + 1 < TRYAGAIN_ATTEMPTS && e.details().starts_with("TRYAGAIN") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
            }
            outcome => return outcome.map_err(unavailable),
        }
    }
}
