//! The identity key set: the asymmetric keys that sign assertions, in one JSON file.
//!
//! There are always two live keys: the **current** key signs, and the **next** key is already
//! published in the JWKS though it signs nothing yet. A rotation promotes next to current, makes
//! a new next and retires the old current. So an upstream whose JWKS cache was refreshed at any
//! time since the previous rotation already holds the key that signs after this one, and never
//! has to refetch at the moment of a rotation (verifiers rate-limit refetches: node `jose`'s
//! `createRemoteJWKSet` refuses one within 30 s of the last). A retired key stays published until
//! every assertion it signed has expired, then leaves the JWKS and the file.
//!
//! The file is written atomically with mode 0600 and never regenerated when it cannot be read:
//! new keys would silently fail every upstream that verifies.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::base::clock::UnixTime;
use crate::base::secret::{Secret, write_private_file};
use crate::config::IdentityAlgorithm;
use crate::domain::identity::jwks::{PublicJwk, PublishedKey};

/// How long after an assertion's `exp` its key stays published, for verifiers whose clock runs
/// behind ours or that allow leeway (PyJWT's `leeway`, jose's `clockTolerance`).
pub const CLOCK_SKEW_MARGIN: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, signs after the next rotation.
    Next,
    /// Published, signs now.
    Current,
    /// Published until what it signed has expired; signs nothing.
    Retired,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the identity key file {path} cannot be used: {reason}. It is never replaced by itself, since new keys would fail every upstream that verifies assertions: restore it from a backup, or move it away to have new keys made (and give upstreams the new JWKS)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the identity key file {path} can be read or written by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot read the identity key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the identity key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no identity key file at {path} yet: start the proxy once, or run `portcullis identity rotate`")]
    Missing { path: PathBuf },
    #[error("cannot make an {0} key")]
    Generate(IdentityAlgorithm),
}

/// One key pair with its life cycle. `Debug` never shows the private key.
#[derive(Clone)]
pub struct KeyPairRecord {
    pub kid: String,
    pub alg: IdentityAlgorithm,
    pub state: KeyState,
    pub created: UnixTime,
    pub retired_at: Option<UnixTime>,
    /// The PKCS#8 document (RFC 5958) of the private key.
    pkcs8: Secret,
    pub public: PublicJwk,
    /// The public key as a DER SubjectPublicKeyInfo, for PEM.
    pub spki_der: Vec<u8>,
}

impl std::fmt::Debug for KeyPairRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("created", &self.created)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

impl KeyPairRecord {
    /// A new key pair from the operating system's CSPRNG (aws-lc-rs).
    pub fn generate(alg: IdentityAlgorithm, now: UnixTime, state: KeyState) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            IdentityAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec()),
            IdentityAlgorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map(|d| d.as_ref().to_vec())
            }
            IdentityAlgorithm::HS256 => return Err(KeyError::Generate(alg)),
        }
        .map_err(|_| KeyError::Generate(alg))?;
        let (public, spki_der) = public_parts(alg, &pkcs8).ok_or(KeyError::Generate(alg))?;
        Ok(Self {
            kid: public.kid.clone(),
            alg,
            state,
            created: now,
            retired_at: None,
            pkcs8: Secret::new(pkcs8),
            public,
            spki_der,
        })
    }

    /// The private key's PKCS#8 DER, for signing.
    pub fn pkcs8(&self) -> &[u8] {
        self.pkcs8.expose()
    }

    /// When it leaves the JWKS: `keep_for` seconds after it was retired.
    pub fn published_until(&self, keep_for: i64) -> Option<UnixTime> {
        self.retired_at.map(|at| at + keep_for)
    }
}

