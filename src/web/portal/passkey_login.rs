//! Signing in with a passkey alone (`webauthn.passwordless`): the login page carries the request
//! options (a ceremony kept for this browser's login-form token, `web/pending_sign_ins.rs`), the
//! script hands the passkey's answer to this form, and a verified answer starts a full session:
//! the key and its user verification are both factors (see `domain/factors/passwordless.rs`).
//!
//! The form is protected like the password form: same origin, and the login-form token in both
//! the cookie and the form. Failures count against the client's address like wrong passwords, so
//! the form is no cheaper to hammer than the password one.

use std::sync::Arc;

use http::{Request, StatusCode};
use serde::Deserialize;

use super::login_page::{end_previous, render};
use crate::domain::factors::passwordless::PasskeyRefused;
use crate::domain::factors::security_key::{self, KeyError};
use crate::domain::notify::SecurityEvent;
use crate::domain::regulation::{Factor, Refusal, Subject};
use crate::web::client_body::ClientBody;
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::forms::{LoginCsrf, read_form, same_origin};
use crate::web::pages::LoginError;
use crate::web::respond::{Answer, client_ip, device, go_to, retry_after, seconds_until, with_user};
use crate::web::state::{App, Connection};

use super::login_page::offered;

#[derive(Deserialize)]
struct PasskeyForm {
    #[serde(default)]
    csrf: String,
    rd: Option<String>,
    #[serde(default)]
    credential: String,
}

pub(super) async fn submit(app: &Arc<App>, request: Request<ClientBody>, conn: &Connection) -> Answer {
    if !offered(app) {
        return Err(WebError::NotFound);
    }
    if !same_origin(app, request.headers()) {
        tracing::warn!(target: "portcullis::security", peer = %conn.peer.ip(), "passkey sign-in refused: cross-origin post");
        return Err(WebError::CrossOrigin);
    }
    let headers = request.headers().clone();
    let client = client_ip(app, &headers, conn);
    let form: PasskeyForm = read_form(request).await?;
    let return_to = crate::web::return_url::or_root(form.rd.as_deref(), &app.config().public_url);
    let again = |status, error| render(app, (&headers, client), status, Some(error), &return_to, "");
    if !LoginCsrf::admits(app, &headers, &form.csrf) {
        return Ok(again(StatusCode::FORBIDDEN, LoginError::Expired));
    }
    // Taken whatever happens next: a challenge is good for one ceremony (WebAuthn L3 §13.4.3).
    let Some(ceremony) = app.passkey_logins.take(&form.csrf).await else {
        return Ok(again(StatusCode::UNAUTHORIZED, LoginError::PasskeyExpired));
    };
    let attempt = match app.regulator.reserve(&[Subject::address(client)], Factor::Password).await {
        Ok(attempt) => attempt,
        Err(Refusal::Banned { until, who }) => {
            let seconds = seconds_until(app, until);
            let minutes = crate::base::text::whole_minutes(seconds);
            let mut response = again(StatusCode::TOO_MANY_REQUESTS, LoginError::Paused { minutes, who });
            retry_after(&mut response, seconds);
            return Ok(response);
        }
        Err(Refusal::Crowded | Refusal::SecondFactorLocked) => {
            let mut response = again(StatusCode::TOO_MANY_REQUESTS, LoginError::Crowded);
            retry_after(&mut response, 5);
            return Ok(response);
        }
    };
    let config = app.config();
    let now = app.clock.now();
    let rp = security_key::relying_party(&config.public_url, &config.mfa.issuer)?;
    let signed_in = app
        .factors
        .finish_passkey_sign_in(&rp, &app.users, ceremony, &form.credential, &config.mfa.providers, now)
        .await;
    let proof = match signed_in {
        Ok(proof) => proof,
        Err(PasskeyRefused { why: why @ (KeyError::Store(_) | KeyError::Unavailable(_)), .. }) => {
            return Err(why.into());
        }
        Err(PasskeyRefused { why, owner }) => {
            crate::base::metrics::login("failed");
            if let Err(e) = attempt.failed().await {
                tracing::error!("could not record a refused passkey: {e}");
            }
            let user = owner.as_ref().map(|u| u.name.as_str().to_string()).unwrap_or_default();
            if let (KeyError::PossibleClone { name }, Some(owner)) = (&why, &owner) {
                // WebAuthn L3 §6.1.1: a counter that does not go up signals a cloned key.
                tracing::warn!(target: "portcullis::security", %user, %client, "passkey sign-in refused: its signature counter went backwards (cloned?)");
                app.notifier.send(owner, SecurityEvent::KeyPossiblyCloned { name: name.clone() }, now, true);
            } else {
                tracing::warn!(target: "portcullis::security", %user, %client, "passkey sign-in refused: {why}");
            }
            let error =
                if matches!(why, KeyError::Expired) { LoginError::PasskeyExpired } else { LoginError::PasskeyRefused };
            return Ok(again(StatusCode::UNAUTHORIZED, error));
        }
    };
    if let Err(e) = attempt.succeeded().await {
        tracing::error!("could not record a passkey sign-in: {e}");
    }
    // The passkey is the account's second factor too, so the account's second-step pause and
    // lock hold here as they do at the challenge page, where the same key would be refused.
    let account = [Subject::Account(proof.user().name.to_string())];
    match app.regulator.reserve(&account, Factor::SecondFactor).await {
        Ok(attempt) => {
            if let Err(e) = attempt.succeeded().await {
                tracing::error!("could not record a passkey sign-in: {e}");
            }
        }
        Err(refusal) => {
            tracing::warn!(target: "portcullis::security", user = %proof.user().name, ?refusal, "passkey sign-in refused: the account's second step is paused or locked");
            return Err(match refusal {
                Refusal::Banned { until, who } => WebError::CodesPaused { seconds: seconds_until(app, until), who },
                Refusal::Crowded => WebError::CodesCrowded,
                Refusal::SecondFactorLocked => WebError::SecondFactorLocked,
            });
        }
    }
    crate::base::metrics::login("ok");
    // As at the password form: a session the browser already had is ended, never reused.
    let previous = end_previous(app, &headers).await;
    let user = proof.user().clone();
    let (id, full) = app
        .sessions
        .begin_with_passkey(proof, device(&headers, client))
        .await
        .map_err(|e| WebError::SignInUnavailable(e.to_string()))?;
    tracing::info!(target: "portcullis::security", user = %user.name, session = %id.key().log_ref(), "login ok: passkey");
    app.factors.accounts.record_sign_in(&user, now).await;
    let mut response = go_to(app, &return_to);
    cookies::set_session(&mut response, app, &id, full.expires_at());
    cookies::set_known_browser(&mut response, app, &user);
    Ok(with_user(previous.clear_from(app, response), &user))
}
