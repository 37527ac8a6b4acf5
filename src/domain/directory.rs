//! Passwords checked by a directory (`[login.ldap]`): for a name the users file does not have,
//! the proxy finds the user's entry (a search as the service account, RFC 4511 §4.5) and binds
//! as that entry with the password given (§4.2): the directory says whether it is right, and the
//! entry says who the user is (name, address, groups). Nothing about the password is kept.
//!
//! A right password from the directory is a [`PasswordProof`] like a local one, so everything
//! after it (regulation, the partial session, the account's second factor) is the same. The
//! account's factors are stored under `ldap:` and the entry's `entryUUID` (RFC 4530), which
//! survives renames; a directory without it falls back to the entry's DN.

use std::sync::Arc;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};
use sha2::Digest;

use crate::config::ldap::{LdapGroups, LdapSettings};
use crate::domain::password::PasswordProof;
use crate::domain::users::{User, Username};

/// Why the directory proved nothing.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryRefused {
    /// No such user, several, or the wrong password: never told apart.
    #[error("wrong user name or password")]
    Wrong,
    /// The directory could not be asked (down, TLS refused, the service account refused, a
    /// timeout). Nothing is decided, nothing is counted.
    #[error("the directory cannot be reached: {0}")]
    Unavailable(String),
}

/// Concurrent directory checks at most: a storm of sign-ins must not open a connection each.
const MAX_CONCURRENT: usize = 16;

/// Checks passwords against a directory.
pub struct Directory {
    slots: tokio::sync::Semaphore,
}

impl Default for Directory {
    fn default() -> Self {
        Self { slots: tokio::sync::Semaphore::new(MAX_CONCURRENT) }
    }
}

/// The filter with `{name}` replaced by `value`, escaped for a filter (RFC 4515 §3): a name
/// like `*` or `a)(uid=*` is a literal, never a wildcard or a second condition.
fn filled(filter: &str, name: &str, value: &str) -> String {
    filter.replace(&format!("{{{name}}}"), &ldap_escape(value))
}

/// The value of a DN's first part: `cn=wiki-admins,ou=groups,…` → `wiki-admins`.
fn first_rdn_value(dn: &str) -> Option<String> {
    let first = dn.split(',').next()?;
    let (_, value) = first.split_once('=')?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Whether `dn` is in the subtree `base` (compared without case or spaces after commas).
fn is_under(dn: &str, base: &str) -> bool {
    let plain = |text: &str| text.split(',').map(|part| part.trim().to_ascii_lowercase()).collect::<Vec<_>>();
    let (dn, base) = (plain(dn), plain(base));
    dn.len() > base.len() && dn[dn.len() - base.len()..] == base[..]
}

fn first(entry: &SearchEntry, attribute: &str) -> Option<String> {
    entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attribute)).and_then(|(_, v)| v.first().cloned())
}

fn all(entry: &SearchEntry, attribute: &str) -> Vec<String> {
    entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attribute)).map(|(_, v)| v.clone()).unwrap_or_default()
}

impl Directory {
    /// Checks `password` for `username` against the directory.
    pub async fn check(
        &self,
        settings: &LdapSettings,
        username: &Username,
        password: &str,
    ) -> Result<PasswordProof, DirectoryRefused> {
        // An empty password makes a simple bind "unauthenticated" (RFC 4513 §5.1.2), which many
        // servers answer with success: never ask.
        if password.is_empty() {
            return Err(DirectoryRefused::Wrong);
        }
        let _slot = self.slots.acquire().await.map_err(|e| DirectoryRefused::Unavailable(e.to_string()))?;
        let limit = settings.timeout;
        tokio::time::timeout(limit * 4, self.ask(settings, username, password)).await.map_err(|_| {
            DirectoryRefused::Unavailable(format!("no answer within {}", humantime::format_duration(limit * 4)))
        })?
    }

    async fn ask(
        &self,
        settings: &LdapSettings,
        username: &Username,
        password: &str,
    ) -> Result<PasswordProof, DirectoryRefused> {
        let unavailable = |e: ldap3::LdapError| DirectoryRefused::Unavailable(e.to_string());
        let mut ldap = connect(settings).await?;
        let entry = find(&mut ldap, settings, username).await?.ok_or(DirectoryRefused::Wrong)?;
        // The password: a bind as the entry. Only "invalid credentials" means wrong (RFC 4511
        // §4.1.9, result 49); anything else is the directory's trouble, not the user's.
        let bound = ldap.with_timeout(settings.timeout).simple_bind(&entry.dn, password).await.map_err(unavailable)?;
        match bound.rc {
            0 => {}
            49 => return Err(DirectoryRefused::Wrong),
            other => return Err(DirectoryRefused::Unavailable(format!("the user's bind failed with result {other}"))),
        }
        let user = account(&mut ldap, settings, username, &entry).await?;
        let _ = ldap.unbind().await;
        Ok(PasswordProof::checked_by_directory(Arc::new(user)))
    }

