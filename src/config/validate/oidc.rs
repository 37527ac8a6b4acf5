//! The checks of `[[login.oidc]]`.

use std::sync::Arc;

use super::Validator;
use crate::config::oidc::OidcProvider;
use crate::config::raw::RawOidc;

impl Validator {
    pub(super) fn oidc(&mut self, raw: Option<Vec<RawOidc>>) -> Vec<Arc<OidcProvider>> {
        let mut providers: Vec<Arc<OidcProvider>> = Vec::new();
        for (index, raw) in raw.unwrap_or_default().into_iter().enumerate() {
            let at = |key: &str| format!("login.oidc[{index}].{key}");
            let Some(id) = self.required(&at("id"), &raw.id, "google").map(str::to_string) else { continue };
            if id.is_empty()
                || id.len() > 27
                || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                self.problem(
                    &at("id"),
                    Some(&id),
                    "not a provider id",
                    "use 1 to 27 lower-case letters, digits or '-' (it goes into the callback URL)",
                );
            }
            if providers.iter().any(|p| p.id == id) {
                self.problem(&at("id"), Some(&id), "used by another [[login.oidc]]", "give each provider its own id");
            }
            let issuer = self
                .required(&at("issuer"), &raw.issuer, "https://accounts.google.com")
                .unwrap_or_default()
                .to_string();
            match url::Url::parse(&issuer) {
                Ok(url) if url.scheme() == "https" && url.host_str().is_some() => {}
                Ok(url) if url.scheme() == "http" && url.host_str().is_some_and(super::is_loopback) => {}
                _ => self.problem(
                    &at("issuer"),
                    Some(&issuer),
                    "not an https issuer URL (http only on loopback)",
                    "write the provider's issuer, like \"https://accounts.google.com\"",
                ),
            }
            let client_id = self
                .required(&at("client_id"), &raw.client_id, "1234.apps.googleusercontent.com")
                .unwrap_or_default()
                .to_string();
            let secret = match &raw.client_secret_file {
                Some(file) => {
                    let path = self.path(&self.base, file);
                    self.password_file(&at("client_secret_file"), &path)
                }
                None => {
                    self.problem(
                        &at("client_secret_file"),
                        None,
                        "missing",
                        "add client_secret_file = \"/etc/portcullis/oidc.secret\" (the client secret alone, mode 600)",
                    );
                    None
                }
            };
            let scopes = raw.scopes.unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
            if !scopes.iter().any(|s| s == "openid") {
                self.problem(
                    &at("scopes"),
                    None,
                    "must include \"openid\" (without it there is no ID token)",
                    "add \"openid\" to the list",
                );
            }
            let default_groups = raw.default_groups.unwrap_or_default();
            for group in &default_groups {
                if group.is_empty() || !group.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                    self.problem(
                        &at("default_groups"),
                        Some(group),
                        "not a group name",
                        "use letters, digits, '.', '_' or '-'",
                    );
                }
            }
            let create_accounts = raw.create_accounts.unwrap_or(false);
            if !create_accounts && !default_groups.is_empty() {
                self.problem(
                    &at("default_groups"),
                    None,
                    "has no effect without create_accounts = true",
                    "remove it, or set create_accounts = true",
                );
            }
            let Some(client_secret) = secret else { continue };
            providers.push(Arc::new(OidcProvider {
                name: raw.name.unwrap_or_else(|| id.clone()),
                id,
                issuer,
                client_id,
                client_secret,
                scopes,
                trust_provider_mfa: raw.trust_provider_mfa.unwrap_or(false),
                link_by_verified_email: raw.link_by_verified_email.unwrap_or(false),
                create_accounts,
                default_groups,
            }));
        }
        providers
    }
}
