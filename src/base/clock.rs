//! The one place that reads the wall clock.
//!
//! Every rule that depends on time (session expiry, assertion lifetimes, later TOTP windows and
//! lockouts) takes its "now" from a [`Clock`], so tests can fix time instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since the Unix epoch. Our rules are all whole-second rules (cookies, JWT `iat`/`exp`,
/// RFC 6238 time steps), so a signed second count is the natural unit.
pub type UnixTime = i64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Whole seconds from `CLOCK_REALTIME_COARSE` (clock_gettime(2)): the time of the last timer
    /// tick, at most a few milliseconds behind, read from the vDSO page without the TSC read and
    /// the nanosecond arithmetic of `SystemTime::now`. The gate asks four times a request, and every
    /// rule that asks counts whole seconds. Falls back to `SystemTime` where the clock is missing.
    #[allow(clippy::disallowed_methods)] // the single sanctioned wall-clock read
    fn now(&self) -> UnixTime {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid, writable timespec for the call's duration.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) } == 0 {
            return now.tv_sec as UnixTime;
        }
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        since_epoch.as_secs() as UnixTime
    }
}

/// A clock tests can set and advance.
#[derive(Debug, Clone)]
pub struct FixedClock(Arc<AtomicI64>);

impl FixedClock {
    pub fn at(now: UnixTime) -> Self {
        Self(Arc::new(AtomicI64::new(now)))
    }

    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The coarse clock is the same clock a few milliseconds late: never a second off but for a
    /// read that straddles a second's turn.
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn the_system_clock_reads_the_wall_clock_in_whole_seconds() {
        let wall = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as UnixTime;
        let (before, now, after) = (wall(), SystemClock.now(), wall());
        assert!((before - 1..=after).contains(&now), "{before} <= {now} <= {after}");
    }
}
