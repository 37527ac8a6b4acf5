//! Signing in with the password (the first factor), and signing out.
//!
//! The login form is protected against login CSRF by a token in its own cookie (there is no
//! session yet to bind it to) plus the same-origin check. Every password check, here and on the
//! other password forms, goes through [`check_password`]: regulated, hashed off the workers, and
//! the same for unknown names as for real ones.

use std::sync::Arc;

use cookie::SameSite;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    CsrfForm, clear_cookie, client_ip, cookie_header, forbidden_origin, go_to, minutes_until, read_form, retry_after,
    return_to_from_query, same_origin, send_to, session_cookie_header, session_post, tokens_match, with_user,
};
use crate::base::text::Escaped;
use crate::domain::factors::FactorKind;
use crate::domain::password::HashError;
use crate::domain::policy::{self, AfterPassword};
use crate::domain::regulation::{Factor, Refusal, Subject, Who};
use crate::domain::session::{AuthMethod, Lookup, Session, SessionError};
use crate::domain::users::User;
use crate::web::app::{App, Connection};
use crate::web::pages::{self, Body, LoginError, LoginPage};
use crate::web::route::Destination;

/// The login form's CSRF token: the browser's existing one if it has a well-formed one, else a
/// new one (returned so the caller sets the cookie).
pub(super) fn login_csrf(app: &App, headers: &HeaderMap) -> (String, bool) {
    let name = app.login_csrf_cookie();
    match crate::base::headers::cookie_values(headers, &name).find(|v| v.len() == 43) {
        Some(existing) => (existing.to_string(), false),
        None => (crate::base::secret::random_token(), true),
    }
}

/// The login-CSRF cookie to set when [`login_csrf`] made a new token.
pub(super) fn login_csrf_cookie(app: &App, token: &str) -> HeaderValue {
    cookie_header(app, &app.login_csrf_cookie(), token, None, SameSite::Strict)
}

/// The login form's CSRF check: the token in the form matches the browser's own login-CSRF
/// cookie, which must be present.
pub(super) fn login_csrf_ok(app: &App, headers: &HeaderMap, given: &str) -> bool {
    let (expected, _) = login_csrf(app, headers);
    tokens_match(&expected, given)
        && crate::base::headers::cookie_values(headers, &app.login_csrf_cookie()).next().is_some()
}

fn render(
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
        response.headers_mut().append(header::SET_COOKIE, login_csrf_cookie(app, &csrf));
    }
    response
}

pub(super) async fn form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    if let Lookup::Found(Session::Full(_)) = app.session(request.headers()).await {
        return go_to(app, &return_to);
    }
    render(app, request.headers(), StatusCode::OK, None, &return_to, "")
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

pub(super) fn zeroizing<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

/// The known-browser cookie for a browser whose session just became full (see
/// `known_browser.rs`): only then, so a password alone never earns one where a second factor is
/// needed.
pub(super) fn known_browser_cookie(app: &App, user: &User) -> HeaderValue {
    let value = app.known_browsers.issue(user, app.clock.now());
    let max_age = Some(time::Duration::seconds(crate::domain::known_browser::LIFETIME_SECONDS));
    cookie_header(app, &app.config().session.known_browser_cookie(), &value, max_age, SameSite::Strict)
}

