//! The 2FA policy, as pure functions: what an account must prove, what comes after the password,
//! and whether a running full session still satisfies the rules.
//!
//! The policy is checked on every request, not only at login: when the configuration starts
//! requiring 2FA for someone, or their factors are reset or newly enrolled, a session that no
//! longer satisfies it is downgraded to partial at its next request (the Phabricator lesson: a
//! rule that only applies at login leaves old sessions unconverted for days).

use crate::config::{MfaPolicy, MfaSettings};
use crate::domain::factors::{AccountRecord, FactorKind, providers};
use crate::domain::users::User;

/// What one account must prove beyond the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// 2FA is switched off: no second-factor pages at all.
    Off,
    /// The user may enroll, and then must use it; without a factor the password is enough.
    Optional,
    /// The user must have and prove a second factor.
    Required,
    /// It will be required from this time (Unix seconds): until then it works like `Optional`,
    /// and users without a factor are reminded at sign-in.
    Upcoming(crate::base::clock::UnixTime),
}

/// The requirement for `user` at `now`: `required` globally or through one of their groups, in
/// force once `required_after` (if set) has passed, or through a group with its own date in
/// `group_required_after`. When several rules apply, the earliest wins: a later date for one
/// group never postpones a rule already in force.
pub fn requirement(mfa: &MfaSettings, user: &User, now: crate::base::clock::UnixTime) -> Requirement {
    if mfa.policy == MfaPolicy::Disabled {
        return Requirement::Off;
    }
    // Each rule that applies, with when it takes effect (`None`: it already does). Evaluated on
    // every request, so an iterator rather than a collection: no allocation.
    let global = (mfa.policy == MfaPolicy::Required || user.groups.iter().any(|g| mfa.required_groups.contains(g)))
        .then_some(mfa.required_after);
    let per_group = user.groups.iter().filter_map(|g| mfa.group_required_after.get(g)).map(|at| Some(*at));
    match global.into_iter().chain(per_group).min_by_key(|at| at.unwrap_or(i64::MIN)) {
        None => Requirement::Optional,
        Some(Some(deadline)) if now < deadline => Requirement::Upcoming(deadline),
        Some(_) => Requirement::Required,
    }
}

/// The policy's word that the password is all this account needs now: what a session becomes
/// full with when no second factor applies. Only [`after_password`] gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordIsEnough(());

/// Where a user goes once their password is proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPassword {
    /// The password is all that is needed: a full session now.
    Done(PasswordIsEnough),
    /// Prove the enrolled second factor.
    Challenge,
    /// No factor yet, but one is required: enroll now, inline, then carry on.
    Enroll,
    /// Signed in, and reminded first that 2FA becomes required at this time.
    Remind(crate::base::clock::UnixTime, PasswordIsEnough),
}

pub fn after_password(requirement: Requirement, has_factor: bool) -> AfterPassword {
    match (requirement, has_factor) {
        (Requirement::Off, _) => AfterPassword::Done(PasswordIsEnough(())),
        (_, true) => AfterPassword::Challenge,
        (Requirement::Optional, false) => AfterPassword::Done(PasswordIsEnough(())),
        (Requirement::Upcoming(deadline), false) => AfterPassword::Remind(deadline, PasswordIsEnough(())),
        (Requirement::Required, false) => AfterPassword::Enroll,
    }
}

/// Whether a full session may carry on. `proved_second_factor` is whether the session's own
/// login included one.
pub fn full_session_allowed(requirement: Requirement, has_factor: bool, proved_second_factor: bool) -> bool {
    match requirement {
        Requirement::Off => true,
        // An account with a factor always uses it; one without may go on with a password...
        Requirement::Optional | Requirement::Upcoming(_) => proved_second_factor || !has_factor,
        // ...unless it is required, and then the factor must exist and have been proven.
        Requirement::Required => proved_second_factor && has_factor,
    }
}

