//! The checks of `[[mfa.provider]]`, and the old switches they replace.

use std::collections::HashSet;
use std::str::FromStr;

use super::Validator;
use crate::config::providers::{Provider, ProviderId, ProviderKind, ProviderStatus, Providers};
use crate::config::raw::RawProvider;

impl Validator {
    /// The providers: `[[mfa.provider]]` if there is any, else the two the old switches describe.
    /// Both at once is refused, with the lines that would replace the switches, so an upgrade
    /// never has to guess which of the two wins.
    pub(super) fn providers(
        &mut self,
        totp: Option<bool>,
        email_otp: Option<bool>,
        raw: Option<Vec<RawProvider>>,
    ) -> Providers {
        let switches = Providers::from_switches(totp.unwrap_or(true), email_otp.unwrap_or(false));
        let Some(raw) = raw.filter(|list| !list.is_empty()) else { return switches };
        for (key, value) in [("mfa.totp", totp), ("mfa.email_otp", email_otp)] {
            if let Some(value) = value {
                let lines = switches.as_toml().replace('\n', "\n      ");
                self.problem(
                    key,
                    Some(&value.to_string()),
                    "cannot be used together with [[mfa.provider]]",
                    &format!(
                        "remove mfa.totp and mfa.email_otp and list their providers with the others; what they say now is:\n      {}",
                        lines.trim_end()
                    ),
                );
            }
        }
        let mut list: Vec<Provider> = Vec::new();
        let mut seen = HashSet::new();
        for (index, entry) in raw.into_iter().enumerate() {
            let at = |field: &str| format!("mfa.provider[{index}].{field}");
            let id = match entry.id.as_deref() {
                None => {
                    self.problem(
                        &at("id"),
                        None,
                        "missing",
                        "add a stable id that factors will point at, like id = \"totp\"",
                    );
                    None
                }
                Some(text) => match ProviderId::parse(text) {
                    None => {
                        self.problem(&at("id"), Some(text), "not an id", "use 1 to 32 of a-z, 0-9, '-' and '_'");
                        None
                    }
                    Some(id) if !seen.insert(id.clone()) => {
                        self.problem(
                            &at("id"),
                            Some(text),
                            "used by another provider",
                            "give every provider its own id; never reuse the id of a retired one",
                        );
                        None
                    }
                    Some(id) => Some(id),
                },
            };
            let kinds = || ProviderKind::ALL.map(|k| format!("\"{k}\"")).join(", ");
            let kind = match entry.kind.as_deref() {
                None => {
                    self.problem(&at("kind"), None, "missing", &format!("add kind = one of {}", kinds()));
                    None
                }
                Some(text) => ProviderKind::from_str(text).ok().or_else(|| {
                    self.problem(&at("kind"), Some(text), "not a kind of factor", &format!("write one of {}", kinds()));
                    None
                }),
            };
            let status = match entry.status.as_deref() {
                None => Some(ProviderStatus::Active),
                Some(text) => ProviderStatus::from_str(text).ok().or_else(|| {
                    self.problem(
                        &at("status"),
                        Some(text),
                        "not a status",
                        "write \"active\", \"deprecated\" (no new factors; users are told) or \"disabled\" (its factors no longer count)",
                    );
                    None
                }),
            };
            if let Some(name) = entry.name.as_deref().filter(|n| n.trim().is_empty()) {
                self.problem(&at("name"), Some(name), "empty", "write what users should see, or remove the key");
            }
            let (Some(id), Some(kind), Some(status)) = (id, kind, status) else { continue };
            // One active provider per kind: new factors of a kind must point at exactly one, and
            // users could not tell two active ones of the same kind apart. Retired ones of the
            // same kind (deprecated, disabled) may stay listed as long as factors point at them.
            if status == ProviderStatus::Active
                && let Some(other) = list.iter().find(|p| p.kind == kind && p.status == ProviderStatus::Active)
            {
                let fix = format!(
                    "keep one active {kind} provider (\"{}\" is one); set the other's status to \"deprecated\" or \"disabled\"",
                    other.id
                );
                self.problem(&at("status"), Some("active"), &format!("a second active {kind} provider"), &fix);
                continue;
            }
            let name = entry.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| kind.default_name().to_string());
            list.push(Provider { id, kind, name, status, from_switch: false });
        }
        Providers::new(list)
    }
}

impl Validator {
    /// Security keys as a provider: without `[[mfa.provider]]`, `webauthn.enabled` is their
    /// switch, as `mfa.totp` and `mfa.email_otp` are for theirs; either way they are offered only
    /// through an active `webauthn` provider, like every kind.
    pub(super) fn keys_provider(mfa: &mut crate::config::settings::MfaSettings, enabled: bool, from_switches: bool) {
        if from_switches {
            mfa.providers.add_from_switch(ProviderKind::Webauthn, enabled);
        }
        mfa.security_keys = mfa.security_keys && mfa.providers.active(ProviderKind::Webauthn).is_some();
    }
}
