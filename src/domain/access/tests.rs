use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::config::access::{HostPattern, RuleSource};

fn user(groups: &[&str]) -> Arc<User> {
    Arc::new(User {
        name: crate::domain::users::Username::parse("alice").unwrap(),
        display_name: "Alice".into(),
        email: "alice@example.com".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        password_hash: String::new(),
        credential_stamp: [0; 16],
        account_key: "alice".into(),
    })
}

fn rule(access: Access) -> Rule {
    Rule {
        source: RuleSource::Operator(1),
        hosts: Vec::new(),
        paths: Vec::new(),
        methods: Vec::new(),
        groups: Vec::new(),
        networks: Vec::new(),
        access,
        max_age: None,
    }
}

fn facts<'a>(host: &'a str, path: &'a str, method: &'a Method, client: &str) -> RequestFacts<'a> {
    RequestFacts { host, path, method, client: client.parse::<IpAddr>().unwrap() }
}

#[test]
fn each_condition_decides() {
    let rules = AccessRules::new(vec![
        Rule { hosts: vec![HostPattern::parse("api.example.com").unwrap()], ..rule(Access::Bypass) },
        Rule { paths: vec!["/healthz".into()], methods: vec![Method::GET, Method::HEAD], ..rule(Access::Bypass) },
        Rule { paths: vec!["/admin".into()], groups: vec!["staff".into()], ..rule(Access::TwoFactor) },
        Rule { paths: vec!["/admin".into()], ..rule(Access::Deny) },
        Rule {
            networks: vec!["10.0.0.0/8".parse().unwrap()],
            paths: vec!["/internal".into()],
            ..rule(Access::Session)
        },
        Rule { paths: vec!["/internal".into()], ..rule(Access::Deny) },
        Rule { paths: vec!["/billing".into()], max_age: Some(Duration::from_secs(600)), ..rule(Access::Session) },
    ]);
    let (get, post) = (Method::GET, Method::POST);
    let staff = user(&["staff"]);
    let outsider = user(&[]);
    let table: Vec<(RequestFacts<'_>, Option<&User>, Access)> = vec![
        (facts("api.example.com", "/anything", &post, "192.0.2.1"), None, Access::Bypass),
        (facts("wiki.example.com", "/healthz", &get, "192.0.2.1"), None, Access::Bypass),
        (facts("wiki.example.com", "/healthz", &post, "192.0.2.1"), None, Access::Session),
        (facts("wiki.example.com", "/healthzx", &get, "192.0.2.1"), None, Access::Session),
        // A bypass opens exactly the spelling written; nothing wider.
        (facts("wiki.example.com", "/HEALTHZ", &get, "192.0.2.1"), None, Access::Session),
        (facts("wiki.example.com", "/admin/users", &get, "192.0.2.1"), Some(&staff), Access::TwoFactor),
        (facts("wiki.example.com", "/admin/users", &get, "192.0.2.1"), Some(&outsider), Access::Deny),
        // No session: the members' rule cannot tell, so the deny after it asks for a sign-in.
        (facts("wiki.example.com", "/admin", &get, "192.0.2.1"), None, Access::Session),
        (facts("wiki.example.com", "/ADMIN/x", &get, "192.0.2.1"), Some(&outsider), Access::Deny),
        (facts("wiki.example.com", "/internal/x", &get, "10.1.2.3"), None, Access::Session),
        (facts("wiki.example.com", "/internal/x", &get, "192.0.2.1"), None, Access::Deny),
        (facts("wiki.example.com", "/", &get, "192.0.2.1"), None, Access::Session),
    ];
    for (request, who, expected) in &table {
        assert_eq!(decide(&rules, request, *who).access, *expected, "{request:?} as {:?}", who.map(|u| &u.groups));
    }
    let billing = decide(&rules, &facts("wiki.example.com", "/billing", &get, "192.0.2.1"), None);
    assert_eq!(billing.max_age, Some(Duration::from_secs(600)));
    let (passed, decision) = explain(&rules, &facts("wiki.example.com", "/admin", &get, "192.0.2.1"), None);
    assert_eq!(decision.access, Access::Session, "explain agrees with decide");
    let reasons: Vec<Mismatch> = passed.into_iter().map(|(_, why)| why).collect();
    assert_eq!(reasons, [Mismatch::Host, Mismatch::Path, Mismatch::NoSession]);
}

