//! Signing in with the password (the first factor), and signing out.
//!
//! The login form is protected against login CSRF by a token in its own cookie (there is no
//! session yet to bind it to) plus the same-origin check. The password itself is checked in the
//! domain (`domain/sign_in.rs`), the same way for every form that asks for one.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::login_page::{end_previous, render};
use super::second_step::{Enough, complete_sign_in, send_sign_in_code};
use crate::base::headers::cookie_values;
use crate::domain::factors::FactorKind;
use crate::domain::first_factor::FirstFactorProof;
use crate::domain::password::{MAX_PASSWORD_BYTES, PasswordProof};
use crate::domain::policy::{self, AfterPassword};
use crate::domain::session::{Lookup, Rejected, Session};
use crate::domain::sign_in::PasswordRefused;
use crate::domain::users::User;
use crate::web::client_body::ClientBody;
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::forms::{LoginCsrf, RdCsrfForm, read_form, return_to_from_query, same_origin, session_post, zeroizing};
use crate::web::pages::{self, Body, LoginError};
use crate::web::respond::{Answer, client_ip, device, go_to, retry_after, seconds_until, send_to, with_user};
use crate::web::route::Destination;
use crate::web::state::{App, Connection};

/// Longest user name accepted (the users file allows no longer).
const MAX_USERNAME_BYTES: usize = 64;

