//! Unit tests for `base::headers`: each header rule tried with the spellings and duplicates a
//! client or an upstream could send.

use super::*;

use crate::base::fields::map_of as map;

#[test]
fn a_message_framed_by_transfer_encoding_loses_its_content_length_too() {
    assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING_BIT.trailing_zeros() as usize], header::TRANSFER_ENCODING);
    let mut both = map(&[("transfer-encoding", "chunked"), ("content-length", "3"), ("content-type", "text/plain")]);
    strip_hop_by_hop(&mut both);
    assert_eq!(both.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["content-type"]);
    let mut length_only = map(&[("content-length", "3"), ("connection", "keep-alive")]);
    strip_hop_by_hop(&mut length_only);
    assert_eq!(length_only.get("content-length").unwrap(), "3");
}

#[test]
fn cookies_pass_as_sent_when_none_are_ours_and_go_when_all_are() {
    let mut h = map(&[("cookie", "app=1;theme=dark")]);
    strip_cookies(&mut h, &["portcullis"]);
    assert_eq!(h["cookie"], "app=1;theme=dark", "untouched");
    let mut h = map(&[("cookie", "portcullis=secret; portcullis-csrf=x")]);
    strip_cookies(&mut h, &["portcullis", "portcullis-csrf"]);
    assert!(h.get("cookie").is_none());
    let mut h = map(&[("cookie", "app=1"), ("cookie", "portcullis=secret")]);
    strip_cookies(&mut h, &["portcullis"]);
    assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["app=1"]);
    let mut h = map(&[("cookie", "app=1; portcullis=secret; b=2")]);
    strip_cookies(&mut h, &["portcullis"]);
    assert_eq!(h["cookie"], "app=1; b=2");
    // Lines folded into one; a line that is not UTF-8 is kept with its bad bytes replaced, and
    // pairs are trimmed of any white space, as text.
    let mut h = HeaderMap::new();
    h.append(header::COOKIE, HeaderValue::from_bytes("a=1;\u{a0}portcullis=x ; é=2".as_bytes()).unwrap());
    h.append(header::COOKIE, HeaderValue::from_bytes(b"b=\xff2;portcullis=y;;  c=3 ").unwrap());
    strip_cookies(&mut h, &["portcullis"]);
    let folded: Vec<&[u8]> = h.get_all("cookie").iter().map(|v| v.as_bytes()).collect();
    assert_eq!(folded, ["a=1; é=2; b=\u{fffd}2; c=3".as_bytes()]);
}

#[test]
fn connection_is_a_token_list() {
    for value in ["Upgrade", "keep-alive, Upgrade", "upgrade,keep-alive", " UPGRADE "] {
        let h = map(&[("connection", value), ("upgrade", "websocket")]);
        assert!(requested_upgrade(&h).is_some(), "{value}");
    }
    assert!(requested_upgrade(&map(&[("connection", "keep-alive"), ("upgrade", "websocket")])).is_none());
    assert!(requested_upgrade(&map(&[("connection", "upgrade")])).is_none());
}

#[test]
fn connection_names_fields_only_with_a_token_that_is_not_hop_by_hop_close_or_kept() {
    let names = |value: &[u8]| {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_bytes(value).unwrap());
        connection_names_fields(&headers)
    };
    assert!(!connection_names_fields(&HeaderMap::new()));
    for nothing in
        [&b"keep-alive"[..], b"Keep-Alive", b"close", b"Keep-Alive, Upgrade", b" , ,", b"host, Content-Length", b"\xff"]
    {
        assert!(!names(nothing), "{:?}", String::from_utf8_lossy(nothing));
    }
    for something in [&b"X-Secret"[..], b"keep-alive, X-Forwarded-For", b"close,set-cookie", b"x-a, \xe9", b"\xff,X-A"]
    {
        assert!(names(something), "{:?}", String::from_utf8_lossy(something));
    }
    let mut two = map(&[("connection", "keep-alive"), ("connection", "x-secret")]);
    assert!(connection_names_fields(&two), "tokens on a second line count");
    two.remove(header::CONNECTION);
    assert!(!connection_names_fields(&two));
}

