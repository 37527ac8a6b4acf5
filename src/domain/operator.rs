//! What an operator can do to accounts and sessions: one set of operations behind the CLI (over
//! the control socket, or directly on the store when no server runs) and the admin pages.
//!
//! Every operation is a [`Request`] and answers with a [`Reply`]; both are plain data, so the
//! control socket only has to carry them and the pages only have to render them. Each change is
//! audited under `portcullis::security` with who asked for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::base::clock::{SharedClock, UnixTime};
use crate::domain::factors::{Accounts, FactorKind, providers};
use crate::domain::notify::{Notifier, SecurityEvent};
use crate::domain::policy::{self, Requirement};
use crate::domain::regulation::{Regulator, Restriction};
use crate::domain::session::Sessions;
use crate::domain::users::UserDirectory;
use crate::store::StoreError;

use crate::config::{RECOVERY_LINK_LONGEST, RECOVERY_LINK_SHORTEST};

/// An operator's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every account with its factors, last sign-in and sessions.
    Users,
    /// Removes a user's second factors and recovery codes, lifts a factor lock, ends their
    /// sessions and mails them.
    Reset2fa { user: String },
    /// Ends the sessions of one user, or of everyone.
    Revoke { target: Target },
    /// Turns every full session back into a partial one: everyone proves their factors again.
    DowngradeAll,
    /// Bans and factor locks in force.
    Bans,
    /// Lifts a ban or lock: `account:NAME` or `address:IP`.
    Unban { subject: String },
    /// How many accounts have 2FA, overall and by group.
    Adoption,
    /// Makes a one-time link with which the user, after their password, replaces lost factors.
    /// Valid for `valid_for` seconds (default `admin.recovery_link_valid`); emailed to the user
    /// if `email`, else returned for the operator to pass on.
    RecoveryLink { user: String, valid_for: Option<u64>, email: bool },
    /// Forgets what the proxy keeps about a user just removed from the users file: their second
    /// factors, recovery codes and links, remembered browsers (the record under `account_key`),
    /// the bans on their name, and their sessions. A new user given the same name starts clean.
    Forget { user: String, account_key: String },
    /// Rotates the identity signing keys: next becomes current, a new next is made, the old
    /// current is retired (published until what it signed has expired).
    RotateIdentityKey,
    /// The factor providers, with how many accounts have a factor pointing at each.
    Providers,
    /// Asks the directory (`[login.ldap]`) again about the accounts it vouched for now, rather than
    /// at the next five-minute round: sessions of accounts it dropped end.
    RecheckDirectory,
    /// Links an OpenID Connect identity (`subject` at the `[[login.oidc]]` provider `provider`)
    /// to a user's account, or (`link: false`) unlinks it.
    Identity { user: String, provider: String, subject: String, link: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    User(String),
    Everyone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Users {
        users: Vec<UserStatus>,
    },
    Reset {
        user: String,
        ended: usize,
    },
    Revoked {
        ended: usize,
    },
    /// Sessions of accounts with a factor must prove it again; those without one were ended
    /// (for them, proving again means the password).
    Downgraded {
        downgraded: usize,
        ended: usize,
    },
    Bans {
        bans: Vec<Restriction>,
    },
    Unbanned {
        subject: String,
        existed: bool,
    },
    Adoption {
        groups: Vec<GroupAdoption>,
    },
    Forgotten {
        user: String,
        ended: usize,
    },
    /// `url` only when it was not emailed: it is a credential, shown to as few eyes as possible.
    RecoveryLink {
        user: String,
        url: Option<String>,
        expires_at: UnixTime,
    },
    IdentityKeyRotated {
        rotation: crate::domain::identity::keys::Rotation,
    },
    Providers {
        providers: Vec<crate::domain::factors::providers::ProviderRow>,
    },
    /// What a directory re-check did.
    Rechecked {
        ended: Vec<String>,
        refreshed: usize,
        unknown: usize,
    },
    /// An identity linked (`link`) or unlinked; `changed` false when it already was so.
    Identity {
        user: String,
        provider: String,
        subject: String,
        link: bool,
        changed: bool,
    },
    Refused {
        reason: String,
    },
}

