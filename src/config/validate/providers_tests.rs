//! `[[mfa.provider]]` and the old switches: table tests of what is accepted and of what each
//! refusal says (the key, and the fix).

use super::*;
use crate::config::{ProviderId, ProviderKind, ProviderStatus};

const MINIMAL: &str = r#"
    upstream = "http://127.0.0.1:8080"
    public_url = "https://app.example.com"
    data_dir = "data"
"#;

fn parse_with(extra: &str) -> Result<Config, Vec<Problem>> {
    match parse(&format!("{MINIMAL}{extra}"), Path::new("/etc/portcullis/proxy.toml")) {
        Ok(config) => Ok(config),
        Err(ConfigError::Invalid { problems, .. }) => Err(problems),
        Err(other) => panic!("{other}"),
    }
}

fn provider(id: &str, kind: &str, status: &str) -> String {
    format!("[[mfa.provider]]\nid = \"{id}\"\nkind = \"{kind}\"\nstatus = \"{status}\"\n")
}

#[test]
fn without_providers_the_switches_behave_as_before() {
    // A switched-off kind is deprecated in effect (nothing new; what exists works, as before),
    // and tells nobody (the switch never did).
    let table = [
        // extra, totp, email
        ("", ProviderStatus::Active, ProviderStatus::Deprecated),
        ("[mfa]\ntotp = false\n", ProviderStatus::Deprecated, ProviderStatus::Deprecated),
        ("[mfa]\nemail_otp = true\n[notify]\ntransport = \"file\"\n", ProviderStatus::Active, ProviderStatus::Active),
    ];
    for (extra, totp, email) in table {
        let config = parse_with(extra).unwrap_or_else(|p| panic!("{extra}: {p:?}"));
        let p = &config.mfa.providers;
        for (id, status) in [(ProviderId::totp(), totp), (ProviderId::email(), email)] {
            let found = p.get(&id).unwrap();
            assert_eq!(found.status, status, "{extra} {id}");
            assert_eq!(found.from_switch, status != ProviderStatus::Active, "{extra} {id}");
        }
    }
    let refused = parse_with("[mfa]\nemail_otp = true\n[notify]\ntransport = \"off\"\n").unwrap_err();
    assert_eq!(refused[0].key, "mfa.email_otp", "the old key, as before");
}

#[test]
fn providers_are_read_with_defaults() {
    let config = parse_with(&format!(
        "{}{}[[mfa.provider]]\nid = \"keys\"\nkind = \"webauthn\"\n",
        provider("totp", "totp", "deprecated"),
        "[[mfa.provider]]\nid = \"totp-2027\"\nkind = \"totp\"\nname = \"Phone app\"\n",
    ))
    .unwrap_or_else(|p| panic!("{p:?}"));
    let p = &config.mfa.providers;
    assert_eq!(p.iter().count(), 3);
    let active = p.active(ProviderKind::Totp).unwrap();
    assert_eq!((active.id.as_str(), active.name.as_str()), ("totp-2027", "Phone app"));
    let keys = p.active(ProviderKind::Webauthn).unwrap();
    assert_eq!((keys.name.as_str(), keys.status), ("Security key", ProviderStatus::Active), "defaults");
    assert!(p.get(&ProviderId::email()).is_none(), "no email provider unless listed");
}

#[test]
fn each_mistake_names_its_key_and_its_fix() {
    let table: [(String, &str, &str); 9] = [
        ("[[mfa.provider]]\nkind = \"totp\"\n".into(), "mfa.provider[0].id", "add a stable id"),
        (provider("Bad Id", "totp", "active"), "mfa.provider[0].id", "a-z, 0-9"),
        (provider("x", "sms", "active"), "mfa.provider[0].kind", "\"totp\", \"email\", \"webauthn\""),
        (provider("x", "totp", "retired"), "mfa.provider[0].status", "\"deprecated\""),
        (
            format!("{}{}", provider("a", "totp", "active"), provider("a", "totp", "disabled")),
            "mfa.provider[1].id",
            "own id",
        ),
        (
            format!("{}{}", provider("a", "totp", "active"), provider("b", "totp", "active")),
            "mfa.provider[1].status",
            "keep one active totp provider (\"a\" is one)",
        ),
        (format!("{}name = \"\"\n", provider("a", "totp", "active")), "mfa.provider[0].name", "what users should see"),
        // Codes by email that cannot be sent.
        (
            format!("{}[notify]\ntransport = \"off\"\n", provider("mail", "email", "active")),
            "mfa.provider[id = \"mail\"].status",
            "notify.transport",
        ),
        // Required, and nothing every user can set up (keys need a browser and device for them).
        (
            format!(
                "[mfa]\npolicy = \"required\"\n{}{}",
                provider("t", "totp", "deprecated"),
                provider("k", "webauthn", "active")
            ),
            "mfa.provider",
            "make a totp or email provider's status \"active\"",
        ),
    ];
    for (extra, key, fix) in table {
        let problems = parse_with(&extra).expect_err(&extra);
        let found = problems.iter().find(|p| p.key == key).unwrap_or_else(|| panic!("{key} not in {problems:?}"));
        assert!(found.fix.contains(fix), "{key}: {}", found.fix);
    }
}

#[test]
fn the_old_switches_next_to_providers_are_refused_with_the_lines_that_replace_them() {
    let problems =
        parse_with(&format!("[mfa]\ntotp = true\nemail_otp = false\n{}", provider("keys", "webauthn", "active")))
            .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["mfa.totp", "mfa.email_otp"], "both switches, at once");
    let fix = &problems[0].fix;
    assert!(fix.contains("remove mfa.totp and mfa.email_otp"), "{fix}");
    for line in [
        "[[mfa.provider]]",
        "id = \"totp\"",
        "kind = \"totp\"",
        "name = \"Authenticator app\"",
        "status = \"active\"",
        "id = \"email\"",
        "status = \"deprecated\"",
    ] {
        assert!(fix.contains(line), "{line} missing from {fix}");
    }
    // The message as printed: every problem on its own line, the lines indented beneath.
    let err = parse(
        &format!("{MINIMAL}[mfa]\ntotp = true\n{}", provider("keys", "webauthn", "active")),
        Path::new("/etc/portcullis/proxy.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mfa.totp = \"true\": cannot be used together with [[mfa.provider]]"), "{err}");
    assert!(err.contains("\n      [[mfa.provider]]\n      id = \"totp\""), "{err}");
}
