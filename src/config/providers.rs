//! Factor providers (`[[mfa.provider]]`): which kinds of second factor this installation offers,
//! under what name, and in what status. A user's factor points at a provider by its id, so an
//! operator can retire a kind (`deprecated`) or switch it off (`disabled`) without touching the
//! store (the Phabricator design: factor → provider → implementation).
//!
//! Without `[[mfa.provider]]`, the old switches `mfa.totp` and `mfa.email_otp` describe two
//! providers, `totp` and `email` ([`Providers::from_switches`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What implements a provider's factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Authenticator apps (RFC 6238).
    Totp,
    /// One-time codes by email.
    Email,
    /// Security keys and passkeys. Accepted in the configuration; its factors are wired in by
    /// the WebAuthn work, so until then nothing points at it and it cannot be set up.
    Webauthn,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [Self::Totp, Self::Email, Self::Webauthn];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::Email => "email",
            Self::Webauthn => "webauthn",
        }
    }

    /// The name users see when the operator gives none.
    pub fn default_name(self) -> &'static str {
        match self {
            Self::Totp => "Authenticator app",
            Self::Email => "Codes by email",
            Self::Webauthn => "Security key",
        }
    }

    /// Whether every user can set up a factor of this kind, whatever their browser. Keys need
    /// WebAuthn (and a device that speaks it), so neither a required policy nor a retiring
    /// kind's "set up this instead" may rest on them alone.
    pub fn can_enroll(self) -> bool {
        !matches!(self, Self::Webauthn)
    }
}

impl FromStr for ProviderKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a provider stands. What each means for users is decided in
/// `domain::factors::providers::standing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderStatus {
    /// Offered: factors count, new ones may be set up.
    Active,
    /// Being retired: factors still count, no new ones, users who have one are told.
    Deprecated,
    /// Switched off: its factors no longer count.
    Disabled,
}

impl ProviderStatus {
    pub const ALL: [ProviderStatus; 3] = [Self::Active, Self::Deprecated, Self::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deprecated => "deprecated",
            Self::Disabled => "disabled",
        }
    }
}

impl FromStr for ProviderStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

impl fmt::Display for ProviderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's stable id: what users' factors point at, so it must never be reused for
/// something else. 1 to 32 of `a-z`, `0-9`, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderId(String);

impl ProviderId {
    pub fn parse(text: &str) -> Option<Self> {
        let ok = (1..=32).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        ok.then(|| Self(text.to_string()))
    }

    /// The id factors of `kind` stored before providers existed point at (migrated on read).
    pub fn default_for(kind: ProviderKind) -> Self {
        Self(kind.as_str().to_string())
    }

    /// For `#[serde(default = ...)]` on stored TOTP factors.
    pub fn totp() -> Self {
        Self::default_for(ProviderKind::Totp)
    }

    /// For `#[serde(default = ...)]` on stored security keys.
    pub fn webauthn() -> Self {
        Self::default_for(ProviderKind::Webauthn)
    }

    /// For `#[serde(default = ...)]` on stored email factors.
    pub fn email() -> Self {
        Self::default_for(ProviderKind::Email)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub id: ProviderId,
    pub kind: ProviderKind,
    /// What users see ("Authenticator app").
    pub name: String,
    pub status: ProviderStatus,
    /// Derived from `mfa.totp = false` / `mfa.email_otp = false`: deprecated in effect (no new
    /// factors, old ones work, exactly as the switch did), but nobody is told about it, as the
    /// switch never told anyone.
    pub from_switch: bool,
}

/// The validated list: ids unique, at most one active provider per kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Providers(Vec<Provider>);

impl Providers {
    /// Only the validator makes a list (it checks the invariants).
    pub(crate) fn new(list: Vec<Provider>) -> Self {
        Self(list)
    }

