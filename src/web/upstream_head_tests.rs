use std::net::IpAddr;
use std::path::Path;

use proptest::prelude::*;

use http::HeaderValue;

use super::*;
use crate::config::Config;

const TRUSTED_PEER: &str = "10.9.0.7";
const OWN_COOKIES: [&str; 2] = ["portcullis", "portcullis-csrf"];

fn config(extra: &str) -> Config {
    let text = format!(
        "upstream = \"http://127.0.0.1:8080\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"data\"\ntrusted_proxies = [\"10.9.0.0/16\"]\n{extra}"
    );
    crate::config::parse(&text, Path::new("/etc/portcullis/proxy.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn forwarder(extra: &str) -> Forwarder {
    Forwarder::new(&config(extra), OWN_COOKIES.iter().map(|c| c.to_string()).collect()).expect("forwarder")
}

fn identity() -> UpstreamIdentity {
    UpstreamIdentity::for_tests("alice", "alice@example.com", "admins,staff", "eyJ.signed.assertion")
}

/// A client as the lane sees it: the peer, and the address the gate read for it.
fn client(peer: &str, headers: &HeaderMap, forwarder: &Forwarder) -> ClientInfo {
    let peer: IpAddr = peer.parse().unwrap();
    ClientInfo { peer, real_ip: forwarding::client_ip(headers, peer, &forwarder.trusted_proxies), scheme: "https" }
}

/// `request` with `fields` in its map.
fn request_with(request: &Request<()>, fields: &[(&str, &[u8])]) -> Request<()> {
    self::request(request.method().as_str(), &request.uri().to_string(), fields)
}

fn request(method: &str, target: &str, fields: &[(&str, &[u8])]) -> Request<()> {
    let mut request = Request::builder().method(method).uri(target).body(()).unwrap();
    for (name, value) in fields {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().append(name, HeaderValue::from_bytes(value).unwrap());
    }
    request
}

/// The fields as the lane reads them: in the order sent, names in the case sent.
fn as_read<'a>(fields: &[(&'a str, &'a [u8])]) -> Vec<httparse::Header<'a>> {
    fields.iter().map(|&(name, value)| httparse::Header { name, value }).collect()
}

/// A head with `fields` as read, for a request's method and target.
fn head_as_read<'a>(request: &'a Request<()>, fields: &'a [httparse::Header<'a>]) -> Head<'a, [httparse::Header<'a>]> {
    Head { method: request.method(), uri: request.uri(), version: request.version(), fields }
}

/// The head as `prepare` makes it on a map, the full path's way.
fn prepared(forwarder: &Forwarder, request: &Request<()>, client: &ClientInfo) -> Vec<u8> {
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    let (mut parts, ()) = copy.into_parts();
    forwarder.prepare(&mut parts, Some(&identity()), client);
    encode_request(&parts)
}

