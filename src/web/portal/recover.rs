//! Recovery with an administrator's help: a user who lost every second factor gets a one-time
//! link (`portcullis admin recovery-link`). The link names the account; with it and their
//! password, the old factors are voided, every existing session ends, and the user sets up a new
//! authenticator in a half-logged-in session, landing signed in afterwards.
//!
//! The link alone proves nothing: the password is still required, and regulated exactly like a
//! sign-in. The token is stored only as a hash, works once, and expires.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::login::check_password;
use crate::base::clock::UnixTime;
use crate::base::text::format_utc;
use crate::domain::password::MAX_PASSWORD_BYTES;
use crate::domain::regulation::Subject;
use crate::domain::users::User;
use crate::web::client_body::ClientBody;
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::forms::{LoginCsrf, read_form, same_origin, zeroizing};
use crate::web::pages::{self, Body, LoginError, RecoverPage};
use crate::web::respond::{Answer, client_ip, device, send_to, with_user};
use crate::web::route::Destination;
use crate::web::state::{App, Connection};

/// Length of a link's token (32 random bytes, base64url).
const TOKEN_LENGTH: usize = 43;

/// The account a token belongs to, and when its link expires, if the link is live.
fn holder(app: &App, token: &str) -> Option<(Arc<User>, UnixTime)> {
    if token.len() != TOKEN_LENGTH {
        return None;
    }
    let now = app.clock.now();
    app.users.all().into_iter().find_map(|user| {
        let record = app.account(&user);
        let link = record.recovery_link.as_ref().filter(|link| link.admits(token, now))?;
        let expires_at = link.expires_at;
        Some((user, expires_at))
    })
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
    expires_at: UnixTime,
    token: &str,
    error: Option<LoginError>,
) -> Response<Body> {
    let csrf = LoginCsrf::of(app, headers);
    let expires = format_utc(expires_at);
    let page = RecoverPage { username: user.name.as_str(), expires: &expires, token, csrf: &csrf.token, error };
    let mut response = pages::html(status, &page);
    csrf.set_cookie(app, &mut response);
    response
}

pub(super) fn form(app: &App, request: &Request<ClientBody>) -> Answer {
    let token = serde_urlencoded::from_str::<TokenQuery>(request.uri().query().unwrap_or("")).map(|q| q.token);
    match token.ok().and_then(|token| holder(app, &token).map(|h| (token, h))) {
        Some((token, (user, expires_at))) => {
            Ok(render(app, request.headers(), StatusCode::OK, &user, expires_at, &token, None))
        }
        None => Err(WebError::DeadRecoveryLink),
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

pub(super) async fn submit(app: &Arc<App>, request: Request<ClientBody>, conn: &Connection) -> Answer {
    if !same_origin(app, request.headers()) {
        return Err(WebError::CrossOrigin);
    }
    let headers = request.headers().clone();
    let form: RecoverForm = read_form(request).await?;
    let Some((user, expires_at)) = holder(app, &form.token) else { return Err(WebError::DeadRecoveryLink) };
    let again = |status, error| render(app, &headers, status, &user, expires_at, &form.token, Some(error));
    if !LoginCsrf::admits(app, &headers, &form.csrf) {
        return Ok(again(StatusCode::FORBIDDEN, LoginError::Expired));
    }
    if form.password.is_empty() || form.password.len() > MAX_PASSWORD_BYTES {
        return Ok(again(StatusCode::BAD_REQUEST, LoginError::Malformed));
    }
    let name = user.name.to_string();
    let proof = match check_password(app, &headers, conn, &name, form.password, again).await {
        Ok(proof) => proof,
        Err(answer) => {
            tracing::warn!(target: "portcullis::security", user = %name, "recovery link: password refused");
            return answer;
        }
    };

    // Spend the link and void the old factors in one step, re-checking the link under the
    // account's write lock so two submissions cannot both use it.
    let link = app.factors.spend_recovery_link(&user, &form.token, app.clock.now()).await?;
    tracing::warn!(target: "portcullis::security", user = %name, issued_by = %link.issued_by, client = %conn.peer.ip(), "recovered with an admin link: old factors voided");
    app.notifier.send(&user, crate::domain::notify::SecurityEvent::RecoveredWithLink, app.clock.now(), true);
    if let Err(e) = app.regulator.clear(&Subject::Account(name.clone()).store_key()).await {
        tracing::error!("could not clear regulation after a recovery: {e}");
    }
    // Whoever holds the lost phone may hold a session too.
    if let Err(e) = app.sessions.end_all_for(&name).await {
        tracing::error!("could not end old sessions after a recovery: {e}");
    }
    let device = device(&headers, client_ip(app, &headers, conn));
    let (id, _partial) =
        app.sessions.begin(proof, device).await.map_err(|e| WebError::RecoveredWithoutSession(e.to_string()))?;
    let expires = app.clock.now() + app.config().session.partial_timeout.as_secs() as i64;
    let mut response = send_to(app, Destination::Enroll, "/");
    cookies::set_session(&mut response, app, &id, expires);
    Ok(with_user(response, &user))
}
