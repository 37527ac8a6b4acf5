//! The proxy's own endpoints under `/.portcullis/`: sign in, sign out, second factors, account,
//! admin, static files.
//!
//! Every state-changing endpoint is a POST that must carry a CSRF token bound to the browser (the
//! session's token, or for the login form a token in its own cookie) and come from our own origin
//! (`Origin`). GET never changes anything.

mod account;
mod admin;
mod challenge;
mod email;
mod enroll;
mod login;
mod recover;
mod rollout;

pub use enroll::Pending;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::base::headers;
use crate::config::MfaPolicy;
use crate::domain::session::{Lookup, Session, SessionId};
use crate::web::app::{App, Connection, RequestUser};
use crate::web::pages::{self, Body};
use crate::web::return_url;
use crate::web::route::{Destination, OwnPage};

/// Our forms are a few short fields; anything bigger is not one of them.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// A form body must arrive whole within this: a few short fields take milliseconds, and a
/// connection dribbling a byte every few seconds must not be held open (slow-body attacks).
pub const FORM_DEADLINE: Duration = Duration::from_secs(5);

pub async fn handle(app: &Arc<App>, page: OwnPage, request: Request<Incoming>, conn: &Connection) -> Response<Body> {
    let method = request.method().clone();
    let is_read = method == Method::GET || method == Method::HEAD;
    let mfa_off = app.config().mfa.policy == MfaPolicy::Disabled;
    match (page, is_read, method == Method::POST) {
        // With 2FA disabled there are no second-factor pages at all.
        (
            OwnPage::Challenge
            | OwnPage::Enroll
            | OwnPage::RecoveryCodes
            | OwnPage::Reminder
            | OwnPage::Nudge
            | OwnPage::Recover
            | OwnPage::ChallengeEmail
            | OwnPage::EnrollEmail
            | OwnPage::EnrollEmailConfirm,
            _,
            _,
        ) if mfa_off => not_found(),
        (OwnPage::Static(name), true, _) => pages::static_file(&name).unwrap_or_else(not_found),
        (OwnPage::Challenge, true, _) => challenge::form(app, &request).await,
        (OwnPage::Challenge, _, true) => challenge::submit(app, request, conn).await,
        (OwnPage::Enroll, true, _) => enroll::form(app, &request).await,
        (OwnPage::Enroll, _, true) => enroll::submit(app, request).await,
        (OwnPage::RecoveryCodes, true, _) => enroll::recovery_codes_page(app, &request).await,
        (OwnPage::RecoveryCodes, _, true) => enroll::recovery_codes_confirm(app, request).await,
        (OwnPage::Reminder, true, _) => rollout::reminder(app, &request).await,
        (OwnPage::Nudge, true, _) => rollout::nudge(app, &request).await,
        (OwnPage::Nudge, _, true) => rollout::nudge_decline(app, request).await,
        (OwnPage::AccountAction(action), true, _) if action.has_page() => {
            account::action_page(app, action, &request).await
        }
        (OwnPage::AccountAction(action), _, true) => account::action(app, action, request, conn).await,
        (OwnPage::Login, true, _) => login::form(app, &request).await,
        (OwnPage::Login, _, true) => login::submit(app, request, conn).await,
        (OwnPage::Logout, true, _) => login::logout_form(app, &request).await,
        (OwnPage::Logout, _, true) => login::logout_submit(app, request).await,
        (OwnPage::Account, true, _) => account::page(app, &request).await,
        (OwnPage::ChallengeEmail, _, true) => email::challenge_send(app, request).await,
        (OwnPage::EnrollEmail, true, _) => email::enroll_form(app, &request).await,
        (OwnPage::EnrollEmail, _, true) => email::enroll_send(app, request).await,
        (OwnPage::EnrollEmailConfirm, _, true) => email::enroll_confirm(app, request).await,
        (OwnPage::Recover, true, _) => recover::form(app, &request),
        (OwnPage::Recover, _, true) => recover::submit(app, request, conn).await,
        (OwnPage::Admin, true, _) => admin::page(app, &request).await,
        (OwnPage::AdminAction, _, true) => admin::action(app, request).await,
        (OwnPage::NotFound, _, _) => not_found(),
        _ => {
            let mut response = pages::plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
            response
        }
    }
}

