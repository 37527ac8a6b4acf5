//! `portcullis explain`: which access rule a request would meet, why each earlier one did not
//! apply, and what the proxy would do; or, with `--rules`, every rule in force (the
//! `[sandstorm]` preset's included).

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use http::Method;

use crate::config::access::{Access, Rule, request_host, rule_path};
use crate::domain::access::{self, RequestFacts};
use crate::domain::users::UserDirectory;

/// What `explain` was asked.
pub struct Question<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub user: Option<&'a str>,
    pub from: Option<IpAddr>,
}

/// One rule in a line: where it came from and what it matches.
fn describe(rule: &Rule) -> String {
    let mut parts = Vec::new();
    let list = |items: Vec<String>| items.join(", ");
    if !rule.hosts.is_empty() {
        parts.push(format!("hosts {}", list(rule.hosts.iter().map(ToString::to_string).collect())));
    }
    if !rule.paths.is_empty() {
        parts.push(format!("paths {}", list(rule.paths.clone())));
    }
    if !rule.methods.is_empty() {
        parts.push(format!("methods {}", list(rule.methods.iter().map(ToString::to_string).collect())));
    }
    if !rule.groups.is_empty() {
        parts.push(format!("groups {}", list(rule.groups.clone())));
    }
    if !rule.networks.is_empty() {
        parts.push(format!("networks {}", list(rule.networks.iter().map(ToString::to_string).collect())));
    }
    let what = if parts.is_empty() { "every request".to_string() } else { parts.join("; ") };
    let age = rule.max_age.map_or(String::new(), |age| format!(", second factor at most {}s old", age.as_secs()));
    format!("{}: {what} → {}{age}", rule.source, rule.access.as_str())
}

/// What the proxy does for a decision, in words.
fn consequence(access: Access) -> &'static str {
    match access {
        Access::Bypass => "forwarded with no session check and no identity headers",
        Access::Session => "needs a full session (the account's 2FA policy decides what that takes)",
        Access::TwoFactor => "needs a full session that proved a second factor",
        Access::Deny => "refused with 403; nothing is forwarded",
    }
}

pub fn rules(config_path: &Path) -> ExitCode {
    let config = match crate::config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "hosts: {} (main){}",
        config.hosts.main,
        config.hosts.others.iter().map(|h| format!(", {h}")).collect::<String>()
    );
    if config.rules.is_empty() {
        println!("no rules: every request needs a full session, as the account's 2FA policy decides");
    }
    for rule in config.rules.all() {
        println!("{}", describe(rule));
    }
    println!("otherwise: session");
    ExitCode::SUCCESS
}

pub fn explain(config_path: &Path, question: Question<'_>) -> ExitCode {
    let config = match crate::config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(method) = Method::from_bytes(question.method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("error: {} is not an HTTP method", question.method);
        return ExitCode::FAILURE;
    };
    let Some((host, path)) = url::Url::parse(question.url)
        .ok()
        .and_then(|url| Some((request_host(url.host_str()?)?, rule_path(url.path())?)))
    else {
        eprintln!(
            "error: {} is not a URL the proxy would pass on; write it like https://wiki.example.com/admin",
            question.url
        );
        return ExitCode::FAILURE;
    };
    if !config.hosts.serves(&host) {
        println!("{host} is not a host this proxy serves: 421, nothing is forwarded");
        return ExitCode::SUCCESS;
    }
    if path.starts_with("/.portcullis/") || path == "/.portcullis" {
        println!("{path} is one of the proxy's own pages: answered by Portcullis, never forwarded");
        return ExitCode::SUCCESS;
    }
    let user = match question.user {
        None => None,
        Some(name) => match UserDirectory::load(&config.users_file).map(|users| users.get(name)) {
            Ok(Some(user)) => Some(user),
            Ok(None) => {
                eprintln!("error: there is no user `{name}` in {}", config.users_file.display());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let client = question.from.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let facts = RequestFacts { host: &host, path: &path, method: &method, client };
    let (passed, decision) = access::explain(&config.rules, &facts, user.as_deref());
    let who = user.as_ref().map_or("no session".to_string(), |u| format!("signed in as {}", u.name));
    println!("{method} {host}{path} from {client}, {who}");
    for (rule, why) in passed {
        println!("  skipped {}: {why}", describe(rule));
    }
    match decision.rule {
        Some(rule) => println!("  matched {}", describe(rule)),
        None => println!("  no rule matched: the default, session"),
    }
    println!("decision: {} ({})", decision.access.as_str(), consequence(decision.access));
    ExitCode::SUCCESS
}
