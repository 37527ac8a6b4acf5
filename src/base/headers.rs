//! Header hygiene between the client, the proxy and the upstream.
//!
//! Everything that decides which headers cross the proxy lives here, so it can be read (and
//! reviewed) in one sitting:
//!
//! * hop-by-hop headers are dropped in both directions (RFC 9110 §7.6.1);
//! * identity headers from the client are dropped in every spelling (`X_Forwarded_User`,
//!   `x-forwarded-user`, duplicates), so only the proxy can assert who the user is;
//! * the proxy's own cookies never reach the upstream, and the upstream cannot set them;
//! * `X-Forwarded-*`, `X-Real-IP` and `Forwarded` from the client are believed only when the
//!   connection comes from a configured trusted proxy.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::base::fields::{self, Fields};

/// Connection-specific headers that never travel past one hop (RFC 9110 §7.6.1), plus the
/// de-facto ones it calls out (`Proxy-Connection`, `Keep-Alive`), the proxy-auth pair from
/// RFC 9110 §11.7, which are addressed to us, not the origin, and `HTTP2-Settings`, which only
/// means something on the connection that asks to upgrade to h2c (RFC 7540 §3.2.1).
const HOP_BY_HOP: [HeaderName; 10] = [
    HeaderName::from_static(HOP_BY_HOP_NAMES[0]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[1]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[2]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[3]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[4]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[5]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[6]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[7]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[8]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[9]),
];
/// `Transfer-Encoding`'s bit in [`strip_hop_by_hop`]'s set of those present.
const TRANSFER_ENCODING_BIT: u16 = 1 << 5;
/// Headers a `Connection` token may never remove: the request would lose its target (`Host`) or
/// its framing (`Content-Length`) on the way to the upstream.
const NEVER_CONNECTION_SPECIFIC: [&str; 2] = ["host", "content-length"];

/// Headers that tell an application where a request came from or what it originally was. The
/// proxy sets the first five itself; all of them, in every `_`/`-` spelling (CGI, Rack and WSGI
/// servers fold `X_Forwarded_For` into `X-Forwarded-For`; compare Puma CVE-2024-45614), are
/// believed only from `trusted_proxies` and removed from everyone else.
const FORWARDING: [&str; 5] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "forwarded"];
// The ones the proxy sets, as prepared names: a `&str` name is parsed again at every use, and
// this runs for every forwarded request.
pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const ORIGINAL_REQUEST: [&str; 31] = [
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-original-host",
    "x-rewrite-url",
    "x-host",
    "true-client-ip",
    "cf-connecting-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    // Read by common "real client address" helpers (django-ipware, PHP snippets) or set by
    // other proxies; an application that believes one would believe the client.
    "client-ip",
    "x-forwarded",
    "forwarded-for",
    "x-forwarded-protocol",
    "x-forwarded-by",
    "x-forwarded-path",
    "front-end-https",
    "x-url-scheme",
    "x-remote-addr",
    "x-remote-ip",
    "x-proxyuser-ip",
    "x-originating-ip",
    "x-envoy-external-address",
];

/// Identity headers that some upstream somewhere trusts (Apache's and Authelia's `Remote-*`,
/// oauth2-proxy, Grafana's auth proxy, ours under other names): removed from every request,
/// whoever sent it, with the prefixes below and `identity.strip_headers`. The identity we assert
/// is set after this.
const OTHER_IDENTITY: [&str; 16] = [
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-forwarded-preferred-username",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-email",
    // Envoy's and Istio's client certificate, Kong's consumer, and the plain names apps read.
    "x-forwarded-client-cert",
    "x-authenticated-userid",
    "x-authenticated-user",
    "x-userinfo",
    "x-id-token",
    "x-user",
];
/// Prefixes of whole families of identity headers: oauth2-proxy's `X-Auth-Request-*`,
/// authentik's `X-authentik-*`, Cloudflare Access's `Cf-Access-*`, Grafana's `X-WEBAUTH-*`,
/// `X-Remote-*`, Pomerium, Vouch, Tailscale, Google IAP, AWS ALB and Azure App Service, our
/// own, and the ones below.
const OTHER_IDENTITY_PREFIXES: [&str; 17] = [
    "x-auth-request-",
    "x-authentik-",
    "cf-access-",
    "x-webauth-",
    "x-remote-",
    "x-pomerium-",
    "x-vouch-",
    "tailscale-user-",
    "x-goog-authenticated-user-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "x-portcullis-",
    // Kong's `X-Consumer-*`, mod_auth_openidc's `OIDC_CLAIM_*` (and `OIDC_access_token`),
    // Kubernetes' `Impersonate-*`, and client certificates passed on as headers (Apache's
    // `SSL_CLIENT_*`, nginx's `X-SSL-Client-*`).
    "x-consumer-",
    "oidc-",
    "impersonate-",
    "ssl-client-",
    "x-ssl-client-",
];

