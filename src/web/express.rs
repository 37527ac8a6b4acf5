//! The express lane: the common request, proxied without hyper.
//!
//! Most of what a gate forwards is a GET from a signed-in browser: no body, no upgrade, a full
//! session. For those, hyper's server and client (their parsing into and encoding out of
//! `http` types, their dispatch between tasks) cost about as much as everything else together
//! (`bench/instructions.sh`). The express lane takes such a request as its head was read by the
//! connection (`server::connection::express`), asks the same gate the same questions
//! ([`App::weigh`]), prepares the same upstream headers ([`Forwarder::prepare`]), and relays the
//! answer over a raw connection (`web::raw_upstream`).
//!
//! It only ever says yes or "not mine": anything it does not take (our own pages, a partial
//! session, a denial, a sign-in redirect, a request with a body or an upgrade, an https upstream)
//! goes to the full path with its bytes untouched, and is answered there. So there is one gate,
//! one set of pages and one set of error answers; the lane only adds a second way to carry a
//! request that was already allowed.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, StatusCode, header};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::base::fields::{Fields, Head};
use crate::base::forwarding::{self, ClientInfo};
use crate::domain::access::Verdict;
use crate::domain::session::{Lookup, Session};
use crate::web::forward::answer_head::encode_response;
use crate::web::forward::{ForwardError, Forwarder, UpstreamTime};
use crate::web::gate::Weighed;
use crate::web::malformed::refuse_malformed;
use crate::web::raw_upstream::{Framing, RelayError, SendError};
use crate::web::route::{self, Route};
use crate::web::state::{App, Connection};

/// A request the gate lets through with a full session's identity, ready for the upstream.
pub struct Ticket {
    /// The request head as the upstream is sent it.
    head: Vec<u8>,
    head_request: bool,
    /// Who it is for, for the access log.
    pub user: std::sync::Arc<crate::domain::users::User>,
    pub client_ip: std::net::IpAddr,
}

/// A request the upstream answered: its status and timing for the access log, and how the
/// answer's relay ended.
pub struct Relayed {
    pub status: StatusCode,
    pub upstream_time: UpstreamTime,
    /// Set when the answer broke off after its head had gone out: the client's connection must
    /// close (it cannot be told otherwise).
    pub broke_off: Option<RelayError>,
}

impl App {
    /// A ticket if the gate forwards `request` (a GET or HEAD without a body, its fields as the
    /// connection read them) with a full session's identity; `None` for anything the full path
    /// must answer.
    pub async fn express_ticket<F: Fields + ?Sized + Sync>(
        &self,
        request: &Head<'_, F>,
        conn: &Connection,
        forwarder: &Forwarder,
    ) -> Option<Ticket> {
        if !forwarder.has_express_lane()
            || refuse_malformed(request).is_some()
            || route::route(request.uri.path()) != Route::Gate
            || self.refused_offline(&Route::Gate)
        {
            return None;
        }
        let target = self.served_target(request)?;
        let trusted = &self.config().trusted_proxies;
        let client_ip = forwarding::client_ip(request.fields, conn.peer.ip(), trusted);
        let client =
            ClientInfo { peer: conn.peer.ip(), real_ip: client_ip, scheme: if conn.tls { "https" } else { "http" } };
        let Weighed { verdict: Verdict::Forward, lookup: Lookup::Found(Session::Full(full)), .. } =
            self.weigh(request, &client, &target).await.ok()?
        else {
            return None;
        };
        // An identity that cannot be built is an error page, which is the full path's to give.
        let identity = full.upstream_identity(&self.signer).ok()?;
        let head_request = request.method == Method::HEAD;
        let head = forwarder.upstream_head(request, &identity, &client);
        Some(Ticket { head, head_request, user: full.user().clone(), client_ip })
    }
}

