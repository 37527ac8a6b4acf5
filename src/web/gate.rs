//! The gate: every request comes through [`App::handle`]. It refuses malformed requests and
//! hosts the proxy does not serve (421), sends `/.portcullis/` to the proxy's own pages, and for
//! everything else asks the access rules (`domain::access`) what the request needs, then forwards
//! it with the identity only a full session can make, forwards it with none (`bypass`), or sends
//! the visitor where they must go first.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::base::fields::{self, Fields, Head};
use crate::base::forwarding::{self, ClientInfo};
use crate::base::headers;
use crate::config::access::{Access, request_host, rule_path};
use crate::domain::access::{self as rules, Decision, RequestFacts, Standing, Verdict};
use crate::domain::policy::{self, AfterPassword};
use crate::domain::session::{FullSession, Lookup, Rejected, Session, StoreState};
use crate::domain::users::User;
use crate::web::client_body::ClientBody;
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::forward::{Forwarder, Liveness, UpstreamTime};
use crate::web::malformed::refuse_malformed;
use crate::web::pages::{self, Body};
use crate::web::portal;
use crate::web::respond::{Answer, go_to, with_user};
use crate::web::return_url;
use crate::web::route::{self, Destination, OwnPage, Route};
use crate::web::state::{App, Connection, RequestUser, Target};

/// What a request asks for, as the rules look at it (kept for re-checking an open tunnel).
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    pub host: String,
    /// As the client wrote it; read by [`rule_path`] when rules are checked.
    pub path: String,
    pub method: Method,
    pub client: std::net::IpAddr,
}

/// What the gate made of a request for the upstream.
pub(crate) struct Weighed {
    pub verdict: Verdict,
    pub lookup: Lookup,
    pub asked: Asked,
}

/// One answered request, for the access log and the metrics.
pub(crate) struct Served<'a> {
    pub method: &'a Method,
    /// The path only: query strings can carry tokens that have no place in a log.
    pub path: &'a str,
    pub client: std::net::IpAddr,
    pub started: Instant,
    pub upstream_time: Option<UpstreamTime>,
}

impl Served<'_> {
    /// Counts the answer and writes its access-log line.
    pub fn record(&self, status: StatusCode, user: Option<&str>) {
        crate::base::metrics::request(status);
        let upstream = self.upstream_time.map(|t| t.0.as_secs_f64());
        if let Some(seconds) = upstream {
            crate::base::metrics::upstream_latency(seconds);
        }
        tracing::info!(
            target: "portcullis::access",
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            user = user.unwrap_or("-"),
            client = %self.client,
            latency_ms = format_args!("{:.2}", self.started.elapsed().as_secs_f64() * 1000.0),
            upstream_ms = format_args!("{}", upstream.map_or("-".to_string(), |u| format!("{:.2}", u * 1000.0))),
        );
    }
}

impl App {
    /// Handles one request and writes its access-log line.
    /// `forwarder` is the calling worker's own upstream client (see `server/mod.rs`).
    pub async fn handle(
        self: Arc<Self>,
        request: Request<ClientBody>,
        conn: Connection,
        forwarder: &Forwarder,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let client_ip = forwarding::client_ip(request.headers(), conn.peer.ip(), &self.config().trusted_proxies);
        let client =
            ClientInfo { peer: conn.peer.ip(), real_ip: client_ip, scheme: if conn.tls { "https" } else { "http" } };

        let answer = match refuse_malformed(&Head::from(&request)) {
            Some(refusal) => Ok(refusal),
            None => match route::route(&path) {
                route if self.refused_offline(&route) => Err(WebError::StoreOffline),
                Route::Own(OwnPage::ForwardAuth) => self.forward_auth(&request, &conn, &client).await,
                route => match (route, self.target(&request)) {
                    (_, None) => Err(WebError::MisdirectedHost),
                    // Boxed: the pages' futures are several times the size of the gate's, and the
                    // whole request's future is copied a few times before it runs (by hyper), on
                    // every request. Our own pages can afford an allocation.
                    (Route::Own(page), Some(target)) if target.main => {
                        Box::pin(portal::handle(&self, page, request, &conn)).await
                    }
                    (Route::Own(page), Some(target)) => Box::pin(self.own_page_elsewhere(page, request, &target)).await,
                    (Route::Gate, Some(target)) => self.gate(request, &client, &target, forwarder).await,
                },
            },
        };
        let mut response = answer.unwrap_or_else(WebError::into_response);

        let user = response.extensions_mut().remove::<RequestUser>().unwrap_or_default();
        let upstream_time = response.extensions().get::<UpstreamTime>().copied();
        let served = Served { method: &method, path: &path, client: client_ip, started, upstream_time };
        served.record(response.status(), user.0.as_deref());
        response
    }

