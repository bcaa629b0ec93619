//! The binary's edges: configuration errors exit 64 before binding.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

use support::{free_port, run_to_exit};

#[test]
fn bad_configuration_exits_64_naming_the_problem() {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    for (args, needle) in [
        (vec!["serve", "--listen", listen.as_str(), "--history", "0"], "--history"),
        (vec!["serve", "--listen", "not-an-address"], "--listen"),
        (vec!["serve", "--listen", listen.as_str(), "--redis", "localhost:6379"], "--redis"),
        (vec!["serve", "--listen", listen.as_str(), "--no-such-flag"], "--no-such-flag"),
        (vec!["serve", "--listen", listen.as_str(), "--log-format", "xml"], "xml"),
        (vec!["launch"], "launch"),
    ] {
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} should mention {needle}: {stderr}");
        assert!(!stderr.contains("listening"), "nothing may be bound: {stderr}");
    }
    // The port was never taken.
    assert!(std::net::TcpListener::bind(&listen).is_ok());
}

#[test]
fn help_exits_0() {
    let (code, _) = run_to_exit(&["serve", "--help"]);
    assert_eq!(code, Some(0));
}

#[test]
fn a_malformed_redis_url_is_a_clear_failure() {
    // An unreachable Redis is waited for (tests/redis_faults.rs); a URL
    // that cannot work never will be, so it stops the node at once.
    let (code, stderr) = run_to_exit(&["serve", "--listen", "127.0.0.1:0", "--redis", "notaurl://x"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("redis:// URL"), "{stderr}");
}
