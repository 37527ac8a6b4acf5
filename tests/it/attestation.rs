//! `webauthn.attestation = "direct"` through the real binary: an operator who issues keys lists
//! their maker's attestation root and model, and only such keys can be added. The soft token
//! stands in for an issued key (it attests with a chain to its own root, as a YubiKey does to
//! Yubico's); the soft passkey, which has no attestation to show, for everything else.

use crypto_glue::traits::{EncodePem, LineEndingPem};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softtoken::{AAGUID, SoftToken};
use webauthn_rs::prelude::{CreationChallengeResponse, Url};

use crate::harness::{ALICE, Browser, form_field};
use crate::security_keys::{answer, browser, key, keyed_proxy, options, page, password, post, submit};
use crate::upstream::Upstream;

/// Adds a key from the setup page; returns the status of the form's answer and its page.
async fn add(owner: &Browser, base: &str, key: &mut impl WebauthnAuthenticator) -> (u16, String) {
    let (status, _, html) = page(owner, &format!("{base}/.portcullis/security-keys/new")).await;
    assert_eq!(status, 200, "{html}");
    let raw: serde_json::Value = serde_json::from_str(&options(&html)).unwrap();
    assert_eq!(raw["publicKey"]["attestation"], "direct", "the key is asked to show its make");
    let creation: CreationChallengeResponse = serde_json::from_value(raw).unwrap();
    let credential = serde_json::to_string(&key.do_registration(Url::parse(base).unwrap(), creation).unwrap()).unwrap();
    let (csrf, rd) = (form_field(&html, "csrf").unwrap(), form_field(&html, "rd").unwrap());
    let form = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("name", "Issued key"), ("credential", &credential)];
    let response = post(owner, base, "/.portcullis/security-keys/new", &form).await;
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_keys_of_the_listed_maker_and_model_can_be_added_and_they_sign_in() {
    let upstream = Upstream::start().await;
    let (mut issued, root) = SoftToken::new(true).unwrap();
    let roots = tempfile::tempdir().unwrap();
    let root_file = roots.path().join("issuer-root.pem");
    std::fs::write(&root_file, root.to_pem(LineEndingPem::LF).unwrap()).unwrap();
    let settings = format!(
        "[webauthn]\nattestation = \"direct\"\nallowed_aaguids = [\"{AAGUID}\"]\nattestation_ca_files = [{:?}]\n",
        root_file.display().to_string()
    );
    let (proxy, base) = keyed_proxy(&upstream, &settings);
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);

    // A passkey with no attestation to show: refused, and nothing is added.
    let (status, html) = add(&owner, &base, &mut key()).await;
    assert_eq!(status, 401, "{html}");
    assert!(html.contains("could not be accepted"), "{html}");
    let (_, _, account) = page(&owner, &format!("{base}/.portcullis/account")).await;
    assert!(!account.contains("Issued key"), "nothing was added");

    // The issued key: added, and it signs in after the password.
    let (status, _) = add(&owner, &base, &mut issued).await;
    assert_eq!(status, 303);
    let laptop = browser(&proxy);
    let challenge = password(&laptop, &base).await;
    let signed_in = submit(&laptop, &base, &challenge, &answer(&mut issued, &base, &challenge), false).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(laptop.navigate(&format!("{base}/wiki")).await.status(), 200);
    let refused = proxy.stderr.wait_for(0, |line| line.contains("security key registration refused"));
    assert!(refused.is_some(), "the refusal is logged for the operator");
}
