//! The WebAuthn rules, with a software authenticator standing in for a key.

use std::sync::Arc;

use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{Url, Uuid, Webauthn};

use super::super::security_key::*;

use super::*;
use crate::base::secret::Secret;
use crate::config::ProviderId;
use crate::domain::factors::accounts::Accounts;
use crate::domain::factors::proof::AuthMethod;
use crate::domain::factors::sealing::Sealer;
use crate::domain::users::{User, Username};
use crate::store::memory::MemoryStore;

const ORIGIN: &str = "https://app.example.com";
const NOW: UnixTime = 1_800_000_000;

fn user(name: &str) -> User {
    User {
        name: Username::parse(name).unwrap(),
        display_name: name.into(),
        email: format!("{name}@example.com"),
        groups: vec![],
        password_hash: String::new(),
        credential_stamp: [0; 16],
        account_key: format!("key-{name}"),
    }
}

async fn factors() -> SecondFactors {
    let accounts = Accounts::open(Arc::new(MemoryStore::default())).await.unwrap();
    SecondFactors::new(Arc::new(accounts), Sealer::new(&Secret::new(b"k".repeat(64))))
}

fn rp() -> Webauthn {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\npublic_url = \"{ORIGIN}\"\ndata_dir = \"/tmp/x\"\n"
    );
    let config = crate::config::parse(&text, std::path::Path::new("/tmp/proxy.toml")).unwrap();
    relying_party(&config.public_url, "Test").unwrap()
}

/// Rules for a new key: not discoverable, no attestation.
fn plain() -> NewKeyRules {
    NewKeyRules { discoverable: false, attested: None }
}

/// A key that does user verification (the soft passkey only claims it: `falsify_uv`).
fn key() -> SoftPasskey {
    SoftPasskey::new(true)
}

