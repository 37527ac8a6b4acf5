//! The checks of `hosts`, `[[rule]]` and `[sandstorm]`: every rule named by its number, each
//! problem with its fix.

use std::time::Duration;

use http::Method;
use ipnet::IpNet;

use super::Validator;
use crate::config::access::{
    Access, AccessRules, HostPattern, Hosts, Rule, RuleSource, path_within, request_host, rule_path,
};
use crate::config::raw::{RawRule, RawSandstorm};
use crate::config::sandstorm::{self, SandstormSettings};
use crate::config::settings::PublicUrl;

impl Validator {
    /// The hosts served, and the rules in force (the operator's, then the preset's).
    pub(super) fn access(
        &mut self,
        hosts: Option<Vec<String>>,
        raw_rules: Vec<RawRule>,
        raw_sandstorm: Option<RawSandstorm>,
        public_url: Option<&PublicUrl>,
    ) -> (Hosts, AccessRules) {
        let main =
            public_url.and_then(|u| u.url().host_str().and_then(request_host)).unwrap_or_else(|| "localhost".into());
        let mut others = Vec::new();
        for (n, text) in hosts.unwrap_or_default().iter().enumerate() {
            match HostPattern::parse(text) {
                Some(pattern) => others.push(pattern),
                None => self.problem(
                    &format!("hosts[{n}]"),
                    Some(text),
                    "not a host name or pattern",
                    "write a name like \"wiki.example.com\", or a pattern like \"*.example.com\" or \"api-*.example.com\" (no scheme, no port)",
                ),
            }
        }
        let sandstorm = raw_sandstorm.and_then(|raw| self.sandstorm(raw, &main));
        if let Some(sandstorm) = &sandstorm {
            others.push(sandstorm.wildcard());
        }
        let served = Hosts { main, others };

        let mut rules = Vec::new();
        for (position, raw) in raw_rules.into_iter().enumerate() {
            if let Some(rule) = self.rule(position + 1, raw, &served) {
                rules.push(rule);
            }
        }
        for (later, rule) in rules.iter().enumerate() {
            if let Some(earlier) = rules[..later].iter().find(|earlier| rule.shadowed_by(earlier)) {
                self.problem(
                    &rule.source.to_string(),
                    None,
                    &format!("can never apply: {} comes first and matches every request this one does", earlier.source),
                    "move it before that rule, or remove it",
                );
            }
        }
        if let Some(sandstorm) = &sandstorm {
            rules.extend(sandstorm::rules(sandstorm));
        }
        (served, AccessRules::new(rules))
    }

    fn sandstorm(&mut self, raw: RawSandstorm, main: &str) -> Option<SandstormSettings> {
        let base = self.required("sandstorm.base_url", &raw.base_url, "https://sandstorm.example.com");
        let wildcard = self.required("sandstorm.wildcard_host", &raw.wildcard_host, "*.sandstorm.example.com");
        let (base, wildcard) = (base?, wildcard);
        let base_host = url::Url::parse(base).ok().and_then(|u| u.host_str().and_then(request_host));
        let Some(base_host) = base_host else {
            self.problem(
                "sandstorm.base_url",
                Some(base),
                "not a URL",
                "write Sandstorm's BASE_URL, like \"https://sandstorm.example.com\"",
            );
            return None;
        };
        if base_host != main {
            self.problem(
                "sandstorm.base_url",
                Some(base),
                &format!("its host is not public_url's ({main}): Portcullis answers for Sandstorm's shell on its own main host"),
                "set public_url to Sandstorm's BASE_URL",
            );
            return None;
        }
        let wildcard = wildcard?;
        // WILDCARD_HOST may carry a port (`*.local.sandstorm.io:6080`); hosts are compared without.
        let without_port = request_host(wildcard).unwrap_or_default();
        let parent = without_port.strip_prefix("*.").filter(|p| HostPattern::parse(&format!("x.{p}")).is_some());
        let Some(parent) = parent else {
            self.problem(
                "sandstorm.wildcard_host",
                Some(wildcard),
                "not a wildcard host",
                "write Sandstorm's WILDCARD_HOST, like \"*.sandstorm.example.com\"",
            );
            return None;
        };
        if HostPattern::parse(&base_host).is_none() {
            self.problem(
                "sandstorm.base_url",
                Some(base),
                "its host is not a name or an IPv4 address",
                "use Sandstorm's BASE_URL with a host name",
            );
            return None;
        }
        let settings = SandstormSettings { main_host: base_host, wildcard_parent: parent.to_string() };
        // The shell must never fall under a class the preset lets through (a BASE_URL of
        // api.example.com with a wildcard of *.example.com would open it to everyone).
        let opened = sandstorm::rules(&settings)
            .into_iter()
            .filter(|rule| rule.access == Access::Bypass)
            .find(|rule| rule.hosts.iter().any(|h| h.matches(&settings.main_host)));
        if let Some(rule) = opened {
            self.problem(
                "sandstorm.base_url",
                Some(base),
                &format!("the shell's host is also one of Sandstorm's {}, which pass without a session", rule.source),
                "give the shell a host outside the wildcard's special names (not api, static, ui-*, selftest-* or 20 letters)",
            );
            return None;
        }
        Some(settings)
    }

