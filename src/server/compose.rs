//! The services, composed once: the store opened, every domain service loaded from it, keys
//! read. The proxy ([`super::Server`]), the offline admin CLI and the demo all start from here,
//! so there is one way the pieces fit together.

use std::sync::Arc;

use crate::base::clock::SharedClock;
use crate::base::secret::{self, KeyFileError};
use crate::config::Config;
use crate::config::store::StoreSettings;
use crate::domain::factors::Accounts;
use crate::domain::factors::sealing::Sealer;
use crate::domain::notify::{Delivery, Notifier};
use crate::domain::operator::Admin;
use crate::domain::regulation::Regulator;
use crate::domain::session::Sessions;
use crate::domain::users::{UserDirectory, UsersError};
use crate::store::redis_store::RedisStore;
use crate::store::sled_store::SledStore;
use crate::store::{Change, Space, Store, StoreError};
use tokio::sync::broadcast::error::RecvError;

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("cannot prepare data_dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the users file is invalid, so nobody could sign in: {0}")]
    Users(#[from] UsersError),
}

/// Everything that keeps state, for one data directory.
pub struct Services {
    pub users: Arc<UserDirectory>,
    pub sessions: Arc<Sessions>,
    pub accounts: Arc<Accounts>,
    pub regulator: Arc<Regulator>,
    pub notifier: Arc<Notifier>,
    /// The mail delivery task's half, to be spawned by whoever runs the services.
    pub delivery: Option<Delivery>,
    /// TOTP secrets are sealed with a key kept beside, not inside, the database.
    pub sealer: Sealer,
    pub clock: SharedClock,
    pub store: Arc<dyn Store>,
}

/// The store `[store]` names: the embedded one in `data_dir/store`, or a shared Redis.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.store {
        StoreSettings::Embedded => Arc::new(SledStore::open(&config.data_dir.join("store"))?),
        StoreSettings::Redis(redis) => Arc::new(RedisStore::open(redis).await?),
    })
}

impl Services {
    /// Makes `data_dir` private, opens the store in it (one process at a time) and loads every
    /// service. Nothing listens yet.
    pub async fn open(config: &Config, clock: SharedClock) -> Result<Self, ComposeError> {
        let private = secret::secure_private_dir(&config.data_dir)
            .map_err(|source| ComposeError::DataDir { path: config.data_dir.display().to_string(), source })?;
        if !private.tightened.is_empty() {
            tracing::warn!(count = private.tightened.len(), data_dir = %config.data_dir.display(), "data_dir held files others could read; made them private (0700/0600)");
        }
        for link in &private.links {
            tracing::warn!(link = %link.display(), "a symbolic link inside data_dir was not followed, so what it points to was not made private; Fix: replace it with the folder or file itself");
        }
        if let Some(mode) = secret::readable_by_others(&config.users_file) {
            tracing::warn!(users_file = %config.users_file.display(), mode = format_args!("{mode:o}"), "the users file, with its password hashes, is readable by every local user; Fix: chmod o-rwx on it (Portcullis drops those bits the next time it writes the file)");
        }
        let store = open_store(config).await?;
        let sessions = Arc::new(Sessions::open(store.clone(), config.session.clone(), clock.clone()).await?);
        let accounts = Arc::new(Accounts::open(store.clone()).await?);
        let regulator = Arc::new(Regulator::open(store.clone(), config.regulation.clone(), clock.clone()).await?);
        store.loaded().await?;
        give_back_free_memory();
        let sealer = Sealer::new(&secret::load_or_create_key(&config.data_dir.join("secrets.key"))?);
        let users = Arc::new(UserDirectory::load(&config.users_file)?);
        let (notifier, delivery) = Notifier::new(&config.notify, &config.public_url.origin());
        Ok(Self { users, sessions, accounts, regulator, notifier: Arc::new(notifier), delivery, sealer, clock, store })
    }

    /// For a store other replicas share: reads again what they change, for as long as the
    /// process runs. Nothing to do for the embedded store.
    pub fn follow_other_replicas(&self) {
        let Some(shared) = self.store.shared() else { return };
        let mut changes = shared.subscribe();
        let (sessions, accounts, regulator) = (self.sessions.clone(), self.accounts.clone(), self.regulator.clone());
        tokio::spawn(async move {
            loop {
                let read = match changes.recv().await {
                    Ok(Change::Record { space, key }) => match space {
                        Space::Sessions => sessions.refresh(&key).await,
                        Space::Accounts => accounts.refresh(&key).await,
                        Space::Regulation => regulator.refresh(&key).await,
                        // Never announced; read from the store each time.
                        Space::Flows => Ok(()),
                    },
                    // Missed changes (a lost connection, or more at once than the queue holds).
                    Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                        let all = async {
                            sessions.reload().await?;
                            accounts.reload().await?;
                            regulator.reload().await
                        };
                        all.await
                    }
                    Err(RecvError::Closed) => return,
                };
                if let Err(e) = read {
                    // The store went away mid-read; the subscription notices, and a resync follows.
                    tracing::warn!(target: "portcullis::store", "could not read another replica's change: {e}");
                }
            }
        });
    }

    /// The operator's actions over these services.
    pub fn admin(&self, config: Arc<arc_swap::ArcSwap<Config>>) -> Admin {
        Admin {
            config,
            users: self.users.clone(),
            sessions: self.sessions.clone(),
            accounts: self.accounts.clone(),
            regulator: self.regulator.clone(),
            notifier: self.notifier.clone(),
            // Without a running proxy the CLI rotates the key file itself (`portcullis identity`).
            identity: None,
            clock: self.clock.clone(),
        }
    }
}

/// Returns the heap's free pages to the system. Loading the store at start-up allocates and frees
/// a copy of every record, between the entries that stay; glibc's malloc keeps such free memory
/// for the process (203 MiB resident with 100,000 sessions; 104 MiB given back, `bench/scale.sh
/// rss`). Other allocators return it by themselves.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only touches the allocator's own state, and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