/// Whether to suggest 2FA after this sign-in: only where it is optional and missing, when the
/// operator asked for suggestions, the user has not declined them, and the last one is older
/// than `every`.
pub fn should_nudge(
    requirement: Requirement,
    has_factor: bool,
    every: Option<std::time::Duration>,
    account: &AccountRecord,
    now: crate::base::clock::UnixTime,
) -> bool {
    let Some(every) = every else { return false };
    requirement == Requirement::Optional
        && !has_factor
        && !account.nudge_declined
        && account.nudged_at.is_none_or(|at| now - at >= every.as_secs() as i64)
}

/// Whether a second factor proven at `at` is recent enough for a sensitive change.
pub fn recently_proven(
    at: Option<crate::base::clock::UnixTime>,
    now: crate::base::clock::UnixTime,
    window_seconds: i64,
) -> bool {
    at.is_some_and(|at| now - at < window_seconds && at <= now)
}

/// Whether a factor may be set up now, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Add it: the account lacks it.
    Add,
    /// Replace the account's authenticator with a new one (a new phone).
    Replace,
    /// The account is protected already: prove a factor again first.
    StepUpFirst,
    No,
}

/// What the session asking to set up a factor has proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proven {
    /// The password only (a half-logged-in session).
    Password,
    /// A full session; `recently` is whether its second factor is within the step-up window.
    Full { recently: bool },
}

