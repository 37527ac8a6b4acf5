//! Access rules (`[[rule]]`), the hosts Portcullis serves (`hosts`), and the patterns both are
//! written in, as validated values. Evaluating them against a request is the domain's job
//! (`domain/access.rs`); this is what they are, and the index that keeps evaluating them cheap.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;

/// What a rule does with the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Forwarded with no session and no identity at all (client-sent identity headers are still
    /// removed).
    Bypass,
    /// A full session, as the account's 2FA policy decides (the default).
    Session,
    /// A full session that proved a second factor, even where the account's policy is optional.
    TwoFactor,
    /// 403; nothing is forwarded.
    Deny,
}

impl Access {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "bypass" => Self::Bypass,
            "session" => Self::Session,
            "two_factor" => Self::TwoFactor,
            "deny" => Self::Deny,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Session => "session",
            Self::TwoFactor => "two_factor",
            Self::Deny => "deny",
        }
    }
}

/// A host name, or a pattern with one `*` standing for part of the first label: `*.example.com`
/// (any one label), `api-*.example.com` (a label starting `api-`). Lower case; no port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    text: String,
    /// For a pattern: what the first label starts with, and everything after it (`.example.com`).
    wildcard: Option<(String, String)>,
    /// For a pattern: the first label must be exactly this long, of lower-case letters and digits
    /// (Sandstorm's static-publishing hosts; not written in proxy.toml).
    label_length: Option<usize>,
}

impl HostPattern {
    /// Parses `text`; `None` if it is not a host name or a pattern of the kind above.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        let (first, rest) = text.split_once('.')?;
        if rest.split('.').any(|label| !valid_label(label)) {
            return None;
        }
        let wildcard = match first.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                Some((prefix.to_string(), format!(".{rest}")))
            }
            Some(_) => return None,
            None if valid_label(first) => None,
            None => return None,
        };
        Some(Self { text, wildcard, label_length: None })
    }

    /// Any one label of exactly `length` lower-case letters and digits, followed by `.rest`.
    pub fn label_of_length(length: usize, rest: &str) -> Self {
        Self {
            text: format!("<{length} letters or digits>.{rest}"),
            wildcard: Some((String::new(), format!(".{rest}"))),
            label_length: Some(length),
        }
    }

    /// Whether `host` (lower case, no port) is this host or fits this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match &self.wildcard {
            None => self.text == host,
            Some((prefix, rest)) => host.strip_suffix(rest.as_str()).is_some_and(|first| {
                first.len() > prefix.len()
                    && first.starts_with(prefix.as_str())
                    && !first.contains('.')
                    && self.label_length.is_none_or(|length| {
                        first.len() == length && first.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    })
            }),
        }
    }

    /// Whether every host this matches, `other` matches too.
    pub fn within(&self, other: &HostPattern) -> bool {
        match (&self.wildcard, &other.wildcard) {
            (None, _) => other.matches(&self.text),
            (Some(_), None) => false,
            (Some((mine, my_rest)), Some((theirs, their_rest))) => {
                my_rest == their_rest
                    && mine.starts_with(theirs.as_str())
                    && (other.label_length.is_none() || self.label_length == other.label_length)
            }
        }
    }

    /// The pattern as a CSP host source: `*.example.com` stays, any other pattern widens to its
    /// parent's `*.` (CSP knows no other wildcards).
    pub fn csp_source(&self) -> String {
        match &self.wildcard {
            None => self.text.clone(),
            Some((_, rest)) => format!("*{rest}"),
        }
    }

    /// The exact host, if this is not a pattern.
    pub fn exact(&self) -> Option<&str> {
        self.wildcard.is_none().then_some(self.text.as_str())
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a rule came from, for messages and `portcullis explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    /// The operator's `[[rule]]` with this number (counting from 1, in file order).
    Operator(usize),
    /// The `[sandstorm]` preset, for this class of host.
    Sandstorm(&'static str),
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operator(n) => write!(f, "[[rule]] #{n}"),
            Self::Sandstorm(class) => write!(f, "[sandstorm] {class}"),
        }
    }
}

/// One access rule. Every condition that is empty matches everything.
#[derive(Debug, Clone)]
pub struct Rule {
    pub source: RuleSource,
    pub hosts: Vec<HostPattern>,
    /// Prefixes of the normalised path, by whole segments: `/api` matches `/api` and `/api/x`,
    /// not `/apis`.
    pub paths: Vec<String>,
    pub methods: Vec<Method>,
    /// The rule applies to members of any of these groups only (so only to requests with a
    /// session).
    pub groups: Vec<String>,
    /// The client's address (after `trusted_proxies`) is in one of these.
    pub networks: Vec<IpNet>,
    pub access: Access,
    /// With `session`/`two_factor`: the second factor must have been proven this recently.
    pub max_age: Option<Duration>,
}

/// Whether `path` is `prefix` or below it, by whole segments.
pub fn path_within(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path.strip_prefix(prefix).is_some_and(|rest| prefix.ends_with('/') || rest.starts_with('/'))
}

/// [`path_within`], ignoring ASCII case: many servers route `/Admin` to `/admin` (ASP.NET,
/// Express by default, anything on a case-insensitive file system).
pub fn path_within_any_case(path: &str, prefix: &str) -> bool {
    let (path, prefix) = (path.as_bytes(), prefix.as_bytes());
    prefix == b"/"
        || (path.len() >= prefix.len()
            && path[..prefix.len()].eq_ignore_ascii_case(prefix)
            && (path.len() == prefix.len() || prefix.ends_with(b"/") || path[prefix.len()] == b'/'))
}

/// A path as the access rules read it, so that no spelling an upstream would resolve to a
/// protected path slips past its rule:
/// * percent-decoded until nothing changes (an upstream that decodes twice reads `%252e` as `.`);
/// * backslashes read as slashes, and empty segments dropped (`//admin` is `/admin`);
/// * each segment's `;parameters` dropped: servlet containers ignore them, so behind Tomcat
///   `/public/..;/admin` is `/admin` (the classic `..;/` bypass);
/// * trailing dots and spaces dropped from a segment, as Windows servers do (`/admin.`);
/// * `.` and `..` resolved, after all of the above.
///
/// `None` for a path with a control character once decoded (a NUL ends the path for some
/// servers): such a request is refused outright.
pub fn rule_path(raw: &str) -> Option<String> {
    let mut decoded = raw.to_string();
    for _ in 0..3 {
        let next = percent_encoding::percent_decode_str(&decoded).decode_utf8_lossy().into_owned();
        if next == decoded {
            break;
        }
        decoded = next;
    }
    if decoded.chars().any(char::is_control) {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        let segment = segment.split(';').next().unwrap_or("");
        let segment = if segment == "." || segment == ".." { segment } else { segment.trim_end_matches(['.', ' ']) };
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

impl Rule {
    /// Whether every request this rule matches, `earlier` matches too (so this one can never
    /// apply after it).
    pub fn shadowed_by(&self, earlier: &Rule) -> bool {
        let hosts = earlier.hosts.is_empty()
            || (!self.hosts.is_empty() && self.hosts.iter().all(|h| earlier.hosts.iter().any(|e| h.within(e))));
        let paths = earlier.paths.is_empty()
            || (!self.paths.is_empty() && self.paths.iter().all(|p| earlier.paths.iter().any(|e| path_within(p, e))));
        let methods = earlier.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| earlier.methods.contains(m)));
        let groups = earlier.groups.is_empty()
            || (!self.groups.is_empty() && self.groups.iter().all(|g| earlier.groups.contains(g)));
        let networks = earlier.networks.is_empty()
            || (!self.networks.is_empty()
                && self.networks.iter().all(|n| earlier.networks.iter().any(|e| e.contains(n))));
        hosts && paths && methods && groups && networks
    }
}

/// The rules in order, with an index by exact host so that a request only looks at the rules
/// that can apply to its host: the cost stays flat however many hosts have rules.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    rules: Vec<Rule>,
    /// Rules naming this exact host, by position.
    by_host: HashMap<String, Vec<usize>>,
    /// Rules with a host pattern or no host condition, by position.
    any_host: Vec<usize>,
}