/// How a regulation refusal reads on a password form, with its status and `Retry-After`.
pub(super) fn refused(
    app: &App,
    refusal: Refusal,
    render: impl FnOnce(StatusCode, LoginError) -> Response<Body>,
) -> Response<Body> {
    match refusal {
        Refusal::Banned { until, who } => {
            let mut response =
                render(StatusCode::TOO_MANY_REQUESTS, LoginError::Paused { minutes: minutes_until(app, until), who });
            retry_after(&mut response, app, until);
            response
        }
        // Only the second factor can be locked; for a password it is never the answer.
        Refusal::Crowded | Refusal::SecondFactorLocked => {
            let mut response = render(StatusCode::TOO_MANY_REQUESTS, LoginError::Crowded);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// Checks `password` for `username`, regulated: the attempt is reserved before the (slow) hash
/// and counted as a failure unless it proves right. A browser that knows this account (see
/// `known_browser.rs`) is regulated on its own; any other attempt counts against the account and
/// the client address. When a failure pauses the account, its owner is told.
///
/// On success the user; otherwise the page `render` makes.
pub(super) async fn check_password(
    app: &App,
    headers: &HeaderMap,
    conn: &Connection,
    username: &str,
    password: Zeroizing<String>,
    render: impl Fn(StatusCode, LoginError) -> Response<Body>,
) -> Result<Arc<User>, Response<Body>> {
    let client = client_ip(app, headers, conn);
    let now = app.clock.now();
    // In logs, what the client typed is escaped: a name is not known to be one yet.
    let logged = Escaped(username);
    let user = app.users.get(username);
    let known = user.as_ref().and_then(|user| {
        crate::base::headers::cookie_values(headers, &app.config().session.known_browser_cookie())
            .find_map(|value| app.known_browsers.recognise(value, user, now))
    });
    let subjects = match known {
        Some(id) => vec![Subject::Browser(id)],
        // Something that cannot be a user name has no account to protect (and is not kept as
        // one in the regulation store); the address still counts it.
        None if crate::domain::users::Username::parse(username).is_err() => vec![Subject::address(client)],
        None => vec![Subject::Account(username.to_string()), Subject::address(client)],
    };
    let attempt = match app.regulator.reserve(&subjects, Factor::Password) {
        Ok(attempt) => attempt,
        Err(refusal) => {
            crate::base::metrics::login("locked");
            tracing::warn!(target: "portcullis::security", user = %logged, %client, ?refusal, "password not checked: paused");
            return Err(refused(app, refusal, render));
        }
    };
    match app.passwords.verify(password, user.as_ref().map(|u| u.password_hash.as_str())).await {
        Ok(true) if user.is_some() => {
            if let Err(e) = attempt.succeeded().await {
                tracing::error!("could not record a right password: {e}");
            }
            Ok(user.expect("matched just above"))
        }
        Ok(_) => {
            crate::base::metrics::login("failed");
            tracing::warn!(target: "portcullis::security", user = %logged, %client, "login failed");
            let outcome = match attempt.failed().await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!("could not record a wrong password: {e}");
                    Default::default()
                }
            };
            let Some(until) = outcome.until() else {
                return Err(render(StatusCode::UNAUTHORIZED, LoginError::BadCredentials));
            };
            crate::base::metrics::lockout();
            tracing::warn!(target: "portcullis::security", user = %logged, %client, banned = ?outcome.banned, "paused after repeated wrong passwords");
            // Only the account's own pause is news for its owner (and only a real account has one):
            // a shared address paused by others' mistakes says nothing about this account.
            if outcome.banned(Who::Account)
                && let Some(account) = &user
            {
                let event = crate::domain::notify::SecurityEvent::Locked { by_codes: false };
                app.notifier.send(account, event, now, false);
            }
            let who = outcome.banned.first().map_or(Who::Account, |(who, _)| *who);
            Err(refused(app, Refusal::Banned { until, who }, render))
        }
        Err(HashError::Busy) => {
            tracing::warn!(target: "portcullis::security", "password check turned away: hashing queue full");
            let mut response = render(StatusCode::SERVICE_UNAVAILABLE, LoginError::Busy);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            Err(response)
        }
        Err(e) => {
            tracing::error!("password check failed internally: {e}");
            Err(pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Your password could not be checked. Try again; if it keeps failing, tell the administrator.",
                None,
            ))
        }
    }
}

