//! The cookies the proxy sets: the session, the login form's CSRF token, the known-browser mark
//! and the remembered-browser token. All `HttpOnly`, `Path=/`, and `Secure` when the public URL
//! is https.

use cookie::{Cookie, SameSite};
use http::{HeaderValue, Response, header};

use crate::base::clock::UnixTime;
use crate::domain::known_browser::LIFETIME_SECONDS;
use crate::domain::session::SessionId;
use crate::domain::users::User;
use crate::web::pages::Body;
use crate::web::state::App;

/// A `Set-Cookie` value. `max_age: None` makes a cookie that ends with the browser session.
pub fn cookie_header(
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

/// The session cookie for `id`, living until the session's absolute end. `Lax`, so a link from
/// elsewhere into the application arrives signed in; every state change is a POST that also
/// needs the CSRF token and our `Origin`.
pub fn session(app: &App, id: &SessionId, expires_at: UnixTime) -> HeaderValue {
    let max_age = time::Duration::seconds((expires_at - app.clock.now()).max(0));
    cookie_header(app, app.session_cookie(), &id.cookie_value(), Some(max_age), SameSite::Lax)
}

/// Adds the session cookie for `id` to `response`.
pub fn set_session(response: &mut Response<Body>, app: &App, id: &SessionId, expires_at: UnixTime) {
    response.headers_mut().append(header::SET_COOKIE, session(app, id, expires_at));
}

/// Tells the browser to drop the session cookie (a refused or ended session).
pub fn clear_session(response: &mut Response<Body>, app: &App) {
    let cookie = Cookie::build((app.session_cookie().to_string(), String::new()))
        .path("/")
        .http_only(true)
        .secure(app.config().public_url.is_https())
        .same_site(SameSite::Lax)
        .max_age(time::Duration::ZERO)
        .build();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The known-browser cookie for a browser whose session just became full (see
/// `known_browser.rs`): only then, so a password alone never earns one where a second factor is
/// needed.
pub fn set_known_browser(response: &mut Response<Body>, app: &App, user: &User) {
    let value = app.sign_in.known_browsers.issue(user, app.clock.now());
    let max_age = Some(time::Duration::seconds(LIFETIME_SECONDS));
    let cookie = cookie_header(app, &app.config().session.known_browser_cookie(), &value, max_age, SameSite::Strict);
    response.headers_mut().append(header::SET_COOKIE, cookie);
}

/// The "remember this browser" token, for `lifetime` seconds.
pub fn set_remembered(response: &mut Response<Body>, app: &App, token: &str, lifetime: i64) {
    let max_age = Some(time::Duration::seconds(lifetime));
    let cookie = cookie_header(app, &app.config().session.remember_cookie(), token, max_age, SameSite::Strict);
    response.headers_mut().append(header::SET_COOKIE, cookie);
}
