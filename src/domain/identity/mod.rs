//! The identity the upstream receives: plain headers for convenience, and a signed assertion
//! (a JWT, RFC 7519) for upstreams that verify.
//!
//! The assertion is signed with EdDSA (Ed25519, RFC 8037) or ES256 (RFC 7518 §3.4) by the
//! current key of the key set ([`keys`]), whose public keys are published as a JWKS ([`jwks`]),
//! so an upstream can verify an assertion but never make one. HS256 with a shared key remains for
//! setups made before.
//!
//! [`UpstreamIdentity`] can only be built here, and only from a [`FullSession`]. Forwarding takes
//! one, so a request without a full session has nothing to forward with.

pub mod jwks;
pub mod keys;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::base::clock::{SharedClock, UnixTime};
use crate::base::secret::{Secret, random_bytes};
use crate::config::{IdentityAlgorithm, IdentityHeaders, IdentitySettings};
use crate::domain::identity::jwks::{PublicJwk, PublishedKey};
use crate::domain::identity::keys::{KeyError, KeyPairRecord, KeySet, Rotation};
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
    /// 128 random bits, base64url: names this assertion (RFC 7519 §4.1.7). An assertion is
    /// reused for up to half its lifetime, so it names an assertion, not a request.
    pub jti: String,
    /// The session's non-secret handle (a prefix of the hash of its id, as the account page
    /// shows it): lets an upstream tell sessions apart without holding anything usable.
    pub sid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("signing the identity assertion failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("an identity value cannot be sent as a header")]
    HeaderValue(#[from] http::header::InvalidHeaderValue),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    SharedKey(#[from] crate::base::secret::KeyFileError),
    #[error(
        "identity.algorithm is \"HS256\": assertions are signed with a shared secret, so there is no public key to publish or rotate. Set identity.algorithm = \"EdDSA\" (the default) for keys upstreams can verify without being able to sign"
    )]
    SharedSecret,
}

/// The key that signs now, and the public keys verifiers may need. Swapped whole on rotation.
struct Signing {
    /// Bumped at each rotation: a session's cached assertion from an older one is re-signed.
    generation: u64,
    /// `None` for HS256, whose assertions never carried one.
    kid: Option<String>,
    algorithm: Algorithm,
    encoding: EncodingKey,
    published: Vec<PublishedKey>,
}

impl Signing {
    fn from_set(set: &KeySet, keep_for: i64, generation: u64) -> Self {
        let current = set.current();
        Self {
            generation,
            kid: Some(current.kid.clone()),
            algorithm: jwt_algorithm(current.alg),
            encoding: encoding_key(current),
            published: set.published(keep_for),
        }
    }
}

fn jwt_algorithm(alg: IdentityAlgorithm) -> Algorithm {
    match alg {
        IdentityAlgorithm::EdDSA => Algorithm::EdDSA,
        IdentityAlgorithm::ES256 => Algorithm::ES256,
        IdentityAlgorithm::HS256 => Algorithm::HS256,
    }
}

/// jsonwebtoken takes the PKCS#8 DER for both (it hands it to aws-lc-rs at each signature; an
/// assertion is signed at most once per session per half lifetime, so that costs nothing).
fn encoding_key(key: &KeyPairRecord) -> EncodingKey {
    match key.alg {
        IdentityAlgorithm::ES256 => EncodingKey::from_ec_der(key.pkcs8()),
        _ => EncodingKey::from_ed_der(key.pkcs8()),
    }
}

/// The key set file and its contents, for rotation (never touched by the request path).
struct KeyFile {
    path: PathBuf,
    set: KeySet,
}

pub struct AssertionSigner {
    /// Read on every forwarded request: lock-free.
    signing: ArcSwap<Signing>,
    /// `None` with HS256. Held only while rotating, so rotations happen one at a time.
    key_file: Option<Mutex<KeyFile>>,
    generations: AtomicU64,
    algorithm: IdentityAlgorithm,
    issuer: String,
    audience: String,
    ttl: i64,
    clock: SharedClock,
}

impl AssertionSigner {
    /// An HS256 signer with the shared key (`identity.secret_file`).
    pub fn new(key: &Secret, settings: &IdentitySettings, clock: SharedClock) -> Self {
        let signing = Signing {
            generation: 0,
            kid: None,
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(key.expose()),
            published: Vec::new(),
        };
        Self::with(signing, None, IdentityAlgorithm::HS256, settings, clock)
    }

