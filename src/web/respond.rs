//! Small answers every handler gives: redirects to our pages, the access log's user, and facts
//! about the client.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Response, header};

use crate::base::clock::UnixTime;
use crate::base::forwarding;
use crate::domain::session::Device;
use crate::domain::users::User;
use crate::web::error::WebError;
use crate::web::pages::{self, Body};
use crate::web::route::Destination;
use crate::web::state::{App, Connection, RequestUser};

/// What a handler answers: a page, or an error that becomes one in [`WebError::into_response`].
pub type Answer = Result<Response<Body>, WebError>;

/// A 303 to one of our pages, carrying where to go afterwards.
pub fn send_to(app: &App, page: Destination, return_to: &str) -> Response<Body> {
    go_to(app, &page.with_return(return_to, &[]))
}

/// A 303 to a path on our public origin.
pub fn go_to(app: &App, path: &str) -> Response<Body> {
    pages::see_other(&app.config().public_url.join_path(path))
}

/// Sign in first, then carry on to `return_to`.
pub fn login_redirect(app: &App, return_to: &str) -> Response<Body> {
    send_to(app, Destination::Login, return_to)
}

/// Marks the response with the user it was for, for the access log.
pub fn with_user(mut response: Response<Body>, user: &User) -> Response<Body> {
    response.extensions_mut().insert(RequestUser(Some(user.name.to_string())));
    response
}

/// Seconds until `until`, at least one (for `Retry-After`).
pub fn seconds_until(app: &App, until: UnixTime) -> i64 {
    (until - app.clock.now()).max(1)
}

/// Sets `Retry-After` (RFC 9110 §10.2.3) to `seconds`.
pub fn retry_after(response: &mut Response<Body>, seconds: i64) {
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}

/// The client's address: the peer, or what a trusted proxy in front of us says it is.
pub fn client_ip(app: &App, headers: &HeaderMap, conn: &Connection) -> IpAddr {
    forwarding::client_ip(headers, conn.peer.ip(), &app.config().trusted_proxies)
}

/// Where the session's client is, for its entry in the account page's list.
pub fn device(headers: &HeaderMap, client_ip: IpAddr) -> Device {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    Device { address: client_ip.to_string(), browser: crate::base::user_agent::describe(agent) }
}
