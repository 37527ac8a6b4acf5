//! Unit tests for `base::forwarding`: the client's address and the forwarding headers, from
//! peers trusted and not.

use super::*;

use crate::base::fields::map_of as map;

#[test]
fn addresses_are_written_as_display_writes_them() {
    for ip in
        ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255", "192.0.2.9", "100.64.9.199", "::1", "2001:db8::5"]
    {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(address_value(ip).unwrap(), ip.to_string().as_str());
    }
    // The value kept for the last address is never given for another.
    for ip in ["192.0.2.1", "192.0.2.1", "192.0.2.2", "::1", "::1", "192.0.2.1"] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(address_value(ip).unwrap(), ip.to_string().as_str());
    }
}

#[test]
fn the_client_address_behind_trusted_proxies() {
    let trusted: Vec<IpNet> = vec!["127.0.0.3/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
    let via = |xff: &str| client_ip(&map(&[("x-forwarded-for", xff)]), "127.0.0.3".parse().unwrap(), &trusted);
    assert_eq!(via("198.51.100.7, 10.0.0.2").to_string(), "198.51.100.7");
    assert_eq!(via("192.0.2.5, 203.0.113.9:51234").to_string(), "203.0.113.9", "a balancer that writes the port");
    assert_eq!(via("192.0.2.5, [2001:db8::1]:443").to_string(), "2001:db8::1");
    assert_eq!(via("192.0.2.5, unknown").to_string(), "127.0.0.3", "nothing before an unreadable entry counts");
    assert_eq!(via("192.0.2.5, ::ffff:203.0.113.9").to_string(), "203.0.113.9");
    let mapped: IpAddr = "::ffff:192.0.2.44".parse().unwrap();
    assert_eq!(client_ip(&HeaderMap::new(), mapped, &[]).to_string(), "192.0.2.44", "IPv4 on a dual-stack socket");
}

#[test]
fn forwarding_headers_from_untrusted_peers_are_replaced() {
    let mut h = map(&[
        ("host", "app.example.com"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-real-ip", "127.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=127.0.0.1"),
    ]);
    let peer = "203.0.113.9".parse().unwrap();
    let client = ClientInfo { peer, real_ip: peer, scheme: "http" };
    set_forwarding(&mut h, &client, &["10.0.0.0/8".parse().unwrap()]);
    assert_eq!(h["x-forwarded-for"], "203.0.113.9");
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.example.com");
    assert!(h.get("forwarded").is_none());
}

#[test]
fn forwarding_headers_from_trusted_peers_are_extended() {
    let mut h = map(&[
        ("host", "app.example.com"),
        ("x-forwarded-for", "198.51.100.7, 10.0.0.2"),
        ("x-forwarded-proto", "https"),
    ]);
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    let peer = "10.0.0.1".parse().unwrap();
    let client = ClientInfo { peer, real_ip: client_ip(&h, peer, &trusted), scheme: "http" };
    set_forwarding(&mut h, &client, &trusted);
    assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.2, 10.0.0.1");
    assert_eq!(h["x-real-ip"], "198.51.100.7");
    assert_eq!(h["x-forwarded-proto"], "https");

    // A balancer's X-Forwarded-Host gives way to the Host the rules were checked against.
    let mut h = map(&[("host", "ui-a.apps.example.com"), ("x-forwarded-host", "app.example.com")]);
    set_forwarding(&mut h, &client, &trusted);
    assert_eq!(h["x-forwarded-host"], "ui-a.apps.example.com");

    // What the proxy sets it sets alone: a trusted peer's copies spelled with `_` (read by
    // CGI-style servers as the same header) go; its other forwarding headers stay.
    let mut h = map(&[
        ("host", "app.example.com"),
        ("x-forwarded-for", "198.51.100.7"),
        ("x_forwarded_for", "3.3.3.3"),
        ("X_Real_IP", "3.3.3.3"),
        ("x_forwarded_proto", "https"),
        ("x_forwarded_host", "evil.example"),
        ("x-forwarded-port", "443"),
    ]);
    set_forwarding(&mut h, &client, &trusted);
    let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-port", "x-forwarded-proto", "x-real-ip"]
    );
    assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.1");
}

#[test]
fn original_request_headers_from_untrusted_peers_go_in_every_spelling() {
    let spoofed = [
        ("X_Forwarded_For", "127.0.0.1"),
        ("X_Real_IP", "127.0.0.1"),
        ("X_Forwarded_Proto", "https"),
        ("X_Forwarded_Host", "admin.internal"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Forwarded-Scheme", "https"),
        ("X-Forwarded-Ssl", "on"),
        ("X-Forwarded-Server", "internal"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("True-Client-IP", "127.0.0.1"),
        ("CF-Connecting-IP", "127.0.0.1"),
        ("X-Client-IP", "127.0.0.1"),
    ];
    let mut h = map(&[("host", "app.example.com"), ("accept", "*/*")]);
    for (name, value) in spoofed {
        h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static(value));
    }
    let peer = "203.0.113.9".parse().unwrap();
    set_forwarding(&mut h, &ClientInfo { peer, real_ip: peer, scheme: "http" }, &[]);
    let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    left.sort();
    assert_eq!(left, vec!["accept", "host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"]);
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["x-forwarded-host"], "app.example.com");

    // From a trusted proxy they pass.
    let mut h = map(&[("host", "app.example.com"), ("x-forwarded-prefix", "/app")]);
    let proxy = "10.0.0.1".parse().unwrap();
    set_forwarding(
        &mut h,
        &ClientInfo { peer: proxy, real_ip: proxy, scheme: "http" },
        &["10.0.0.0/8".parse().unwrap()],
    );
    assert_eq!(h["x-forwarded-prefix"], "/app");
}