/// [`HOP_BY_HOP`] as text, for names as they were read (`HeaderName::as_str` of a standard name
/// is a lookup of its own); `Transfer-Encoding` is sixth, [`TRANSFER_ENCODING_BIT`].
const HOP_BY_HOP_NAMES: [&str; 10] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// Which first two bytes (under [`fold`]) begin one of `lists`' names, as bit `second` of
/// `table[first]`: a name that begins otherwise is none of them, found without comparing it to
/// each. These checks run for every field of every forwarded request, a browser sends a dozen
/// or more, and most (`sec-fetch-*`, `accept-*`, `if-*`) share no first two bytes with any.
const fn first_two_bytes(lists: &[&[&str]]) -> [[u64; 4]; 256] {
    let mut table = [[0u64; 4]; 256];
    let mut list = 0;
    while list < lists.len() {
        let mut name = 0;
        while name < lists[list].len() {
            let bytes = lists[list][name].as_bytes();
            let (first, second) = (bytes[0] as usize, bytes[1] as usize);
            table[first][second / 64] |= 1 << (second % 64);
            name += 1;
        }
        list += 1;
    }
    table
}
const IDENTITY_BEGINNINGS: [[u64; 4]; 256] = first_two_bytes(&[&OTHER_IDENTITY, &OTHER_IDENTITY_PREFIXES]);
const FORWARDING_BEGINNINGS: [[u64; 4]; 256] = first_two_bytes(&[&FORWARDING, &ORIGINAL_REQUEST]);

/// Whether `name` may be one of the lists `table` was made from ([`first_two_bytes`]).
fn may_begin_one_of(table: &[[u64; 4]; 256], name: &str) -> bool {
    match name.as_bytes() {
        [first, second, ..] => {
            let (first, second) = (usize::from(fold(*first)), usize::from(fold(*second)));
            table[first][second / 64] >> (second % 64) & 1 == 1
        }
        // Shorter than any listed name's beginning: the lists say.
        _ => true,
    }
}

/// Headers that an operator may not choose as identity headers: HTTP's own and the ones the
/// proxy manages.
pub fn is_reserved_for_proxy(name: &HeaderName) -> bool {
    let n = normalized(name.as_str());
    HOP_BY_HOP.iter().any(|hop| hop.as_str() == n)
        || FORWARDING.contains(&n.as_str())
        || ["host", "cookie", "set-cookie", "content-length", "authorization"].contains(&n.as_str())
}

/// Lower case with `_` read as `-`. Many frameworks (CGI, WSGI, Rails, PHP) map both `-` and `_`
/// to the same variable, so `X_Forwarded_User` must be treated as `X-Forwarded-User`
/// (oauth2-proxy CVE-2025-64484).
fn normalized(name: &str) -> String {
    name.bytes().map(fold).map(char::from).collect()
}

fn fold(byte: u8) -> u8 {
    if byte == b'_' { b'-' } else { byte.to_ascii_lowercase() }
}

/// `a` and `b` are the same header under [`normalized`], compared without allocating (this runs
/// for every header of every forwarded request).
fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// The tokens of every `Connection` header (RFC 9110 §7.6.1: a comma-separated list, case
/// insensitive, possibly split over several header lines), trimmed, in their original case. A
/// line is split as bytes, so a byte that is not ASCII spoils only its own token, never the
/// names beside it.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::CONNECTION).iter().flat_map(|v| tokens(v.as_bytes()))
}

