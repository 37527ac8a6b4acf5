//! The proxy's own endpoints under `/.portcullis/`: sign in, sign out, account, static files.
//!
//! Every state-changing endpoint is a POST that must carry a CSRF token bound to the browser (the
//! session's token, or for the login form a token in its own cookie) and come from our own origin
//! (`Origin`, else `Referer`). GET never changes anything.

mod admin;
mod email;
mod mfa;
mod recover;

pub use mfa::{Pending, page_with_rd};

use std::sync::Arc;

use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::app::{App, Connection, RequestUser};
use crate::config::MfaPolicy;
use crate::headers;
use crate::pages::{self, Body, LoginError, LoginPage};
use crate::password::HashError;
use crate::policy::{self, AfterPassword};
use crate::regulation::{Subject, Verdict};
use crate::return_url;
use crate::route::OwnPage;
use crate::session::{AuthMethod, Lookup, Session, SessionId};

/// Our forms are a few short fields; anything bigger is not one of them.
const MAX_FORM_BYTES: usize = 16 * 1024;

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
        (OwnPage::Challenge, true, _) => mfa::challenge_form(app, &request),
        (OwnPage::Challenge, _, true) => mfa::challenge_submit(app, request, conn).await,
        (OwnPage::Enroll, true, _) => mfa::enroll_form(app, &request),
        (OwnPage::Enroll, _, true) => mfa::enroll_submit(app, request).await,
        (OwnPage::RecoveryCodes, true, _) => mfa::recovery_codes_page(app, &request),
        (OwnPage::Reminder, true, _) => mfa::reminder(app, &request),
        (OwnPage::Nudge, true, _) => mfa::nudge(app, &request),
        (OwnPage::Nudge, _, true) => mfa::nudge_decline(app, request).await,
        (OwnPage::RecoveryCodes, _, true) => mfa::recovery_codes_confirm(app, request).await,
        (OwnPage::AccountAction(action), _, true) => mfa::account_action(app, &action, request).await,
        (OwnPage::Login, true, _) => login_form(app, &request),
        (OwnPage::Login, _, true) => login_submit(app, request, conn).await,
        (OwnPage::Logout, true, _) => logout_form(app, &request),
        (OwnPage::Logout, _, true) => logout_submit(app, request).await,
        (OwnPage::Account, true, _) => account(app, &request),
        (OwnPage::ChallengeEmail, _, true) => email::challenge_send(app, request).await,
        (OwnPage::EnrollEmail, true, _) => email::enroll_form(app, &request),
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
pub(crate) fn session_cookie_header(app: &App, id: &SessionId, expires_at: crate::clock::UnixTime) -> HeaderValue {
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

/// `Origin` (or, from older browsers, `Referer`) must name our public origin on every POST.
/// A request with neither is refused: when in doubt, deny.
pub(crate) fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    let origin = app.config().public_url.origin();
    if let Some(value) = headers.get(header::ORIGIN) {
        return value.as_bytes() == origin.as_bytes();
    }
    headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|r| r == origin || r.starts_with(&format!("{origin}/")))
}

