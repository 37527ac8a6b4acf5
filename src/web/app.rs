//! The gate: every request comes through [`App::handle`], which decides between the proxy's own
//! pages and the upstream, and lets only full sessions through to the upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use crate::base::clock::SharedClock;
use crate::base::headers::{self, ClientInfo};
use crate::config::Config;
use crate::domain::factors::Accounts;
use crate::domain::factors::sealing::Sealer;
use crate::domain::identity::AssertionSigner;
use crate::domain::password::PasswordChecker;
use crate::domain::policy;
use crate::domain::session::{FullSession, Lookup, Session, SessionKey, Sessions};
use crate::domain::users::UserDirectory;
use crate::web::forward::{ForwardError, Forwarder, UpstreamTime};
use crate::web::pages::{self, Body};
use crate::web::route::{self, Route};
use crate::web::{portal, return_url};

/// Everything a request needs, shared by all connections.
pub struct App {
    pub config: crate::config::SharedConfig,
    pub users: Arc<UserDirectory>,
    pub sessions: Arc<Sessions>,
    pub passwords: PasswordChecker,
    pub signer: AssertionSigner,
    pub accounts: Arc<Accounts>,
    pub sealer: Sealer,
    pub pending: portal::Pending,
    /// Outstanding emailed codes and recent sends, per account.
    pub email_codes: crate::domain::factors::email::EmailCodes,
    pub regulator: Arc<crate::domain::regulation::Regulator>,
    /// Which TOTP step accepted codes matched, for the clock-skew self-check.
    pub drift: crate::domain::clock_health::Drift,
    /// What the start-up clock check found, for the admin page.
    pub clock_warnings: arc_swap::ArcSwap<Vec<String>>,
    pub notifier: Arc<crate::domain::notify::Notifier>,
    /// Signs and recognises known-browser cookies (see `known_browser.rs`).
    pub known_browsers: crate::domain::known_browser::KnownBrowsers,
    pub clock: SharedClock,
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Who a request was for, for the access log (never a cookie or a secret).
#[derive(Debug, Default, Clone)]
pub struct RequestUser(pub Option<String>);

impl App {
    /// The configuration in force (swapped whole on reload; lock-free to read).
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The operator's view of this proxy's state (shared, not copied).
    pub fn admin(&self) -> crate::domain::operator::Admin {
        crate::domain::operator::Admin {
            config: self.config.clone(),
            users: self.users.clone(),
            sessions: self.sessions.clone(),
            accounts: self.accounts.clone(),
            regulator: self.regulator.clone(),
            notifier: self.notifier.clone(),
            clock: self.clock.clone(),
        }
    }

    pub fn session_cookie(&self) -> &str {
        // Restart-only, so the value the sessions were opened with is the one in force.
        &self.sessions.settings().cookie_name
    }

    /// The cookie that protects the login form against login CSRF.
    pub fn login_csrf_cookie(&self) -> String {
        self.sessions.settings().login_csrf_cookie()
    }

    pub fn resolve_session(&self, request_headers: &http::HeaderMap) -> Lookup {
        self.sessions.resolve(headers::cookie_values(request_headers, self.session_cookie()), &self.users)
    }

    /// Handles one request and writes its access-log line.
    /// `forwarder` is the calling worker's own upstream client (see `server.rs`).
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

        let mut response = if let Some(refusal) = refuse_malformed(&request) {
            refusal
        } else {
            match route::route(&path) {
                Route::Own(page) => portal::handle(&self, page, request, &conn).await,
                Route::Gate => self.gate(request, &client, forwarder).await,
            }
        };

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

    /// The request's session, with the 2FA policy applied: a full session that no longer satisfies
    /// it (the policy or the user's groups changed, or a factor was enrolled elsewhere or reset
    /// since it was made) is turned back into a partial one here, for the gate and our own pages
    /// alike, so it can neither reach the upstream nor act on the account page.
    pub async fn session(&self, request_headers: &http::HeaderMap) -> Lookup {
        match self.resolve_session(request_headers) {
            Lookup::Found(Session::Full(full)) if !self.satisfies_policy(&full) => {
                let user = full.user().name.to_string();
                tracing::warn!(target: "portcullis::security", %user, "session downgraded: the 2FA policy asks for more than it proved");
                let partial = self.sessions.downgrade(full).await;
                // Whatever it was in the middle of (new recovery codes, a setup) was for the full
                // session; the partial one proves a factor first.
                self.pending.forget(partial.key());
                Lookup::Found(Session::Partial(partial))
            }
            other => other,
        }
    }

    /// Whether a full session still satisfies the 2FA policy.
    fn satisfies_policy(&self, full: &FullSession) -> bool {
        let requirement = policy::requirement(&self.config().mfa, full.user(), self.clock.now());
        let has_factor = self.accounts.get(full.user()).has_second_factor();
        policy::full_session_allowed(requirement, has_factor, full.proved_second_factor())
    }

