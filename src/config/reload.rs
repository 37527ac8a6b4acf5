//! Reloading `proxy.toml` while the proxy runs (SIGHUP, or the file changing).
//!
//! A new file is validated exactly like the first one; if it is wrong, the running configuration
//! stays and the problems are logged. If it is right, the keys that are read per request take
//! effect at once. The others were used to build long-lived parts at start-up (listening sockets,
//! the upstream client pools, the session store, keys, the mail queue): for those the running
//! values stay, and the log names each changed key as needing a restart, so a reload never leaves
//! the proxy half in one configuration and half in another.

use super::Config;

/// Top-level keys and sections that take effect on reload.
pub const LIVE_KEYS: [&str; 4] = ["mfa", "trusted_proxies", "clock", "admin"];

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

/// Combines the running configuration with a newly loaded (and therefore valid) one.
pub fn merge(running: &Config, new: Config) -> Reloaded {
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
    config.mfa = new.mfa;
    config.trusted_proxies = new.trusted_proxies;
    config.clock = new.clock;
    config.admin = new.admin;
    for key in LIVE_KEYS {
        match new.table.get(key) {
            Some(value) => config.table.insert(key.to_string(), value.clone()),
            None => config.table.remove(key),
        };
    }
    Reloaded { config, applied, needs_restart }
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
        let reloaded = merge(&running, new);
        assert_eq!(reloaded.config.mfa.policy, MfaPolicy::Required);
        assert_eq!(reloaded.config.session.idle_timeout, running.session.idle_timeout);
        assert_eq!(reloaded.applied, ["mfa"]);
        assert_eq!(reloaded.needs_restart, ["session"]);

        // Until the restart, the same difference is reported again; the live part is settled.
        let again = merge(&reloaded.config, config("[mfa]\npolicy = \"required\"\n[session]\nidle_timeout = \"2h\"\n"));
        assert!(again.applied.is_empty());
        assert_eq!(again.needs_restart, ["session"]);
    }

    #[test]
    fn removing_a_live_section_restores_its_defaults() {
        let running = config("[mfa]\npolicy = \"required\"\n");
        let reloaded = merge(&running, config(""));
        assert_eq!(reloaded.config.mfa.policy, MfaPolicy::Optional);
        assert_eq!(reloaded.applied, ["mfa"]);
        assert!(reloaded.needs_restart.is_empty());
    }
}
