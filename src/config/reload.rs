//! Reloading `proxy.toml` while the proxy runs (SIGHUP, or the file changing).
//!
//! A new file is validated exactly like the first one; if it is wrong, the running configuration
//! stays and the problems are logged. If it is right, the keys that are read per request take
//! effect at once. The others were used to build long-lived parts at start-up (listening sockets,
//! the upstream client pools, the session store, keys, the mail queue): for those the running
//! values stay, and the log names each changed key as needing a restart, so a reload never leaves
//! the proxy half in one configuration and half in another.

use super::Config;

/// Top-level keys and sections that take effect on reload. (`trusted_proxies` is not one: each
/// worker's forwarder holds its own copy for the `X-Forwarded-*` headers it writes.)
pub const LIVE_KEYS: [&str; 7] = ["mfa", "clock", "admin", "hosts", "rule", "sandstorm", "webauthn"];

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// The configuration now in force: the new file's live keys, the running restart-only ones.
    pub config: Config,
    /// Live keys whose value changed.
    pub applied: Vec<String>,
    /// Restart-only keys whose value changed; they keep their running value until a restart.
    pub needs_restart: Vec<String>,
}

/// Why a valid file still cannot be applied while running.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "codes by email (mfa.email_otp = true, or an email provider) need a mail transport, but the running notify.transport is \"off\" and changes only at a restart. Fix: restart to apply both, or keep codes by email off"
    )]
    EmailWithoutMail,
}

/// Combines the running configuration with a newly loaded (and therefore valid) one.
pub fn merge(running: &Config, new: Config) -> Result<Reloaded, ReloadError> {
    let mut keys: Vec<&String> = running.table.keys().chain(new.table.keys()).collect();
    keys.sort();
    keys.dedup();
    let (mut applied, mut needs_restart) = (Vec::new(), Vec::new());
    for key in keys {
        if running.table.get(key) != new.table.get(key) {
            if LIVE_KEYS.contains(&key.as_str()) {
                applied.push(key.clone());
            } else {
                needs_restart.push(key.clone());
            }
        }
    }
    let mut config = running.clone();
    // The new file was checked as a whole; the combination of its live keys with the running
    // restart-only ones is checked here, so a reload never accepts what a start would refuse.
    if new.mfa.providers.needing_mail().next().is_some()
        && matches!(running.notify.transport, crate::config::notify::Transport::Off)
    {
        return Err(ReloadError::EmailWithoutMail);
    }
    config.mfa = new.mfa;
    config.clock = new.clock;
    config.admin = new.admin;
    config.hosts = new.hosts;
    config.rules = new.rules;
    config.webauthn = new.webauthn;
    // Whether keys are offered follows `[webauthn]`, the *running* public URL (restart-only, not
    // the one in the new file), and an active webauthn provider, like every kind.
    config.mfa.security_keys = config.webauthn.enabled
        && config.public_url.domain().is_some()
        && config.mfa.policy != crate::config::MfaPolicy::Disabled
        && config.mfa.providers.active(crate::config::providers::ProviderKind::Webauthn).is_some();
    for key in LIVE_KEYS {
        match new.table.get(key) {
            Some(value) => config.table.insert(key.to_string(), value.clone()),
            None => config.table.remove(key),
        };
    }
    Ok(Reloaded { config, applied, needs_restart })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{MfaPolicy, parse};

    const BASE: &str = "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\npublic_url = \"http://127.0.0.1:8080\"\ndata_dir = \"/tmp/pc\"\nusers_file = \"/tmp/pc/users.toml\"\n";

    fn config(extra: &str) -> Config {
        parse(&format!("{BASE}{extra}"), Path::new("/etc/portcullis/proxy.toml")).unwrap()
    }

    #[test]
    fn live_keys_apply_and_restart_only_keys_keep_their_running_value() {
        let running = config("[mfa]\npolicy = \"optional\"\n[session]\nidle_timeout = \"1h\"\n");
        let new = config("[mfa]\npolicy = \"required\"\n[session]\nidle_timeout = \"2h\"\n");
        let reloaded = merge(&running, new).unwrap();
        assert_eq!(reloaded.config.mfa.policy, MfaPolicy::Required);
        assert_eq!(reloaded.config.session.idle_timeout, running.session.idle_timeout);
        assert_eq!(reloaded.applied, ["mfa"]);
        assert_eq!(reloaded.needs_restart, ["session"]);

        // Until the restart, the same difference is reported again; the live part is settled.
        let again = merge(&reloaded.config, config("[mfa]\npolicy = \"required\"\n[session]\nidle_timeout = \"2h\"\n"))
            .unwrap();
        assert!(again.applied.is_empty());
        assert_eq!(again.needs_restart, ["session"]);
    }

    #[test]
    fn removing_a_live_section_restores_its_defaults() {
        let running = config("[mfa]\npolicy = \"required\"\n");
        let reloaded = merge(&running, config("")).unwrap();
        assert_eq!(reloaded.config.mfa.policy, MfaPolicy::Optional);
        assert_eq!(reloaded.applied, ["mfa"]);
        assert!(reloaded.needs_restart.is_empty());
    }

    #[test]
    fn a_live_key_that_needs_a_restart_only_key_is_refused() {
        let running = config("[notify]\ntransport = \"off\"\n");
        let new = config("[mfa]\nemail_otp = true\n");
        assert!(matches!(merge(&running, new), Err(ReloadError::EmailWithoutMail)));
    }

    #[test]
    fn security_keys_switch_live_but_follow_the_running_public_url() {
        let named = "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"/tmp/pc\"\n";
        let running = parse(named, Path::new("/p")).unwrap();
        assert!(running.mfa.security_keys);
        let off = parse(&format!("{named}[webauthn]\nenabled = false\n"), Path::new("/p")).unwrap();
        let reloaded = merge(&running, off).unwrap();
        assert!(!reloaded.config.mfa.security_keys && !reloaded.config.webauthn.enabled);
        assert_eq!(reloaded.applied, ["webauthn"]);
        // A new public URL waits for a restart, and so does what depends on it.
        let on_an_address = merge(&running, config("")).unwrap();
        assert!(on_an_address.needs_restart.contains(&"public_url".to_string()));
        assert!(on_an_address.config.mfa.security_keys, "still the running (named) URL");
    }

    #[test]
    fn trusted_proxies_need_a_restart() {
        let running = config("");
        let reloaded = merge(&running, config("trusted_proxies = [\"10.0.0.0/8\"]\n")).unwrap();
        assert!(reloaded.config.trusted_proxies.is_empty());
        assert_eq!(reloaded.needs_restart, ["trusted_proxies"]);
    }
}