/// One account as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserStatus {
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub groups: Vec<String>,
    /// The factors the account has that count: `totp`, `email`, `recovery_codes`.
    pub factors: Vec<String>,
    /// Providers (ids) of the account's factors that no longer count (disabled or unknown). With
    /// no `factors`, the account is stranded: `admin factors --stranded`.
    #[serde(default)]
    pub turned_off: Vec<String>,
    /// The names its owner gave its security keys and passkeys.
    #[serde(default)]
    pub security_keys: Vec<String>,
    /// The OpenID Connect identities linked to it, as `provider:subject`.
    #[serde(default)]
    pub identities: Vec<String>,
    pub recovery_codes_left: usize,
    pub enrolled_at: Option<UnixTime>,
    pub last_sign_in: Option<UnixTime>,
    /// What the policy asks of this account now: `off`, `optional`, `required`, `required_from`.
    pub requirement: String,
    pub required_from: Option<UnixTime>,
    pub full_sessions: usize,
    pub partial_sessions: usize,
    /// The user asked not to be reminded to set up 2FA (`mfa.nudge_every`).
    #[serde(default)]
    pub declined_2fa: bool,
}

/// 2FA adoption in one group (`*` is everyone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAdoption {
    pub group: String,
    pub accounts: usize,
    pub with_second_factor: usize,
    /// Accounts for which 2FA is required now or from a date.
    pub required: usize,
    /// Accounts that must have 2FA (now or from a date) and still do not.
    pub missing: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Session(#[from] crate::domain::session::SessionError),
}

/// The pieces of a running (or offline) proxy that operators act on.
pub struct Admin {
    pub config: crate::config::SharedConfig,
    pub users: Arc<UserDirectory>,
    pub sessions: Arc<Sessions>,
    pub accounts: Arc<Accounts>,
    pub regulator: Arc<Regulator>,
    pub notifier: Arc<Notifier>,
    /// The running proxy's signer; `None` offline (the CLI then rotates the key file itself).
    pub identity: Option<Arc<crate::domain::identity::AssertionSigner>>,
    pub clock: SharedClock,
}

impl Admin {
    /// Carries out `request` for `operator` (a name for the audit trail: `cli:UID` or an admin's
    /// user name).
    pub async fn execute(&self, request: Request, operator: &str) -> Result<Reply, AdminError> {
        Ok(match request {
            Request::Users => Reply::Users { users: self.user_statuses() },
            Request::Reset2fa { user } => self.reset_2fa(&user, operator).await?,
            Request::Revoke { target } => {
                // Ending someone's sessions also forgets the browsers that would skip their second
                // factor: whoever else had a way in has none left.
                let whose = match &target {
                    Target::User(name) => self.users.get(name).into_iter().collect(),
                    Target::Everyone => self.users.all(),
                };
                for user in whose.into_iter().filter(|u| !self.accounts.get(u).remembered.is_empty()) {
                    self.accounts
                        .update(&user, |record| {
                            record.remembered.clear();
                            Ok::<_, StoreError>(())
                        })
                        .await?;
                }
                let ended = match &target {
                    Target::User(name) => self.sessions.end_all_for(name).await?,
                    Target::Everyone => self.sessions.end_where(|_| true).await?,
                };
                tracing::warn!(target: "portcullis::security", %operator, ?target, ended, "admin: sessions revoked");
                Reply::Revoked { ended }
            }
            Request::DowngradeAll => {
                let config = self.config.load();
                let has_factor = |name: &str| {
                    self.users.get(name).is_some_and(|user| {
                        providers::has_counting_factor(&self.accounts.get(&user), &config.mfa.providers)
                    })
                };
                let downgraded = self.sessions.downgrade_where(has_factor).await?;
                let ended = self.sessions.end_where(|user| !has_factor(user)).await?;
                tracing::warn!(target: "portcullis::security", %operator, downgraded, ended, "admin: every session sent back to prove its factors");
                Reply::Downgraded { downgraded, ended }
            }
            Request::Bans => Reply::Bans { bans: self.regulator.restrictions() },
            Request::Unban { subject } => {
                if !["account:", "address:", "browser:"].iter().any(|kind| subject.starts_with(kind)) {
                    return Ok(Reply::Refused {
                        reason: format!(
                            "`{subject}` is not a ban: write account:NAME, address:IP or browser:ID, as `bans` lists them"
                        ),
                    });
                }
                let existed = self.regulator.clear(&subject).await?;
                tracing::warn!(target: "portcullis::security", %operator, %subject, existed, "admin: ban lifted");
                Reply::Unbanned { subject, existed }
            }
            Request::Adoption => Reply::Adoption { groups: self.adoption() },
            Request::Forget { user, account_key } => {
                // The CLI asks right after editing the file: read it now rather than at the next
                // poll, so the check below sees the removal.
                if let Err(e) = self.users.reload() {
                    return Ok(Reply::Refused { reason: format!("the users file cannot be read: {e}") });
                }
                if self.users.get(&user).is_some() {
                    return Ok(Reply::Refused {
                        reason: format!("`{user}` is still in the users file; remove it first"),
                    });
                }
                self.accounts.forget(&account_key).await?;
                self.regulator.clear(&crate::domain::regulation::Subject::Account(user.clone()).store_key()).await?;
                let ended = self.sessions.end_all_for(&user).await?;
                tracing::warn!(target: "portcullis::security", %operator, %user, ended, "admin: removed user forgotten");
                Reply::Forgotten { user, ended }
            }
            Request::RecoveryLink { user, valid_for, email } => {
                self.recovery_link(&user, valid_for, email, operator).await?
            }
            Request::RotateIdentityKey => self.rotate_identity_key(operator).await,
            Request::RecheckDirectory => {
                let Some(ldap) = self.config.load().login.ldap.clone() else {
                    return Ok(Reply::Refused { reason: "no [login.ldap] is configured".into() });
                };
                let directory = crate::domain::directory::Directory::default();
                let report = directory.recheck(&ldap, &self.users, &self.sessions).await;
                tracing::warn!(target: "portcullis::security", %operator, ended = ?report.ended, refreshed = report.refreshed, "admin: directory accounts re-checked");
                Reply::Rechecked { ended: report.ended, refreshed: report.refreshed, unknown: report.unknown }
            }
            Request::Identity { user, provider, subject, link } => {
                self.identity(&user, &provider, &subject, link, operator).await?
            }
            Request::Providers => {
                let records: Vec<_> = self.users.all().iter().map(|user| self.accounts.get(user)).collect();
                let census = providers::census(records.iter().map(|r| r.as_ref()));
                Reply::Providers { providers: providers::rows(&self.config.load().mfa.providers, &census) }
            }
        })
    }

