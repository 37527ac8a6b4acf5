//! The security key pages, and the one CSP that allows a script (only on pages that talk to a key).

use askama::Template;
use http::{HeaderValue, Response, StatusCode, header};

use crate::web::pages::{Body, CodeError, html};

/// Registering a security key or passkey.
#[derive(Template)]
#[template(path = "security_key_new.html")]
pub struct SecurityKeyPage<'a> {
    /// Half signed in: this is the inline setup after the password.
    pub required: bool,
    pub error: Option<CodeError>,
    /// The name given, kept when the page is shown again.
    pub name: &'a str,
    /// The WebAuthn creation options (JSON) for `static/webauthn.js`; none when the ceremony
    /// could not start (the page then says so).
    pub options: Option<&'a str>,
    pub csrf: &'a str,
    pub return_to: &'a str,
    /// Where the other ways of setting up a second step are.
    pub other_ways: &'a str,
}

/// [`html`], with a CSP that also lets our own `static/webauthn.js` run: only on the pages that
/// use a security key. Still no inline script (`'self'` only); the options travel in a `data-`
/// attribute, which is data, not code.
pub fn html_with_script(status: StatusCode, page: &impl Template) -> Response<Body> {
    let mut response = html(status, page);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}
