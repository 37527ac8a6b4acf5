//! Reading our forms, and the checks every POST passes: our own origin, a body of our own kind
//! and size that arrives in time, and a CSRF token bound to the browser (the session's, or for
//! the password forms before there is a session, one in its own cookie).

use std::time::Duration;

use bytes::Bytes;
use cookie::SameSite;
use http::{HeaderMap, Request, Response, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::base::headers::cookie_values;
use crate::base::secret::random_token;
use crate::domain::session::{Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::cookies::cookie_header;
use crate::web::error::WebError;
use crate::web::pages::Body;
use crate::web::return_url;
use crate::web::state::App;

/// Our forms are a few short fields; anything bigger is not one of them.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// A form body must arrive whole within this: a few short fields take milliseconds, and a
/// connection dribbling a byte every few seconds must not be held open (slow-body attacks).
pub const FORM_DEADLINE: Duration = Duration::from_secs(5);
/// A token from [`random_token`]: 32 random bytes in unpadded base64url.
const TOKEN_LENGTH: usize = 43;

/// `Origin` must name our public origin on every POST. Browsers send it on every form POST
/// (Fetch standard, "append a request `Origin` header"), with our referrer policy as the real
/// origin (see [`crate::web::pages::REFERRER_POLICY`]). A request without it, with several, or
/// with `Origin: null`, is refused: when in doubt, deny. `Referer` is not consulted: it is
/// optional, often stripped, and a second parser is a second way to get this wrong.
pub fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    let origin = app.config().public_url.origin();
    let mut values = headers.get_all(header::ORIGIN).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.as_bytes() == origin.as_bytes(),
        _ => false,
    }
}

/// Compares a CSRF token in constant time; an empty expected token never matches.
pub fn tokens_match(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Reads a urlencoded form: of our own content type, at most [`MAX_FORM_BYTES`], and whole
/// within [`FORM_DEADLINE`].
pub async fn read_form<T: for<'de> Deserialize<'de>>(request: Request<ClientBody>) -> Result<T, WebError> {
    let is_form = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !is_form {
        return Err(WebError::UnsupportedForm);
    }
    let collect = Limited::new(request.into_body().read_as_form(), MAX_FORM_BYTES).collect();
    let bytes: Bytes = match tokio::time::timeout(FORM_DEADLINE, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(WebError::FormTooLarge),
        // The client reset its stream or closed its connection mid-form: not a large form.
        Ok(Err(e)) => return Err(WebError::ClientGone(e.to_string())),
        Err(_) => return Err(WebError::FormTooSlow),
    };
    serde_urlencoded::from_bytes(&bytes).map_err(|_| WebError::MalformedForm)
}

/// A password field, wiped from memory when dropped.
pub fn zeroizing<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

/// What every form on a signed-in page carries.
pub trait SessionForm: for<'de> Deserialize<'de> {
    fn csrf(&self) -> &str;
    /// Where to go afterwards, as submitted (validated by [`session_post`]).
    fn return_to(&self) -> Option<&str> {
        None
    }
}

/// A form with nothing but its CSRF token and where to go next.
#[derive(Deserialize)]
pub struct RdCsrfForm {
    #[serde(default)]
    csrf: String,
    rd: Option<String>,
}

impl SessionForm for RdCsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn return_to(&self) -> Option<&str> {
        self.rd.as_deref()
    }
}

/// A form carrying a code (challenge, enrollment, email confirmation).
#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pub code: String,
    rd: Option<String>,
    /// The challenge page's view, so a wrong code shows the same page again.
    #[serde(rename = "use")]
    pub view: Option<String>,
    /// "Remember this browser", ticked.
    pub remember: Option<String>,
    /// A security key's answer instead of a code: the WebAuthn credential as JSON, its binary
    /// fields base64url (what `static/webauthn.js` puts there).
    #[serde(default)]
    pub credential: String,
}

impl SessionForm for CodeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn return_to(&self) -> Option<&str> {
        self.rd.as_deref()
    }
}

/// A checked POST from a browser: its session (`None` when it has none; then nothing was
/// checked beyond the origin and the form), the form, and the validated return path.
pub struct Posted<F> {
    pub session: Option<Session>,
    pub form: F,
    pub return_to: String,
}

/// A POST from a signed-in page, checked the same way on every endpoint: it comes from our own
/// origin, its form can be read, and, if the browser has a session, it carries that session's own
/// CSRF token.
pub async fn session_post<F: SessionForm>(app: &App, request: Request<ClientBody>) -> Result<Posted<F>, WebError> {
    if !same_origin(app, request.headers()) {
        return Err(WebError::CrossOrigin);
    }
    let lookup = app.session(request.headers()).await;
    let form: F = read_form(request).await?;
    let return_to = return_url::or_root(form.return_to(), &app.config().public_url);
    let Lookup::Found(session) = lookup else { return Ok(Posted { session: None, form, return_to }) };
    if !tokens_match(session.csrf_token(), form.csrf()) {
        return Err(WebError::StaleForm);
    }
    Ok(Posted { session: Some(session), form, return_to })
}

/// The `?rd=` of a page request, validated (see `return_url.rs`); the root when absent or bad.
pub fn return_to_from_query<B>(app: &App, request: &Request<B>) -> String {
    #[derive(Deserialize)]
    struct ReturnQuery {
        rd: Option<String>,
    }
    let query = request.uri().query().unwrap_or("");
    let rd = serde_urlencoded::from_str::<ReturnQuery>(query).ok().and_then(|q| q.rd);
    return_url::or_root(rd.as_deref(), &app.config().public_url)
}

/// The CSRF token of the password forms that come before a session (login, recovery link): the
/// browser's existing one if it has a well-formed one, else a new one.
pub struct LoginCsrf {
    pub token: String,
    fresh: bool,
}

impl LoginCsrf {
    pub fn of(app: &App, headers: &HeaderMap) -> Self {
        let name = app.sessions.settings().login_csrf_cookie();
        match cookie_values(headers, &name).find(|v| v.len() == TOKEN_LENGTH) {
            Some(existing) => Self { token: existing.to_string(), fresh: false },
            None => Self { token: random_token(), fresh: true },
        }
    }

    /// Whether `given` matches the browser's own login-CSRF cookie (which must be present).
    pub fn admits(app: &App, headers: &HeaderMap, given: &str) -> bool {
        let csrf = Self::of(app, headers);
        !csrf.fresh && tokens_match(&csrf.token, given)
    }

    /// Sets the cookie on a page that shows the form, if the token is new. `Strict`: it is only
    /// ever needed by a form on our own pages.
    pub fn set_cookie(&self, app: &App, response: &mut Response<Body>) {
        if self.fresh {
            let name = app.sessions.settings().login_csrf_cookie();
            let cookie = cookie_header(app, &name, &self.token, None, SameSite::Strict);
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
}