impl AccessRules {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_host = Vec::new();
        for (position, rule) in rules.iter().enumerate() {
            if rule.hosts.is_empty() || rule.hosts.iter().any(|h| h.exact().is_none()) {
                any_host.push(position);
            }
            for host in rule.hosts.iter().filter_map(HostPattern::exact) {
                let positions = by_host.entry(host.to_string()).or_default();
                if positions.last() != Some(&position) {
                    positions.push(position);
                }
            }
        }
        Self { rules, by_host, any_host }
    }

    pub fn all(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules that can apply to `host`, in order.
    pub fn for_host<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a Rule> + 'a {
        let exact = self.by_host.get(host).map_or(&[][..], Vec::as_slice);
        Merged { a: exact, b: &self.any_host }.map(move |position| &self.rules[position])
    }
}

/// Two ascending position lists, merged in order.
struct Merged<'a> {
    a: &'a [usize],
    b: &'a [usize],
}

impl Iterator for Merged<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let list = if take_a { &mut self.a } else { &mut self.b };
        let (first, rest) = list.split_first()?;
        *list = rest;
        Some(*first)
    }
}

/// The hosts Portcullis answers for: `public_url`'s, and those in `hosts` (and the `[sandstorm]`
/// wildcard). A request for any other host gets 421 and is never forwarded.
#[derive(Debug, Clone)]
pub struct Hosts {
    pub main: String,
    pub others: Vec<HostPattern>,
}

impl Hosts {
    pub fn serves(&self, host: &str) -> bool {
        host == self.main || self.others.iter().any(|p| p.matches(host))
    }

    pub fn is_main(&self, host: &str) -> bool {
        host == self.main
    }
}

