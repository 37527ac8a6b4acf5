//! Forwarding to the upstream: streamed bodies both ways, pooled keep-alive connections,
//! protocol upgrades (WebSocket and others), and timeouts that turn into 502/504.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

use crate::base::forwarding::{self, ClientInfo};
use crate::base::headers;
use crate::base::tls;
use crate::config::{Config, IdentityHeaders};
use crate::domain::identity::UpstreamIdentity;
use crate::web::body_timeout::{BodyBroken, BodyIdle, IdleTimeout};
use crate::web::client_body::ClientBody;
use crate::web::pages::Body;
use crate::web::raw_upstream::{Dial, RawUpstream};
use crate::web::upstream_pool::UpstreamPool;

#[path = "answer_head.rs"]
pub(crate) mod answer_head;
#[path = "upstream_head.rs"]
pub(crate) mod upstream_head;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the upstream could not be reached: {0}")]
    Unreachable(String),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the request cannot be forwarded: {0}")]
    BadRequest(String),
    #[error("the client stopped sending its request body: {0}")]
    ClientTooSlow(String),
    #[error("the client's request body broke off: {0}")]
    ClientGone(String),
    /// The client closed its connection while the upstream had not answered yet (on the express
    /// lane, which watches for it; hyper drops the request itself).
    #[error("the client closed its connection before the upstream answered")]
    ClientLeft,
    /// The upstream answered in a way that cannot be passed on (it switched to a protocol nobody
    /// asked for).
    #[error("the upstream's answer cannot be passed on: {0}")]
    BadResponse(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxySetupError {
    #[error(
        "no trusted CA certificates for the https upstream: {0}. Fix: install the system CA bundle or set proxy.upstream_ca_file"
    )]
    Roots(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the upstream address cannot be dialled: {0}")]
    Upstream(String),
    #[error("the TLS client configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Whether the session behind an upgraded connection is still valid; checked every
/// [`UPGRADE_RECHECK`] while the connection is open.
pub type Liveness = Arc<dyn Fn() -> bool + Send + Sync>;

/// An upgraded connection (WebSocket) is closed at most this long after its session ends, expires
/// or is revoked (oauth2-proxy#2996: upgraded connections must not outlive the session).
pub const UPGRADE_RECHECK: Duration = Duration::from_secs(2);

/// Once one side of an upgraded connection has closed, how long the other has to follow (a
/// WebSocket's own closing handshake takes a round trip).
pub const HALF_CLOSED_GRACE: Duration = Duration::from_secs(5);

/// A client connection's place in `limits.max_connections`, carried on each of its requests so
/// that a tunnel it turns into (a WebSocket) keeps the place for as long as it is open. What it
/// holds is the server's business.
#[derive(Clone)]
pub struct TunnelSlot {
    /// Held for its `Drop`: the place is given back when the last holder lets go.
    _held: Arc<dyn std::any::Any + Send + Sync>,
}

impl TunnelSlot {
    pub fn new(held: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        Self { _held: held }
    }
}

/// How long the upstream took to send response headers, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub Duration);

pub struct Forwarder {
    pool: Arc<UpstreamPool<IdleTimeout<ClientBody>>>,
    /// `Host` for a request that came without one (HTTP/1.0): the upstream's own authority.
    upstream_host: HeaderValue,
    response_timeout: Duration,
    identity_headers: IdentityHeaders,
    /// Client-sent headers removed as identities: ours and `identity.strip_headers`.
    stripped: Vec<http::HeaderName>,
    /// `identity.strip_headers` entries ending in `*`: whole families.
    stripped_prefixes: Vec<String>,
    /// Our cookie names, removed from requests and from upstream `Set-Cookie`.
    own_cookies: Vec<String>,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// `proxy.upgrades`: the protocols a client may switch to.
    upgrades: Vec<String>,
    body_idle_timeout: Duration,
    /// The express lane's connections (`web::express`): only to a plain-http upstream.
    raw: Option<Arc<RawUpstream>>,
    /// The express lane may write upstream heads in one pass ([`upstream_head::one_pass_agrees`]).
    direct_head: bool,
}

impl Forwarder {
    pub fn new(config: &Config, own_cookies: Vec<String>) -> Result<Self, ProxySetupError> {
        let settings = &config.proxy;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        http.set_recv_buffer_size(Some(settings.upstream_receive_buffer));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match (&settings.upstream_ca_file, config.upstream.scheme == http::uri::Scheme::HTTPS) {
            (Some(ca), _) => {
                let tls = rustls::ClientConfig::builder_with_provider(tls::provider())
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(tls::root_store(ca)?)
                    .with_no_client_auth();
                builder.with_tls_config(tls)
            }
            (None, true) => builder
                .with_provider_and_native_roots(tls::provider())
                .map_err(|e| ProxySetupError::Roots(e.to_string()))?,
            // A plain-http upstream never does TLS, so it must not depend on a CA bundle existing.
            (None, false) => builder.with_tls_config(
                rustls::ClientConfig::builder_with_provider(tls::provider())
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let upstream = &config.upstream;
        let target = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ProxySetupError::Upstream(e.to_string()))?;
        let upstream_host =
            HeaderValue::from_str(upstream.authority.as_str()).map_err(|e| ProxySetupError::Upstream(e.to_string()))?;
        let stripped: Vec<http::HeaderName> = config
            .identity
            .headers
            .all()
            .into_iter()
            .cloned()
            .chain(config.identity.strip_headers.iter().cloned())
            .collect();
        // Zero: a connection serves one request and is closed (`proxy.upstream_keepalive`).
        let kept_idle = if settings.upstream_keepalive { settings.pool_idle_timeout } else { Duration::ZERO };
        let direct_head =
            upstream_head::one_pass_agrees(&config.identity.headers, &stripped, &config.identity.strip_prefixes);
        Ok(Self {
            pool: UpstreamPool::new(connector, target, kept_idle),
            upstream_host,
            response_timeout: settings.response_timeout,
            identity_headers: config.identity.headers.clone(),
            stripped,
            stripped_prefixes: config.identity.strip_prefixes.clone(),
            own_cookies,
            trusted_proxies: config.trusted_proxies.clone(),
            upgrades: settings.upgrades.clone(),
            body_idle_timeout: settings.body_idle_timeout,
            raw: (upstream.scheme == http::uri::Scheme::HTTP).then(|| {
                let port = upstream.authority.port_u16().unwrap_or(80);
                let address = format!("{}:{port}", upstream.authority.host());
                let dial = Dial {
                    connect_timeout: settings.connect_timeout,
                    receive_buffer: settings.upstream_receive_buffer,
                };
                RawUpstream::new(address, dial, kept_idle)
            }),
            direct_head,
        })
    }

    pub fn has_express_lane(&self) -> bool {
        self.raw.is_some()
    }

    pub(crate) fn raw_upstream(&self) -> Option<&Arc<RawUpstream>> {
        self.raw.as_ref()
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Whether every protocol the client offers in `Upgrade` is one the operator allows. The
    /// upstream picks among those offered, so one disallowed name (`websocket, h2c`) is enough to
    /// refuse the upgrade: it is then forwarded as a plain request.
    fn upgrade_allowed(&self, offered: &HeaderValue) -> bool {
        let Ok(text) = offered.to_str() else { return false };
        let mut protocols = text.split(',').map(|p| p.trim().to_ascii_lowercase()).filter(|p| !p.is_empty()).peekable();
        protocols.peek().is_some()
            && protocols.all(|p| {
                let name = p.split('/').next().unwrap_or("");
                self.upgrades.iter().any(|allowed| allowed == &p || allowed == name)
            })
    }

    /// The request target as the upstream is sent it: origin-form (RFC 9112 §3.2.1), the path
    /// and query only. The connection already goes to the upstream.
    fn upstream_uri(original: &Uri) -> Uri {
        match original.path_and_query() {
            Some(_) if original.authority().is_none() => original.clone(),
            Some(path) => Uri::from(path.clone()),
            None => Uri::from(PathAndQuery::from_static("/")),
        }
    }

    /// The request as the upstream is sent it, whichever path sends it: the client's hop-by-hop
    /// headers, identity look-alikes and our cookies removed, the forwarding headers set, and
    /// the identity of a full session added (or none, for a `bypass` rule).
    pub(crate) fn prepare(
        &self,
        parts: &mut http::request::Parts,
        identity: Option<&UpstreamIdentity>,
        client: &ClientInfo,
    ) {
        // HTTP/2 carries the host in `:authority`, not `Host`; the upstream speaks HTTP/1.1, where
        // `Host` is mandatory. Either way the client's host is forwarded verbatim. An HTTP/1.0
        // request may have neither: it is sent the upstream's own name.
        if !parts.headers.contains_key(header::HOST) {
            let host = parts.uri.authority().and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
            parts.headers.insert(header::HOST, host.unwrap_or_else(|| self.upstream_host.clone()));
        }
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h);
        headers::strip_identity(h, &self.stripped, &self.stripped_prefixes);
        headers::strip_cookies(h, &self.own_cookies);
        forwarding::set_forwarding(h, client, &self.trusted_proxies);
        // A bypassed request carries no identity at all: only the client-sent copies were removed.
        if let Some(identity) = identity {
            identity.apply(h, &self.identity_headers);
        }
        parts.uri = Self::upstream_uri(&parts.uri);
        parts.version = Version::HTTP_11;
    }

    /// A response from the upstream as the client is sent it: hop-by-hop headers removed, and any
    /// cookie of ours the upstream tried to set.
    pub(crate) fn clean_response(&self, headers: &mut http::HeaderMap) {
        headers::strip_hop_by_hop(headers);
        headers::strip_set_cookie(headers, &self.own_cookies);
    }

    /// Sends `request` upstream, with the identity of a full session or (for a `bypass` rule)
    /// with none, and returns the upstream's response.
    pub async fn forward(
        &self,
        mut request: Request<ClientBody>,
        identity: Option<&UpstreamIdentity>,
        client: &ClientInfo,
        liveness: Option<Liveness>,
    ) -> Result<Response<Body>, ForwardError> {
        // Content in a GET or HEAD request has no agreed meaning (RFC 9110 §9.3.1, §9.3.2), and
        // many servers ignore it: such an upstream reads the body's bytes as a request of their
        // own, one the gate never saw, arriving on the proxy's connection with whatever identity
        // headers the body spells out (a "CL.0" desync). It is refused, never forwarded.
        let get_or_head = is_get_or_head(request.method());
        let is_head = request.method() == Method::HEAD;
        if get_or_head && carries_content(&request) {
            tracing::warn!(target: "portcullis::security", method = %request.method(), client = %client.real_ip, "a GET or HEAD request with a body was refused");
            return Err(ForwardError::BadRequest("a GET or HEAD request with a body".into()));
        }
        // Upgrades are an HTTP/1.1 mechanism (RFC 9110 §7.8); HTTP/2 has none. Only the
        // protocols in `proxy.upgrades` pass: anything else (h2c above all, which would make the
        // connection a tunnel the gate never sees again) goes on as a plain request, its
        // `Upgrade` and `HTTP2-Settings` removed with the other hop-by-hop headers.
        let upgrade = match request.version() {
            Version::HTTP_11 => headers::requested_upgrade(request.headers()),
            _ => None,
        };
        let upgrade = match upgrade {
            Some(protocol) if self.upgrade_allowed(&protocol) => Some(protocol),
            Some(protocol) => {
                tracing::warn!(target: "portcullis::security", protocol = %crate::base::text::Escaped(protocol.to_str().unwrap_or("?")), "upgrade not allowed; forwarded as a plain request");
                None
            }
            None => None,
        };
        let slot = request.extensions_mut().remove::<TunnelSlot>();
        let (client_upgrade, liveness) = match (&upgrade, liveness) {
            (None, _) => (None, None),
            (Some(_), Some(liveness)) => (Some(hyper::upgrade::on(&mut request)), Some(liveness)),
            // An upgrade must be re-checked for as long as it lives; without a way to, refuse it.
            (Some(_), None) => return Err(ForwardError::BadRequest("an upgrade without a session check".into())),
        };

        let (mut parts, body) = request.into_parts();
        self.prepare(&mut parts, identity, client);
        if get_or_head && !body.is_end_stream() {
            // What passed declared no content, but may still send some (HTTP/2 DATA without a
            // length). Said explicitly, so that none is passed on: hyper's client leaves out a
            // body of unknown length by itself only for `GET` and `HEAD` spelled in capitals,
            // and sends any other spelling's chunked.
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        if let Some(protocol) = &upgrade {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        let outgoing = Request::from_parts(parts, IdleTimeout::new(body, self.body_idle_timeout));

        let started = Instant::now();
        let (mut response, lease) = match tokio::time::timeout(self.response_timeout, self.pool.send(outgoing)).await {
            Err(_) => return Err(ForwardError::Timeout(self.response_timeout)),
            Ok(Err(e)) if caused_by::<BodyIdle>(&e) => return Err(ForwardError::ClientTooSlow(error_chain(&e))),
            Ok(Err(e)) if caused_by::<BodyBroken>(&e) => return Err(ForwardError::ClientGone(error_chain(&e))),
            Ok(Err(e)) => return Err(ForwardError::Unreachable(error_chain(&e))),
            Ok(Ok(sent)) => sent,
        };
        let upstream_time = UpstreamTime(started.elapsed());

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Only to a protocol the client asked for (and the operator allows), and only when
            // it asked: anything else would hand the client a connection nobody checked.
            let chosen = response.headers().get(header::UPGRADE);
            let (Some(offered), Some(client_upgrade), Some(liveness)) = (&upgrade, client_upgrade, liveness) else {
                return Err(ForwardError::BadResponse(
                    "101 Switching Protocols to a request without an upgrade".into(),
                ));
            };
            if !chosen.is_some_and(|chosen| is_one_of(chosen, offered)) {
                return Err(ForwardError::BadResponse("101 Switching Protocols to a protocol not offered".into()));
            }
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                // The tunnel keeps its connection's place in `limits.max_connections`.
                let _slot = slot;
                // The upstream connection is the tunnel's now, never the pool's again.
                let _lease = lease;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client_io, upstream_io)) => {
                        tunnel(TokioIo::new(client_io), TokioIo::new(upstream_io), liveness).await
                    }
                    Err(e) => tracing::debug!("upgrade did not complete: {e}"),
                }
            });
            let (mut parts, _) = response.into_parts();
            parts.extensions.remove::<hyper::ext::ReasonPhrase>();
            let protocol = parts.headers.get(header::UPGRADE).cloned();
            headers::strip_hop_by_hop(&mut parts.headers);
            headers::strip_set_cookie(&mut parts.headers, &self.own_cookies);
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                parts.headers.insert(header::UPGRADE, protocol);
            }
            let mut response = Response::from_parts(parts, crate::web::pages::empty());
            response.extensions_mut().insert(upstream_time);
            return Ok(response);
        }

        let (mut parts, body) = response.into_parts();
        // An answer to HEAD that announces no length tells of a GET body that would run until
        // the connection closed (RFC 9112 §6.3): the upstream meant to close it, and what it sends
        // on it later must reach no one. The lease is let go, which closes it (as the lane does,
        // `raw_upstream::interpret`).
        let body = if is_head
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
            && !parts.headers.contains_key(header::TRANSFER_ENCODING)
        {
            drop(lease);
            body.map_err(Into::into).boxed()
        } else {
            lease.attach(body).map_err(Into::into).boxed()
        };
        self.clean_response(&mut parts.headers);
        answer_as_the_lane_does(&mut parts);
        let mut response = Response::from_parts(parts, body);
        response.extensions_mut().insert(upstream_time);
        Ok(response)
    }
}

