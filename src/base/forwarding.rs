//! The forwarding headers the upstream is sent (`X-Forwarded-For`, `-Proto`, `-Host`,
//! `X-Real-IP`) and the client address they carry: client copies are believed only from a
//! configured trusted proxy, so a client cannot claim to be `127.0.0.1` (authentik
//! CVE-2024-47070). Which names count as forwarding headers is `base::headers`' to say.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::base::fields::{self, Fields};
use crate::base::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP, is_forwarding, is_set_by_proxy,
};

/// Facts about the client connection, needed to set the forwarding headers.
pub struct ClientInfo {
    pub peer: IpAddr,
    /// The client's address per [`client_ip`].
    pub real_ip: IpAddr,
    /// `https` when the client reached us over TLS.
    pub scheme: &'static str,
}

/// Whether `ip` (IPv4-mapped read as IPv4) is in `trusted_proxies`.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address as best we can know it: the peer, unless the peer is a trusted proxy,
/// in which case the right-most untrusted address in `X-Forwarded-For` (everything left of a
/// trusted hop could have been written by the client itself).
pub fn client_ip<F: Fields + ?Sized>(headers: &F, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d; rules and regulation
    // compare it as the IPv4 address it is.
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    // From the nearest hop back: each trusted proxy vouches for the address before it, and the
    // first untrusted one is the client. An entry that cannot be read ends the walk, since
    // nothing written before it can be believed: the last address read stands.
    let entries: Vec<&str> =
        headers.values(&X_FORWARDED_FOR).filter_map(fields::text).flat_map(|v| v.split(',')).map(str::trim).collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = forwarded_address(entry) else { break };
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, or one with a port as some balancers write it
/// (`192.0.2.5:51234`, `[2001:db8::1]:443`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

/// An address as a header value. The last one made on this thread is kept: a worker's requests
/// come mostly from a few addresses (a browser's connections, a front proxy), and a kept value is
/// shared (a reference count) where a new one is two allocations.
fn address_value(ip: IpAddr) -> Option<HeaderValue> {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((at, value)) if *at == ip => Some(value.clone()),
        _ => {
            let value = written_address(ip)?;
            *last = Some((ip, value.clone()));
            Some(value)
        }
    })
}

/// An address in text. IPv4 is written by hand: `Display` goes through the formatting machinery,
/// which cost more than the rest of setting the forwarding headers together.
fn written_address(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else { return HeaderValue::from_str(&ip.to_string()).ok() };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for digit in &digits[skip..] {
            text[len] = b'0' + digit;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).ok()
}

/// What [`set_forwarding`] decides for a request.
pub struct Forwarding<'a> {
    /// The peer is a trusted proxy, whose forwarding headers are kept ([`is_forwarding`]).
    pub from_trusted: bool,
    /// Each of the headers the proxy sets with the value it is sent with, or none (the header
    /// is left out).
    pub set: [(HeaderName, Option<Value<'a>>); 4],
}

/// A forwarding header's value: bytes of the request's own (its `Host`, a trusted proxy's
/// `X-Forwarded-Proto`), or one the proxy made.
pub enum Value<'a> {
    Sent(&'a [u8]),
    Made(HeaderValue),
}

impl Value<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Sent(bytes) => bytes,
            Value::Made(value) => value.as_bytes(),
        }
    }

    fn into_header_value(self) -> Option<HeaderValue> {
        match self {
            // Read as a field value, so it is one.
            Value::Sent(bytes) => HeaderValue::from_bytes(bytes).ok(),
            Value::Made(value) => Some(value),
        }
    }
}

/// The forwarding headers for the upstream. Client copies are kept (and extended) only from
/// trusted proxies; from anyone else they are replaced, so a client cannot claim to be
/// `127.0.0.1` (authentik CVE-2024-47070).
pub fn forwarding<'a, F: Fields + ?Sized>(headers: &'a F, client: &ClientInfo, trusted: &[IpNet]) -> Forwarding<'a> {
    let from_trusted = is_trusted(client.peer, trusted);
    // Always the host the proxy answered for, even from a trusted balancer: the access rules and
    // the identity were decided for it, so the upstream must not route on another.
    let host = headers.first_value(&header::HOST).map(Value::Sent);
    let proto = match headers.first_value(&X_FORWARDED_PROTO) {
        Some(sent @ (b"http" | b"https")) if from_trusted => Value::Sent(sent),
        _ => Value::Made(HeaderValue::from_static(client.scheme)),
    };
    let peer = address_value(client.peer);
    let xff = if from_trusted && headers.has(&X_FORWARDED_FOR) {
        let prior: Vec<&str> = headers.values(&X_FORWARDED_FOR).filter_map(fields::text).collect();
        HeaderValue::from_str(&format!("{}, {}", prior.join(", "), client.peer)).ok()
    } else {
        peer.clone()
    };
    let real_ip = if client.real_ip == client.peer { peer } else { address_value(client.real_ip) };
    Forwarding {
        from_trusted,
        set: [
            (X_FORWARDED_FOR, xff.map(Value::Made)),
            (X_REAL_IP, real_ip.map(Value::Made)),
            (X_FORWARDED_PROTO, Some(proto)),
            (X_FORWARDED_HOST, host),
        ],
    }
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` for the upstream, and removes
/// every other forwarding header unless the peer is a trusted proxy ([`forwarding`]).
pub fn set_forwarding(headers: &mut HeaderMap, client: &ClientInfo, trusted: &[IpNet]) {
    let Forwarding { from_trusted, set } = forwarding(&*headers, client, trusted);
    let set = set.map(|(name, value)| (name, value.and_then(Value::into_header_value)));
    let doomed = |name: &HeaderName| (!from_trusted && is_forwarding(name.as_str())) || is_set_by_proxy(name.as_str());
    if headers.keys().any(doomed) {
        let doomed: Vec<HeaderName> = headers.keys().filter(|name| doomed(name)).cloned().collect();
        for name in doomed {
            headers.remove(name);
        }
    }
    for (name, value) in set {
        // `insert` replaces every earlier value of the name.
        match value {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    }
}

#[cfg(test)]
#[path = "forwarding_tests.rs"]
mod tests;
