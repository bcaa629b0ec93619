//! Starting the processes a harness run, a chaos run or a test needs: a
//! `redis-server` with the project's settings, and a node, read until it
//! says where it listens. One place, so the harness and the tests start
//! them alike.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

/// A `redis-server` on loopback `port`, keeping its files in `dir`, with no
/// persistence and replicas that sync at once (a new replica otherwise
/// waits 5 s before its first sync); add arguments to change any of it
/// (a later `--bind` or `--appendonly` wins).
pub fn redis_server(port: u16, dir: &Path) -> Command {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--repl-diskless-sync-delay", "0", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Starts a node from `command` (its program and arguments set), passing
/// every line it logs to `on_line`, and waits up to `within` for its
/// "listening addr=..." line. Returns the process and that address.
pub fn node(
    mut command: Command,
    within: Duration,
    mut on_line: impl FnMut(String) + Send + 'static,
) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("starting a node")?;
    let stderr = child.stderr.take().context("the node's stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening") {
                if let Some(addr) = line.split("addr=").nth(1).and_then(|a| a.split_whitespace().next()) {
                    let _ = tx.send(addr.to_owned());
                }
            }
            on_line(line);
        }
    });
    match rx.recv_timeout(within).ok().and_then(|addr| addr.parse().ok()) {
        Some(addr) => Ok((child, addr)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the node did not say where it listens within {within:?}")
        }
    }
}
