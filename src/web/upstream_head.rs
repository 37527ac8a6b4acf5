//! The request head the upstream is sent from the express lane, in HTTP/1.1's wire form.
//!
//! [`Forwarder::prepare`] states the rules on a `HeaderMap`: hop-by-hop fields, identity
//! look-alikes and our cookies come out, the forwarding fields and the identity go in. Applied to
//! a map and then written out, each removal and insertion hashes a name, and for the common
//! request that was a fifth of the lane's work (`bench/instructions.sh`). So the lane writes the
//! head in one pass over the client's fields instead, asking the same predicates of
//! `base::headers` field by field: a field passes if `prepare` would have kept it, and what
//! `prepare` adds is written after them, computed by the same functions.
//!
//! The one pass only agrees with `prepare` where no rule reads what an earlier rule removed. That
//! holds unless an operator's `identity.strip_headers` names a field the forwarding rules read
//! (checked once, at start: [`Forwarder::new`] sets `direct_head`), or the client's `Connection`
//! names further fields to drop (checked per request). Those requests, and any without a `Host`,
//! are prepared on a map as the full path prepares them. A property test holds the two ways to
//! the same result (`upstream_head_tests.rs`).

use http::{HeaderMap, HeaderName, Request, header};

use super::Forwarder;
use crate::base::fields::{Fields, Head};
use crate::base::forwarding::{self, ClientInfo, Forwarding};
use crate::base::headers::{self, ForwardedCookie};
use crate::config::IdentityHeaders;
use crate::domain::identity::UpstreamIdentity;

/// The fields a one-pass head must see as the client sent them: the forwarding rules read
/// `Host`, `X-Forwarded-For` and `X-Forwarded-Proto`, the cookie rule reads `Cookie`, and the
/// proxy's own fields must not also be identity headers.
const READ_OR_SET_BY_RULES: [HeaderName; 6] = [
    header::HOST,
    header::COOKIE,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
];

/// Whether, under this configuration, a head written in one pass is the head `prepare` makes:
/// no field the rules read is stripped as an identity look-alike, and the identity headers are
/// four distinct names apart from the proxy's own.
pub(super) fn one_pass_agrees(identity: &IdentityHeaders, stripped: &[HeaderName], prefixes: &[String]) -> bool {
    let names = identity.all();
    let distinct = names.iter().enumerate().all(|(i, a)| names[i + 1..].iter().all(|b| a != b));
    distinct
        && !READ_OR_SET_BY_RULES.iter().any(|n| headers::is_identity_lookalike(n.as_str(), stripped, prefixes))
        && !names.iter().any(|n| READ_OR_SET_BY_RULES.contains(n))
}

impl Forwarder {
    /// The head of `request` (a GET or HEAD the gate let through, as the lane read it) for the
    /// upstream, with `identity`.
    pub(crate) fn upstream_head<F: Fields + ?Sized>(
        &self,
        request: &Head<'_, F>,
        identity: &UpstreamIdentity,
        client: &ClientInfo,
    ) -> Vec<u8> {
        let fields = request.fields;
        if self.direct_head
            && request.uri.authority().is_none()
            && fields.has(&header::HOST)
            && !headers::connection_names_fields(fields)
        {
            return self.write_head(request, identity, client);
        }
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = request.method.clone();
        parts.uri = request.uri.clone();
        parts.version = request.version;
        parts.headers = request.fields_as_map();
        self.prepare(&mut parts, Some(identity), client);
        encode_request(&parts)
    }

    /// [`Forwarder::prepare`] and [`encode_request`] in one pass over the client's fields, which
    /// keep the names' case and their order as sent.
    fn write_head<F: Fields + ?Sized>(
        &self,
        request: &Head<'_, F>,
        identity: &UpstreamIdentity,
        client: &ClientInfo,
    ) -> Vec<u8> {
        let fields = request.fields;
        let Forwarding { from_trusted, set } = forwarding::forwarding(fields, client, &self.trusted_proxies);
        let rebuilt;
        let cookie = match headers::forwarded_cookie(fields, &self.own_cookies) {
            ForwardedCookie::Absent => None,
            ForwardedCookie::AsSent(value) => Some(value),
            ForwardedCookie::Rebuilt(value) => {
                rebuilt = value;
                Some(rebuilt.as_bytes())
            }
        };
        let identity = identity.fields(&self.identity_headers);
        let passes = |name: &str| {
            !(headers::is_hop_by_hop_as_read(name)
                || name.eq_ignore_ascii_case("cookie")
                || headers::is_identity_lookalike(name, &self.stripped, &self.stripped_prefixes)
                || headers::is_set_by_proxy(name)
                || (!from_trusted && headers::is_forwarding(name)))
        };
        let method = request.method.as_str();
        let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let added = set
            .iter()
            .filter_map(|(name, value)| Some(field_size(name.as_str(), value.as_ref()?.as_bytes())))
            .sum::<usize>()
            + identity.iter().map(|(name, value)| field_size(name.as_str(), value.as_bytes())).sum::<usize>();
        // The client's fields are an upper bound for what passes of them, cookie included.
        let mut head = Vec::with_capacity(method.len() + target.len() + 13 + fields.written_size() + added + 2);
        put_request_line(&mut head, method, target);
        for (name, value) in fields.each().filter(|(name, _)| passes(name)) {
            put_field(&mut head, name, value);
        }
        if let Some(cookie) = cookie {
            put_field(&mut head, "cookie", cookie);
        }
        for (name, value) in &set {
            if let Some(value) = value {
                put_field(&mut head, name.as_str(), value.as_bytes());
            }
        }
        for (name, value) in identity {
            put_field(&mut head, name.as_str(), value.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

/// A request head in HTTP/1.1's wire form (RFC 9112 §3): origin-form target, one line a field.
pub(crate) fn encode_request(parts: &http::request::Parts) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = parts.method.as_str();
    let mut head = Vec::with_capacity(method.len() + target.len() + 13 + parts.headers.written_size() + 2);
    put_request_line(&mut head, method, target);
    put_fields(&mut head, &parts.headers);
    head.extend_from_slice(b"\r\n");
    head
}

fn put_request_line(head: &mut Vec<u8>, method: &str, target: &str) {
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
}

fn field_size(name: &str, value: &[u8]) -> usize {
    name.len() + value.len() + 4
}

pub(crate) fn put_fields(head: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        put_field(head, name.as_str(), value.as_bytes());
    }
}

pub(crate) fn put_field(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "upstream_head_tests.rs"]
pub(super) mod tests;
