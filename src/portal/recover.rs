//! Admin-assisted recovery (seed 003): a user who lost every second factor gets a one-time link
//! from an administrator (`portcullis admin recovery-link`). The link names the account; with it
//! and their password, the old factors are voided, every existing session ends, and the user sets
//! up a new authenticator in a half-logged-in session, landing signed in afterwards.
//!
//! The link alone proves nothing: the password is still required, and regulated exactly like a
//! sign-in. The token is stored only as a hash, works once, and expires.

use std::sync::Arc;

use cookie::SameSite;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    cookie_header, forbidden_origin, format_time, login_csrf, login_csrf_ok, password_failed, read_form, regulated,
    same_origin, session_cookie_header,
};
use crate::app::{App, Connection, RequestUser};
use crate::pages::{self, Body, LoginError, RecoverPage};
use crate::password::HashError;
use crate::regulation::Subject;
use crate::users::User;

/// The account a token belongs to, if the link is live.
fn holder(app: &App, token: &str) -> Option<(Arc<User>, crate::clock::UnixTime)> {
    if token.len() != 43 {
        return None;
    }
    let now = app.clock.now();
    app.accounts.all().into_iter().find_map(|(name, record)| {
        let link = record.recovery_link.as_ref().filter(|link| link.admits(token, now))?;
        Some((app.users.get(&name)?, link.expires_at))
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
    expires_at: crate::clock::UnixTime,
    token: &str,
    error: Option<LoginError>,
) -> Response<Body> {
    let (csrf, fresh) = login_csrf(app, headers);
    let expires = format_time(expires_at);
    let page = RecoverPage { username: user.name.as_str(), expires: &expires, token, csrf: &csrf, error };
    let mut response = pages::html(status, &page);
    if fresh {
        let cookie = cookie_header(app, &app.login_csrf_cookie(), &csrf, None, SameSite::Strict);
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

pub fn form(app: &App, request: &Request<Incoming>) -> Response<Body> {
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
    #[serde(default, deserialize_with = "super::zeroizing")]
    password: Zeroizing<String>,
    #[serde(default)]
    csrf: String,
}

pub async fn submit(app: &Arc<App>, request: Request<Incoming>, conn: &Connection) -> Response<Body> {
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
    let client_ip = crate::headers::client_ip(&headers, conn.peer.ip(), &app.config().trusted_proxies);
    let subjects = [Subject::Account(name.clone()), Subject::Address(client_ip)];
    if let Some(response) = regulated(app, &subjects, again) {
        return response;
    }
    match app.passwords.verify(form.password, Some(user.password_hash.as_str())).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(target: "portcullis::security", user = %name, client = %client_ip, "recovery link: wrong password");
            password_failed(app, &subjects, &name, client_ip).await;
            return again(StatusCode::UNAUTHORIZED, LoginError::BadCredentials);
        }
        Err(HashError::Busy) => {
            let mut response = again(StatusCode::SERVICE_UNAVAILABLE, LoginError::Busy);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return response;
        }
        Err(e) => {
            tracing::error!("recovery failed internally: {e}");
            return pages::error(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "Try again.", None);
        }
    }

    // Spend the link and void the old factors in one step, re-checking the link under the
    // account's write lock so two submissions cannot both use it.
    let now = app.clock.now();
    let spent = app
        .accounts
        .update(&name, |record| {
            let link = record.recovery_link.take().filter(|link| link.admits(&form.token, now)).ok_or(())?;
            *record = crate::factors::AccountRecord { last_sign_in: record.last_sign_in, ..Default::default() };
            Ok(link)
        })
        .await;
    let link = match spent {
        Ok(Ok(link)) => link,
        Ok(Err(())) => return dead_link(),
        Err(e) => {
            tracing::error!("could not use a recovery link: {e}");
            return pages::error(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", "Try again.", None);
        }
    };
    tracing::warn!(target: "portcullis::security", user = %name, issued_by = %link.issued_by, client = %client_ip, "recovered with an admin link: old factors voided");
    app.notifier.send(&user, crate::notify::SecurityEvent::RecoveredWithLink, now, true);
    let cleared = async {
        app.regulator.succeeded(&name, true).await?;
        app.regulator.clear(&Subject::Account(name.clone()).store_key()).await.map(|_| ())
    };
    if let Err(e) = cleared.await {
        tracing::error!("could not clear regulation after a recovery: {e}");
    }
    // Whoever holds the lost phone may hold a session too.
    if let Err(e) = app.sessions.end_all_for(&name).await {
        tracing::error!("could not end old sessions after a recovery: {e}");
    }
    match app.sessions.begin(user.clone()).await {
        Ok((id, _partial)) => {
            let expires = app.clock.now() + app.config().session.partial_timeout.as_secs() as i64;
            let mut response = super::page_with_rd(app, "enroll", "/");
            response.headers_mut().append(header::SET_COOKIE, session_cookie_header(app, &id, expires));
            response.extensions_mut().insert(RequestUser(Some(name)));
            response
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