/// Whether a session may set up a factor of `kind`. 2FA must be on and the kind offered; then
/// either the account has no factor at all (inline enrollment, or after an operator reset or a
/// recovery link, where the password is what was proven), or this is a full session with a
/// recently proven second factor, so a stolen session cookie alone can neither add a factor to a
/// protected account nor swap its authenticator. Only an app can be moved to a new device; an
/// email address is proven anew by adding it.
pub fn may_set_up(
    mfa: &MfaSettings,
    requirement: Requirement,
    account: &AccountRecord,
    kind: FactorKind,
    proven: Proven,
) -> Setup {
    // Offered: an active provider of the kind (keys: and a domain to be their relying party). Has:
    // a factor of it that still counts (one whose provider was disabled is replaced as if it were
    // not there). An account may have several keys: one more is always an addition, never a swap.
    let (offered, has) = match kind {
        FactorKind::SecurityKey => (mfa.security_keys, false),
        _ => {
            (mfa.providers.active(providers::kind_of(kind)).is_some(), providers::counts(account, &mfa.providers, kind))
        }
    };
    if !offered || requirement == Requirement::Off || (has && kind == FactorKind::Email) {
        return Setup::No;
    }
    if !providers::has_counting_factor(account, &mfa.providers) {
        return Setup::Add;
    }
    match (proven, has) {
        (Proven::Password, _) => Setup::No,
        (Proven::Full { recently: false }, _) => Setup::StepUpFirst,
        (Proven::Full { recently: true }, false) => Setup::Add,
        (Proven::Full { recently: true }, true) => Setup::Replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AfterPassword::*;
    use Requirement::*;

    #[test]
    fn the_nudge_is_optional_periodic_and_can_be_declined() {
        let day = std::time::Duration::from_secs(86400);
        let fresh = crate::domain::factors::AccountRecord::default();
        assert!(should_nudge(Optional, false, Some(day), &fresh, 1000));
        assert!(!should_nudge(Optional, false, None, &fresh, 1000), "off unless configured");
        assert!(!should_nudge(Optional, true, Some(day), &fresh, 1000), "already protected");
        assert!(!should_nudge(Required, false, Some(day), &fresh, 1000), "required enrolls instead");
        assert!(!should_nudge(Upcoming(5000), false, Some(day), &fresh, 1000), "the reminder covers it");
        let nudged = crate::domain::factors::AccountRecord { nudged_at: Some(1000), ..Default::default() };
        assert!(!should_nudge(Optional, false, Some(day), &nudged, 1000 + 86399));
        assert!(should_nudge(Optional, false, Some(day), &nudged, 1000 + 86400));
        let declined = crate::domain::factors::AccountRecord { nudge_declined: true, ..Default::default() };
        assert!(!should_nudge(Optional, false, Some(day), &declined, 1_000_000));
    }

    #[test]
    fn after_the_password() {
        let enough = PasswordIsEnough(());
        assert_eq!(after_password(Off, true), Done(enough));
        assert_eq!(after_password(Off, false), Done(enough));
        assert_eq!(after_password(Optional, true), Challenge);
        assert_eq!(after_password(Optional, false), Done(enough));
        assert_eq!(after_password(Required, true), Challenge);
        assert_eq!(after_password(Required, false), Enroll);
        assert_eq!(after_password(Upcoming(99), false), Remind(99, enough));
        assert_eq!(after_password(Upcoming(99), true), Challenge);
    }

    #[test]
    fn a_deadline_turns_required_into_upcoming_until_it_passes() {
        let user = crate::domain::users::User {
            name: crate::domain::users::Username::parse("dev").unwrap(),
            display_name: "Dev".into(),
            email: "dev@example.com".into(),
            groups: vec!["developers".into()],
            password_hash: String::new(),
            credential_stamp: [0; 16],
            account_key: "dev".into(),
        };
        let mfa = MfaSettings {
            policy: MfaPolicy::Optional,
            required_groups: vec!["developers".into()],
            providers: crate::config::Providers::from_switches(true, false),
            issuer: "x".into(),
            step_up_window: std::time::Duration::from_secs(600),
            attempts: 5,
            required_after: Some(1_800_000_000),
            group_required_after: Default::default(),
            nudge_every: None,
            remember_device: None,
            email_code_digits: 6,
            security_keys: false,
        };
        assert_eq!(requirement(&mfa, &user, 1_799_999_999), Upcoming(1_800_000_000));
        assert_eq!(requirement(&mfa, &user, 1_800_000_000), Required);
        let outsider = crate::domain::users::User { groups: vec![], ..user.clone() };
        assert_eq!(requirement(&mfa, &outsider, 1_800_000_000), Optional);

        // Groups with dates of their own: the earliest rule that applies wins.
        let staged = MfaSettings {
            required_groups: vec![],
            required_after: None,
            group_required_after: [
                ("developers".to_string(), 1_700_000_000),
                ("translators".to_string(), 1_900_000_000),
            ]
            .into_iter()
            .collect(),
            ..mfa.clone()
        };
        assert_eq!(requirement(&staged, &user, 1_600_000_000), Upcoming(1_700_000_000));
        assert_eq!(requirement(&staged, &user, 1_700_000_000), Required);
        let translator = crate::domain::users::User { groups: vec!["translators".into()], ..user.clone() };
        assert_eq!(requirement(&staged, &translator, 1_800_000_000), Upcoming(1_900_000_000));
        let both =
            crate::domain::users::User { groups: vec!["translators".into(), "developers".into()], ..user.clone() };
        assert_eq!(requirement(&staged, &both, 1_800_000_000), Required, "a later group date never postpones");
        let now_and_later = MfaSettings { required_groups: vec!["translators".into()], ..staged.clone() };
        assert_eq!(requirement(&now_and_later, &translator, 1_000), Required, "required now beats a future date");
        assert_eq!(requirement(&staged, &outsider, 2_000_000_000), Optional);
        assert!(full_session_allowed(Upcoming(1), false, false), "before the deadline a password-only session is fine");
    }

    #[test]
    fn running_sessions() {
        let table = [
            // requirement, has factor, session proved one, allowed
            (Off, false, false, true),
            (Off, true, false, true),
            (Optional, false, false, true),
            (Optional, true, false, false), // enrolled elsewhere: password-only sessions must step up
            (Optional, true, true, true),
            (Optional, false, true, true), // factor removed by its owner: fine under optional
            (Required, false, false, false),
            (Required, true, false, false), // policy tightened: downgrade
            (Required, true, true, true),
            (Required, false, true, false), // factors reset by an admin: enroll again
        ];
        for (requirement, has, proved, allowed) in table {
            assert_eq!(full_session_allowed(requirement, has, proved), allowed, "{requirement:?} {has} {proved}");
        }
    }

    #[test]
    fn who_may_set_up_what() {
        let mfa = MfaSettings {
            policy: MfaPolicy::Optional,
            required_groups: vec![],
            providers: crate::config::Providers::from_switches(true, true),
            issuer: "x".into(),
            step_up_window: std::time::Duration::from_secs(600),
            attempts: 3,
            required_after: None,
            group_required_after: Default::default(),
            nudge_every: None,
            remember_device: None,
            email_code_digits: 6,
            security_keys: true,
        };
        let none = AccountRecord::default();
        let with_app = AccountRecord {
            totp: Some(crate::domain::factors::TotpRecord {
                sealed_secret: Vec::new(),
                enrolled_at: 0,
                last_used_at: None,
                last_step: 0,
                provider: crate::config::ProviderId::totp(),
            }),
            ..Default::default()
        };
        let fresh = Proven::Full { recently: true };
        let stale = Proven::Full { recently: false };
        use FactorKind::{Email, SecurityKey, Totp};
        let table = [
            (Optional, &none, Totp, Proven::Password, Setup::Add),
            (Off, &none, Totp, fresh, Setup::No),
            (Required, &with_app, Totp, Proven::Password, Setup::No),
            (Required, &with_app, Totp, stale, Setup::StepUpFirst),
            (Required, &with_app, Totp, fresh, Setup::Replace),
            (Required, &with_app, Email, fresh, Setup::Add),
            (Required, &with_app, Email, stale, Setup::StepUpFirst),
            (Optional, &none, SecurityKey, Proven::Password, Setup::Add),
            (Required, &with_app, SecurityKey, Proven::Password, Setup::No),
            (Required, &with_app, SecurityKey, stale, Setup::StepUpFirst),
            (Required, &with_app, SecurityKey, fresh, Setup::Add),
        ];
        for (requirement, account, kind, proven, expected) in table {
            assert_eq!(
                may_set_up(&mfa, requirement, account, kind, proven),
                expected,
                "{requirement:?} {kind:?} {proven:?}"
            );
        }
        let app_only = MfaSettings { providers: crate::config::Providers::from_switches(true, false), ..mfa.clone() };
        assert_eq!(may_set_up(&app_only, Optional, &none, Email, fresh), Setup::No, "not offered");

        // The app's provider disabled, another active: the account has no factor that counts, so
        // after the password it sets one up (as after a reset); with only a deprecated one, none.
        let config = |providers: &str| {
            crate::config::parse(
                &format!("upstream = \"http://127.0.0.1:1\"\npublic_url = \"http://x\"\ndata_dir = \"d\"\n{providers}"),
                std::path::Path::new("/p.toml"),
            )
            .unwrap()
            .mfa
        };
        let moved = config(
            "[[mfa.provider]]\nid = \"totp\"\nkind = \"totp\"\nstatus = \"disabled\"\n[[mfa.provider]]\nid = \"new\"\nkind = \"totp\"\n",
        );
        assert_eq!(may_set_up(&moved, Required, &with_app, Totp, Proven::Password), Setup::Add);
        let retired = config("[[mfa.provider]]\nid = \"totp\"\nkind = \"totp\"\nstatus = \"deprecated\"\n");
        assert_eq!(may_set_up(&retired, Optional, &with_app, Totp, fresh), Setup::No, "deprecated: no new app");
        assert_eq!(may_set_up(&retired, Optional, &none, Totp, Proven::Password), Setup::No);
        let no_keys = MfaSettings { security_keys: false, ..app_only };
        assert_eq!(may_set_up(&no_keys, Optional, &none, SecurityKey, fresh), Setup::No, "not offered");
    }

    #[test]
    fn step_up_window() {
        assert!(recently_proven(Some(1000), 1000, 600));
        assert!(recently_proven(Some(1000), 1599, 600));
        assert!(!recently_proven(Some(1000), 1600, 600));
        assert!(!recently_proven(None, 1000, 600));
        assert!(!recently_proven(Some(2000), 1000, 600), "a time in the future is not trusted");
    }
}
