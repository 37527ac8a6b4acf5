//! The head of an upstream's answer as the express lane sends it to the client, in HTTP/1.1's
//! wire form.
//!
//! [`Forwarder::clean_response`] states the rules on a `HeaderMap` (hop-by-hop fields and any
//! `Set-Cookie` of ours come out), and [`encode_response`] frames the answer our way (one
//! `Content-Length`, or chunked) and dates it. As with the request's head
//! (`upstream_head`), the lane does both in one pass over the upstream's fields as `httparse` read
//! them (no map is built: a map costs an allocation a field), asking the same predicates of
//! `base::headers` field by field; an answer whose `Connection` names further fields is cleaned
//! on a map. A property test holds the two ways to the same result
//! (`answer_head_tests.rs`).

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::Forwarder;
use super::upstream_head::put_fields;
use crate::base::fields::Fields;
use crate::base::headers;
use crate::web::raw_upstream::{Answer, Framing};

impl Forwarder {
    /// The head of an upstream's answer for the client, written from its fields as read (see
    /// [`WriteHead`](crate::web::raw_upstream::WriteHead)).
    pub(crate) fn answer_head(&self, answer: &Answer<'_>) -> Result<Vec<u8>, String> {
        let Answer { status, framing, announced_length, fields } = *answer;
        let (mut names_fields, mut transfer_encoding, mut dated) = (false, false, false);
        for field in fields {
            let name = field.name;
            if name.eq_ignore_ascii_case("connection") {
                names_fields |= headers::connection_line_names_fields(field.value);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
            } else if name.eq_ignore_ascii_case("date") {
                dated = true;
            }
        }
        if names_fields {
            let mut fields = answer_as_map(answer)?;
            self.clean_response(&mut fields);
            return Ok(encode_response(&mut fields, status, framing));
        }
        // RFC 9112 §6.3: with both, `Transfer-Encoding` frames the message and `Content-Length`
        // must go (`strip_hop_by_hop`). Otherwise an answer without a body (to HEAD, a 304) keeps
        // the one length it announced; a 204 has none (RFC 9110 §8.6); any other is framed by us.
        let kept_length = announced_length
            .filter(|_| framing == Framing::Empty && status != StatusCode::NO_CONTENT && !transfer_encoding);
        let passes = |field: &&httparse::Header<'_>| {
            let name = field.name;
            !(headers::is_hop_by_hop_as_read(name)
                || name.eq_ignore_ascii_case("content-length")
                || (name.eq_ignore_ascii_case("set-cookie")
                    && headers::sets_our_cookie(field.value, &self.own_cookies)))
        };
        let mut length = [0u8; 20];
        let framing_field: Option<(&str, &[u8])> = match framing {
            Framing::Length(n) => Some(("content-length", decimal(n, &mut length))),
            Framing::Chunked | Framing::UntilClose => Some(("transfer-encoding", b"chunked")),
            Framing::Empty => kept_length.map(|n| ("content-length", decimal(n, &mut length))),
        };
        let date = (!dated).then(now_as_http_date);
        let added = framing_field.as_ref().map_or(0, |(name, value)| name.len() + value.len() + 4)
            + date.as_ref().map_or(0, |value| 4 + value.len() + 4);
        let mut head = Vec::with_capacity(48 + fields.written_size() + added + 2 + body_room(framing));
        put_status_line(&mut head, status);
        for field in fields.iter().filter(passes) {
            put_raw_field(&mut head, field.name, field.value);
        }
        if let Some((name, value)) = framing_field {
            put_raw_field(&mut head, name, value);
        }
        if let Some(date) = date {
            put_raw_field(&mut head, "date", date.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        Ok(head)
    }
}

/// An answer's fields on a map, with the length an answer without a body announces as one
/// plain number or none (as the one-pass writer passes it on), for the rules stated on maps.
fn answer_as_map(answer: &Answer<'_>) -> Result<HeaderMap, String> {
    let mut fields = HeaderMap::with_capacity(answer.fields.len() + 2);
    for field in answer.fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| "a malformed header name".to_string())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| format!("a malformed {name} value"))?;
        fields.append(name, value);
    }
    if answer.framing == Framing::Empty {
        match answer.announced_length {
            Some(length) => {
                fields.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            None => {
                fields.remove(header::CONTENT_LENGTH);
            }
        }
    }
    Ok(fields)
}

/// `n` in decimal, written into `buffer`.
fn decimal(mut n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[at..];
        }
    }
}

fn put_raw_field(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

fn put_status_line(head: &mut Vec<u8>, status: StatusCode) {
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    // The standard phrase, never the upstream's (which may hold any byte).
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// Room for a small body to follow the head in its buffer (one write for the whole answer), up
/// to 1 KiB: a buffer no larger than it needs stays in glibc's per-thread cache (up to 1,032
/// bytes), where a larger one takes the slow path.
fn body_room(framing: Framing) -> usize {
    match framing {
        Framing::Empty => 0,
        Framing::Length(length) => length.min(1024) as usize,
        Framing::Chunked | Framing::UntilClose => 1024,
    }
}

/// An answer's head for the client, framed by us: one `Content-Length` for a length body,
/// chunked for anything else with a body.
pub(crate) fn encode_response(headers: &mut HeaderMap, status: StatusCode, framing: Framing) -> Vec<u8> {
    match framing {
        Framing::Length(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        Framing::Chunked | Framing::UntilClose => {
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        // A HEAD or 304 answer keeps the length it would have had; a 204 has none (RFC 9110 §8.6).
        Framing::Empty if status == StatusCode::NO_CONTENT => {
            headers.remove(header::CONTENT_LENGTH);
        }
        Framing::Empty => {}
    }
    if !headers.contains_key(header::DATE) {
        // RFC 9110 §6.6.1: an origin with a clock sends one; hyper adds it on the full path.
        headers.insert(header::DATE, now_as_http_date());
    }
    let mut head = Vec::with_capacity(48 + headers.written_size() + 2 + body_room(framing));
    put_status_line(&mut head, status);
    put_fields(&mut head, headers);
    head.extend_from_slice(b"\r\n");
    head
}

/// The current time as an HTTP date, formatted once a second per thread.
fn now_as_http_date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static LAST: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|(at, value)| {
        if *at != second {
            *value =
                HeaderValue::from_str(&httpdate::fmt_http_date(now)).unwrap_or_else(|_| HeaderValue::from_static(""));
            *at = second;
        }
        value.clone()
    })
}

#[cfg(test)]
#[path = "answer_head_tests.rs"]
mod tests;
