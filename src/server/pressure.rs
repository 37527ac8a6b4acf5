//! What an operator is told about `limits.max_connections` being spent: counters for the metrics
//! listener, and the log.
//!
//! Under pressure a newcomer either takes the place of a connection that gives way
//! (`server::capacity`), or, when every connection is busy, is turned away with a 503. The first is
//! the budget working as meant (an idle keep-alive connection may be closed at any time, RFC 9112
//! §9.5), so it is told at `info`; the second is visitors refused, told at `warn`. One line each
//! would be thousands a second under attack, so the first event after a quiet minute is told at
//! once (the operator learns when it started), and then one summary a minute for as long as it
//! lasts, and one line when a minute passes without any.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::base::metrics;

/// How often the summary is told while the pressure lasts.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Why a newcomer was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TurnedAway {
    /// Every connection was busy (a request in flight, a tunnel).
    AllBusy,
    /// Its address (or IPv6 /48) held its whole share, every connection of it busy.
    ShareBusy,
    /// The connection asked to make room did not close in time (it had just taken a request).
    NotGivenInTime,
}

impl TurnedAway {
    pub fn label(self) -> &'static str {
        match self {
            Self::AllBusy => "all_busy",
            Self::ShareBusy => "share_busy",
            Self::NotGivenInTime => "not_given_in_time",
        }
    }
}

/// Which rule made a connection give its place to a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GaveWay {
    /// The idlest of all (idle between requests, silent, or its client taking nothing for 5 s).
    Idlest,
    /// The idlest of the newcomer's own address or /48, at its share.
    OwnShare,
    /// A heavier holder's stalled connection (`server::crowd`).
    Crowd,
}

impl GaveWay {
    pub fn label(self) -> &'static str {
        match self {
            Self::Idlest => "idlest",
            Self::OwnShare => "own_share",
            Self::Crowd => "crowd",
        }
    }
}

/// The events since the last summary, and whether the one before was quiet.
#[derive(Default)]
pub(super) struct Pressure {
    turned_away: AtomicU64,
    gave_way: AtomicU64,
    /// No newcomer turned away since the last quiet minute: the next one is told at once.
    refusals_quiet: AtomicBool,
    /// No connection gave way since the last quiet minute.
    giving_way_quiet: AtomicBool,
}

/// One minute's summary.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Report {
    pub turned_away: u64,
    pub gave_way: u64,
    pub open: usize,
    pub max: usize,
}

impl Pressure {
    pub fn new() -> Self {
        Self { refusals_quiet: AtomicBool::new(true), giving_way_quiet: AtomicBool::new(true), ..Self::default() }
    }

    pub fn turned_away(&self, why: TurnedAway, max: usize) {
        metrics::connection_turned_away(why.label());
        if first_after_quiet(&self.turned_away, &self.refusals_quiet) {
            tracing::warn!(
                reason = why.label(),
                "limits.max_connections ({max}) is spent and no connection could give way: newcomers are \
                 turned away with 503 (a summary follows every minute while it lasts)"
            );
        }
    }

    pub fn gave_way(&self, rule: GaveWay, max: usize) {
        metrics::connection_gave_way(rule.label());
        if first_after_quiet(&self.gave_way, &self.giving_way_quiet) {
            tracing::info!(
                rule = rule.label(),
                "limits.max_connections ({max}) is spent: connections give their places to newcomers \
                 (a summary follows every minute while it lasts)"
            );
        }
    }

    /// The events since the last call; `None` if there were none, and then the next event is
    /// told at once again.
    pub fn take_report(&self, open: usize, max: usize) -> Option<Report> {
        let turned_away = self.turned_away.swap(0, Ordering::Relaxed);
        let gave_way = self.gave_way.swap(0, Ordering::Relaxed);
        if turned_away == 0 {
            self.refusals_quiet.store(true, Ordering::Relaxed);
        }
        if gave_way == 0 {
            self.giving_way_quiet.store(true, Ordering::Relaxed);
        }
        (turned_away > 0 || gave_way > 0).then_some(Report { turned_away, gave_way, open, max })
    }
}