/// The public JWK and SPKI DER of a PKCS#8 private key, or `None` if aws-lc-rs rejects it.
fn public_parts(alg: IdentityAlgorithm, pkcs8: &[u8]) -> Option<(PublicJwk, Vec<u8>)> {
    let (raw, der) = match alg {
        IdentityAlgorithm::EdDSA => {
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8).ok()?;
            let der: PublicKeyX509Der = pair.public_key().as_der().ok()?;
            (pair.public_key().as_ref().to_vec(), der.as_ref().to_vec())
        }
        IdentityAlgorithm::ES256 => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).ok()?;
            let der: PublicKeyX509Der = pair.public_key().as_der().ok()?;
            (pair.public_key().as_ref().to_vec(), der.as_ref().to_vec())
        }
        IdentityAlgorithm::HS256 => return None,
    };
    Some((PublicJwk::from_raw(alg, &raw).ok()?, der))
}

/// What a rotation did, by key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub current: String,
    pub next: String,
    /// The key that signed until now; published until `retired_until`.
    pub retired: String,
    pub retired_until: UnixTime,
    /// Retired keys whose assertions have all expired, dropped from the set.
    pub dropped: Vec<String>,
}

/// The keys in the file: exactly one current, one next, and any retired ones still published.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<KeyPairRecord>,
}

/// The file's JSON form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    kid: String,
    alg: IdentityAlgorithm,
    state: KeyState,
    created: UnixTime,
    retired_at: Option<UnixTime>,
    /// Standard base64 of the PKCS#8 DER private key.
    private_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    keys: Vec<FileKey>,
}

impl KeySet {
    /// A new set: a current and a next key of `alg`.
    pub fn generate(alg: IdentityAlgorithm, now: UnixTime) -> Result<Self, KeyError> {
        Ok(Self {
            keys: vec![
                KeyPairRecord::generate(alg, now, KeyState::Current)?,
                KeyPairRecord::generate(alg, now, KeyState::Next)?,
            ],
        })
    }

    fn with_state(&self, state: KeyState) -> &KeyPairRecord {
        self.keys.iter().find(|k| k.state == state).expect("a key set always has a current and a next key")
    }

    pub fn current(&self) -> &KeyPairRecord {
        self.with_state(KeyState::Current)
    }

    pub fn next(&self) -> &KeyPairRecord {
        self.with_state(KeyState::Next)
    }

    pub fn keys(&self) -> &[KeyPairRecord] {
        &self.keys
    }

    /// Promotes next to current, retires the old current (at `now`), makes a new next key of
    /// `alg`, and drops retired keys whose window has passed. `keep_for` is how long a retired
    /// key stays published: the assertion lifetime plus [`CLOCK_SKEW_MARGIN`].
    ///
    /// `alg` may differ from the keys' own: that is how the algorithm changes without a gap
    /// (the new algorithm's key is published as next and signs from the rotation after).
    pub fn rotate(&mut self, alg: IdentityAlgorithm, now: UnixTime, keep_for: i64) -> Result<Rotation, KeyError> {
        let fresh = KeyPairRecord::generate(alg, now, KeyState::Next)?;
        let mut retired = String::new();
        let mut current = String::new();
        for key in &mut self.keys {
            match key.state {
                KeyState::Current => {
                    key.state = KeyState::Retired;
                    key.retired_at = Some(now);
                    retired = key.kid.clone();
                }
                KeyState::Next => {
                    key.state = KeyState::Current;
                    current = key.kid.clone();
                }
                KeyState::Retired => {}
            }
        }
        let next = fresh.kid.clone();
        self.keys.push(fresh);
        let dropped = self.prune(now, keep_for);
        Ok(Rotation { current, next, retired, retired_until: now + keep_for, dropped })
    }

    /// Drops retired keys whose assertions have all expired (`retired_at + keep_for <= now`);
    /// returns their ids.
    pub fn prune(&mut self, now: UnixTime, keep_for: i64) -> Vec<String> {
        let mut dropped = Vec::new();
        self.keys.retain(|k| {
            let expired = k.state == KeyState::Retired && k.published_until(keep_for).is_some_and(|until| until <= now);
            if expired {
                dropped.push(k.kid.clone());
            }
            !expired
        });
        dropped
    }

    /// Every key in the JWKS with when it leaves it.
    pub fn published(&self, keep_for: i64) -> Vec<PublishedKey> {
        self.keys.iter().map(|k| PublishedKey { jwk: k.public.clone(), until: k.published_until(keep_for) }).collect()
    }

