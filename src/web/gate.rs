//! The gate: every request comes through [`App::handle`], which refuses malformed requests,
//! decides between the proxy's own pages and the upstream, and lets only full sessions through to
//! the upstream, with the identity only a full session can make.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use crate::base::headers::{self, ClientInfo};
use crate::domain::policy::{self, AfterPassword};
use crate::domain::session::{Lookup, PartialSession, Rejected, Session};
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::forward::{Forwarder, Liveness, UpstreamTime};
use crate::web::pages::{self, Body};
use crate::web::portal;
use crate::web::respond::{Answer, login_redirect, send_to};
use crate::web::return_url;
use crate::web::route::{self, Destination, Route};
use crate::web::state::{App, Connection, RequestUser};

impl App {
    /// Handles one request and writes its access-log line.
    /// `forwarder` is the calling worker's own upstream client (see `server/mod.rs`).
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: Connection,
        forwarder: &Forwarder,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let client_ip = headers::client_ip(request.headers(), conn.peer.ip(), &self.config().trusted_proxies);
        let client =
            ClientInfo { peer: conn.peer.ip(), real_ip: client_ip, scheme: if conn.tls { "https" } else { "http" } };

        let answer = match refuse_malformed(&request) {
            Some(refusal) => Ok(refusal),
            None => match route::route(&path) {
                Route::Own(page) => portal::handle(&self, page, request, &conn).await,
                Route::Gate => self.gate(request, &client, forwarder).await,
            },
        };
        let mut response = answer.unwrap_or_else(WebError::into_response);

        let user = response.extensions_mut().remove::<RequestUser>().unwrap_or_default();
        let upstream_time = response.extensions().get::<UpstreamTime>().map(|t| t.0.as_secs_f64());
        crate::base::metrics::request(response.status());
        if let Some(seconds) = upstream_time {
            crate::base::metrics::upstream_latency(seconds);
        }
        let upstream = upstream_time.map(|s| s * 1000.0);
        // The path only: query strings can carry tokens that have no place in a log.
        tracing::info!(
            target: "portcullis::access",
            %method,
            path = %path,
            status = response.status().as_u16(),
            user = user.0.as_deref().unwrap_or("-"),
            client = %client_ip,
            latency_ms = format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
            upstream_ms = format_args!("{}", upstream.map_or("-".to_string(), |u| format!("{u:.2}"))),
        );
        response
    }

    /// A request for the upstream: forwarded with the identity of a full session, and nothing
    /// else ever is.
    async fn gate(self: &Arc<Self>, request: Request<Incoming>, client: &ClientInfo, forwarder: &Forwarder) -> Answer {
        let session = match self.session(request.headers()).await {
            Lookup::Found(Session::Full(full)) => full,
            Lookup::Found(Session::Partial(partial)) => return Ok(self.second_factor_needed(&request, &partial)),
            Lookup::Rejected(why) => {
                tracing::info!(target: "portcullis::security", reason = ?why, "session cookie refused");
                let mut response = self.needs_login(&request);
                if why == Rejected::Ambiguous {
                    cookies::clear_session_everywhere(&mut response, self, request.uri().path());
                } else {
                    cookies::clear_session(&mut response, self);
                }
                return Ok(response);
            }
            Lookup::NoCookie => return Ok(self.needs_login(&request)),
        };

        let user = session.user().name.to_string();
        let identity = session
            .upstream_identity(&self.signer)
            .map_err(|e| WebError::Internal(format!("cannot build the identity for {user}: {e}")))?;
        // Only an upgrade outlives this request, so only an upgrade needs re-checking.
        let liveness = headers::requested_upgrade(request.headers()).map(|_| {
            let (app, key) = (self.clone(), session.key().clone());
            Arc::new(move || app.tunnel_still_allowed(&key)) as Liveness
        });
        let mut response = forwarder.forward(request, &identity, client, liveness).await?;
        response.extensions_mut().insert(RequestUser(Some(user)));
        Ok(response)
    }

    /// The answer for a half-logged-in session: never the upstream. A browser navigation goes to
    /// the second-factor page that applies (challenge, or enrollment when 2FA is required and the
    /// account has none), and comes back afterwards; anything else gets a 401.
    fn second_factor_needed<B>(&self, request: &Request<B>, partial: &PartialSession) -> Response<Body> {
        let mut response = if route::is_browser_navigation(request.method(), request.headers()) {
            let has_factor = self.account(partial.user()).has_second_factor();
            let page = match policy::after_password(self.requirement(partial.user()), has_factor) {
                AfterPassword::Enroll => Destination::Enroll,
                // Challenge; or, if the policy no longer asks for anything, the challenge page
                // sends a factor-less account on to enrollment or the account page.
                _ => Destination::Challenge,
            };
            let original = request.uri().path_and_query().map_or("/", |p| p.as_str());
            send_to(self, page, &return_url::or_root(Some(original), &self.config().public_url))
        } else {
            pages::plain(StatusCode::UNAUTHORIZED, "401 Unauthorized: finish signing in at /.portcullis/challenge\n")
        };
        response.extensions_mut().insert(RequestUser(Some(partial.user().name.to_string())));
        response
    }

    /// The answer for a request without a full session: a browser navigation is sent to the login
    /// page and brought back afterwards; anything else gets a 401, never a redirect.
    fn needs_login<B>(&self, request: &Request<B>) -> Response<Body> {
        if !route::is_browser_navigation(request.method(), request.headers()) {
            let mut response =
                pages::plain(StatusCode::UNAUTHORIZED, "401 Unauthorized: sign in at /.portcullis/login\n");
            // RFC 9110 §11.6.1 requires a challenge with 401; ours is a cookie session, so it
            // names the login page rather than a standard scheme.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Cookie realm=\"portcullis\", login=\"/.portcullis/login\""),
            );
            return response;
        }
        let original = request.uri().path_and_query().map_or("/", |p| p.as_str());
        login_redirect(self, &return_url::or_root(Some(original), &self.config().public_url))
    }
}

