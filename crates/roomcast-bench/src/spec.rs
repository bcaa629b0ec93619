//! The shape of one load run, and how its progress is told.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// What a preset asks of one run, named field by field (the session adds
/// payload size, sources, processes and reader: see `Bench::spec`).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Subscriber connections.
    pub subscribers: usize,
    /// Rooms they spread over.
    pub rooms: usize,
    /// Offered publishes per second (0: connect only).
    pub rate: f64,
    /// Publishing time, in seconds.
    pub seconds: u64,
    /// Share of subscribers that drop at mid-run and resume.
    pub storm: f64,
}

/// One load run's shape.
#[derive(Clone, Debug, Serialize)]
pub struct LoadSpec {
    /// Subscriber connections.
    pub subscribers: usize,
    /// Rooms; subscriber `i` joins room `i % rooms`, publishes go round-robin.
    pub rooms: usize,
    /// Offered publishes per second (0: connect only, for idle measurements).
    pub rate: f64,
    /// Payload size in bytes.
    pub size: usize,
    /// Publishing time.
    pub duration: Duration,
    /// Share of subscribers that drop at mid-run and resume with their last ID.
    pub storm: f64,
    /// Loopback source addresses used (127.0.0.2 and up).
    pub source_ips: u8,
    /// Prefix of the room names, unique per run.
    pub room_prefix: String,
    /// Generator processes holding the subscribers: 1 keeps them in this
    /// process; more spawns that many subscriber processes (a process here
    /// may hold at most 20,000 open files).
    pub processes: usize,
    /// How subscribers read.
    pub reader: ReaderKind,
}

/// How subscribers read what they receive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReaderKind {
    /// The harness's own receive-only reader and a direct scan of the
    /// frame shapes it knows (see [`Reader`], [`decode`]): the generator
    /// takes as little of the shared cores as it can.
    #[default]
    Fast,
    /// What an ordinary client does: tungstenite for the WebSocket and a
    /// full JSON parse of every frame into a document.
    Full,
}

/// Progress callback: (phase, done, total, delivered per second).
pub type Progress = Arc<dyn Fn(&str, u64, u64, f64) + Send + Sync>;