#[test]
fn freshness_and_second_factors() {
    let two_factor = Decision { rule: None, access: Access::TwoFactor, max_age: None };
    let fresh = Decision { rule: None, access: Access::Session, max_age: Some(Duration::from_secs(600)) };
    let plain = Decision { rule: None, access: Access::Session, max_age: None };
    let full = |proved, at: Option<i64>, has| Standing::Full {
        proved_second_factor: proved,
        second_factor_at: at,
        has_factor: has,
    };
    let now = 10_000;
    assert_eq!(admit(&plain, full(false, None, false), now), Verdict::Forward);
    assert_eq!(admit(&two_factor, full(false, None, false), now), Verdict::Enroll);
    assert_eq!(admit(&two_factor, full(false, None, true), now), Verdict::ProveSecondFactor { max_age: None });
    assert_eq!(admit(&two_factor, full(true, Some(1), true), now), Verdict::Forward);
    assert_eq!(
        admit(&two_factor, full(true, None, true), now),
        Verdict::ProveSecondFactor { max_age: None },
        "a remembered browser is no second factor proven in this session"
    );
    assert_eq!(admit(&fresh, full(true, Some(now - 600), true), now), Verdict::Forward);
    assert_eq!(
        admit(&fresh, full(true, Some(now - 601), true), now),
        Verdict::ProveSecondFactor { max_age: Some(Duration::from_secs(600)) }
    );
    assert_eq!(
        admit(&fresh, full(true, None, true), now),
        Verdict::ProveSecondFactor { max_age: Some(Duration::from_secs(600)) },
        "a remembered browser proved nothing just now"
    );
    assert_eq!(
        admit(&fresh, full(true, Some(now + 5), true), now),
        Verdict::ProveSecondFactor { max_age: Some(Duration::from_secs(600)) },
        "a time in the future is not trusted"
    );
    assert_eq!(admit(&plain, Standing::Partial, now), Verdict::FinishSignIn);
    assert_eq!(admit(&plain, Standing::None, now), Verdict::SignIn);
}

fn any_access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::Bypass), Just(Access::Session), Just(Access::TwoFactor), Just(Access::Deny)]
}

fn any_rule() -> impl Strategy<Value = Rule> {
    (
        any_access(),
        proptest::option::of(prop_oneof![Just("a.example.com"), Just("*.example.com"), Just("b.example.org")]),
        proptest::option::of(prop_oneof![Just("/"), Just("/api"), Just("/admin")]),
        proptest::option::of(prop_oneof![Just("staff"), Just("ops")]),
        proptest::option::of(prop_oneof![Just("10.0.0.0/8"), Just("192.0.2.0/24")]),
        proptest::option::of(0u64..1000),
    )
        .prop_map(|(access, host, path, group, network, max_age)| Rule {
            source: RuleSource::Operator(1),
            hosts: host.map(|h| HostPattern::parse(h).unwrap()).into_iter().collect(),
            paths: path.map(str::to_string).into_iter().collect(),
            methods: Vec::new(),
            groups: group.map(str::to_string).into_iter().collect(),
            networks: network.map(|n| n.parse().unwrap()).into_iter().collect(),
            max_age: max_age.filter(|_| matches!(access, Access::Session | Access::TwoFactor)).map(Duration::from_secs),
            access,
        })
}

fn any_standing() -> impl Strategy<Value = Standing> {
    prop_oneof![
        Just(Standing::None),
        Just(Standing::Partial),
        (any::<bool>(), proptest::option::of(0i64..20_000), any::<bool>()).prop_map(|(proved, at, has)| {
            Standing::Full { proved_second_factor: proved, second_factor_at: at, has_factor: has }
        }),
    ]
}

proptest! {
    /// Whatever the rules, a request with a partial session or none reaches the upstream only
    /// through a `bypass` rule, and then with no identity; and the indexed evaluation agrees
    /// with walking every rule in order.
    #[test]
    fn no_rule_set_lets_a_partial_or_missing_session_through_as_someone(
        rules in proptest::collection::vec(any_rule(), 0..12),
        host in prop_oneof![Just("a.example.com"), Just("c.example.com"), Just("b.example.org")],
        path in prop_oneof![Just("/"), Just("/api/x"), Just("/admin"), Just("/other")],
        client in prop_oneof![Just("10.1.1.1"), Just("192.0.2.9"), Just("198.51.100.1")],
        member in any::<bool>(),
        standing in any_standing(),
    ) {
        let rules = AccessRules::new(rules);
        let method = Method::GET;
        let request = facts(host, path, &method, client);
        let who = user(if member { &["staff"] } else { &[] });
        let holder = (standing != Standing::None).then_some(&*who);
        let decision = decide(&rules, &request, holder);
        let (_, walked) = explain(&rules, &request, holder);
        prop_assert_eq!(decision.access, walked.access);
        prop_assert_eq!(decision.rule.map(|r| r as *const Rule), walked.rule.map(|r| r as *const Rule));
        if let Some(rule) = decision.rule {
            prop_assert!(holder.is_some() || rule.groups.is_empty(), "a group rule never matches without a session");
        }
        match admit(&decision, standing, 10_000) {
            Verdict::Forward => {
                let full = matches!(standing, Standing::Full { .. });
                prop_assert!(full, "forwarded as someone without a full session");
            }
            Verdict::Bypass => prop_assert_eq!(decision.access, Access::Bypass),
            _ => {}
        }
    }
}
