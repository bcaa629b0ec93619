//! The binary's edges: configuration errors exit 64 before binding.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

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

/// `docs/configuration.md` is where the flags are written down: it must
/// name every flag `serve --help` has, with the same environment variable
/// and default, and no flag the binary does not have.
#[test]
fn the_configuration_doc_matches_help() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    // flag -> (env, default) from the help text.
    let mut flags = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let line = line.trim();
        if let Some(flag) = line.strip_prefix("--").map(|f| f.split_whitespace().next().unwrap_or("")) {
            if flag != "help" {
                current = Some(format!("--{flag}"));
                flags.insert(format!("--{flag}"), (String::new(), None::<String>));
            }
        } else if let (Some(flag), Some(env)) = (&current, line.strip_prefix("[env: ")) {
            flags.get_mut(flag).unwrap().0 = env.trim_end_matches(']').trim_end_matches('=').to_owned();
        } else if let (Some(flag), Some(default)) = (&current, line.strip_prefix("[default: ")) {
            flags.get_mut(flag).unwrap().1 = Some(default.trim_end_matches(']').to_owned());
        }
    }
    assert!(flags.len() > 25, "help parsed: {flags:?}");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let mut documented = std::collections::BTreeSet::new();
    for row in doc.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split(" | ").map(|c| c.trim_matches(|ch| ch == '|' || ch == ' ')).collect();
        let flag = cells[0].trim_matches('`');
        let (env, default) =
            flags.get(flag).unwrap_or_else(|| panic!("{flag} is documented but `serve --help` has no such flag"));
        assert_eq!(cells[1].trim_matches('`'), env, "{flag}: its environment variable");
        if let Some(default) = default {
            assert_eq!(cells[2], format!("`{default}`"), "{flag}: its default");
        }
        documented.insert(flag.to_owned());
    }
    let missing: Vec<&String> = flags.keys().filter(|f| !documented.contains(f.as_str())).collect();
    assert!(missing.is_empty(), "flags missing from docs/configuration.md: {missing:?}");
}
