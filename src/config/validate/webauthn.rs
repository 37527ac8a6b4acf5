//! The checks of the `[webauthn]` section: security keys and passkeys.

use super::Validator;
use crate::base::tls;
use crate::config::raw;
use crate::config::settings::{Attestation, MfaPolicy, MfaSettings, PublicUrl, WebauthnSettings};

impl Validator {
    /// Validates `[webauthn]` and records in `mfa` whether security keys are offered.
    pub(super) fn webauthn(
        &mut self,
        raw: raw::RawWebauthn,
        public_url: Option<&PublicUrl>,
        mfa: &mut MfaSettings,
    ) -> WebauthnSettings {
        let written = raw.enabled;
        let enabled = written.unwrap_or(true);
        // WebAuthn L3 §5.1.3 / §13.4.9: the RP ID is a valid domain string, and browsers refuse
        // an IP address. Left at its default, the factor is simply not offered on such a URL;
        // asked for explicitly, that would be a silent no, so it is an error instead.
        let has_domain = public_url.is_none_or(|u| u.domain().is_some());
        if written == Some(true) && !has_domain {
            self.problem(
                "webauthn.enabled",
                Some("true"),
                "security keys need public_url to name its host by a domain name (browsers refuse an IP address as the WebAuthn relying party ID)",
                "use a name in public_url (like https://localhost:8443 or https://app.example.com), or set webauthn.enabled = false",
            );
        }
        let passwordless = raw.passwordless.unwrap_or(false);
        if passwordless && (!enabled || !has_domain || mfa.policy == MfaPolicy::Disabled) {
            // Asked for and impossible: said at load, not discovered by a user at the login page.
            self.problem(
                "webauthn.passwordless",
                Some("true"),
                "passkeys can sign in by themselves only where security keys are offered: webauthn.enabled, a domain name in public_url, and mfa.policy other than \"disabled\"",
                "turn those on, or remove webauthn.passwordless",
            );
        }
        let attestation = match raw.attestation.as_deref().unwrap_or("none") {
            "none" => Attestation::None,
            "direct" => Attestation::Direct,
            other => {
                self.problem(
                    "webauthn.attestation",
                    Some(other),
                    "not an attestation setting",
                    "write \"none\" or \"direct\"",
                );
                Attestation::None
            }
        };
        let allowed_aaguids = raw.allowed_aaguids.unwrap_or_default();
        for aaguid in &allowed_aaguids {
            if !is_uuid(aaguid) {
                self.problem(
                    "webauthn.allowed_aaguids",
                    Some(aaguid),
                    "not an AAGUID",
                    "write each like \"cb69481e-8ff7-4039-93ec-0a2729a154a8\"",
                );
            }
        }
        if !allowed_aaguids.is_empty() && attestation != Attestation::Direct {
            self.problem(
                "webauthn.allowed_aaguids",
                None,
                "has no effect unless webauthn.attestation = \"direct\" (without attestation a key's AAGUID is only its own claim)",
                "remove it",
            );
        }
        let ca_files = raw.attestation_ca_files.unwrap_or_default();
        let mut attestation_cas = Vec::new();
        for file in &ca_files {
            let path = self.path(&self.base, file);
            match tls::ca_certificates(&path) {
                Ok(certs) => attestation_cas.extend(certs.iter().map(|c| c.as_ref().to_vec())),
                Err(e) => self.problem(
                    "webauthn.attestation_ca_files",
                    Some(&path.display().to_string()),
                    &e.to_string(),
                    "point it at a PEM file with the root certificate(s) of the key maker's attestation (Yubico publishes theirs)",
                ),
            }
        }
        if attestation == Attestation::Direct {
            // Both are needed: the CA says who made the key, the AAGUID which model. Refused
            // rather than read as "any": an operator who restricts keys must be restricted.
            if allowed_aaguids.is_empty() {
                self.problem(
                    "webauthn.allowed_aaguids",
                    None,
                    "is empty, but webauthn.attestation = \"direct\" needs the models to allow",
                    "list the AAGUIDs of the keys you issue, like [\"cb69481e-8ff7-4039-93ec-0a2729a154a8\"]",
                );
            }
            if ca_files.is_empty() {
                self.problem(
                    "webauthn.attestation_ca_files",
                    None,
                    "is empty, but webauthn.attestation = \"direct\" needs the roots a key's attestation must chain to",
                    "add attestation_ca_files = [\"/etc/portcullis/yubico-attestation-root.pem\"]",
                );
            }
        } else if !ca_files.is_empty() {
            self.problem(
                "webauthn.attestation_ca_files",
                None,
                "has no effect unless webauthn.attestation = \"direct\"",
                "remove it, or set webauthn.attestation = \"direct\"",
            );
        }
        mfa.security_keys = enabled && has_domain && mfa.policy != MfaPolicy::Disabled;
        WebauthnSettings { enabled, passwordless, attestation, allowed_aaguids, attestation_cas }
    }
}