pub(super) async fn submit(app: &Arc<App>, request: Request<Incoming>, conn: &Connection) -> Response<Body> {
    if !same_origin(app, request.headers()) {
        tracing::warn!(target: "portcullis::security", peer = %conn.peer.ip(), "login refused: cross-origin post");
        return forbidden_origin();
    }
    let headers = request.headers().clone();
    let form: LoginForm = match read_form(request).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let return_to = crate::web::return_url::or_root(form.rd.as_deref(), &app.config().public_url);
    if !login_csrf_ok(app, &headers, &form.csrf) {
        return render(app, &headers, StatusCode::FORBIDDEN, Some(LoginError::Expired), &return_to, "");
    }
    let username = form.username.trim().to_ascii_lowercase();
    if username.is_empty() || form.password.is_empty() || username.len() > 64 || form.password.len() > 1024 {
        return render(app, &headers, StatusCode::BAD_REQUEST, Some(LoginError::Malformed), &return_to, &username);
    }
    let again = |status, error| render(app, &headers, status, Some(error), &return_to, &username);
    let user = match check_password(app, &headers, conn, &username, form.password, again).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    crate::base::metrics::login("ok");
    // A session the browser already had (perhaps planted by someone else) is ended, never reused.
    if let Lookup::Found(previous) = app.resolve_session(&headers)
        && let Err(e) = app.sessions.end(previous.key()).await
    {
        tracing::error!("could not end the previous session: {e}");
    }
    let device = super::device(&headers, client_ip(app, &headers, conn));
    match establish(app, &user, &headers, device).await {
        Ok((id, expires_at, next)) => {
            let stage = if next.is_some_and(|n| n.second_factor_next()) {
                "password ok, second factor next"
            } else {
                "login ok"
            };
            tracing::info!(target: "portcullis::security", user = %user.name, session = %id.key().log_ref(), client = %conn.peer.ip(), "{stage}");
            let mut response = match next {
                None => go_to(app, &return_to),
                Some(next) => send_to(app, next.destination(), &return_to),
            };
            response.headers_mut().append(header::SET_COOKIE, session_cookie_header(app, &id, expires_at));
            if !next.is_some_and(|n| n.second_factor_next()) {
                response.headers_mut().append(header::SET_COOKIE, known_browser_cookie(app, &user));
            }
            with_user(response, &user)
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

/// Where a browser goes after a right password, when not straight to where it was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Challenge,
    Enroll,
    Reminder,
    Nudge,
}

impl Next {
    fn destination(self) -> Destination {
        match self {
            Self::Challenge => Destination::Challenge,
            Self::Enroll => Destination::Enroll,
            Self::Reminder => Destination::Reminder,
            Self::Nudge => Destination::Nudge,
        }
    }

    fn second_factor_next(self) -> bool {
        matches!(self, Self::Challenge | Self::Enroll)
    }
}

/// Starts the session a right password earns: full when the policy asks for nothing more (or a
/// remembered browser stands in for the second factor), else partial, with the page to go to.
async fn establish(
    app: &App,
    user: &Arc<User>,
    headers: &HeaderMap,
    device: crate::domain::session::Device,
) -> Result<(crate::domain::session::SessionId, crate::base::clock::UnixTime, Option<Next>), SessionError> {
    let name = user.name.as_str();
    let now = app.clock.now();
    let mfa = app.config().mfa.clone();
    let requirement = policy::requirement(&mfa, user, now);
    let record = app.accounts.get(user);
    let has_factor = record.has_second_factor();
    let (id, partial) = app.sessions.begin(user.clone(), device).await?;
    let partial_ends = now + app.config().session.partial_timeout.as_secs() as i64;
    match policy::after_password(requirement, has_factor) {
        AfterPassword::Done => {
            let (id, full) = app.sessions.promote(partial, vec![AuthMethod::Pwd]).await?;
            app.accounts.record_sign_in(user, now).await;
            let nudge = policy::should_nudge(requirement, has_factor, mfa.nudge_every, &record, now);
            if nudge {
                let noted = app
                    .accounts
                    .update(user, |r| {
                        r.nudged_at = Some(now);
                        Ok::<_, std::convert::Infallible>(())
                    })
                    .await;
                if let Err(e) = noted {
                    tracing::error!("could not record a 2FA suggestion: {e}");
                }
            }
            Ok((id, full.expires_at(), nudge.then_some(Next::Nudge)))
        }
        // Signed in; a reminder page first that 2FA becomes required soon.
        AfterPassword::Remind(_) => {
            let (id, full) = app.sessions.promote(partial, vec![AuthMethod::Pwd]).await?;
            app.accounts.record_sign_in(user, now).await;
            Ok((id, full.expires_at(), Some(Next::Reminder)))
        }
        AfterPassword::Challenge => {
            if remembered(app, user, headers).await {
                let (id, full) =
                    app.sessions.promote(partial, vec![AuthMethod::Pwd, AuthMethod::RememberedBrowser]).await?;
                app.accounts.record_sign_in(user, now).await;
                tracing::info!(target: "portcullis::security", user = %name, "second factor skipped: a remembered browser");
                return Ok((id, full.expires_at(), None));
            }
            // Email first: the code is on its way by the time the challenge page shows.
            if record.primary_factor() == Some(FactorKind::Email)
                && let Err(e) = super::email::send_sign_in_code(app, user)
            {
                tracing::info!(user = %name, "no sign-in code sent at login: {e}");
            }
            Ok((id, partial_ends, Some(Next::Challenge)))
        }
        AfterPassword::Enroll => Ok((id, partial_ends, Some(Next::Enroll))),
    }
}

/// Whether this browser holds a live "remember this browser" token for the account (and the
/// operator still allows remembering); notes its use.
async fn remembered(app: &App, user: &User, headers: &HeaderMap) -> bool {
    if app.config().mfa.remember_device.is_none() {
        return false;
    }
    let now = app.clock.now();
    let cookie = app.config().session.remember_cookie();
    let Some(token) = crate::base::headers::cookie_values(headers, &cookie).find(|v| v.len() == 43) else {
        return false;
    };
    let used = app
        .accounts
        .update(user, |record| {
            let index = record.remembered_by_token(token, user, now).ok_or(())?;
            record.remembered[index].last_used_at = Some(now);
            Ok::<_, ()>(())
        })
        .await;
    matches!(used, Ok(Ok(())))
}

pub(super) async fn logout_form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    match app.session(request.headers()).await {
        Lookup::Found(session) => pages::html(
            StatusCode::OK,
            &pages::LogoutPage { username: session.user().name.as_str(), csrf: session.csrf_token() },
        ),
        _ => pages::html(StatusCode::OK, &pages::SignedOutPage),
    }
}

pub(super) fn signed_out(app: &App) -> Response<Body> {
    let mut response = pages::html(StatusCode::OK, &pages::SignedOutPage);
    clear_cookie(&mut response, app.session_cookie(), app.config().public_url.is_https());
    response
}

pub(super) async fn logout_submit(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
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
    with_user(signed_out(app), session.user())
}