/// A host and optional port (RFC 9110 §7.2): no user information (`admin@host`), which no
/// browser sends and an upstream might believe, and not a list of hosts.
fn is_plain_host(value: &[u8]) -> bool {
    !value.is_empty()
        && !value.contains(&b'@')
        && !value.contains(&b',')
        && http::uri::Authority::try_from(value).is_ok()
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
fn refuse_malformed<B>(request: &Request<B>) -> Option<Response<Body>> {
    let h = request.headers();
    let refuse = |status: StatusCode, text: &'static str, why: &'static str| {
        tracing::warn!(target: "portcullis::security", path = %request.uri().path(), "request refused: {why}");
        let mut response = pages::plain(status, text);
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Some(response)
    };
    // Method names are case-sensitive (RFC 9110 §9.1), so `trace` is another method; but some
    // servers fold case, and `TRACK` is IIS's `TRACE`: all are refused.
    let method = request.method().as_str();
    if ["CONNECT", "TRACE", "TRACK"].iter().any(|m| method.eq_ignore_ascii_case(m)) {
        let mut response =
            refuse(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n", "CONNECT, TRACE or TRACK")?;
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        return Some(response);
    }
    let lengths: Vec<&HeaderValue> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    let ambiguous = (h.contains_key(header::TRANSFER_ENCODING) && !lengths.is_empty())
        || lengths.len() > 1
        || lengths.iter().any(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit));
    if ambiguous {
        return refuse(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: ambiguous message framing\n",
            "ambiguous body framing",
        );
    }
    let hosts: Vec<&HeaderValue> = h.get_all(header::HOST).iter().collect();
    let host_ok = match request.version() {
        // RFC 9113 §8.3.1: `:authority` or `Host`, at least one, and equal when both are there.
        Version::HTTP_2 | Version::HTTP_3 => match (hosts.as_slice(), request.uri().authority()) {
            ([], Some(authority)) => is_plain_host(authority.as_str().as_bytes()),
            ([one], Some(authority)) => {
                is_plain_host(one.as_bytes()) && one.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())
            }
            ([one], None) => is_plain_host(one.as_bytes()),
            _ => false,
        },
        _ => matches!(hosts.as_slice(), [one] if is_plain_host(one.as_bytes())),
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
