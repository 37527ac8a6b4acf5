//! The checks of the session, 2FA, identity, TLS and proxy sections.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;

use super::Validator;
use crate::base::secret;
use crate::base::tls;
use crate::config::raw;
use crate::config::settings::*;

impl Validator {
    pub(super) fn session(&mut self, raw: raw::RawSession, public_url: Option<&PublicUrl>) -> SessionSettings {
        let name = raw.cookie_name.unwrap_or_else(|| "portcullis".into());
        let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !token || name.starts_with("__") {
            self.problem(
                "session.cookie_name",
                Some(&name),
                "not a plain cookie name",
                "use letters, digits, '-', '_' or '.'; the __Host- prefix is added for you on https",
            );
        }
        // RFC 6265bis §4.1.3.2: `__Host-` pins the cookie to this exact host, over https, with no
        // Domain attribute, so no sibling subdomain (such as a Sandstorm grain) can set or read it.
        let cookie_name = match public_url {
            Some(url) if url.is_https() => format!("__Host-{name}"),
            _ => name,
        };
        let minute = Duration::from_secs(60);
        let week = Duration::from_secs(7 * 24 * 3600);
        let idle_timeout = self.duration("session.idle_timeout", &raw.idle_timeout, "30m", minute, week * 4);
        let lifetime = self.duration("session.lifetime", &raw.lifetime, "12h", minute, week * 52);
        let partial_timeout =
            self.duration("session.partial_timeout", &raw.partial_timeout, "10m", minute, Duration::from_secs(3600));
        if idle_timeout > lifetime && lifetime > Duration::ZERO {
            self.problem(
                "session.idle_timeout",
                raw.idle_timeout.as_deref(),
                "longer than session.lifetime, so it would never apply",
                "make it shorter than session.lifetime",
            );
        }
        SessionSettings { cookie_name, idle_timeout, lifetime, partial_timeout }
    }

