//! Which idle connections give way to newcomers, found without looking through every open
//! connection for each newcomer.
//!
//! With `limits.max_connections` spent, each newcomer asks the connection idle longest to close
//! (`server::capacity`). Finding it means looking at every open connection: 0.53 ms with the
//! default 10,000 open and 6.5 ms with 100,000 (measured in a release build). A client that keeps
//! the budget full of idle connections and opens new ones as fast as it can would make the proxy
//! do that for each, about two thousand connections a second to keep one core busy. So one look
//! lists the [`KEPT`] idlest at once, and the newcomers after it take them in turn, each checked
//! again when it is taken (it may have closed or become busy since); a look older than
//! [`LOOK_AGAIN_AFTER`] is not trusted and is done again. The cost of a look is then shared by up
//! to [`KEPT`] newcomers, and each newcomer still asks exactly one connection to close.
//!
//! A list is kept per group of connections a newcomer may displace: all of them, or one
//! address's own (at its share of the budget); a few addresses at once, each with its own list.
//!
//! A look that finds no connection idle at all is kept too ([`NothingIdle`]), until a connection
//! goes quiet: with every connection busy, each newcomer would otherwise look through them all
//! only to be refused.

use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How many of the idlest one look lists.
pub(super) const KEPT: usize = 256;
/// How long a list is trusted: as long as a newcomer waits for the place it made.
pub(super) const LOOK_AGAIN_AFTER: Duration = Duration::from_secs(1);
/// The most groups with a list at once (addresses at their share, and all connections); past it,
/// the lists are dropped and made again as needed.
const MAX_LISTS: usize = 64;

/// The idle connections one look found, the idlest last.
struct Look {
    at: Instant,
    idlest_last: Vec<u64>,
}

/// The kept looks, per group of connections (`G`: which connections a newcomer may displace).
pub(super) struct Idlest<G> {
    looks: Mutex<HashMap<G, Look>>,
}

impl<G: Hash + Eq + Copy> Default for Idlest<G> {
    fn default() -> Self {
        Self { looks: Mutex::new(HashMap::new()) }
    }
}

impl<G: Hash + Eq + Copy> Idlest<G> {
    /// Asks one connection of `group`, the idlest the last look found that is still idle, to
    /// close (`ask` says whether it could be asked: it exists, is idle, and nobody asked it
    /// before). `look` lists the group's idle connections with how long each has been idle; it is
    /// run when there is no fresh list, or when every connection on the list has been tried.
    /// False when no connection of the group could be asked.
    pub fn ask_one(
        &self,
        group: G,
        now: Instant,
        look: impl Fn() -> Vec<(Duration, u64)>,
        mut ask: impl FnMut(u64) -> bool,
    ) -> bool {
        let kept = self.lock().remove(&group).filter(|kept| now.saturating_duration_since(kept.at) <= LOOK_AGAIN_AFTER);
        let looked_now = kept.is_none();
        let mut list = kept.unwrap_or_else(|| Look { at: now, idlest_last: idlest_last(look(), KEPT) });
        let mut asked = Self::take(&mut list, &mut ask);
        if !asked && !looked_now {
            // Everyone the old look found has gone, been asked, or is busy: one new look.
            list = Look { at: now, idlest_last: idlest_last(look(), KEPT) };
            asked = Self::take(&mut list, &mut ask);
        }
        // The look is done outside the lock (it can take milliseconds): two newcomers may look at
        // once, and the later list is kept. Either is right; one was only done twice.
        if !list.idlest_last.is_empty() {
            let mut looks = self.lock();
            if looks.len() >= MAX_LISTS {
                looks.clear();
            }
            looks.insert(group, list);
        }
        asked
    }