/// Counts one event; true if it is the first since a quiet minute (and then the next are not).
fn first_after_quiet(count: &AtomicU64, quiet: &AtomicBool) -> bool {
    count.fetch_add(1, Ordering::Relaxed);
    quiet.swap(false, Ordering::Relaxed)
}

impl Report {
    /// Told at `warn` when visitors were refused.
    pub fn refused_anyone(&self) -> bool {
        self.turned_away > 0
    }

    /// Writes the summary to the log, under this module's target as the first lines are, so one
    /// filter (`portcullis::server::pressure`) shows all of it.
    pub fn tell(&self) {
        if self.refused_anyone() {
            tracing::warn!("{self}");
        } else {
            tracing::info!("{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { turned_away, gave_way, open, max } = self;
        write!(
            f,
            "in the last minute {turned_away} newcomer(s) were turned away with 503 and {gave_way} connection(s) \
             gave their places to newcomers; {open} of limits.max_connections ({max}) open now"
        )?;
        if *turned_away > 0 {
            write!(
                f,
                ". If these are visitors, raise limits.max_connections; the portcullis_connections_* \
                 metrics say which rule applied"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_with_events_is_summed_up_and_a_quiet_one_is_not() {
        let pressure = Pressure::new();
        assert_eq!(pressure.take_report(3, 10), None, "nothing happened");
        pressure.gave_way(GaveWay::Idlest, 10);
        pressure.gave_way(GaveWay::Crowd, 10);
        pressure.turned_away(TurnedAway::AllBusy, 10);
        let report = pressure.take_report(10, 10).expect("a minute under pressure");
        assert_eq!(report, Report { turned_away: 1, gave_way: 2, open: 10, max: 10 });
        assert!(report.refused_anyone());
        assert!(report.to_string().contains("1 newcomer(s) were turned away"), "{report}");
        assert!(report.to_string().contains("raise limits.max_connections"), "{report}");
        assert_eq!(pressure.take_report(10, 10), None, "the counts start again each minute");
    }

    #[test]
    fn the_first_event_after_a_quiet_minute_is_told_at_once_and_the_next_ones_are_not() {
        let pressure = Pressure::new();
        assert!(pressure.refusals_quiet.load(Ordering::Relaxed));
        pressure.turned_away(TurnedAway::ShareBusy, 10);
        assert!(!pressure.refusals_quiet.load(Ordering::Relaxed), "told: the next is summed up");
        assert!(pressure.giving_way_quiet.load(Ordering::Relaxed), "each kind is told on its own");
        pressure.turned_away(TurnedAway::ShareBusy, 10);
        // A minute with refusals keeps the next ones to the summary...
        assert!(pressure.take_report(10, 10).is_some());
        assert!(!pressure.refusals_quiet.load(Ordering::Relaxed));
        // ...and a quiet one lets the next be told at once.
        assert!(pressure.take_report(10, 10).is_none());
        assert!(pressure.refusals_quiet.load(Ordering::Relaxed));
    }

    #[test]
    fn every_label_is_one_the_metrics_show_from_the_start() {
        for why in [TurnedAway::AllBusy, TurnedAway::ShareBusy, TurnedAway::NotGivenInTime] {
            assert!(metrics::TURNED_AWAY_REASONS.contains(&why.label()), "{why:?}");
        }
        for rule in [GaveWay::Idlest, GaveWay::OwnShare, GaveWay::Crowd] {
            assert!(metrics::GAVE_WAY_RULES.contains(&rule.label()), "{rule:?}");
        }
    }

    #[test]
    fn giving_way_alone_is_no_reason_to_raise_the_limit() {
        let pressure = Pressure::new();
        pressure.gave_way(GaveWay::OwnShare, 10);
        let report = pressure.take_report(10, 10).unwrap();
        assert!(!report.refused_anyone());
        assert!(!report.to_string().contains("raise"), "{report}");
    }
}