    /// Fail closed while a shared store cannot be reached (see `Sessions::store_state`): our own
    /// pages sign people in and change accounts, which needs the store; full sessions in memory
    /// may go on (proxied, or through forward-auth) for `store.offline_grace`, then nothing that
    /// involves a session is served. Files and the identity keys always are.
    pub(crate) fn refused_offline(&self, route: &Route) -> bool {
        match (route, self.sessions.store_state()) {
            (_, StoreState::Reachable) => false,
            (Route::Own(page), _) if page.needs_no_session() => false,
            (_, StoreState::Closed) => true,
            (Route::Own(page), StoreState::Grace) => !page.works_offline(),
            (Route::Gate, StoreState::Grace) => false,
        }
    }

    /// The host a request is for, if the proxy serves it (`malformed.rs` has made sure there is
    /// exactly one plain host).
    fn target<B>(&self, request: &Request<B>) -> Option<Target> {
        let target = self.served_target(&Head::from(request));
        if target.is_none() {
            let host = request.headers().get(header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
            let host = host.unwrap_or_default();
            tracing::info!(target: "portcullis::security", host = %crate::base::text::Escaped(&host), "request for a host the proxy does not serve; 421");
        }
        target
    }

    /// [`App::target`], saying nothing about a host the proxy does not serve.
    pub(crate) fn served_target<F: Fields + ?Sized>(&self, request: &Head<'_, F>) -> Option<Target> {
        let authority = match request.fields.first_value(&header::HOST).and_then(fields::text) {
            Some(host) => host,
            None => request.uri.authority()?.as_str(),
        };
        let host = request_host(authority)?;
        let config = self.config();
        if !config.hosts.serves(&host) {
            return None;
        }
        Some(Target { main: config.hosts.is_main(&host), host, authority: authority.to_string() })
    }

    /// `/.portcullis/` on a host other than the main one: only the handoff, the stylesheet and
    /// the JWKS are here; every other page is the main host's, so the browser goes there.
    async fn own_page_elsewhere(&self, page: OwnPage, request: Request<ClientBody>, target: &Target) -> Answer {
        match page {
            OwnPage::Handoff => portal::handoff::exchange(self, &request, target).await,
            OwnPage::Static(name) => pages::static_file(&name).ok_or(WebError::NotFound),
            OwnPage::Jwks => portal::jwks::serve(self, request.method()),
            _ => Ok(go_to(self, request.uri().path_and_query().map_or("/", |p| p.as_str()))),
        }
    }

    /// A request for the upstream: what the access rules and the session allow.
    async fn gate(
        self: &Arc<Self>,
        request: Request<ClientBody>,
        client: &ClientInfo,
        target: &Target,
        forwarder: &Forwarder,
    ) -> Answer {
        match self.weigh(&Head::from(&request), client, target).await? {
            Weighed { verdict: Verdict::Forward, lookup: Lookup::Found(Session::Full(full)), asked } => {
                self.forward_as(request, full, client, asked, forwarder).await
            }
            Weighed { verdict: Verdict::Bypass, asked, .. } => {
                self.forward_bypassed(request, client, asked, forwarder).await
            }
            Weighed { verdict: Verdict::Deny, lookup, .. } => {
                let mut response = WebError::Denied.into_response();
                if let Lookup::Found(session) = lookup {
                    response = with_user(response, session.user());
                }
                Ok(response)
            }
            Weighed { verdict, lookup, .. } => Ok(self.elsewhere_first(&request, verdict, lookup, target)),
        }
    }

    /// The session behind a request for the upstream and what the access rules say of it: the
    /// one judgement both the full path (above) and the express lane (`web::express`) act on.
    pub(crate) async fn weigh<F: Fields + ?Sized>(
        &self,
        request: &Head<'_, F>,
        client: &ClientInfo,
        target: &Target,
    ) -> Result<Weighed, WebError> {
        let lookup = self.session_on(request.fields, target.session_host()).await;
        let user = match &lookup {
            Lookup::Found(session) => Some(session.user().clone()),
            _ => None,
        };
        let asked = Asked {
            host: target.host.clone(),
            path: request.uri.path().to_string(),
            method: request.method.clone(),
            client: client.real_ip,
        };
        let decision = self.decide(&asked, user.as_deref()).ok_or(WebError::BadRequest)?;
        let verdict = rules::admit(&decision, self.standing(&lookup), self.clock.now());
        Ok(Weighed { verdict, lookup, asked })
    }

    /// Where a session stands, as the access rules weigh it.
    pub(crate) fn standing(&self, lookup: &Lookup) -> Standing {
        match lookup {
            Lookup::Found(Session::Full(full)) => self.full_standing(full),
            Lookup::Found(Session::Partial(_)) => Standing::Partial,
            _ => Standing::None,
        }
    }

    fn full_standing(&self, full: &FullSession) -> Standing {
        // One look at the account and the configuration for both questions: this is asked of
        // every request a full session makes.
        let record = self.account(full.user());
        let config = self.config();
        let providers = &config.mfa.providers;
        Standing::Full {
            proved_second_factor: self.proved_counting_factor_in(full, &record, providers),
            second_factor_at: full.second_factor_at(),
            has_factor: crate::domain::factors::providers::has_counting_factor(&record, providers),
        }
    }

    /// What the rules say about `asked` for `user`: kept without the rule itself, so the
    /// configuration is not held across forwarding (a reload may swap it meanwhile). `None` for a
    /// path no rule can read (a control character once decoded): refused.
    pub(crate) fn decide(&self, asked: &Asked, user: Option<&User>) -> Option<Decision<'static>> {
        let config = self.config();
        if config.rules.is_empty() {
            return Some(Decision { rule: None, access: Access::Session, max_age: None });
        }
        let path = rule_path(&asked.path)?;
        // Methods are case-sensitive (RFC 9110 §9.1), but frameworks upper-case them (Flask,
        // Django): a rule for POST holds for `post` too.
        // Upper-cased only when there is something to upper-case: not a new string per request.
        let method = match asked.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            true => Method::from_bytes(asked.method.as_str().to_ascii_uppercase().as_bytes()).ok()?,
            false => asked.method.clone(),
        };
        let facts = RequestFacts { host: &asked.host, path: &path, method: &method, client: asked.client };
        let decided = rules::decide(&config.rules, &facts, user);
        Some(Decision { rule: None, access: decided.access, max_age: decided.max_age })
    }

    /// Forwards with `full`'s identity.
    async fn forward_as(
        self: &Arc<Self>,
        request: Request<ClientBody>,
        full: FullSession,
        client: &ClientInfo,
        asked: Asked,
        forwarder: &Forwarder,
    ) -> Answer {
        let user = full.user().name.to_string();
        let identity = full
            .upstream_identity(&self.signer)
            .map_err(|e| WebError::Internal(format!("cannot build the identity for {user}: {e}")))?;
        // Only an upgrade outlives this request, so only an upgrade needs re-checking: the
        // session, the 2FA policy, and the rules (a reload, or a second factor grown too old for
        // the rule's `max_age`).
        let liveness = headers::requested_upgrade(request.headers()).map(|_| {
            let (app, key) = (self.clone(), full.key().clone());
            Arc::new(move || {
                if !app.tunnel_still_allowed(&key) {
                    return false;
                }
                let Some(full) = app.sessions.live_full(&key, &app.users) else { return false };
                let standing = app.full_standing(&full);
                app.decide(&asked, Some(full.user()))
                    .is_some_and(|decision| rules::admit(&decision, standing, app.clock.now()) == Verdict::Forward)
            }) as Liveness
        });
        let mut response = forwarder.forward(request, Some(&identity), client, liveness).await?;
        response.extensions_mut().insert(RequestUser(Some(user)));
        Ok(response)
    }

    /// Forwards with no identity (a `bypass` rule). An upgraded connection (a grain's WebSocket)
    /// stays open while the rules still let its request through unchecked.
    async fn forward_bypassed(
        self: &Arc<Self>,
        request: Request<ClientBody>,
        client: &ClientInfo,
        asked: Asked,
        forwarder: &Forwarder,
    ) -> Answer {
        let liveness = headers::requested_upgrade(request.headers()).map(|_| {
            let app = self.clone();
            Arc::new(move || app.decide(&asked, None).is_some_and(|d| d.access == Access::Bypass)) as Liveness
        });
        Ok(forwarder.forward(request, None, client, liveness).await?)
    }

    /// A request that may not go on yet: a browser is sent where it must go first and brought
    /// back; a frame gets a page whose link does that at top level; anything else gets a 401.
    fn elsewhere_first(
        &self,
        request: &Request<ClientBody>,
        verdict: Verdict,
        lookup: Lookup,
        target: &Target,
    ) -> Response<Body> {
        let user = match &lookup {
            Lookup::Found(session) => Some(session.user().clone()),
            _ => None,
        };
        let navigation = route::is_browser_navigation(request.method(), request.headers());
        let frame = request.headers().get("sec-fetch-dest").is_some_and(|dest| {
            dest.as_bytes().eq_ignore_ascii_case(b"iframe") || dest.as_bytes().eq_ignore_ascii_case(b"frame")
        });
        let original = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut handoff_state = None;
        let mut response = if !navigation {
            api_refusal(verdict)
        } else {
            let next = if target.main {
                self.first_stop(verdict, &lookup, original)
            } else {
                // Another host: the main host decides, and hands a session back to this browser
                // only (the state in its cookie here must come back with the code).
                let scheme = if self.config().public_url.is_https() { "https" } else { "http" };
                let to = format!("{scheme}://{}{original}", target.authority);
                let state = crate::base::secret::random_token();
                handoff_state = Some(state.clone());
                let query =
                    serde_urlencoded::to_string([("to", to.as_str()), ("state", state.as_str())]).unwrap_or_default();
                format!("{}?{query}", Destination::Handoff.path())
            };
            if frame { self.frame_page(&self.config().public_url.join_path(&next)) } else { go_to(self, &next) }
        };
        if let Some(state) = handoff_state {
            cookies::set_handoff_state(&mut response, self, &state);
        }
        if let Lookup::Rejected(why) = lookup {
            tracing::info!(target: "portcullis::security", reason = ?why, "session cookie refused");
            if why == Rejected::Ambiguous {
                cookies::clear_session_everywhere(&mut response, self, request.uri().path());
            } else {
                cookies::clear_session(&mut response, self);
            }
        }
        match user {
            Some(user) => with_user(response, &user),
            None => response,
        }
    }

    /// The own page (with `?rd=`) a browser must visit on the main host before `original` (a
    /// path and query there) lets it through.
    pub(crate) fn first_stop(&self, verdict: Verdict, lookup: &Lookup, original: &str) -> String {
        let return_to = return_url::or_root(Some(original), &self.config().public_url);
        match verdict {
            Verdict::SignIn => Destination::Login.with_return(&return_to, &[]),
            Verdict::FinishSignIn => self.second_step_page(lookup).with_return(&return_to, &[]),
            Verdict::Enroll => Destination::Enroll.with_return(&return_to, &[]),
            _ => Destination::Challenge.with_return(&return_to, &[]),
        }
    }

    /// For a half-logged-in session: the challenge, or enrollment when 2FA is required and the
    /// account has no factor.
    fn second_step_page(&self, lookup: &Lookup) -> Destination {
        let Lookup::Found(session) = lookup else { return Destination::Login };
        let has_factor = self.has_factor(session.user());
        match policy::after_password(self.requirement(session.user()), has_factor) {
            AfterPassword::Enroll => Destination::Enroll,
            // Challenge; or, if the policy no longer asks for anything, the challenge page
            // sends a factor-less account on to enrollment or the account page.
            _ => Destination::Challenge,
        }
    }
}