fn not_found() -> Response<Body> {
    pages::error(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no Portcullis page at this address.",
        Some(("/", "Go to the start page")),
    )
}

/// A 503 for a change that could not be stored; the details are logged by the caller.
fn unavailable() -> Response<Body> {
    pages::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong",
        "Your change could not be saved. Try again; if it keeps failing, tell the administrator.",
        None,
    )
}

fn cookie_header(
    app: &App,
    name: &str,
    value: &str,
    max_age: Option<time::Duration>,
    same_site: SameSite,
) -> HeaderValue {
    let mut cookie = Cookie::build((name.to_string(), value.to_string()))
        .path("/")
        .http_only(true)
        .secure(app.config().public_url.is_https())
        .same_site(same_site)
        .build();
    if let Some(max_age) = max_age {
        cookie.set_max_age(max_age);
    }
    HeaderValue::from_str(&cookie.to_string()).expect("cookie names and base64url values are valid header text")
}

/// The session cookie for `id`, living until the session's absolute end.
fn session_cookie_header(app: &App, id: &SessionId, expires_at: crate::base::clock::UnixTime) -> HeaderValue {
    let max_age = time::Duration::seconds((expires_at - app.clock.now()).max(0));
    cookie_header(app, app.session_cookie(), &id.cookie_value(), Some(max_age), SameSite::Lax)
}

/// Tells the browser to drop a cookie (used for refused or ended sessions).
pub fn clear_cookie(response: &mut Response<Body>, name: &str, secure: bool) {
    let cookie = Cookie::build((name.to_string(), String::new()))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::ZERO)
        .build();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// `Origin` must name our public origin on every POST. Browsers send it on every form POST
/// (Fetch standard, "append a request `Origin` header"), with our referrer policy as the real
/// origin (see [`pages::REFERRER_POLICY`]). A request without it, with several, or with
/// `Origin: null`, is refused: when in doubt, deny. `Referer` is not consulted: it is optional,
/// often stripped, and a second parser is a second way to get this wrong.
fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    let origin = app.config().public_url.origin();
    let mut values = headers.get_all(header::ORIGIN).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.as_bytes() == origin.as_bytes(),
        _ => false,
    }
}

fn tokens_match(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Reads a urlencoded form: of our own content type, at most [`MAX_FORM_BYTES`], and whole
/// within [`FORM_DEADLINE`].
async fn read_form<T: for<'de> Deserialize<'de>>(request: Request<Incoming>) -> Result<T, Response<Body>> {
    let is_form = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !is_form {
        return Err(pages::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported form",
            "This page only accepts its own form.",
            None,
        ));
    }
    let collect = Limited::new(request.into_body(), MAX_FORM_BYTES).collect();
    let bytes: Bytes = match tokio::time::timeout(FORM_DEADLINE, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return Err(pages::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "That form was larger than any Portcullis form can be.",
                None,
            ));
        }
        Err(_) => {
            tracing::warn!(target: "portcullis::security", "form body too slow; connection closed");
            let mut response = pages::error(
                StatusCode::REQUEST_TIMEOUT,
                "The form took too long",
                "The form did not arrive in time. Check your connection and send it again.",
                None,
            );
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(response);
        }
    };
    serde_urlencoded::from_bytes(&bytes).map_err(|_| {
        pages::error(
            StatusCode::BAD_REQUEST,
            "Malformed form",
            "The form could not be read. Go back and try again.",
            None,
        )
    })
}

fn forbidden_origin() -> Response<Body> {
    pages::error(
        StatusCode::FORBIDDEN,
        "Request refused",
        "This form was not sent from this site, so it was ignored. If you followed a link here, go to the site directly.",
        Some(("/.portcullis/login", "Go to sign in")),
    )
}

