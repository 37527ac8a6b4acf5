//! The checks of `[store]`.

use std::time::Duration;

use super::Validator;
use crate::base::tls;
use crate::config::raw::RawStore;
use crate::config::store::{RedisSettings, StoreSettings};

/// A key prefix: one word and a colon. No glob characters (`SCAN MATCH` reads the prefix as a
/// pattern), and no colon inside: with `a:` and `a:sessions:` allowed side by side, one install's
/// scan would read the other's records as its own.
fn valid_prefix(prefix: &str) -> bool {
    let Some(word) = prefix.strip_suffix(':') else { return false };
    (1..=63).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The URL as it may be shown: a password in it (which is refused anyway) replaced by `***`,
/// even when the rest does not parse.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

impl Validator {
    pub(super) fn store(&mut self, raw: RawStore) -> StoreSettings {
        match raw.backend.as_deref().unwrap_or("sled") {
            "sled" => {
                for (key, given) in [
                    ("store.url", raw.url.is_some()),
                    ("store.password_file", raw.password_file.is_some()),
                    ("store.key_prefix", raw.key_prefix.is_some()),
                    ("store.ca_file", raw.ca_file.is_some()),
                    ("store.allow_plaintext", raw.allow_plaintext.is_some()),
                    ("store.offline_grace", raw.offline_grace.is_some()),
                ] {
                    if given {
                        self.problem(
                            key,
                            None,
                            "belongs to the Redis store, but store.backend is \"sled\"",
                            "set store.backend = \"redis\", or remove the key",
                        );
                    }
                }
                StoreSettings::Embedded
            }
            "redis" => self.redis(raw).map_or(StoreSettings::Embedded, StoreSettings::Redis),
            other => {
                self.problem(
                    "store.backend",
                    Some(other),
                    "not a store",
                    "write \"sled\" (the embedded default) or \"redis\" (shared by several replicas)",
                );
                StoreSettings::Embedded
            }
        }
    }

    fn redis(&mut self, raw: RawStore) -> Option<RedisSettings> {
        let url = self.required("store.url", &raw.url, "redis://127.0.0.1:6379/0").map(str::to_string);
        let url = url.and_then(|url| self.redis_url(url, raw.allow_plaintext.unwrap_or(false)));
        let password = raw.password_file.as_deref().and_then(|file| {
            let path = self.path(&self.base, file);
            self.password_file("store.password_file", &path)
        });
        let key_prefix = raw.key_prefix.unwrap_or_else(|| "portcullis:".into());
        if !valid_prefix(&key_prefix) {
            self.problem(
                "store.key_prefix",
                Some(&key_prefix),
                "must be one word (letters, digits, - _ .) and a colon",
                "write something like \"portcullis:\" (the default), or \"wiki:\" and \"dashboard:\" for two installs sharing one server",
            );
        }
        let mut ca_pem = None;
        if let Some(file) = &raw.ca_file {
            let path = self.path(&self.base, file);
            let read = tls::ca_certificates(&path)
                .map_err(|e| e.to_string())
                .and_then(|_| std::fs::read(&path).map_err(|e| e.to_string()));
            match read {
                Ok(pem) => ca_pem = Some(pem),
                Err(e) => self.problem(
                    "store.ca_file",
                    Some(&path.display().to_string()),
                    &e,
                    "point it at a PEM file with the CA certificate(s) that signed the Redis server's certificate",
                ),
            }
        }
        let offline_grace =
            self.duration("store.offline_grace", &raw.offline_grace, "30s", Duration::ZERO, Duration::from_secs(600));
        Some(RedisSettings { url: url?, password, key_prefix, ca_pem, offline_grace })
    }

    fn redis_url(&mut self, url: String, allow_plaintext: bool) -> Option<String> {
        let Ok(parsed) = url::Url::parse(&url) else {
            self.problem("store.url", Some(&shown(&url)), "not a URL", "write it like \"redis://127.0.0.1:6379/0\"");
            return None;
        };
        if parsed.password().is_some() {
            // The password would sit in proxy.toml and in every message that names the URL.
            self.problem(
                "store.url",
                Some(&shown(&url)),
                "holds a password",
                "move the password to a file named by store.password_file (chmod 600) and drop it from the URL",
            );
            return None;
        }
        let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        match parsed.scheme() {
            "rediss" if !host.is_empty() => Some(url),
            "redis" if !host.is_empty() => {
                // Sessions, factor records and bans travel on this connection: whoever can change
                // them in transit can sign in as anyone.
                if !super::is_loopback(&host) && !allow_plaintext {
                    self.problem(
                        "store.url",
                        Some(&url),
                        "sends every session and factor record unencrypted and unauthenticated over the network",
                        "use rediss:// (TLS), or, on a private network only you control, add store.allow_plaintext = true",
                    );
                    return None;
                }
                Some(url)
            }
            _ => {
                self.problem(
                    "store.url",
                    Some(&url),
                    "not a Redis URL",
                    "write it like \"redis://127.0.0.1:6379/0\" or \"rediss://redis.example.com:6380/0\"",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::store::StoreSettings;

    fn problems(store: &str) -> Vec<String> {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\npublic_url = \"http://127.0.0.1:2\"\ndata_dir = \"d\"\n[store]\n{store}"
        );
        match crate::config::parse(&text, std::path::Path::new("/tmp/proxy.toml")) {
            Ok(_) => Vec::new(),
            Err(crate::config::ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| format!("{}: {}", p.key, p.problem)).collect()
            }
            Err(other) => vec![other.to_string()],
        }
    }

    #[test]
    fn the_default_is_the_embedded_store() {
        let text = "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\npublic_url = \"http://127.0.0.1:2\"\ndata_dir = \"d\"\n";
        let config = crate::config::parse(text, std::path::Path::new("/tmp/proxy.toml")).expect("valid");
        assert!(matches!(config.store, StoreSettings::Embedded));
    }

    #[test]
    fn a_loopback_redis_is_taken_with_its_defaults() {
        let text = "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\npublic_url = \"http://127.0.0.1:2\"\ndata_dir = \"d\"\n[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/3\"\n";
        let config = crate::config::parse(text, std::path::Path::new("/tmp/proxy.toml")).expect("valid");
        let StoreSettings::Redis(redis) = config.store else { panic!("not redis") };
        assert_eq!(redis.key_prefix, "portcullis:");
        assert_eq!(redis.offline_grace, std::time::Duration::from_secs(30));
        assert!(redis.password.is_none());
    }

    #[test]
    fn every_mistake_is_named_at_once() {
        let found = problems(
            "backend = \"redis\"\nurl = \"redis://cache.internal:6379\"\nkey_prefix = \"a*\"\noffline_grace = \"1h\"\n",
        );
        assert!(found.iter().any(|p| p.starts_with("store.url: sends every session")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("store.key_prefix")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("store.offline_grace")), "{found:?}");
    }

    #[test]
    fn plaintext_off_the_host_needs_saying_so_and_tls_does_not() {
        assert!(
            problems("backend = \"redis\"\nurl = \"redis://cache.internal:6379\"\nallow_plaintext = true\n").is_empty()
        );
        assert!(problems("backend = \"redis\"\nurl = \"rediss://cache.internal:6380/0\"\n").is_empty());
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_showing_it() {
        let found = problems("backend = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n");
        assert!(found.iter().any(|p| p == "store.url: holds a password"), "{found:?}");
        assert!(!found.iter().any(|p| p.contains("hunter2")), "{found:?}");
    }

    #[test]
    fn a_password_is_never_shown_even_in_a_url_that_does_not_parse() {
        for url in
            ["redis://:hunter2@127.0.0.1:99999/0", "redis://user:hunter2@/0", "redis+unix://:hunter2@/tmp/r.sock"]
        {
            let found = problems(&format!("backend = \"redis\"\nurl = \"{url}\"\n"));
            assert!(!found.is_empty(), "{url}");
            assert!(!found.iter().any(|p| p.contains("hunter2")), "{found:?}");
        }
        assert_eq!(super::shown("redis://me:hunter2@host:1/0"), "redis://me:***@host:1/0");
    }

    #[test]
    fn prefixes_are_one_word_so_two_installs_never_nest() {
        for bad in ["a*:", "portcullis:sessions:", "portcullis", ":", "a b:"] {
            let found =
                problems(&format!("backend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{bad}\"\n"));
            assert!(found.iter().any(|p| p.starts_with("store.key_prefix")), "{bad}: {found:?}");
        }
        assert!(
            problems("backend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"wiki-2.prod_x:\"\n")
                .is_empty()
        );
    }

    #[test]
    fn redis_keys_under_the_embedded_store_and_unknown_backends_are_refused() {
        let found = problems("url = \"redis://127.0.0.1:6379\"\n");
        assert!(found.iter().any(|p| p.starts_with("store.url: belongs to the Redis store")), "{found:?}");
        let found = problems("backend = \"postgres\"\n");
        assert!(found.iter().any(|p| p.starts_with("store.backend: not a store")), "{found:?}");
    }
}