/// A request's host, as rules and [`Hosts`] compare it: lower case, without the port or a
/// trailing dot. `None` for something that is not a host at all.
pub fn request_host(authority: &str) -> Option<String> {
    match authority.strip_prefix('[') {
        // An IPv6 literal keeps its brackets.
        Some(rest) => Some(format!("[{}]", rest.split(']').next()?.to_ascii_lowercase())),
        // A port is digits; anything else after a colon is not a host at all.
        None => {
            let host = match authority.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                Some(_) => return None,
                None => authority,
            };
            let host = host.trim_end_matches('.');
            (!host.is_empty()).then(|| host.to_ascii_lowercase())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn host_patterns() {
        let any = pattern("*.sandstorm.example.com");
        assert!(any.matches("ui-abc.sandstorm.example.com"));
        assert!(!any.matches("sandstorm.example.com"), "a wildcard is one label, never none");
        assert!(!any.matches("a.b.sandstorm.example.com"), "and never two");
        let api = pattern("api-*.sandstorm.example.com");
        assert!(api.matches("api-0123abcd.sandstorm.example.com"));
        assert!(!api.matches("api-.sandstorm.example.com"));
        assert!(!api.matches("apix.sandstorm.example.com"));
        assert!(pattern("API.Example.COM.").matches("api.example.com"));
        assert!(api.within(&any) && !any.within(&api));
        assert!(pattern("api.sandstorm.example.com").within(&any));
        for bad in ["", "*", "example", "a*b.example.com", "*.*.example.com", "exa mple.com", "-a.example.com"] {
            assert!(HostPattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn paths_are_read_as_any_upstream_might() {
        for (raw, read) in [
            ("/public/..;/admin", "/admin"),
            ("/x/..;/admin", "/admin"),
            ("/admin;jsessionid=1", "/admin"),
            ("/admin.", "/admin"),
            ("/admin%20", "/admin"),
            ("/%2561dmin", "/admin"),
            ("/public/%252e%252e/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a\\..\\admin", "/admin"),
            ("/static/app.js", "/static/app.js"),
            ("/", "/"),
        ] {
            assert_eq!(rule_path(raw).as_deref(), Some(read), "{raw}");
        }
        assert_eq!(rule_path("/admin%00"), None, "a NUL is refused, not read");
        assert_eq!(rule_path("/a%0d%0ab"), None);
        assert!(path_within_any_case("/ADMIN/users", "/admin") && !path_within_any_case("/ADMINS", "/admin"));
    }

    #[test]
    fn paths_match_by_whole_segments() {
        assert!(path_within("/api", "/api"));
        assert!(path_within("/api/v1", "/api"));
        assert!(!path_within("/apis", "/api"));
        assert!(path_within("/anything", "/"));
        assert!(path_within("/static/x.css", "/static/"));
    }

    #[test]
    fn request_hosts_drop_the_port() {
        assert_eq!(request_host("Wiki.Example.com:8443").as_deref(), Some("wiki.example.com"));
        assert_eq!(request_host("127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(request_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(request_host("example.com.").as_deref(), Some("example.com"));
        assert_eq!(request_host("ui-a:b.sandstorm.example"), None, "a port that is not a number");
    }

    fn rule(hosts: &[&str], access: Access) -> Rule {
        Rule {
            source: RuleSource::Operator(0),
            hosts: hosts.iter().map(|h| pattern(h)).collect(),
            paths: Vec::new(),
            methods: Vec::new(),
            groups: Vec::new(),
            networks: Vec::new(),
            access,
            max_age: None,
        }
    }

    #[test]
    fn the_index_keeps_rule_order() {
        let rules = AccessRules::new(vec![
            rule(&["a.example.com"], Access::Deny),
            rule(&["*.example.com"], Access::Bypass),
            rule(&["a.example.com", "b.example.com"], Access::TwoFactor),
            rule(&[], Access::Session),
        ]);
        let order = |host: &str| rules.for_host(host).map(|r| r.access).collect::<Vec<_>>();
        assert_eq!(order("a.example.com"), [Access::Deny, Access::Bypass, Access::TwoFactor, Access::Session]);
        assert_eq!(order("b.example.com"), [Access::Bypass, Access::TwoFactor, Access::Session]);
        assert_eq!(order("c.other.org"), [Access::Bypass, Access::Session]);
    }

    #[test]
    fn a_broader_earlier_rule_shadows_a_later_one() {
        let broad = rule(&["*.example.com"], Access::Bypass);
        let narrow = rule(&["api.example.com"], Access::Deny);
        assert!(narrow.shadowed_by(&broad));
        assert!(!broad.shadowed_by(&narrow));
        let mut with_path = narrow.clone();
        with_path.paths = vec!["/api".into()];
        let mut earlier_path = broad.clone();
        earlier_path.paths = vec!["/api/v1".into()];
        assert!(!with_path.shadowed_by(&earlier_path), "a narrower earlier path leaves room");
        earlier_path.paths = vec!["/".into()];
        assert!(with_path.shadowed_by(&earlier_path));
    }
}