/// The 401 an API client gets: never a redirect. RFC 9110 §11.6.1 requires a challenge with 401;
/// ours is a cookie session, so it names the login page rather than a standard scheme, and when a
/// (fresher) second factor is what is missing it says so as RFC 9470 does for OAuth.
pub(crate) fn api_refusal(verdict: Verdict) -> Response<Body> {
    let (text, challenge) = match verdict {
        Verdict::FinishSignIn => (
            "401 Unauthorized: finish signing in at /.portcullis/challenge\n",
            "Cookie realm=\"portcullis\", login=\"/.portcullis/login\"".to_string(),
        ),
        Verdict::ProveSecondFactor { max_age } => (
            "401 Unauthorized: this needs a (fresh) second factor; prove it at /.portcullis/challenge\n",
            format!(
                "Cookie realm=\"portcullis\", error=\"insufficient_user_authentication\", error_description=\"a fresh second factor is required\"{}",
                max_age.map_or(String::new(), |age| format!(", max_age={}", age.as_secs()))
            ),
        ),
        Verdict::Enroll => (
            "401 Unauthorized: this needs two-step verification; set it up at /.portcullis/enroll\n",
            "Cookie realm=\"portcullis\", error=\"insufficient_user_authentication\", error_description=\"a second factor is required\"".to_string(),
        ),
        _ => (
            "401 Unauthorized: sign in at /.portcullis/login\n",
            "Cookie realm=\"portcullis\", login=\"/.portcullis/login\"".to_string(),
        ),
    };
    let mut response = pages::plain(StatusCode::UNAUTHORIZED, text);
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

impl App {
    /// Inside a frame no sign-in page is ever shown (the framing page could dress it up): a small
    /// page whose link opens `url` at the top level instead. Only the proxy's own hosts may frame
    /// it.
    pub(crate) fn frame_page(&self, url: &str) -> Response<Body> {
        let config = self.config();
        let public = &config.public_url;
        let scheme = if public.is_https() { "https" } else { "http" };
        let port = public.url().port().map_or(String::new(), |p| format!(":{p}"));
        let mut ancestors = vec!["'self'".to_string(), public.origin()];
        ancestors.extend(config.hosts.others.iter().map(|host| format!("{scheme}://{}{port}", host.csp_source())));
        pages::framed_sign_in(url, &ancestors.join(" "))
    }
}
