//! Log output: human-readable lines on stderr. `RUST_LOG` overrides `log.level` from the config.
//!
//! What is logged is decided where events happen; the rule everywhere is: user names, addresses,
//! paths (without query strings) and session *references* (a prefix of the id's hash) only. Never
//! a password, code, cookie, key or token.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A second initialisation (tests, or the demo after a config load) is harmless; ignore it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}
