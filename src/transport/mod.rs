//! Transports: adapters between a socket and a [`Session`](crate::session::Session).

pub mod sse;
pub mod ws;