#[test]
fn hop_by_hop_and_connection_named_headers_go() {
    let mut h = map(&[
        ("connection", "keep-alive, x-secret-hop"),
        ("x-secret-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic Zm9v"),
        ("accept", "text/html"),
    ]);
    strip_hop_by_hop(&mut h);
    assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["accept"]);
}

#[test]
fn a_byte_that_is_not_ascii_in_connection_spares_no_field_it_names() {
    let mut h = map(&[("x-a", "1"), ("x-b", "2"), ("x-kept", "3")]);
    h.append(header::CONNECTION, HeaderValue::from_bytes(b"x-a, \xe9, X-B\xff, x-b").unwrap());
    strip_hop_by_hop(&mut h);
    let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(left, vec!["x-kept"]);
}

#[test]
fn connection_tokens_never_take_host_or_the_framing() {
    let mut h = map(&[
        ("connection", "host, content-length, x-hop"),
        ("host", "app.example.com"),
        ("content-length", "3"),
        ("x-hop", "1"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ]);
    strip_hop_by_hop(&mut h);
    let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    left.sort();
    assert_eq!(left, vec!["content-length", "host"]);
}

#[test]
fn every_listed_name_and_prefix_is_found_in_every_spelling_past_the_filter_on_its_beginning() {
    let spellings = |name: &str| {
        [
            name.to_string(),
            name.to_ascii_uppercase(),
            name.replace('-', "_"),
            name.to_ascii_uppercase().replace('-', "_"),
        ]
    };
    let names = OTHER_IDENTITY.iter().map(|name| name.to_string());
    let prefixed = OTHER_IDENTITY_PREFIXES.iter().map(|prefix| format!("{prefix}user"));
    for listed in names.chain(prefixed) {
        for spelling in spellings(&listed) {
            assert!(is_identity_lookalike(&spelling, &[], &[]), "{spelling}");
        }
    }
    for listed in FORWARDING.iter().chain(&ORIGINAL_REQUEST) {
        for spelling in spellings(listed) {
            assert!(is_forwarding(&spelling), "{spelling}");
        }
    }
    for (text, name) in HOP_BY_HOP_NAMES.iter().zip(&HOP_BY_HOP) {
        assert_eq!(*text, name.as_str());
        assert!(is_hop_by_hop_as_read(&text.to_ascii_uppercase()));
    }
    for ordinary in [
        "host",
        "user-agent",
        "accept",
        "referer",
        "cache-control",
        "sec-fetch-mode",
        "if-none-match",
        "te-x",
        "x",
        "xyz",
    ] {
        let name = HeaderName::from_static(ordinary);
        assert!(!is_identity_lookalike(name.as_str(), &[], &[]) && !is_forwarding(name.as_str()), "{ordinary}");
    }
}

#[test]
fn identity_headers_go_in_every_spelling() {
    let names = [HeaderName::from_static("x-user"), HeaderName::from_static("x-custom-sso")];
    let mut h = map(&[
        ("X-User", "admin"),
        ("x_user", "admin"),
        ("X_CUSTOM_SSO", "root@example.com"),
        ("x-portcullis-assertion", "forged"),
        ("Remote-User", "admin"),
        ("Remote_Email", "root@example.com"),
        ("Remote-Groups", "admins"),
        ("Remote-Name", "Root"),
        ("X-Remote-User", "admin"),
        ("X-WEBAUTH-USER", "admin"),
        ("X-Auth-Request-User", "admin"),
        ("X-Auth-Request-Access-Token", "forged"),
        ("X-authentik-username", "akadmin"),
        ("X-Authentik-Groups", "admins"),
        ("Cf-Access-Authenticated-User-Email", "root@example.com"),
        ("CF_ACCESS_JWT_ASSERTION", "forged"),
        ("X-Forwarded-Preferred-Username", "admin"),
        ("X-Forwarded-User", "admin"),
        ("X-Corp-SSO-Login", "admin"),
        ("X-WEBAUTH-EMAIL", "root@example.com"),
        ("X-Remote-Groups", "admins"),
        ("X-Forwarded-Access-Token", "forged"),
        ("X-Pomerium-Claim-Email", "root@example.com"),
        ("X-Vouch-User", "admin"),
        ("Tailscale-User-Login", "admin"),
        ("X-Goog-Authenticated-User-Email", "accounts.google.com:root@example.com"),
        ("X-Amzn-Oidc-Identity", "admin"),
        ("X-MS-CLIENT-PRINCIPAL-NAME", "admin"),
        ("X-Auth-Email", "root@example.com"),
        ("x-userx", "kept: a different header"),
        ("x-auth-token", "kept: an API's own credential"),
        ("remote-addr-note", "kept: not an identity"),
    ]);
    h.append("x-user", HeaderValue::from_static("second copy"));
    strip_identity(&mut h, &names, &["x-corp-sso-".to_string()]);
    let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    kept.sort();
    assert_eq!(kept, vec!["remote-addr-note", "x-auth-token", "x-userx"]);
}

#[test]
fn our_cookies_are_removed_and_theirs_kept() {
    let mut h = map(&[("cookie", "a=1; portcullis=secret; b=2"), ("cookie", "portcullis-csrf=x")]);
    assert_eq!(cookie_values(&h, "portcullis").collect::<Vec<_>>(), vec!["secret"]);
    strip_cookies(&mut h, &["portcullis", "portcullis-csrf"]);
    assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), vec!["a=1; b=2"]);
    let mut only_ours = map(&[("cookie", "portcullis=secret")]);
    strip_cookies(&mut only_ours, &["portcullis"]);
    assert!(only_ours.get("cookie").is_none());
}

