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

/// Deletes every copy of the session cookie a browser may hold for this request: when two
/// sessions of different users arrive together, one was tossed in by someone else (from a sibling
/// or child host, with `Domain=` and maybe a narrower `Path=`). Deleting only our own host-only
/// cookie would leave the planted one as the only session, and the next request would be the
/// attacker's. A deletion must name the cookie's domain and path exactly, and the browser does not
/// say which it has, so this names each candidate: host-only and every parent domain of the
/// public host (two labels or more), at `/` and every prefix of the request's path (up to four
/// segments). The person signs in again; nobody else's session survives in their browser.
/// (With an https public URL the cookie is `__Host-` prefixed, which no other host can set.)
pub fn clear_session_everywhere(response: &mut Response<Body>, app: &App, request_path: &str) {
    const MAX_SEGMENTS: usize = 4;
    let config = app.config();
    let mut domains: Vec<Option<String>> = vec![None];
    if let Some(host) = config.public_url.domain() {
        let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
        for start in 0..labels.len().saturating_sub(1) {
            domains.push(Some(labels[start..].join(".")));
        }
    }
    let mut paths = vec!["/".to_string()];
    let mut prefix = String::new();
    for segment in request_path.split('/').filter(|s| !s.is_empty()).take(MAX_SEGMENTS) {
        prefix.push('/');
        prefix.push_str(segment);
        paths.push(prefix.clone());
        paths.push(format!("{prefix}/"));
    }
    // Before any cookie the response sets already (a new session at sign-in), which must win.
    let already: Vec<HeaderValue> = response.headers().get_all(header::SET_COOKIE).iter().cloned().collect();
    response.headers_mut().remove(header::SET_COOKIE);
    for domain in &domains {
        for path in &paths {
            let mut cookie = Cookie::build((app.session_cookie().to_string(), String::new()))
                .path(path.clone())
                .http_only(true)
                .secure(config.public_url.is_https())
                .max_age(time::Duration::ZERO)
                .build();
            if let Some(domain) = domain {
                cookie.set_domain(domain.clone());
            }
            if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
    }
    for value in already {
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

/// How long a browser has to come back from the main host with a handoff code.
const HANDOFF_STATE_SECONDS: i64 = 600;

/// The state tying a handoff to this browser, on the other host (host-only; `__Host-` on https,
/// so no sibling host can plant one).
pub fn set_handoff_state(response: &mut Response<Body>, app: &App, state: &str) {
    let name = app.config().session.handoff_cookie();
    let cookie = cookie_header(app, &name, state, Some(time::Duration::seconds(HANDOFF_STATE_SECONDS)), SameSite::Lax);
    response.headers_mut().append(header::SET_COOKIE, cookie);
}

/// Drops the handoff state once it was used.
pub fn clear_handoff_state(response: &mut Response<Body>, app: &App) {
    let name = app.config().session.handoff_cookie();
    let cookie = cookie_header(app, &name, "", Some(time::Duration::ZERO), SameSite::Lax);
    response.headers_mut().append(header::SET_COOKIE, cookie);
}

/// The "remember this browser" token, for `lifetime` seconds.
pub fn set_remembered(response: &mut Response<Body>, app: &App, token: &str, lifetime: i64) {
    let max_age = Some(time::Duration::seconds(lifetime));
    let cookie = cookie_header(app, &app.config().session.remember_cookie(), token, max_age, SameSite::Strict);
    response.headers_mut().append(header::SET_COOKIE, cookie);
}