    pub(super) fn mfa(&mut self, raw: raw::RawMfa, public_url: Option<&PublicUrl>) -> MfaSettings {
        let policy_text = raw.policy.as_deref().unwrap_or("optional");
        let policy = MfaPolicy::from_str(policy_text).unwrap_or_else(|()| {
            self.problem(
                "mfa.policy",
                Some(policy_text),
                "not a policy",
                "write \"disabled\", \"optional\" or \"required\"",
            );
            MfaPolicy::Optional
        });
        let required_groups = raw.required_groups.unwrap_or_default();
        let from_switches = raw.provider.as_ref().is_none_or(|p| p.is_empty());
        let providers = self.providers(raw.totp, raw.email_otp, raw.provider);
        // Fail closed: requiring a second factor that nobody can enroll would lock everyone out
        // (or, worse, tempt a "temporary" bypass). Refuse to start instead, and say what to change.
        let requires = policy == MfaPolicy::Required
            || (policy == MfaPolicy::Optional
                && (!required_groups.is_empty() || raw.group_required_after.as_ref().is_some_and(|g| !g.is_empty())));
        if requires && !providers.any_enrollable() && from_switches {
            self.problem(
                "mfa.totp",
                Some("false"),
                "2FA is required (mfa.policy or mfa.required_groups) but no second factor can be enrolled, so nobody could sign in",
                "set mfa.totp = true (or mfa.email_otp = true), or stop requiring 2FA (mfa.policy = \"optional\" with no mfa.required_groups)",
            );
        } else if requires && !providers.any_enrollable() {
            self.problem(
                "mfa.provider",
                None,
                "2FA is required (mfa.policy or mfa.required_groups) but no provider that can be set up is active, so nobody without a factor could sign in",
                "make a totp or email provider's status \"active\", or stop requiring 2FA (mfa.policy = \"optional\" with no mfa.required_groups)",
            );
        }
        let nudge_every = raw.nudge_every.is_some().then(|| {
            self.duration(
                "mfa.nudge_every",
                &raw.nudge_every,
                "30d",
                Duration::from_secs(3600),
                Duration::from_secs(365 * 86400),
            )
        });
        let remember_device = raw.remember_device.is_some().then(|| {
            self.duration(
                "mfa.remember_device",
                &raw.remember_device,
                "30d",
                Duration::from_secs(3600),
                Duration::from_secs(365 * 86400),
            )
        });
        if remember_device.is_some() && policy == MfaPolicy::Disabled {
            self.problem(
                "mfa.remember_device",
                raw.remember_device.as_deref(),
                "has no effect while mfa.policy = \"disabled\"",
                "remove it, or set mfa.policy = \"optional\"",
            );
        }
        let email_code_digits = raw.email_code_digits.unwrap_or(6);
        if !(6..=8).contains(&email_code_digits) {
            self.problem(
                "mfa.email_code_digits",
                Some(&email_code_digits.to_string()),
                "out of range",
                "write a number from 6 to 8",
            );
        }
        if policy == MfaPolicy::Disabled && !required_groups.is_empty() {
            self.problem(
                "mfa.required_groups",
                None,
                "has no effect while mfa.policy = \"disabled\"",
                "remove it, or set mfa.policy = \"optional\"",
            );
        }
        let attempts = self.count("mfa.attempts", raw.attempts, 3, 100);
        let required_after = raw.required_after.as_deref().and_then(|text| self.date("mfa.required_after", text));
        let group_required_after: std::collections::BTreeMap<String, i64> = raw
            .group_required_after
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(group, text)| {
                let when = self.date(&format!("mfa.group_required_after.{group}"), &text)?;
                Some((group, when))
            })
            .collect();
        if !group_required_after.is_empty() {
            let moot = match policy {
                MfaPolicy::Disabled => Some("has no effect while mfa.policy = \"disabled\""),
                MfaPolicy::Required if required_after.is_none() => {
                    Some("has no effect: mfa.policy = \"required\" already applies to everyone, now")
                }
                _ => None,
            };
            if let Some(why) = moot {
                self.problem(
                    "mfa.group_required_after",
                    None,
                    why,
                    "remove it, or use mfa.policy = \"optional\" to roll 2FA out group by group",
                );
            }
        }
        if required_after.is_some() && !requires {
            self.problem(
                "mfa.required_after",
                raw.required_after.as_deref(),
                "has no effect: nothing is required",
                "set mfa.policy = \"required\" or list mfa.required_groups, or remove it",
            );
        }
        let hour = Duration::from_secs(3600);
        MfaSettings {
            policy,
            required_groups,
            providers,
            issuer: raw
                .issuer
                .unwrap_or_else(|| public_url.and_then(|u| u.url().host_str()).unwrap_or("Portcullis").to_string()),
            step_up_window: self.duration(
                "mfa.step_up_window",
                &raw.step_up_window,
                "10m",
                Duration::from_secs(60),
                hour * 24,
            ),
            attempts: attempts as u32,
            required_after,
            group_required_after,
            nudge_every,
            remember_device,
            email_code_digits: email_code_digits as u32,
            // Set by the `[webauthn]` checks, which see the public URL's host.
            security_keys: false,
        }
    }

    pub(super) fn identity(
        &mut self,
        raw: raw::RawIdentity,
        data_dir: Option<&Path>,
        public_url: Option<&PublicUrl>,
    ) -> IdentitySettings {
        let algorithm = match raw.algorithm.as_deref() {
            None => IdentityAlgorithm::EdDSA,
            Some(text) => IdentityAlgorithm::from_str(text).unwrap_or_else(|()| {
                let allowed: Vec<String> = IdentityAlgorithm::ALL.iter().map(|a| format!("\"{a}\"")).collect();
                self.problem(
                    "identity.algorithm",
                    Some(text),
                    "not a signing algorithm Portcullis offers",
                    &format!("write {} (EdDSA is the default; HS256 keeps the shared key)", allowed.join(", ")),
                );
                IdentityAlgorithm::EdDSA
            }),
        };
        let key_file = raw.key_file.as_deref().unwrap_or("identity-keys.json");
        let key_file = self.path(data_dir.unwrap_or(&self.base), key_file);
        let secret_file = raw.secret_file.as_deref().unwrap_or("identity.key");
        let secret_file = self.path(data_dir.unwrap_or(&self.base), secret_file);
        // The shared key is only read with HS256; with a public-key algorithm an old identity.key
        // is left alone (the server warns about it at start).
        if algorithm == IdentityAlgorithm::HS256
            && secret_file.exists()
            && let Err(e) = secret::load_or_create_key(&secret_file)
        {
            self.problem(
                "identity.secret_file",
                Some(&secret_file.display().to_string()),
                &e.to_string(),
                "fix the file as described, or remove it to have a new key generated",
            );
        }
        let origin = public_url.map(PublicUrl::origin).unwrap_or_default();
        let (strip_headers, strip_prefixes) = self.strip_headers(raw.strip_headers.unwrap_or_default());
        IdentitySettings {
            algorithm,
            algorithm_chosen: raw.algorithm.is_some(),
            key_file,
            secret_file,
            issuer: raw.issuer.unwrap_or_else(|| format!("{origin}/.portcullis")),
            audience: raw.audience.unwrap_or(origin),
            ttl: self.duration("identity.ttl", &raw.ttl, "2m", Duration::from_secs(10), Duration::from_secs(300)),
            headers: IdentityHeaders {
                user: self.header("identity.user_header", &raw.user_header, "X-Forwarded-User"),
                email: self.header("identity.email_header", &raw.email_header, "X-Forwarded-Email"),
                groups: self.header("identity.groups_header", &raw.groups_header, "X-Forwarded-Groups"),
                assertion: self.header("identity.assertion_header", &raw.assertion_header, "X-Portcullis-Assertion"),
            },
            strip_headers,
            strip_prefixes,
        }
    }

    /// `identity.strip_headers`: names, or prefixes written with a trailing `*`. HTTP's own
    /// headers are not identities: removing them would break every request.
    fn strip_headers(&mut self, entries: Vec<String>) -> (Vec<HeaderName>, Vec<String>) {
        const HTTP_OWN: [&str; 8] =
            ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "content-type"];
        let (mut names, mut prefixes) = (Vec::new(), Vec::new());
        for (n, entry) in entries.iter().enumerate() {
            let key = format!("identity.strip_headers[{n}]");
            let text = entry.trim().to_ascii_lowercase();
            let (body, family) = match text.strip_suffix('*') {
                Some(prefix) => (prefix.to_string(), true),
                None => (text.clone(), false),
            };
            if body.is_empty() || body.contains('*') || HeaderName::from_bytes(body.as_bytes()).is_err() {
                self.problem(
                    &key,
                    Some(entry),
                    "not a header name",
                    "write a name like \"X-Remote-User\", or a family like \"X-Vouch-*\"",
                );
            } else if HTTP_OWN.contains(&body.as_str()) {
                self.problem(
                    &key,
                    Some(entry),
                    "one of HTTP's own headers, not an identity",
                    "remove it; only identity headers belong here",
                );
            } else if let Some(own) = HTTP_OWN.iter().find(|own| family && own.starts_with(body.as_str())) {
                // `H*` would take `Host` out of every request, `C*` its `Content-Type`.
                self.problem(
                    &key,
                    Some(entry),
                    &format!("a family that takes in one of HTTP's own headers ({own})"),
                    "name the identity headers, or a family only they belong to, like \"X-Corp-*\"",
                );
            } else if family {
                prefixes.push(body);
            } else {
                names.push(HeaderName::from_bytes(body.as_bytes()).expect("checked above"));
            }
        }
        (names, prefixes)
    }

    pub(super) fn tls(&mut self, raw: raw::RawTls) -> Option<TlsSettings> {
        let cert =
            self.required("tls.cert", &raw.cert, "/etc/portcullis/fullchain.pem").map(|p| self.path(&self.base, p));
        let key = self.required("tls.key", &raw.key, "/etc/portcullis/privkey.pem").map(|p| self.path(&self.base, p));
        let (cert, key) = (cert?, key?);
        match tls::server_config(&cert, &key) {
            Ok(server_config) => Some(TlsSettings { cert, key, server_config }),
            Err(e) => {
                let (key_name, path) = match e {
                    tls::TlsError::Key { .. } => ("tls.key", &key),
                    _ => ("tls.cert", &cert),
                };
                self.problem(
                    key_name,
                    Some(&path.display().to_string()),
                    &e.to_string(),
                    "point it at a readable PEM file: the certificate chain for tls.cert, its private key for tls.key",
                );
                None
            }
        }
    }
    pub(super) fn proxy(&mut self, raw: raw::RawProxy) -> ProxySettings {
        let second = Duration::from_secs(1);
        let hour = Duration::from_secs(3600);
        let upstream_ca_file = raw.upstream_ca_file.map(|p| self.path(&self.base, &p));
        if let Some(ca) = &upstream_ca_file
            && let Err(e) = tls::root_store(ca)
        {
            self.problem(
                "proxy.upstream_ca_file",
                Some(&ca.display().to_string()),
                &e.to_string(),
                "point it at a PEM file with the CA certificate(s) that signed the upstream's certificate",
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let upgrades: Vec<String> = raw
            .upgrades
            .unwrap_or_else(|| vec!["websocket".into()])
            .into_iter()
            .map(|p| p.trim().to_ascii_lowercase())
            .collect();
        for protocol in &upgrades {
            if protocol == "h2c" || protocol.starts_with("h2c/") {
                self.problem(
                    "proxy.upgrades",
                    Some(protocol),
                    "h2c would turn the connection into a tunnel the gate never sees again (RFC 9113 deprecates it)",
                    "remove it; HTTP/2 reaches Portcullis by TLS (ALPN) or prior knowledge instead",
                );
            } else if protocol.is_empty()
                || !protocol.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
            {
                self.problem("proxy.upgrades", Some(protocol), "not a protocol name", "write names like \"websocket\"");
            }
        }
        ProxySettings {
            workers: self.count("proxy.workers", raw.workers, cores, 1024),
            upgrades,
            body_idle_timeout: self.duration("proxy.body_idle_timeout", &raw.body_idle_timeout, "60s", second, hour),
            connect_timeout: self.duration(
                "proxy.connect_timeout",
                &raw.connect_timeout,
                "5s",
                Duration::from_millis(100),
                Duration::from_secs(120),
            ),
            response_timeout: self.duration("proxy.response_timeout", &raw.response_timeout, "60s", second, hour),
            pool_idle_timeout: self.duration("proxy.pool_idle_timeout", &raw.pool_idle_timeout, "4s", second, hour),
            upstream_keepalive: raw.upstream_keepalive.unwrap_or(true),
            upstream_receive_buffer: self.upstream_receive_buffer(raw.upstream_receive_buffer_bytes),
            upstream_ca_file,
            shutdown_grace: self.duration(
                "proxy.shutdown_grace",
                &raw.shutdown_grace,
                "10s",
                Duration::ZERO,
                Duration::from_secs(600),
            ),
        }
    }
}