pub(crate) fn tokens_match(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

pub(crate) async fn read_form<T: for<'de> Deserialize<'de>>(request: Request<Incoming>) -> Result<T, Response<Body>> {
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
    let bytes: Bytes = match Limited::new(request.into_body(), MAX_FORM_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(pages::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "That form was larger than any Portcullis form can be.",
                None,
            ));
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

pub(crate) fn forbidden_origin() -> Response<Body> {
    pages::error(
        StatusCode::FORBIDDEN,
        "Request refused",
        "This form was not sent from this site, so it was ignored. If you followed a link here, go to the site directly.",
        Some(("/.portcullis/login", "Go to sign in")),
    )
}

/// The login form's CSRF token: the browser's existing one if it has a well-formed one, else a
/// new one (returned so the caller sets the cookie).
fn login_csrf(app: &App, headers: &HeaderMap) -> (String, bool) {
    let name = app.login_csrf_cookie();
    match headers::cookie_values(headers, &name).find(|v| v.len() == 43) {
        Some(existing) => (existing.to_string(), false),
        None => (crate::secret::random_token(), true),
    }
}

fn render_login(
    app: &App,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<LoginError>,
    return_to: &str,
    username: &str,
) -> Response<Body> {
    let (csrf, fresh) = login_csrf(app, headers);
    let mut response = pages::html(status, &LoginPage { error, csrf: &csrf, return_to, username });
    if fresh {
        let cookie = cookie_header(app, &app.login_csrf_cookie(), &csrf, None, SameSite::Strict);
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Deserialize)]
struct ReturnQuery {
    rd: Option<String>,
}

pub(crate) fn return_to_from_query(app: &App, request: &Request<Incoming>) -> String {
    let query = request.uri().query().unwrap_or("");
    let rd = serde_urlencoded::from_str::<ReturnQuery>(query).ok().and_then(|q| q.rd);
    return_url::or_root(rd.as_deref(), &app.config().public_url)
}

fn login_form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    if let Lookup::Found(Session::Full(_)) = app.resolve_session(request.headers()) {
        return pages::see_other(&app.config().public_url.join_path(&return_to));
    }
    render_login(app, request.headers(), StatusCode::OK, None, &return_to, "")
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default, deserialize_with = "zeroizing")]
    password: Zeroizing<String>,
    #[serde(default)]
    csrf: String,
    rd: Option<String>,
}

fn zeroizing<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