fn tokens(line: &[u8]) -> impl Iterator<Item = &str> {
    line.split(|&b| b == b',').filter_map(|t| std::str::from_utf8(t).ok()).map(str::trim).filter(|t| !t.is_empty())
}

/// The protocol a client asks to switch to, when the request is an upgrade: `Connection`
/// lists `upgrade` among its tokens (so `keep-alive, Upgrade` counts) and `Upgrade` is present.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Whether `name` is one of [`HOP_BY_HOP`], which never pass the proxy in either direction.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|hop| hop == name)
}

/// [`is_hop_by_hop`] for a field name as it was read, in any case.
pub fn is_hop_by_hop_as_read(name: &str) -> bool {
    HOP_BY_HOP_NAMES.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

/// A `Connection` token that names a header of the message for removal. A token may name a
/// header we must keep end to end; RFC 9110 §7.6.1 says the sender meant it as
/// connection-specific, so it goes, unless losing it would change what is asked for. Tokens that
/// name hop-by-hop headers (`keep-alive`, `upgrade`) or none (`close`) go anyway.
fn names_another_field(token: &str) -> bool {
    !token.eq_ignore_ascii_case("close")
        && !HOP_BY_HOP.iter().any(|hop| token.eq_ignore_ascii_case(hop.as_str()))
        && !NEVER_CONNECTION_SPECIFIC.iter().any(|kept| token.eq_ignore_ascii_case(kept))
}

/// Whether `Connection` names fields besides the hop-by-hop ones, which [`strip_hop_by_hop`]
/// would then remove too.
pub fn connection_names_fields<F: Fields + ?Sized>(headers: &F) -> bool {
    headers.values(&header::CONNECTION).any(connection_line_names_fields)
}

/// Whether one `Connection` line names fields besides the hop-by-hop ones (see
/// [`connection_names_fields`]).
pub fn connection_line_names_fields(line: &[u8]) -> bool {
    // The usual values, answered without splitting (this runs twice for every request the
    // express lane carries).
    if line.eq_ignore_ascii_case(b"keep-alive") || line.eq_ignore_ascii_case(b"close") {
        return false;
    }
    tokens(line).any(names_another_field)
}

/// Whether one `Connection` line has the token `close` (RFC 9112 §9.6).
pub fn connection_line_closes(line: &[u8]) -> bool {
    // The usual value, answered without splitting (read from every answer the lane relays).
    if line.eq_ignore_ascii_case(b"keep-alive") {
        return false;
    }
    tokens(line).any(|token| token.eq_ignore_ascii_case("close"))
}

/// Removes hop-by-hop headers, including any the sender listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none of these, and most responses only `Connection: keep-alive`: look
    // before paying for removals (this runs twice for every forwarded request).
    // Which of them are present, as bits: removing a name that is absent still hashes it.
    let present = headers
        .keys()
        .filter_map(|name| HOP_BY_HOP.iter().position(|hop| hop == name))
        .fold(0u16, |bits, at| bits | 1 << at);
    if present == 0 {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|token| names_another_field(token))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| headers.contains_key(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for (at, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << at != 0 {
            headers.remove(name);
        }
    }
    // RFC 9112 §6.3: with both, `Transfer-Encoding` frames the message, and an intermediary must
    // remove `Content-Length` before passing it on; kept, it cut the body short downstream.
    if present & TRANSFER_ENCODING_BIT != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
}
/// Removes every client-sent header that could be mistaken for an identity: the configured
/// names, [`OTHER_IDENTITY`] and everything under [`OTHER_IDENTITY_PREFIXES`], in any case or
/// `_`/`-` spelling.
pub fn strip_identity(headers: &mut HeaderMap, identity_names: &[HeaderName], extra_prefixes: &[String]) {
    let is_identity = |name: &HeaderName| is_identity_lookalike(name.as_str(), identity_names, extra_prefixes);
    if !headers.keys().any(is_identity) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|n| is_identity(n)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether a client-sent `name` could be mistaken for an identity ([`strip_identity`] removes
/// it).
pub fn is_identity_lookalike(name: &str, identity_names: &[HeaderName], extra_prefixes: &[String]) -> bool {
    let n = name;
    let has_prefix = |prefix: &str| n.get(..prefix.len()).is_some_and(|p| same_header(p, prefix));
    identity_names.iter().any(|id| same_header(n, id.as_str()))
        || extra_prefixes.iter().any(|prefix| has_prefix(prefix))
        || (may_begin_one_of(&IDENTITY_BEGINNINGS, n)
            && (OTHER_IDENTITY.iter().any(|id| same_header(n, id))
                || OTHER_IDENTITY_PREFIXES.iter().any(|prefix| has_prefix(prefix))))
}

/// The values of the cookie called `name`, from every `Cookie` header (HTTP/2 clients may send
/// several). A line is split as bytes: a browser sends all its cookies in one line, and a cookie
/// of the application's with bytes that are not text (`app=café`) must not hide ours beside it
/// (found by an attack pass: one such cookie signed its user out of every request). Only our
/// cookie's own value must be text.
pub fn cookie_values<'a, F: Fields + ?Sized>(headers: &'a F, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers.values(&header::COOKIE).flat_map(|line| line.split(|&b| b == b';')).filter_map(move |pair| {
        let at = pair.iter().position(|&b| b == b'=')?;
        if pair[..at].trim_ascii() != name.as_bytes() {
            return None;
        }
        let value = pair[at + 1..].trim_ascii();
        let start = value.iter().position(|&b| b != b'"').unwrap_or(value.len());
        let end = value.iter().rposition(|&b| b != b'"').map_or(start, |last| last + 1);
        fields::text(&value[start..end.max(start)])
    })
}

/// The `Cookie` line the upstream is sent: the client's, without ours.
pub enum ForwardedCookie<'a> {
    /// No cookie is left (none was sent, or only ours).
    Absent,
    /// The client's one line, which holds none of ours.
    AsSent(&'a [u8]),
    /// What is left of the client's lines once ours are taken out, folded into one.
    Rebuilt(HeaderValue),
}

/// Our cookies taken out of the request's, keeping the upstream's own cookies intact, and what
/// is left folded into a single line (RFC 9113 §8.2.3 allows either form; HTTP/1.1 upstreams
/// expect one).
pub fn forwarded_cookie<'a, F: Fields + ?Sized>(headers: &'a F, ours: &[impl AsRef<str>]) -> ForwardedCookie<'a> {
    let is_ours = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        ours.iter().any(|o| o.as_ref() == name)
    };
    // The usual cases, without rebuilding anything (this runs for every forwarded request): no
    // cookies, only ours (a browser at a plain app), or one line with none of ours. Anything
    // else, and any value that is not UTF-8, is rebuilt below.
    let (mut lines, mut own, mut others) = (0, 0, 0);
    for value in headers.values(&header::COOKIE) {
        lines += 1;
        let Some(text) = fields::text(value) else {
            others = usize::MAX;
            break;
        };
        for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if is_ours(pair) { own += 1 } else { others += 1 }
        }
    }
    match (lines, own, others) {
        (0, _, _) | (_, _, 0) => return ForwardedCookie::Absent,
        (1, 0, 1..usize::MAX) => {
            return headers.first_value(&header::COOKIE).map_or(ForwardedCookie::Absent, ForwardedCookie::AsSent);
        }
        _ => {}
    }
    // Every pair that is not ours, trimmed, joined by "; ", in one buffer. A line that is not
    // UTF-8 is read piece by piece, each with its bad bytes replaced (U+FFFD).
    let mut kept = String::with_capacity(headers.values(&header::COOKIE).map(<[u8]>::len).sum());
    let mut keep = |pair: &str| {
        if !pair.is_empty() && !is_ours(pair) {
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(pair);
        }
    };
    for value in headers.values(&header::COOKIE) {
        match std::str::from_utf8(value) {
            Ok(text) => text.split(';').map(str::trim).for_each(&mut keep),
            Err(_) => {
                for piece in value.split(|&b| b == b';') {
                    keep(String::from_utf8_lossy(piece).trim());
                }
            }
        }
    }
    if kept.is_empty() {
        return ForwardedCookie::Absent;
    }
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)) {
        Ok(value) => ForwardedCookie::Rebuilt(value),
        Err(_) => ForwardedCookie::Absent,
    }
}