pub(super) async fn form(app: &App, request: &Request<ClientBody>, conn: &Connection) -> Answer {
    let return_to = return_to_from_query(app, request);
    let client = client_ip(app, request.headers(), conn);
    match app.session(request.headers()).await {
        Lookup::Found(Session::Full(_)) => Ok(go_to(app, &return_to)),
        // Someone else's session next to this browser's own: sign in afresh, with neither.
        Lookup::Rejected(Rejected::Ambiguous) => {
            let mut response = render(app, (request.headers(), client), StatusCode::OK, None, &return_to, "");
            cookies::clear_session_everywhere(&mut response, app, request.uri().path());
            Ok(response)
        }
        _ => Ok(render(app, (request.headers(), client), StatusCode::OK, None, &return_to, "")),
    }
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

/// Checks a password from one of the password forms; on refusal, that form again (via `render`)
/// saying why, with the status and `Retry-After` that fit.
pub(super) async fn check_password(
    app: &App,
    headers: &HeaderMap,
    conn: &Connection,
    username: &str,
    password: Zeroizing<String>,
    render: impl FnOnce(StatusCode, LoginError) -> Response<Body>,
) -> Result<PasswordProof, Answer> {
    let known_browser_cookie = app.config().session.known_browser_cookie();
    let browser_cookies = cookie_values(headers, &known_browser_cookie);
    let client = client_ip(app, headers, conn);
    let config = app.config();
    let ldap = config.login.ldap.as_deref();
    match app.sign_in.check_password(username, password, client, (browser_cookies, ldap)).await {
        Ok(proof) => Ok(proof),
        Err(PasswordRefused::Wrong) => Err(Ok(render(StatusCode::UNAUTHORIZED, LoginError::BadCredentials))),
        Err(PasswordRefused::Paused { until, who }) => {
            let seconds = seconds_until(app, until);
            let minutes = crate::base::text::whole_minutes(seconds);
            let mut response = render(StatusCode::TOO_MANY_REQUESTS, LoginError::Paused { minutes, who });
            retry_after(&mut response, seconds);
            Err(Ok(response))
        }
        Err(PasswordRefused::Crowded) => {
            let mut response = render(StatusCode::TOO_MANY_REQUESTS, LoginError::Crowded);
            retry_after(&mut response, 5);
            Err(Ok(response))
        }
        Err(PasswordRefused::Busy) => {
            let mut response = render(StatusCode::SERVICE_UNAVAILABLE, LoginError::Busy);
            retry_after(&mut response, 2);
            Err(Ok(response))
        }
        Err(PasswordRefused::DirectoryUnavailable) => {
            let mut response = render(StatusCode::SERVICE_UNAVAILABLE, LoginError::DirectoryUnavailable);
            retry_after(&mut response, 30);
            Err(Ok(response))
        }
        Err(PasswordRefused::Internal(e)) => Err(Err(WebError::Internal(e))),
    }
}

pub(super) async fn submit(app: &Arc<App>, request: Request<ClientBody>, conn: &Connection) -> Answer {
    if !same_origin(app, request.headers()) {
        tracing::warn!(target: "portcullis::security", peer = %conn.peer.ip(), "login refused: cross-origin post");
        return Err(WebError::CrossOrigin);
    }
    let headers = request.headers().clone();
    let client = client_ip(app, &headers, conn);
    let form: LoginForm = read_form(request).await?;
    let return_to = crate::web::return_url::or_root(form.rd.as_deref(), &app.config().public_url);
    if !LoginCsrf::admits(app, &headers, &form.csrf) {
        return Ok(render(app, (&headers, client), StatusCode::FORBIDDEN, Some(LoginError::Expired), &return_to, ""));
    }
    let username = form.username.trim().to_ascii_lowercase();
    if username.is_empty()
        || form.password.is_empty()
        || username.len() > MAX_USERNAME_BYTES
        || form.password.len() > MAX_PASSWORD_BYTES
    {
        return Ok(render(
            app,
            (&headers, client),
            StatusCode::BAD_REQUEST,
            Some(LoginError::Malformed),
            &return_to,
            &username,
        ));
    }
    let again = |status, error| render(app, (&headers, client), status, Some(error), &return_to, &username);
    let proof = match check_password(app, &headers, conn, &username, form.password, again).await {
        Ok(proof) => proof,
        Err(answer) => return answer,
    };
    crate::base::metrics::login("ok");
    let previous = end_previous(app, &headers).await;
    let device = device(&headers, client_ip(app, &headers, conn));
    let response = after_first_factor(app, proof.into(), &headers, device, &return_to).await?;
    Ok(previous.clear_from(app, response))
}

/// Starts the session a first factor earns (a right password, a sign-in link): full when the
/// policy asks for nothing more (or a remembered browser stands in for the second factor), else
/// partial, and sends the browser on. The same for every way in: 2FA belongs to the account.
pub(super) async fn after_first_factor(
    app: &App,
    proof: FirstFactorProof,
    headers: &HeaderMap,
    device: crate::domain::session::Device,
    return_to: &str,
) -> Answer {
    let (user, first_factor): (Arc<User>, _) = (proof.user().clone(), proof.method());
    let now = app.clock.now();
    let mfa = app.config().mfa.clone();
    let requirement = app.requirement(&user);
    let record = app.account(&user);
    let has_factor = app.has_factor(&user);
    let (id, partial) =
        app.sessions.begin(proof, device).await.map_err(|e| WebError::SignInUnavailable(e.to_string()))?;
    let log = |stage: &str| {
        tracing::info!(target: "portcullis::security", user = %user.name, session = %id.key().log_ref(), "{stage}");
    };
    match policy::after_password(requirement, has_factor) {
        AfterPassword::Done(enough) => {
            log("login ok");
            let nudge = policy::should_nudge(requirement, has_factor, mfa.nudge_every, &record, now);
            let then = if nudge {
                if let Err(e) = app.factors.accounts.note_nudge(&user, now).await {
                    tracing::error!("could not record a 2FA suggestion: {e}");
                }
                send_to(app, Destination::Nudge, return_to)
            } else {
                go_to(app, return_to)
            };
            Ok(complete_sign_in(app, partial, Enough::Password(enough), then).await?.0)
        }
        // Signed in; a reminder page first that 2FA becomes required soon.
        AfterPassword::Remind(_, enough) => {
            log("login ok");
            let then = send_to(app, Destination::Reminder, return_to);
            Ok(complete_sign_in(app, partial, Enough::Password(enough), then).await?.0)
        }
        AfterPassword::Challenge => {
            if let Some(proof) = remembered(app, &user, headers).await {
                log("login ok");
                tracing::info!(target: "portcullis::security", user = %user.name, "second factor skipped: a remembered browser");
                let then = go_to(app, return_to);
                return Ok(complete_sign_in(app, partial, Enough::SecondFactor(proof), then).await?.0);
            }
            log("password ok, second factor next");
            // Email first: the code is on its way by the time the challenge page shows (not after
            // a sign-in link, which proved that mailbox already).
            if record.primary_factor() == Some(FactorKind::Email)
                && first_factor.allows_email_codes_after()
                && let Err(e) = send_sign_in_code(app, &user).await
            {
                tracing::info!(user = %user.name, "no sign-in code sent at login: {e}");
            }
            Ok(with_partial_cookie(app, send_to(app, Destination::Challenge, return_to), &id, &user))
        }
        AfterPassword::Enroll => {
            log("password ok, second factor next");
            Ok(with_partial_cookie(app, send_to(app, Destination::Enroll, return_to), &id, &user))
        }
    }
}

/// The cookie of a half-logged-in session: it lives `session.partial_timeout`.
fn with_partial_cookie(
    app: &App,
    mut response: Response<Body>,
    id: &crate::domain::session::SessionId,
    user: &User,
) -> Response<Body> {
    let ends = app.clock.now() + app.config().session.partial_timeout.as_secs() as i64;
    cookies::set_session(&mut response, app, id, ends);
    with_user(response, user)
}

/// The proof a remembered browser gives, if this browser holds a live "remember this browser"
/// token for the account and the operator still allows remembering.
async fn remembered(
    app: &App,
    user: &User,
    headers: &HeaderMap,
) -> Option<crate::domain::factors::proof::SecondFactorProof> {
    app.config().mfa.remember_device?;
    let cookie = app.config().session.remember_cookie();
    let token = cookie_values(headers, &cookie).find(|v| v.len() == 43)?;
    app.factors.use_remembered(user, token, app.clock.now()).await
}

pub(super) async fn logout_form(app: &App, request: &Request<ClientBody>) -> Answer {
    Ok(match app.session(request.headers()).await {
        Lookup::Found(session) => pages::html(
            StatusCode::OK,
            &pages::LogoutPage { username: session.user().name.as_str(), csrf: session.csrf_token() },
        ),
        _ => pages::html(StatusCode::OK, &pages::SignedOutPage),
    })
}

/// "You are signed out", dropping the session cookie.
pub(super) fn signed_out(app: &App) -> Response<Body> {
    let mut response = pages::html(StatusCode::OK, &pages::SignedOutPage);
    cookies::clear_session(&mut response, app);
    response
}

pub(super) async fn logout_submit(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<RdCsrfForm>(app, request).await?;
    // Signing out without a session is already done: say so, and drop any stale cookie.
    let Some(session) = posted.session else { return Ok(signed_out(app)) };
    // Signing out here signs out of every host this session was handed to.
    app.sessions.end_family(session.key()).await.map_err(|e| WebError::SignOutFailed(e.to_string()))?;
    tracing::info!(target: "portcullis::security", user = %session.user().name, session = %session.key().log_ref(), "logout");
    Ok(with_user(signed_out(app), session.user()))
}
