//! The login page and what every way of signing in shares: the page itself (with the passkey
//! request it carries when passkeys may sign in by themselves, and the offer of a sign-in link),
//! and ending whatever session the browser held before a sign-in.

use http::{HeaderMap, Response, StatusCode};

use crate::domain::factors::passwordless::start_passkey_sign_in;
use crate::domain::factors::security_key;
use crate::domain::session::{Lookup, Rejected};
use crate::web::cookies;
use crate::web::forms::LoginCsrf;
use crate::web::pages::{self, Body, LoginError, LoginPage};
use crate::web::route::Destination;
use crate::web::state::App;

/// The login page, with `error` and the name typed, answered with `status`.
pub(super) fn render(
    app: &App,
    (headers, client): (&HeaderMap, std::net::IpAddr),
    status: StatusCode,
    error: Option<LoginError>,
    return_to: &str,
    username: &str,
) -> Response<Body> {
    let csrf = LoginCsrf::of(app, headers);
    let passkey_options = passkey_options(app, &csrf.token, client);
    let link_url = app.config().login.email_link.then(|| Destination::LoginEmail.with_return(return_to, &[]));
    let page = LoginPage {
        error,
        csrf: &csrf.token,
        return_to,
        username,
        passkey_options: passkey_options.as_deref(),
        link_url: link_url.as_deref(),
        providers: oidc_offers(app, return_to),
    };
    let mut response = match passkey_options {
        Some(_) => crate::web::key_pages::html_with_script(status, &page),
        None => pages::html(status, &page),
    };
    csrf.set_cookie(app, &mut response);
    response
}

/// Whether passkeys may sign in by themselves here now: asked for, and security keys offered
/// (a domain in `public_url`, 2FA not disabled, an active or retiring webauthn provider).
pub(super) fn offered(app: &App) -> bool {
    let config = app.config();
    config.webauthn.passwordless && config.mfa.security_keys
}

/// The request options for the login page, starting a ceremony for the browser holding `token`
/// (asked for from `client`); `None` (the page then offers the password only) when passkeys
/// cannot sign in now.
fn passkey_options(app: &App, token: &str, client: std::net::IpAddr) -> Option<String> {
    if !offered(app) {
        return None;
    }
    let config = app.config();
    let now = app.clock.now();
    let started = security_key::relying_party(&config.public_url, &config.mfa.issuer)
        .and_then(|rp| start_passkey_sign_in(&rp, now));
    match started {
        Ok((options, ceremony)) => {
            app.passkey_logins.put(token, client, ceremony);
            serde_json::to_string(&options).ok()
        }
        Err(e) => {
            tracing::error!("a passkey sign-in could not start: {e}");
            None
        }
    }
}

/// What a browser held before a sign-in.
pub(super) struct Previous(Lookup);

impl Previous {
    /// Clears both copies from the browser when it held two users' sessions (one tossed in).
    pub(super) fn clear_from(self, app: &App, mut response: Response<Body>) -> Response<Body> {
        if let Lookup::Rejected(Rejected::Ambiguous) = self.0 {
            cookies::clear_session_everywhere(&mut response, app, "/");
        }
        response
    }
}

/// Ends the session the browser already had at a sign-in (perhaps one planted by someone else):
/// a sign-in never reuses one, whichever way in it took.
pub(super) async fn end_previous(app: &App, headers: &HeaderMap) -> Previous {
    let previous = app.resolve_session(headers);
    if let Lookup::Found(previous) = &previous
        && let Err(e) = app.sessions.end(previous.key()).await
    {
        tracing::error!("could not end the previous session: {e}");
    }
    Previous(previous)
}

/// The login page's offer: one entry per provider, with where the visitor was going.
fn oidc_offers(app: &App, return_to: &str) -> Vec<(String, String)> {
    app.config()
        .login
        .oidc
        .iter()
        .map(|p| {
            let query = serde_urlencoded::to_string([("rd", return_to)]).unwrap_or_default();
            (p.name.clone(), format!("/.portcullis/login/oidc/{}?{query}", p.id))
        })
        .collect()
}
