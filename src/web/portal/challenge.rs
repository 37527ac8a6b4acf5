//! The challenge: proving the second factor after the password, or again before a sensitive
//! change (step-up).
//!
//! The page asks for one kind of code at a time (the account's primary factor, an emailed code
//! once one was sent, or a recovery code when the person chooses one), each with the keyboard it
//! needs; the others are a link or a button away. Whatever the page asked for, any of the
//! account's codes is accepted: checking is `SecondFactors::verify_code`'s job.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::second_step::{Enough, complete_sign_in, complete_step_up};
use super::security_keys;
use crate::domain::factors::FactorKind;
use crate::domain::factors::email::masked;
use crate::domain::factors::providers::counts;
use crate::domain::factors::security_key::KeyError;
use crate::domain::factors::service::{CodeRefused, Verified};
use crate::domain::notify::SecurityEvent;
use crate::domain::regulation::{Factor, Refusal, Subject, Who};
use crate::domain::session::{Device, Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::forms::{CodeForm, return_to_from_query, session_post};
use crate::web::pages::{self, Body, ChallengeLinks, ChallengePage, ChallengeView, CodeError, EmailNotice};
use crate::web::respond::{Answer, client_ip, device, go_to, login_redirect, seconds_until, send_to, with_user};
use crate::web::route::Destination;
use crate::web::state::{App, Connection};

#[derive(Deserialize, Default)]
struct ChallengeQuery {
    #[serde(rename = "use")]
    view: Option<String>,
    sent: Option<String>,
}

/// What the challenge page shows besides the form.
#[derive(Default)]
pub(super) struct Extras {
    pub view: Option<ChallengeView>,
    pub error: Option<CodeError>,
    pub email_notice: Option<EmailNotice>,
    pub tries_left: Option<usize>,
}

/// The challenge page for `session`'s account.
pub(super) async fn render(
    app: &App,
    session: &Session,
    return_to: &str,
    extras: Extras,
    status: StatusCode,
) -> Response<Body> {
    let record = app.account(session.user());
    // Only factors that count are offered: an address already confirmed keeps working while
    // its provider is active or deprecated (as with `mfa.email_otp = false`), not once disabled.
    let providers = &app.config().mfa.providers;
    let app_counts = counts(&record, providers, FactorKind::Totp);
    // Not after a sign-in link: it proved the same mailbox (see `allows_email_codes_after`).
    let email = record
        .email
        .as_ref()
        .filter(|_| counts(&record, providers, FactorKind::Email) && session.first_factor().allows_email_codes_after())
        .map(|e| masked(&e.address));
    let keys = counts(&record, providers, FactorKind::SecurityKey);
    let primary = match record.primary_factor() {
        Some(FactorKind::SecurityKey) if keys => ChallengeView::Key,
        Some(FactorKind::Email) if email.is_some() => ChallengeView::Email,
        _ if !app_counts && keys => ChallengeView::Key,
        _ if !app_counts && email.is_some() => ChallengeView::Email,
        _ => ChallengeView::App,
    };
    let view = match extras.view {
        // A code was just emailed: ask for it.
        _ if extras.email_notice == Some(EmailNotice::Sent) && email.is_some() => ChallengeView::Email,
        Some(ChallengeView::App) if app_counts => ChallengeView::App,
        Some(ChallengeView::Email) if email.is_some() => ChallengeView::Email,
        Some(ChallengeView::Recovery) => ChallengeView::Recovery,
        Some(ChallengeView::Key) if keys => ChallengeView::Key,
        _ => primary,
    };
    // Each showing of the key view starts a new assertion, replacing the session's earlier one.
    let key_options =
        if view == ChallengeView::Key { security_keys::sign_in_options(app, session).await } else { None };
    let link = |view: ChallengeView| Destination::Challenge.with_return(return_to, &[("use", view.key())]);
    let step_up = matches!(session, Session::Full(_));
    let remember_days = app.config().mfa.remember_device.filter(|_| !step_up).map(|d| d.as_secs() / 86_400);
    let page = ChallengePage {
        step_up,
        issuer: &app.config().mfa.issuer,
        error: extras.error,
        csrf: session.csrf_token(),
        return_to,
        view,
        totp: app_counts,
        email,
        email_notice: extras.email_notice,
        tries_left: extras.tries_left,
        remember_days: remember_days.filter(|days| *days >= 1),
        links: ChallengeLinks {
            app: link(ChallengeView::App),
            email: link(ChallengeView::Email),
            recovery: link(ChallengeView::Recovery),
            key: link(ChallengeView::Key),
        },
        keys,
        key_options,
    };
    let response = if page.key_options.is_some() {
        crate::web::key_pages::html_with_script(status, &page)
    } else {
        pages::html(status, &page)
    };
    with_user(response, session.user())
}

pub(super) async fn form(app: &App, request: &Request<ClientBody>) -> Answer {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.session(request.headers()).await else {
        return Ok(login_redirect(app, &return_to));
    };
    if !app.has_factor(session.user()) {
        // Nothing to prove with: enroll instead (or go on, if not required).
        return Ok(send_to(app, Destination::Enroll, &return_to));
    }
    if !session.first_factor().allows_email_codes_after() && only_email_counts(app, &session) {
        return Err(WebError::LinkThenEmailOnly);
    }
    let query: ChallengeQuery = serde_urlencoded::from_str(request.uri().query().unwrap_or("")).unwrap_or_default();
    let extras = Extras {
        view: query.view.as_deref().and_then(ChallengeView::from_key),
        // Only ever this fixed notice: nothing from the address is shown.
        email_notice: (query.sent.as_deref() == Some("1")).then_some(EmailNotice::Sent),
        ..Default::default()
    };
    Ok(render(app, &session, &return_to, extras, StatusCode::OK).await)
}

/// Whether the account's only second step that counts is codes by email.
fn only_email_counts(app: &App, session: &Session) -> bool {
    let record = app.account(session.user());
    let providers = &app.config().mfa.providers;
    counts(&record, providers, FactorKind::Email)
        && !counts(&record, providers, FactorKind::Totp)
        && !counts(&record, providers, FactorKind::SecurityKey)
}

/// Why codes are not being checked now, as the error page that says so.
fn paused(app: &App, session: &Session, refusal: Refusal) -> WebError {
    crate::base::metrics::second_factor("locked");
    match refusal {
        Refusal::Banned { until, who } => WebError::CodesPaused { seconds: seconds_until(app, until), who },
        Refusal::Crowded => WebError::CodesCrowded,
        Refusal::SecondFactorLocked => {
            tracing::warn!(target: "portcullis::security", user = %session.user().name, "second factor locked; refused");
            WebError::SecondFactorLocked
        }
    }
}

pub(super) async fn submit(app: &Arc<App>, request: Request<ClientBody>, conn: &Connection) -> Answer {
    let client = client_ip(app, request.headers(), conn);
    let device = device(request.headers(), client);
    let posted = session_post::<CodeForm>(app, request).await?;
    let (form, return_to) = (posted.form, posted.return_to);
    let Some(session) = posted.session else { return Ok(login_redirect(app, &return_to)) };
    let user = session.user().name.to_string();
    let step_up = matches!(session, Session::Full(_));
    let view = form.view.as_deref().and_then(ChallengeView::from_key);
    if view == Some(ChallengeView::Key) && form.credential.is_empty() && form.code.trim().is_empty() {
        // The key form arrived without a key's answer (no JavaScript, or no WebAuthn): nothing
        // was tried, so nothing is counted; the page says why and offers the other ways.
        let extras = Extras { view, error: Some(CodeError::KeyMissing), ..Default::default() };
        return Ok(render(app, &session, &return_to, extras, StatusCode::BAD_REQUEST).await);
    }
    // Codes are regulated per account and per address, apart from passwords (see
    // `regulation.rs`): the attempt is reserved before the code is checked.
    let subjects = [Subject::Account(user.clone()), Subject::address(client)];
    let attempt = match app.regulator.reserve(&subjects, Factor::SecondFactor).await {
        Ok(attempt) => attempt,
        Err(refusal) => return Err(paused(app, &session, refusal)),
    };
    let now = app.clock.now();
    let digits = app.config().mfa.email_code_digits;
    let checked = if form.credential.is_empty() {
        let code = (form.code.as_str(), session.first_factor());
        app.factors.verify_code(session.user(), code, digits, &app.config().mfa.providers, now).await
    } else {
        security_keys::verify(app, &session, &form.credential).await.map_err(CodeRefused::from)
    };
    let refused = match checked {
        Ok(verified) => {
            crate::base::metrics::second_factor("ok");
            if let Err(e) = attempt.succeeded().await {
                tracing::error!("could not record a second factor: {e}");
            }
            let remember = form.remember.as_deref() == Some("yes");
            return proven(app, session, verified, &return_to, remember.then_some(device)).await;
        }
        Err(CodeRefused::NoFactor) => {
            drop(attempt);
            return Ok(send_to(app, Destination::Enroll, &return_to));
        }
        Err(
            e @ (CodeRefused::Store(_)
            | CodeRefused::Sealing(_)
            | CodeRefused::Secret(_)
            | CodeRefused::Key(KeyError::Store(_) | KeyError::Unavailable(_))),
        ) => {
            drop(attempt);
            return Err(WebError::Internal(format!("second factor check for {user} failed: {e}")));
        }
        Err(refused) => refused,
    };

    let in_session = match &session {
        Session::Partial(p) => p.record_failure(),
        Session::Full(f) => f.record_failure(),
    } as usize;
    if let CodeRefused::Key(KeyError::PossibleClone { name }) = &refused {
        // WebAuthn L3 §6.1.1: a counter that does not go up signals a cloned authenticator. The
        // sign-in is refused (and counted as a wrong attempt); the owner hears of it.
        tracing::warn!(target: "portcullis::security", %user, "security key refused: its signature counter went backwards (cloned?)");
        app.notifier.send(session.user(), SecurityEvent::KeyPossiblyCloned { name: name.clone() }, now, true);
    } else if let CodeRefused::Key(e) = &refused {
        tracing::warn!(target: "portcullis::security", %user, "security key refused: {e}");
    }
    let error = match refused {
        CodeRefused::Key(KeyError::Expired) => CodeError::KeyExpired,
        CodeRefused::Key(_) => CodeError::KeyRefused,
        CodeRefused::Replayed => CodeError::Replayed,
        CodeRefused::Malformed => CodeError::Malformed,
        CodeRefused::Expired => CodeError::Expired,
        _ => CodeError::Wrong,
    };
    tracing::warn!(target: "portcullis::security", %user, failures = in_session, step_up, "second factor failed");
    crate::base::metrics::second_factor("failed");
    let outcome = attempt.failed().await.unwrap_or_else(|e| {
        tracing::error!("could not record a failed code: {e}");
        Default::default()
    });
    if outcome.banned(Who::Account) {
        crate::base::metrics::lockout();
        tracing::warn!(target: "portcullis::security", %user, %client, "codes paused after repeated wrong codes");
        app.notifier.send(session.user(), SecurityEvent::Locked { by_codes: true }, now, false);
    }
    let session_limit = app.config().mfa.attempts as usize;
    if let Some(until) = outcome.until() {
        // Paused: the session ends, and the page says when signing in works again (it is
        // paused just as long: the account or address is what is paused, not the session).
        return end_after_wrong_codes(app, session, Some(seconds_until(app, until))).await;
    }
    if in_session >= session_limit {
        return end_after_wrong_codes(app, session, None).await;
    }
    let tries_left = (session_limit - in_session).min(outcome.left);
    let extras = Extras { view, error: Some(error), tries_left: Some(tries_left), ..Default::default() };
    Ok(render(app, &session, &return_to, extras, StatusCode::UNAUTHORIZED).await)
}

/// A right code: the session becomes full (or records a fresh factor, for step-up) and goes on;
/// after a sign-in, the browser is remembered if asked (`remember`, with where it is).
async fn proven(app: &App, session: Session, verified: Verified, return_to: &str, remember: Option<Device>) -> Answer {
    let user = session.user().clone();
    let step_up = matches!(session, Session::Full(_));
    if let Some(left) = verified.recovery_codes_left {
        tracing::warn!(target: "portcullis::security", user = %user.name, left, "recovery code used");
        app.notifier.send(&user, SecurityEvent::RecoveryCodeUsed { left }, app.clock.now(), true);
    }
    let method = verified.proof.method();
    tracing::info!(target: "portcullis::security", user = %user.name, method = method.as_str(), step_up, "second factor ok");
    let then = go_to(app, return_to);
    match session {
        Session::Full(full) => Ok(complete_step_up(app, full, verified.proof, then).await?.0),
        Session::Partial(partial) => {
            let (mut response, _) = complete_sign_in(app, partial, Enough::SecondFactor(verified.proof), then).await?;
            if let Some(device) = remember {
                remember_browser(app, &user, device, &mut response).await;
            }
            Ok(response)
        }
    }
}

/// Too many wrong codes: the session ends. Starting over costs a password check, which is
/// deliberately slow; when codes are paused (`paused_for` seconds), the page says so.
async fn end_after_wrong_codes(app: &App, session: Session, paused_for: Option<i64>) -> Answer {
    if let Err(e) = app.sessions.end(session.key()).await {
        tracing::error!("could not end a session: {e}");
    }
    app.pending.forget(session.key()).await;
    tracing::warn!(target: "portcullis::security", user = %session.user().name, "session ended after too many wrong codes");
    let mut response = WebError::TooManyCodes { paused_for }.into_response();
    cookies::clear_session(&mut response, app);
    Ok(response)
}

/// Remembers this browser for `mfa.remember_device` (if the operator allows it): a token in a
/// cookie, its digest on the account.
async fn remember_browser(app: &App, user: &crate::domain::users::User, device: Device, response: &mut Response<Body>) {
    let Some(lifetime) = app.config().mfa.remember_device else { return };
    let lifetime = lifetime.as_secs() as i64;
    let now = app.clock.now();
    match app.factors.remember_browser(user, device.browser, device.address, lifetime, now).await {
        Ok(token) => {
            tracing::info!(target: "portcullis::security", user = %user.name, "browser remembered");
            cookies::set_remembered(response, app, &token, lifetime);
        }
        Err(e) => tracing::error!(user = %user.name, "could not remember a browser: {e}"),
    }
}