    /// The file's text (it holds private keys: write it with [`KeySet::save`] only).
    fn to_json(&self) -> String {
        let doc = FileDoc {
            keys: self
                .keys
                .iter()
                .map(|k| FileKey {
                    kid: k.kid.clone(),
                    alg: k.alg,
                    state: k.state,
                    created: k.created,
                    retired_at: k.retired_at,
                    private_key: STANDARD.encode(k.pkcs8()),
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&doc).expect("plain data serialises");
        text.push('\n');
        text
    }

    /// Reads a key set from the file's text, checking every key: its private key parses, its
    /// `kid` is its thumbprint, and the set has exactly one current and one next key.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let doc: FileDoc = serde_json::from_str(text).map_err(|e| format!("not a key set ({e})"))?;
        let mut keys = Vec::new();
        for (n, k) in doc.keys.into_iter().enumerate() {
            let at = |what: &str| format!("key {n} (kid {:?}): {what}", k.kid);
            let pkcs8 = STANDARD.decode(k.private_key.trim()).map_err(|_| at("private_key is not base64"))?;
            let (public, spki_der) = public_parts(k.alg, &pkcs8)
                .ok_or_else(|| at(&format!("private_key is not a PKCS#8 {} private key", k.alg)))?;
            if public.kid != k.kid {
                return Err(at("the kid is not the thumbprint of this key (RFC 7638)"));
            }
            if (k.state == KeyState::Retired) != k.retired_at.is_some() {
                return Err(at("retired_at must be set on retired keys and only on them"));
            }
            keys.push(KeyPairRecord {
                kid: k.kid,
                alg: k.alg,
                state: k.state,
                created: k.created,
                retired_at: k.retired_at,
                pkcs8: Secret::new(pkcs8),
                public,
                spki_der,
            });
        }
        for state in [KeyState::Current, KeyState::Next] {
            let count = keys.iter().filter(|k| k.state == state).count();
            if count != 1 {
                return Err(format!("it has {count} keys in state {state:?}; a key set has exactly one"));
            }
        }
        Ok(Self { keys })
    }

    /// Loads the key set at `path`; `Ok(None)` if there is no file.
    pub fn load(path: &Path) -> Result<Option<Self>, KeyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeyError::Read { path: path.into(), source }),
        };
        let mode = std::fs::metadata(path)
            .map_err(|source| KeyError::Read { path: path.into(), source })?
            .permissions()
            .mode();
        // Private keys: nobody but the proxy's user needs them (upstreams use the public keys).
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen { path: path.into(), mode: mode & 0o777 });
        }
        Self::from_json(&text).map(Some).map_err(|reason| KeyError::Corrupt { path: path.into(), reason })
    }

    /// Loads the set at `path`, or makes and saves a new one of `alg` when there is none; then
    /// drops expired retired keys (saving if any went). The proxy's start.
    pub fn open(path: &Path, alg: IdentityAlgorithm, now: UnixTime, keep_for: i64) -> Result<Self, KeyError> {
        match Self::load(path)? {
            Some(mut set) => {
                if !set.prune(now, keep_for).is_empty() {
                    set.save(path)?;
                }
                Ok(set)
            }
            None => {
                let set = Self::generate(alg, now)?;
                set.save(path)?;
                Ok(set)
            }
        }
    }

    /// Writes the set atomically (temp file + rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_private_file(path, self.to_json().as_bytes())
            .map_err(|source| KeyError::Write { path: path.into(), source })
    }
}

/// Rotates the key set in the file (no proxy running): makes one of `alg` first if there is
/// none, as the proxy would at start. Returns what the rotation did.
pub fn rotate_file(path: &Path, alg: IdentityAlgorithm, now: UnixTime, keep_for: i64) -> Result<Rotation, KeyError> {
    let mut set = KeySet::open(path, alg, now, keep_for)?;
    let rotation = set.rotate(alg, now, keep_for)?;
    set.save(path)?;
    Ok(rotation)
}
