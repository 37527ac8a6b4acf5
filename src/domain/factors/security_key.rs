//! Security keys and passkeys as a second factor: what is stored and the rules, apart from the
//! ceremonies' steps (`webauthn.rs`). WebAuthn Level 3 ceremonies, run by webauthn-rs, with the rules this proxy adds on top: ceremonies bound to one account and
//! short-lived, the signature counter checked against what is stored (not against the copy a
//! ceremony took when it started), and several named credentials per account.
//!
//! The relying party is the public URL: its host is the RP ID (§5.1.3 requires a valid domain,
//! so an IP address cannot be one) and its origin the only origin accepted (§7.1 step 9,
//! §7.2 step 13).

use serde::{Deserialize, Serialize};
use sha2::Digest;
use webauthn_rs::prelude::{
    AttestationCaList, AttestationCaListBuilder, AttestedPasskeyRegistration, Passkey, PasskeyAuthentication,
    PasskeyRegistration, Url, Uuid, Webauthn, WebauthnBuilder, WebauthnError,
};

use crate::base::clock::UnixTime;
use crate::config::{Attestation, ProviderId, PublicUrl, WebauthnSettings};
use crate::domain::users::User;
use crate::store::StoreError;

/// The relying party's settings and checks (webauthn-rs's `Webauthn`).
pub type RelyingParty = Webauthn;

/// How long a ceremony may take, from the page that starts it to the form that ends it. The
/// same value is the `timeout` the browser is given (WebAuthn L3 §5.4, §15.1 recommends
/// 5 minutes for user verification).
pub const CEREMONY_LIFETIME: i64 = 300;
/// More credentials than anyone needs; a bound on the record's size.
pub const MAX_PER_ACCOUNT: usize = 20;
/// The longest name a key may be given, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// One registered credential.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecurityKeyRecord {
    /// A short handle for pages and forms (not the credential id, which is not secret either, but
    /// long).
    pub id: String,
    /// What its owner called it ("Blue YubiKey").
    pub name: String,
    /// The public key and what webauthn-rs needs to check assertions.
    pub passkey: Passkey,
    pub created_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
    /// The BE flag at registration (§6.1, "backup eligibility"): a passkey that may be synced.
    pub backup_eligible: bool,
    /// The highest signature counter seen (§6.1.1): a later assertion must exceed it, unless
    /// both are zero (authenticators without a counter).
    pub sign_count: u32,
    /// The provider it was registered with (`[[mfa.provider]]`); keys from before providers read
    /// as `webauthn`.
    #[serde(default = "ProviderId::webauthn")]
    pub provider: ProviderId,
    /// The model it proved to be by attestation (`webauthn.attestation = "direct"`), as its
    /// AAGUID; none for a key registered without attestation (its model is only its own claim).
    #[serde(default)]
    pub attested_model: Option<String>,
}

impl PartialEq for SecurityKeyRecord {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.name == other.name
            && self.passkey.cred_id() == other.passkey.cred_id()
            && self.created_at == other.created_at
            && self.last_used_at == other.last_used_at
            && self.sign_count == other.sign_count
    }
}
impl Eq for SecurityKeyRecord {}

impl std::fmt::Debug for SecurityKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityKeyRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("last_used_at", &self.last_used_at)
            .field("backup_eligible", &self.backup_eligible)
            .finish_non_exhaustive()
    }
}

/// Why a security key was not registered or did not prove the factor.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The relying party cannot be set up (public_url has no domain name).
    #[error("security keys are not available here: {0}")]
    Unavailable(String),
    /// The ceremony ran out (or its page is older than [`CEREMONY_LIFETIME`]).
    #[error("the ceremony ran out")]
    Expired,
    /// The ceremony was started for another account.
    #[error("the ceremony belongs to another account")]
    OtherAccount,
    /// What the browser sent is not a WebAuthn response.
    #[error("the response is not a WebAuthn credential")]
    Malformed,
    /// The response failed verification: signature, challenge, origin, RP ID, user presence or
    /// verification (§7.1, §7.2).
    #[error("the response did not verify: {0}")]
    Refused(String),
    /// The signature counter did not go up (§6.1.1): the key may have been cloned.
    #[error("the signature counter of key {name:?} went backwards")]
    PossibleClone { name: String },
    /// A credential this account does not have (removed meanwhile).
    #[error("not one of the account's keys")]
    UnknownKey,
    #[error("the account has no security key")]
    NoKeys,
    #[error("the account has as many security keys as it may")]
    TooMany,
    #[error("a key needs a name of 1 to {MAX_NAME_CHARS} characters")]
    BadName,
    /// This key is registered already.
    #[error("that key is registered already")]
    AlreadyRegistered,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a new key must be, from `[webauthn]`.
pub struct NewKeyRules {
    /// Asked to keep the credential for passkey sign-in (`webauthn.passwordless`).
    pub discoverable: bool,
    /// The makes and models allowed (`webauthn.attestation = "direct"`): each root in
    /// `attestation_ca_files` with each AAGUID in `allowed_aaguids`.
    pub attested: Option<AttestationCaList>,
}

