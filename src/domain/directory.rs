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
        let tls = crate::base::tls::client_config(&settings.extra_roots).map_err(DirectoryRefused::Unavailable)?;
        let connection =
            LdapConnSettings::new().set_conn_timeout(settings.timeout).set_starttls(settings.starttls).set_config(tls);
        let (conn, mut ldap) = LdapConnAsync::with_settings(connection, &settings.url).await.map_err(unavailable)?;
        ldap3::drive!(conn);
        let timeout = settings.timeout;

        // Find the one entry for this name, as the service account (or anonymously).
        if let (Some(dn), Some(secret)) = (&settings.bind_dn, &settings.bind_password) {
            let secret = std::str::from_utf8(secret.expose()).unwrap_or_default();
            ldap.with_timeout(timeout)
                .simple_bind(dn, secret)
                .await
                .map_err(unavailable)?
                .success()
                .map_err(|e| DirectoryRefused::Unavailable(format!("the service account's bind was refused: {e}")))?;
        }
        let filter = filled(&settings.user_filter, "username", username.as_str());
        let wanted =
            [settings.display_name_attribute.as_str(), settings.email_attribute.as_str(), "memberOf", "entryUUID"];
        let (entries, _) = ldap
            .with_timeout(timeout)
            .search(&settings.base_dn, Scope::Subtree, &filter, wanted.to_vec())
            .await
            .map_err(unavailable)?
            .success()
            .map_err(unavailable)?;
        // None or several: no one to sign in (several would make the password pick the account).
        let [entry] = <[_; 1]>::try_from(entries).map_err(|_| DirectoryRefused::Wrong)?;
        let entry = SearchEntry::construct(entry);

        // The password: a bind as the entry. Only "invalid credentials" means wrong (RFC 4511
        // §4.1.9, result 49); anything else is the directory's trouble, not the user's.
        let bound = ldap.with_timeout(timeout).simple_bind(&entry.dn, password).await.map_err(unavailable)?;
        match bound.rc {
            0 => {}
            49 => return Err(DirectoryRefused::Wrong),
            other => return Err(DirectoryRefused::Unavailable(format!("the user's bind failed with result {other}"))),
        }
        let groups = match &settings.groups {
            LdapGroups::MemberOf { under } => all(&entry, "memberOf")
                .iter()
                .filter(|dn| under.as_ref().is_none_or(|base| is_under(dn, base)))
                .filter_map(|dn| first_rdn_value(dn))
                .collect(),
            LdapGroups::Search { base_dn, filter, name_attribute } => {
                // Read back as the service account: the user may not be allowed to read groups.
                if let (Some(dn), Some(secret)) = (&settings.bind_dn, &settings.bind_password) {
                    let secret = std::str::from_utf8(secret.expose()).unwrap_or_default();
                    ldap.with_timeout(timeout).simple_bind(dn, secret).await.map_err(unavailable)?;
                }
                let filter = filled(filter, "dn", &entry.dn);
                let (groups, _) = ldap
                    .with_timeout(timeout)
                    .search(base_dn, Scope::Subtree, &filter, vec![name_attribute.as_str()])
                    .await
                    .map_err(unavailable)?
                    .success()
                    .map_err(unavailable)?;
                groups.into_iter().filter_map(|g| first(&SearchEntry::construct(g), name_attribute)).collect()
            }
        };
        let _ = ldap.unbind().await;
        let identity = first(&entry, "entryUUID").unwrap_or_else(|| entry.dn.to_ascii_lowercase());
        let account_key = format!("ldap:{identity}");
        let user = User {
            name: username.clone(),
            display_name: first(&entry, &settings.display_name_attribute).unwrap_or_else(|| username.to_string()),
            // One plausible address, or none: it goes into identity headers and security mails.
            email: first(&entry, &settings.email_attribute)
                .filter(|e| {
                    all(&entry, &settings.email_attribute).len() == 1 && crate::domain::users::check_email(e).is_ok()
                })
                .unwrap_or_default(),
            groups: clean_groups(groups),
            password_hash: String::new(),
            // The directory keeps the password; sessions end with their lifetime, not a change.
            credential_stamp: sha2::Sha256::digest(account_key.as_bytes())[..16].try_into().unwrap_or([0; 16]),
            account_key,
        };
        Ok(PasswordProof::checked_by_directory(Arc::new(user)))
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