    /// The account `username` is in the directory now (`None`: no longer there), as the service
    /// account sees it: what live sessions of directory accounts are re-checked against.
    pub async fn look_up(
        &self,
        settings: &LdapSettings,
        username: &Username,
    ) -> Result<Option<User>, DirectoryRefused> {
        let _slot = self.slots.acquire().await.map_err(|e| DirectoryRefused::Unavailable(e.to_string()))?;
        let lookup = async {
            let mut ldap = connect(settings).await?;
            let Some(entry) = find(&mut ldap, settings, username).await? else { return Ok(None) };
            let user = account(&mut ldap, settings, username, &entry).await?;
            let _ = ldap.unbind().await;
            Ok(Some(user))
        };
        tokio::time::timeout(settings.timeout * 4, lookup)
            .await
            .map_err(|_| DirectoryRefused::Unavailable("no answer in time".into()))?
    }
}

/// A connection, bound as the service account (or anonymous).
async fn connect(settings: &LdapSettings) -> Result<ldap3::Ldap, DirectoryRefused> {
    let unavailable = |e: ldap3::LdapError| DirectoryRefused::Unavailable(e.to_string());
    let tls = crate::base::tls::client_config(&settings.extra_roots).map_err(DirectoryRefused::Unavailable)?;
    let connection =
        LdapConnSettings::new().set_conn_timeout(settings.timeout).set_starttls(settings.starttls).set_config(tls);
    let (conn, mut ldap) = LdapConnAsync::with_settings(connection, &settings.url).await.map_err(unavailable)?;
    ldap3::drive!(conn);
    service_bind(&mut ldap, settings).await?;
    Ok(ldap)
}

async fn service_bind(ldap: &mut ldap3::Ldap, settings: &LdapSettings) -> Result<(), DirectoryRefused> {
    if let (Some(dn), Some(secret)) = (&settings.bind_dn, &settings.bind_password) {
        let secret = std::str::from_utf8(secret.expose()).unwrap_or_default();
        let bound = ldap.with_timeout(settings.timeout).simple_bind(dn, secret).await;
        bound
            .map_err(|e| DirectoryRefused::Unavailable(e.to_string()))?
            .success()
            .map_err(|e| DirectoryRefused::Unavailable(format!("the service account's bind was refused: {e}")))?;
    }
    Ok(())
}

/// The one entry for `username` (none, or several: `None`; several would make the password pick
/// the account).
async fn find(
    ldap: &mut ldap3::Ldap,
    settings: &LdapSettings,
    username: &Username,
) -> Result<Option<SearchEntry>, DirectoryRefused> {
    let unavailable = |e: ldap3::LdapError| DirectoryRefused::Unavailable(e.to_string());
    let filter = filled(&settings.user_filter, "username", username.as_str());
    let wanted = [settings.display_name_attribute.as_str(), settings.email_attribute.as_str(), "memberOf", "entryUUID"];
    let (entries, _) = ldap
        .with_timeout(settings.timeout)
        .search(&settings.base_dn, Scope::Subtree, &filter, wanted.to_vec())
        .await
        .map_err(unavailable)?
        .success()
        .map_err(unavailable)?;
    Ok(<[_; 1]>::try_from(entries).ok().map(|[entry]| SearchEntry::construct(entry)))
}

