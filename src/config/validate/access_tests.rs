//! The access rules, hosts and the Sandstorm preset as proxy.toml states them.

use std::path::Path;

use crate::config::access::{Access, RuleSource};
use crate::config::{Config, ConfigError, parse};

const MINIMAL: &str = r#"
upstream = "http://127.0.0.1:8080"
public_url = "https://app.example.com"
data_dir = "data"
"#;

fn parse_ok(text: &str) -> Config {
    parse(text, Path::new("/etc/portcullis/proxy.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Every problem's text, key first.
fn problems(text: &str) -> Vec<String> {
    match parse(text, Path::new("/etc/portcullis/proxy.toml")) {
        Err(ConfigError::Invalid { problems, .. }) => problems.iter().map(|p| p.to_string()).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn rules_and_hosts_are_read_in_order() {
    let config = parse_ok(&format!(
        r#"hosts = ["wiki.example.com", "*.apps.example.com"]
{MINIMAL}
[[rule]]
hosts = ["wiki.example.com"]
paths = ["/healthz"]
methods = ["get", "HEAD"]
access = "bypass"

[[rule]]
paths = ["/admin"]
groups = ["staff"]
networks = ["10.0.0.0/8", "192.0.2.7"]
access = "two_factor"
max_age = "10m"
"#
    ));
    assert!(config.hosts.serves("app.example.com") && config.hosts.serves("wiki.example.com"));
    assert!(config.hosts.serves("grafana.apps.example.com") && !config.hosts.serves("evil.example.com"));
    let rules = config.rules.all();
    assert_eq!(rules.len(), 2);
    assert_eq!((rules[0].access, &rules[0].source), (Access::Bypass, &RuleSource::Operator(1)));
    assert_eq!(rules[0].methods, [http::Method::GET, http::Method::HEAD]);
    assert_eq!(rules[1].max_age, Some(std::time::Duration::from_secs(600)));
    assert_eq!(rules[1].networks.len(), 2);
}

#[test]
fn every_rule_problem_names_its_rule_and_the_fix() {
    let found = problems(&format!(
        r#"{MINIMAL}
[[rule]]
access = "allow"

[[rule]]
paths = ["/public"]
groups = ["staff"]
access = "bypass"
max_age = "5m"

[[rule]]
hosts = ["elsewhere.example.org"]
access = "deny"

[[rule]]
paths = ["/.portcullis/login"]
access = "bypass"

[[rule]]
paths = ["api"]
methods = ["G E T"]
networks = ["ten"]
access = "session"

[[rule]]
access = "deny"

[[rule]]
paths = ["/later"]
access = "session"
"#
    ));
    let has = |needle: &str| assert!(found.iter().any(|p| p.contains(needle)), "no {needle:?} in {found:#?}");
    has("[[rule]] #1.access = \"allow\": unknown access. Fix: use one of bypass, session, two_factor, deny");
    has("[[rule]] #2.max_age");
    has("[[rule]] #2.groups");
    has("[[rule]] #3.hosts = \"elsewhere.example.org\": not a host Portcullis serves");
    has("[[rule]] #4.paths");
    has("bypasses the proxy's own pages");
    has("[[rule]] #5.paths = \"api\"");
    has("[[rule]] #5.methods");
    has("[[rule]] #5.networks = \"ten\"");
    has("[[rule]] #7: can never apply: [[rule]] #6 comes first");
}

#[test]
fn the_sandstorm_preset_serves_the_wildcard_and_comes_after_the_operators_rules() {
    let config = parse_ok(
        r#"
upstream = "http://127.0.0.1:6080"
public_url = "https://sandstorm.example.com"
data_dir = "data"
[sandstorm]
base_url = "https://sandstorm.example.com"
wildcard_host = "*.sandstorm.example.com:443"
[[rule]]
hosts = ["api-*.sandstorm.example.com"]
networks = ["10.0.0.0/8"]
access = "deny"
"#,
    );
    assert!(config.hosts.serves("ui-0123456789abcdef0123456789abcdef.sandstorm.example.com"));
    let sources: Vec<String> = config.rules.all().iter().map(|r| r.source.to_string()).collect();
    assert_eq!(sources[0], "[[rule]] #1", "the operator's own rules first");
    assert!(sources[1..].iter().all(|s| s.starts_with("[sandstorm]")), "{sources:?}");

    let wrong = problems(
        r#"
upstream = "http://127.0.0.1:6080"
public_url = "https://portcullis.example.com"
data_dir = "data"
[sandstorm]
base_url = "https://sandstorm.example.com"
wildcard_host = "sandstorm.example.com"
"#,
    );
    assert!(
        wrong
            .iter()
            .any(|p| p.starts_with("sandstorm.base_url") && p.contains("set public_url to Sandstorm's BASE_URL")),
        "{wrong:?}"
    );
}

#[test]
fn hosts_must_be_names_or_patterns() {
    let found = problems(&format!("hosts = [\"https://wiki.example.com\", \"*.*.example.com\"]\n{MINIMAL}"));
    assert_eq!(found.iter().filter(|p| p.starts_with("hosts[")).count(), 2, "{found:?}");
}
