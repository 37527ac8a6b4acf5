use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use super::jwks::{self, PublicJwk};
use super::keys::{CLOCK_SKEW_MARGIN, KeyError, KeyPairRecord, KeySet, KeyState};
use super::*;
use crate::base::clock::{Clock, FixedClock, SystemClock};
use crate::domain::password::PasswordProof;
use crate::domain::session::{Device, Sessions};
use crate::domain::users::UserDirectory;
use crate::store::memory::MemoryStore;

const NOW: UnixTime = 1_764_460_800; // 2025-11-30

/// Fixed at the real time, for assertions checked by `verify`, which reads `exp` against it.
fn clock_now() -> FixedClock {
    FixedClock::at(SystemClock.now())
}

fn settings(dir: &Path, algorithm: &str) -> IdentitySettings {
    let text = format!(
        "upstream = \"http://127.0.0.1:8080\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"{}\"\n[identity]\nalgorithm = \"{algorithm}\"\n",
        dir.display()
    );
    crate::config::parse(&text, &dir.join("proxy.toml")).unwrap().identity
}

/// A full session for alice, made as sign-in makes one.
async fn full_session(dir: &Path, clock: &FixedClock) -> FullSession {
    let path = dir.join("users.toml");
    let hash = crate::domain::password::hash(b"pw").unwrap();
    let new = crate::domain::users::edit::NewUser {
        name: "alice",
        display_name: None,
        email: "a@example.com",
        groups: &[],
        password_hash: &hash,
    };
    crate::domain::users::edit::add(&path, new).unwrap();
    let users = UserDirectory::load(&path).unwrap();
    let session_settings = crate::config::SessionSettings {
        cookie_name: "portcullis".into(),
        idle_timeout: std::time::Duration::from_secs(1800),
        lifetime: std::time::Duration::from_secs(3600),
        partial_timeout: std::time::Duration::from_secs(600),
    };
    let sessions =
        Sessions::open(Arc::new(MemoryStore::default()), session_settings, Arc::new(clock.clone())).await.unwrap();
    let proof = PasswordProof::for_tests(users.get("alice").unwrap());
    let (_, partial) = sessions.begin(proof, Device::default()).await.unwrap();
    let enough = match crate::domain::policy::after_password(crate::domain::policy::Requirement::Optional, false) {
        crate::domain::policy::AfterPassword::Done(enough) => enough,
        other => panic!("{other:?}"),
    };
    sessions.promote_with_password(partial, enough).await.unwrap().1
}

fn assertion(identity: &UpstreamIdentity, settings: &IdentitySettings) -> String {
    let mut headers = HeaderMap::new();
    identity.apply(&mut headers, &settings.headers);
    headers[&settings.headers.assertion].to_str().unwrap().to_string()
}

fn public_keys(jwks_text: &str) -> VerifyingKeys {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<PublicJwk>,
    }
    VerifyingKeys::Public(serde_json::from_str::<Set>(jwks_text).unwrap().keys)
}

#[test]
fn the_thumbprint_of_the_rfc_8037_example_key() {
    // RFC 8037 Appendix A.2 (the public key) and A.3 (its RFC 7638 thumbprint).
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
    let jwk = PublicJwk::from_raw(IdentityAlgorithm::EdDSA, &x).unwrap();
    assert_eq!(
        jwk.thumbprint_input(),
        r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#
    );
    assert_eq!(jwk.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
}

#[test]
fn ec_thumbprints_use_the_canonical_members_in_order_and_agree_with_jsonwebtoken() {
    let key = KeyPairRecord::generate(IdentityAlgorithm::ES256, NOW, KeyState::Current).unwrap();
    let input = key.public.thumbprint_input();
    let members: Vec<&str> = input.trim_matches(['{', '}']).split(',').map(|m| m.split(':').next().unwrap()).collect();
    assert_eq!(members, [r#""crv""#, r#""kty""#, r#""x""#, r#""y""#]);
    assert!(input.starts_with(r#"{"crv":"P-256","kty":"EC","x":""#), "{input}");
    // An independent implementation of RFC 7638 computes the same kid.
    let theirs: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::to_value(&key.public).unwrap()).unwrap();
    assert_eq!(theirs.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap(), key.kid);
    let ed = KeyPairRecord::generate(IdentityAlgorithm::EdDSA, NOW, KeyState::Current).unwrap();
    let theirs: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::to_value(&ed.public).unwrap()).unwrap();
    assert_eq!(theirs.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap(), ed.kid);
}

#[test]
fn generated_keys_have_the_published_shape_and_a_pem() {
    for (alg, kty, crv, has_y) in
        [(IdentityAlgorithm::EdDSA, "OKP", "Ed25519", false), (IdentityAlgorithm::ES256, "EC", "P-256", true)]
    {
        let key = KeyPairRecord::generate(alg, NOW, KeyState::Current).unwrap();
        let jwk = serde_json::to_value(&key.public).unwrap();
        assert_eq!(jwk["kty"], kty);
        assert_eq!(jwk["crv"], crv);
        assert_eq!(jwk["alg"], alg.as_str());
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid.as_str());
        assert_eq!(jwk.get("y").is_some(), has_y);
        assert!(jwk.get("d").is_none(), "no private part is ever published");
        let pem = jwks::spki_pem(&key.spki_der);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n") && pem.ends_with("-----END PUBLIC KEY-----\n"));
        // The PEM is the DER SubjectPublicKeyInfo (44 bytes for Ed25519, 91 for P-256, RFC 8410
        // §4 and RFC 5480), which ends with the very public key the JWK publishes.
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        assert_eq!(der, key.spki_der);
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&key.public.x).unwrap();
        match alg {
            IdentityAlgorithm::EdDSA => assert!(der.len() == 44 && der.ends_with(&x)),
            _ => {
                let y =
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key.public.y.as_ref().unwrap()).unwrap();
                assert!(der.len() == 91 && der.ends_with(&[&[4u8][..], &x, &y].concat()));
            }
        }
        assert!(!format!("{key:?}").contains(&base64::engine::general_purpose::STANDARD.encode(key.pkcs8())));
    }
    assert!(KeyPairRecord::generate(IdentityAlgorithm::HS256, NOW, KeyState::Current).is_err());
}