/// Removes our cookies from the request and folds what is left into one line
/// ([`forwarded_cookie`]).
pub fn strip_cookies(headers: &mut HeaderMap, ours: &[impl AsRef<str>]) {
    let rebuilt = match forwarded_cookie(headers, ours) {
        ForwardedCookie::AsSent(_) => return,
        ForwardedCookie::Absent => None,
        ForwardedCookie::Rebuilt(value) => Some(value),
    };
    match rebuilt {
        // `insert` replaces every earlier line.
        Some(value) => headers.insert(header::COOKIE, value),
        None => headers.remove(header::COOKIE),
    };
}

/// The one length all `Content-Length` values agree on (RFC 9110 §8.6 allows a repeated list of
/// the same number), or `None` (also when there is none).
pub fn one_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = OneLength::default();
    for value in headers.get_all(header::CONTENT_LENGTH) {
        length.add(value.as_bytes());
    }
    length.get()
}

/// [`one_length`] gathered line by line, for fields as they were read.
#[derive(Debug, Default, Clone, Copy)]
pub struct OneLength {
    seen: Option<u64>,
    spoiled: bool,
}

impl OneLength {
    /// Takes in one `Content-Length` line: a list of decimal numbers, all equal.
    pub fn add(&mut self, line: &[u8]) {
        for item in line.split(|&b| b == b',') {
            let item = item.trim_ascii();
            // At most 19 digits: any such number fits in a u64.
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                self.spoiled = true;
                return;
            }
            let n = item.iter().fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
            if self.seen.is_some_and(|seen| seen != n) {
                self.spoiled = true;
            }
            self.seen = Some(n);
        }
    }

    /// The one length, if every line was a list of the same number.
    pub fn get(self) -> Option<u64> {
        if self.spoiled { None } else { self.seen }
    }
}

