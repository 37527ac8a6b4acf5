//! Clock health. TOTP is only as good as the server's clock (a code is a function of the time):
//! a server drifting by a minute rejects every right code. Three signals, reported at start-up,
//! by `portcullis doctor`, and in the log:
//!
//! * whether the kernel says its clock is synchronised (`adjtimex(2)`: a time daemon such as
//!   chrony, ntpd or systemd-timesyncd keeps it so);
//! * optionally, the offset against an SNTP server (`[clock] ntp_server`, RFC 4330);
//! * drift telemetry from the codes users enter: authenticator apps sit on phones with good
//!   clocks, so if most accepted codes match the step before or after ours, ours is off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::ClockSettings;

/// What the kernel says about its clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelClock {
    Synchronised,
    Unsynchronised,
    Unknown(String),
}

/// Asks the kernel, read-only (`modes = 0`), whether its clock is synchronised.
pub fn kernel_clock() -> KernelClock {
    // SAFETY: `timex` is plain data; zeroed is a valid "read only" request, and adjtimex only
    // writes into the struct we own for the duration of the call.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut timex) };
    let error = (state < 0).then(|| std::io::Error::last_os_error().to_string());
    interpret_adjtimex(state, timex.status, error)
}

/// What `adjtimex(2)`'s answer means: its return value (the clock state, or -1 with `error`) and
/// the status bits. `TIME_ERROR` or `STA_UNSYNC` means no time daemon keeps the clock in step.
fn interpret_adjtimex(state: i32, status: i32, error: Option<String>) -> KernelClock {
    if state < 0 {
        return KernelClock::Unknown(error.unwrap_or_else(|| "adjtimex failed".into()));
    }
    if state == libc::TIME_ERROR || status & libc::STA_UNSYNC != 0 {
        KernelClock::Unsynchronised
    } else {
        KernelClock::Synchronised
    }
}

/// Our clock minus the SNTP server's, in seconds (positive: we are ahead).
pub async fn sntp_offset(server: &str, timeout: Duration) -> Result<f64, String> {
    let client = rsntp::AsyncSntpClient::with_config(rsntp::Config::default().timeout(timeout));
    let result = client.synchronize(server).await.map_err(|e| e.to_string())?;
    // rsntp reports the correction to apply to our clock; we report how far off we are.
    Ok(-result.clock_offset().as_secs_f64())
}

/// Accepted TOTP codes, by the step they matched relative to ours.
#[derive(Debug, Default)]
pub struct Drift {
    behind: AtomicU64,
    on_time: AtomicU64,
    ahead: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftReport {
    pub samples: u64,
    /// Share of codes from the step before ours: the users' clocks are behind, or ours ahead.
    pub previous_step: f64,
    /// Share from the step after ours: ours is behind.
    pub next_step: f64,
}

/// Below this many codes, the shares say nothing.
const MIN_SAMPLES: u64 = 20;

impl DriftReport {
    /// Most codes arriving from a neighbouring step means our clock is probably off by around
    /// half a step (15 s) or more.
    pub fn skew_likely(&self) -> bool {
        self.samples >= MIN_SAMPLES && (self.previous_step > 0.5 || self.next_step > 0.5)
    }
}

impl Drift {
    /// `offset` is the matched step minus the current one: -1, 0 or +1.
    pub fn record(&self, offset: i64) {
        let counter = match offset {
            o if o < 0 => &self.behind,
            0 => &self.on_time,
            _ => &self.ahead,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("portcullis_totp_step_offset_total", "offset" => match offset {
            o if o < 0 => "-1",
            0 => "0",
            _ => "+1",
        })
        .increment(1);
    }

    pub fn report(&self) -> DriftReport {
        let (b, o, a) = (
            self.behind.load(Ordering::Relaxed),
            self.on_time.load(Ordering::Relaxed),
            self.ahead.load(Ordering::Relaxed),
        );
        let samples = b + o + a;
        let share = |n: u64| if samples == 0 { 0.0 } else { n as f64 / samples as f64 };
        DriftReport { samples, previous_step: share(b), next_step: share(a) }
    }
}

/// The clock checks that need no running server: kernel state and, if configured, SNTP.
#[derive(Debug, Clone)]
pub struct ClockReport {
    pub kernel: KernelClock,
    pub sntp: Option<(String, Result<f64, String>)>,
    pub warnings: Vec<String>,
}

pub async fn check(settings: &ClockSettings) -> ClockReport {
    let kernel = kernel_clock();
    let mut warnings = Vec::new();
    if kernel == KernelClock::Unsynchronised {
        warnings.push(
            "the kernel reports the clock as not synchronised: run a time daemon (chrony, ntpd or systemd-timesyncd), or TOTP codes will start failing as the clock drifts".to_string(),
        );
    }
    let sntp = match &settings.ntp_server {
        None => None,
        Some(server) => {
            let offset = sntp_offset(server, Duration::from_secs(3)).await;
            match &offset {
                Ok(seconds) if seconds.abs() > settings.max_offset.as_secs_f64() => warnings.push(format!(
                    "this clock is {seconds:+.1} s off {server}: TOTP accepts only ±30 s, so fix the time (run a time daemon)"
                )),
                Ok(_) => {}
                Err(e) => warnings.push(format!("could not ask {server} for the time: {e}")),
            }
            Some((server.clone(), offset))
        }
    };
    ClockReport { kernel, sntp, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_needs_samples_and_a_majority_off_step() {
        let drift = Drift::default();
        for _ in 0..10 {
            drift.record(1);
        }
        assert!(!drift.report().skew_likely(), "ten codes are too few to judge");
        for _ in 0..10 {
            drift.record(1);
        }
        for _ in 0..5 {
            drift.record(0);
        }
        let report = drift.report();
        assert_eq!(report.samples, 25);
        assert!((report.next_step - 0.8).abs() < 1e-9);
        assert!(report.skew_likely());

        let healthy = Drift::default();
        for i in 0..100 {
            healthy.record(if i % 10 == 0 { -1 } else { 0 });
        }
        assert!(!healthy.report().skew_likely());
    }

    #[test]
    fn the_kernel_answer_is_read_right() {
        let synced = interpret_adjtimex(libc::TIME_OK, libc::STA_PLL, None);
        assert_eq!(synced, KernelClock::Synchronised);
        let unsynced = interpret_adjtimex(libc::TIME_OK, libc::STA_UNSYNC | libc::STA_PLL, None);
        assert_eq!(unsynced, KernelClock::Unsynchronised, "the unsync bit alone says so");
        assert_eq!(interpret_adjtimex(libc::TIME_ERROR, 0, None), KernelClock::Unsynchronised);
        let failed = interpret_adjtimex(-1, 0, Some("Operation not permitted".into()));
        assert_eq!(failed, KernelClock::Unknown("Operation not permitted".into()));
        // And asking this machine's kernel gives one of the three, with a reason if unknown.
        if let KernelClock::Unknown(why) = kernel_clock() {
            assert!(!why.is_empty());
        }
    }
}
