//! Errors that stop a node.

use crate::store::StoreError;

/// Why [`run`](crate::run) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be reached at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// A part of the node could not be set up (its HTTP client, say).
    #[error("setting up: {0}")]
    Setup(String),
}