    fn rule(&mut self, number: usize, raw: RawRule, served: &Hosts) -> Option<Rule> {
        let name = RuleSource::Operator(number).to_string();
        let key = |field: &str| format!("{name}.{field}");
        let mut ok = true;

        let mut hosts = Vec::new();
        for text in raw.hosts.unwrap_or_default() {
            match HostPattern::parse(&text) {
                Some(pattern) if !covered(&pattern, served) => {
                    self.problem(
                        &key("hosts"),
                        Some(&text),
                        "not a host Portcullis serves",
                        "add it to `hosts` (or use public_url's host); requests for other hosts are refused with 421 before any rule",
                    );
                    ok = false;
                }
                Some(pattern) => hosts.push(pattern),
                None => {
                    self.problem(
                        &key("hosts"),
                        Some(&text),
                        "not a host name or pattern",
                        "write \"wiki.example.com\", \"*.example.com\" or \"api-*.example.com\"",
                    );
                    ok = false;
                }
            }
        }
        let mut paths = Vec::new();
        for text in raw.paths.unwrap_or_default() {
            // Read as requests are (`rule_path`), so `/a/./b`, `/private%20files` and
            // `/wp-admin/` mean what they say.
            match rule_path(&text).filter(|_| text.starts_with('/') && !text.contains(['?', '#', '*'])) {
                Some(path) => paths.push(path),
                None if text.contains('*') => {
                    self.problem(
                        &key("paths"),
                        Some(&text),
                        "paths are prefixes, not patterns",
                        "write it without *: \"/api\" covers /api and everything below it",
                    );
                    ok = false;
                }
                None => {
                    self.problem(
                        &key("paths"),
                        Some(&text),
                        "not a path",
                        "write a path prefix starting with /, like \"/api\"",
                    );
                    ok = false;
                }
            }
        }
        let mut methods = Vec::new();
        for text in raw.methods.unwrap_or_default() {
            match Method::from_bytes(text.trim().to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => {
                    self.problem(&key("methods"), Some(&text), "not a method", "write methods like \"GET\", \"POST\"");
                    ok = false;
                }
            }
        }
        let groups: Vec<String> = raw.groups.unwrap_or_default();
        if groups.iter().any(|g| g.trim().is_empty()) {
            self.problem(&key("groups"), None, "an empty group name", "name the groups, or remove the key");
            ok = false;
        }
        let mut networks: Vec<IpNet> = Vec::new();
        for text in raw.networks.unwrap_or_default() {
            match text.parse::<IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from)) {
                Ok(net) => networks.push(net),
                Err(_) => {
                    self.problem(
                        &key("networks"),
                        Some(&text),
                        "not a network",
                        "write \"10.0.0.0/8\", \"2001:db8::/32\" or one address",
                    );
                    ok = false;
                }
            }
        }
        let access = match raw.access.as_deref() {
            None => {
                self.problem(
                    &key("access"),
                    None,
                    "missing",
                    "say what the rule does: bypass, session, two_factor or deny",
                );
                return None;
            }
            Some(text) => match Access::parse(text) {
                Some(access) => access,
                None => {
                    self.problem(
                        &key("access"),
                        Some(text),
                        "unknown access",
                        "use one of bypass, session, two_factor, deny",
                    );
                    return None;
                }
            },
        };
        let max_age = raw.max_age.as_ref().map(|_| {
            self.duration(
                &key("max_age"),
                &raw.max_age,
                "10m",
                Duration::from_secs(10),
                Duration::from_secs(30 * 24 * 3600),
            )
        });
        if max_age.is_some() && matches!(access, Access::Bypass | Access::Deny) {
            self.problem(
                &key("max_age"),
                raw.max_age.as_deref(),
                &format!("means nothing with access = \"{}\": no session is checked", access.as_str()),
                "remove max_age, or use access = \"session\" or \"two_factor\"",
            );
            ok = false;
        }
        if access == Access::Bypass && !groups.is_empty() {
            self.problem(
                &key("groups"),
                Some(&groups.join(", ")),
                "a bypass rule has no session, so it cannot know anyone's groups",
                "remove groups, or use access = \"session\" for members",
            );
            ok = false;
        }
        let reaches_main = hosts.is_empty() || hosts.iter().any(|h| h.matches(&served.main));
        if access == Access::Bypass
            && reaches_main
            && paths.iter().any(|p| path_within(p, "/.portcullis") || path_within("/.portcullis", p) && p != "/")
        {
            self.problem(
                &key("paths"),
                Some(&paths.join(", ")),
                "bypasses the proxy's own pages under /.portcullis/",
                "those pages are never forwarded; remove the /.portcullis paths from this rule",
            );
            ok = false;
        }
        ok.then_some(Rule {
            source: RuleSource::Operator(number),
            hosts,
            paths,
            methods,
            groups,
            networks,
            access,
            max_age,
        })
    }
}

/// Whether every host `pattern` matches is one Portcullis serves.
fn covered(pattern: &HostPattern, served: &Hosts) -> bool {
    match pattern.exact() {
        Some(host) => served.serves(host),
        None => served.others.iter().any(|other| pattern.within(other)),
    }
}
