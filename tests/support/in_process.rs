//! A node run inside the test process, over `roomcast::run` on port 0: for
//! scenarios that need no process boundary (signals, descriptor limits and
//! chaos keep spawned binaries). Starts in milliseconds, stops with the test.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running in-process node.
pub struct InProcess {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// A node configured by `serve` flags (`--listen` is ignored: port 0).
    pub async fn start(args: &[&str]) -> InProcess {
        let config = roomcast::Config::from_args(args.iter().copied()).expect("a valid configuration");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local address");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            roomcast::run(config, listener, stop).await.expect("the node runs");
        });
        InProcess { addr, shutdown, task: Some(task) }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{}", self.addr, query)
    }

    /// Stops the node as SIGTERM would, and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
