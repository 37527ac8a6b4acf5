//! Admin-assisted recovery (seed 003): a user who lost every second factor gets a one-time link
//! from an administrator (`portcullis admin recovery-link`). The link names the account; with it
//! and their password, the old factors are voided, every existing session ends, and the user sets
//! up a new authenticator in a half-logged-in session, landing signed in afterwards.
//!
//! The link alone proves nothing: the password is still required, and regulated exactly like a
//! sign-in. The token is stored only as a hash, works once, and expires.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::login::{check_password, login_csrf, login_csrf_cookie, login_csrf_ok, zeroizing};
use super::{forbidden_origin, read_form, same_origin, send_to, session_cookie_header, unavailable, with_user};
use crate::base::text::format_utc;
use crate::domain::regulation::Subject;
use crate::domain::users::User;
use crate::web::app::{App, Connection};
use crate::web::pages::{self, Body, LoginError, RecoverPage};
use crate::web::route::Destination;

/// The account a token belongs to, if the link is live.
fn holder(app: &App, token: &str) -> Option<(Arc<User>, crate::base::clock::UnixTime)> {
    if token.len() != 43 {
        return None;
    }
    let now = app.clock.now();
    app.users.all().into_iter().find_map(|user| {
        let record = app.accounts.get(&user);
        let link = record.recovery_link.as_ref().filter(|link| link.admits(token, now))?;
        let expires_at = link.expires_at;
        Some((user, expires_at))
    })
}

fn dead_link() -> Response<Body> {
    pages::error(
        StatusCode::GONE,
        "This recovery link does not work",
        "It may have expired, been used already, or been replaced by a newer one. Ask your administrator for a new link.",
        Some(("/.portcullis/login", "Go to sign in")),
    )
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

fn render(
    app: &App,
    headers: &HeaderMap,
    status: StatusCode,
    user: &User,
    expires_at: crate::base::clock::UnixTime,
    token: &str,
    error: Option<LoginError>,
) -> Response<Body> {
    let (csrf, fresh) = login_csrf(app, headers);
    let expires = format_utc(expires_at);
    let page = RecoverPage { username: user.name.as_str(), expires: &expires, token, csrf: &csrf, error };
    let mut response = pages::html(status, &page);
    if fresh {
        response.headers_mut().append(header::SET_COOKIE, login_csrf_cookie(app, &csrf));
    }
    response
}

pub(super) fn form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let token = serde_urlencoded::from_str::<TokenQuery>(request.uri().query().unwrap_or("")).map(|q| q.token);
    match token.ok().and_then(|token| holder(app, &token).map(|h| (token, h))) {
        Some((token, (user, expires_at))) => {
            render(app, request.headers(), StatusCode::OK, &user, expires_at, &token, None)
        }
        None => dead_link(),
    }
}

#[derive(Deserialize)]
struct RecoverForm {
    #[serde(default)]
    token: String,
    #[serde(default, deserialize_with = "zeroizing")]
    password: Zeroizing<String>,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn submit(app: &Arc<App>, request: Request<Incoming>, conn: &Connection) -> Response<Body> {
    if !same_origin(app, request.headers()) {
        return forbidden_origin();
    }
    let headers = request.headers().clone();
    let form: RecoverForm = match read_form(request).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let Some((user, expires_at)) = holder(app, &form.token) else { return dead_link() };
    let again = |status, error| render(app, &headers, status, &user, expires_at, &form.token, Some(error));
    if !login_csrf_ok(app, &headers, &form.csrf) {
        return again(StatusCode::FORBIDDEN, LoginError::Expired);
    }
    if form.password.is_empty() || form.password.len() > 1024 {
        return again(StatusCode::BAD_REQUEST, LoginError::Malformed);
    }
    let name = user.name.to_string();
    if let Err(response) = check_password(app, &headers, conn, &name, form.password, again).await {
        tracing::warn!(target: "portcullis::security", user = %name, "recovery link: password refused");
        return response;
    }

    // Spend the link and void the old factors in one step, re-checking the link under the
    // account's write lock so two submissions cannot both use it.
    let now = app.clock.now();
    let spent = app
        .accounts
        .update(&user, |record| {
            let link = record.recovery_link.take().filter(|link| link.admits(&form.token, now)).ok_or(())?;
            *record = crate::domain::factors::AccountRecord { last_sign_in: record.last_sign_in, ..Default::default() };
            Ok(link)
        })
        .await;
    let link = match spent {
        Ok(Ok(link)) => link,
        Ok(Err(())) => return dead_link(),
        Err(e) => {
            tracing::error!("could not use a recovery link: {e}");
            return unavailable();
        }
    };
    tracing::warn!(target: "portcullis::security", user = %name, issued_by = %link.issued_by, client = %conn.peer.ip(), "recovered with an admin link: old factors voided");
    app.notifier.send(&user, crate::domain::notify::SecurityEvent::RecoveredWithLink, now, true);
    if let Err(e) = app.regulator.clear(&Subject::Account(name.clone()).store_key()).await {
        tracing::error!("could not clear regulation after a recovery: {e}");
    }
    // Whoever holds the lost phone may hold a session too.
    if let Err(e) = app.sessions.end_all_for(&name).await {
        tracing::error!("could not end old sessions after a recovery: {e}");
    }
    let device = super::device(&headers, super::client_ip(app, &headers, conn));
    match app.sessions.begin(user.clone(), device).await {
        Ok((id, _partial)) => {
            let expires = app.clock.now() + app.config().session.partial_timeout.as_secs() as i64;
            let mut response = send_to(app, Destination::Enroll, "/");
            response.headers_mut().append(header::SET_COOKIE, session_cookie_header(app, &id, expires));
            with_user(response, &user)
        }
        Err(e) => {
            tracing::error!("could not start a session after a recovery: {e}");
            pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Almost there",
                "Your old factors were removed, but a session could not be started. Sign in with your password to set up a new authenticator.",
                Some(("/.portcullis/login", "Go to sign in")),
            )
        }
    }
}