/// An answer from hyper's client told as the express lane tells it (`web::answer_head`):
///
/// * the standard reason phrase, never the upstream's, which may hold anything (hyper keeps one
///   that differs as an extension, and its server writes it back out);
/// * one plain `Content-Length` (`5, 5` is one number, RFC 9110 §8.6), and none on a 204. On an
///   answer without a body (to HEAD, a 304) hyper reads no length, so one that is not a number
///   reaches here, and goes. One hyper read but we do not (`+5`) goes too: hyper's server then
///   frames the body it has by its size.
fn answer_as_the_lane_does(parts: &mut http::response::Parts) {
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    if !parts.headers.contains_key(header::CONTENT_LENGTH) {
        return;
    }
    match headers::one_length(&parts.headers) {
        Some(length) if parts.status != StatusCode::NO_CONTENT => {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        _ => {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
    }
}

/// Bytes both ways through an upgraded connection until both sides are done, the session behind
/// it ends (checked every [`UPGRADE_RECHECK`]), or one side has closed and the other has not
/// followed within [`HALF_CLOSED_GRACE`]: a client that has gone must not leave its tunnel, and
/// its place in `limits.max_connections`, to an upstream that ignores the close.
async fn tunnel<C, U>(client: C, upstream: U, liveness: Liveness)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    let mut recheck = tokio::time::interval(UPGRADE_RECHECK);
    while !(up_done && down_done) {
        tokio::select! {
            () = &mut up, if !up_done => {
                up_done = true;
                grace.as_mut().reset(tokio::time::Instant::now() + HALF_CLOSED_GRACE);
            }
            () = &mut down, if !down_done => {
                down_done = true;
                grace.as_mut().reset(tokio::time::Instant::now() + HALF_CLOSED_GRACE);
            }
            () = &mut grace => {
                tracing::debug!("upgraded connection closed: one side had gone for {HALF_CLOSED_GRACE:?}");
                break;
            }
            _ = recheck.tick() => if !liveness() {
                tracing::info!(target: "portcullis::security", "upgraded connection closed: its session ended");
                break;
            },
        }
    }
    // Dropping both ends closes them.
}

/// GET or HEAD in any case: methods are case-sensitive (RFC 9110 §9.1), but a server that reads
/// `get` as GET is just as likely to ignore its body.
fn is_get_or_head(method: &Method) -> bool {
    ["GET", "HEAD"].iter().any(|name| method.as_str().eq_ignore_ascii_case(name))
}

/// Whether a request says it carries content. HTTP/1.1 says so by its framing (a length other
/// than 0, or chunks). HTTP/2 ends a request without content with its HEADERS frame, but a client
/// may end it with an empty DATA frame instead (RFC 9113 §8.1), so there only a declared length
/// counts; content sent without one is not passed on (`forward` sends `Content-Length: 0`).
fn carries_content(request: &Request<ClientBody>) -> bool {
    match request.version() {
        Version::HTTP_2 => request.body().size_hint().lower() > 0,
        _ => !request.body().is_end_stream(),
    }
}

/// Whether the protocol an upstream switched to (`chosen`, one token) is among those `offered`.
fn is_one_of(chosen: &HeaderValue, offered: &HeaderValue) -> bool {
    let (Ok(chosen), Ok(offered)) = (chosen.to_str(), offered.to_str()) else { return false };
    let chosen = chosen.trim();
    !chosen.is_empty() && !chosen.contains(',') && offered.split(',').any(|p| p.trim().eq_ignore_ascii_case(chosen))
}

/// Whether `T` is somewhere in `e`'s chain of sources.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(error) = current {
        if error.is::<T>() {
            return true;
        }
        current = error.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