    /// Links or unlinks an OpenID Connect identity, mailing the account's owner.
    async fn identity(
        &self,
        user: &str,
        provider: &str,
        subject: &str,
        link: bool,
        operator: &str,
    ) -> Result<Reply, AdminError> {
        let config = self.config.load();
        let Some(oidc) = config.login.oidc.iter().find(|p| p.id == provider) else {
            return Ok(Reply::Refused { reason: format!("no [[login.oidc]] provider has id {provider:?}") });
        };
        let Some(account) = self.users.get(user) else {
            return Ok(Reply::Refused { reason: format!("no user named {user}") });
        };
        let subject = subject.trim();
        if subject.is_empty() || subject.len() > 255 {
            return Ok(Reply::Refused { reason: "a subject is 1 to 255 characters (OpenID Connect Core §2)".into() });
        }
        let now = self.clock.now();
        let changed = if link {
            match crate::domain::identities::link(
                &self.accounts,
                &account,
                (provider, &oidc.issuer, subject),
                "operator",
                now,
            )
            .await
            {
                Ok(changed) => changed,
                Err(crate::domain::identities::LinkError::OtherAccount) => {
                    return Ok(Reply::Refused {
                        reason: "that identity is linked to another account; unlink it there first".into(),
                    });
                }
                Err(crate::domain::identities::LinkError::Store(e)) => return Err(e.into()),
            }
        } else {
            crate::domain::identities::unlink(&self.accounts, &account, provider, subject).await?
        };
        if changed {
            let name = oidc.name.clone();
            let event = if link {
                SecurityEvent::IdentityLinked { provider: name }
            } else {
                SecurityEvent::IdentityUnlinked { provider: name }
            };
            self.notifier.send(&account, event, now, false);
            tracing::warn!(target: "portcullis::security", %operator, %user, %provider, link, "admin: sign-in identity changed");
        }
        Ok(Reply::Identity {
            user: user.to_string(),
            provider: provider.to_string(),
            subject: subject.to_string(),
            link,
            changed,
        })
    }

    async fn rotate_identity_key(&self, operator: &str) -> Reply {
        let Some(signer) = self.identity.clone() else {
            return Reply::Refused { reason: "no running proxy holds the identity keys here".into() };
        };
        // A file write: off the async workers.
        let rotated = tokio::task::spawn_blocking(move || signer.rotate()).await;
        match rotated {
            Ok(Ok(rotation)) => {
                tracing::warn!(
                    target: "portcullis::security",
                    %operator,
                    current = %rotation.current,
                    next = %rotation.next,
                    retired = %rotation.retired,
                    "admin: identity signing key rotated"
                );
                Reply::IdentityKeyRotated { rotation }
            }
            Ok(Err(e)) => Reply::Refused { reason: e.to_string() },
            Err(e) => Reply::Refused { reason: format!("the rotation did not finish: {e}") },
        }
    }

