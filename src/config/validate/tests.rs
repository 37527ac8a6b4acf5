use super::*;
use crate::config::notify::{SmtpSecurity, SmtpSettings, Transport};

fn parse_ok(text: &str) -> Config {
    parse(text, Path::new("/etc/portcullis/proxy.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, Path::new("/etc/portcullis/proxy.toml")) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

const MINIMAL: &str = r#"
    upstream = "http://127.0.0.1:8080"
    public_url = "https://app.example.com"
    data_dir = "data"
"#;

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.listen, vec!["127.0.0.1:8443".parse::<SocketAddr>().unwrap()]);
    assert_eq!(c.data_dir, Path::new("/etc/portcullis/data"));
    assert_eq!(c.users_file, Path::new("/etc/portcullis/users.toml"));
    assert_eq!(c.identity.secret_file, Path::new("/etc/portcullis/data/identity.key"));
    assert_eq!(c.session.cookie_name, "__Host-portcullis");
    assert_eq!(c.mfa.policy, MfaPolicy::Optional);
    assert_eq!(c.identity.audience, "https://app.example.com");
    assert_eq!(c.session.idle_timeout, Duration::from_secs(30 * 60));
    assert!(c.proxy.upstream_keepalive, "upstream connections are kept unless told");
    // Below Node.js's and Apache's own 5 s, so the proxy closes a kept connection first.
    assert_eq!(c.proxy.pool_idle_timeout, Duration::from_secs(4));
    assert!(!parse_ok(&format!("{MINIMAL}\n[proxy]\nupstream_keepalive = false")).proxy.upstream_keepalive);
}

#[test]
fn one_address_gets_an_eighth_of_the_connections_unless_told_and_never_more_than_all() {
    assert_eq!(parse_ok(MINIMAL).limits.max_connections_per_address, 1250);
    let small = parse_ok(&format!("{MINIMAL}\n[limits]\nmax_connections = 100"));
    assert_eq!(small.limits.max_connections_per_address, 32, "room for an office behind one address");
    let tiny = parse_ok(&format!("{MINIMAL}\n[limits]\nmax_connections = 3"));
    assert_eq!(tiny.limits.max_connections_per_address, 3);
    let found = problems(&format!("{MINIMAL}\n[limits]\nmax_connections = 100\nmax_connections_per_address = 101"));
    assert!(has(&found, "limits.max_connections_per_address", "from 1 to 100"), "{found:?}");
}

#[test]
fn one_ipv6_48_gets_two_addresses_worth_unless_told_between_one_and_all() {
    assert_eq!(parse_ok(MINIMAL).limits.max_connections_per_ipv6_48, 2500);
    let small = parse_ok(&format!("{MINIMAL}\n[limits]\nmax_connections = 100"));
    assert_eq!(small.limits.max_connections_per_ipv6_48, 64);
    let tiny = parse_ok(&format!("{MINIMAL}\n[limits]\nmax_connections = 3"));
    assert_eq!(tiny.limits.max_connections_per_ipv6_48, 3, "never more than the budget");
    let told = parse_ok(&format!("{MINIMAL}\n[limits]\nmax_connections_per_ipv6_48 = 1250"));
    assert_eq!(told.limits.max_connections_per_ipv6_48, 1250, "as small as one address's share");
    let below =
        problems(&format!("{MINIMAL}\n[limits]\nmax_connections_per_address = 40\nmax_connections_per_ipv6_48 = 39"));
    assert!(
        has(&below, "limits.max_connections_per_ipv6_48", "from limits.max_connections_per_address (40)"),
        "{below:?}"
    );
    // One message for every value out of range, naming both ends.
    for value in ["0", "-1", "31", "101"] {
        let toml = format!("{MINIMAL}\n[limits]\nmax_connections = 100\nmax_connections_per_ipv6_48 = {value}");
        let found = problems(&toml);
        let fix = "from limits.max_connections_per_address (32) to limits.max_connections (100)";
        assert!(has(&found, "limits.max_connections_per_ipv6_48", fix), "{value}: {found:?}");
    }
}

#[test]
fn upstream_connections_receive_into_a_fixed_buffer_of_16_kib_to_64_mib() {
    assert_eq!(parse_ok(MINIMAL).proxy.upstream_receive_buffer, 512 << 10);
    let told = parse_ok(&format!("{MINIMAL}\n[proxy]\nupstream_receive_buffer_bytes = 4194304"));
    assert_eq!(told.proxy.upstream_receive_buffer, 4 << 20);
    for value in ["0", "-1", "16383", "67108865"] {
        let found = problems(&format!("{MINIMAL}\n[proxy]\nupstream_receive_buffer_bytes = {value}"));
        let fix = "from 16384 to 67108864";
        assert!(has(&found, "proxy.upstream_receive_buffer_bytes", fix), "{value}: {found:?}");
    }
}

#[test]
fn plain_http_public_url_drops_the_host_prefix() {
    let c = parse_ok(&MINIMAL.replace("https://app", "http://app"));
    assert_eq!(c.session.cookie_name, "portcullis");
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = problems(
        r#"
        upstream = "ftp://x"
        public_url = "https://app.example.com/sub"
        colour = "blue"
        [session]
        idle_timeout = "30 parsecs"
        [mfa]
        policy = "sometimes"
        "#,
    );
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    for key in ["colour", "upstream", "public_url", "data_dir", "session.idle_timeout", "mfa.policy"] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert!(found.iter().all(|p| !p.fix.is_empty()));
}

/// A config in a fresh folder, `[notify]` set to `notify`, and a private password file there.
fn smtp_config(notify: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("smtp-password");
    std::fs::write(&password, "s3cret pass\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let result = parse(&format!("{MINIMAL}\n[notify]\n{notify}\n"), &dir.path().join("proxy.toml"));
    (dir, result)
}

fn smtp_ok(notify: &str) -> SmtpSettings {
    match smtp_config(notify).1.unwrap_or_else(|e| panic!("{e}")).notify.transport {
        Transport::Smtp(settings) => settings,
        other => panic!("not smtp: {other:?}"),
    }
}

fn smtp_problems(notify: &str) -> Vec<Problem> {
    match smtp_config(notify).1 {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn has(problems: &[Problem], key: &str, fix_part: &str) -> bool {
    problems.iter().any(|p| p.key == key && p.fix.contains(fix_part))
}

#[test]
fn smtp_defaults_to_starttls_on_587_with_a_ten_second_timeout() {
    let s = smtp_ok("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"");
    assert_eq!(s.host, "smtp.example.com");
    assert_eq!(s.security, SmtpSecurity::StartTls);
    assert_eq!(s.port, 587);
    assert_eq!(s.timeout, Duration::from_secs(10));
    assert!(s.credentials.is_none() && s.extra_roots.is_empty());
}

#[test]
fn smtp_port_defaults_follow_the_security_mode_and_can_be_set() {
    let tls = smtp_ok("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_security = \"tls\"");
    assert_eq!((tls.security, tls.port), (SmtpSecurity::Tls, 465));
    for host in ["127.0.0.1", "::1", "localhost"] {
        let plain = smtp_ok(&format!("transport = \"smtp\"\nsmtp_host = \"{host}\"\nsmtp_security = \"none\""));
        assert_eq!((plain.security, plain.port), (SmtpSecurity::None, 25), "{host}");
    }
    let set =
        smtp_ok("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_port = 2525\nsmtp_timeout = \"30s\"");
    assert_eq!((set.port, set.timeout), (2525, Duration::from_secs(30)));
}

#[test]
fn smtp_password_comes_from_a_private_file_and_never_shows_in_debug() {
    let (_dir, result) = smtp_config(
        "transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"\nsmtp_password_file = \"smtp-password\"",
    );
    let config = result.unwrap_or_else(|e| panic!("{e}"));
    let Transport::Smtp(s) = &config.notify.transport else { panic!("not smtp") };
    let credentials = s.credentials.as_ref().unwrap();
    assert_eq!(credentials.username, "mailer");
    assert_eq!(credentials.password.expose(), b"s3cret pass", "the trailing line break is not part of it");
    let debug = format!("{config:?}");
    assert!(debug.contains("mailer") && !debug.contains("s3cret"), "{debug}");
}

#[test]
fn smtp_password_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    for mode in [0o644, 0o640, 0o620] {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("smtp-password");
        std::fs::write(&password, "s3cret").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(mode)).unwrap();
        let text = format!(
            "{MINIMAL}\n[notify]\ntransport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"\nsmtp_password_file = \"smtp-password\"\n"
        );
        let Err(ConfigError::Invalid { problems, .. }) = parse(&text, &dir.path().join("proxy.toml")) else {
            panic!("mode {mode:o} accepted");
        };
        assert!(has(&problems, "notify.smtp_password_file", "chmod 600"), "{problems:?}");
        assert!(problems.iter().all(|p| !p.problem.contains("s3cret")));
    }
}

#[test]
fn smtp_password_file_missing_or_empty_is_refused() {
    let missing = smtp_problems(
        "transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"\nsmtp_password_file = \"nope\"",
    );
    assert!(has(&missing, "notify.smtp_password_file", "umask 077"), "{missing:?}");

    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{MINIMAL}\n[notify]\ntransport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"\nsmtp_password_file = \"pw\"\n"
    );
    for contents in ["", "\n", "two\nlines\n"] {
        std::fs::write(dir.path().join("pw"), contents).unwrap();
        std::fs::set_permissions(dir.path().join("pw"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let Err(ConfigError::Invalid { problems, .. }) = parse(&text, &dir.path().join("proxy.toml")) else {
            panic!("{contents:?} accepted")
        };
        assert!(has(&problems, "notify.smtp_password_file", "only line"), "{problems:?}");
    }
}

#[test]
fn smtp_username_and_password_file_come_together() {
    let no_file = smtp_problems("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_username = \"mailer\"");
    assert!(has(&no_file, "notify.smtp_password_file", "add smtp_password_file"), "{no_file:?}");
    let no_user =
        smtp_problems("transport = \"smtp\"\nsmtp_host = \"smtp.example.com\"\nsmtp_password_file = \"smtp-password\"");
    assert!(has(&no_user, "notify.smtp_username", "add smtp_username"), "{no_user:?}");
}

#[test]
fn smtp_in_clear_is_refused_unless_the_server_is_on_this_machine() {
    for host in ["smtp.example.com", "10.0.0.5", "localhost.example.com"] {
        let found = smtp_problems(&format!("transport = \"smtp\"\nsmtp_host = \"{host}\"\nsmtp_security = \"none\""));
        assert!(has(&found, "notify.smtp_security", "use \"starttls\" or \"tls\""), "{host}: {found:?}");
    }
}

#[test]
fn smtp_bad_values_are_each_named_with_a_fix() {
    let found = smtp_problems(
        "transport = \"smtp\"\nsmtp_security = \"ssl\"\nsmtp_port = 70000\nsmtp_timeout = \"soon\"\nsmtp_ca_file = \"missing.pem\"",
    );
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    for key in
        ["notify.smtp_host", "notify.smtp_security", "notify.smtp_port", "notify.smtp_timeout", "notify.smtp_ca_file"]
    {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let host = smtp_problems("transport = \"smtp\"\nsmtp_host = \"smtp.example.com:587\"");
    assert!(has(&host, "notify.smtp_host", "notify.smtp_port"), "{host:?}");
}

#[test]
fn smtp_ca_file_is_loaded_and_useless_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["mail.internal".to_string()]).unwrap();
    std::fs::write(dir.path().join("mail-ca.pem"), ca.cert.pem()).unwrap();
    let text = format!(
        "{MINIMAL}\n[notify]\ntransport = \"smtp\"\nsmtp_host = \"mail.internal\"\nsmtp_ca_file = \"mail-ca.pem\"\n"
    );
    let config = parse(&text, &dir.path().join("proxy.toml")).unwrap_or_else(|e| panic!("{e}"));
    let Transport::Smtp(s) = config.notify.transport else { panic!("not smtp") };
    assert_eq!(s.extra_roots.len(), 1);
    assert_eq!(s.ca_file.as_deref(), Some(dir.path().join("mail-ca.pem").as_path()));

    let plain = text.replace("mail.internal", "127.0.0.1").replace("[notify]", "[notify]\nsmtp_security = \"none\"");
    let Err(ConfigError::Invalid { problems, .. }) = parse(&plain, &dir.path().join("proxy.toml")) else {
        panic!("accepted")
    };
    assert!(has(&problems, "notify.smtp_ca_file", "remove it"), "{problems:?}");
}

#[test]
fn smtp_keys_without_the_smtp_transport_are_reported() {
    let found = problems(&format!("{MINIMAL}\n[notify]\nsmtp_host = \"smtp.example.com\"\n"));
    assert!(has(&found, "notify.smtp_host", "set notify.transport = \"smtp\""), "{found:?}");
    let found = problems(&format!("{MINIMAL}\n[notify]\ntransport = \"pigeon\"\n"));
    assert!(has(&found, "notify.transport", "\"smtp\""), "{found:?}");
}

proptest::proptest! {
    /// Any text at all: a Config or a list of problems, never a panic.
    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = parse(&text, Path::new("/tmp/proxy.toml"));
    }

    #[test]
    fn parsing_toml_shaped_text_never_panics(
        key in "(listen|upstream|public_url|data_dir|session|mfa|policy|idle_timeout|tls|cert)",
        value in "(\"[^\"]{0,20}\"|[0-9]{1,5}|true|\\[\\]|\\[\"x\"\\])",
    ) {
        let text = format!("{MINIMAL}\n{key} = {value}\n[session]\n{key} = {value}\n[mfa]\n{key} = {value}\n");
        let _ = parse(&text, Path::new("/tmp/proxy.toml"));
    }
}

#[test]
fn identity_algorithm_defaults_to_eddsa_and_an_unknown_one_is_named_with_the_choices() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.identity.algorithm, IdentityAlgorithm::EdDSA);
    assert!(!c.identity.algorithm_chosen);
    assert_eq!(c.identity.key_file, Path::new("/etc/portcullis/data/identity-keys.json"));
    for (text, algorithm) in [("ES256", IdentityAlgorithm::ES256), ("HS256", IdentityAlgorithm::HS256)] {
        let c = parse_ok(&format!("{MINIMAL}\n[identity]\nalgorithm = \"{text}\"\nkey_file = \"/srv/keys.json\"\n"));
        assert_eq!(c.identity.algorithm, algorithm);
        assert!(c.identity.algorithm_chosen);
        assert_eq!(c.identity.key_file, Path::new("/srv/keys.json"));
    }
    // Reported with the other problems, at once.
    let found = problems(&format!("{MINIMAL}\n[identity]\nalgorithm = \"RS256\"\nttl = \"1s\"\n"));
    let bad = found.iter().find(|p| p.key == "identity.algorithm").expect("identity.algorithm is named");
    assert_eq!(bad.value.as_deref(), Some("\"RS256\""));
    for choice in ["\"EdDSA\"", "\"ES256\"", "\"HS256\""] {
        assert!(bad.fix.contains(choice), "{}", bad.fix);
    }
    assert!(found.iter().any(|p| p.key == "identity.ttl"));
}
