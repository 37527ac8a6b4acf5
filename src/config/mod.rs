//! `proxy.toml`: read once, validated once, then carried around as typed values.
//!
//! [`load`] never stops at the first mistake: it reports every unknown key and every bad value
//! together, each with its key, the value it found and how to fix it. A [`Config`] only exists if
//! all of it was right, so the rest of the program never re-checks configuration.

pub mod notify;
mod raw;

/// The bounds of a recovery link's validity (`admin.recovery_link_valid`, and `--valid`).
pub const RECOVERY_LINK_SHORTEST: Duration = Duration::from_secs(600);
pub const RECOVERY_LINK_LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);
pub mod reload;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme};
use ipnet::IpNet;

use crate::base::secret;
use crate::base::tls;
use crate::config::notify::{NotifySettings, SmtpCredentials, SmtpSecurity, SmtpSettings, Transport};
use raw::{OneOrMany, RawConfig};

/// The configuration a running proxy reads: replaced whole when `proxy.toml` is reloaded.
pub type SharedConfig = Arc<arc_swap::ArcSwap<Config>>;

/// Validated configuration. Construct it with [`load`] or [`parse`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages and for reloading.
    pub source: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub upstream: Upstream,
    pub public_url: PublicUrl,
    pub data_dir: PathBuf,
    pub users_file: PathBuf,
    /// Peers whose `X-Forwarded-*` / `X-Real-IP` / `Forwarded` headers we believe.
    pub trusted_proxies: Vec<IpNet>,
    pub session: SessionSettings,
    pub mfa: MfaSettings,
    pub identity: IdentitySettings,
    pub tls: Option<TlsSettings>,
    pub proxy: ProxySettings,
    pub login: LoginSettings,
    pub regulation: RegulationSettings,
    pub limits: Limits,
    pub log_level: String,
    pub audit: AuditOutput,
    /// Where Prometheus metrics are served, on their own listener; `None` turns them off.
    pub metrics_listen: Option<SocketAddr>,
    pub clock: ClockSettings,
    pub notify: NotifySettings,
    pub admin: AdminSettings,
    /// The file as written, to tell which keys a reload changed (see [`reload`]).
    table: toml::Table,
}

/// Who may use the admin pages (see `portal/admin.rs`).
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Members of this group, with a second factor proven within `mfa.step_up_window`; no admin
    /// pages when `None`.
    pub group: Option<String>,
    /// How long an admin-issued recovery link works unless the operator says otherwise.
    pub recovery_link_valid: Duration,
}

/// Clock health checks (see `clock_health.rs`).
#[derive(Debug, Clone)]
pub struct ClockSettings {
    /// An SNTP server to compare against, `host` or `host:port`; none by default.
    pub ntp_server: Option<String>,
    /// An offset beyond this is warned about.
    pub max_offset: Duration,
}

/// Where the audit trail of security events goes, as JSON lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutput {
    File(PathBuf),
    Stdout,
    Off,
}

/// Protection against load and hostile clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// The largest request head (request line and headers) accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head, idle keep-alive included (slowloris).
    pub header_read_timeout: Duration,
}

/// Brute-force regulation (see `regulation.rs`).
#[derive(Debug, Clone)]
pub struct RegulationSettings {
    /// Failures within `window` that pause an account (wrong passwords and wrong codes counted
    /// apart) or a known browser.
    pub max_failures: u32,
    /// Failures within `window` that pause a client address: looser, as many people can share one.
    pub address_max_failures: u32,
    pub window: Duration,
    /// The first ban's length; each ban in a row doubles it (up to a day).
    pub ban: Duration,
}

/// Where requests are forwarded: a scheme and an authority, nothing else.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// The origin users type into their browser. Cookies, redirects and CSRF checks are all bound to
/// it.
#[derive(Debug, Clone)]
pub struct PublicUrl {
    url: url::Url,
}