    async fn reset_2fa(&self, name: &str, operator: &str) -> Result<Reply, AdminError> {
        let Some(user) = self.users.get(name) else {
            return Ok(Reply::Refused { reason: format!("there is no user `{name}` in the users file") });
        };
        let had_factor = self.accounts.get(&user).has_second_factor();
        self.accounts
            .update(&user, |record| {
                let last_sign_in = record.last_sign_in;
                *record = crate::domain::factors::AccountRecord { last_sign_in, ..Default::default() };
                Ok::<_, StoreError>(())
            })
            .await?;
        // A factor locked by 100 failures belongs to the factor that was just removed.
        self.regulator.clear(&crate::domain::regulation::Subject::Account(name.to_string()).store_key()).await?;
        // Ended, not downgraded: a downgraded session would have no factor left to prove, and
        // letting it set up a new one would let a stolen session cookie choose the new factor.
        // Signing in again costs the password.
        let ended = self.sessions.end_all_for(name).await?;
        tracing::warn!(target: "portcullis::security", %operator, user = %name, ended, "admin: 2FA reset");
        if had_factor {
            self.notifier.send(&user, SecurityEvent::ResetByAdmin, self.clock.now(), false);
        }
        Ok(Reply::Reset { user: name.to_string(), ended })
    }

    async fn recovery_link(
        &self,
        name: &str,
        valid_for: Option<u64>,
        email: bool,
        operator: &str,
    ) -> Result<Reply, AdminError> {
        let Some(user) = self.users.get(name) else {
            return Ok(Reply::Refused { reason: format!("there is no user `{name}` in the users file") });
        };
        let config = self.config.load();
        if config.mfa.policy == crate::config::MfaPolicy::Disabled {
            return Ok(Reply::Refused {
                reason: "2FA is disabled (mfa.policy), so a password alone signs in; no recovery link is needed".into(),
            });
        }
        let valid = valid_for.map_or(config.admin.recovery_link_valid, std::time::Duration::from_secs);
        if !(RECOVERY_LINK_SHORTEST..=RECOVERY_LINK_LONGEST).contains(&valid) {
            return Ok(Reply::Refused {
                reason: "a recovery link must be valid for between 10 minutes and 7 days".into(),
            });
        }
        let now = self.clock.now();
        let token = crate::base::secret::random_token();
        let record = crate::domain::factors::RecoveryLinkRecord {
            digest: crate::domain::factors::RecoveryLinkRecord::digest_of(&token),
            expires_at: now + valid.as_secs() as i64,
            issued_by: operator.to_string(),
            issued_at: now,
        };
        let expires_at = record.expires_at;
        self.accounts
            .update(&user, |account| {
                account.recovery_link = Some(record.clone());
                Ok::<_, StoreError>(())
            })
            .await?;
        let query = serde_urlencoded::to_string([("token", token.as_str())]).unwrap_or_default();
        let url = config.public_url.join_path(&format!("/.portcullis/recover?{query}"));
        tracing::warn!(target: "portcullis::security", %operator, user = %name, expires_at, email, "admin: recovery link issued");
        if email {
            let event = SecurityEvent::RecoveryLinkIssued { url, expires: crate::base::text::format_utc(expires_at) };
            self.notifier.send(&user, event, now, false);
            return Ok(Reply::RecoveryLink { user: name.to_string(), url: None, expires_at });
        }
        Ok(Reply::RecoveryLink { user: name.to_string(), url: Some(url), expires_at })
    }

