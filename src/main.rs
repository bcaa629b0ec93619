//! The `roomcast` binary: parse, validate (exit 64 on bad config), log, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use roomcast::config::{Config, LogFormat, ServeArgs};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// roomcast: live-event fanout over WebSocket and SSE, on Redis Streams.
#[derive(Debug, Parser)]
#[command(name = "roomcast", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Load-test a deployment (spawned on loopback, or given by --url).
    Bench(roomcast_bench::BenchArgs),
    /// Break a spawned deployment at random and check the resume promise.
    Chaos(roomcast_bench::chaos::ChaosArgs),
    /// The bare broadcast server `bench --preset saturate` compares against.
    #[command(hide = true)]
    ReferenceServer(roomcast_bench::ReferenceArgs),
    /// One share of a benchmark's subscribers, in a process of its own.
    #[command(hide = true)]
    BenchSubscribers(roomcast_bench::spread::SubscriberArgs),
    /// One share of the join-storm preset's viewers, in a process of its own.
    #[command(hide = true)]
    BenchJoiners(roomcast_bench::joinstorm::JoinerArgs),
    /// One share of the presence preset's viewers, in a process of its own.
    #[command(hide = true)]
    BenchPresenceViewers(roomcast_bench::presence::ViewerArgs),
}

/// `EX_USAGE`: bad command line or configuration.
const EXIT_USAGE: u8 = 64;

/// mimalloc rather than the system allocator: per-connection state is many
/// small allocations, and a connection storm's transient buffers (HTTP
/// upgrade, handshakes) are freed back instead of staying resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let config = match Config::try_from(*args) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("roomcast: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            init_tracing(config.node.log_format);
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(cause = format!("{e:#}"), "roomcast stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench(args) => match roomcast_bench::main(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("roomcast bench: loss, duplicates, reordering or gaps: the run is not clean");
                ExitCode::from(EXIT_UNCLEAN)
            }
            Err(e) => {
                eprintln!("roomcast bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Chaos(args) => match roomcast_bench::chaos::main(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!(
                    "roomcast chaos: the promise broke (loss without a gap, duplicates, reordering or reused IDs)"
                );
                ExitCode::from(EXIT_UNCLEAN)
            }
            Err(e) => {
                eprintln!("roomcast chaos: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::BenchSubscribers(args) => match roomcast_bench::spread::subscribers_main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench subscribers: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::BenchJoiners(args) => match roomcast_bench::joinstorm::joiners_main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench joiners: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::BenchPresenceViewers(args) => match roomcast_bench::presence::viewers_main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench presence viewers: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::ReferenceServer(args) => {
            init_tracing(LogFormat::Text);
            match roomcast_bench::reference_main(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("reference server: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `roomcast bench` found loss, duplicates, reordering or gaps.
const EXIT_UNCLEAN: u8 = 3;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.threads() {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.node.listen)
            .await
            .with_context(|| format!("binding {}", config.node.listen))?;
        let shutdown = CancellationToken::new();
        roomcast::shutdown::on_signal(shutdown.clone());
        roomcast::run(config, listener, shutdown).await.context("running the node")
    })
}