    fn take(list: &mut Look, ask: &mut impl FnMut(u64) -> bool) -> bool {
        while let Some(id) = list.idlest_last.pop() {
            if ask(id) {
                return true;
            }
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<G, Look>> {
        // Held only to take a list out or put one back: nothing in it can panic.
        self.looks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether the last look among all connections found none idle, and none has gone quiet since.
///
/// Every connection holds the flag ([`NothingIdle::flag`]) and calls [`went_quiet`] when it
/// might have become idle (a request ended, a stalled write went through) or was admitted. The
/// flag is set before a look and the look's "none" is kept only if it is still set after it:
/// with both sides sequentially consistent (the connection's own state, then the flag; the flag,
/// then the connections' states), a connection going quiet during the look either is seen idle
/// by the look or sees the flag and clears it. While nothing is kept, the flag is false and
/// never written, so a connection reads a cache line that no one changes.
#[derive(Default)]
pub(super) struct NothingIdle {
    flag: Arc<AtomicBool>,
    seen_at: Mutex<Option<Instant>>,
}

impl NothingIdle {
    /// The flag each connection clears when it goes quiet.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Whether a look less than [`LOOK_AGAIN_AFTER`] ago found nothing idle, and nothing has
    /// gone quiet since.
    pub fn holds(&self, now: Instant) -> bool {
        self.flag.load(Ordering::SeqCst)
            && self.seen().is_some_and(|at| now.saturating_duration_since(at) <= LOOK_AGAIN_AFTER)
    }

    /// Looks (`look`) with the flag raised, and keeps its "none" if nothing went quiet meanwhile.
    pub fn look<T>(&self, now: Instant, look: impl FnOnce() -> Vec<T>) -> Vec<T> {
        // An older "none" is not to be trusted while the flag is up for this look.
        *self.seen_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.flag.store(true, Ordering::SeqCst);
        let found = look();
        if found.is_empty() && self.flag.load(Ordering::SeqCst) {
            *self.seen_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
        } else {
            self.flag.store(false, Ordering::SeqCst);
        }
        found
    }

    fn seen(&self) -> Option<Instant> {
        *self.seen_at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection might have become idle: a kept "nothing idle" no longer holds. A load of a line
/// no one writes unless every connection is busy.
pub(super) fn went_quiet(flag: &AtomicBool) {
    if flag.load(Ordering::SeqCst) {
        flag.store(false, Ordering::SeqCst);
    }
}

/// The `most` longest idle of `idle` (how long, which), the idlest last. One pass, with a heap of
/// `most` entries: O(n log most), not a sort of them all.
fn idlest_last(idle: Vec<(Duration, u64)>, most: usize) -> Vec<u64> {
    // A min-heap of the longest seen so far: its top is the shortest of them, the one to drop.
    let mut longest = BinaryHeap::with_capacity(most + 1);
    for (for_how_long, id) in idle {
        longest.push(std::cmp::Reverse((for_how_long, id)));
        if longest.len() > most {
            longest.pop();
        }
    }
    // Ascending by `Reverse` is descending by idleness: reversed, the idlest comes last.
    longest.into_sorted_vec().into_iter().rev().map(|std::cmp::Reverse((_, id))| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_idlest_are_kept_in_order_the_idlest_last() {
        let idle = vec![(secs(3), 3), (secs(9), 9), (secs(1), 1), (secs(7), 7), (secs(5), 5)];
        assert_eq!(idlest_last(idle.clone(), 3), [5, 7, 9]);
        assert_eq!(idlest_last(idle, 10), [1, 3, 5, 7, 9]);
        assert!(idlest_last(Vec::new(), 3).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn one_look_serves_many_newcomers_each_asking_one_still_idle_connection() {
        let idlest = Idlest::<Option<u8>>::default();
        let looks = Cell::new(0);
        let open: RefCell<Vec<(Duration, u64)>> = RefCell::new((1..=10).map(|i| (secs(i), i)).collect());
        let look = || {
            looks.set(looks.get() + 1);
            open.borrow().clone()
        };
        let asked = RefCell::new(Vec::new());
        // A connection can be asked while it is open and not asked already.
        let ask = |id: u64| {
            let still_open = open.borrow().iter().any(|&(_, open_id)| open_id == id);
            let fresh = !asked.borrow().contains(&id);
            if still_open && fresh {
                asked.borrow_mut().push(id);
            }
            still_open && fresh
        };
        let now = Instant::now();
        assert!(idlest.ask_one(None, now, look, ask));
        assert!(idlest.ask_one(None, now, look, ask));
        assert_eq!(*asked.borrow(), [10, 9], "the idlest first, one per newcomer");
        assert_eq!(looks.get(), 1, "the second newcomer used the first one's look");

        // 8 closed meanwhile: it is passed over for the next one on the list.
        open.borrow_mut().retain(|&(_, id)| id != 8);
        assert!(idlest.ask_one(None, now, look, ask));
        assert_eq!(asked.borrow().last(), Some(&7));
        assert_eq!(looks.get(), 1);

        // A list older than a second is looked at again.
        tokio::time::advance(LOOK_AGAIN_AFTER + Duration::from_millis(1)).await;
        open.borrow_mut().push((secs(60), 60));
        assert!(idlest.ask_one(None, Instant::now(), look, ask));
        assert_eq!(asked.borrow().last(), Some(&60), "one that became the idlest since");
        assert_eq!(looks.get(), 2);

        // Another group has its own list.
        assert!(idlest.ask_one(Some(1), Instant::now(), look, ask));
        assert_eq!(looks.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_list_runs_out_one_new_look_decides() {
        let idlest = Idlest::<()>::default();
        let looks = Cell::new(0);
        let idle = RefCell::new(vec![(secs(5), 1)]);
        let look = || {
            looks.set(looks.get() + 1);
            idle.borrow().clone()
        };
        let now = Instant::now();
        assert!(idlest.ask_one((), now, look, |_| true));
        // The list is spent; a connection went idle since: a new look finds it.
        idle.borrow_mut().push((secs(1), 2));
        let mut asked = None;
        assert!(idlest.ask_one((), now, look, |id| {
            asked = Some(id);
            id == 2
        }));
        assert_eq!((asked, looks.get()), (Some(2), 2));
        // Nothing idle at all: no, after one look, not a loop.
        idle.borrow_mut().clear();
        assert!(!idlest.ask_one((), now, look, |_| true));
        assert_eq!(looks.get(), 3);
    }
}
