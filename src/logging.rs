//! Log output: human-readable lines on stderr. `RUST_LOG` overrides `log.level` from the config.
//!
//! What is logged is decided where events happen; the rule everywhere is: user names, addresses,
//! paths (without query strings) and session *references* (a prefix of the id's hash) only. Never
//! a password, code, cookie, key or token.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Starts logging. Lines are written by a dedicated thread, so a slow log consumer (a busy
/// journald, a full pipe) never stalls a worker mid-request; when its queue is full, logging
/// waits rather than dropping lines, since security events must not go missing. Keep the guard
/// alive until exit: dropping it flushes what is queued.
pub fn init(level: &str) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) =
        NonBlockingBuilder::default().lossy(false).thread_name("portcullis-log").finish(std::io::stderr());
    // A second initialisation (unit tests) is harmless; ignore it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
    guard
}
