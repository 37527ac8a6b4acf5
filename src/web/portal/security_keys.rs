//! Security keys and passkeys: registering one (from the account page, or inline after the
//! password when a second step is required), the options the challenge page hands to the
//! browser, checking the browser's answer, and removing a key. The ceremonies themselves are the
//! domain's (`domain/factors/webauthn.rs`); this module keeps their state per session
//! (`web/pending.rs`) and turns outcomes into pages.

use std::sync::Arc;

use http::{Request, StatusCode};
use serde::Deserialize;

use super::account::{fresh_enough, full_session};
use super::enroll::factor_added;
use crate::config::ProviderKind;
use crate::domain::factors::FactorKind;
use crate::domain::factors::security_key::{self, KeyError};
use crate::domain::factors::service::Verified;
use crate::domain::notify::SecurityEvent;
use crate::domain::policy::{Requirement, Setup};
use crate::domain::session::{Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::error::WebError;
use crate::web::forms::{SessionForm, return_to_from_query, session_post};
use crate::web::key_pages::{SecurityKeyPage, html_with_script};
use crate::web::pages::{self, AccountConfirmPage, CodeError};
use crate::web::respond::{Answer, go_to, login_redirect, send_to, with_user};
use crate::web::route::{Destination, done};
use crate::web::state::App;

/// The relying party for the public URL in force.
fn relying_party(app: &App) -> Result<security_key::RelyingParty, KeyError> {
    let config = app.config();
    security_key::relying_party(&config.public_url, &config.mfa.issuer)
}

/// Starts an assertion for the challenge page (replacing any earlier one of this session) and
/// returns its options as JSON; `None` (logged) when keys cannot be used now.
pub(super) async fn sign_in_options(app: &App, session: &Session) -> Option<String> {
    let started = relying_party(app).and_then(|rp| {
        app.factors.start_key_sign_in(&rp, session.user(), &app.config().mfa.providers, app.clock.now())
    });
    match started {
        Ok((options, ceremony)) => {
            if let Err(e) = app.pending.put_key_sign_in(session.key(), ceremony).await {
                tracing::error!(user = %session.user().name, "a security key sign-in could not be kept: {e}");
                return None;
            }
            serde_json::to_string(&options).ok()
        }
        Err(e) => {
            tracing::error!(user = %session.user().name, "a security key sign-in could not start: {e}");
            None
        }
    }
}

/// Checks the browser's answer against this session's outstanding assertion, which is used up
/// whatever the outcome (WebAuthn L3 §13.4.3: a challenge is good for one ceremony).
pub(super) async fn verify(app: &App, session: &Session, credential: &str) -> Result<Verified, KeyError> {
    let ceremony = app.pending.take_key_sign_in(session.key()).await?.ok_or(KeyError::Expired)?;
    let rp = relying_party(app)?;
    app.factors
        .verify_key(&rp, session.user(), ceremony, credential, &app.config().mfa.providers, app.clock.now())
        .await
}

#[derive(Deserialize)]
pub(super) struct KeyForm {
    #[serde(default)]
    csrf: String,
    rd: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    credential: String,
}

impl SessionForm for KeyForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn return_to(&self) -> Option<&str> {
        self.rd.as_deref()
    }
}

/// The registration page, with a new ceremony.
async fn render(app: &App, session: &Session, return_to: &str, name: &str, error: Option<CodeError>) -> Answer {
    let started = relying_party(app).and_then(|rp| {
        let rules = security_key::NewKeyRules::from_settings(&app.config().webauthn)?;
        app.factors.start_key_registration(&rp, session.user(), rules, app.clock.now())
    });
    let options = match started {
        Ok((options, ceremony)) => {
            app.pending.put_key_registration(session.key(), ceremony).await?;
            serde_json::to_string(&options).ok()
        }
        Err(e) => {
            tracing::error!(user = %session.user().name, "a security key registration could not start: {e}");
            None
        }
    };
    let required = matches!(session, Session::Partial(_));
    let other_ways =
        if required { Destination::Enroll.with_return(return_to, &[]) } else { Destination::Account.path().into() };
    let page = SecurityKeyPage {
        required,
        error,
        name,
        options: options.as_deref(),
        csrf: session.csrf_token(),
        return_to,
        other_ways: &other_ways,
    };
    let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    Ok(with_user(html_with_script(status, &page), session.user()))
}

pub(super) async fn new_form(app: &App, request: &Request<ClientBody>) -> Answer {
    let return_to = return_to_from_query(app, request);
    let here = Destination::SecurityKeyNew.with_return(&return_to, &[]);
    let Lookup::Found(session) = app.session(request.headers()).await else {
        return Ok(login_redirect(app, &here));
    };
    match (app.may_set_up(&session, FactorKind::SecurityKey), &session) {
        (Setup::Add, _) => render(app, &session, &return_to, "", None).await,
        (Setup::StepUpFirst, _) => Ok(send_to(app, Destination::Challenge, &here)),
        (_, Session::Partial(_)) => Ok(send_to(app, Destination::Challenge, &return_to)),
        (_, Session::Full(_)) => Ok(go_to(app, Destination::Account.path())),
    }
}

