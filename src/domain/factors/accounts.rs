//! Every account's factor record, in memory, written through to the store.
//!
//! The gate consults it on every request to evaluate the policy, so reading must not touch disk;
//! changes are written through and flushed, because an accepted TOTP step or a used recovery code
//! must never be forgotten by a crash: that would reopen a replay.

use std::sync::Arc;

use dashmap::DashMap;

use super::records::{AccountRecord, LinkedIdentity};
use crate::base::clock::UnixTime;
use crate::domain::users::User;
use crate::store::{Space, Store, StoreError, Write, decode, encode, text_key};

/// Every account's factors, in memory, written through to the store.
pub struct Accounts {
    /// Hashed with foldhash (seeded at random per process), not SipHash: the gate looks here on
    /// every request, and SipHash over the key was a fifth of the look (`bench/instructions.sh`).
    records: DashMap<String, Arc<AccountRecord>, foldhash::fast::RandomState>,
    /// Which account each security key's credential id belongs to: a passkey that signs in by
    /// itself names its credential, not its account, and a credential id may belong to one account
    /// only (WebAuthn L3 §7.1 step 25). Kept in step with `records` under the write lock.
    key_owners: DashMap<Vec<u8>, String>,
    /// Which account each linked OpenID Connect identity (issuer and subject) belongs to: one.
    identity_owners: DashMap<String, String>,
    store: Arc<dyn Store>,
    /// Serialises read-modify-write cycles, so two code checks for one account cannot both accept
    /// the same time step, and writes reach the store in order. Never taken on the hot path.
    write: tokio::sync::Mutex<()>,
}

impl Accounts {
    pub async fn open(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let records = DashMap::with_hasher(foldhash::fast::RandomState::default());
        let (key_owners, identity_owners) = (DashMap::new(), DashMap::new());
        for (key, value) in store.scan(Space::Accounts).await? {
            let account = text_key(&key)?;
            let record = decode::<AccountRecord>(&value)?;
            for cred_id in credential_ids(&record) {
                key_owners.insert(cred_id, account.clone());
            }
            for identity in identity_keys(&record) {
                identity_owners.insert(identity, account.clone());
            }
            records.insert(account, Arc::new(record));
        }
        Ok(Self { records, key_owners, identity_owners, store, write: tokio::sync::Mutex::new(()) })
    }

    /// The account key of the account an OpenID Connect identity is linked to.
    pub fn owner_of_identity(&self, issuer: &str, subject: &str) -> Option<String> {
        self.identity_owners.get(&LinkedIdentity::key(issuer, subject)).map(|owner| owner.value().clone())
    }

    /// The account key ([`User::account_key`]) of the account a credential id is registered to.
    pub fn owner_of_key(&self, cred_id: &[u8]) -> Option<String> {
        self.key_owners.get(cred_id).map(|owner| owner.value().clone())
    }

    /// The account's record (an empty one if it has never enrolled anything). Memory only.
    ///
    /// Records are found by the user's [`User::account_key`], never by name, so a new account
    /// that is given a removed account's name starts with nothing.
    pub fn get(&self, user: &User) -> Arc<AccountRecord> {
        self.records.get(&user.account_key).map(|r| r.value().clone()).unwrap_or_default()
    }

    /// Forgets an account's record entirely (its user was removed). Returns whether there was one.
    pub async fn forget(&self, account_key: &str) -> Result<bool, StoreError> {
        let _serial = self.write.lock().await;
        let existed = self.records.contains_key(account_key);
        self.install(account_key, None);
        self.store.apply(vec![Write::Delete { space: Space::Accounts, key: account_key.as_bytes().to_vec() }]).await?;
        Ok(existed)
    }

    /// Remembers when the account last signed in (best effort: a failure is logged, not fatal).
    pub async fn record_sign_in(&self, user: &User, at: UnixTime) {
        let noted: Result<(), StoreError> = self
            .update(user, |record| {
                record.last_sign_in = Some(at);
                Ok(())
            })
            .await;
        if let Err(e) = noted {
            tracing::error!(user = %user.name, "could not record a sign-in: {e}");
        }
    }

