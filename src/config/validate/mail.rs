//! The checks of the `[notify]` section: where security mail goes, and how.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::{Validator, is_loopback};
use crate::base::secret;
use crate::base::tls;
use crate::config::notify::{NotifySettings, SmtpCredentials, SmtpSecurity, SmtpSettings, Transport};
use crate::config::raw;

impl Validator {
    pub(super) fn notify(&mut self, raw: raw::RawNotify, data_dir: Option<&Path>, host: &str) -> NotifySettings {
        let from = raw.from.clone().unwrap_or_else(|| format!("Portcullis <portcullis@{host}>"));
        if from.parse::<lettre::message::Mailbox>().is_err() {
            self.problem(
                "notify.from",
                Some(&from),
                "not an email address",
                "write it like \"Portcullis <portcullis@app.example.com>\"",
            );
        }
        let transport = match raw.transport.as_deref().unwrap_or("file") {
            "smtp" => {
                return NotifySettings { transport: self.smtp(raw).map_or(Transport::Off, Transport::Smtp), from };
            }
            "file" => {
                let dir = raw.dir.as_deref().unwrap_or("mail");
                Transport::File(self.path(data_dir.unwrap_or(&self.base), dir))
            }
            "off" => Transport::Off,
            other => {
                self.problem(
                    "notify.transport",
                    Some(other),
                    "not a transport",
                    "write \"file\" (one .eml file per mail in notify.dir), \"smtp\" (a mail server, set with the smtp_* keys) or \"off\"",
                );
                return NotifySettings { transport: Transport::Off, from };
            }
        };
        // SMTP settings under another transport would be silently ignored; say so instead.
        let smtp_keys = [
            ("notify.smtp_host", raw.smtp_host.is_some()),
            ("notify.smtp_port", raw.smtp_port.is_some()),
            ("notify.smtp_security", raw.smtp_security.is_some()),
            ("notify.smtp_username", raw.smtp_username.is_some()),
            ("notify.smtp_password_file", raw.smtp_password_file.is_some()),
            ("notify.smtp_ca_file", raw.smtp_ca_file.is_some()),
            ("notify.smtp_timeout", raw.smtp_timeout.is_some()),
        ];
        for (key, _) in smtp_keys.into_iter().filter(|(_, set)| *set) {
            self.problem(
                key,
                None,
                "has no effect unless notify.transport = \"smtp\"",
                "set notify.transport = \"smtp\", or remove it",
            );
        }
        NotifySettings { transport, from }
    }