    /// The signer `settings` ask for: HS256 with the shared key file (made if missing), or the
    /// key set (made if missing; an unreadable one is an error, never replaced).
    pub fn open(settings: &IdentitySettings, clock: SharedClock) -> Result<Self, IdentityError> {
        if !settings.algorithm.is_asymmetric() {
            let key = crate::base::secret::load_or_create_key(&settings.secret_file)?;
            return Ok(Self::new(&key, settings, clock));
        }
        let keep_for = keep_retired_for(settings);
        let set = KeySet::open(&settings.key_file, settings.algorithm, clock.now(), keep_for)?;
        let signing = Signing::from_set(&set, keep_for, 0);
        let key_file = KeyFile { path: settings.key_file.clone(), set };
        Ok(Self::with(signing, Some(Mutex::new(key_file)), settings.algorithm, settings, clock))
    }

    fn with(
        signing: Signing,
        key_file: Option<Mutex<KeyFile>>,
        algorithm: IdentityAlgorithm,
        settings: &IdentitySettings,
        clock: SharedClock,
    ) -> Self {
        Self {
            signing: ArcSwap::from_pointee(signing),
            key_file,
            generations: AtomicU64::new(0),
            algorithm,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl: settings.ttl.as_secs() as i64,
            clock,
        }
    }

    /// The algorithm of the key that signs now (with a key set, that key's own: after a change
    /// of `identity.algorithm` it is the old one until the rotation after the next).
    pub fn signing_algorithm(&self) -> IdentityAlgorithm {
        match self.signing.load().algorithm {
            Algorithm::EdDSA => IdentityAlgorithm::EdDSA,
            Algorithm::ES256 => IdentityAlgorithm::ES256,
            _ => IdentityAlgorithm::HS256,
        }
    }

    /// The id of the key that signs now (`None` with HS256).
    pub fn current_kid(&self) -> Option<String> {
        self.signing.load().kid.clone()
    }

    /// The JWK Set document (RFC 7517 §5) of the keys published now; `None` with HS256, whose
    /// key is a shared secret and is never published.
    pub fn jwks(&self) -> Option<String> {
        self.key_file.as_ref()?;
        Some(jwks::document(&self.signing.load().published, self.clock.now()))
    }

    /// The keys an upstream would verify with now (what the demo upstream uses).
    pub fn verifying_keys(&self) -> VerifyingKeys {
        let signing = self.signing.load();
        match &self.key_file {
            None => VerifyingKeys::Shared(self.shared_decoding_key()),
            Some(_) => {
                let now = self.clock.now();
                VerifyingKeys::Public(
                    signing
                        .published
                        .iter()
                        .filter(|k| k.until.is_none_or(|until| now < until))
                        .map(|k| k.jwk.clone())
                        .collect(),
                )
            }
        }
    }

    fn shared_decoding_key(&self) -> DecodingKey {
        // Only reached with HS256, where the encoding key holds the secret's bytes.
        DecodingKey::from_secret(self.signing.load().encoding.as_bytes())
    }

    /// Promotes the next key, makes a new next key (of `identity.algorithm`) and retires the old
    /// current one, then writes the key file and swaps the signer. Assertions signed before stay
    /// valid: their key remains published until they have expired. Blocking (a file write): call
    /// it off the request path.
    pub fn rotate(&self) -> Result<Rotation, IdentityError> {
        let Some(key_file) = &self.key_file else { return Err(IdentityError::SharedSecret) };
        let mut file = key_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let keep_for = self.ttl + keys::CLOCK_SKEW_MARGIN;
        // Rotate a copy: memory changes only once the file holds the new set.
        let mut set = file.set.clone();
        let rotation = set.rotate(self.algorithm, self.clock.now(), keep_for)?;
        set.save(&file.path)?;
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        self.signing.store(Arc::new(Signing::from_set(&set, keep_for, generation)));
        file.set = set;
        Ok(rotation)
    }

    fn sign(&self, session: &FullSession, now: UnixTime, signing: &Signing) -> Result<String, IdentityError> {
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
            jti: URL_SAFE_NO_PAD.encode(random_bytes::<16>()),
            sid: session.key().handle(),
        };
        let mut header = Header::new(signing.algorithm);
        header.kid = signing.kid.clone();
        Ok(jsonwebtoken::encode(&header, &claims, &signing.encoding)?)
    }
}

/// How long a retired key stays published: until the last assertion it signed has expired, with
/// a margin for verifiers' clocks.
pub fn keep_retired_for(settings: &IdentitySettings) -> i64 {
    settings.ttl.as_secs() as i64 + keys::CLOCK_SKEW_MARGIN
}

