use std::path::Path;

use proptest::prelude::*;

use super::*;

const OWN_COOKIES: [&str; 2] = ["portcullis", "portcullis-csrf"];

fn forwarder() -> &'static Forwarder {
    static FORWARDER: std::sync::OnceLock<Forwarder> = std::sync::OnceLock::new();
    FORWARDER.get_or_init(|| {
        let text =
            "upstream = \"http://127.0.0.1:8080\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"data\"\n";
        let config =
            crate::config::parse(text, Path::new("/etc/portcullis/proxy.toml")).unwrap_or_else(|e| panic!("{e}"));
        Forwarder::new(&config, OWN_COOKIES.iter().map(|c| c.to_string()).collect()).expect("forwarder")
    })
}

fn fields(lines: &[(&str, &[u8])]) -> HeaderMap {
    let mut fields = HeaderMap::new();
    for (name, value) in lines {
        fields.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
    }
    fields
}

/// The head as the map path makes it: cleaned, then framed and dated.
fn on_a_map(status: StatusCode, fields: &HeaderMap, framing: Framing) -> Vec<u8> {
    let mut fields = fields.clone();
    forwarder().clean_response(&mut fields);
    encode_response(&mut fields, status, framing)
}

/// A head as `upstream_head::tests::normalized` reads it; a `Date` the proxy added is the time
/// it was written, so only its presence is compared.
fn normalized(head: &[u8], dated_by_upstream: bool) -> (String, Vec<(String, Vec<u8>)>) {
    let (status_line, mut fields) = super::super::upstream_head::tests::normalized(head);
    if !dated_by_upstream {
        fields.iter_mut().filter(|(name, _)| name == "date").for_each(|(_, value)| *value = b"(now)".to_vec());
    }
    (status_line, fields)
}

#[test]
fn a_usual_answer_is_framed_by_us_dated_and_rid_of_hop_by_hop_fields_and_our_cookies() {
    let mut upstream = fields(&[
        ("server", b"nginx"),
        ("content-type", b"text/plain"),
        ("content-length", b"24"),
        ("connection", b"keep-alive"),
        ("keep-alive", b"timeout=5"),
        ("set-cookie", b"app=1; Path=/"),
        ("set-cookie", b"Portcullis=planted; Path=/"),
    ]);
    let head = forwarder().answer_head(StatusCode::OK, &mut upstream, Framing::Length(24));
    let text = String::from_utf8(head.clone()).unwrap();
    let (head_only, date) = text.split_once("date: ").expect("dated");
    assert_eq!(
        head_only,
        "HTTP/1.1 200 OK\r\nserver: nginx\r\ncontent-type: text/plain\r\nset-cookie: app=1; Path=/\r\ncontent-length: 24\r\n"
    );
    assert!(date.ends_with(" GMT\r\n\r\n"), "{date:?}");
    assert!(head.capacity() >= head.len() + 24, "room for the body after the head");
}

/// Field lines an upstream might send: ordinary ones, every kind the rules remove or replace,
/// and odd values of them.
const FIELDS: &[(&str, &[u8])] = &[
    ("server", b"nginx"),
    ("content-type", b"text/html"),
    ("x-app", b"1"),
    ("x-app", b"2"),
    ("date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
    ("content-length", b"24"),
    ("content-length", b"999"),
    ("transfer-encoding", b"chunked"),
    ("connection", b"keep-alive"),
    ("connection", b"close"),
    ("connection", b"x-app"),
    ("connection", b"keep-alive, Set-Cookie"),
    ("keep-alive", b"timeout=5"),
    ("proxy-connection", b"close"),
    ("upgrade", b"h2c"),
    ("trailer", b"x-app"),
    ("proxy-authenticate", b"Basic"),
    ("set-cookie", b"app=1; Path=/"),
    ("set-cookie", b"portcullis=planted"),
    ("set-cookie", b"PORTCULLIS-CSRF=x; Path=/"),
    ("set-cookie", b"=portcullis=x"),
    ("set-cookie", b" portcullis =x"),
    ("set-cookie", b"\xffname=1"),
    ("cache-control", b"no-store"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the upstream answers, the lane's head for the client carries exactly the fields
    /// the map path's would, in the same order within each name.
    #[test]
    fn the_lane_answers_the_client_as_the_map_path_would(
        picks in prop::collection::vec(0..FIELDS.len(), 0..12),
        status in prop::sample::select(vec![200u16, 204, 206, 304, 404, 500]),
        framing in prop::sample::select(vec![
            Framing::Empty, Framing::Length(0), Framing::Length(24), Framing::Length(5_000_000), Framing::Chunked,
            Framing::UntilClose,
        ]),
    ) {
        let upstream = fields(&picks.iter().map(|&i| FIELDS[i]).collect::<Vec<_>>());
        let status = StatusCode::from_u16(status).unwrap();
        let dated = upstream.contains_key(header::DATE);
        let expected = normalized(&on_a_map(status, &upstream, framing), dated);
        let head = forwarder().answer_head(status, &mut upstream.clone(), framing);
        prop_assert_eq!(normalized(&head, dated), expected);
    }
}
