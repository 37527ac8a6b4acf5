//! Password hashing (argon2id, RFC 9106) kept off the async workers.
//!
//! Hashing is deliberately expensive: tens of milliseconds of a core and ~19 MiB of memory per
//! attempt. Run on the tokio workers, a burst of logins would stall every proxied request. So each
//! hash runs on the blocking pool, at most `hash_workers` at once, and when more than
//! `queue_limit` logins are already waiting, new ones are turned away at once ([`HashError::Busy`])
//! instead of queueing without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::{Argon2, PasswordVerifier as _};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::domain::users::User;

pub mod hashing;

pub use hashing::{
    HashError, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, WeakPassword, check_new_password, hash, is_valid_hash,
};

fn verify_sync(password: &[u8], hash: &str) -> bool {
    Argon2::default().verify_password(password, hash).is_ok()
}

/// A right password for this user, just checked: what a half-logged-in session starts from.
/// Only [`PasswordChecker::verify`] makes one.
pub struct PasswordProof {
    user: Arc<User>,
}

impl PasswordProof {
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    /// A password a directory accepted by a bind as the user (`domain/directory.rs`).
    pub(in crate::domain) fn checked_by_directory(user: Arc<User>) -> Self {
        Self { user }
    }

    /// For unit tests of what happens after a password (sessions), without hashing one.
    #[cfg(test)]
    pub(crate) fn for_tests(user: Arc<User>) -> Self {
        Self { user }
    }
}

/// Work for a hashing thread.
type HashJob = Box<dyn FnOnce() + Send>;

pub struct PasswordChecker {
    slots: Arc<Semaphore>,
    /// The hashing threads' queue (at most `hash_workers` jobs in it: one per slot).
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<HashJob>>,
    waiting: AtomicUsize,
    queue_limit: usize,
    /// Checked when the user does not exist, so an unknown name costs the same time as a wrong
    /// password and timing does not reveal which accounts exist.
    decoy_hash: String,
}

impl PasswordChecker {
    pub fn new(hash_workers: usize, queue_limit: usize) -> Result<Self, HashError> {
        let decoy = crate::base::secret::random_bytes::<32>();
        let (jobs, queue) = std::sync::mpsc::channel::<HashJob>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for index in 0..hash_workers.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("portcullis-hash-{index}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        // The lock is held while waiting for a job, never while hashing.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            // The checker is gone.
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| HashError::Internal(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self {
            slots: Arc::new(Semaphore::new(hash_workers)),
            jobs: std::sync::Mutex::new(jobs),
            waiting: AtomicUsize::new(0),
            queue_limit,
            decoy_hash: hash(&decoy)?,
        })
    }

    /// Checks `password` for `user` (or, for a name that is no user, against a decoy hash that
    /// never matches but takes as long). A right password yields the proof a session starts from.
    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        user: Option<&Arc<User>>,
    ) -> Result<Option<PasswordProof>, HashError> {
        let hash = user.map_or(&self.decoy_hash, |u| &u.password_hash).to_string();
        let matched = self.on_a_slot(move || Ok(verify_sync(password.as_bytes(), &hash))).await?;
        Ok(user.filter(|_| matched).map(|user| PasswordProof { user: user.clone() }))
    }

    /// Hashes a new password, on the same bounded slots as sign-ins.
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, HashError> {
        self.on_a_slot(move || hash(password.as_bytes())).await
    }

    /// Runs `work` on the blocking pool once a hashing slot is free, or refuses at once when the
    /// queue for slots is full.
    async fn on_a_slot<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Busy);
        }
        // Counted out when the wait ends however it ends: a client that leaves while waiting
        // drops this future here, and a count kept would turn every later sign-in away as busy.
        let in_line = InLine(&self.waiting);
        let permit = self.slots.clone().acquire_owned().await;
        drop(in_line);
        let permit = permit.map_err(|e| HashError::Internal(e.to_string()))?;
        let (done, result) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            let _permit = permit;
            let _ = done.send(work());
        });
        let sent = self.jobs.lock().map_err(|_| HashError::Internal("the hashing queue broke".into()))?.send(job);
        sent.map_err(|_| HashError::Internal("the hashing threads are gone".into()))?;
        result.await.map_err(|_| HashError::Internal("a hashing thread dropped its work".into()))?
    }
}

