//! From the file to [`Config`]: every key checked, every problem collected (see `problems.rs`).
//! The sections' own checks are in `sections.rs` and `mail.rs`.

mod access;
#[cfg(test)]
mod access_tests;
mod ldap;
mod mail;
mod oidc;
mod providers;
#[cfg(test)]
mod providers_tests;
mod sections;
mod store;
#[cfg(test)]
mod tests;
mod webauthn;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use http::uri::Scheme;
use ipnet::IpNet;

use crate::config::problems::{ConfigError, Problem};
use crate::config::raw::{OneOrMany, RawConfig};
use crate::config::settings::*;

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    parse(&text, path)
}

/// Validates `text` as if it had been read from `path`; relative paths resolve against the
/// folder `path` is in.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let deserializer = toml::de::Deserializer::parse(text)
        .map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string() })?;
    let mut unknown = Vec::new();
    let raw: RawConfig = serde_ignored::deserialize(deserializer, |key| unknown.push(key.to_string()))
        .map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string() })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut v = Validator { problems: Vec::new(), base };
    for key in unknown {
        v.problem(&key, None, "unknown key", "remove it, or check its spelling against the example proxy.toml");
    }
    let config = v.config(raw, path);
    match config {
        Some(mut config) if v.problems.is_empty() => {
            config.table =
                toml::from_str(text).map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string() })?;
            Ok(config)
        }
        _ => Err(ConfigError::Invalid { path: path.into(), problems: v.problems }),
    }
}

