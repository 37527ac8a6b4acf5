//! Log output: human-readable lines on stderr. `RUST_LOG` overrides `log.level` from the config.
//!
//! What is logged is decided where events happen; the rule everywhere is: user names, addresses,
//! paths (without query strings) and session *references* (a prefix of the id's hash) only. Never
//! a password, code, cookie, key or token.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::AuditOutput;

/// Crates whose debug output would include secrets or challenges, held at `warn`.
const QUIET: [&str; 3] = ["webauthn_rs=warn", "webauthn_rs_core=warn", "webauthn_rs_proto=warn"];

/// The target every security event is logged under; the audit trail is exactly these events.
pub const SECURITY: &str = "portcullis::security";

/// Keeps the log writers running; drop it last (at exit) to flush what is queued.
pub struct LogGuards(#[allow(dead_code)] Vec<WorkerGuard>);

/// Starts logging. Lines are written by dedicated threads, so a slow log consumer (a busy
/// journald, a full pipe) never stalls a worker mid-request; when a queue is full, logging
/// waits rather than dropping lines, since security events must not go missing.
///
/// Besides the human-readable log on stderr, every security event (login ok/failed, second factor
/// ok/failed, lockouts, enrollment, removal, recovery codes, sessions ended) is appended to the
/// audit trail as one JSON object per line, whatever the log level.
pub fn init(level: &str, audit: &AuditOutput) -> LogGuards {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // webauthn-rs logs ceremony state (challenges) and credentials at debug and trace: never
    // those, whatever level is asked for. Its warnings and errors still come through.
    let filter = QUIET.iter().filter_map(|d| d.parse().ok()).fold(filter, EnvFilter::add_directive);
    let writer = |name: &str, sink: Box<dyn std::io::Write + Send>| {
        NonBlockingBuilder::default().lossy(false).thread_name(name).finish(sink)
    };
    let (stderr, stderr_guard) = writer("portcullis-log", Box::new(std::io::stderr()));
    let mut guards = vec![stderr_guard];
    let human = tracing_subscriber::fmt::layer()
        .with_writer(stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .with_filter(filter);
    let sink: Option<Box<dyn std::io::Write + Send>> = match audit {
        AuditOutput::Off => None,
        AuditOutput::Stdout => Some(Box::new(std::io::stdout())),
        AuditOutput::File(path) => match open_audit_file(path) {
            Ok(file) => Some(Box::new(file)),
            Err(e) => {
                eprintln!(
                    "warning: cannot open the audit log {}: {e}; security events go to the main log only",
                    path.display()
                );
                None
            }
        },
    };
    let audit_layer = sink.map(|sink| {
        let (writer, guard) = writer("portcullis-audit", sink);
        guards.push(guard);
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(Targets::new().with_target(SECURITY, tracing::Level::INFO))
    });
    // A second initialisation (unit tests) is harmless; ignore it.
    let _ = tracing_subscriber::registry().with(human).with(audit_layer).try_init();
    LogGuards(guards)
}

/// Opens the audit log for appending, created readable by its owner only.
fn open_audit_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        // The data directory is usually created here, before the server starts: private, as
        // the server would create it.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}