/// Whether a `Set-Cookie` value from the upstream would set one of our cookies (in any case).
pub fn sets_our_cookie(value: &[u8], ours: &[impl AsRef<str>]) -> bool {
    let text = String::from_utf8_lossy(value);
    let name = text.split(['=', ';']).next().unwrap_or("").trim();
    // A cookie without a name (`=portcullis=X`) is one some clients read as `portcullis`
    // (RFC 6265bis §5.6 gives it an empty name; not everyone follows it): none pass.
    name.is_empty() || ours.iter().any(|o| o.as_ref().eq_ignore_ascii_case(name))
}

/// Removes `Set-Cookie` headers from an upstream response that would overwrite our cookies:
/// an upstream (or a user's app inside it) must not be able to plant a session.
pub fn strip_set_cookie(headers: &mut HeaderMap, ours: &[impl AsRef<str>]) {
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> =
        headers.get_all(header::SET_COOKIE).iter().filter(|v| !sets_our_cookie(v.as_bytes(), ours)).cloned().collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

/// The forwarding headers the proxy sets for the upstream, whoever sent copies of them.
const SET_BY_PROXY: [HeaderName; 4] = [X_FORWARDED_FOR, X_REAL_IP, X_FORWARDED_PROTO, X_FORWARDED_HOST];

/// Whether `name` is one the proxy sets ([`SET_BY_PROXY`]), in any `_`/`-` spelling: a client's
/// copy is replaced. A copy spelled with `_` goes even from a trusted proxy: CGI-style servers
/// read `X_Forwarded_For` as `X-Forwarded-For`, and the value the proxy sets must be the only one.
pub fn is_set_by_proxy(name: &str) -> bool {
    SET_BY_PROXY.iter().any(|set| same_header(name, set.as_str()))
}

/// Whether `name` tells where a request came from or what it was ([`FORWARDING`],
/// [`ORIGINAL_REQUEST`]), in any spelling: believed only from a trusted proxy.
pub fn is_forwarding(name: &str) -> bool {
    let n = name;
    may_begin_one_of(&FORWARDING_BEGINNINGS, n)
        && (FORWARDING.iter().any(|f| same_header(n, f)) || ORIGINAL_REQUEST.iter().any(|f| same_header(n, f)))
}

#[cfg(test)]
#[path = "headers_tests.rs"]
mod tests;
