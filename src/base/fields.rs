//! A request's head as the gate reads it: its method, target and header fields, from hyper's
//! request on the full path or from the bytes the express lane parsed.
//!
//! The lane used to build an `http::HeaderMap` from the parsed fields only so that the gate could
//! read them: each field's name hashed and, unless it is one of the standard names, allocated,
//! for a map that was read a handful of times and dropped. For a browser's request (sixteen
//! fields, most of them `sec-*`) that was about 18,000 of its 62,000 instructions
//! (`bench/instructions.sh`). The gate now reads either form through [`Fields`].

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// A request's header fields, read by name or all in order.
pub trait Fields {
    /// The values of every field called `name`, in the order they came (names compare without
    /// regard to case, RFC 9110 §5.1).
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]>;

    /// Every field, as `(name, value)`. A map gives its names in lower case, grouped by name;
    /// fields as read keep the client's case and order.
    fn each(&self) -> impl Iterator<Item = (&str, &[u8])>;

    /// The first value of `name`. (Not `first`: a slice of fields has its own.)
    fn first_value<'a>(&'a self, name: &HeaderName) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    fn has(&self, name: &HeaderName) -> bool {
        self.values(name).next().is_some()
    }

    /// How many bytes the fields take written out as `name: value\r\n` lines.
    fn written_size(&self) -> usize {
        self.each().map(|(name, value)| name.len() + value.len() + 4).sum()
    }
}

impl Fields for HeaderMap {
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }

    fn each(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|(name, value)| (name.as_str(), value.as_bytes()))
    }
}

/// Fields as `httparse` read them. Its grammar for names and values is `http`'s (a test in
/// `server::connection::express` holds them to it byte by byte), so what the lane reads here is
/// what a map would hold.
impl Fields for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.iter().filter(move |field| field.name.eq_ignore_ascii_case(name.as_str())).map(|field| field.value)
    }

    fn each(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|field| (field.name, field.value))
    }
}

/// A field value as text, as `HeaderValue::to_str` reads it: visible ASCII, spaces and tabs
/// only. A value with other bytes (obs-text) is not text.
pub fn text(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b)) {
        // SAFETY: every byte is ASCII, and ASCII is UTF-8. (`from_utf8` would read the bytes a
        // second time, for the cookie line and the host of every request.)
        Some(unsafe { std::str::from_utf8_unchecked(value) })
    } else {
        None
    }
}

/// What the gate reads of a request, borrowed from wherever the request is.
pub struct Head<'a, F: Fields + ?Sized> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub fields: &'a F,
}

impl<'a, B> From<&'a Request<B>> for Head<'a, HeaderMap> {
    fn from(request: &'a Request<B>) -> Self {
        Head { method: request.method(), uri: request.uri(), version: request.version(), fields: request.headers() }
    }
}

impl<F: Fields + ?Sized> Head<'_, F> {
    /// The fields in a map, for the rare request that is prepared on one (`Forwarder::prepare`).
    pub fn fields_as_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in self.fields.each() {
            // Both were read under `http`'s grammar, so neither fails.
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
                map.append(name, value);
            }
        }
        map
    }
}

/// A map of `pairs`, for the tests of the rules that read one.
#[cfg(test)]
pub(crate) fn map_of(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_as_read_are_found_by_name_in_any_case_and_in_order() {
        let read = [
            httparse::Header { name: "Cookie", value: b"a=1" },
            httparse::Header { name: "X-Other", value: b"x" },
            httparse::Header { name: "cOOKIE", value: b"b=2" },
        ];
        let fields: &[httparse::Header<'_>] = &read;
        assert_eq!(fields.values(&http::header::COOKIE).collect::<Vec<_>>(), [b"a=1", b"b=2"]);
        assert_eq!(fields.first_value(&http::header::COOKIE), Some(&b"a=1"[..]));
        assert!(!fields.has(&http::header::HOST));
        assert_eq!(fields.each().map(|(n, _)| n).collect::<Vec<_>>(), ["Cookie", "X-Other", "cOOKIE"]);
        assert_eq!(fields.written_size(), "Cookie: a=1\r\nX-Other: x\r\ncOOKIE: b=2\r\n".len());
    }

    #[test]
    fn text_is_what_a_header_value_calls_text() {
        for value in [&b"plain"[..], b"tab\there", b"caf\xc3\xa9", b"\x80", b"", b"~ !"] {
            let as_value = HeaderValue::from_bytes(value).unwrap();
            assert_eq!(text(value), as_value.to_str().ok(), "{value:?}");
        }
    }
}
