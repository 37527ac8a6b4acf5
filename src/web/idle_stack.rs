//! The idle upstream connections of one worker's pool, the most recently used on top: both the
//! express lane's (`web::raw_upstream`) and the full path's (`web::upstream_pool`).
//!
//! Last in, first out, as nginx keeps its upstream connections: after a burst has opened many,
//! a quieter load keeps reusing the one whose socket, buffers and runtime state are still in the
//! core's caches, and the others go unused until the reaper closes them (`proxy.pool_idle_timeout`).
//! First in, first out would cycle through all of them, each cold, and keep every one alive up
//! to the upstream's own idle timeout, where a connection lent at the instant the upstream closes
//! it fails its request.
//!
//! The lock is the pool's worker's alone (a pool's connections belong to the worker that
//! dialled them, and so does its reaper): it is never contended, so taking and giving it back
//! is an atomic operation each, as a lock-free queue's pop is.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// What to do with an idle connection looked at for lending.
pub(crate) enum Verdict {
    /// Lend it.
    Take,
    /// Close it (stale, closed, or with bytes nobody asked for).
    Close,
    /// Not ready this instant: leave it where it is.
    Keep,
}

pub(crate) struct IdleStack<T> {
    kept: Mutex<Vec<T>>,
    most: usize,
}

impl<T> IdleStack<T> {
    /// A stack keeping at most `most` idle connections.
    pub fn new(most: usize) -> Self {
        Self { kept: Mutex::new(Vec::new()), most }
    }

    fn kept(&self) -> MutexGuard<'_, Vec<T>> {
        // Nothing that holds the lock can panic (pushes, pops, removals, plain checks).
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently kept connection `verdict` takes, from the top down, closing those it
    /// says to close on the way.
    pub fn take(&self, mut verdict: impl FnMut(&mut T) -> Verdict) -> Option<T> {
        let mut kept = self.kept();
        let mut at = kept.len();
        while at > 0 {
            at -= 1;
            match verdict(&mut kept[at]) {
                // Near the top as a rule (only connections not ready this instant are passed
                // over), so the removal moves few or none.
                Verdict::Take => return Some(kept.remove(at)),
                Verdict::Close => drop(kept.remove(at)),
                Verdict::Keep => {}
            }
        }
        None
    }

    /// Keeps `idle` on top; with as many kept as allowed, drops (closes) it: enough are idle.
    pub fn push(&self, idle: T) {
        let mut kept = self.kept();
        if kept.len() < self.most {
            kept.push(idle);
        }
    }

    /// Closes the connections `keep` says not to keep, in place.
    pub fn retain(&self, keep: impl FnMut(&T) -> bool) {
        self.kept().retain(keep);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept().len()
    }

    #[cfg(test)]
    pub fn pop(&self) -> Option<T> {
        self.kept().pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_kept_is_lent_first_passing_over_those_not_ready_and_closing_the_stale() {
        let stack = IdleStack::new(4);
        for id in 1..=5 {
            stack.push(id);
        }
        assert_eq!(stack.len(), 4, "the fifth was one too many");
        // 4 is not ready this instant, 3 is stale: 2 is lent, 4 stays, 3 is gone.
        let verdict = |id: &mut i32| match *id {
            4 => Verdict::Keep,
            3 => Verdict::Close,
            _ => Verdict::Take,
        };
        assert_eq!(stack.take(verdict), Some(2));
        assert_eq!(stack.take(verdict), Some(1));
        assert_eq!(stack.take(verdict), None, "only the one not ready is left");
        assert_eq!(stack.len(), 1);
        stack.push(6);
        assert_eq!(stack.take(|_| Verdict::Take), Some(6), "last in, first out");
    }
}