async fn login_submit(app: &Arc<App>, request: Request<Incoming>, conn: &Connection) -> Response<Body> {
    if !same_origin(app, request.headers()) {
        tracing::warn!(target: "portcullis::security", peer = %conn.peer.ip(), "login refused: cross-origin post");
        return forbidden_origin();
    }
    let headers = request.headers().clone();
    let form: LoginForm = match read_form(request).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let return_to = return_url::or_root(form.rd.as_deref(), &app.config().public_url);
    if !login_csrf_ok(app, &headers, &form.csrf) {
        return render_login(app, &headers, StatusCode::FORBIDDEN, Some(LoginError::Expired), &return_to, "");
    }
    let username = form.username.trim().to_ascii_lowercase();
    if username.is_empty() || form.password.is_empty() || username.len() > 64 || form.password.len() > 1024 {
        return render_login(
            app,
            &headers,
            StatusCode::BAD_REQUEST,
            Some(LoginError::Malformed),
            &return_to,
            &username,
        );
    }

    // Regulation comes before the (expensive) hash, and treats unknown names like real ones.
    let client_ip = headers::client_ip(&headers, conn.peer.ip(), &app.config().trusted_proxies);
    let subjects = [Subject::Account(username.clone()), Subject::Address(client_ip)];
    if let Some(response) = regulated(app, &subjects, |status, error| {
        render_login(app, &headers, status, Some(error), &return_to, &username)
    }) {
        crate::telemetry::login("locked");
        return response;
    }
    let user = app.users.get(&username);
    let verified = app.passwords.verify(form.password, user.as_ref().map(|u| u.password_hash.as_str())).await;
    let user = match (verified, user) {
        (Ok(true), Some(user)) => user,
        (Ok(_), _) => {
            tracing::warn!(target: "portcullis::security", user = %username, client = %client_ip, "login failed");
            password_failed(app, &subjects, &username, client_ip).await;
            return render_login(
                app,
                &headers,
                StatusCode::UNAUTHORIZED,
                Some(LoginError::BadCredentials),
                &return_to,
                &username,
            );
        }
        (Err(HashError::Busy), _) => {
            tracing::warn!(target: "portcullis::security", "login turned away: password hashing queue full");
            let mut response = render_login(
                app,
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(LoginError::Busy),
                &return_to,
                &username,
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return response;
        }
        (Err(e), _) => {
            tracing::error!("login failed internally: {e}");
            return pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Your sign-in could not be checked. Try again; if it keeps failing, tell the administrator.",
                None,
            );
        }
    };

    crate::telemetry::login("ok");
    if let Err(e) = app.regulator.succeeded(user.name.as_str(), false).await {
        tracing::error!("could not record a login: {e}");
    }
    // A session the browser already had (perhaps planted by someone else) is ended, never reused.
    if let Lookup::Found(previous) = app.resolve_session(&headers)
        && let Err(e) = app.sessions.end(previous.key()).await
    {
        tracing::error!("could not end the previous session: {e}");
    }
    let requirement = policy::requirement(&app.config().mfa, &user, app.clock.now());
    let has_factor = app.accounts.get(user.name.as_str()).has_second_factor();
    let next = policy::after_password(requirement, has_factor);
    let established = async {
        let (id, partial) = app.sessions.begin(user.clone()).await?;
        match next {
            AfterPassword::Done => {
                let (id, full) = app.sessions.promote(partial, vec![AuthMethod::Pwd]).await?;
                let now = app.clock.now();
                app.accounts.record_sign_in(user.name.as_str(), now).await;
                let record = app.accounts.get(user.name.as_str());
                let nudge = policy::should_nudge(requirement, has_factor, app.config().mfa.nudge_every, &record, now);
                if nudge {
                    let noted = app
                        .accounts
                        .update(user.name.as_str(), |r| {
                            r.nudged_at = Some(now);
                            Ok::<_, std::convert::Infallible>(())
                        })
                        .await;
                    if let Err(e) = noted {
                        tracing::error!("could not record a 2FA suggestion: {e}");
                    }
                }
                Ok::<_, crate::session::SessionError>((id, full.expires_at(), nudge.then_some("nudge")))
            }
            // Signed in; a reminder page first that 2FA becomes required soon.
            AfterPassword::Remind(_) => {
                let (id, full) = app.sessions.promote(partial, vec![AuthMethod::Pwd]).await?;
                app.accounts.record_sign_in(user.name.as_str(), app.clock.now()).await;
                Ok((id, full.expires_at(), Some("reminder")))
            }
            // Half logged in: the partial session's cookie, good only for the second-factor pages.
            AfterPassword::Challenge => {
                // Email first: the code is on its way by the time the challenge page shows.
                let record = app.accounts.get(user.name.as_str());
                if record.primary_factor() == Some(crate::factors::FactorKind::Email)
                    && let Err(e) = email::send_sign_in_code(app, &user)
                {
                    tracing::info!(user = %user.name, "no sign-in code sent at login: {e}");
                }
                Ok((id, app.clock.now() + app.config().session.partial_timeout.as_secs() as i64, Some("challenge")))
            }
            AfterPassword::Enroll => {
                Ok((id, app.clock.now() + app.config().session.partial_timeout.as_secs() as i64, Some("enroll")))
            }
        }
    };
    match established.await {
        Ok((id, expires_at, next_page)) => {
            let stage = match next_page {
                None | Some("reminder") | Some("nudge") => "login ok",
                Some(_) => "password ok, second factor next",
            };
            tracing::info!(target: "portcullis::security", user = %user.name, session = %id.key().log_ref(), client = %conn.peer.ip(), "{stage}");
            let mut response = match next_page {
                None => pages::see_other(&app.config().public_url.join_path(&return_to)),
                Some(page) => mfa::page_with_rd(app, page, &return_to),
            };
            response.headers_mut().append(header::SET_COOKIE, session_cookie_header(app, &id, expires_at));
            response.extensions_mut().insert(RequestUser(Some(user.name.to_string())));
            response
        }
        Err(e) => {
            tracing::error!("could not create a session: {e}");
            pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable",
                "Your password was right, but a session could not be stored. Try again; if it keeps failing, tell the administrator.",
                None,
            )
        }
    }
}