impl PublicUrl {
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// `scheme://host[:port]`, as browsers send it in `Origin` (RFC 6454 §6.1).
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// An absolute URL on the public origin for a path that starts with `/`.
    pub fn join_path(&self, path_and_query: &str) -> String {
        debug_assert!(path_and_query.starts_with('/'));
        format!("{}{}", self.origin(), path_and_query)
    }
}

#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The cookie's full name, including the `__Host-` prefix when the public URL is https.
    pub cookie_name: String,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    /// How long a half-logged-in session may wait for its second factor.
    pub partial_timeout: Duration,
}

impl SessionSettings {
    /// The login form's CSRF cookie.
    pub fn login_csrf_cookie(&self) -> String {
        format!("{}-csrf", self.cookie_name)
    }

    /// The known-browser cookie (see `known_browser.rs`).
    pub fn known_browser_cookie(&self) -> String {
        format!("{}-known", self.cookie_name)
    }

    /// The "remember this browser" cookie (`mfa.remember_device`).
    pub fn remember_cookie(&self) -> String {
        format!("{}-remember", self.cookie_name)
    }

    /// Every cookie the proxy sets: never forwarded, never settable by the upstream.
    pub fn own_cookies(&self) -> Vec<String> {
        vec![self.cookie_name.clone(), self.login_csrf_cookie(), self.known_browser_cookie(), self.remember_cookie()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaPolicy {
    /// No second factor pages at all; the password is enough.
    Disabled,
    /// Users may enroll a second factor and remove it again.
    Optional,
    /// Every user must prove a second factor, enrolling inline at login if they have none.
    Required,
}

impl FromStr for MfaPolicy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "disabled" => Ok(Self::Disabled),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MfaSettings {
    pub policy: MfaPolicy,
    /// Under `optional`, members of these groups are treated as `required`.
    pub required_groups: Vec<String>,
    /// Whether users may set up an authenticator app (TOTP, RFC 6238). Codes by email are the
    /// other second factor (`email_otp`); recovery codes come with either.
    pub totp: bool,
    /// The name authenticator apps show next to the account.
    pub issuer: String,
    /// Sensitive account changes need a second factor proven this recently.
    pub step_up_window: Duration,
    /// Wrong codes a half-logged-in session may try before it is ended (the password must then
    /// be entered again, which is deliberately slow). Below `regulation.max_failures` by default,
    /// so signing in again is possible when the session ends.
    pub attempts: u32,
    /// Staged rollout: where 2FA is required (by policy or group), it becomes mandatory only
    /// from this moment (Unix time); before it, users without a factor are reminded at sign-in.
    pub required_after: Option<i64>,
    /// Staged rollout per group: members of each group must have 2FA from its date (Unix time),
    /// and are reminded before it.
    pub group_required_after: std::collections::BTreeMap<String, i64>,
    /// Under `optional`: suggest 2FA after sign-in to users without it, at most this often, until
    /// they set it up or decline for good. No suggestion when `None`.
    pub nudge_every: Option<Duration>,
    /// "Remember this browser" on the challenge page: a browser where a second factor was proven
    /// skips it (never the password) for this long. Off when `None`.
    pub remember_device: Option<Duration>,
    /// Whether users may use one-time codes by email as a second factor.
    pub email_otp: bool,
    /// How many digits an emailed code has (6 to 8).
    pub email_code_digits: u32,
}

#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub secret_file: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
    pub headers: IdentityHeaders,
}

/// The headers that carry identity to the upstream. The proxy removes any client-sent copy of
/// these (in every spelling) before forwarding.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: HeaderName,
    pub email: HeaderName,
    pub groups: HeaderName,
    pub assertion: HeaderName,
}

impl IdentityHeaders {
    pub fn all(&self) -> [&HeaderName; 4] {
        [&self.user, &self.email, &self.groups, &self.assertion]
    }
}

#[derive(Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Loaded and checked while validating, so a bad certificate is a config error, not a crash.
    pub server_config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    /// How long the upstream may take to start answering (response headers) before we send 504.
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// Extra trust anchors for an https upstream with a private CA; `None` uses the system's.
    pub upstream_ca_file: Option<PathBuf>,
    pub shutdown_grace: Duration,
    /// Worker threads, each running its own event loop with its own upstream connection pool.
    pub workers: usize,
    /// Protocols a client may switch to with `Upgrade` (lower case; `websocket` by default). Any
    /// other upgrade is forwarded as a plain request, without the `Upgrade`.
    pub upgrades: Vec<String>,
    /// A forwarded request body that sends nothing for this long is abandoned (slow-body attacks).
    pub body_idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// Password hashes computed at once. Each takes a core for tens of milliseconds.
    pub hash_workers: usize,
    /// Logins allowed to wait for a hashing slot before new ones are turned away with 503.
    pub queue_limit: usize,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    /// The value as written, when there was one.
    pub value: Option<String>,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {value}: {}. Fix: {}", self.key, self.problem, self.fix),
            None => write!(f, "{}: {}. Fix: {}", self.key, self.problem, self.fix),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}. Fix: check the path given to --config")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

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
fn is_loopback(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

struct Validator {
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

    fn config(&mut self, raw: RawConfig, source: &Path) -> Option<Config> {
        let listen = self.listen(raw.listen);
        let upstream = self.required("upstream", &raw.upstream, "http://127.0.0.1:8080").and_then(|u| self.upstream(u));
        let public_url =
            self.required("public_url", &raw.public_url, "https://app.example.com").and_then(|u| self.public_url(u));
        let data_dir =
            self.required("data_dir", &raw.data_dir, "/var/lib/portcullis").map(|d| self.path(&self.base, d));
        let users_file = self.path(&self.base, raw.users_file.as_deref().unwrap_or("users.toml"));
        let trusted_proxies = self.trusted_proxies(raw.trusted_proxies.unwrap_or_default());
        let session = self.session(raw.session, public_url.as_ref());
        let mfa = self.mfa(raw.mfa, public_url.as_ref());
        let identity = self.identity(raw.identity, data_dir.as_deref(), public_url.as_ref());
        let tls = raw.tls.and_then(|t| self.tls(t));
        let proxy = self.proxy(raw.proxy);
        let default_workers = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let login = LoginSettings {
            hash_workers: self.count("login.hash_workers", raw.login.hash_workers, default_workers, 256),
            queue_limit: self.count("login.queue_limit", raw.login.queue_limit, 64, 100_000),
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
        let limits = Limits {
            max_connections: self.count("limits.max_connections", raw.limits.max_connections, 10_000, 1_000_000),
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
        if mfa.email_otp && matches!(notify.transport, crate::config::notify::Transport::Off) {
            // Fail closed: a factor whose codes can never arrive would strand whoever chose it.
            self.problem(
                "mfa.email_otp",
                Some("true"),
                "codes by email need a way to send mail, but notify.transport is \"off\"",
                "set notify.transport = \"smtp\" (with its smtp_* keys), or mfa.email_otp = false",
            );
        }
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

    fn session(&mut self, raw: raw::RawSession, public_url: Option<&PublicUrl>) -> SessionSettings {
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

    fn mfa(&mut self, raw: raw::RawMfa, public_url: Option<&PublicUrl>) -> MfaSettings {
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
        let totp = raw.totp.unwrap_or(true);
        let email_otp = raw.email_otp.unwrap_or(false);
        // Fail closed: requiring a second factor that nobody can enroll would lock everyone out
        // (or, worse, tempt a "temporary" bypass). Refuse to start instead, and say what to change.
        let requires = policy == MfaPolicy::Required
            || (policy == MfaPolicy::Optional
                && (!required_groups.is_empty() || raw.group_required_after.as_ref().is_some_and(|g| !g.is_empty())));
        if requires && !totp && !email_otp {
            self.problem(
                "mfa.totp",
                Some("false"),
                "2FA is required (mfa.policy or mfa.required_groups) but no second factor can be enrolled, so nobody could sign in",
                "set mfa.totp = true (or mfa.email_otp = true), or stop requiring 2FA (mfa.policy = \"optional\" with no mfa.required_groups)",
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
            totp,
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
            email_otp,
            email_code_digits: email_code_digits as u32,
        }
    }

    fn identity(
        &mut self,
        raw: raw::RawIdentity,
        data_dir: Option<&Path>,
        public_url: Option<&PublicUrl>,
    ) -> IdentitySettings {
        let secret_file = raw.secret_file.as_deref().unwrap_or("identity.key");
        let secret_file = self.path(data_dir.unwrap_or(&self.base), secret_file);
        if secret_file.exists()
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
        IdentitySettings {
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
        }
    }

    fn tls(&mut self, raw: raw::RawTls) -> Option<TlsSettings> {
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

    fn notify(&mut self, raw: raw::RawNotify, data_dir: Option<&Path>, host: &str) -> NotifySettings {
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
    fn smtp(&mut self, raw: raw::RawNotify) -> Option<SmtpSettings> {
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
    fn password_file(&mut self, key: &str, path: &Path) -> Option<secret::Secret> {
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

    fn proxy(&mut self, raw: raw::RawProxy) -> ProxySettings {
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
            pool_idle_timeout: self.duration("proxy.pool_idle_timeout", &raw.pool_idle_timeout, "90s", second, hour),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        parse(text, Path::new("/etc/portcullis/proxy.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, Path::new("/etc/portcullis/proxy.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    const MINIMAL: &str = r#"
        upstream = "http://127.0.0.1:8080"
        public_url = "https://app.example.com"
        data_dir = "data"
    "#;

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.listen, vec!["127.0.0.1:8443".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.data_dir, Path::new("/etc/portcullis/data"));
        assert_eq!(c.users_file, Path::new("/etc/portcullis/users.toml"));
        assert_eq!(c.identity.secret_file, Path::new("/etc/portcullis/data/identity.key"));
        assert_eq!(c.session.cookie_name, "__Host-portcullis");
        assert_eq!(c.mfa.policy, MfaPolicy::Optional);
        assert_eq!(c.identity.audience, "https://app.example.com");
        assert_eq!(c.session.idle_timeout, Duration::from_secs(30 * 60));
    }

    #[test]
    fn plain_http_public_url_drops_the_host_prefix() {
        let c = parse_ok(&MINIMAL.replace("https://app", "http://app"));
        assert_eq!(c.session.cookie_name, "portcullis");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(
            r#"
            upstream = "ftp://x"
            public_url = "https://app.example.com/sub"
            colour = "blue"
            [session]
            idle_timeout = "30 parsecs"
            [mfa]
            policy = "sometimes"
            "#,
        );
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        for key in ["colour", "upstream", "public_url", "data_dir", "session.idle_timeout", "mfa.policy"] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(found.iter().all(|p| !p.fix.is_empty()));
    }

    /// A config in a fresh folder, `[notify]` set to `notify`, and a private password file there.
    fn smtp_config(notify: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("smtp-password");
        std::fs::write(&password, "s3cret pass\n").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        let result = parse(&format!("{MINIMAL}\n[notify]\n{notify}\n"), &dir.path().join("proxy.toml"));
        (dir, result)
    }

    fn smtp_ok(notify: &str) -> SmtpSettings {
        match smtp_config(notify).1.unwrap_or_else(|e| panic!("{e}")).notify.transport {
            Transport::Smtp(settings) => settings,
            other => panic!("not smtp: {other:?}"),
        }
    }

    fn smtp_problems(notify: &str) -> Vec<Problem> {
        match smtp_config(notify).1 {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn has(problems: &[Problem], key: &str, fix_part: &str) -> bool {
        problems.iter().any(|p| p.key == key && p.fix.contains(fix_part))
    }

    #[test]
    fn smtp_defaults_to_starttls_on_587_with_a_ten_second_timeout() {
        let s = smtp_ok("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"");
        assert_eq!(s.host, "smtp.example.com");
        assert_eq!(s.security, SmtpSecurity::StartTls);
        assert_eq!(s.port, 587);
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert!(s.credentials.is_none() && s.extra_roots.is_empty());
    }

    #[test]
    fn smtp_port_defaults_follow_the_security_mode_and_can_be_set() {
        let tls = smtp_ok("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_security = \"tls\"");
        assert_eq!((tls.security, tls.port), (SmtpSecurity::Tls, 465));
        for host in ["127.0.0.1", "::1", "localhost"] {
            let plain = smtp_ok(&format!("transport = \"smtp\"\nsmtp_host = \"{host}\"\nsmtp_security = \"none\""));
            assert_eq!((plain.security, plain.port), (SmtpSecurity::None, 25), "{host}");
        }
        let set =
            smtp_ok("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_port = 2525\nsmtp_timeout = \"30s\"");
        assert_eq!((set.port, set.timeout), (2525, Duration::from_secs(30)));
    }

    #[test]
    fn smtp_password_comes_from_a_private_file_and_never_shows_in_debug() {
        let (_dir, result) = smtp_config(
            "transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"\nsmtp_password_file = \"smtp-password\"",
        );
        let config = result.unwrap_or_else(|e| panic!("{e}"));
        let Transport::Smtp(s) = &config.notify.transport else { panic!("not smtp") };
        let credentials = s.credentials.as_ref().unwrap();
        assert_eq!(credentials.username, "mailer");
        assert_eq!(credentials.password.expose(), b"s3cret pass", "the trailing line break is not part of it");
        let debug = format!("{config:?}");
        assert!(debug.contains("mailer") && !debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn smtp_password_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        for mode in [0o644, 0o640, 0o620] {
            let dir = tempfile::tempdir().unwrap();
            let password = dir.path().join("smtp-password");
            std::fs::write(&password, "s3cret").unwrap();
            std::fs::set_permissions(&password, std::fs::Permissions::from_mode(mode)).unwrap();
            let text = format!(
                "{MINIMAL}\n[notify]\ntransport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"\nsmtp_password_file = \"smtp-password\"\n"
            );
            let Err(ConfigError::Invalid { problems, .. }) = parse(&text, &dir.path().join("proxy.toml")) else {
                panic!("mode {mode:o} accepted");
            };
            assert!(has(&problems, "notify.smtp_password_file", "chmod 600"), "{problems:?}");
            assert!(problems.iter().all(|p| !p.problem.contains("s3cret")));
        }
    }

    #[test]
    fn smtp_password_file_missing_or_empty_is_refused() {
        let missing = smtp_problems(
            "transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"\nsmtp_password_file = \"nope\"",
        );
        assert!(has(&missing, "notify.smtp_password_file", "umask 077"), "{missing:?}");

        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}\n[notify]\ntransport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"\nsmtp_password_file = \"pw\"\n"
        );
        for contents in ["", "\n", "two\nlines\n"] {
            std::fs::write(dir.path().join("pw"), contents).unwrap();
            std::fs::set_permissions(dir.path().join("pw"), std::fs::Permissions::from_mode(0o600)).unwrap();
            let Err(ConfigError::Invalid { problems, .. }) = parse(&text, &dir.path().join("proxy.toml")) else {
                panic!("{contents:?} accepted")
            };
            assert!(has(&problems, "notify.smtp_password_file", "only line"), "{problems:?}");
        }
    }

    #[test]
    fn smtp_username_and_password_file_come_together() {
        let no_file =
            smtp_problems("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"");
        assert!(has(&no_file, "notify.smtp_password_file", "add smtp_password_file"), "{no_file:?}");
        let no_user = smtp_problems(
            "transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_password_file = \"smtp-password\"",
        );
        assert!(has(&no_user, "notify.smtp_username", "add smtp_username"), "{no_user:?}");
    }

    #[test]
    fn smtp_in_clear_is_refused_unless_the_server_is_on_this_machine() {
        for host in ["smtp.example.com", "10.0.0.5", "localhost.example.com"] {
            let found =
                smtp_problems(&format!("transport = \"smtp\"\nsmtp_host = \"{host}\"\nsmtp_security = \"none\""));
            assert!(has(&found, "notify.smtp_security", "use \"starttls\" or \"tls\""), "{host}: {found:?}");
        }
    }

    #[test]
    fn smtp_bad_values_are_each_named_with_a_fix() {
        let found = smtp_problems(
            "transport = \"smtp\"\nsmtp_security = \"ssl\"\nsmtp_port = 70000\nsmtp_timeout = \"soon\"\nsmtp_ca_file = \"missing.pem\"",
        );
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "notify.smtp_host",
            "notify.smtp_security",
            "notify.smtp_port",
            "notify.smtp_timeout",
            "notify.smtp_ca_file",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let host = smtp_problems("transport = \"smtp\"\nsmtp_host = \"smtp.example.com:587\"");
        assert!(has(&host, "notify.smtp_host", "notify.smtp_port"), "{host:?}");
    }

    #[test]
    fn smtp_ca_file_is_loaded_and_useless_without_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["mail.internal".to_string()]).unwrap();
        std::fs::write(dir.path().join("mail-ca.pem"), ca.cert.pem()).unwrap();
        let text = format!(
            "{MINIMAL}\n[notify]\ntransport = \"smtp\"\nsmtp_host = \"mail.internal\"\nsmtp_ca_file = \"mail-ca.pem\"\n"
        );
        let config = parse(&text, &dir.path().join("proxy.toml")).unwrap_or_else(|e| panic!("{e}"));
        let Transport::Smtp(s) = config.notify.transport else { panic!("not smtp") };
        assert_eq!(s.extra_roots.len(), 1);
        assert_eq!(s.ca_file.as_deref(), Some(dir.path().join("mail-ca.pem").as_path()));

        let plain =
            text.replace("mail.internal", "127.0.0.1").replace("[notify]", "[notify]\nsmtp_security = \"none\"");
        let Err(ConfigError::Invalid { problems, .. }) = parse(&plain, &dir.path().join("proxy.toml")) else {
            panic!("accepted")
        };
        assert!(has(&problems, "notify.smtp_ca_file", "remove it"), "{problems:?}");
    }

    #[test]
    fn smtp_keys_without_the_smtp_transport_are_reported() {
        let found = problems(&format!("{MINIMAL}\n[notify]\nsmtp_host = \"smtp.example.com\"\n"));
        assert!(has(&found, "notify.smtp_host", "set notify.transport = \"smtp\""), "{found:?}");
        let found = problems(&format!("{MINIMAL}\n[notify]\ntransport = \"pigeon\"\n"));
        assert!(has(&found, "notify.transport", "\"smtp\""), "{found:?}");
    }

    proptest::proptest! {
        /// Any text at all: a Config or a list of problems, never a panic.
        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse(&text, Path::new("/tmp/proxy.toml"));
        }

        #[test]
        fn parsing_toml_shaped_text_never_panics(
            key in "(listen|upstream|public_url|data_dir|session|mfa|policy|idle_timeout|tls|cert)",
            value in "(\"[^\"]{0,20}\"|[0-9]{1,5}|true|\\[\\]|\\[\"x\"\\])",
        ) {
            let text = format!("{MINIMAL}\n{key} = {value}\n[session]\n{key} = {value}\n[mfa]\n{key} = {value}\n");
            let _ = parse(&text, Path::new("/tmp/proxy.toml"));
        }
    }
}