/// The client side of an exchange on the lane: where the answer is written, and a look at
/// whether the client is still there while the upstream has not answered.
pub trait LaneClient: AsyncWrite + Unpin {
    /// Ready once the client has closed its connection, or it failed. Bytes it sends meanwhile
    /// (a pipelined request) are kept to be read after the answer, not lost.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

impl Forwarder {
    /// Sends a ticket's request and writes the answer to `client`. An error is one nothing was
    /// written for yet: the client gets the full path's error page. `others_on_lane`: other
    /// connections of this worker are on the lane, whose requests may be sent with this one.
    ///
    /// `clock` is the connection's own timer, which may ring at any time: the answer's deadline
    /// (`proxy.response_timeout`) is checked whenever it does, and it is moved only when it would
    /// ring too late. A timer of its own for each request would be put into the runtime's
    /// timer wheel and taken out again every time (`bench/instructions.sh`).
    ///
    /// A client that closes its connection before the answer comes ends the exchange
    /// ([`ForwardError::ClientLeft`]): its place in `limits.max_connections` and the upstream
    /// connection are not held for an answer nobody will read (up to `proxy.response_timeout`).
    pub async fn express<W: LaneClient>(
        &self,
        ticket: &Ticket,
        client: &mut W,
        others_on_lane: bool,
        mut clock: Pin<&mut Sleep>,
    ) -> Result<Relayed, ForwardError> {
        let Some(raw) = self.raw_upstream() else {
            return Err(ForwardError::Unreachable("no express lane to an https upstream".into()));
        };
        // Every other request that is ready is read, weighed and sent before this one. The upstream
        // usually shares the proxy's cores, and each write to a sleeping upstream wakes it,
        // which the kernel lets run at once: one request per wake-up and two context switches
        // each. Sent in a burst, it finds several waiting. Measured with `bench/cpu.sh` at 16
        // connections: 0.89 preemptions of the proxy per request became about 0.5, the
        // upstream's CPU per request fell from 26-31 to 17-22 µs, and `bench/run.sh` went from
        // 0.69x nginx to 0.90-0.95x (docs/performance-history.md).
        // The yield is one poll of the runtime's I/O driver (current-thread runtime: a yielded
        // task runs after that poll), a system call: with no other connection on the lane there
        // is nothing to wait for, and it is skipped.
        if others_on_lane {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let timeout = self.response_timeout();
        let deadline = started + timeout;
        if clock.deadline() > deadline {
            clock.as_mut().reset(deadline);
        }
        let sent = raw.send(&ticket.head, ticket.head_request, |answer| self.answer_head(answer));
        tokio::pin!(sent);
        let exchange = loop {
            tokio::select! {
                biased;
                sent = &mut sent => break sent,
                () = clock.as_mut() => {
                    if Instant::now() >= deadline {
                        return Err(ForwardError::Timeout(timeout));
                    }
                    clock.as_mut().reset(deadline);
                }
                // Polled after the answer: an answer already there is passed on first.
                () = std::future::poll_fn(|cx| client.poll_gone(cx)) => return Err(ForwardError::ClientLeft),
            }
        };
        let exchange = match exchange {
            Err(SendError::Unreachable(why)) => return Err(ForwardError::Unreachable(why)),
            Err(SendError::BadResponse(why)) => return Err(ForwardError::BadResponse(why)),
            Ok(exchange) => exchange,
        };
        let upstream_time = UpstreamTime(started.elapsed());
        let status = exchange.head.status;
        // Boxed: the relay's future is most of this one's, and the lane allocates this one with
        // every request. Apart, each is small enough for the allocator's per-thread cache
        // (glibc's tcache, up to 1,032 bytes); together (1,488 bytes) they took its slow path,
        // about 500 instructions to allocate and free (`bench/instructions.sh`).
        match Box::pin(exchange.relay(client, raw)).await {
            Ok(()) => Ok(Relayed { status, upstream_time, broke_off: None }),
            Err(RelayError::Unanswered(why)) => Err(ForwardError::BadResponse(why)),
            Err(e) => Ok(Relayed { status, upstream_time, broke_off: Some(e) }),
        }
    }
}

/// A bodiless answer of our own (an error page) for a client on the express lane, with
/// `Connection: close`: after an error the lane starts over on a new connection.
pub async fn encode_page(response: http::Response<crate::web::pages::Body>, head_request: bool) -> Vec<u8> {
    use http_body_util::BodyExt;
    let (mut parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut head = encode_response(&mut parts.headers, parts.status, Framing::Length(body.len() as u64));
    if !head_request {
        head.extend_from_slice(&body);
    }
    head
}

/// Which requests the connection may offer the lane, judged on the head alone: GET or HEAD over
/// HTTP/1.1, an origin-form target, a cookie, and nothing that gives the request a body, asks
/// for an upgrade or an interim answer, or closes the connection. `fields` are the head's.
pub fn may_offer(method: &str, target: &str, fields: &[httparse::Header<'_>]) -> bool {
    if !(method == "GET" || method == "HEAD") || !target.starts_with('/') {
        return false;
    }
    let mut cookie = false;
    for field in fields {
        let name = field.name;
        if name.eq_ignore_ascii_case("cookie") {
            cookie = true;
        } else if name.eq_ignore_ascii_case("connection") {
            if !field.value.eq_ignore_ascii_case(b"keep-alive") {
                return false;
            }
        } else if ["content-length", "transfer-encoding", "upgrade", "expect", "http2-settings"]
            .iter()
            .any(|framing| name.eq_ignore_ascii_case(framing))
        {
            return false;
        }
    }
    cookie
}
