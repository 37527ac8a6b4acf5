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

/// The target every security event is logged under; the audit trail is exactly these events.
pub const SECURITY: &str = "portcullis::security";

/// Text a client chose (a user name typed into the login form, an `Upgrade` value), made safe for
/// a log line: control characters are written as `\u{..}` escapes, so a name with a newline in it
/// cannot forge a line in the human log, and very long text is cut. (The JSON audit trail escapes
/// on its own; the human log does not.)
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        const MAX_CHARS: usize = 128;
        for c in self.0.chars().take(MAX_CHARS) {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        if self.0.chars().nth(MAX_CHARS).is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn client_text_cannot_break_a_log_line() {
        let forged = "bob\n2026-11-30T12:00:00Z  INFO portcullis::security: login ok user=admin";
        let logged = Escaped(forged).to_string();
        assert!(!logged.contains('\n') && logged.starts_with("bob\\u{a}2026"), "{logged}");
        assert_eq!(Escaped("tab\there\r").to_string(), "tab\\u{9}here\\u{d}");
        assert_eq!(Escaped(&"x".repeat(200)).to_string().chars().count(), 129);
        assert_eq!(Escaped("alice").to_string(), "alice");
    }
}