impl NewKeyRules {
    pub fn from_settings(settings: &WebauthnSettings) -> Result<Self, KeyError> {
        let attested = match settings.attestation {
            Attestation::None => None,
            Attestation::Direct => {
                let mut builder = AttestationCaListBuilder::new();
                for ca in &settings.attestation_cas {
                    for aaguid in &settings.allowed_aaguids {
                        let aaguid = Uuid::parse_str(aaguid).map_err(|e| KeyError::Unavailable(e.to_string()))?;
                        builder
                            .insert_device_der(ca, aaguid, format!("allowed model {aaguid}"), Default::default())
                            .map_err(|e| KeyError::Unavailable(format!("an attestation root: {e:?}")))?;
                    }
                }
                Some(builder.build())
            }
        };
        Ok(Self { discoverable: settings.passwordless, attested })
    }
}

/// The relying party's state for a registration: a plain one, or one that checks attestation.
#[derive(Serialize, Deserialize)]
pub(super) enum RegistrationState {
    Plain(PasskeyRegistration),
    Attested(AttestedPasskeyRegistration),
}

/// A registration in progress: kept server side (never in a cookie), for one account, used once.
#[derive(Serialize, Deserialize)]
pub struct RegistrationCeremony {
    pub(super) state: RegistrationState,
    pub(super) account: String,
    pub(super) started_at: UnixTime,
}

/// A sign-in (or step-up) assertion in progress: kept server side, for one account, used once.
#[derive(Serialize, Deserialize)]
pub struct SignInCeremony {
    pub(super) state: PasskeyAuthentication,
    pub(super) account: String,
    pub(super) started_at: UnixTime,
}

impl std::fmt::Debug for RegistrationCeremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationCeremony").field("started_at", &self.started_at).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SignInCeremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInCeremony").field("started_at", &self.started_at).finish_non_exhaustive()
    }
}

/// Whether a ceremony started at `started_at` for `account` may be finished by `user` at `now`.
pub(super) fn still_valid(account: &str, started_at: UnixTime, user: &User, now: UnixTime) -> Result<(), KeyError> {
    if account != user.account_key {
        return Err(KeyError::OtherAccount);
    }
    if now < started_at || now - started_at >= CEREMONY_LIFETIME {
        return Err(KeyError::Expired);
    }
    Ok(())
}

impl RegistrationCeremony {
    pub fn started_at(&self) -> UnixTime {
        self.started_at
    }
}

impl SignInCeremony {
    pub fn started_at(&self) -> UnixTime {
        self.started_at
    }
}

/// The relying party for `public_url`: RP ID its host, the only origin its origin.
pub fn relying_party(public_url: &PublicUrl, name: &str) -> Result<Webauthn, KeyError> {
    let unavailable = |e: WebauthnError| KeyError::Unavailable(e.to_string());
    let rp_id = public_url.domain().ok_or_else(|| KeyError::Unavailable("public_url has no domain name".into()))?;
    let origin = Url::parse(&public_url.origin()).map_err(|e| KeyError::Unavailable(e.to_string()))?;
    WebauthnBuilder::new(rp_id, &origin)
        .map_err(unavailable)?
        .rp_name(name)
        .timeout(std::time::Duration::from_secs(CEREMONY_LIFETIME as u64))
        .build()
        .map_err(unavailable)
}

/// The user handle (§5.4.3): random-looking, stable per account, and no personal data (§14.6.1).
pub(super) fn user_handle(user: &User) -> Uuid {
    let digest = sha2::Sha256::digest(format!("portcullis webauthn user handle\0{}", user.account_key));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// A name as given: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no control characters.
pub fn clean_name(name: &str) -> Result<String, KeyError> {
    let name = name.trim();
    let count = name.chars().count();
    if count == 0 || count > MAX_NAME_CHARS || name.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(KeyError::BadName);
    }
    Ok(name.to_string())
}

/// Characters that change how the text around them is shown without showing themselves:
/// direction overrides and isolates (the "Trojan Source" class, CVE-2021-42574), zero-width
/// characters and joiners, the soft hyphen and the byte-order mark. A key's name is shown on pages
/// and in the mail that warns its owner, so it must read as what it is.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// The BE flag and signature counter of a new credential. webauthn-rs keeps both inside the
/// passkey without accessors (short of its "danger-credential-internals" feature), but it
/// serialises them, and that form is what we store anyway.
pub(super) fn registered_flags(passkey: &Passkey) -> (bool, u32) {
    let value = serde_json::to_value(passkey).unwrap_or_default();
    let cred = &value["cred"];
    let backup_eligible = cred["backup_eligible"].as_bool().unwrap_or(false);
    let counter = cred["counter"].as_u64().and_then(|c| u32::try_from(c).ok()).unwrap_or(0);
    (backup_eligible, counter)
}

/// A short handle for a credential id: 16 hex digits of its SHA-256.
pub(super) fn handle_of(passkey: &Passkey) -> String {
    let id: &[u8] = passkey.cred_id().as_ref();
    crate::base::text::hex(&sha2::Sha256::digest(id)[..8])
}

/// Whether a signature counter of `seen` may follow `stored` (§6.1.1 and §7.2 step 21): it must
/// be greater, unless the authenticator keeps no counter (both zero).
pub fn counter_acceptable(stored: u32, seen: u32) -> bool {
    (stored == 0 && seen == 0) || seen > stored
}