/// The login form's CSRF check: the token in the form matches the browser's own login-CSRF
/// cookie, which must be present.
fn login_csrf_ok(app: &App, headers: &HeaderMap, given: &str) -> bool {
    let (expected, _) = login_csrf(app, headers);
    tokens_match(&expected, given) && headers::cookie_values(headers, &app.login_csrf_cookie()).next().is_some()
}

/// Counts a wrong password against the account and the address; when that starts a ban, it is
/// counted and the account's owner (if the account exists) is told.
async fn password_failed(app: &App, subjects: &[Subject], username: &str, client_ip: std::net::IpAddr) {
    crate::telemetry::login("failed");
    match app.regulator.failed(subjects, false).await {
        Ok(true) => {
            crate::telemetry::lockout();
            tracing::warn!(target: "portcullis::security", user = %username, client = %client_ip, "locked out after repeated failures");
            // Only a real account has someone to tell; the page says the same either way.
            if let Some(account) = app.users.get(username) {
                app.notifier.send(&account, crate::notify::SecurityEvent::Locked, app.clock.now(), false);
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!("could not record a failed password: {e}"),
    }
}

/// Whole minutes until `until`, at least one, for "try again in about N minutes".
pub(crate) fn minutes_until(app: &App, until: crate::clock::UnixTime) -> i64 {
    ((until - app.clock.now()).max(1) + 59) / 60
}

/// The answer while a subject is banned: the page `render` makes with the wait, status 429 and
/// `Retry-After`.
fn regulated(
    app: &App,
    subjects: &[Subject],
    render: impl FnOnce(StatusCode, LoginError) -> Response<Body>,
) -> Option<Response<Body>> {
    match app.regulator.check(subjects) {
        Verdict::Allowed => None,
        Verdict::Banned(until) => {
            let minutes = minutes_until(app, until);
            let mut response = render(StatusCode::TOO_MANY_REQUESTS, LoginError::Locked { minutes });
            if let Ok(value) = HeaderValue::from_str(&(until - app.clock.now()).max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Some(response)
        }
        // Only real accounts can reach a locked second factor (it takes the right password 100
        // times); for the password step it is not a ban.
        Verdict::SecondFactorLocked => None,
    }
}

fn logout_form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    match app.resolve_session(request.headers()) {
        Lookup::Found(session) => pages::html(
            StatusCode::OK,
            &pages::LogoutPage { username: session.user().name.as_str(), csrf: session.csrf_token() },
        ),
        _ => pages::html(StatusCode::OK, &pages::SignedOutPage),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: String,
}

impl SessionForm for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// What every form on a signed-in page carries.
pub(crate) trait SessionForm: for<'de> Deserialize<'de> {
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
pub(crate) async fn session_post<F: SessionForm>(
    app: &App,
    request: Request<Incoming>,
    anonymous: impl FnOnce(&str) -> Response<Body>,
) -> Result<(Session, F, String), Response<Body>> {
    if !same_origin(app, request.headers()) {
        return Err(forbidden_origin());
    }
    let lookup = app.resolve_session(request.headers());
    let form: F = read_form(request).await?;
    let return_to = return_url::or_root(form.return_to(), &app.config().public_url);
    let Lookup::Found(session) = lookup else { return Err(anonymous(&return_to)) };
    if !tokens_match(session.csrf_token(), form.csrf()) {
        let message = "This form had expired. Go back, reload the page and try again.";
        return Err(pages::error(StatusCode::FORBIDDEN, "Request refused", message, None));
    }
    Ok((session, form, return_to))
}

fn signed_out(app: &App) -> Response<Body> {
    let mut response = pages::html(StatusCode::OK, &pages::SignedOutPage);
    clear_cookie(&mut response, app.session_cookie(), app.config().public_url.is_https());
    response
}

async fn logout_submit(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    // Signing out without a session is already done: say so, and drop any stale cookie.
    let (session, _, _) = match session_post::<CsrfForm>(app, request, |_| signed_out(app)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if let Err(e) = app.sessions.end(session.key()).await {
        tracing::error!("could not end a session: {e}");
        return pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-out failed",
            "Your session could not be ended. Try again.",
            None,
        );
    }
    tracing::info!(target: "portcullis::security", user = %session.user().name, session = %session.key().log_ref(), "logout");
    let mut response = signed_out(app);
    response.extensions_mut().insert(RequestUser(Some(session.user().name.to_string())));
    response
}

pub(crate) fn format_time(t: crate::clock::UnixTime) -> String {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    let text = humantime::format_rfc3339_seconds(when).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replace('T', " "))
}

fn account(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let full = match app.resolve_session(request.headers()) {
        Lookup::Found(Session::Full(full)) => full,
        // Half logged in: finish the second factor first, then come back here.
        Lookup::Found(Session::Partial(_)) => return mfa::page_with_rd(app, "challenge", "/.portcullis/account"),
        _ => {
            let query = serde_urlencoded::to_string([("rd", "/.portcullis/account")]).unwrap_or_default();
            return pages::see_other(&app.config().public_url.join_path(&format!("/.portcullis/login?{query}")));
        }
    };
    let user = full.user();
    let record = app.accounts.get(user.name.as_str());
    let config = app.config();
    let requirement = policy::requirement(&config.mfa, user, app.clock.now());
    let notice = match request.uri().query().unwrap_or("") {
        "done=removed" => Some("Two-step verification is off. You can turn it on again at any time."),
        _ => None,
    };
    let mut response = pages::html(
        StatusCode::OK,
        &pages::AccountPage {
            username: user.name.as_str(),
            display_name: &user.display_name,
            email: &user.email,
            groups: &user.groups,
            signed_in: format_time(full.created_at()),
            expires: format_time(full.expires_at()),
            csrf: full.csrf_token(),
            notice,
            mfa_enabled: requirement != policy::Requirement::Off && (config.mfa.totp || config.mfa.email_otp),
            required: requirement == policy::Requirement::Required,
            totp: record.totp.as_ref().map(|t| pages::TotpSummary {
                enrolled: format_time(t.enrolled_at),
                last_used: t.last_used_at.map(format_time),
            }),
            recovery_left: record.recovery_codes_left(),
            email_codes: record.email.as_ref().map(|e| pages::EmailSummary {
                address: crate::factors::email::masked(&e.address),
                enrolled: format_time(e.enrolled_at),
                last_used: e.last_used_at.map(format_time),
            }),
            email_offered: (config.mfa.email_otp && record.email.is_none())
                .then(|| crate::factors::email::masked(&user.email)),
            totp_offered: config.mfa.totp,
            primary_email: record.primary_factor() == Some(crate::factors::FactorKind::Email),
            can_remove_totp: !(requirement == policy::Requirement::Required && record.email.is_none()),
            can_remove_email: !(requirement == policy::Requirement::Required && record.totp.is_none()),
        },
    );
    response.extensions_mut().insert(RequestUser(Some(user.name.to_string())));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Form bodies from anyone: parsed or refused, never a panic.
        #[test]
        fn form_parsing_is_total(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = serde_urlencoded::from_bytes::<LoginForm>(&body);
            let _ = serde_urlencoded::from_bytes::<CsrfForm>(&body);
        }

        #[test]
        fn form_shaped_bodies_are_total(pairs in proptest::collection::vec(("(username|password|csrf|rd|code|x)", "[^&]{0,30}"), 0..8)) {
            let body = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
            if let Ok(form) = serde_urlencoded::from_str::<LoginForm>(&body) {
                // The return URL from a form is only ever used through the validator.
                let public = crate::config::parse(
                    "upstream = \"http://127.0.0.1:1\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"/tmp\"\n",
                    std::path::Path::new("/tmp/proxy.toml"),
                ).unwrap().public_url;
                let target = return_url::or_root(form.rd.as_deref(), &public);
                proptest::prop_assert!(target.starts_with('/') && !target.starts_with("//"));
            }
        }
    }
}