    /// Remembers that 2FA was suggested to the account now (`mfa.nudge_every`).
    pub async fn note_nudge(&self, user: &User, at: UnixTime) -> Result<(), StoreError> {
        self.update(user, |record| {
            record.nudged_at = Some(at);
            Ok(())
        })
        .await
    }

    /// Remembers that the account asked not to be offered 2FA again.
    pub async fn decline_nudges(&self, user: &User) -> Result<(), StoreError> {
        self.update(user, |record| {
            record.nudge_declined = true;
            Ok(())
        })
        .await
    }

    /// Applies `change` to the account's record as the store holds it now and persists the
    /// result before returning it. `change` decides on the current record and may refuse
    /// (returning `Err`), in which case nothing is written; a store failure comes back as the same
    /// error type.
    ///
    /// The write is a compare-and-swap ([`crate::store::update`]): should another replica change
    /// the record first, `change` runs again on its version. That is what makes a TOTP step, a
    /// recovery code or a recovery link good for one use across every replica sharing a store.
    pub async fn update<T, E: From<StoreError>>(
        &self,
        user: &User,
        mut change: impl FnMut(&mut AccountRecord) -> Result<T, E>,
    ) -> Result<T, E> {
        let _serial = self.write.lock().await;
        let mut written = None;
        let outcome = crate::store::update(
            &*self.store,
            Space::Accounts,
            user.account_key.as_bytes(),
            |current| -> Result<_, E> {
                let mut record = match current {
                    Some(bytes) => decode::<AccountRecord>(bytes)?,
                    None => AccountRecord::default(),
                };
                let outcome = change(&mut record)?;
                let bytes = encode(&record)?;
                written = Some(record);
                Ok((Some(bytes), outcome))
            },
        )
        .await?;
        if let Some(record) = written {
            self.install(&user.account_key, Some(record));
        }
        Ok(outcome)
    }

    /// Puts `record` (`None`: no record) in memory for `account`, with the indexes kept in step.
    fn install(&self, account: &str, record: Option<AccountRecord>) {
        let before = self.records.get(account).map(|r| r.value().clone()).unwrap_or_default();
        for cred_id in credential_ids(&before) {
            self.key_owners.remove_if(&cred_id, |_, owner| owner == account);
        }
        for identity in identity_keys(&before) {
            self.identity_owners.remove_if(&identity, |_, owner| owner == account);
        }
        match record {
            Some(record) => {
                for cred_id in credential_ids(&record) {
                    self.key_owners.insert(cred_id, account.to_string());
                }
                for identity in identity_keys(&record) {
                    self.identity_owners.insert(identity, account.to_string());
                }
                self.records.insert(account.to_string(), Arc::new(record));
            }
            None => {
                self.records.remove(account);
            }
        }
    }

    /// Reads one account's record again, after another replica changed it.
    pub async fn refresh(&self, account: &[u8]) -> Result<(), StoreError> {
        let _serial = self.write.lock().await;
        let account_key = text_key(account)?;
        let record =
            self.store.get(Space::Accounts, account).await?.map(|v| decode::<AccountRecord>(&v)).transpose()?;
        self.install(&account_key, record);
        Ok(())
    }

    /// Reads every record again (changes from other replicas may have been missed).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _serial = self.write.lock().await;
        let mut seen = std::collections::HashSet::new();
        for (key, value) in self.store.scan(Space::Accounts).await? {
            let account = text_key(&key)?;
            self.install(&account, Some(decode::<AccountRecord>(&value)?));
            seen.insert(account);
        }
        let gone: Vec<String> = self.records.iter().map(|r| r.key().clone()).filter(|k| !seen.contains(k)).collect();
        for account in gone {
            self.install(&account, None);
        }
        Ok(())
    }
}
fn identity_keys(record: &AccountRecord) -> impl Iterator<Item = String> + '_ {
    record.identities.iter().map(|i| LinkedIdentity::key(&i.issuer, &i.subject))
}

fn credential_ids(record: &AccountRecord) -> impl Iterator<Item = Vec<u8>> + '_ {
    record.security_keys.iter().map(|k| {
        let id: &[u8] = k.passkey.cred_id().as_ref();
        id.to_vec()
    })
}