/// A host that plain-text SMTP may go to: an IP loopback address, or `localhost` (RFC 6761 §6.3).
pub(super) fn is_loopback(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

pub(super) struct Validator {
    problems: Vec<Problem>,
    base: PathBuf,
}

impl Validator {
    fn problem(&mut self, key: &str, value: Option<&str>, problem: &str, fix: &str) {
        self.problems.push(Problem {
            key: key.into(),
            value: value.map(|v| format!("{v:?}")),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    fn required<'a>(&mut self, key: &str, value: &'a Option<String>, example: &str) -> Option<&'a str> {
        if value.is_none() {
            self.problem(key, None, "missing", &format!("add a line like {key} = {example:?}"));
        }
        value.as_deref()
    }

    fn path(&self, relative_to: &Path, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() { p.to_path_buf() } else { relative_to.join(p) }
    }

    /// A date (midnight UTC at its start) or a full RFC 3339 time, as Unix seconds.
    fn date(&mut self, key: &str, text: &str) -> Option<i64> {
        let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_string() };
        match humantime::parse_rfc3339(&full) {
            Ok(when) => when.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs() as i64),
            Err(_) => {
                self.problem(
                    key,
                    Some(text),
                    "not a date",
                    "write a date like \"2027-01-31\" (midnight UTC) or a time like \"2027-01-31T09:00:00Z\"",
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, value: &Option<String>, default: &str, min: Duration, max: Duration) -> Duration {
        let text = value.as_deref().unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                let fix = format!(
                    "choose a duration from {} to {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                );
                self.problem(key, Some(text), "out of range", &fix);
                Duration::ZERO
            }
            Err(_) => {
                self.problem(
                    key,
                    Some(text),
                    "not a duration",
                    "write a number and a unit, like \"30s\", \"30m\" or \"12h\"",
                );
                Duration::ZERO
            }
        }
    }

    fn header(&mut self, key: &str, value: &Option<String>, default: &str) -> HeaderName {
        let text = value.as_deref().unwrap_or(default);
        match HeaderName::from_str(text) {
            Ok(name) if crate::base::headers::is_reserved_for_proxy(&name) => {
                self.problem(
                    key,
                    Some(text),
                    "that header is managed by HTTP or by the proxy itself",
                    "pick another name, such as the default",
                );
                name
            }
            Ok(name) => name,
            Err(_) => {
                self.problem(
                    key,
                    Some(text),
                    "not a valid header name",
                    "use letters, digits and dashes, like \"X-Forwarded-User\"",
                );
                HeaderName::from_static("x-invalid")
            }
        }
    }

    fn count(&mut self, key: &str, value: Option<i64>, default: usize, max: usize) -> usize {
        match value {
            None => default,
            Some(n) if n >= 1 && n as u64 <= max as u64 => n as usize,
            Some(n) => {
                self.problem(key, Some(&n.to_string()), "out of range", &format!("choose a number from 1 to {max}"));
                default
            }
        }
    }

    /// 512 KiB by default: a full window every 256 µs at 16 Gbit/s, or every millisecond at
    /// 4 Gbit/s, for an upstream on the same host or network (1 MiB answers through the proxy on
    /// loopback: 815 MiB/s with 256 KiB, 1,082 with 512 KiB, 987 with 1 MiB, `bench/run.sh`); an
    /// upstream a WAN away needs its bandwidth times its round trip. Left to the kernel, the buffer grows to `tcp_rmem`'s
    /// maximum (6 MiB) while the proxy reads fast, and then holds that much of an answer whose
    /// client stopped reading (the seventh attack pass: 858 MB of 2.19 GiB of TCP memory).
    fn upstream_receive_buffer(&mut self, value: Option<i64>) -> usize {
        const KEY: &str = "proxy.upstream_receive_buffer_bytes";
        const LEAST: i64 = 16 << 10;
        const MOST: i64 = 64 << 20;
        match value {
            None => 512 << 10,
            Some(n) if (LEAST..=MOST).contains(&n) => n as usize,
            Some(n) => {
                let fix = format!("choose a number of bytes from {LEAST} to {MOST} (the default is 524288)");
                self.problem(KEY, Some(&n.to_string()), "out of range", &fix);
                512 << 10
            }
        }
    }

    /// Twice an address's share by default: the /48 a carrier's subscribers share still has
    /// room, and one holder of a /48 (65,536 /64s) has two addresses' worth, not the budget.
    fn connections_per_ipv6_48(&mut self, value: Option<i64>, per_address: usize, max_connections: usize) -> usize {
        const KEY: &str = "limits.max_connections_per_ipv6_48";
        let default = per_address.saturating_mul(2).min(max_connections);
        match value {
            None => default,
            Some(n) if n >= per_address as i64 && n as u64 <= max_connections as u64 => n as usize,
            Some(n) => {
                let fix = format!(
                    "choose a number from limits.max_connections_per_address ({per_address}) to limits.max_connections ({max_connections})"
                );
                self.problem(KEY, Some(&n.to_string()), "out of range", &fix);
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig, source: &Path) -> Option<Config> {
        let listen = self.listen(raw.listen);
        let upstream = self.required("upstream", &raw.upstream, "http://127.0.0.1:8080").and_then(|u| self.upstream(u));
        let public_url =
            self.required("public_url", &raw.public_url, "https://app.example.com").and_then(|u| self.public_url(u));
        let data_dir =
            self.required("data_dir", &raw.data_dir, "/var/lib/portcullis").map(|d| self.path(&self.base, d));
        let users_file = self.path(&self.base, raw.users_file.as_deref().unwrap_or("users.toml"));
        let trusted_proxies = self.trusted_proxies(raw.trusted_proxies.unwrap_or_default());
        let (hosts, rules) = self.access(raw.hosts, raw.rule, raw.sandstorm, public_url.as_ref());
        let session = self.session(raw.session, public_url.as_ref());
        let raw_switches = raw.mfa.provider.as_ref().is_none_or(|p| p.is_empty());
        let mut mfa = self.mfa(raw.mfa, public_url.as_ref());
        let webauthn = self.webauthn(raw.webauthn, public_url.as_ref(), &mut mfa);
        Self::keys_provider(&mut mfa, webauthn.enabled, raw_switches);
        let identity = self.identity(raw.identity, data_dir.as_deref(), public_url.as_ref());
        let tls = raw.tls.and_then(|t| self.tls(t));
        let proxy = self.proxy(raw.proxy);
        let default_workers = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let login = LoginSettings {
            hash_workers: self.count("login.hash_workers", raw.login.hash_workers, default_workers, 256),
            queue_limit: self.count("login.queue_limit", raw.login.queue_limit, 64, 100_000),
            email_link: raw.login.email_link.enabled.unwrap_or(false),
            ldap: self.ldap(raw.login.ldap),
            oidc: self.oidc(raw.login.oidc),
        };
        let minute = Duration::from_secs(60);
        let max_failures = self.count("regulation.max_failures", raw.regulation.max_failures, 5, 1000) as u32;
        let address_max_failures =
            self.count("regulation.address_max_failures", raw.regulation.address_max_failures, 50, 100_000) as u32;
        if address_max_failures < max_failures {
            self.problem(
                "regulation.address_max_failures",
                Some(&address_max_failures.to_string()),
                "is lower than regulation.max_failures: one person's mistakes would pause everyone who shares their address",
                "make it several times regulation.max_failures (the default is 50)",
            );
        }
        let regulation = RegulationSettings {
            max_failures,
            address_max_failures,
            window: self.duration("regulation.window", &raw.regulation.window, "5m", minute, minute * 60 * 24),
            ban: self.duration("regulation.ban", &raw.regulation.ban, "15m", minute, minute * 60 * 24),
        };
        let max_connections = self.count("limits.max_connections", raw.limits.max_connections, 10_000, 1_000_000);
        // An eighth of the budget by default: one address cannot fill it, and an office or a VPN
        // behind one address still has room for a browser's six connections per person.
        let max_connections_per_address = self.count(
            "limits.max_connections_per_address",
            raw.limits.max_connections_per_address,
            (max_connections / 8).clamp(32.min(max_connections), max_connections),
            max_connections,
        );
        let max_connections_per_ipv6_48 = self.connections_per_ipv6_48(
            raw.limits.max_connections_per_ipv6_48,
            max_connections_per_address,
            max_connections,
        );
        let limits = Limits {
            max_connections,
            max_connections_per_address,
            max_connections_per_ipv6_48,
            max_header_bytes: self
                .count("limits.max_header_bytes", raw.limits.max_header_bytes, 64 * 1024, 1024 * 1024)
                .max(8192),
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                &raw.limits.header_read_timeout,
                "20s",
                Duration::from_secs(1),
                Duration::from_secs(600),
            ),
            send_timeout: self.duration(
                "limits.send_timeout",
                &raw.limits.send_timeout,
                "60s",
                Duration::from_secs(1),
                Duration::from_secs(3600),
            ),
        };
        let admin = AdminSettings {
            group: match raw.admin.group {
                Some(group) if group.trim().is_empty() => {
                    self.problem(
                        "admin.group",
                        Some(&group),
                        "empty",
                        "name the group whose members administer Portcullis, or remove the key",
                    );
                    None
                }
                Some(group) if mfa.policy == MfaPolicy::Disabled => {
                    // The admin pages sit behind a fresh second factor; without 2FA nobody could
                    // use them, and a password alone must not open them.
                    self.problem(
                        "admin.group",
                        Some(&group),
                        "the admin pages need a second factor, but mfa.policy is \"disabled\"",
                        "set mfa.policy to \"optional\" or \"required\", or remove admin.group (the `portcullis admin` CLI works either way)",
                    );
                    None
                }
                other => other,
            },
            recovery_link_valid: self.duration(
                "admin.recovery_link_valid",
                &raw.admin.recovery_link_valid,
                "24h",
                RECOVERY_LINK_SHORTEST,
                RECOVERY_LINK_LONGEST,
            ),
        };
        let audit = match raw.log.audit.as_deref() {
            None => data_dir.as_ref().map_or(AuditOutput::Off, |d| AuditOutput::File(d.join("audit.log"))),
            Some("stdout") => AuditOutput::Stdout,
            Some("off") => AuditOutput::Off,
            Some(path) => AuditOutput::File(self.path(data_dir.as_deref().unwrap_or(&self.base), path)),
        };
        let metrics_listen = raw.metrics.listen.as_deref().and_then(|text| match SocketAddr::from_str(text) {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    "metrics.listen",
                    Some(text),
                    "not an address and port",
                    "write it like \"127.0.0.1:9464\"",
                );
                None
            }
        });
        let clock = ClockSettings {
            ntp_server: raw.clock.ntp_server.map(|s| if s.contains(':') { s } else { format!("{s}:123") }),
            max_offset: self.duration(
                "clock.max_offset",
                &raw.clock.max_offset,
                "10s",
                Duration::from_secs(1),
                Duration::from_secs(29),
            ),
        };
        let host = public_url
            .as_ref()
            .and_then(|u| u.url().host_str().map(str::to_string))
            .unwrap_or_else(|| "localhost".into());
        let notify = self.notify(raw.notify, data_dir.as_deref(), &host);
        if let Some(email) = mfa.providers.needing_mail().next()
            && matches!(notify.transport, crate::config::notify::Transport::Off)
        {
            // Fail closed: a factor whose codes can never arrive would strand whoever chose it.
            let (key, value, fix) = if raw_switches {
                (
                    "mfa.email_otp".to_string(),
                    "true".to_string(),
                    "set notify.transport = \"smtp\" (with its smtp_* keys), or mfa.email_otp = false".to_string(),
                )
            } else {
                (
                    format!("mfa.provider[id = \"{}\"].status", email.id),
                    email.status.to_string(),
                    "set notify.transport = \"smtp\" (with its smtp_* keys), or that provider's status = \"disabled\""
                        .to_string(),
                )
            };
            self.problem(
                &key,
                Some(&value),
                "codes by email need a way to send mail, but notify.transport is \"off\"",
                &fix,
            );
        }
        if login.email_link && matches!(notify.transport, crate::config::notify::Transport::Off) {
            self.problem(
                "login.email_link.enabled",
                Some("true"),
                "sign-in links are sent by email, but notify.transport is \"off\"",
                "set notify.transport = \"smtp\" (with its smtp_* keys), or remove [login.email_link]",
            );
        }
        let store = self.store(raw.store);
        let log_level = raw.log.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            self.problem(
                "log.level",
                Some(&log_level),
                "not a log filter",
                "write \"info\", \"debug\" or a filter like \"portcullis=debug,info\"",
            );
        }
        Some(Config {
            source: source.to_path_buf(),
            listen,
            upstream: upstream?,
            public_url: public_url?,
            data_dir: data_dir?,
            users_file,
            trusted_proxies,
            hosts,
            rules,
            session,
            mfa,
            identity,
            tls,
            proxy,
            login,
            regulation,
            limits,
            log_level,
            audit,
            metrics_listen,
            clock,
            notify,
            admin,
            webauthn,
            store,
            table: toml::Table::new(),
        })
    }

    fn listen(&mut self, raw: Option<OneOrMany>) -> Vec<SocketAddr> {
        let texts = match raw {
            None => vec!["127.0.0.1:8443".to_string()],
            Some(OneOrMany::One(one)) => vec![one],
            Some(OneOrMany::Many(many)) => many,
        };
        if texts.is_empty() {
            self.problem(
                "listen",
                Some("[]"),
                "no address to listen on",
                "give at least one, like listen = \"127.0.0.1:8443\"",
            );
        }
        let mut addrs = Vec::new();
        for text in texts {
            match SocketAddr::from_str(&text) {
                Ok(addr) => addrs.push(addr),
                Err(_) => self.problem(
                    "listen",
                    Some(&text),
                    "not an address and port",
                    "write it like \"127.0.0.1:8443\" or \"[::]:443\"",
                ),
            }
        }
        addrs
    }

    fn upstream(&mut self, text: &str) -> Option<Upstream> {
        const FIX: &str = "write the upstream's scheme, host and port only, like \"http://127.0.0.1:8080\"";
        let Ok(uri) = http::Uri::from_str(text) else {
            self.problem("upstream", Some(text), "not a URL", FIX);
            return None;
        };
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            self.problem("upstream", Some(text), "needs a scheme and a host", FIX);
            return None;
        };
        if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
            self.problem("upstream", Some(text), "the scheme must be http or https", FIX);
            return None;
        }
        if authority.as_str().contains('@') {
            self.problem("upstream", Some(text), "user names and passwords in the URL are not supported", FIX);
            return None;
        }
        if !matches!(uri.path_and_query().map(|p| p.as_str()), None | Some("/") | Some("")) {
            self.problem("upstream", Some(text), "a path or query is not supported; requests keep their own path", FIX);
            return None;
        }
        Some(Upstream { scheme: scheme.clone(), authority: authority.clone() })
    }

    fn public_url(&mut self, text: &str) -> Option<PublicUrl> {
        const FIX: &str = "write the address users open, scheme and host only, like \"https://app.example.com\"";
        let Ok(url) = url::Url::parse(text) else {
            self.problem("public_url", Some(text), "not a URL", FIX);
            return None;
        };
        let ok = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none();
        if !ok {
            self.problem(
                "public_url",
                Some(text),
                "must be an http or https origin without user, path, query or fragment",
                FIX,
            );
            return None;
        }
        Some(PublicUrl { url })
    }

    fn trusted_proxies(&mut self, texts: Vec<String>) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for text in texts {
            let parsed = IpNet::from_str(&text).or_else(|_| std::net::IpAddr::from_str(&text).map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => self.problem(
                    "trusted_proxies",
                    Some(&text),
                    "not an IP address or CIDR range",
                    "write addresses like \"10.0.0.1\" or ranges like \"10.0.0.0/8\"",
                ),
            }
        }
        nets
    }
}