/// A head (a request's or an answer's) as its first line and its fields, names in lower case (a
/// name's case carries no meaning, RFC 9110 §5.1) and grouped in a stable order: the order of
/// different names carries no meaning (RFC 9110 §5.3), the order of one name's lines does.
pub(in crate::web::forward) fn normalized(head: &[u8]) -> (String, Vec<(String, Vec<u8>)>) {
    assert!(head.ends_with(b"\r\n\r\n"), "a head ends with an empty line");
    let text = &head[..head.len() - 2];
    let mut lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| l.strip_suffix(b"\r").expect("CRLF"));
    let request_line = String::from_utf8(lines.next().unwrap().to_vec()).unwrap();
    let mut fields: Vec<(String, Vec<u8>)> = lines
        .map(|line| {
            let at = line.iter().position(|&b| b == b':').expect("a field line");
            (String::from_utf8(line[..at].to_ascii_lowercase()).unwrap(), line[at + 2..].to_vec())
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    (request_line, fields)
}

#[test]
fn the_usual_request_is_written_in_one_pass_with_the_fields_prepare_would_send() {
    let forwarder = forwarder("");
    assert!(forwarder.direct_head, "the default configuration takes the one pass");
    let request = request(
        "GET",
        "/wiki/page?rev=2",
        &[
            ("host", b"app.example.com"),
            ("user-agent", b"Mozilla/5.0"),
            ("cookie", b"theme=dark; portcullis=SECRET; lang=en"),
            ("connection", b"keep-alive"),
            ("x-forwarded-user", b"admin"),
            ("X_Forwarded_User", b"admin"),
            ("x-forwarded-for", b"127.0.0.1"),
            ("x-original-url", b"/admin"),
            ("accept", b"text/html"),
        ],
    );
    let client = client("203.0.113.9", request.headers(), &forwarder);
    let head = forwarder.write_head(&Head::from(&request), &identity(), &client);
    let expected = "GET /wiki/page?rev=2 HTTP/1.1\r\n\
        host: app.example.com\r\n\
        user-agent: Mozilla/5.0\r\n\
        accept: text/html\r\n\
        cookie: theme=dark; lang=en\r\n\
        x-forwarded-for: 203.0.113.9\r\n\
        x-real-ip: 203.0.113.9\r\n\
        x-forwarded-proto: https\r\n\
        x-forwarded-host: app.example.com\r\n\
        x-forwarded-user: alice\r\n\
        x-forwarded-email: alice@example.com\r\n\
        x-forwarded-groups: admins,staff\r\n\
        x-portcullis-assertion: eyJ.signed.assertion\r\n\r\n";
    assert_eq!(String::from_utf8(head.clone()).unwrap(), expected);
    assert_eq!(normalized(&head), normalized(&prepared(&forwarder, &request, &client)));
    assert!(head.len() <= head.capacity(), "sized once");
}

#[test]
fn fields_as_read_are_written_in_the_case_and_order_they_came() {
    let forwarder = forwarder("");
    let sent: [(&str, &[u8]); 7] = [
        ("Host", b"app.example.com"),
        ("X-App", b"1"),
        ("Cookie", b"theme=dark; portcullis=SECRET"),
        ("Accept", b"*/*"),
        ("X_Forwarded_User", b"admin"),
        ("x-app", b"2"),
        ("Connection", b"keep-alive"),
    ];
    let request = request("GET", "/", &[]);
    let fields = as_read(&sent);
    let client = client("203.0.113.9", &HeaderMap::new(), &forwarder);
    let head = forwarder.upstream_head(&head_as_read(&request, &fields), &identity(), &client);
    let text = String::from_utf8(head.clone()).unwrap();
    assert!(
        text.starts_with(
            "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-App: 1\r\nAccept: */*\r\nx-app: 2\r\ncookie: theme=dark\r\n"
        ),
        "{text}"
    );
    assert!(!text.contains("X_Forwarded_User") && !text.contains("SECRET") && !text.contains("Connection"), "{text}");
    let map = request_with(&request, &sent);
    assert_eq!(normalized(&head), normalized(&prepared(&forwarder, &map, &client)));
}

#[test]
fn a_configuration_that_strips_what_the_rules_read_is_prepared_on_a_map() {
    assert!(!forwarder("[identity]\nstrip_headers = [\"X-Forwarded-*\"]").direct_head);
    assert!(!forwarder("[identity]\nstrip_headers = [\"cookie\"]").direct_head);
    assert!(!forwarder("[identity]\nuser_header = \"X-Who\"\nemail_header = \"X-Who\"").direct_head);
    assert!(forwarder("[identity]\nstrip_headers = [\"X-Corp-User\", \"X-Corp-*\"]").direct_head);
}

/// Field lines a client might send: ordinary ones, every kind the rules remove or rewrite, and
/// odd spellings and values of them.
const FIELDS: &[(&str, &[u8])] = &[
    ("host", b"app.example.com"),
    ("host", b"other.example.com:8443"),
    ("accept", b"*/*"),
    ("x-app", b"1"),
    ("x-app", b"2"),
    ("authorization", b"Bearer abc"),
    ("cookie", b"portcullis=SECRET"),
    ("cookie", b"theme=dark"),
    ("cookie", b"theme=dark; portcullis=SECRET; portcullis-csrf=T; lang=en"),
    ("cookie", b" ; portcullis=SECRET ;; "),
    ("cookie", b""),
    ("cookie", b"name=\xff\xfe; portcullis=SECRET"),
    ("cookie", b"portcullisx=1; =portcullis; PORTCULLIS=2"),
    ("connection", b"keep-alive"),
    ("connection", b"close"),
    ("connection", b"Keep-Alive, X-App"),
    ("connection", b"x-forwarded-for, host"),
    ("connection", b"upgrade"),
    ("keep-alive", b"timeout=5"),
    ("proxy-connection", b"keep-alive"),
    ("te", b"trailers"),
    ("trailer", b"x-app"),
    ("upgrade", b"h2c"),
    ("http2-settings", b"AAA"),
    ("proxy-authorization", b"Basic eA=="),
    ("x-forwarded-for", b"198.51.100.4"),
    ("x-forwarded-for", b"198.51.100.4, 10.9.0.3"),
    ("x-forwarded-for", b"not an address"),
    ("x_forwarded_for", b"127.0.0.1"),
    ("x-forwarded-proto", b"https"),
    ("x-forwarded-proto", b"gopher"),
    ("x-forwarded-host", b"evil.example"),
    ("x-real-ip", b"127.0.0.1"),
    ("forwarded", b"for=127.0.0.1"),
    ("x-original-url", b"/admin"),
    ("true-client-ip", b"127.0.0.1"),
    ("x-forwarded-user", b"admin"),
    ("X_FORWARDED_USER", b"admin"),
    ("x-forwarded-email", b"root@example.com"),
    ("x-portcullis-assertion", b"forged"),
    ("remote-user", b"admin"),
    ("x-auth-request-user", b"admin"),
    ("x-corp-user", b"admin"),
    ("x-corp-role", b"admin"),
    ("x-who", b"admin"),
];

/// The default configuration, one with identity settings of its own, and one the one pass
/// does not serve (built once: each takes a TLS client configuration).
fn configurations() -> &'static [Forwarder; 3] {
    static CONFIGURATIONS: std::sync::OnceLock<[Forwarder; 3]> = std::sync::OnceLock::new();
    CONFIGURATIONS.get_or_init(|| {
        [
            forwarder(""),
            forwarder("[identity]\nstrip_headers = [\"X-Corp-User\", \"X-Corp-*\"]\nuser_header = \"X-Who\""),
            forwarder("[identity]\nstrip_headers = [\"X-Forwarded-*\"]"),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the client sends and whoever it is, the lane's head carries exactly the fields
    /// the full path's would, in the same order within each name.
    #[test]
    fn the_lane_sends_the_upstream_what_the_full_path_would(
        picks in prop::collection::vec(0..FIELDS.len(), 0..14),
        peer in prop::sample::select(vec![TRUSTED_PEER, "203.0.113.9", "2001:db8::9", "::ffff:10.9.0.8"]),
        head_request in any::<bool>(),
        which in 0..3usize,
        shouted in any::<u16>(),
    ) {
        let forwarder = &configurations()[which];
        let fields: Vec<(&str, &[u8])> = picks.iter().map(|&i| FIELDS[i]).collect();
        let request = request(if head_request { "HEAD" } else { "GET" }, "/p?q=1", &fields);
        let client = client(peer, request.headers(), forwarder);
        let expected = normalized(&prepared(forwarder, &request, &client));
        let map = request.headers();
        if forwarder.direct_head && map.contains_key(header::HOST) && !headers::connection_names_fields(map) {
            prop_assert_eq!(&normalized(&forwarder.write_head(&Head::from(&request), &identity(), &client)), &expected);
        }
        prop_assert_eq!(&normalized(&forwarder.upstream_head(&Head::from(&request), &identity(), &client)), &expected);
        // The same fields as the lane reads them, some names in capitals: the same head.
        let names: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(i, (name, _))| if shouted >> (i % 16) & 1 == 1 { name.to_ascii_uppercase() } else { name.to_string() })
            .collect();
        let spelled: Vec<(&str, &[u8])> = names.iter().zip(&fields).map(|(name, (_, value))| (name.as_str(), *value)).collect();
        let read = as_read(&spelled);
        prop_assert_eq!(&normalized(&forwarder.upstream_head(&head_as_read(&request, &read), &identity(), &client)), &expected);
    }
}