/// One sign-in waiting for a hashing slot, for as long as it waits.
struct InLine<'a>(&'a AtomicUsize);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Password hashing runs on its own threads in Linux's `SCHED_IDLE` class (sched(7)): the kernel
/// runs them only on CPU time the proxy's workers leave over, and a worker that wakes takes the
/// core from them at once. A storm of sign-ins then slows other sign-ins, not the requests of
/// people already signed in (bench/scale.sh `storm`: p99 during 50 concurrent sign-ins measured
/// 0.99x idle, where nice 10 gave 4.0x on the same machine). On a core saturated by proxied
/// traffic, sign-ins get little time; they wait in `login.queue_limit` and beyond it are told
/// "busy, try again", which is the order an overloaded gate should serve in. Where `SCHED_IDLE`
/// is refused, the thread falls back to nice 19; elsewhere than Linux this does nothing.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler and setpriority only read their arguments; gettid names this
    // thread.
    unsafe {
        let thread = libc::gettid();
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(thread, libc::SCHED_IDLE, &param) != 0
            && libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 19) != 0
        {
            tracing::debug!("could not lower the hashing thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(password: &str) -> Arc<User> {
        let password_hash = hash(password.as_bytes()).unwrap();
        Arc::new(User {
            name: crate::domain::users::Username::parse("alice").unwrap(),
            display_name: "Alice".into(),
            email: "alice@example.com".into(),
            groups: vec![],
            credential_stamp: crate::domain::users::credential_stamp(&password_hash),
            password_hash,
            account_key: "alice".into(),
        })
    }

    #[tokio::test]
    async fn right_password_matches_wrong_and_unknown_do_not() {
        let checker = PasswordChecker::new(1, 4).unwrap();
        let alice = user("correct horse");
        assert!(alice.password_hash.starts_with("$argon2id$"));
        let ok = checker.verify(Zeroizing::new("correct horse".into()), Some(&alice)).await.unwrap();
        let wrong = checker.verify(Zeroizing::new("battery staple".into()), Some(&alice)).await.unwrap();
        let unknown = checker.verify(Zeroizing::new("correct horse".into()), None).await.unwrap();
        assert_eq!(ok.map(|proof| proof.user().name.to_string()), Some("alice".to_string()));
        assert!(wrong.is_none() && unknown.is_none());
    }

    #[tokio::test]
    async fn a_full_queue_turns_logins_away_instead_of_growing() {
        let checker = Arc::new(PasswordChecker::new(1, 1).unwrap());
        let alice = user("pw");
        // Hold the only hashing slot so the next caller has to wait in the queue.
        let held = checker.slots.clone().acquire_owned().await.unwrap();
        let waiting = {
            let (checker, alice) = (checker.clone(), alice.clone());
            tokio::spawn(async move { checker.verify(Zeroizing::new("pw".into()), Some(&alice)).await })
        };
        while checker.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let turned_away = checker.verify(Zeroizing::new("pw".into()), Some(&alice)).await;
        assert!(matches!(turned_away, Err(HashError::Busy)));
        drop(held);
        assert!(waiting.await.unwrap().unwrap().is_some());
    }

    #[tokio::test]
    async fn a_sign_in_abandoned_while_waiting_gives_its_place_in_line_back() {
        let checker = PasswordChecker::new(1, 1).unwrap();
        let held = checker.slots.clone().acquire_owned().await.unwrap();
        // The only place in line taken, then the client goes away (its request future dropped).
        let mut abandoned = Box::pin(checker.on_a_slot(|| Ok(())));
        tokio::select! {
            biased;
            _ = &mut abandoned => panic!("no slot was free"),
            _ = std::future::ready(()) => {}
        }
        assert_eq!(checker.waiting.load(Ordering::Acquire), 1);
        drop(abandoned);
        drop(held);
        // Before, the count stayed taken, and every later sign-in was turned away as busy.
        assert_eq!(checker.waiting.load(Ordering::Acquire), 0);
        checker.on_a_slot(|| Ok(())).await.expect("the next sign-in gets the place");
    }

    /// The hashing threads yield to the workers: on a core they share, a sign-in storm would
    /// otherwise hold proxied requests back (4x their p99 at nice 10).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_only_on_time_the_workers_leave_over() {
        let checker = PasswordChecker::new(1, 4).unwrap();
        // SAFETY: sched_getscheduler(0) only reads the calling thread's policy.
        let policy = checker.on_a_slot(|| Ok(unsafe { libc::sched_getscheduler(0) })).await.unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // SAFETY: as above; the test's own thread is not lowered.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
