//! Which access rule applies to a request, as a pure function of the request's facts and who
//! (if anyone) is asking. First match wins; when nothing matches, `session`: the account's own 2FA
//! policy decides, as it does without any rules.

use std::net::IpAddr;
use std::time::Duration;

use http::Method;

use crate::config::access::{Access, AccessRules, Rule, path_within, path_within_any_case};
use crate::domain::users::User;

/// What the rules look at in a request.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    /// Lower case, no port (see `config::access::request_host`).
    pub host: &'a str,
    /// The path as rules read it (`config::access::rule_path`).
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
    // A `bypass` opens a path exactly as written; every other rule holds for any case of it
    // (when in doubt, the stricter reading).
    let within = |prefix: &String| match rule.access {
        Access::Bypass => path_within(facts.path, prefix),
        _ => path_within_any_case(facts.path, prefix),
    };
    if !rule.paths.is_empty() && !rule.paths.iter().any(within) {
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

/// The decision for a request: the first rule that matches, or `session`. One exception: a
/// request with no session that reaches a `deny` past a rule for members of some groups is asked
/// to sign in instead, since signing in may be what lets it through (a deep link to a members'
/// area); once signed in, the rules are asked again.
pub fn decide<'a>(rules: &'a AccessRules, facts: &RequestFacts<'_>, user: Option<&User>) -> Decision<'a> {
    let mut members_only_skipped = false;
    for rule in rules.for_host(facts.host) {
        match mismatch(rule, facts, user) {
            None => return matched(rule, members_only_skipped),
            Some(Mismatch::NoSession) => members_only_skipped = true,
            Some(_) => {}
        }
    }
    Decision { rule: None, access: Access::Session, max_age: None }
}

fn matched(rule: &Rule, members_only_skipped: bool) -> Decision<'_> {
    let access = match rule.access {
        Access::Deny if members_only_skipped => Access::Session,
        access => access,
    };
    Decision { rule: Some(rule), access, max_age: rule.max_age }
}

/// Every rule in order with why it did not match, up to the one that did (for `explain`).
pub fn explain<'a>(
    rules: &'a AccessRules,
    facts: &RequestFacts<'_>,
    user: Option<&User>,
) -> (Vec<(&'a Rule, Mismatch)>, Decision<'a>) {
    let mut passed: Vec<(&Rule, Mismatch)> = Vec::new();
    for rule in rules.all() {
        match mismatch(rule, facts, user) {
            Some(why) => passed.push((rule, why)),
            None => {
                let members_only_skipped = passed.iter().any(|(_, why)| *why == Mismatch::NoSession);
                return (passed, matched(rule, members_only_skipped));
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
        /// a remembered browser standing in for one): what the account's own policy accepts.
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
    let (second_factor_at, has_factor) = match (decision.access, standing) {
        (Access::Bypass, _) => return Verdict::Bypass,
        (Access::Deny, _) => return Verdict::Deny,
        (_, Standing::None) => return Verdict::SignIn,
        (_, Standing::Partial) => return Verdict::FinishSignIn,
        (_, Standing::Full { second_factor_at, has_factor, .. }) => (second_factor_at, has_factor),
    };
    let wants_factor = decision.access == Access::TwoFactor || decision.max_age.is_some();
    if !wants_factor {
        return Verdict::Forward;
    }
    if !has_factor {
        return Verdict::Enroll;
    }
    // A rule that asks for a second factor asks for one proven in this session: a remembered
    // browser stands in for it at sign-in under the account's policy, never here.
    let proven_at = second_factor_at.filter(|at| *at <= now);
    let fresh = match decision.max_age {
        Some(max_age) => proven_at.is_some_and(|at| now - at <= max_age.as_secs() as i64),
        None => proven_at.is_some(),
    };
    if fresh { Verdict::Forward } else { Verdict::ProveSecondFactor { max_age: decision.max_age } }
}

#[cfg(test)]
mod tests;