/// What an upstream verifies with: the published public keys, or (HS256) the shared secret.
pub enum VerifyingKeys {
    Public(Vec<PublicJwk>),
    Shared(DecodingKey),
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the assertion names no key (kid)")]
    NoKid,
    #[error("no published key has kid {0:?}")]
    UnknownKid(String),
    #[error(transparent)]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// Verifies an assertion the way an upstream should: the key its `kid` names among the published
/// ones, the algorithm pinned to that key's (never the token's word alone, RFC 8725 §3.1), issuer,
/// audience and expiry. Used by the demo upstream and the tests.
pub fn verify(token: &str, keys: &VerifyingKeys, issuer: &str, audience: &str) -> Result<AssertionClaims, VerifyError> {
    let (key, algorithm) = match keys {
        VerifyingKeys::Shared(key) => (key.clone(), Algorithm::HS256),
        VerifyingKeys::Public(set) => {
            let kid = jsonwebtoken::decode_header(token)?.kid.ok_or(VerifyError::NoKid)?;
            let jwk = set.iter().find(|k| k.kid == kid).ok_or(VerifyError::UnknownKid(kid))?;
            match (jwk.alg.as_str(), &jwk.y) {
                ("ES256", Some(y)) => (DecodingKey::from_ec_components(&jwk.x, y)?, Algorithm::ES256),
                _ => (DecodingKey::from_ed_components(&jwk.x)?, Algorithm::EdDSA),
            }
        }
    };
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 5;
    Ok(jsonwebtoken::decode::<AssertionClaims>(token, &key, &validation)?.claims)
}

/// A session's most recent assertion, kept in the session's memo. Signing costs microseconds, but
/// the hot path runs for every request, so an assertion is reused while at least half its lifetime
/// remains. It is re-signed when the user record changes (a reload of the users file changed email
/// or groups).
///
/// It is also re-signed after a key rotation, so the new key takes over at once (the old one
/// stays published until what it signed has expired).
struct CachedAssertion {
    identity: Arc<UpstreamIdentity>,
    issued_at: UnixTime,
    for_user: Arc<User>,
    generation: u64,
}

/// Identity headers for one forwarded request. Only a [`FullSession`] can make one.
#[derive(Clone)]
pub struct UpstreamIdentity {
    user: HeaderValue,
    email: HeaderValue,
    groups: HeaderValue,
    assertion: HeaderValue,
}

impl UpstreamIdentity {
    /// Sets the identity headers. The caller has already removed every client-sent copy.
    pub fn apply(&self, headers: &mut HeaderMap, names: &IdentityHeaders) {
        for (name, value) in self.fields(names) {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// An identity with these values, for tests of what carries it: outside tests only a full
    /// session makes one.
    #[cfg(test)]
    pub(crate) fn for_tests(
        user: &'static str,
        email: &'static str,
        groups: &'static str,
        assertion: &'static str,
    ) -> Self {
        let value = HeaderValue::from_static;
        Self { user: value(user), email: value(email), groups: value(groups), assertion: value(assertion) }
    }

    /// The identity headers, each with its value.
    pub fn fields<'a>(&'a self, names: &'a IdentityHeaders) -> [(&'a HeaderName, &'a HeaderValue); 4] {
        [
            (&names.user, &self.user),
            (&names.email, &self.email),
            (&names.groups, &self.groups),
            (&names.assertion, &self.assertion),
        ]
    }
}

impl FullSession {
    /// The identity the upstream is sent for this session. Shared: the same one (kept with the
    /// session until half its assertion's lifetime is gone) goes with every request it makes.
    pub fn upstream_identity(&self, signer: &AssertionSigner) -> Result<Arc<UpstreamIdentity>, IdentityError> {
        let now = signer.clock.now();
        let user = self.user();
        let signing = signer.signing.load();
        // The user's headers are kept with the assertion: both change only with the user record.
        match self.memo().get::<CachedAssertion>() {
            Some(c)
                if now - c.issued_at < signer.ttl / 2
                    && Arc::ptr_eq(&c.for_user, user)
                    && c.generation == signing.generation =>
            {
                Ok(c.identity.clone())
            }
            _ => {
                let identity = Arc::new(UpstreamIdentity {
                    user: HeaderValue::from_str(user.name.as_str())?,
                    email: HeaderValue::from_bytes(user.email.as_bytes())?,
                    groups: HeaderValue::from_bytes(user.groups.join(",").as_bytes())?,
                    assertion: HeaderValue::from_str(&signer.sign(self, now, &signing)?)?,
                });
                self.memo().set(Arc::new(CachedAssertion {
                    identity: identity.clone(),
                    issued_at: now,
                    for_user: user.clone(),
                    generation: signing.generation,
                }));
                Ok(identity)
            }
        }
    }
}
