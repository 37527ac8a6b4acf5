//! Public keys as upstreams see them: JWKs (RFC 7517), named by their RFC 7638 thumbprint, as a
//! JWK Set document, or as SPKI PEM for software that wants a key file.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::clock::UnixTime;
use crate::config::IdentityAlgorithm;

/// One public signing key as published: `kty`, `crv`, `x` (and `y` for EC), `kid`, `alg` and
/// `use: "sig"` (RFC 7517 §4; RFC 7518 §6.2 for P-256, RFC 8037 §2 for Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwkError {
    #[error("HS256 has no public key")]
    NotAsymmetric,
    #[error("a {alg} public key of {len} bytes is not one we make")]
    BadLength { alg: IdentityAlgorithm, len: usize },
}

impl PublicJwk {
    /// The JWK of a raw public key as aws-lc-rs gives it: the 32 bytes of an Ed25519 key, or the
    /// uncompressed SEC1 point `0x04 ‖ x ‖ y` of a P-256 key. `kid` is its thumbprint.
    pub fn from_raw(alg: IdentityAlgorithm, raw: &[u8]) -> Result<Self, JwkError> {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let (kty, crv, x, y) = match alg {
            IdentityAlgorithm::EdDSA if raw.len() == 32 => ("OKP", "Ed25519", b64(raw), None),
            IdentityAlgorithm::ES256 if raw.len() == 65 && raw[0] == 0x04 => {
                ("EC", "P-256", b64(&raw[1..33]), Some(b64(&raw[33..])))
            }
            IdentityAlgorithm::HS256 => return Err(JwkError::NotAsymmetric),
            _ => return Err(JwkError::BadLength { alg, len: raw.len() }),
        };
        let mut jwk = Self {
            kty: kty.into(),
            crv: crv.into(),
            x,
            y,
            kid: String::new(),
            alg: alg.as_str().into(),
            use_: "sig".into(),
        };
        jwk.kid = jwk.thumbprint();
        Ok(jwk)
    }

    /// The RFC 7638 §3 input: the key's required members only, in lexicographic order, no
    /// whitespace. For OKP that is `crv`, `kty`, `x` (RFC 8037 §2); for EC `crv`, `kty`, `x`,
    /// `y` (RFC 7638 §3.2). The values are base64url and curve names, which need no escaping.
    pub fn thumbprint_input(&self) -> String {
        match &self.y {
            None => format!(r#"{{"crv":"{}","kty":"{}","x":"{}"}}"#, self.crv, self.kty, self.x),
            Some(y) => format!(r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#, self.crv, self.kty, self.x, y),
        }
    }

    /// The RFC 7638 JWK thumbprint: base64url of the SHA-256 of [`Self::thumbprint_input`]. It
    /// names the key by its content, so a `kid` can never point at two different keys.
    pub fn thumbprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.thumbprint_input().as_bytes()))
    }
}

/// A key in the published set, with when it leaves it (retired keys only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    pub jwk: PublicJwk,
    /// Past this time no assertion it signed is valid any more, so it is no longer published.
    pub until: Option<UnixTime>,
}

/// The JWK Set document (RFC 7517 §5) of the keys published at `now`.
pub fn document(keys: &[PublishedKey], now: UnixTime) -> String {
    #[derive(Serialize)]
    struct Set<'a> {
        keys: Vec<&'a PublicJwk>,
    }
    let keys = keys.iter().filter(|k| k.until.is_none_or(|until| now < until)).map(|k| &k.jwk).collect();
    serde_json::to_string_pretty(&Set { keys }).unwrap_or_else(|_| r#"{"keys":[]}"#.into())
}

/// A public key as PEM (`BEGIN PUBLIC KEY`, RFC 7468 §13): the DER SubjectPublicKeyInfo, base64
/// in lines of 64 characters.
pub fn spki_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}