#[tokio::test]
async fn assertions_verify_with_the_jwks_for_eddsa_and_es256_and_not_with_other_keys() {
    for alg in ["EdDSA", "ES256"] {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock_now();
        let settings = settings(dir.path(), alg);
        let signer = AssertionSigner::open(&settings, Arc::new(clock.clone())).unwrap();
        let session = full_session(dir.path(), &clock).await;
        let token = assertion(&session.upstream_identity(&signer).unwrap(), &settings);

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jwt_algorithm(settings.algorithm));
        assert_eq!(header.kid, signer.current_kid());
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&settings.audience]);
        let keys = public_keys(&signer.jwks().unwrap());
        let VerifyingKeys::Public(set) = &keys else { unreachable!() };
        assert_eq!(set.len(), 2, "the current and the next key");
        let jwk = set.iter().find(|k| Some(&k.kid) == header.kid.as_ref()).unwrap();
        let key = DecodingKey::from_jwk(&serde_json::from_value(serde_json::to_value(jwk).unwrap()).unwrap()).unwrap();
        let claims = jsonwebtoken::decode::<AssertionClaims>(&token, &key, &validation).unwrap().claims;
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.sid, session.key().handle());
        assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&claims.jti).unwrap().len(), 16);

        // A key set the proxy does not publish verifies nothing, even under a published kid.
        let stranger = KeySet::generate(settings.algorithm, NOW).unwrap();
        let mut forged_set = vec![stranger.current().public.clone()];
        forged_set[0].kid = header.kid.clone().unwrap();
        let forged = verify(&token, &VerifyingKeys::Public(forged_set), &settings.issuer, &settings.audience);
        assert!(forged.is_err(), "{alg}: a token must not verify with a key not in the set");
        let foreign = verify(
            &token,
            &VerifyingKeys::Public(vec![stranger.current().public.clone()]),
            &settings.issuer,
            &settings.audience,
        );
        assert!(matches!(foreign, Err(VerifyError::UnknownKid(_))));
    }
}

#[tokio::test]
async fn rotation_keeps_old_assertions_verifiable_and_re_signs_sessions_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_now();
    let settings = settings(dir.path(), "EdDSA");
    let signer = AssertionSigner::open(&settings, Arc::new(clock.clone())).unwrap();
    let session = full_session(dir.path(), &clock).await;
    let before_jwks = signer.jwks().unwrap();
    let (first_kid, next_kid) = {
        let set = KeySet::load(&settings.key_file).unwrap().unwrap();
        (set.current().kid.clone(), set.next().kid.clone())
    };
    let old = assertion(&session.upstream_identity(&signer).unwrap(), &settings);
    let cached = assertion(&session.upstream_identity(&signer).unwrap(), &settings);
    assert_eq!(old, cached, "reused while more than half its lifetime remains");

    let rotation = signer.rotate().unwrap();
    assert_eq!((rotation.retired.as_str(), rotation.current.as_str()), (first_kid.as_str(), next_kid.as_str()));
    let new = assertion(&session.upstream_identity(&signer).unwrap(), &settings);
    assert_ne!(old, new, "a rotation re-signs cached assertions with the new key");
    assert_eq!(jsonwebtoken::decode_header(&new).unwrap().kid.as_deref(), Some(next_kid.as_str()));
    // A verifier holding the JWKS from before the rotation verifies both: it already had `next`.
    let stale = public_keys(&before_jwks);
    for token in [&old, &new] {
        verify(token, &stale, &settings.issuer, &settings.audience).unwrap();
        verify(token, &signer.verifying_keys(), &settings.issuer, &settings.audience).unwrap();
    }
    // The file says the same as memory.
    let on_disk = KeySet::load(&settings.key_file).unwrap().unwrap();
    assert_eq!(on_disk.current().kid, next_kid);
    assert_eq!(on_disk.next().kid, rotation.next);
    assert_eq!(on_disk.keys().len(), 3);
}

