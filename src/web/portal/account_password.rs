//! Changing the password from the account page: the current one proven (regulated like a
//! sign-in), the new one meeting the rule, written to the users file. Every other session ends
//! and remembered browsers are forgotten; this session carries on under the new password.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::account::{fresh_enough, full_session};
use super::login::check_password;
use crate::domain::notify::SecurityEvent;
use crate::domain::password::{MAX_PASSWORD_BYTES, WeakPassword, check_new_password};
use crate::domain::session::{FullSession, Session};
use crate::domain::users::UsersError;
use crate::web::client_body::ClientBody;
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::forms::{SessionForm, session_post, zeroizing};
use crate::web::pages::{self, Body, LoginError, NewPasswordError, PasswordPage};
use crate::web::respond::{Answer, go_to, login_redirect, send_to, with_user};
use crate::web::route::{AccountAction, Destination, done};
use crate::web::state::{App, Connection};

fn render(
    full: &FullSession,
    status: StatusCode,
    error: Option<LoginError>,
    new_error: Option<NewPasswordError>,
) -> Response<Body> {
    let page = PasswordPage { username: full.user().name.as_str(), csrf: full.csrf_token(), error, new_error };
    with_user(pages::html(status, &page), full.user())
}

/// The form (after a fresh second factor, if the account has one).
pub(super) async fn form(app: &App, request: &Request<ClientBody>) -> Answer {
    let path = AccountAction::ChangePassword.path();
    match full_session(app, request.headers(), &path).await.and_then(|full| fresh_enough(app, full, &path)) {
        Ok(full) if app.users.is_from_directory(full.user()) => Err(WebError::PasswordInDirectory),
        Ok(full) => Ok(render(&full, StatusCode::OK, None, None)),
        Err(elsewhere) => Ok(*elsewhere),
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default, deserialize_with = "zeroizing")]
    current: Zeroizing<String>,
    #[serde(default, deserialize_with = "zeroizing")]
    new: Zeroizing<String>,
    #[serde(default, deserialize_with = "zeroizing")]
    confirm: Zeroizing<String>,
}

impl SessionForm for PasswordForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn submit(app: &Arc<App>, request: Request<ClientBody>, conn: &Connection) -> Answer {
    let path = AccountAction::ChangePassword.path();
    let headers = request.headers().clone();
    let posted = session_post::<PasswordForm>(app, request).await?;
    let form = posted.form;
    let full = match posted.session {
        None => return Ok(login_redirect(app, &path)),
        Some(Session::Partial(_)) => return Ok(send_to(app, Destination::Challenge, &path)),
        Some(Session::Full(full)) => full,
    };
    let full = match fresh_enough(app, full, &path) {
        Ok(full) if app.users.is_from_directory(full.user()) => return Err(WebError::PasswordInDirectory),
        Ok(full) => full,
        Err(elsewhere) => return Ok(*elsewhere),
    };
    let name = full.user().name.to_string();
    let fix = |problem| Ok(render(&full, StatusCode::BAD_REQUEST, None, Some(problem)));
    if *form.new != *form.confirm {
        return fix(NewPasswordError::Mismatch);
    }
    match check_new_password(&form.new) {
        Err(WeakPassword::TooShort) => return fix(NewPasswordError::TooShort),
        Err(WeakPassword::TooLong) => return fix(NewPasswordError::TooLong),
        Ok(()) => {}
    }
    if *form.new == *form.current {
        return fix(NewPasswordError::SameAsOld);
    }
    if form.current.is_empty() || form.current.len() > MAX_PASSWORD_BYTES {
        return Ok(render(&full, StatusCode::BAD_REQUEST, Some(LoginError::Malformed), None));
    }
    let again = |status, error| render(&full, status, Some(error), None);
    if let Err(answer) = check_password(app, &headers, conn, &name, form.current, again).await {
        return answer;
    }
    let hash =
        app.sign_in.passwords.hash(form.new).await.map_err(|e| WebError::Unavailable(format!("hashing: {e}")))?;
    let users_file = app.config().users_file.clone();
    let user_name = name.clone();
    let written = tokio::task::spawn_blocking(move || {
        crate::domain::users::edit::set_password_hash(&users_file, &user_name, &hash)?;
        Ok::<_, UsersError>(())
    })
    .await
    .map_err(|e| WebError::Internal(format!("password change task failed: {e}")))?;
    if let Err(e) = written {
        tracing::error!(user = %name, "could not write a new password to the users file: {e}");
        return Ok(render(&full, StatusCode::SERVICE_UNAVAILABLE, None, Some(NewPasswordError::CannotSave)));
    }
    if let Err(e) = app.users.reload() {
        tracing::error!("the users file was written but could not be reloaded: {e}");
    }
    let user = app.users.get(&name).ok_or_else(|| WebError::Unavailable(format!("{name} left the users file")))?;
    tracing::warn!(target: "portcullis::security", user = %name, "password changed by its owner");
    if let Err(e) = app.factors.forget_browsers(&user, None).await {
        tracing::error!("could not forget remembered browsers: {e}");
    }
    app.notifier.send(&user, SecurityEvent::PasswordChanged, app.clock.now(), true);
    let this = full.key().clone();
    let (id, full) = match app.sessions.renew_credentials(full, user.clone()).await {
        Ok(renewed) => renewed,
        Err(e) => {
            tracing::error!("could not keep the session after a password change: {e}");
            let mut response = go_to(app, Destination::Login.path());
            cookies::clear_session(&mut response, app);
            return Ok(response);
        }
    };
    app.pending.rekey(&this, full.key()).await?;
    // The others were made under the old password and would end at their next request anyway;
    // ending them now also takes them off the list.
    if let Err(e) = app.sessions.end_all_but(&name, full.key()).await {
        tracing::error!("could not end the other sessions: {e}");
    }
    let mut response = go_to(app, &done(Destination::Account, "password"));
    cookies::set_session(&mut response, app, &id, full.expires_at());
    Ok(with_user(response, &user))
}