/// `8-4-4-4-12` hex digits, as AAGUIDs are written (RFC 9562 §4).
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn problems(webauthn: &str, public_url: &str) -> Vec<String> {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\npublic_url = \"{public_url}\"\ndata_dir = \"/tmp/x\"\n[webauthn]\n{webauthn}\n"
        );
        match crate::config::parse(&text, Path::new("/tmp/proxy.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    #[test]
    fn security_keys_follow_the_public_url_and_the_switch() {
        let text = "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n";
        let on =
            crate::config::parse(&format!("{text}public_url = \"https://app.example.com\"\n"), Path::new("/tmp/p"))
                .unwrap();
        assert!(on.webauthn.enabled && on.mfa.security_keys, "on by default");
        let ip = crate::config::parse(&format!("{text}public_url = \"http://127.0.0.1:8443\"\n"), Path::new("/tmp/p"))
            .unwrap();
        assert!(!ip.mfa.security_keys, "not offered where browsers cannot use them");
        let off = format!("{text}public_url = \"https://app.example.com\"\n[webauthn]\nenabled = false\n");
        assert!(!crate::config::parse(&off, Path::new("/tmp/p")).unwrap().mfa.security_keys);
    }

    #[test]
    fn each_problem_names_its_key_and_fix() {
        let url = "https://app.example.com";
        assert!(problems("enabled = true", "http://127.0.0.1:8443").iter().any(|p| p.contains("webauthn.enabled")));
        assert!(
            problems("attestation = \"maybe\"", url)
                .iter()
                .any(|p| p.contains("webauthn.attestation") && p.contains("Fix"))
        );
        assert!(problems("passwordless = true", url).is_empty(), "offered with keys");
        let off = problems("passwordless = true\nenabled = false", url);
        assert!(off.iter().any(|p| p.contains("webauthn.passwordless")), "{off:?}");
        let ip = problems("passwordless = true", "http://127.0.0.1:8443");
        assert!(ip.iter().any(|p| p.contains("webauthn.passwordless")), "{ip:?}");
        let aaguids = problems("allowed_aaguids = [\"nope\"]", url);
        assert!(aaguids.iter().any(|p| p.contains("not an AAGUID")), "{aaguids:?}");
        assert!(aaguids.iter().any(|p| p.contains("has no effect")), "{aaguids:?}");
        assert!(problems("enabled = true\nattestation = \"none\"", url).is_empty());
        // Direct attestation needs both the roots and the models, and real certificates.
        let bare = problems("attestation = \"direct\"", url);
        assert!(bare.iter().any(|p| p.contains("webauthn.allowed_aaguids") && p.contains("is empty")), "{bare:?}");
        assert!(bare.iter().any(|p| p.contains("webauthn.attestation_ca_files") && p.contains("is empty")), "{bare:?}");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("root.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let direct = format!(
            "attestation = \"direct\"\nallowed_aaguids = [\"cb69481e-8ff7-4039-93ec-0a2729a154a8\"]\nattestation_ca_files = [{:?}]",
            not_pem.display().to_string()
        );
        let unreadable = problems(&direct, url);
        assert!(unreadable.iter().any(|p| p.contains("webauthn.attestation_ca_files")), "{unreadable:?}");
        let stray = problems(&format!("attestation_ca_files = [{:?}]", not_pem.display().to_string()), url);
        assert!(stray.iter().any(|p| p.contains("has no effect")), "{stray:?}");
        assert!(super::is_uuid("cb69481e-8ff7-4039-93ec-0a2729a154a8"));
    }
}
