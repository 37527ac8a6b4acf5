//! Signing in through an OpenID Connect provider (`[[login.oidc]]`): the authorization code flow
//! with PKCE (RFC 7636), `state` and `nonce` bound to the browser that started it, and the ID
//! token checked by openidconnect (OpenID Connect Core §3.1.3.7: signature through the provider's
//! JWKS, issuer, audience, expiry, nonce). What comes out is an identity (issuer and `sub`), not
//! an account: which account it is, is `identities.rs`'s decision.
//!
//! A sign-in in progress ([`OidcPending`]) is kept server side by the caller, for the browser (by a
//! random nonce in its cookie), used once, for [`LIFETIME`]; the provider's metadata and keys are fetched by discovery and
//! kept [`DISCOVERY_TTL`], and fetched again at once when a token's key is not among them (a
//! provider rotated its keys).

mod http;

use std::sync::Arc;

use dashmap::DashMap;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use subtle::ConstantTimeEq;

pub use self::http::OidcHttp;
use crate::base::clock::UnixTime;
use crate::config::oidc::OidcProvider;

/// How long a sign-in may take at the provider (10 minutes).
pub const LIFETIME: i64 = 600;
/// How long discovered metadata and keys are used before they are fetched again.
pub const DISCOVERY_TTL: i64 = 3600;

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// Why a provider's answer signed nobody in.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider cannot be reached, or its discovery document or keys are unusable.
    #[error("the provider cannot be used: {0}")]
    Unavailable(String),
    /// The provider sent the browser back with an error (`access_denied`, …): its code only.
    #[error("the provider answered {0}")]
    ProviderSaid(String),
    /// No sign-in in progress for this browser (it ran out, was used, or was started elsewhere).
    #[error("no sign-in in progress for this browser")]
    NotStarted,
    /// `state` does not match the one this browser's sign-in sent (a forged or crossed callback).
    #[error("the state does not match")]
    StateMismatch,
    /// The code exchange or the ID token was refused (signature, issuer, audience, expiry,
    /// nonce, a replayed code).
    #[error("the provider's answer was refused: {0}")]
    Refused(String),
}

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// The provider's `email_verified` (absent: false).
    pub email_verified: bool,
    /// The provider's `amr` values (RFC 8176), as it sent them.
    pub amr: Vec<String>,
    /// When the provider last authenticated the user (`auth_time`), if it said.
    pub auth_time: Option<UnixTime>,
    /// What it suggests calling the user (`preferred_username`), and their `name`: for an account
    /// made for the identity (`create_accounts`).
    pub preferred_username: Option<String>,
    pub name: Option<String>,
}

/// A sign-in in progress: what the callback needs, kept server side for one browser.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct OidcPending {
    provider: String,
    state: String,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    return_to: String,
    started_at: UnixTime,
    /// Started from the account page to link the identity to this account (its account key),
    /// not to sign in.
    link_for: Option<String>,
}

impl OidcPending {
    /// Marks it as linking the identity to the account `account_key`.
    pub fn linking_to(self, account_key: &str) -> Self {
        Self { link_for: Some(account_key.to_string()), ..self }
    }

    /// The account it links to, when it is a linking.
    pub fn links_to(&self) -> Option<&str> {
        self.link_for.as_deref()
    }

    /// Whether the callback may still finish it at `now`.
    pub fn is_live(&self, now: UnixTime) -> bool {
        now >= self.started_at && now - self.started_at < LIFETIME
    }
}

/// The query the provider sends the browser back with.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// The providers' metadata, and the client that talks to them.
pub struct OidcClients {
    http: OidcHttp,
    discovered: DashMap<String, (Arc<CoreProviderMetadata>, UnixTime)>,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error code as the provider may send it (RFC 6749 §4.1.2.1: printable ASCII), cut short:
/// shown on a page and logged, so nothing else gets through.
fn error_code(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect()
}

impl OidcClients {
    pub fn new() -> Result<Self, String> {
        let http = OidcHttp::new().map_err(|e| e.to_string())?;
        Ok(Self { http, discovered: DashMap::new() })
    }

