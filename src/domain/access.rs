//! Which access rule applies to a request, as a pure function of the request's facts and who
//! (if anyone) is asking. First match wins; when nothing matches, `session`: the account's own 2FA
//! policy decides, as it does without any rules.

use std::net::IpAddr;
use std::time::Duration;

use http::Method;

use crate::config::access::{Access, AccessRules, Rule, path_within};
use crate::domain::users::User;

/// What the rules look at in a request.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    /// Lower case, no port (see `config::access::request_host`).
    pub host: &'a str,
    /// The normalised path (`web::route::normalize`).
    pub path: &'a str,
    pub method: &'a Method,
    /// The client's address, after `trusted_proxies`.
    pub client: IpAddr,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The rule that matched; `None` when none did.
    pub rule: Option<&'a Rule>,
    pub access: Access,
    /// The second factor must be at most this old.
    pub max_age: Option<Duration>,
}

/// Why a rule did not match, for `portcullis explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Host,
    Path,
    Method,
    /// The rule is for members of some groups, and the request has no session to tell.
    NoSession,
    /// The user is in none of the rule's groups.
    NotMember,
    Network,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Host => "the host is not one of its hosts",
            Self::Path => "the path is under none of its paths",
            Self::Method => "the method is not one of its methods",
            Self::NoSession => "it is for members of groups, and the request has no session",
            Self::NotMember => "the user is in none of its groups",
            Self::Network => "the client address is in none of its networks",
        })
    }
}

/// Why `rule` does not apply to this request, or `None` if it does.
pub fn mismatch(rule: &Rule, facts: &RequestFacts<'_>, user: Option<&User>) -> Option<Mismatch> {
    if !rule.hosts.is_empty() && !rule.hosts.iter().any(|h| h.matches(facts.host)) {
        return Some(Mismatch::Host);
    }
    if !rule.paths.is_empty() && !rule.paths.iter().any(|p| path_within(facts.path, p)) {
        return Some(Mismatch::Path);
    }
    if !rule.methods.is_empty() && !rule.methods.contains(facts.method) {
        return Some(Mismatch::Method);
    }
    if !rule.networks.is_empty() && !rule.networks.iter().any(|n| n.contains(&facts.client)) {
        return Some(Mismatch::Network);
    }
    if !rule.groups.is_empty() {
        let Some(user) = user else { return Some(Mismatch::NoSession) };
        if !rule.groups.iter().any(|g| user.groups.contains(g)) {
            return Some(Mismatch::NotMember);
        }
    }
    None
}

/// The decision for a request: the first rule that matches, or `session`.
pub fn decide<'a>(rules: &'a AccessRules, facts: &RequestFacts<'_>, user: Option<&User>) -> Decision<'a> {
    rules.for_host(facts.host).find(|rule| mismatch(rule, facts, user).is_none()).map_or(
        Decision { rule: None, access: Access::Session, max_age: None },
        |rule| Decision { rule: Some(rule), access: rule.access, max_age: rule.max_age },
    )
}

/// Every rule in order with why it did not match, up to the one that did (for `explain`).
pub fn explain<'a>(
    rules: &'a AccessRules,
    facts: &RequestFacts<'_>,
    user: Option<&User>,
) -> (Vec<(&'a Rule, Mismatch)>, Decision<'a>) {
    let mut passed = Vec::new();
    for rule in rules.all() {
        match mismatch(rule, facts, user) {
            Some(why) => passed.push((rule, why)),
            None => {
                return (passed, Decision { rule: Some(rule), access: rule.access, max_age: rule.max_age });
            }
        }
    }
    (passed, Decision { rule: None, access: Access::Session, max_age: None })
}

/// What the request holds, as far as access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No session (or none that is valid here).
    None,
    /// Half logged in: the password, not yet the second factor the policy asks for.
    Partial,
    /// A full session (which the account's 2FA policy still accepts).
    Full {
        /// Whether it proved a second factor (an app code, an emailed code, a recovery code, or
        /// a remembered browser standing in for one).
        proved_second_factor: bool,
        /// When it last proved one just now; `None` if never in this session.
        second_factor_at: Option<i64>,
        /// Whether the account has a second factor to prove.
        has_factor: bool,
    },
}

/// What the gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward with no identity at all.
    Bypass,
    /// Forward with the full session's identity.
    Forward,
    /// 403, nothing forwarded.
    Deny,
    /// Sign in first.
    SignIn,
    /// Finish signing in (the second factor the account's policy asks for).
    FinishSignIn,
    /// Prove the second factor (again): the rule wants one, or a fresher one than the session's.
    ProveSecondFactor { max_age: Option<Duration> },
    /// The rule wants a second factor the account does not have: set one up.
    Enroll,
}

/// The gate's verdict for a decision and what the request holds. Only `Full` ever leads to
/// `Forward`, and only `bypass` forwards anything else (with no identity): a partial session
/// or none never reaches the upstream as someone.
pub fn admit(decision: &Decision<'_>, standing: Standing, now: i64) -> Verdict {
    let (proved, second_factor_at, has_factor) = match (decision.access, standing) {
        (Access::Bypass, _) => return Verdict::Bypass,
        (Access::Deny, _) => return Verdict::Deny,
        (_, Standing::None) => return Verdict::SignIn,
        (_, Standing::Partial) => return Verdict::FinishSignIn,
        (_, Standing::Full { proved_second_factor, second_factor_at, has_factor }) => {
            (proved_second_factor, second_factor_at, has_factor)
        }
    };
    let wants_factor = decision.access == Access::TwoFactor || decision.max_age.is_some();
    if !wants_factor {
        return Verdict::Forward;
    }
    if !has_factor {
        return Verdict::Enroll;
    }
    match decision.max_age {
        Some(max_age) => {
            let fresh = second_factor_at.is_some_and(|at| at <= now && now - at <= max_age.as_secs() as i64);
            if fresh { Verdict::Forward } else { Verdict::ProveSecondFactor { max_age: Some(max_age) } }
        }
        None if proved => Verdict::Forward,
        None => Verdict::ProveSecondFactor { max_age: None },
    }
}

#[cfg(test)]
mod tests;