#[derive(Deserialize)]
struct ReturnQuery {
    rd: Option<String>,
}

fn return_to_from_query(app: &App, request: &Request<Incoming>) -> String {
    let query = request.uri().query().unwrap_or("");
    let rd = serde_urlencoded::from_str::<ReturnQuery>(query).ok().and_then(|q| q.rd);
    return_url::or_root(rd.as_deref(), &app.config().public_url)
}

/// A 303 to one of our pages, carrying where to go afterwards.
pub fn send_to(app: &App, page: Destination, return_to: &str) -> Response<Body> {
    let query = serde_urlencoded::to_string([("rd", return_to)]).unwrap_or_default();
    pages::see_other(&app.config().public_url.join_path(&format!("{}?{query}", page.path())))
}

/// A 303 to a path on our public origin.
fn go_to(app: &App, path: &str) -> Response<Body> {
    pages::see_other(&app.config().public_url.join_path(path))
}

fn login_redirect(app: &App, return_to: &str) -> Response<Body> {
    send_to(app, Destination::Login, return_to)
}

/// Marks the response with the user it was for, for the access log.
fn with_user(mut response: Response<Body>, user: &crate::domain::users::User) -> Response<Body> {
    response.extensions_mut().insert(RequestUser(Some(user.name.to_string())));
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

impl SessionForm for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A form with nothing but its CSRF token and where to go next.
#[derive(Deserialize)]
struct RdCsrfForm {
    #[serde(default)]
    csrf: String,
    rd: Option<String>,
}

impl SessionForm for RdCsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn return_to(&self) -> Option<&str> {
        self.rd.as_deref()
    }
}

/// What every form on a signed-in page carries.
trait SessionForm: for<'de> Deserialize<'de> {
    fn csrf(&self) -> &str;
    /// Where to go afterwards, as submitted (validated by [`session_post`]).
    fn return_to(&self) -> Option<&str> {
        None
    }
}

/// A POST from a signed-in browser, checked the same way on every endpoint: it comes from our own
/// origin, its form can be read, and it carries the session's own CSRF token. On success: the
/// session, the form and the validated return path. Otherwise the answer to send instead;
/// `anonymous` makes that answer when there is no session at all.
async fn session_post<F: SessionForm>(
    app: &App,
    request: Request<Incoming>,
    anonymous: impl FnOnce(&str) -> Response<Body>,
) -> Result<(Session, F, String), Response<Body>> {
    if !same_origin(app, request.headers()) {
        return Err(forbidden_origin());
    }
    let lookup = app.session(request.headers()).await;
    let form: F = read_form(request).await?;
    let return_to = return_url::or_root(form.return_to(), &app.config().public_url);
    let Lookup::Found(session) = lookup else { return Err(anonymous(&return_to)) };
    if !tokens_match(session.csrf_token(), form.csrf()) {
        let message = "This form had expired. Go back, reload the page and try again.";
        return Err(pages::error(StatusCode::FORBIDDEN, "Request refused", message, None));
    }
    Ok((session, form, return_to))
}

/// Whole minutes until `until`, at least one, for "try again in about N minutes".
fn minutes_until(app: &App, until: crate::base::clock::UnixTime) -> i64 {
    ((until - app.clock.now()).max(1) + 59) / 60
}

/// Sets `Retry-After` to the seconds until `until`.
fn retry_after(response: &mut Response<Body>, app: &App, until: crate::base::clock::UnixTime) {
    if let Ok(value) = HeaderValue::from_str(&(until - app.clock.now()).max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}

/// Where the session's client is, for its entry in the account page's list.
fn device(headers: &HeaderMap, client_ip: std::net::IpAddr) -> crate::domain::session::Device {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    crate::domain::session::Device { address: client_ip.to_string(), browser: crate::base::user_agent::describe(agent) }
}

fn client_ip(app: &App, headers: &HeaderMap, conn: &Connection) -> std::net::IpAddr {
    headers::client_ip(headers, conn.peer.ip(), &app.config().trusted_proxies)
}