pub(super) async fn new_submit(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<KeyForm>(app, request).await?;
    let (form, return_to) = (posted.form, posted.return_to);
    let Some(session) = posted.session else { return Ok(login_redirect(app, &return_to)) };
    // A kind no provider offers is refused outright (403), as for the app and email codes.
    if !app.config().mfa.security_keys {
        return Err(WebError::FactorNotOffered);
    }
    if app.may_set_up(&session, FactorKind::SecurityKey) != Setup::Add {
        return Ok(go_to(app, Destination::Account.path()));
    }
    if security_key::clean_name(&form.name).is_err() {
        return render(app, &session, &return_to, "", Some(CodeError::Malformed)).await;
    }
    if form.credential.is_empty() {
        return render(app, &session, &return_to, &form.name, Some(CodeError::KeyMissing)).await;
    }
    let Some(ceremony) = app.pending.take_key_registration(session.key()).await? else {
        return render(app, &session, &return_to, &form.name, Some(CodeError::KeyExpired)).await;
    };
    let now = app.clock.now();
    let rp = relying_party(app)?;
    let user = session.user().clone();
    // New keys point at the active webauthn provider (may_set_up said there is one).
    let Some(provider) = app.config().mfa.providers.active(ProviderKind::Webauthn).map(|p| p.id.clone()) else {
        return Ok(go_to(app, Destination::Account.path()));
    };
    let enrolled = match app
        .factors
        .finish_key_registration(
            &rp,
            &user,
            ceremony,
            &form.credential,
            (&form.name, &provider, &app.config().mfa.providers),
            now,
        )
        .await
    {
        Ok(enrolled) => enrolled,
        Err(KeyError::Expired) => {
            return render(app, &session, &return_to, &form.name, Some(CodeError::KeyExpired)).await;
        }
        Err(e @ (KeyError::Store(_) | KeyError::Unavailable(_))) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(target: "portcullis::security", user = %user.name, "security key registration refused: {e}");
            return render(app, &session, &return_to, &form.name, Some(CodeError::KeyRefused)).await;
        }
    };
    let name = security_key::clean_name(&form.name).unwrap_or_default();
    tracing::info!(target: "portcullis::security", user = %user.name, "security key added");
    app.notifier.send(&user, SecurityEvent::KeyAdded { name }, now, true);
    factor_added(app, session, enrolled, &return_to).await
}

#[derive(Deserialize, Default)]
struct KeyQuery {
    #[serde(default)]
    key: String,
}

fn key_of<B>(request: &Request<B>) -> String {
    serde_urlencoded::from_str::<KeyQuery>(request.uri().query().unwrap_or("")).unwrap_or_default().key
}

/// "Remove this key?": needs a fresh second factor, like every factor change.
pub(super) async fn remove_page(app: &App, request: &Request<ClientBody>) -> Answer {
    let id = key_of(request);
    let path = format!(
        "{}?{}",
        Destination::SecurityKeyRemove.path(),
        serde_urlencoded::to_string([("key", &id)]).unwrap_or_default()
    );
    let full = match full_session(app, request.headers(), &path).await.and_then(|f| fresh_enough(app, f, &path)) {
        Ok(full) => full,
        Err(elsewhere) => return Ok(*elsewhere),
    };
    let record = app.account(full.user());
    let Some(key) = record.security_keys.iter().find(|k| k.id == id) else {
        return Ok(go_to(app, Destination::Account.path()));
    };
    let last = record.security_keys.len() == 1 && record.totp.is_none() && record.email.is_none();
    let title = format!("Remove the key \u{201c}{}\u{201d}?", key.name);
    let consequence = if last {
        "It is your only second step: signing in will need only your password, your recovery codes stop working, and remembered browsers are forgotten."
    } else {
        "It stops working for this account at once. Your other second steps and your recovery codes still work."
    };
    let page = AccountConfirmPage {
        title: &title,
        consequence,
        button: "Remove the key",
        action: &path,
        csrf: full.csrf_token(),
    };
    Ok(with_user(pages::html(StatusCode::OK, &page), full.user()))
}

pub(super) async fn remove_submit(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let id = key_of(&request);
    let path = format!(
        "{}?{}",
        Destination::SecurityKeyRemove.path(),
        serde_urlencoded::to_string([("key", &id)]).unwrap_or_default()
    );
    let posted = session_post::<KeyForm>(app, request).await?;
    let full = match posted.session {
        None => return Ok(login_redirect(app, &path)),
        Some(Session::Partial(_)) => return Ok(send_to(app, Destination::Challenge, &path)),
        Some(Session::Full(full)) => full,
    };
    let full = match fresh_enough(app, full, &path) {
        Ok(full) => full,
        Err(elsewhere) => return Ok(*elsewhere),
    };
    let requirement = app.requirement(full.user());
    if requirement == Requirement::Off {
        return Err(WebError::TwoStepOff);
    }
    let required = requirement == Requirement::Required;
    let (name, others) = match app.factors.remove_key(full.user(), &id, required, &app.config().mfa.providers).await {
        Ok(removed) => removed,
        Err(crate::domain::factors::service::RemoveError::NothingToRemove) => {
            return Ok(go_to(app, Destination::Account.path()));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::warn!(target: "portcullis::security", user = %full.user().name, "security key removed");
    let event = if others { SecurityEvent::KeyRemoved { name } } else { SecurityEvent::Removed };
    app.notifier.send(full.user(), event, app.clock.now(), true);
    Ok(go_to(app, &done(Destination::Account, if others { "key-removed" } else { "removed" })))
}