    /// Whether the session behind an open tunnel (a WebSocket) may keep it: still a live full
    /// session of a current user, and still satisfying the 2FA policy. Checked every
    /// [`crate::web::forward::UPGRADE_RECHECK`]; memory only.
    pub fn tunnel_still_allowed(&self, key: &SessionKey) -> bool {
        self.sessions.live_full(key, &self.users).is_some_and(|full| self.satisfies_policy(&full))
    }

    async fn gate(
        self: &Arc<Self>,
        request: Request<Incoming>,
        client: &ClientInfo,
        forwarder: &Forwarder,
    ) -> Response<Body> {
        let session = match self.session(request.headers()).await {
            Lookup::Found(Session::Full(full)) => full,
            Lookup::Found(Session::Partial(partial)) => return self.second_factor_needed(&request, &partial),
            Lookup::Rejected(why) => {
                tracing::info!(target: "portcullis::security", reason = ?why, "session cookie refused");
                let mut response = self.needs_login(&request);
                portal::clear_cookie(&mut response, self.session_cookie(), self.config().public_url.is_https());
                return response;
            }
            Lookup::NoCookie => return self.needs_login(&request),
        };

        let user = session.user().name.to_string();
        let mut response = match session.upstream_identity(&self.signer) {
            Ok(identity) => {
                // Only an upgrade outlives this request, so only an upgrade needs re-checking.
                let liveness = headers::requested_upgrade(request.headers()).map(|_| {
                    let (app, key) = (self.clone(), session.key().clone());
                    Arc::new(move || app.tunnel_still_allowed(&key)) as crate::web::forward::Liveness
                });
                match forwarder.forward(request, &identity, client, liveness).await {
                    Ok(response) => response,
                    Err(e) => upstream_error(e),
                }
            }
            Err(e) => {
                tracing::error!("cannot build the identity for {user}: {e}");
                pages::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "Portcullis could not prepare your request. The administrator will find details in its log.",
                    None,
                )
            }
        };
        response.extensions_mut().insert(RequestUser(Some(user)));
        response
    }

    /// The answer for a half-logged-in session: never the upstream. A browser navigation goes to
    /// the second-factor page that applies (challenge, or enrollment when 2FA is required and the
    /// account has none), and comes back afterwards; anything else gets a 401.
    fn second_factor_needed<B>(
        &self,
        request: &Request<B>,
        partial: &crate::domain::session::PartialSession,
    ) -> Response<Body> {
        let mut response = if route::is_browser_navigation(request.method(), request.headers()) {
            let requirement = policy::requirement(&self.config().mfa, partial.user(), self.clock.now());
            let has_factor = self.accounts.get(partial.user()).has_second_factor();
            let page = match policy::after_password(requirement, has_factor) {
                policy::AfterPassword::Enroll => route::Destination::Enroll,
                // Challenge; or, if the policy no longer asks for anything, the challenge page
                // sends a factor-less account on to enrollment or the account page.
                _ => route::Destination::Challenge,
            };
            let original = request.uri().path_and_query().map_or("/", |p| p.as_str());
            portal::send_to(self, page, &return_url::or_root(Some(original), &self.config().public_url))
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
        let return_to = return_url::or_root(Some(original), &self.config().public_url);
        let query = serde_urlencoded::to_string([("rd", return_to.as_str())]).unwrap_or_default();
        let location = self.config().public_url.join_path(&format!("{}?{query}", route::login_path()));
        pages::see_other(&location)
    }
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
    if request.method() == Method::CONNECT || request.method() == Method::TRACE {
        let mut response = refuse(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n", "CONNECT or TRACE")?;
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
        Version::HTTP_2 | Version::HTTP_3 => match (hosts.as_slice(), request.uri().authority()) {
            ([], _) => true,
            ([one], Some(authority)) => one.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()),
            ([_], None) => true,
            _ => false,
        },
        _ => hosts.len() == 1,
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

fn upstream_error(e: ForwardError) -> Response<Body> {
    match e {
        ForwardError::Timeout(_) => {
            tracing::warn!("upstream timed out: {e}");
            pages::error(
                StatusCode::GATEWAY_TIMEOUT,
                "The application is taking too long",
                "It did not answer in time. Try again in a moment; if it keeps happening, tell the administrator.",
                None,
            )
        }
        ForwardError::Unreachable(_) => {
            tracing::warn!("upstream unreachable: {e}");
            pages::error(
                StatusCode::BAD_GATEWAY,
                "The application is not answering",
                "Portcullis let you in, but the application behind it could not be reached. Try again in a moment; if it keeps happening, tell the administrator.",
                None,
            )
        }
        ForwardError::BadRequest(_) => {
            pages::error(StatusCode::BAD_REQUEST, "Bad request", "This request cannot be passed on.", None)
        }
        ForwardError::ClientTooSlow(_) => {
            tracing::warn!(target: "portcullis::security", "request body stalled; connection closed: {e}");
            let mut response =
                pages::plain(StatusCode::REQUEST_TIMEOUT, "408 Request Timeout: the request body stopped arriving\n");
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}