#[test]
fn upstream_cannot_set_our_cookie() {
    let mut h = map(&[
        ("set-cookie", "portcullis=planted; Path=/"),
        ("set-cookie", "=portcullis=planted; Path=/"),
        ("set-cookie", " PORTCULLIS =planted"),
        ("set-cookie", "app=1"),
    ]);
    strip_set_cookie(&mut h, &["portcullis"]);
    assert_eq!(h.get_all("set-cookie").iter().collect::<Vec<_>>(), vec!["app=1"]);
}

proptest::proptest! {
    /// However cookies are written, ours never survive stripping and theirs are kept.
    #[test]
    fn our_cookie_never_survives(parts in proptest::collection::vec("[a-zA-Z0-9_=\\- ]{0,12}", 0..6), ours in "[A-Za-z0-9]{1,43}") {
        let mut line = parts.join("; ");
        line.push_str(&format!("; portcullis={ours}"));
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&line) {
            h.insert(header::COOKIE, v);
            strip_cookies(&mut h, &["portcullis"]);
            let after = h.get(header::COOKIE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            proptest::prop_assert!(cookie_values(&h, "portcullis").next().is_none(), "{}", after);
        }
    }
}

#[test]
fn a_connection_line_closes_with_the_token_close_in_any_case_and_place() {
    for closes in ["close", "Close", "keep-alive, close", " x ,CLOSE ", "close,keep-alive"] {
        assert!(connection_line_closes(closes.as_bytes()), "{closes}");
    }
    for keeps in ["keep-alive", "Keep-Alive", "", "closed", "x-close", "upgrade"] {
        assert!(!connection_line_closes(keeps.as_bytes()), "{keeps}");
    }
}

#[test]
fn our_cookie_is_found_beside_one_that_is_not_text() {
    let mut h = HeaderMap::new();
    h.append(header::COOKIE, HeaderValue::from_bytes("app=café; portcullis=TOKEN; b=\u{00ff}".as_bytes()).unwrap());
    assert_eq!(cookie_values(&h, "portcullis").collect::<Vec<_>>(), ["TOKEN"]);
    // As the lane reads it too, and quoted, and spaced, and on a second line.
    let read = [
        httparse::Header { name: "Cookie", value: b"x=\xff\xfe" },
        httparse::Header { name: "cookie", value: b" a=1 ;portcullis = \"Q\" ; portcullis=\xff" },
    ];
    let fields: &[httparse::Header<'_>] = &read;
    assert_eq!(cookie_values(fields, "portcullis").collect::<Vec<_>>(), ["Q"], "a value that is not text is none");
    assert_eq!(cookie_values(fields, "a").collect::<Vec<_>>(), ["1"]);
    assert_eq!(cookie_values(fields, "portcullisx").count(), 0);
    let quotes = [httparse::Header { name: "Cookie", value: b"portcullis=\"\"; portcullis=\"" }];
    let quotes: &[httparse::Header<'_>] = &quotes;
    assert_eq!(cookie_values(quotes, "portcullis").collect::<Vec<_>>(), ["", ""]);
}
