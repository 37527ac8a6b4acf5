//! `[[login.oidc]]`: OpenID Connect providers people may sign in with. A provider says who
//! someone is (its issuer and their `sub`); which account that is, is ours to decide (an identity
//! linked to the account), and the account's second factor follows as after a password.

use crate::base::secret::Secret;

/// One provider.
#[derive(Debug, Clone)]
pub struct OidcProvider {
    /// Ours: in URLs (`/.portcullis/login/oidc/<id>/callback`) and in `user link --oidc <id>`.
    pub id: String,
    /// What the login page's button says ("Sign in with <name>").
    pub name: String,
    /// The issuer identifier (OpenID Connect Discovery 1.0 §2): `https://…`, or `http://` on
    /// loopback.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    /// An ID token whose `amr` says the provider did multi-factor authentication (`mfa`, `hwk`,
    /// `swk`, `otp`, `sms`) counts as the second factor.
    pub trust_provider_mfa: bool,
    /// An unknown identity whose `email` the provider marks verified is linked to the one account
    /// of the users file with that address.
    pub link_by_verified_email: bool,
    /// An identity linked to no account gets an account of its own (not in the users file), in
    /// `default_groups`, instead of being refused.
    pub create_accounts: bool,
    pub default_groups: Vec<String>,
}

impl PartialEq for OidcProvider {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.name == other.name
            && self.issuer == other.issuer
            && self.client_id == other.client_id
            && self.client_secret.expose() == other.client_secret.expose()
            && self.scopes == other.scopes
            && self.trust_provider_mfa == other.trust_provider_mfa
            && self.link_by_verified_email == other.link_by_verified_email
            && self.create_accounts == other.create_accounts
            && self.default_groups == other.default_groups
    }
}

impl OidcProvider {
    /// The `amr` values (RFC 8176) that, from a provider trusted for it, stand for a second
    /// factor it checked.
    pub const MFA_VALUES: [&'static str; 5] = ["mfa", "hwk", "swk", "otp", "sms"];
}
