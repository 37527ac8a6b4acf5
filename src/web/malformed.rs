//! Requests refused before anything else looks at them: smuggling leftovers, hosts that are not
//! one plain host, and methods no application behind a gate needs.

use http::{HeaderValue, Response, StatusCode, Version, header};

use crate::base::fields::{Fields, Head};
use crate::web::pages::{self, Body};

/// A host and optional port (RFC 9110 §7.2): no user information (`admin@host`), which no
/// browser sends and an upstream might believe, and not a list of hosts.
pub fn is_plain_host(value: &[u8]) -> bool {
    is_common_host(value)
        || (!value.is_empty()
            && !value.contains(&b'@')
            && !value.contains(&b',')
            && http::uri::Authority::try_from(value).is_ok())
}

/// The shape nearly every request's host has: letters, digits, dots and hyphens, then perhaps a
/// colon and one to five digits. Every such value is an authority `http` accepts (a reg-name and
/// a port, RFC 3986 §3.2), so it is answered without `Authority::try_from`, which copies the value
/// into a new buffer to parse it (an allocation on every request: `bench/instructions.sh`).
/// Anything else, IPv6 literals included, is left to the full parse.
fn is_common_host(value: &[u8]) -> bool {
    let (host, port) = match value.iter().position(|&b| b == b':') {
        Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
        None => (value, None),
    };
    !host.is_empty()
        && host.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|port| (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit))
}

/// Requests refused before anything else looks at them.
///
/// * Request smuggling. hyper already settles the classic case: a request with both
///   `Transfer-Encoding` and `Content-Length` is framed by the former and the latter is dropped
///   (RFC 9112 §6.1), and differing lengths are a 400. What it passes on is re-framed by our own
///   client before the upstream sees it, so the two hops can never disagree. This refuses what is
///   left that is merely odd: a repeated `Content-Length`, or one that is not a plain number.
/// * `Host`: an HTTP/1.x request needs exactly one (RFC 9112 §3.2: "a server MUST respond with a
///   400" to none or several), else it would reach the upstream under someone else's name; an
///   HTTP/2 request may carry one only if it agrees with `:authority` (RFC 9113 §8.3.1).
/// * `CONNECT` and `TRACE` (405): the first would make the proxy a tunnel, the second echo the
///   request back (cookies included) to whoever asked; no application behind a gate needs either.
pub fn refuse_malformed<F: Fields + ?Sized>(request: &Head<'_, F>) -> Option<Response<Body>> {
    let h = request.fields;
    let refuse = |status: StatusCode, text: &'static str, why: &'static str| {
        tracing::warn!(target: "portcullis::security", path = %request.uri.path(), "request refused: {why}");
        let mut response = pages::plain(status, text);
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Some(response)
    };
    // Method names are case-sensitive (RFC 9110 §9.1), so `trace` is another method; but some
    // servers fold case, and `TRACK` is IIS's `TRACE`: all are refused.
    let method = request.method.as_str();
    if ["CONNECT", "TRACE", "TRACK"].iter().any(|m| method.eq_ignore_ascii_case(m)) {
        let mut response =
            refuse(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n", "CONNECT, TRACE or TRACK")?;
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        return Some(response);
    }
    // A control character in the path once decoded (a NUL ends a path for some servers, CR/LF
    // split log lines and headers): no application needs one.
    if percent_encoding::percent_decode_str(request.uri.path()).any(|b| b < 0x20 || b == 0x7f) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: a control character in the path\n",
            "control character in the path",
        );
    }
    let mut lengths = h.values(&header::CONTENT_LENGTH);
    let ambiguous = match (lengths.next(), lengths.next()) {
        (None, _) => false,
        (Some(length), None) => {
            h.has(&header::TRANSFER_ENCODING) || length.is_empty() || !length.iter().all(u8::is_ascii_digit)
        }
        (Some(_), Some(_)) => true,
    };
    if ambiguous {
        return refuse(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: ambiguous message framing\n",
            "ambiguous body framing",
        );
    }
    let mut hosts = h.values(&header::HOST);
    // At most one: a second is never looked at past being there.
    let host = match (hosts.next(), hosts.next()) {
        (one, None) => Ok(one),
        (_, Some(_)) => Err(()),
    };
    let host_ok = match (host, request.version) {
        (Err(()), _) => false,
        // RFC 9113 §8.3.1: `:authority` or `Host`, at least one, and equal when both are there.
        (Ok(one), Version::HTTP_2 | Version::HTTP_3) => match (one, request.uri.authority()) {
            (None, Some(authority)) => is_plain_host(authority.as_str().as_bytes()),
            (Some(one), Some(authority)) => {
                is_plain_host(one) && one.eq_ignore_ascii_case(authority.as_str().as_bytes())
            }
            (Some(one), None) => is_plain_host(one),
            (None, None) => false,
        },
        (Ok(one), _) => one.is_some_and(is_plain_host),
    };
    if !host_ok {
        return refuse(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: exactly one Host header is required\n",
            "missing, repeated or conflicting Host",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut may only ever agree: every host it accepts, the full parse accepts too.
    #[test]
    fn the_common_host_shortcut_accepts_nothing_the_full_parse_refuses() {
        let alphabet = b"a1.-:[]@%,Z ";
        let mut values: Vec<Vec<u8>> = vec![Vec::new()];
        let mut shortcut_said_yes = 0;
        for _ in 0..5 {
            values = values.iter().flat_map(|v| alphabet.iter().map(move |&b| [v.as_slice(), &[b]].concat())).collect();
            for value in &values {
                let full = !value.contains(&b'@')
                    && !value.contains(&b',')
                    && http::uri::Authority::try_from(value.as_slice()).is_ok();
                if is_common_host(value) {
                    shortcut_said_yes += 1;
                    assert!(
                        full,
                        "{:?} taken by the shortcut, refused by the full parse",
                        String::from_utf8_lossy(value)
                    );
                }
                assert_eq!(is_plain_host(value), full || is_common_host(value));
            }
        }
        assert!(shortcut_said_yes > 1_000, "the shortcut took only {shortcut_said_yes}");
        for host in ["example.com", "wiki.example.test:8443", "127.0.0.1:18082", "localhost"] {
            assert!(is_common_host(host.as_bytes()), "{host}");
        }
        for refused in ["", ":80", "a:", "a:123456", "a:1:2", "[::1]:80", "a b", "user@host", "a,b", "ex%41mple"] {
            assert!(!is_common_host(refused.as_bytes()), "{refused:?}");
        }
        assert!(is_plain_host(b"[::1]:80") && !is_plain_host(b"user@host") && !is_plain_host(b"a,b"));
    }
}
