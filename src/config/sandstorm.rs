//! The `[sandstorm]` preset: the access rules a Sandstorm server needs, one per class of host it
//! answers on. Sandstorm's gateway (`src/sandstorm/gateway.c++`, `GatewayService::requestHelper`)
//! tells the classes apart by the first label under its WILDCARD_HOST; each rule's comment says
//! how Sandstorm itself authenticates that class, which is why it may pass without our login.

use crate::config::access::{Access, HostPattern, Rule, RuleSource};

/// Where the Sandstorm server is: its BASE_URL host (the shell) and WILDCARD_HOST without `*.`.
#[derive(Debug, Clone)]
pub struct SandstormSettings {
    pub main_host: String,
    pub wildcard_parent: String,
}

impl SandstormSettings {
    /// `*.<wildcard_parent>`: the hosts served besides the main one.
    pub fn wildcard(&self) -> HostPattern {
        HostPattern::parse(&format!("*.{}", self.wildcard_parent)).expect("validated when read")
    }
}

/// Length of a static-publishing host's first label (`generateRandomHostname(20)` in the shell;
/// the gateway checks `hostId.size() == 20`).
const PUBLISHING_LABEL: usize = 20;

/// The preset's rules, in order, after the operator's own.
pub fn rules(sandstorm: &SandstormSettings) -> Vec<Rule> {
    let under = |first: &str| HostPattern::parse(&format!("{first}.{}", sandstorm.wildcard_parent)).expect("valid");
    let rule = |class: &'static str, hosts: Vec<HostPattern>, access: Access| Rule {
        source: RuleSource::Sandstorm(class),
        hosts,
        paths: Vec::new(),
        methods: Vec::new(),
        groups: Vec::new(),
        networks: Vec::new(),
        access,
        max_age: None,
    };
    vec![
        // Per-grain UI hosts: each needs Sandstorm's own `sandstorm-sid` session cookie, which
        // only the (gated) shell can mint (`getUiBridge`; the shell's `openSession`). A login
        // redirect here would break the grain's frame. WebSockets pass.
        rule("grain UI hosts (ui-*)", vec![under("ui-*")], Access::Bypass),
        // API hosts: every request carries a grain's API token (Authorization: Bearer or Basic, or
        // a /.sandstorm-token/ path), checked by Sandstorm (`getAuthToken`); clients are git,
        // CalDAV and phone apps that cannot sign in interactively.
        rule("API hosts (api, api-*)", vec![under("api"), under("api-*")], Access::Bypass),
        // Static assets: public and side-effect free; uploads need a one-time token in the path
        // (`serveStaticAsset` in pre-meteor.js).
        rule("static assets (static)", vec![under("static")], Access::Bypass),
        // The admin panel's wildcard self-test: `GET /` answers "Self-test OK." and nothing else.
        rule("self-test (selftest-*)", vec![under("selftest-*")], Access::Bypass),
        // Static web publishing: a grain's public /var/www, on a 20-character host.
        rule(
            "static publishing (20-character hosts)",
            vec![HostPattern::label_of_length(PUBLISHING_LABEL, &sandstorm.wildcard_parent)],
            Access::Bypass,
        ),
        // The shell, Meteor's DDP WebSocket included, the separate DDP host if one is used, and
        // payments: signed in, with the accounts' 2FA policy.
        rule(
            "the shell (main host, ddp, payments)",
            vec![HostPattern::parse(&sandstorm.main_host).expect("valid"), under("ddp"), under("payments")],
            Access::Session,
        ),
    ]
}