/// Who the entry says the user is.
async fn account(
    ldap: &mut ldap3::Ldap,
    settings: &LdapSettings,
    username: &Username,
    entry: &SearchEntry,
) -> Result<User, DirectoryRefused> {
    let unavailable = |e: ldap3::LdapError| DirectoryRefused::Unavailable(e.to_string());
    let groups = match &settings.groups {
        LdapGroups::MemberOf { under } => all(entry, "memberOf")
            .iter()
            .filter(|dn| under.as_ref().is_none_or(|base| is_under(dn, base)))
            .filter_map(|dn| first_rdn_value(dn))
            .collect(),
        LdapGroups::Search { base_dn, filter, name_attribute } => {
            // Read as the service account: the user may not be allowed to read groups.
            service_bind(ldap, settings).await?;
            let filter = filled(filter, "dn", &entry.dn);
            let (groups, _) = ldap
                .with_timeout(settings.timeout)
                .search(base_dn, Scope::Subtree, &filter, vec![name_attribute.as_str()])
                .await
                .map_err(unavailable)?
                .success()
                .map_err(unavailable)?;
            groups.into_iter().filter_map(|g| first(&SearchEntry::construct(g), name_attribute)).collect()
        }
    };
    let identity = first(entry, "entryUUID").unwrap_or_else(|| entry.dn.to_ascii_lowercase());
    let account_key = format!("ldap:{identity}");
    Ok(User {
        name: username.clone(),
        display_name: first(entry, &settings.display_name_attribute).unwrap_or_else(|| username.to_string()),
        // One plausible address, or none: it goes into identity headers and security mails.
        email: first(entry, &settings.email_attribute)
            .filter(|e| {
                all(entry, &settings.email_attribute).len() == 1 && crate::domain::users::check_email(e).is_ok()
            })
            .unwrap_or_default(),
        groups: clean_groups(groups),
        password_hash: String::new(),
        // The directory keeps the password; sessions end with their lifetime, not a change.
        credential_stamp: sha2::Sha256::digest(account_key.as_bytes())[..16].try_into().unwrap_or([0; 16]),
        account_key,
    })
}

/// What a re-check of the directory's accounts did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recheck {
    /// Accounts no longer in the directory (or now another entry): their sessions were ended.
    pub ended: Vec<String>,
    /// Accounts whose name, address or groups changed: their sessions go on with the new ones.
    pub refreshed: usize,
    /// Accounts the directory could not be asked about (kept as they were).
    pub unknown: usize,
}

impl Directory {
    /// Asks the directory again about every account it vouched for: one that is gone (or whose
    /// name is now another entry's) loses its sessions at once, one whose groups or address
    /// changed goes on with the new ones. Live sessions so follow the directory within one
    /// re-check, not only at the next sign-in. (A new password cannot be seen without it:
    /// sessions made before one last their lifetime, or `admin revoke`.)
    pub async fn recheck(
        &self,
        settings: &LdapSettings,
        users: &crate::domain::users::UserDirectory,
        sessions: &crate::domain::session::Sessions,
    ) -> Recheck {
        let mut report = Recheck::default();
        for user in users.from_ldap() {
            match self.look_up(settings, &user.name).await {
                Ok(Some(now)) if now.account_key == user.account_key => {
                    if (&now.display_name, &now.email, &now.groups) != (&user.display_name, &user.email, &user.groups) {
                        users.remember_from_directory(Arc::new(now));
                        report.refreshed += 1;
                    }
                }
                Ok(_) => {
                    users.forget_from_directory(user.name.as_str());
                    if let Err(e) = sessions.end_all_for(user.name.as_str()).await {
                        tracing::error!(user = %user.name, "could not end the sessions of an account the directory dropped: {e}");
                    }
                    report.ended.push(user.name.to_string());
                }
                Err(e) => {
                    tracing::warn!(user = %user.name, "the directory could not be asked again: {e}");
                    report.unknown += 1;
                }
            }
        }
        report
    }
}

/// Group names as the rest of the proxy accepts them (the users file's rule): others are left
/// out, so a directory group cannot smuggle odd text into access rules or identity headers.
fn clean_groups(groups: Vec<String>) -> Vec<String> {
    let mut kept: Vec<String> = groups
        .into_iter()
        .filter(|g| !g.is_empty() && g.len() <= 64 && g.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        .collect();
    kept.sort();
    kept.dedup();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_literals_in_filters_and_groups_come_from_dns() {
        let filter = "(&(objectClass=person)(uid={username}))";
        assert_eq!(filled(filter, "username", "carol"), "(&(objectClass=person)(uid=carol))");
        assert_eq!(filled(filter, "username", "*"), "(&(objectClass=person)(uid=\\2a))");
        assert_eq!(filled(filter, "username", "a)(uid=*"), "(&(objectClass=person)(uid=a\\29\\28uid=\\2a))");
        assert_eq!(first_rdn_value("cn=wiki-admins,ou=groups,dc=example,dc=test").as_deref(), Some("wiki-admins"));
        assert_eq!(first_rdn_value("garbage"), None);
        assert!(is_under("cn=admins,ou=groups,dc=example,dc=test", "ou=groups, DC=example,dc=test"));
        assert!(!is_under("cn=admins,ou=selfservice,dc=example,dc=test", "ou=groups,dc=example,dc=test"));
        assert_eq!(clean_groups(vec!["b".into(), "a".into(), "a".into(), "x y".into(), "<script>".into()]), ["a", "b"]);
    }
}