    /// `[notify] transport = "smtp"`. Mail carries account details and the SMTP password is a
    /// credential, so plain-text SMTP is refused unless the server is on this machine.
    pub(super) fn smtp(&mut self, raw: raw::RawNotify) -> Option<SmtpSettings> {
        let host = self.required("notify.smtp_host", &raw.smtp_host, "smtp.example.com").map(str::to_string);
        let security_text = raw.smtp_security.as_deref().unwrap_or("starttls");
        let security = SmtpSecurity::from_str(security_text).ok();
        if security.is_none() {
            self.problem(
                "notify.smtp_security",
                Some(security_text),
                "not a security mode",
                "write \"starttls\" (usually port 587), \"tls\" (usually port 465) or \"none\" (only for a relay on this machine)",
            );
        }
        if let Some(h) = &host
            && rustls_pki_types::ServerName::try_from(h.as_str()).is_err()
        {
            self.problem(
                "notify.smtp_host",
                Some(h),
                "not a host name or IP address",
                "write the mail server's name alone, like \"smtp.example.com\", and its port in notify.smtp_port",
            );
        }
        if let (Some(h), Some(SmtpSecurity::None)) = (&host, security)
            && !is_loopback(h)
        {
            self.problem(
                "notify.smtp_security",
                Some("none"),
                &format!("mail and the SMTP password would cross the network to {h} unencrypted"),
                "use \"starttls\" or \"tls\"; \"none\" is only for a relay on this machine (smtp_host = \"127.0.0.1\", \"::1\" or \"localhost\")",
            );
        }
        let port = match raw.smtp_port {
            None => security.map_or(587, SmtpSecurity::default_port),
            Some(n) if (1..=65535).contains(&n) => n as u16,
            Some(n) => {
                self.problem(
                    "notify.smtp_port",
                    Some(&n.to_string()),
                    "out of range",
                    "choose a port from 1 to 65535, usually 587 (starttls), 465 (tls) or 25 (a local relay); or remove it for the default",
                );
                0
            }
        };
        let credentials = match (raw.smtp_username, raw.smtp_password_file) {
            (None, None) => None,
            (Some(_), None) => {
                self.problem(
                    "notify.smtp_password_file",
                    None,
                    "missing: notify.smtp_username is set, but not where its password is",
                    "add smtp_password_file = \"/etc/portcullis/smtp-password\", a file holding only the password (chmod 600), or remove smtp_username",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    "notify.smtp_username",
                    None,
                    "missing: notify.smtp_password_file is set, but not whose password it is",
                    "add smtp_username = \"portcullis@example.com\" (the account to sign in to the mail server with), or remove smtp_password_file",
                );
                None
            }
            (Some(username), Some(file)) => {
                if username.is_empty() {
                    self.problem(
                        "notify.smtp_username",
                        Some(""),
                        "empty",
                        "write the account to sign in to the mail server with, or remove it and smtp_password_file",
                    );
                }
                let file = self.path(&self.base, &file);
                self.password_file("notify.smtp_password_file", &file)
                    .map(|password| SmtpCredentials { username, password })
            }
        };
        let ca_file = raw.smtp_ca_file.map(|p| self.path(&self.base, &p));
        let mut extra_roots = Vec::new();
        if let Some(ca) = &ca_file {
            if security == Some(SmtpSecurity::None) {
                self.problem(
                    "notify.smtp_ca_file",
                    Some(&ca.display().to_string()),
                    "has no effect with notify.smtp_security = \"none\"",
                    "remove it, or use \"starttls\" or \"tls\"",
                );
            }
            match tls::ca_certificates(ca) {
                Ok(roots) => extra_roots = roots,
                Err(e) => self.problem(
                    "notify.smtp_ca_file",
                    Some(&ca.display().to_string()),
                    &e.to_string(),
                    "point it at a PEM file with the CA certificate(s) that signed the mail server's certificate",
                ),
            }
        }
        let timeout = self.duration(
            "notify.smtp_timeout",
            &raw.smtp_timeout,
            "10s",
            Duration::from_secs(1),
            Duration::from_secs(300),
        );
        Some(SmtpSettings { host: host?, port, security: security?, credentials, ca_file, extra_roots, timeout })
    }

    /// A secret kept in a file of its own (never in proxy.toml): readable by its owner only,
    /// UTF-8, one line; a trailing line break is not part of it.
    pub(super) fn password_file(&mut self, key: &str, path: &Path) -> Option<secret::Secret> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let bytes = std::fs::metadata(path).and_then(|m| Ok((m.permissions().mode(), std::fs::read(path)?)));
        let (mode, bytes) = match bytes {
            Ok((mode, bytes)) => (mode, zeroize::Zeroizing::new(bytes)),
            Err(e) => {
                self.problem(
                    key,
                    Some(&shown),
                    &format!("cannot read it: {e}"),
                    "create it holding only the password, readable by the proxy's user alone: (umask 077; printf '%s' 'PASSWORD' > FILE)",
                );
                return None;
            }
        };
        if mode & 0o077 != 0 {
            self.problem(
                key,
                Some(&shown),
                &format!("other users can read or change it (mode {:o})", mode & 0o777),
                &format!("run `chmod 600 {shown}`"),
            );
            return None;
        }
        let text = std::str::from_utf8(&bytes).unwrap_or_default();
        let password = text.strip_suffix('\n').map_or(text, |t| t.strip_suffix('\r').unwrap_or(t));
        if password.is_empty() || password.contains(['\n', '\r']) {
            self.problem(
                key,
                Some(&shown),
                "does not hold a password (it must be UTF-8 text on one line)",
                "write the SMTP password into it as its only line",
            );
            return None;
        }
        Some(secret::Secret::new(password.as_bytes().to_vec()))
    }
}
