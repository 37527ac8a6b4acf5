//! The configuration's typed values: what the rest of the program reads.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme};
use ipnet::IpNet;

use crate::config::access::{AccessRules, Hosts};
use crate::config::notify::NotifySettings;

/// The bounds of a recovery link's validity (`admin.recovery_link_valid`, and `--valid`).
pub const RECOVERY_LINK_SHORTEST: Duration = Duration::from_secs(600);
pub const RECOVERY_LINK_LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// The hosts served: `public_url`'s, `hosts`, and the `[sandstorm]` wildcard.
    pub hosts: Hosts,
    /// `[[rule]]`s, then the `[sandstorm]` preset's.
    pub rules: AccessRules,
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
    /// Security keys and passkeys (`[webauthn]`).
    pub webauthn: WebauthnSettings,
    /// Where state is kept (`[store]`).
    pub store: crate::config::store::StoreSettings,
    /// The file as written, to tell which keys a reload changed (see [`reload`]).
    pub(super) table: toml::Table,
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
    /// Client connections open at once. Past it the connection idle longest gives way to the
    /// newcomer (`server/capacity.rs`); with every connection busy, the newcomer gets a 503.
    pub max_connections: usize,
    /// Of those, the most one client address (an IPv6 /64) may hold; `trusted_proxies` are
    /// exempt, since every client behind them shares their address.
    pub max_connections_per_address: usize,
    /// Of those, the most the addresses of one IPv6 /48 may hold together (an end site's
    /// allocation, RFC 6177: 65,536 /64s, which would otherwise each have a share).
    pub max_connections_per_ipv6_48: usize,
    /// The largest request head (request line and headers) accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head (slowloris), and the longest a
    /// connection may sit with no request in flight, whatever its protocol (see
    /// `server/connection.rs`).
    pub header_read_timeout: Duration,
    /// A write to a client that makes no progress for this long ends the connection: a client
    /// that stops reading cannot hold one (slow-read attacks).
    pub send_timeout: Duration,
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
    pub(super) url: url::Url,
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

    /// The host name, if it is a name (not an IP address).
    pub fn domain(&self) -> Option<&str> {
        self.url.domain()
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

    /// The cookie that ties a handoff to the browser that asked for it, on the other host.
    pub fn handoff_cookie(&self) -> String {
        format!("{}-handoff", self.cookie_name)
    }

    /// The cookie that ties a sign-in link to the browser that asked for it.
    pub fn link_cookie(&self) -> String {
        format!("{}-link", self.cookie_name)
    }

    /// The cookie that ties an OpenID Connect sign-in to the browser that started it.
    pub fn oidc_cookie(&self) -> String {
        format!("{}-oidc", self.cookie_name)
    }

    /// Every cookie the proxy sets: never forwarded, never settable by the upstream.
    pub fn own_cookies(&self) -> Vec<String> {
        vec![
            self.cookie_name.clone(),
            self.login_csrf_cookie(),
            self.known_browser_cookie(),
            self.remember_cookie(),
            self.handoff_cookie(),
            self.link_cookie(),
            self.oidc_cookie(),
        ]
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
    /// The kinds of second factor offered, and in what status (`[[mfa.provider]]`, or the old
    /// `totp` and `email_otp` switches). Recovery codes are no provider: they come with any.
    pub providers: crate::config::providers::Providers,
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
    /// How many digits an emailed code has (6 to 8).
    pub email_code_digits: u32,
    /// Whether users may register security keys and passkeys (`webauthn.enabled`, and a
    /// `public_url` whose host is a domain name: WebAuthn L3 §5.1.3 needs a valid domain as
    /// the relying party ID, which an IP address is not).
    pub security_keys: bool,
}

/// `[webauthn]`: security keys and passkeys as a second factor (WebAuthn Level 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnSettings {
    /// Whether they are offered at all (see [`MfaSettings::security_keys`] for the effective value).
    pub enabled: bool,
    /// Signing in with a discoverable passkey and no password.
    pub passwordless: bool,
    /// Whether new keys must prove their make (WebAuthn L3 §5.4.7, §8).
    pub attestation: Attestation,
    /// Authenticator models (AAGUIDs) allowed, with `attestation = "direct"` (at least one).
    pub allowed_aaguids: Vec<String>,
    /// The root certificates (DER) an attestation must chain to, from
    /// `webauthn.attestation_ca_files`, with `attestation = "direct"` (at least one).
    pub attestation_cas: Vec<Vec<u8>>,
}

impl Default for WebauthnSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            passwordless: false,
            attestation: Attestation::None,
            allowed_aaguids: Vec::new(),
            attestation_cas: Vec::new(),
        }
    }
}

/// `webauthn.attestation` (WebAuthn L3 §5.4.7, `AttestationConveyancePreference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attestation {
    None,
    Direct,
}

/// How the identity assertion is signed (`identity.algorithm`; RFC 7518 §3.1 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum IdentityAlgorithm {
    /// Ed25519 (RFC 8037): the default. Small keys and signatures, deterministic signing.
    EdDSA,
    /// ECDSA with P-256 and SHA-256 (RFC 7518 §3.4), for verifiers without Ed25519.
    ES256,
    /// HMAC-SHA256 with the shared key in `identity.secret_file` (the behaviour before EdDSA):
    /// whoever can verify can also forge.
    HS256,
}

impl IdentityAlgorithm {
    pub const ALL: [Self; 3] = [Self::EdDSA, Self::ES256, Self::HS256];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::HS256 => "HS256",
        }
    }

    /// Whether verifiers hold only a public key (so the key set and JWKS apply).
    pub fn is_asymmetric(self) -> bool {
        self != Self::HS256
    }
}

impl FromStr for IdentityAlgorithm {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|a| a.as_str() == s).ok_or(())
    }
}

impl fmt::Display for IdentityAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// `identity.algorithm`: what new keys are made for (EdDSA by default).
    pub algorithm: IdentityAlgorithm,
    /// Whether `identity.algorithm` was written in proxy.toml (for the upgrade warning).
    pub algorithm_chosen: bool,
    /// `identity.key_file`: the key set for EdDSA and ES256 (default `data_dir/identity-keys.json`).
    pub key_file: PathBuf,
    /// `identity.secret_file`: the shared key for HS256 (default `data_dir/identity.key`).
    pub secret_file: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
    pub headers: IdentityHeaders,
    /// `identity.strip_headers`: more client-sent headers removed before forwarding...
    pub strip_headers: Vec<HeaderName>,
    /// ...and, from its entries ending in `*`, whole families by prefix (lower case).
    pub strip_prefixes: Vec<String>,
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
    /// Upstream connections are kept for the next request (`proxy.upstream_keepalive`, on by
    /// default). Off, each request has a connection of its own: an upstream that answers more
    /// than it was asked can then never hand one user's page to the next request.
    pub upstream_keepalive: bool,
    /// The receive buffer of each upstream connection (`SO_RCVBUF`), fixed rather than grown
    /// by the kernel (`proxy.upstream_receive_buffer_bytes`): what an answer the client is not
    /// reading can park in the kernel on the upstream's side of a connection.
    pub upstream_receive_buffer: usize,
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
    /// Signing in with a link sent by email (`[login.email_link] enabled`).
    pub email_link: bool,
    /// Passwords checked against a directory (`[login.ldap]`) for names not in the users file.
    pub ldap: Option<std::sync::Arc<crate::config::ldap::LdapSettings>>,
    /// OpenID Connect providers people may sign in with (`[[login.oidc]]`), in their order.
    pub oidc: Vec<std::sync::Arc<crate::config::oidc::OidcProvider>>,
}
