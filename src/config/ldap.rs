//! `[login.ldap]`: a directory (OpenLDAP, Active Directory, …) checks the passwords of names the
//! users file does not have, by binding as the user; who the user is (name, address, groups)
//! comes from their entry.

use std::time::Duration;

use crate::base::secret::Secret;

/// How to reach the directory and read an account from it.
#[derive(Debug, Clone)]
pub struct LdapSettings {
    /// `ldaps://host[:port]` or `ldap://host[:port]` (with [`Self::starttls`], or on loopback).
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS (RFC 4513 §3) before anything is sent.
    pub starttls: bool,
    /// Certificates (DER) to trust besides the system's, for a directory with a private CA.
    pub extra_roots: Vec<Vec<u8>>,
    /// The account that searches for users (`None`: an anonymous search).
    pub bind_dn: Option<String>,
    pub bind_password: Option<Secret>,
    /// Where users are searched (the whole subtree).
    pub base_dn: String,
    /// The search for one user, with `{username}` standing for the escaped name (RFC 4515).
    pub user_filter: String,
    pub display_name_attribute: String,
    pub email_attribute: String,
    pub groups: LdapGroups,
    /// For connecting and for each operation.
    pub timeout: Duration,
}

/// Where a user's groups come from: each group is named by its name attribute (`cn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdapGroups {
    /// The user entry's `memberOf` values (OpenLDAP's memberof overlay, Active Directory): each
    /// group's name is the value of its DN's first part (`cn=wiki-admins,…` → `wiki-admins`),
    /// and only groups `under` a subtree count when one is given (`group_base_dn`): a group of
    /// the right name elsewhere (one users may create) does not.
    MemberOf { under: Option<String> },
    /// A search under `base_dn` with `filter`, `{dn}` standing for the user's escaped DN.
    Search { base_dn: String, filter: String, name_attribute: String },
}

impl PartialEq for LdapSettings {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
            && self.starttls == other.starttls
            && self.extra_roots == other.extra_roots
            && self.bind_dn == other.bind_dn
            && self.base_dn == other.base_dn
            && self.user_filter == other.user_filter
            && self.groups == other.groups
    }
}
