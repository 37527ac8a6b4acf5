//! The checks of `[login.ldap]`.

use std::sync::Arc;
use std::time::Duration;

use super::Validator;
use crate::base::tls;
use crate::config::ldap::{LdapGroups, LdapSettings};
use crate::config::raw::RawLdap;

impl Validator {
    pub(super) fn ldap(&mut self, raw: Option<RawLdap>) -> Option<Arc<LdapSettings>> {
        let raw = raw?;
        let url = self.required("login.ldap.url", &raw.url, "ldaps://ldap.example.com")?.to_string();
        let starttls = raw.starttls.unwrap_or(false);
        let parsed = url::Url::parse(&url).ok();
        let host = parsed.as_ref().and_then(|u| u.host_str().map(str::to_string));
        match (parsed.as_ref().map(url::Url::scheme), host.as_deref()) {
            (Some("ldaps"), Some(_)) if starttls => self.problem(
                "login.ldap.starttls",
                Some("true"),
                "has no meaning with ldaps:// (the connection is TLS from the start)",
                "remove it",
            ),
            (Some("ldaps"), Some(_)) => {}
            // Passwords go to the directory on every sign-in: never in clear text off this host.
            (Some("ldap"), Some(host)) if !starttls && !super::is_loopback(host) => self.problem(
                "login.ldap.url",
                Some(&url),
                "would send every password in clear text",
                "use ldaps://, or add starttls = true (the directory must offer StartTLS)",
            ),
            (Some("ldap"), Some(_)) => {}
            _ => self.problem(
                "login.ldap.url",
                Some(&url),
                "not an LDAP URL",
                "write it like \"ldaps://ldap.example.com\" or \"ldap://ldap.example.com:389\"",
            ),
        }
        let mut extra_roots = Vec::new();
        if let Some(file) = &raw.ca_file {
            let path = self.path(&self.base, file);
            match tls::ca_certificates(&path) {
                Ok(certs) => extra_roots = certs.iter().map(|c| c.as_ref().to_vec()).collect(),
                Err(e) => self.problem(
                    "login.ldap.ca_file",
                    Some(&path.display().to_string()),
                    &e.to_string(),
                    "point it at a PEM file with the CA certificate(s) that signed the directory's certificate",
                ),
            }
        }
        let bind_password = match (&raw.bind_dn, &raw.bind_password_file) {
            (Some(_), Some(file)) => {
                let path = self.path(&self.base, file);
                self.password_file("login.ldap.bind_password_file", &path)
            }
            (Some(_), None) => {
                self.problem(
                    "login.ldap.bind_password_file",
                    None,
                    "missing: login.ldap.bind_dn needs its password",
                    "add bind_password_file = \"/etc/portcullis/ldap.secret\" (the password alone, mode 600)",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    "login.ldap.bind_password_file",
                    None,
                    "has no effect without login.ldap.bind_dn",
                    "add the service account's bind_dn, or remove it",
                );
                None
            }
            (None, None) => None,
        };
        let base_dn = self.required("login.ldap.base_dn", &raw.base_dn, "ou=people,dc=example,dc=com")?.to_string();
        let user_filter = raw.user_filter.unwrap_or_else(|| "(&(objectClass=person)(uid={username}))".into());
        if !user_filter.contains("{username}") || !user_filter.starts_with('(') || !user_filter.ends_with(')') {
            self.problem(
                "login.ldap.user_filter",
                Some(&user_filter),
                "must be an LDAP filter in parentheses containing {username}",
                "write it like \"(&(objectClass=person)(uid={username}))\" (Active Directory: \"(&(objectClass=user)(sAMAccountName={username}))\")",
            );
        }
        let groups = match raw.groups_from.as_deref().unwrap_or("memberOf") {
            "memberOf" => LdapGroups::MemberOf { under: raw.group_base_dn.clone() },
            "search" => {
                let filter = raw.group_filter.unwrap_or_else(|| "(&(objectClass=groupOfNames)(member={dn}))".into());
                if !filter.contains("{dn}") {
                    self.problem(
                        "login.ldap.group_filter",
                        Some(&filter),
                        "must contain {dn} (the user's DN)",
                        "write it like \"(&(objectClass=groupOfNames)(member={dn}))\"",
                    );
                }
                LdapGroups::Search {
                    base_dn: raw.group_base_dn.unwrap_or_else(|| base_dn.clone()),
                    filter,
                    name_attribute: raw.group_name_attribute.unwrap_or_else(|| "cn".into()),
                }
            }
            other => {
                self.problem(
                    "login.ldap.groups_from",
                    Some(other),
                    "not a group source",
                    "write \"memberOf\" or \"search\"",
                );
                LdapGroups::MemberOf { under: None }
            }
        };
        let timeout =
            self.duration("login.ldap.timeout", &raw.timeout, "5s", Duration::from_secs(1), Duration::from_secs(60));
        Some(Arc::new(LdapSettings {
            url,
            starttls,
            extra_roots,
            bind_dn: raw.bind_dn,
            bind_password,
            base_dn,
            user_filter,
            display_name_attribute: raw.display_name_attribute.unwrap_or_else(|| "cn".into()),
            email_attribute: raw.email_attribute.unwrap_or_else(|| "mail".into()),
            groups,
            timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn problems(ldap: &str) -> Vec<String> {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"/tmp/x\"\n[login.ldap]\n{ldap}\n"
        );
        match crate::config::parse(&text, Path::new("/tmp/proxy.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    #[test]
    fn each_problem_names_its_key_and_fix() {
        let base = "base_dn = \"ou=people,dc=example,dc=com\"";
        assert!(problems(&format!("url = \"ldaps://ldap.example.com\"\n{base}")).is_empty());
        assert!(problems(&format!("url = \"ldap://127.0.0.1:389\"\n{base}")).is_empty(), "loopback may be plain");
        assert!(problems(&format!("url = \"ldap://ldap.example.com\"\nstarttls = true\n{base}")).is_empty());
        let clear = problems(&format!("url = \"ldap://ldap.example.com\"\n{base}"));
        assert!(clear.iter().any(|p| p.contains("login.ldap.url") && p.contains("clear text")), "{clear:?}");
        let filter = problems(&format!("url = \"ldaps://l.example.com\"\n{base}\nuser_filter = \"(uid=alice)\""));
        assert!(filter.iter().any(|p| p.contains("login.ldap.user_filter")), "{filter:?}");
        let bind = problems(&format!("url = \"ldaps://l.example.com\"\n{base}\nbind_dn = \"cn=svc\""));
        assert!(bind.iter().any(|p| p.contains("login.ldap.bind_password_file")), "{bind:?}");
        let groups = problems(&format!("url = \"ldaps://l.example.com\"\n{base}\ngroups_from = \"magic\""));
        assert!(groups.iter().any(|p| p.contains("login.ldap.groups_from")), "{groups:?}");
        assert!(problems("url = \"ldaps://l.example.com\"").iter().any(|p| p.contains("login.ldap.base_dn")));
    }
}