    fn user_statuses(&self) -> Vec<UserStatus> {
        let now = self.clock.now();
        let sessions = self.sessions.count_by_user();
        let mut users: Vec<UserStatus> = self
            .users
            .all()
            .into_iter()
            .map(|user| {
                let record = self.accounts.get(&user);
                let config = self.config.load();
                let known = &config.mfa.providers;
                let mut factors = Vec::new();
                if providers::counts(&record, known, FactorKind::Totp) {
                    factors.push("totp".to_string());
                }
                if providers::counts(&record, known, FactorKind::Email) {
                    factors.push("email".to_string());
                }
                if providers::counts(&record, known, FactorKind::SecurityKey) {
                    factors.push("security_key".to_string());
                }
                // Codes back up a factor that counts; alone they are not listed as one.
                if record.recovery_codes_left() > 0 && !factors.is_empty() {
                    factors.push("recovery_codes".to_string());
                }
                let turned_off = providers::not_counting(&record, known).iter().map(|id| id.to_string()).collect();
                let (requirement, required_from) = describe(policy::requirement(&self.config.load().mfa, &user, now));
                let (full_sessions, partial_sessions) = sessions.get(user.name.as_str()).copied().unwrap_or_default();
                UserStatus {
                    name: user.name.to_string(),
                    display_name: user.display_name.clone(),
                    email: user.email.clone(),
                    groups: user.groups.clone(),
                    factors,
                    turned_off,
                    security_keys: record.security_keys.iter().map(|k| k.name.clone()).collect(),
                    identities: record.identities.iter().map(|i| format!("{}:{}", i.provider, i.subject)).collect(),
                    recovery_codes_left: record.recovery_codes_left(),
                    enrolled_at: record.enrolled_at(),
                    last_sign_in: record.last_sign_in,
                    requirement: requirement.to_string(),
                    required_from,
                    full_sessions,
                    partial_sessions,
                    declined_2fa: record.nudge_declined,
                }
            })
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    fn adoption(&self) -> Vec<GroupAdoption> {
        adoption_by_group(&self.user_statuses())
    }
}

fn describe(requirement: Requirement) -> (&'static str, Option<UnixTime>) {
    match requirement {
        Requirement::Off => ("off", None),
        Requirement::Optional => ("optional", None),
        Requirement::Required => ("required", None),
        Requirement::Upcoming(at) => ("required_from", Some(at)),
    }
}

/// Adoption for everyone (`*`) and for each group, from the user list.
pub fn adoption_by_group(users: &[UserStatus]) -> Vec<GroupAdoption> {
    let groups: BTreeSet<&str> = users.iter().flat_map(|u| u.groups.iter().map(String::as_str)).collect();
    let mut rows = BTreeMap::new();
    rows.insert("*".to_string(), count(users.iter(), "*"));
    for group in groups {
        rows.insert(group.to_string(), count(users.iter().filter(|u| u.groups.iter().any(|g| g == group)), group));
    }
    rows.into_values().collect()
}

fn count<'a>(members: impl Iterator<Item = &'a UserStatus>, group: &str) -> GroupAdoption {
    let mut row = GroupAdoption {
        group: group.to_string(),
        accounts: 0,
        with_second_factor: 0,
        required: 0,
        missing: Vec::new(),
    };
    for user in members {
        let has = user.factors.iter().any(|f| f == "totp" || f == "email" || f == "security_key");
        let required = matches!(user.requirement.as_str(), "required" | "required_from");
        row.accounts += 1;
        row.with_second_factor += usize::from(has);
        row.required += usize::from(required);
        if required && !has {
            row.missing.push(user.name.clone());
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, groups: &[&str], totp: bool, requirement: &str) -> UserStatus {
        UserStatus {
            name: name.into(),
            display_name: name.into(),
            email: format!("{name}@example.com"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            factors: if totp { vec!["totp".into()] } else { vec![] },
            turned_off: vec![],
            security_keys: vec![],
            identities: vec![],
            recovery_codes_left: 0,
            enrolled_at: None,
            last_sign_in: None,
            requirement: requirement.into(),
            required_from: None,
            full_sessions: 0,
            partial_sessions: 0,
            declined_2fa: false,
        }
    }

    #[test]
    fn adoption_counts_everyone_and_each_group() {
        let users = [
            status("alice", &["admins", "staff"], true, "required"),
            status("bob", &["staff"], false, "required_from"),
            status("carol", &[], false, "optional"),
        ];
        let rows = adoption_by_group(&users);
        let row = |g: &str| rows.iter().find(|r| r.group == g).unwrap().clone();
        assert_eq!((row("*").accounts, row("*").with_second_factor, row("*").required), (3, 1, 2));
        assert_eq!(row("*").missing, vec!["bob".to_string()]);
        assert_eq!((row("staff").accounts, row("staff").with_second_factor), (2, 1));
        assert_eq!((row("admins").accounts, row("admins").missing.len()), (1, 0));
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn requests_travel_as_tagged_json() {
        let request = Request::Revoke { target: Target::User("alice".into()) };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"op":"revoke","target":{"user":"alice"}}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}