async fn register(factors: &SecondFactors, rp: &Webauthn, who: &User, key: &mut SoftPasskey) {
    let (options, ceremony) = factors.start_key_registration(rp, who, plain(), NOW).unwrap();
    // Kept as bytes between the two requests, as replicas sharing a store keep it.
    let ceremony: RegistrationCeremony = serde_json::from_slice(&serde_json::to_vec(&ceremony).unwrap()).unwrap();
    let response = key.do_registration(Url::parse(ORIGIN).unwrap(), options).unwrap();
    let json = serde_json::to_string(&response).unwrap();
    let enrolled = factors
        .finish_key_registration(
            rp,
            who,
            ceremony,
            &json,
            (" Blue key ", &ProviderId::webauthn(), &keys_provider()),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(enrolled.proof.method(), AuthMethod::Hwk);
    assert!(enrolled.new_codes.is_some(), "a first factor comes with recovery codes");
}

fn sign(key: &mut SoftPasskey, options: webauthn_rs::prelude::RequestChallengeResponse) -> String {
    serde_json::to_string(&key.do_authentication(Url::parse(ORIGIN).unwrap(), options).unwrap()).unwrap()
}

#[tokio::test]
async fn a_registered_key_proves_the_factor_and_its_counter_only_goes_up() {
    let (factors, rp, alice, mut key) = (factors().await, rp(), user("alice"), key());
    register(&factors, &rp, &alice, &mut key).await;
    let stored = factors.accounts.get(&alice);
    assert_eq!(stored.security_keys.len(), 1);
    assert_eq!(stored.security_keys[0].name, "Blue key");
    assert!(stored.has_second_factor());

    let (options, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let ceremony: SignInCeremony = serde_json::from_slice(&serde_json::to_vec(&ceremony).unwrap()).unwrap();
    let verified =
        factors.verify_key(&rp, &alice, ceremony, &sign(&mut key, options), &keys_provider(), NOW + 10).await.unwrap();
    assert_eq!(verified.proof.method(), AuthMethod::Hwk);
    assert!(verified.proof.is_for(&alice));
    let key_record = factors.accounts.get(&alice).security_keys[0].clone();
    assert_eq!(key_record.last_used_at, Some(NOW + 10));
    assert!(key_record.sign_count > 0);

    // Two ceremonies, signed in one order and presented in the other: the second one presented
    // carries a lower counter than the stored one, which is what a cloned key looks like.
    let (first_options, first) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let (second_options, second) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let early = sign(&mut key, first_options);
    let late = sign(&mut key, second_options);
    factors.verify_key(&rp, &alice, second, &late, &keys_provider(), NOW + 20).await.unwrap();
    let refused = factors.verify_key(&rp, &alice, first, &early, &keys_provider(), NOW + 20).await.unwrap_err();
    assert!(matches!(refused, KeyError::PossibleClone { ref name } if name == "Blue key"), "{refused:?}");
}

#[tokio::test]
async fn ceremonies_expire_belong_to_one_account_and_check_the_origin() {
    let (factors, rp, alice, mut key) = (factors().await, rp(), user("alice"), key());
    register(&factors, &rp, &alice, &mut key).await;

    let (options, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let late = factors
        .verify_key(&rp, &alice, ceremony, &sign(&mut key, options), &keys_provider(), NOW + CEREMONY_LIFETIME)
        .await;
    assert!(matches!(late, Err(KeyError::Expired)), "{late:?}");

    let (options, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let other =
        factors.verify_key(&rp, &user("mallory"), ceremony, &sign(&mut key, options), &keys_provider(), NOW).await;
    assert!(matches!(other, Err(KeyError::OtherAccount)), "{other:?}");

    let (options, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let phished = key.do_authentication(Url::parse("https://evil.app.example.com").unwrap(), options).unwrap();
    let phished = serde_json::to_string(&phished).unwrap();
    let refused = factors.verify_key(&rp, &alice, ceremony, &phished, &keys_provider(), NOW).await;
    assert!(matches!(refused, Err(KeyError::Refused(_))), "{refused:?}");

    let (_, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let garbage = factors.verify_key(&rp, &alice, ceremony, "{\"id\": 1}", &keys_provider(), NOW).await;
    assert!(matches!(garbage, Err(KeyError::Malformed)), "{garbage:?}");

    let (options, ceremony) = factors.start_key_registration(&rp, &alice, plain(), NOW).unwrap();
    let mut other_key = super::tests::key();
    let response = other_key.do_registration(Url::parse(ORIGIN).unwrap(), options).unwrap();
    let json = serde_json::to_string(&response).unwrap();
    let late = factors
        .finish_key_registration(
            &rp,
            &alice,
            ceremony,
            &json,
            ("x", &ProviderId::webauthn(), &keys_provider()),
            NOW + CEREMONY_LIFETIME,
        )
        .await;
    assert!(matches!(late, Err(KeyError::Expired)), "{late:?}");
}

#[tokio::test]
async fn the_last_factor_stays_where_it_is_required() {
    let (factors, rp, alice, mut key) = (factors().await, rp(), user("alice"), key());
    register(&factors, &rp, &alice, &mut key).await;
    let id = factors.accounts.get(&alice).security_keys[0].id.clone();
    assert!(matches!(factors.remove_key(&alice, &id, true, &keys_provider()).await, Err(RemoveError::LastRequired)));
    assert!(matches!(
        factors.remove_key(&alice, "nope", false, &keys_provider()).await,
        Err(RemoveError::NothingToRemove)
    ));
    let (name, others) = factors.remove_key(&alice, &id, false, &keys_provider()).await.unwrap();
    assert_eq!((name.as_str(), others), ("Blue key", false));
    let after = factors.accounts.get(&alice);
    assert!(!after.has_second_factor() && after.recovery_codes.is_empty(), "its backups went with it");
    assert!(matches!(factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW), Err(KeyError::NoKeys)));
}

#[test]
fn counters_and_names() {
    assert!(counter_acceptable(0, 0), "an authenticator without a counter");
    assert!(counter_acceptable(0, 1));
    assert!(counter_acceptable(5, 6));
    assert!(!counter_acceptable(5, 5), "the same counter twice");
    assert!(!counter_acceptable(5, 4));
    assert!(!counter_acceptable(5, 0), "a counter that stopped counting");
    assert_eq!(clean_name("  Phone ").unwrap(), "Phone");
    assert!(clean_name("   ").is_err());
    assert!(clean_name("a\u{7}b").is_err());
    for spoof in ["Blue\u{202E}yek", "Blue\u{200B}key", "\u{2066}Blue\u{2069}", "Blue\u{FEFF}"] {
        assert!(clean_name(spoof).is_err(), "{spoof:?}");
    }
    assert_eq!(clean_name("Clé bleue 🔑").unwrap(), "Clé bleue 🔑", "other text is a name");
    assert!(clean_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
    let a = user("alice");
    assert_eq!(user_handle(&a), user_handle(&a), "stable");
    assert_ne!(user_handle(&a), user_handle(&user("bob")));
}

#[tokio::test]
async fn a_key_whose_provider_is_disabled_is_neither_asked_for_nor_accepted() {
    let (factors, rp, alice, mut key) = (factors().await, rp(), user("alice"), key());
    register(&factors, &rp, &alice, &mut key).await;
    // Asked for while the provider counts...
    let (options, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let answer = sign(&mut key, options);
    // ...then the provider is switched off: the answer proves nothing, and no new one is asked.
    let mut off = crate::config::Providers::from_switches(true, false);
    off.add_from_switch(crate::config::ProviderKind::Webauthn, true);
    let off = crate::config::Providers::new(
        off.iter()
            .cloned()
            .map(|mut p| {
                if p.kind == crate::config::ProviderKind::Webauthn {
                    p.status = crate::config::ProviderStatus::Disabled;
                }
                p
            })
            .collect(),
    );
    let refused = factors.verify_key(&rp, &alice, ceremony, &answer, &off, NOW + 10).await;
    assert!(matches!(refused, Err(KeyError::UnknownKey)), "{refused:?}");
    assert!(matches!(factors.start_key_sign_in(&rp, &alice, &off, NOW), Err(KeyError::NoKeys)));
}

/// The providers of a configuration where security keys are on (the default).
fn keys_provider() -> crate::config::Providers {
    let mut providers = crate::config::Providers::from_switches(true, false);
    providers.add_from_switch(crate::config::ProviderKind::Webauthn, true);
    providers
}

#[tokio::test]
async fn an_account_keeps_several_keys_each_named_and_each_works() {
    let (factors, rp, alice) = (factors().await, rp(), user("alice"));
    let (mut blue, mut phone) = (key(), key());
    register(&factors, &rp, &alice, &mut blue).await;
    let (options, ceremony) = factors.start_key_registration(&rp, &alice, plain(), NOW).unwrap();
    let excluded = options.public_key.exclude_credentials.clone().unwrap_or_default();
    assert_eq!(excluded.len(), 1, "the browser is told which key is registered already");
    let json = serde_json::to_string(&phone.do_registration(Url::parse(ORIGIN).unwrap(), options).unwrap()).unwrap();
    let second = factors
        .finish_key_registration(
            &rp,
            &alice,
            ceremony,
            &json,
            ("Phone", &ProviderId::webauthn(), &keys_provider()),
            NOW + 1,
        )
        .await
        .unwrap();
    assert!(second.new_codes.is_none(), "the codes the first key came with stay");
    let names: Vec<String> = factors.accounts.get(&alice).security_keys.iter().map(|k| k.name.clone()).collect();
    assert_eq!(names, ["Blue key", "Phone"]);

    let ids: Vec<_> = factors.accounts.get(&alice).security_keys.iter().map(|k| k.passkey.cred_id().clone()).collect();
    for (key, id) in [(&mut blue, &ids[0]), (&mut phone, &ids[1])] {
        let (mut options, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
        assert_eq!(options.public_key.allow_credentials.len(), 2, "either key may answer");
        // A real key finds its own credential in the list; the soft one only tries the first.
        options.public_key.allow_credentials.retain(|c| c.id == *id);
        factors.verify_key(&rp, &alice, ceremony, &sign(key, options), &keys_provider(), NOW + 2).await.unwrap();
    }
    // Removing one leaves the other working, and 2FA on.
    let id = factors.accounts.get(&alice).security_keys[0].id.clone();
    let (name, others) = factors.remove_key(&alice, &id, true, &keys_provider()).await.unwrap();
    assert_eq!((name.as_str(), others), ("Blue key", true));
    let (options, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    assert_eq!(options.public_key.allow_credentials.len(), 1, "only the remaining key is asked for");
    factors.verify_key(&rp, &alice, ceremony, &sign(&mut phone, options), &keys_provider(), NOW + 3).await.unwrap();

    // A key removed while a ceremony that lists it is open does not sign in through it.
    let (options, ceremony) = factors.start_key_sign_in(&rp, &alice, &keys_provider(), NOW).unwrap();
    let id = factors.accounts.get(&alice).security_keys[0].id.clone();
    factors.remove_key(&alice, &id, false, &keys_provider()).await.unwrap();
    let late = factors.verify_key(&rp, &alice, ceremony, &sign(&mut phone, options), &keys_provider(), NOW + 4).await;
    assert!(matches!(late, Err(KeyError::UnknownKey)), "{late:?}");
}

#[tokio::test]
async fn a_stranded_account_that_sets_up_a_key_gets_new_recovery_codes() {
    let (factors, rp, alice, mut old_key) = (factors().await, rp(), user("alice"), key());
    register(&factors, &rp, &alice, &mut old_key).await;
    let old_codes = factors.accounts.get(&alice).recovery_codes.clone();
    assert!(!old_codes.is_empty());
    // The operator switches the key provider off and opens another: alice is stranded, and her
    // codes were the old key's backup.
    let off = crate::config::Providers::new(
        keys_provider()
            .iter()
            .cloned()
            .map(|mut p| {
                if p.kind == crate::config::ProviderKind::Webauthn {
                    p.status = crate::config::ProviderStatus::Disabled;
                }
                p
            })
            .chain([crate::config::Provider {
                id: ProviderId::parse("keys-2027").unwrap(),
                kind: crate::config::ProviderKind::Webauthn,
                name: "Security key".into(),
                status: crate::config::ProviderStatus::Active,
                from_switch: false,
            }])
            .collect(),
    );
    let (options, ceremony) = factors.start_key_registration(&rp, &alice, plain(), NOW).unwrap();
    let json = serde_json::to_string(&key().do_registration(Url::parse(ORIGIN).unwrap(), options).unwrap()).unwrap();
    let new_provider = ProviderId::parse("keys-2027").unwrap();
    let enrolled = factors
        .finish_key_registration(&rp, &alice, ceremony, &json, ("New key", &new_provider, &off), NOW + 1)
        .await
        .unwrap();
    assert!(enrolled.new_codes.is_some(), "the new factor comes with new codes, shown once");
    assert_ne!(factors.accounts.get(&alice).recovery_codes, old_codes, "the old set is void");
}

#[tokio::test]
async fn each_credential_is_known_to_belong_to_one_account_until_it_is_removed() {
    let (factors, rp) = (factors().await, rp());
    let (alice, bob) = (user("alice"), user("bob"));
    let (mut blue, mut red) = (key(), key());
    register(&factors, &rp, &alice, &mut blue).await;
    register(&factors, &rp, &bob, &mut red).await;
    let ids: Vec<(String, Vec<u8>)> = [&alice, &bob]
        .iter()
        .map(|who| {
            let record = factors.accounts.get(who);
            let key = &record.security_keys[0];
            let id: &[u8] = key.passkey.cred_id().as_ref();
            (key.id.clone(), id.to_vec())
        })
        .collect();
    assert_eq!(factors.accounts.owner_of_key(&ids[0].1).as_deref(), Some("key-alice"));
    assert_eq!(factors.accounts.owner_of_key(&ids[1].1).as_deref(), Some("key-bob"));
    assert_eq!(factors.accounts.owner_of_key(b"no such credential"), None);
    factors.remove_key(&alice, &ids[0].0, false, &keys_provider()).await.unwrap();
    assert_eq!(factors.accounts.owner_of_key(&ids[0].1), None, "removed with its key");
    factors.accounts.forget("key-bob").await.unwrap();
    assert_eq!(factors.accounts.owner_of_key(&ids[1].1), None, "forgotten with its account");
}

/// `attestation = "direct"` with these roots and models.
fn attested(roots: &[&crypto_glue::x509::Certificate], models: &[Uuid]) -> NewKeyRules {
    use crypto_glue::traits::EncodeDer;
    let settings = crate::config::WebauthnSettings {
        attestation: crate::config::Attestation::Direct,
        allowed_aaguids: models.iter().map(Uuid::to_string).collect(),
        attestation_cas: roots.iter().map(|ca| ca.to_der().unwrap()).collect(),
        ..Default::default()
    };
    NewKeyRules::from_settings(&settings).unwrap()
}

/// Registers for `who` under `rules`, the authenticator answering with `answer`.
async fn register_under(
    factors: &SecondFactors,
    who: &User,
    rules: NewKeyRules,
    answer: &mut impl WebauthnAuthenticator,
) -> Result<(), KeyError> {
    let rp = rp();
    let (options, ceremony) = factors.start_key_registration(&rp, who, rules, NOW).unwrap();
    let response = answer.do_registration(Url::parse(ORIGIN).unwrap(), options).unwrap();
    let json = serde_json::to_string(&response).unwrap();
    let named = ("Issued key", &ProviderId::webauthn(), &keys_provider());
    factors.finish_key_registration(&rp, who, ceremony, &json, named, NOW).await.map(|_| ())
}

#[tokio::test]
async fn with_attestation_only_keys_of_an_allowed_maker_and_model_register() {
    use webauthn_authenticator_rs::softtoken::{AAGUID, SoftToken};
    let (factors, alice) = (factors().await, user("alice"));
    let (mut issued, root) = SoftToken::new(true).unwrap();
    let (_, other_root) = SoftToken::new(true).unwrap();
    let other_model = Uuid::parse_str("cb69481e-8ff7-4039-93ec-0a2729a154a8").unwrap();

    // Made by another maker (its attestation chains to another root): refused.
    let refused = register_under(&factors, &alice, attested(&[&other_root], &[AAGUID]), &mut issued).await;
    assert!(matches!(refused, Err(KeyError::Refused(_))), "{refused:?}");
    // The right maker, a model not listed: refused.
    let refused = register_under(&factors, &alice, attested(&[&root], &[other_model]), &mut issued).await;
    assert!(matches!(refused, Err(KeyError::Refused(_))), "{refused:?}");
    // No attestation to show (self attestation, like most synced passkeys): refused.
    let refused = register_under(&factors, &alice, attested(&[&root], &[AAGUID]), &mut key()).await;
    assert!(matches!(refused, Err(KeyError::Refused(_))), "{refused:?}");
    assert!(factors.accounts.get(&alice).security_keys.is_empty(), "nothing refused was kept");

    // The issued maker and model: registered, its model recorded as proven.
    let rules = attested(&[&other_root, &root], &[other_model, AAGUID]);
    register_under(&factors, &alice, rules, &mut issued).await.unwrap();
    let record = factors.accounts.get(&alice);
    assert_eq!(record.security_keys[0].attested_model, Some(AAGUID.to_string()));
}
