//! `proxy.toml` exactly as written: every value optional and untyped beyond what TOML gives us.
//!
//! These structs are deliberately dumb. Turning them into a [`super::Config`] is where every rule
//! lives, so that all problems can be reported together with their key and fix.
//!
//! Unknown keys are not rejected here with `deny_unknown_fields`, because serde would stop at the
//! first one. `super::load` collects every unknown key with `serde_ignored` instead and reports
//! them all as errors.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub listen: Option<OneOrMany>,
    pub upstream: Option<String>,
    pub public_url: Option<String>,
    pub data_dir: Option<String>,
    pub users_file: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    /// Hosts served besides `public_url`'s.
    pub hosts: Option<Vec<String>>,
    /// `[[rule]]`, in order.
    #[serde(default)]
    pub rule: Vec<RawRule>,
    pub sandstorm: Option<RawSandstorm>,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub mfa: RawMfa,
    #[serde(default)]
    pub identity: RawIdentity,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub login: RawLogin,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub regulation: RawRegulation,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub clock: RawClock,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub notify: RawNotify,
    #[serde(default)]
    pub webauthn: RawWebauthn,
    #[serde(default)]
    pub store: RawStore,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawStore {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub password_file: Option<String>,
    pub key_prefix: Option<String>,
    pub ca_file: Option<String>,
    pub allow_plaintext: Option<bool>,
    pub offline_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawWebauthn {
    pub enabled: Option<bool>,
    pub passwordless: Option<bool>,
    pub attestation: Option<String>,
    pub allowed_aaguids: Option<Vec<String>>,
    pub attestation_ca_files: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRule {
    pub hosts: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub networks: Option<Vec<String>>,
    pub access: Option<String>,
    pub max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSandstorm {
    pub base_url: Option<String>,
    pub wildcard_host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub group: Option<String>,
    pub recovery_link_valid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawNotify {
    pub transport: Option<String>,
    pub from: Option<String>,
    pub dir: Option<String>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<i64>,
    pub smtp_security: Option<String>,
    pub smtp_username: Option<String>,
    pub smtp_password_file: Option<String>,
    pub smtp_ca_file: Option<String>,
    pub smtp_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawClock {
    pub ntp_server: Option<String>,
    pub max_offset: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLimits {
    pub max_connections: Option<i64>,
    pub max_connections_per_address: Option<i64>,
    pub max_connections_per_ipv6_48: Option<i64>,
    pub max_header_bytes: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub send_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRegulation {
    pub max_failures: Option<i64>,
    pub address_max_failures: Option<i64>,
    pub window: Option<String>,
    pub ban: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSession {
    pub cookie_name: Option<String>,
    pub idle_timeout: Option<String>,
    pub lifetime: Option<String>,
    pub partial_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMfa {
    pub policy: Option<String>,
    pub required_groups: Option<Vec<String>>,
    pub totp: Option<bool>,
    pub issuer: Option<String>,
    pub step_up_window: Option<String>,
    pub attempts: Option<i64>,
    pub required_after: Option<String>,
    pub group_required_after: Option<std::collections::BTreeMap<String, String>>,
    pub nudge_every: Option<String>,
    pub remember_device: Option<String>,
    pub email_otp: Option<bool>,
    pub email_code_digits: Option<i64>,
    /// `[[mfa.provider]]` tables.
    pub provider: Option<Vec<RawProvider>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawProvider {
    pub id: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawIdentity {
    pub algorithm: Option<String>,
    pub key_file: Option<String>,
    pub secret_file: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub ttl: Option<String>,
    pub user_header: Option<String>,
    pub email_header: Option<String>,
    pub groups_header: Option<String>,
    pub assertion_header: Option<String>,
    /// More client-sent headers to remove before forwarding (identity headers of other systems).
    pub strip_headers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawProxy {
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub upstream_keepalive: Option<bool>,
    pub upstream_receive_buffer_bytes: Option<i64>,
    pub upstream_ca_file: Option<String>,
    pub shutdown_grace: Option<String>,
    pub workers: Option<i64>,
    pub upgrades: Option<Vec<String>>,
    pub body_idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLogin {
    pub hash_workers: Option<i64>,
    pub queue_limit: Option<i64>,
    #[serde(default)]
    pub email_link: RawEmailLink,
    pub ldap: Option<RawLdap>,
    pub oidc: Option<Vec<RawOidc>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawOidc {
    pub id: Option<String>,
    pub name: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub trust_provider_mfa: Option<bool>,
    pub link_by_verified_email: Option<bool>,
    pub create_accounts: Option<bool>,
    pub default_groups: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLdap {
    pub url: Option<String>,
    pub starttls: Option<bool>,
    pub ca_file: Option<String>,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<String>,
    pub base_dn: Option<String>,
    pub user_filter: Option<String>,
    pub display_name_attribute: Option<String>,
    pub email_attribute: Option<String>,
    pub groups_from: Option<String>,
    pub group_base_dn: Option<String>,
    pub group_filter: Option<String>,
    pub group_name_attribute: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawEmailLink {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLog {
    pub level: Option<String>,
    pub audit: Option<String>,
}
