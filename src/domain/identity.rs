//! The identity the upstream receives: plain headers for convenience, and a signed assertion
//! (an HS256 JWT, RFC 7519) for upstreams that verify.
//!
//! [`UpstreamIdentity`] can only be built here, and only from a [`FullSession`]. Forwarding takes
//! one, so a request without a full session has nothing to forward with.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::base::clock::{SharedClock, UnixTime};
use crate::base::secret::Secret;
use crate::config::{IdentityHeaders, IdentitySettings};
use crate::domain::session::FullSession;
use crate::domain::users::User;

/// The claims in `X-Portcullis-Assertion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub aud: String,
    /// The user name.
    pub sub: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
    pub iat: UnixTime,
    pub exp: UnixTime,
    /// When the user last proved a factor (OpenID Connect Core §2).
    pub auth_time: UnixTime,
    /// How they proved it: `["pwd"]`, `["pwd", "otp"]` (RFC 8176 values), or with our own values
    /// `["pwd", "rc"]` for a recovery code, `["pwd", "email"]` for an emailed code and
    /// `["pwd", "device"]` for a remembered browser (see the README's table).
    pub amr: Vec<String>,
    /// `"aal2"` when the session proved a second factor NIST SP 800-63B accepts for AAL2 (an app
    /// code or a recovery code), else `"aal1"`: an emailed code or a remembered browser is not.
    pub acr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("signing the identity assertion failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("an identity value cannot be sent as a header")]
    HeaderValue(#[from] http::header::InvalidHeaderValue),
}

pub struct AssertionSigner {
    encoding: EncodingKey,
    issuer: String,
    audience: String,
    ttl: i64,
    clock: SharedClock,
}

impl AssertionSigner {
    pub fn new(key: &Secret, settings: &IdentitySettings, clock: SharedClock) -> Self {
        Self {
            encoding: EncodingKey::from_secret(key.expose()),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl: settings.ttl.as_secs() as i64,
            clock,
        }
    }

    fn sign(&self, session: &FullSession, now: UnixTime) -> Result<String, IdentityError> {
        let user = session.user();
        let claims = AssertionClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.name.as_str().to_string(),
            email: user.email.clone(),
            name: user.display_name.clone(),
            groups: user.groups.clone(),
            iat: now,
            exp: now + self.ttl,
            auth_time: session.auth_time(),
            amr: session.amr().iter().map(|m| m.as_str().to_string()).collect(),
            acr: if session.amr().iter().any(|m| m.meets_aal2()) { "aal2" } else { "aal1" }.to_string(),
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }
}

/// Verifies an assertion the way an upstream should: signature, pinned algorithm, issuer,
/// audience and expiry, with the key read from the identity key file. Used by the demo upstream.
pub fn verify(
    token: &str,
    key: &DecodingKey,
    issuer: &str,
    audience: &str,
) -> Result<AssertionClaims, jsonwebtoken::errors::Error> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 5;
    Ok(jsonwebtoken::decode::<AssertionClaims>(token, key, &validation)?.claims)
}

/// A session's most recent assertion, kept in the session's memo. Signing costs microseconds, but
/// the hot path runs for every request, so an assertion is reused while at least half its lifetime
/// remains. It is re-signed when the user record changes (a reload of the users file changed email
/// or groups).
struct CachedAssertion {
    header: HeaderValue,
    issued_at: UnixTime,
    for_user: Arc<User>,
}

/// Identity headers for one forwarded request. Only a [`FullSession`] can make one.
pub struct UpstreamIdentity {
    user: HeaderValue,
    email: HeaderValue,
    groups: HeaderValue,
    assertion: HeaderValue,
}

impl UpstreamIdentity {
    /// Sets the identity headers. The caller has already removed every client-sent copy.
    pub fn apply(&self, headers: &mut HeaderMap, names: &IdentityHeaders) {
        headers.insert(names.user.clone(), self.user.clone());
        headers.insert(names.email.clone(), self.email.clone());
        headers.insert(names.groups.clone(), self.groups.clone());
        headers.insert(names.assertion.clone(), self.assertion.clone());
    }
}

impl FullSession {
    pub fn upstream_identity(&self, signer: &AssertionSigner) -> Result<UpstreamIdentity, IdentityError> {
        let now = signer.clock.now();
        let user = self.user();
        let assertion = match self.memo().get::<CachedAssertion>() {
            Some(c) if now - c.issued_at < signer.ttl / 2 && Arc::ptr_eq(&c.for_user, user) => c.header.clone(),
            _ => {
                let header = HeaderValue::from_str(&signer.sign(self, now)?)?;
                self.memo().set(Arc::new(CachedAssertion {
                    header: header.clone(),
                    issued_at: now,
                    for_user: user.clone(),
                }));
                header
            }
        };
        Ok(UpstreamIdentity {
            user: HeaderValue::from_str(user.name.as_str())?,
            email: HeaderValue::from_bytes(user.email.as_bytes())?,
            groups: HeaderValue::from_bytes(user.groups.join(",").as_bytes())?,
            assertion,
        })
    }
}