    /// The provider's metadata and keys: kept, or discovered now (`fresh`: whatever is kept).
    async fn metadata(
        &self,
        provider: &OidcProvider,
        now: UnixTime,
        fresh: bool,
    ) -> Result<Arc<CoreProviderMetadata>, OidcError> {
        if !fresh
            && let Some(kept) = self.discovered.get(&provider.id)
            && now - kept.1 < DISCOVERY_TTL
        {
            return Ok(kept.0.clone());
        }
        let issuer = IssuerUrl::new(provider.issuer.clone()).map_err(|e| OidcError::Unavailable(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(format!("discovery: {e}")))?;
        // The endpoints the client secret, the code and the keys go to are held to the issuer's
        // own rule: https, or http on loopback for a loopback issuer.
        let issuer_loopback =
            url::Url::parse(&provider.issuer).ok().and_then(|u| u.host_str().map(is_loopback)).unwrap_or(false);
        let acceptable = |endpoint: &url::Url| {
            endpoint.scheme() == "https" || (issuer_loopback && endpoint.host_str().is_some_and(is_loopback))
        };
        let token = metadata.token_endpoint().map(|t| t.url().clone());
        if !token.as_ref().is_none_or(acceptable) || !acceptable(metadata.jwks_uri().url()) {
            return Err(OidcError::Unavailable(
                "its discovery names endpoints that are neither https nor loopback".into(),
            ));
        }
        let metadata = Arc::new(metadata);
        self.discovered.insert(provider.id.clone(), (metadata.clone(), now));
        Ok(metadata)
    }

    fn client(
        provider: &OidcProvider,
        metadata: &CoreProviderMetadata,
        redirect_uri: &str,
    ) -> Result<Client, OidcError> {
        let secret = std::str::from_utf8(provider.client_secret.expose()).unwrap_or_default().to_string();
        let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|e| OidcError::Unavailable(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(provider.client_id.clone()),
            Some(ClientSecret::new(secret)),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: the provider's authorization URL to send the browser to, and what to
    /// keep for the callback.
    pub async fn start(
        &self,
        provider: &OidcProvider,
        redirect_uri: &str,
        return_to: &str,
        now: UnixTime,
    ) -> Result<(String, OidcPending), OidcError> {
        let metadata = self.metadata(provider, now, false).await?;
        let client = Self::client(provider, &metadata, redirect_uri)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .set_pkce_challenge(challenge);
        if provider.trust_provider_mfa {
            // Its MFA stands for a second factor proven now: ask it to authenticate again if its
            // own sign-in is older than a sign-in here may take (OpenID Connect Core §3.1.2.1).
            request = request.set_max_age(std::time::Duration::from_secs(LIFETIME as u64));
        }
        for scope in provider.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let pending = OidcPending {
            provider: provider.id.clone(),
            state: state.secret().clone(),
            nonce,
            verifier,
            return_to: return_to.to_string(),
            started_at: now,
            link_for: None,
        };
        Ok((url.to_string(), pending))
    }

    /// Finishes the sign-in `pending` (taken from the browser's keeping, so used up whatever the
    /// outcome) with the provider's answer: the identity it proves, and where the browser was
    /// going.
    pub async fn finish(
        &self,
        provider: &OidcProvider,
        redirect_uri: &str,
        pending: OidcPending,
        callback: Callback,
        now: UnixTime,
    ) -> Result<(OidcIdentity, String), OidcError> {
        if pending.provider != provider.id || !pending.is_live(now) {
            return Err(OidcError::NotStarted);
        }
        let state = callback.state.unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) {
            return Err(OidcError::StateMismatch);
        }
        if let Some(error) = callback.error {
            return Err(OidcError::ProviderSaid(error_code(&error)));
        }
        let code = callback
            .code
            .filter(|c| !c.is_empty() && c.len() <= 2048)
            .ok_or(OidcError::ProviderSaid("no_code".into()))?;
        let metadata = self.metadata(provider, now, false).await?;
        let client = Self::client(provider, &metadata, redirect_uri)?;
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Unavailable(e.to_string()))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Refused(format!("the code exchange: {e}")))?;
        let id_token = token.id_token().ok_or_else(|| OidcError::Refused("no ID token in the answer".into()))?;
        let claims = match id_token.claims(&client.id_token_verifier(), &pending.nonce) {
            Ok(claims) => claims.clone(),
            Err(first) => {
                // Perhaps a key the provider rotated in since discovery: fetch its keys once more.
                let metadata = self.metadata(provider, now, true).await?;
                let client = Self::client(provider, &metadata, redirect_uri)?;
                id_token
                    .claims(&client.id_token_verifier(), &pending.nonce)
                    .map_err(|_| OidcError::Refused(format!("the ID token: {first}")))?
                    .clone()
            }
        };
        let identity = OidcIdentity {
            provider: provider.id.clone(),
            issuer: claims.issuer().to_string(),
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            amr: claims.auth_method_refs().map(|v| v.iter().map(|a| a.to_string()).collect()).unwrap_or_default(),
            auth_time: claims.auth_time().map(|t| t.timestamp()),
            preferred_username: claims.preferred_username().map(|u| u.to_string()),
            name: claims.name().and_then(|n| n.get(None)).map(|n| n.to_string()),
        };
        Ok((identity, pending.return_to))
    }
}