    /// What `mfa.totp` and `mfa.email_otp` meant before providers: a switched-off kind cannot be
    /// set up, but factors already set up keep working (that is what the switches did).
    pub fn from_switches(totp: bool, email_otp: bool) -> Self {
        let provider = |kind: ProviderKind, on: bool| Provider {
            id: ProviderId::default_for(kind),
            kind,
            name: kind.default_name().to_string(),
            status: if on { ProviderStatus::Active } else { ProviderStatus::Deprecated },
            from_switch: !on,
        };
        Self(vec![provider(ProviderKind::Totp, totp), provider(ProviderKind::Email, email_otp)])
    }

    /// Adds the provider a switch stands for (`webauthn.enabled`), as [`Self::from_switches`] does.
    pub fn add_from_switch(&mut self, kind: ProviderKind, on: bool) {
        self.0.push(Provider {
            id: ProviderId::default_for(kind),
            kind,
            name: kind.default_name().to_string(),
            status: if on { ProviderStatus::Active } else { ProviderStatus::Deprecated },
            from_switch: !on,
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.0.iter()
    }

    pub fn get(&self, id: &ProviderId) -> Option<&Provider> {
        self.0.iter().find(|p| &p.id == id)
    }

    /// The provider new factors of `kind` point at, if that kind is offered.
    pub fn active(&self, kind: ProviderKind) -> Option<&Provider> {
        self.0.iter().find(|p| p.kind == kind && p.status == ProviderStatus::Active)
    }

    /// The first active provider whose factors can be set up: what users of a retiring one are
    /// told to move to.
    pub fn first_enrollable(&self) -> Option<&Provider> {
        self.0.iter().find(|p| p.status == ProviderStatus::Active && p.kind.can_enroll())
    }

    /// Whether some second factor can be set up at all (by this build).
    pub fn any_enrollable(&self) -> bool {
        self.0.iter().any(|p| p.status == ProviderStatus::Active && p.kind.can_enroll())
    }

    /// Email providers whose codes must be sendable: an active one, and a deprecated one users
    /// still sign in with (one derived from `mfa.email_otp = false` asked nothing of mail before,
    /// and still does not).
    pub fn needing_mail(&self) -> impl Iterator<Item = &Provider> {
        self.0.iter().filter(|p| {
            p.kind == ProviderKind::Email
                && (p.status == ProviderStatus::Active || (p.status == ProviderStatus::Deprecated && !p.from_switch))
        })
    }

    /// The `[[mfa.provider]]` lines that say the same as this list (for the message that refuses
    /// the old switches next to new providers).
    pub fn as_toml(&self) -> String {
        self.0
            .iter()
            .map(|p| {
                format!(
                    "[[mfa.provider]]\nid = \"{}\"\nkind = \"{}\"\nname = \"{}\"\nstatus = \"{}\"\n",
                    p.id, p.kind, p.name, p.status
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_lowercase_tokens() {
        assert!(ProviderId::parse("totp").is_some());
        assert!(ProviderId::parse("totp-2027_b").is_some());
        for bad in ["", "TOTP", "a b", "é", &"x".repeat(33)] {
            assert!(ProviderId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_old_switches_are_two_providers() {
        let on = Providers::from_switches(true, false);
        assert_eq!(on.active(ProviderKind::Totp).map(|p| p.id.as_str()), Some("totp"));
        assert_eq!(on.active(ProviderKind::Email), None);
        let email = on.get(&ProviderId::email()).unwrap();
        assert_eq!((email.status, email.from_switch), (ProviderStatus::Deprecated, true));
        assert!(on.any_enrollable());
        assert!(!Providers::from_switches(false, false).any_enrollable());
        let text = on.as_toml();
        assert!(text.contains("id = \"totp\"\nkind = \"totp\"\nname = \"Authenticator app\"\nstatus = \"active\""));
        assert!(text.contains("id = \"email\"\nkind = \"email\"\nname = \"Codes by email\"\nstatus = \"deprecated\""));
    }
}
