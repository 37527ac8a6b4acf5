use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::web::raw_upstream::{MAX_HEADERS, interpret};

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

/// An answer's head as an upstream sends it.
fn wire(status: u16, lines: &[(&str, &[u8])]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} Whatever\r\n").into_bytes();
    for (name, value) in lines {
        head.extend_from_slice(format!("{name}: ").as_bytes());
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The lane's head for the client, read from `wire` as the raw upstream reads it, with the
/// framing it was read to have; `None` if the answer cannot be passed on.
fn on_the_lane(wire: &[u8], head_request: bool) -> Option<(Vec<u8>, Framing)> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    assert!(matches!(parsed.parse(wire), Ok(httparse::Status::Complete(_))));
    let read = interpret(&parsed, head_request).ok()?.expect("a final answer");
    let answer = Answer {
        status: read.status,
        framing: read.framing,
        announced_length: read.announced_length,
        fields: parsed.headers,
    };
    Some((forwarder().answer_head(&answer).expect("written"), read.framing))
}

/// The head as the map path makes it from the same fields: an answer without a body keeps one
/// plain length or none, then the map is cleaned, framed and dated.
fn on_a_map(status: u16, lines: &[(&str, &[u8])], framing: Framing) -> Vec<u8> {
    let mut fields = HeaderMap::new();
    for (name, value) in lines {
        fields.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
    }
    if framing == Framing::Empty {
        match headers::one_length(&fields) {
            Some(length) => drop(fields.insert(header::CONTENT_LENGTH, HeaderValue::from(length))),
            None => drop(fields.remove(header::CONTENT_LENGTH)),
        }
    }
    forwarder().clean_response(&mut fields);
    encode_response(&mut fields, StatusCode::from_u16(status).unwrap(), framing)
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
    let upstream = wire(
        200,
        &[
            ("Server", b"nginx"),
            ("Content-Type", b"text/plain"),
            ("Content-Length", b"24"),
            ("Connection", b"keep-alive"),
            ("Keep-Alive", b"timeout=5"),
            ("Set-Cookie", b"app=1; Path=/"),
            ("Set-Cookie", b"Portcullis=planted; Path=/"),
        ],
    );
    let (head, framing) = on_the_lane(&upstream, false).expect("passed on");
    assert_eq!(framing, Framing::Length(24));
    let text = String::from_utf8(head.clone()).unwrap();
    let (head_only, date) = text.split_once("date: ").expect("dated");
    assert_eq!(
        head_only,
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nSet-Cookie: app=1; Path=/\r\ncontent-length: 24\r\n",
        "the standard reason phrase, the fields as the upstream spelled them, our framing"
    );
    assert!(date.ends_with(" GMT\r\n\r\n"), "{date:?}");
    assert!(head.capacity() >= head.len() + 24, "room for the body after the head");
}

#[test]
fn an_answer_without_a_body_passes_on_the_one_length_it_announces_and_a_204_none() {
    let head = |status, lines: &[(&str, &[u8])], head_request| {
        String::from_utf8(on_the_lane(&wire(status, lines), head_request).expect("passed on").0).unwrap()
    };
    let to_head = head(200, &[("Content-Length", b"5, 5"), ("Date", b"x")], true);
    assert_eq!(to_head, "HTTP/1.1 200 OK\r\nDate: x\r\ncontent-length: 5\r\n\r\n");
    let odd = head(200, &[("Content-Length", b"5"), ("Content-Length", b"6"), ("Date", b"x")], true);
    assert_eq!(odd, "HTTP/1.1 200 OK\r\nDate: x\r\n\r\n", "two lengths: none passed on");
    let no_content = head(204, &[("Content-Length", b"0"), ("Date", b"x")], false);
    assert_eq!(no_content, "HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n");
    let not_modified = head(304, &[("content-length", b"24"), ("ETag", b"\"a\""), ("Date", b"x")], false);
    assert_eq!(not_modified, "HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nDate: x\r\ncontent-length: 24\r\n\r\n");
}

/// Field lines an upstream might send: ordinary ones, every kind the rules remove or replace,
/// odd values of them, and names in any case.
const FIELDS: &[(&str, &[u8])] = &[
    ("server", b"nginx"),
    ("Content-Type", b"text/html"),
    ("x-app", b"1"),
    ("X-App", b"2"),
    ("date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
    ("content-length", b"24"),
    ("Content-Length", b"24, 24"),
    ("content-length", b"999"),
    ("transfer-encoding", b"chunked"),
    ("Transfer-Encoding", b"gzip"),
    ("connection", b"keep-alive"),
    ("Connection", b"close"),
    ("connection", b"x-app"),
    ("connection", b"keep-alive, Set-Cookie"),
    ("Keep-Alive", b"timeout=5"),
    ("proxy-connection", b"close"),
    ("upgrade", b"h2c"),
    ("trailer", b"x-app"),
    ("Proxy-Authenticate", b"Basic"),
    ("set-cookie", b"app=1; Path=/"),
    ("Set-Cookie", b"portcullis=planted"),
    ("set-cookie", b"PORTCULLIS-CSRF=x; Path=/"),
    ("SET-COOKIE", b"=portcullis=x"),
    ("set-cookie", b" portcullis =x"),
    ("set-cookie", b"\xffname=1"),
    ("cache-control", b"no-store"),
    ("x-text", b"caf\xc3\xa9\tand a tab"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the upstream answers, the lane's head for the client carries exactly the fields
    /// the map path's would, in the same order within each name.
    #[test]
    fn the_lane_answers_the_client_as_the_map_path_would(
        picks in prop::collection::vec(0..FIELDS.len(), 0..12),
        status in prop::sample::select(vec![200u16, 204, 206, 304, 404, 500]),
        head_request in any::<bool>(),
    ) {
        let lines: Vec<_> = picks.iter().map(|&i| FIELDS[i]).collect();
        let Some((head, framing)) = on_the_lane(&wire(status, &lines), head_request) else {
            // Refused (a 502): only an answer with a body whose lengths disagree.
            prop_assert!(lines.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-length")));
            return Ok(());
        };
        let dated = lines.iter().any(|(name, _)| name.eq_ignore_ascii_case("date"));
        let expected = normalized(&on_a_map(status, &lines, framing), dated);
        prop_assert_eq!(normalized(&head, dated), expected);
    }
}
