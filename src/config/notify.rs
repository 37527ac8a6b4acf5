//! `[notify]`: how security mails leave the proxy, as validated settings (the sending itself is
//! `domain::notify`).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::base::secret::Secret;

/// How mail leaves the proxy.
#[derive(Debug, Clone)]
pub enum Transport {
    /// One `.eml` file per mail in this folder.
    File(PathBuf),
    /// A mail server, reached the same way for every mail.
    Smtp(SmtpSettings),
    Off,
}

/// How the connection to the mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain TCP upgraded with STARTTLS (RFC 3207), which must succeed before anything is sent:
    /// a server that does not offer it fails the delivery instead of getting mail in clear.
    StartTls,
    /// TLS from the first byte, "implicit TLS" (RFC 8314 §3.3).
    Tls,
    /// No encryption at all; configuration allows it only for a relay on this machine.
    None,
}

impl SmtpSecurity {
    /// The port each mode is normally served on (RFC 8314 §3.3, RFC 6409, RFC 5321).
    pub fn default_port(self) -> u16 {
        match self {
            Self::StartTls => 587,
            Self::Tls => 465,
            Self::None => 25,
        }
    }

    /// As written in `notify.smtp_security`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StartTls => "starttls",
            Self::Tls => "tls",
            Self::None => "none",
        }
    }
}

impl FromStr for SmtpSecurity {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "starttls" => Ok(Self::StartTls),
            "tls" => Ok(Self::Tls),
            "none" => Ok(Self::None),
            _ => Err(()),
        }
    }
}

/// A validated `[notify] transport = "smtp"`.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub credentials: Option<SmtpCredentials>,
    /// Where `extra_roots` came from, for messages.
    pub ca_file: Option<PathBuf>,
    /// Trust anchors added to the system's for a mail server with a private CA, read and checked
    /// when the configuration was loaded.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// For connecting and for each SMTP command.
    pub timeout: Duration,
}

/// The account the proxy signs in to the mail server with. `Debug` shows the username only.
#[derive(Debug, Clone)]
pub struct SmtpCredentials {
    pub username: String,
    /// Read from `smtp_password_file`, trailing line break removed.
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub transport: Transport,
    pub from: String,
}
