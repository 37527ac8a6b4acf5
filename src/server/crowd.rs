//! Fairness when every place is taken and none may give way by the usual rules
//! (`server::capacity`): a connection of a client holding many places, whose client has taken
//! nothing of its answers for [`STALLED_IN_A_CROWD`], gives way to a newcomer whose address holds
//! fewer places by two or more.
//!
//! A connection whose client takes nothing may give way to anyone once it has done so for
//! `CLIENT_STALLED` (5 s). A client reconnecting faster than that (about 90 connections a
//! second against 300 places, the tenth attack pass) kept every place younger, and every honest
//! newcomer out. Measured by its holder's size instead, such a client cannot keep out anyone who
//! holds less than it does, however fast it reconnects: each newcomer of the lighter address
//! takes one of its places. The margin of two keeps the heavier still heavier after the move, so
//! two holders never take places back and forth. Holders are addresses as
//! `limits.max_connections_per_address` counts them (IPv4 whole, IPv6 by its /64); addresses
//! exempt from it (`trusted_proxies`) neither give way nor are weighed here.
//!
//! One look (the heavy holders' stalled connections, the heaviest last) serves the newcomers of
//! the next [`LOOK_AGAIN_AFTER`], as `server::idlest`'s does, so a newcomer costs a look at every
//! connection at most once a second, however many come.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

pub(super) use super::activity::STALLED_IN_A_CROWD;
use super::idlest::{KEPT, LOOK_AGAIN_AFTER};

/// The smallest holder a newcomer holding `mine` places (its own new one included) may take a
/// place from.
pub(super) fn heavier_than(mine: usize) -> usize {
    mine + 2
}

/// A stalled connection of a heavy holder: how many places its address holds, how long its
/// client has taken nothing, and which it is.
pub(super) type Candidate = (usize, Duration, u64);

/// The last look's candidates, the heaviest holder's longest stalled last.
#[derive(Default)]
pub(super) struct Crowd {
    kept: Mutex<Option<(Instant, Vec<Candidate>)>>,
}

impl Crowd {
    /// Asks one connection of a holder of at least `heavier_than(mine)` places to close for a
    /// newcomer (`ask` says whether it could be asked: still open, still stalled, nobody asked it
    /// before). `look` lists the candidates of every holder of at least `heavier_than(1)`; it is
    /// run when the kept list is older than [`LOOK_AGAIN_AFTER`]. False when none could be
    /// asked; the candidates too light for this newcomer stay for a lighter one.
    pub fn ask_one(
        &self,
        now: Instant,
        mine: usize,
        look: impl FnOnce() -> Vec<Candidate>,
        mut ask: impl FnMut(u64) -> bool,
    ) -> bool {
        let kept = self.lock().take().filter(|(at, _)| now.saturating_duration_since(*at) <= LOOK_AGAIN_AFTER);
        let (at, mut list) = kept.unwrap_or_else(|| (now, heaviest_last(look())));
        let mut asked = false;
        while let Some(&(held, _, id)) = list.last() {
            if held < heavier_than(mine) {
                break;
            }
            list.pop();
            if ask(id) {
                asked = true;
                break;
            }
        }
        // An empty list is kept too: with no stalled connection of a heavy holder, the
        // newcomers of the next second need not look again.
        *self.lock() = Some((at, list));
        asked
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Vec<Candidate>)>> {
        // Held only to take the list out or put it back: nothing in between can panic.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The [`KEPT`] heaviest candidates, the heaviest holder's longest stalled last.
fn heaviest_last(mut candidates: Vec<Candidate>) -> Vec<Candidate> {
    candidates.sort_unstable();
    let lightest = candidates.len().saturating_sub(KEPT);
    candidates.drain(..lightest);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn the_heaviest_holder_gives_way_to_a_lighter_newcomer_and_never_to_an_equal_one() {
        let crowd = Crowd::default();
        let looks = Cell::new(0);
        // Holder sizes 9, 9 and 3; one of the 9's has stalled longest.
        let candidates = vec![(9, secs(1), 1), (3, secs(4), 2), (9, secs(2), 3)];
        let look = || {
            looks.set(looks.get() + 1);
            candidates.clone()
        };
        let now = Instant::now();
        let mut asked = Vec::new();
        assert!(crowd.ask_one(now, 1, look, |id| {
            asked.push(id);
            true
        }));
        assert_eq!(asked, [3], "the heaviest holder's longest stalled");
        // A newcomer whose address holds 8 may not take from a holder of 9.
        assert!(!crowd.ask_one(now, 8, look, |_| panic!("nobody is asked")));
        // Nor one of 2 from the holder of 3; but the other 9's place is kept for a lighter one.
        assert!(crowd.ask_one(now, 2, look, |id| id == 1));
        assert!(!crowd.ask_one(now, 2, look, |_| panic!("3 is too light for it")));
        assert!(crowd.ask_one(now, 1, look, |id| id == 2));
        assert_eq!(looks.get(), 1, "one look served them all");

        // Spent, and nothing new for a second: no new look until then.
        assert!(!crowd.ask_one(now, 1, look, |_| true));
        assert_eq!(looks.get(), 1);
        tokio::time::advance(LOOK_AGAIN_AFTER + Duration::from_millis(1)).await;
        assert!(crowd.ask_one(Instant::now(), 1, look, |_| true));
        assert_eq!(looks.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_that_cannot_be_asked_is_passed_over() {
        let crowd = Crowd::default();
        let look = || vec![(5, secs(1), 1), (5, secs(3), 2)];
        // 2 has closed, or taken some of its answers, since the look.
        let mut asked = Vec::new();
        assert!(crowd.ask_one(Instant::now(), 1, look, |id| {
            asked.push(id);
            id == 1
        }));
        assert_eq!(asked, [2, 1]);
        assert_eq!(heaviest_last((0..300).map(|i| (3, secs(i), i)).collect()).len(), KEPT);
    }
}