#[test]
fn a_retired_key_is_published_until_its_assertions_expired_then_dropped() {
    let keep_for = 120 + CLOCK_SKEW_MARGIN;
    let mut set = KeySet::generate(IdentityAlgorithm::EdDSA, NOW).unwrap();
    let (a, b) = (set.current().kid.clone(), set.next().kid.clone());
    let rotated_at = NOW + 1000;
    let rotation = set.rotate(IdentityAlgorithm::EdDSA, rotated_at, keep_for).unwrap();
    let c = rotation.next.clone();
    assert_eq!(
        (rotation.retired, rotation.current, rotation.retired_until),
        (a.clone(), b.clone(), rotated_at + keep_for)
    );
    let states: Vec<(String, KeyState)> = set.keys().iter().map(|k| (k.kid.clone(), k.state)).collect();
    assert_eq!(states, [(a.clone(), KeyState::Retired), (b.clone(), KeyState::Current), (c.clone(), KeyState::Next)]);

    let kids_at = |set: &KeySet, now| -> Vec<String> {
        let doc: serde_json::Value = serde_json::from_str(&jwks::document(&set.published(keep_for), now)).unwrap();
        doc["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
    };
    // The last assertion `a` signed was made at `rotated_at` and expires 120 s later.
    assert_eq!(kids_at(&set, rotated_at + keep_for - 1), [a.clone(), b.clone(), c.clone()]);
    assert_eq!(kids_at(&set, rotated_at + keep_for), [b.clone(), c.clone()]);
    assert!(set.prune(rotated_at + keep_for - 1, keep_for).is_empty());
    assert_eq!(set.prune(rotated_at + keep_for, keep_for), [a]);
    assert_eq!(set.keys().len(), 2);

    // A second rotation drops what has expired by then.
    let mut again = KeySet::generate(IdentityAlgorithm::EdDSA, NOW).unwrap();
    let first = again.rotate(IdentityAlgorithm::ES256, NOW, keep_for).unwrap();
    assert_eq!(again.next().alg, IdentityAlgorithm::ES256, "a new algorithm arrives as the next key");
    let second = again.rotate(IdentityAlgorithm::ES256, NOW + keep_for, keep_for).unwrap();
    assert_eq!(second.dropped, [first.retired]);
    assert_eq!(again.current().alg, IdentityAlgorithm::ES256);
}

#[test]
fn the_key_file_is_private_and_reads_back_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity-keys.json");
    let made = KeySet::open(&path, IdentityAlgorithm::ES256, NOW, 180).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let read = KeySet::open(&path, IdentityAlgorithm::EdDSA, NOW, 180).unwrap();
    assert_eq!(read.current().kid, made.current().kid);
    assert_eq!(read.current().pkcs8(), made.current().pkcs8());
    assert_eq!(read.current().alg, IdentityAlgorithm::ES256, "existing keys are kept whatever the setting");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"state\": \"current\"") && text.contains("\"state\": \"next\""), "{text}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(KeySet::load(&path), Err(KeyError::TooOpen { .. })));
}

#[test]
fn a_corrupt_key_file_is_an_error_and_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity-keys.json");
    let set = KeySet::open(&path, IdentityAlgorithm::EdDSA, NOW, 180).unwrap();
    let good = std::fs::read_to_string(&path).unwrap();
    let other = KeySet::generate(IdentityAlgorithm::EdDSA, NOW).unwrap();
    let cases = [
        ("truncated", good[..good.len() / 2].to_string(), "not a key set"),
        ("not base64", good.replacen("\"private_key\": \"", "\"private_key\": \"!!", 1), "not base64"),
        (
            "another key under this kid",
            good.replacen(&set.current().kid, &other.current().kid, 1),
            "not the thumbprint",
        ),
        ("two current keys", good.replace("\"next\"", "\"current\""), "exactly one"),
        ("an unknown algorithm", good.replacen("\"EdDSA\"", "\"RS256\"", 1), "not a key set"),
    ];
    for (what, text, says) in cases {
        crate::base::secret::write_private_file(&path, text.as_bytes()).unwrap();
        let error = AssertionSigner::open(&settings_at(dir.path(), &path), Arc::new(FixedClock::at(NOW)))
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        let message = error.to_string();
        assert!(message.contains(says) && message.contains("never replaced"), "{what}: {message}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{what}: the file was left as it was");
    }
}

fn settings_at(dir: &Path, key_file: &Path) -> IdentitySettings {
    IdentitySettings { key_file: key_file.to_path_buf(), ..settings(dir, "EdDSA") }
}

#[test]
fn hs256_has_no_public_key_and_cannot_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let signer = AssertionSigner::open(&settings(dir.path(), "HS256"), Arc::new(FixedClock::at(NOW))).unwrap();
    assert!(signer.jwks().is_none());
    assert!(matches!(signer.rotate(), Err(IdentityError::SharedSecret)));
    assert!(dir.path().join("identity.key").exists());
    assert!(!dir.path().join("identity-keys.json").exists());
}
