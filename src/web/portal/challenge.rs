//! The challenge: proving the second factor after the password, or again before a sensitive
//! change (step-up).
//!
//! The page asks for one kind of code at a time (the account's primary factor, an emailed code
//! once one was sent, or a recovery code when the person chooses one), each with the keyboard it
//! needs; the others are a link or a button away. Whatever the page asked for, any of the
//! account's codes is accepted.

use std::sync::Arc;

use cookie::SameSite;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{
    SessionForm, clear_cookie, client_ip, cookie_header, go_to, login_redirect, minutes_until, retry_after,
    return_to_from_query, send_to, session_cookie_header, session_post, with_user,
};
use crate::domain::factors::email::{EmailCodeError, Purpose};
use crate::domain::factors::{FactorKind, recovery, totp};
use crate::domain::regulation::{Factor, Refusal, Subject, Who};
use crate::domain::session::{AuthMethod, Lookup, Session};
use crate::domain::users::User;
use crate::web::app::{App, Connection};
use crate::web::pages::{self, Body, ChallengeLinks, ChallengePage, ChallengeView, CodeError, EmailNotice};
use crate::web::route::Destination;

#[derive(Deserialize, Default)]
struct ChallengeQuery {
    #[serde(rename = "use")]
    view: Option<String>,
    sent: Option<String>,
}

fn query<B>(request: &Request<B>) -> ChallengeQuery {
    serde_urlencoded::from_str(request.uri().query().unwrap_or("")).unwrap_or_default()
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
pub(super) fn render(
    app: &App,
    session: &Session,
    return_to: &str,
    extras: Extras,
    status: StatusCode,
) -> Response<Body> {
    let record = app.accounts.get(session.user());
    // `mfa.email_otp` governs new setups; an address already confirmed keeps working, so
    // turning the option off never strands the accounts that chose it.
    let email = record.email.as_ref().map(|e| crate::domain::factors::email::masked(&e.address));
    let primary = match record.primary_factor() {
        Some(FactorKind::Email) => ChallengeView::Email,
        _ => ChallengeView::App,
    };
    let view = match extras.view {
        // A code was just emailed: ask for it.
        _ if extras.email_notice == Some(EmailNotice::Sent) && email.is_some() => ChallengeView::Email,
        Some(ChallengeView::App) if record.totp.is_some() => ChallengeView::App,
        Some(ChallengeView::Email) if email.is_some() => ChallengeView::Email,
        Some(ChallengeView::Recovery) => ChallengeView::Recovery,
        _ => primary,
    };
    let link = |view: ChallengeView| {
        let query = serde_urlencoded::to_string([("rd", return_to), ("use", view.key())]).unwrap_or_default();
        format!("{}?{query}", Destination::Challenge.path())
    };
    let step_up = matches!(session, Session::Full(_));
    let remember_days = app.config().mfa.remember_device.filter(|_| !step_up).map(|d| d.as_secs() / 86_400);
    let page = ChallengePage {
        step_up,
        issuer: &app.config().mfa.issuer,
        error: extras.error,
        csrf: session.csrf_token(),
        return_to,
        view,
        totp: record.totp.is_some(),
        email,
        email_notice: extras.email_notice,
        tries_left: extras.tries_left,
        remember_days: remember_days.filter(|days| *days >= 1),
        links: ChallengeLinks {
            app: link(ChallengeView::App),
            email: link(ChallengeView::Email),
            recovery: link(ChallengeView::Recovery),
        },
    };
    with_user(pages::html(status, &page), session.user())
}

pub(super) async fn form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.session(request.headers()).await else { return login_redirect(app, &return_to) };
    if !app.accounts.get(session.user()).has_second_factor() {
        // Nothing to prove with: enroll instead (or go on, if not required).
        return send_to(app, Destination::Enroll, &return_to);
    }
    let query = query(request);
    let extras = Extras {
        view: query.view.as_deref().and_then(ChallengeView::from_key),
        // Only ever this fixed notice: nothing from the address is shown.
        email_notice: (query.sent.as_deref() == Some("1")).then_some(EmailNotice::Sent),
        ..Default::default()
    };
    render(app, &session, &return_to, extras, StatusCode::OK)
}

/// A form carrying a code (challenge, enrollment, email confirmation).
#[derive(Deserialize)]
pub(super) struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pub(super) code: String,
    rd: Option<String>,
    /// The challenge page's view, so a wrong code shows the same page again.
    #[serde(rename = "use")]
    view: Option<String>,
    /// "Remember this browser", ticked.
    remember: Option<String>,
}

impl SessionForm for CodeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn return_to(&self) -> Option<&str> {
        self.rd.as_deref()
    }
}

enum CodeRefused {
    Wrong,
    /// An emailed code that ran out.
    Expired,
    Replayed,
    Malformed,
    NoFactor,
    Internal(String),
}

/// Checks a TOTP code, an emailed code or a recovery code for `user`, consuming it on success.
async fn check_code(app: &App, account: &User, code: &str) -> Result<(AuthMethod, Option<usize>), CodeRefused> {
    // Emailed codes are kept per account, like its factors.
    let user = account.account_key.as_str();
    let now = app.clock.now();
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let looks_totp = digits.len() == totp::DIGITS as usize && all_digits;
    let sealer = &app.sealer;
    let record = app.accounts.get(account);
    let sign_in = Purpose::SignIn;
    // An emailed code, if one is outstanding and this could be it. Both kinds may be six digits:
    // when an emailed code is pending and the account also has an app, a code that is not the
    // emailed one is tried as a TOTP code next.
    if all_digits
        && digits.len() == app.config().mfa.email_code_digits as usize
        && record.email.is_some()
        && app.email_codes.outstanding(user, &sign_in, now)
    {
        let could_be_totp = looks_totp && record.totp.is_some();
        match app.email_codes.check(user, &sign_in, &digits, sealer.pepper(), now) {
            Ok(()) => {
                let noted = app
                    .accounts
                    .update(account, |record| {
                        if let Some(email) = record.email.as_mut() {
                            email.last_used_at = Some(now);
                        }
                        Ok::<_, std::convert::Infallible>(())
                    })
                    .await;
                if let Err(e) = noted {
                    tracing::error!(user = %account.name, "could not record an emailed code's use: {e}");
                }
                return Ok((AuthMethod::Email, None));
            }
            Err(_) if could_be_totp => {}
            Err(EmailCodeError::Expired) => return Err(CodeRefused::Expired),
            Err(_) => return Err(CodeRefused::Wrong),
        }
    }
    if all_digits && record.totp.is_none() && record.email.is_some() {
        // Digits, no app, and no emailed code waiting: it was used, ran out or never sent.
        return Err(CodeRefused::Expired);
    }
    let outcome = if looks_totp {
        app.accounts
            .update(account, |record| {
                let factor = record.totp.as_mut().ok_or(CodeRefused::NoFactor)?;
                let secret = sealer.open(&factor.sealed_secret).map_err(|e| CodeRefused::Internal(e.to_string()))?;
                let step = totp::verify(secret.expose(), &digits, now, factor.last_step).map_err(|e| match e {
                    totp::TotpError::Replayed => CodeRefused::Replayed,
                    totp::TotpError::Wrong => CodeRefused::Wrong,
                    totp::TotpError::BadSecret(e) => CodeRefused::Internal(e),
                })?;
                factor.last_step = step;
                factor.last_used_at = Some(now);
                // Which step the code matched, relative to ours: the clock-skew telemetry.
                app.drift.record(step as i64 - now / totp::STEP_SECONDS as i64);
                Ok((AuthMethod::Otp, None))
            })
            .await
    } else if recovery::normalize(code).is_some() {
        app.accounts
            .update(account, |record| {
                if !record.has_second_factor() {
                    return Err(CodeRefused::NoFactor);
                }
                let index =
                    recovery::find_unused(sealer.pepper(), &record.recovery_codes, code).ok_or(CodeRefused::Wrong)?;
                record.recovery_codes[index].used_at = Some(now);
                Ok((AuthMethod::Rc, Some(record.recovery_codes_left())))
            })
            .await
    } else {
        return Err(CodeRefused::Malformed);
    };
    outcome.map_err(|e| CodeRefused::Internal(e.to_string()))?
}

/// The answer when codes may not be checked now.
fn paused(app: &App, session: &Session, refusal: Refusal) -> Response<Body> {
    let user = session.user().name.as_str();
    let response = match refusal {
        Refusal::Banned { until, who } => {
            crate::base::metrics::second_factor("locked");
            let minutes = minutes_until(app, until);
            let message = match who {
                Who::Address => format!(
                    "Too many wrong codes came from your network, which others may share, so codes from it are not checked for about {minutes} minute(s). Try again then."
                ),
                _ => format!(
                    "Too many wrong codes. For safety, codes for this account are not checked for about {minutes} minute(s); try again then."
                ),
            };
            let mut response = pages::error(StatusCode::TOO_MANY_REQUESTS, "Too many attempts", &message, None);
            retry_after(&mut response, app, until);
            response
        }
        Refusal::Crowded => {
            let mut response = pages::error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts at once",
                "Several codes are being checked at once. Wait a moment and try again.",
                None,
            );
            response.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from_static("5"));
            response
        }
        Refusal::SecondFactorLocked => {
            tracing::warn!(target: "portcullis::security", %user, "second factor locked; refused");
            pages::error(
                StatusCode::FORBIDDEN,
                "Two-step verification locked",
                "After too many wrong codes in a row, two-step verification for this account is locked. Ask the administrator to reset it.",
                None,
            )
        }
    };
    with_user(response, session.user())
}

pub(super) async fn submit(app: &Arc<App>, request: Request<Incoming>, conn: &Connection) -> Response<Body> {
    let client = client_ip(app, request.headers(), conn);
    let device = super::device(request.headers(), client);
    let (session, form, return_to) = match session_post::<CodeForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let user = session.user().name.to_string();
    let step_up = matches!(session, Session::Full(_));
    let subjects = [Subject::Account(user.clone()), Subject::address(client)];
    let attempt = match app.regulator.reserve(&subjects, Factor::SecondFactor) {
        Ok(attempt) => attempt,
        Err(refusal) => return paused(app, &session, refusal),
    };
    let view = form.view.as_deref().and_then(ChallengeView::from_key);
    match check_code(app, session.user(), &form.code).await {
        Ok((method, recovery_left)) => {
            crate::base::metrics::second_factor("ok");
            if let Err(e) = attempt.succeeded().await {
                tracing::error!("could not record a second factor: {e}");
            }
            if let Some(left) = recovery_left {
                tracing::warn!(target: "portcullis::security", %user, left, "recovery code used");
                let event = crate::domain::notify::SecurityEvent::RecoveryCodeUsed { left };
                app.notifier.send(session.user(), event, app.clock.now(), true);
            }
            tracing::info!(target: "portcullis::security", %user, method = method.as_str(), step_up, "second factor ok");
            let old_key = session.key().clone();
            let upgraded = match session {
                Session::Partial(partial) => app.sessions.promote(partial, vec![AuthMethod::Pwd, method]).await,
                Session::Full(full) => app.sessions.step_up(full, method).await,
            };
            let (id, full) = match upgraded {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::error!("could not upgrade a session: {e}");
                    return pages::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Verification unavailable",
                        "Your code was right, but the session could not be saved. Try again.",
                        None,
                    );
                }
            };
            if !step_up {
                app.accounts.record_sign_in(full.user(), app.clock.now()).await;
            }
            app.pending.rekey(&old_key, full.key());
            let mut response = go_to(app, &return_to);
            response.headers_mut().append(header::SET_COOKIE, session_cookie_header(app, &id, full.expires_at()));
            if !step_up {
                response.headers_mut().append(header::SET_COOKIE, super::login::known_browser_cookie(app, full.user()));
            }
            if !step_up && form.remember.as_deref() == Some("yes") {
                remember_browser(app, full.user(), device, &mut response).await;
            }
            with_user(response, full.user())
        }
        Err(CodeRefused::NoFactor) => {
            drop(attempt);
            send_to(app, Destination::Enroll, &return_to)
        }
        Err(CodeRefused::Internal(e)) => {
            drop(attempt);
            tracing::error!(%user, "second factor check failed: {e}");
            pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Your code could not be checked. Try again; if it keeps failing, tell the administrator.",
                None,
            )
        }
        Err(refused) => {
            let in_session = match &session {
                Session::Partial(p) => p.record_failure(),
                Session::Full(f) => f.record_failure(),
            } as usize;
            let error = match refused {
                CodeRefused::Replayed => CodeError::Replayed,
                CodeRefused::Malformed => CodeError::Malformed,
                CodeRefused::Expired => CodeError::Expired,
                _ => CodeError::Wrong,
            };
            tracing::warn!(target: "portcullis::security", %user, failures = in_session, step_up, "second factor failed");
            crate::base::metrics::second_factor("failed");
            let outcome = match attempt.failed().await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!("could not record a failed code: {e}");
                    Default::default()
                }
            };
            if outcome.banned(Who::Account) {
                crate::base::metrics::lockout();
                tracing::warn!(target: "portcullis::security", %user, %client, "codes paused after repeated wrong codes");
                let event = crate::domain::notify::SecurityEvent::Locked { by_codes: true };
                app.notifier.send(session.user(), event, app.clock.now(), false);
            }
            let session_limit = app.config().mfa.attempts as usize;
            if let Some(until) = outcome.until() {
                // Paused: the session ends, and the page says when signing in works again (it is
                // paused just as long: the account or address is what is paused, not the session).
                return end_after_wrong_codes(app, session, Some(until)).await;
            }
            if in_session >= session_limit {
                return end_after_wrong_codes(app, session, None).await;
            }
            let tries_left = (session_limit - in_session).min(outcome.left);
            let extras = Extras { view, error: Some(error), tries_left: Some(tries_left), ..Default::default() };
            render(app, &session, &return_to, extras, StatusCode::UNAUTHORIZED)
        }
    }
}

/// Too many wrong codes: the session ends. Starting over costs a password check, which is
/// deliberately slow; when codes are paused, the page says until when.
async fn end_after_wrong_codes(app: &App, session: Session, paused_until: Option<i64>) -> Response<Body> {
    if let Err(e) = app.sessions.end(session.key()).await {
        tracing::error!("could not end a session: {e}");
    }
    app.pending.forget(session.key());
    tracing::warn!(target: "portcullis::security", user = %session.user().name, "session ended after too many wrong codes");
    let mut response = match paused_until {
        Some(until) => {
            let minutes = minutes_until(app, until);
            let message = format!(
                "For your safety you have been signed out, and codes for this account are not checked for about {minutes} minute(s). You can sign in again after that; use a recovery code if your authenticator is not available."
            );
            let mut response = pages::error(StatusCode::TOO_MANY_REQUESTS, "Too many wrong codes", &message, None);
            retry_after(&mut response, app, until);
            response
        }
        None => pages::error(
            StatusCode::UNAUTHORIZED,
            "Too many wrong codes",
            "For your safety you have been signed out. Sign in again, and use a recovery code if your authenticator is not available.",
            Some(("/.portcullis/login", "Sign in again")),
        ),
    };
    clear_cookie(&mut response, app.session_cookie(), app.config().public_url.is_https());
    response
}

/// Remembers this browser for `mfa.remember_device` (if the operator allows it): a token in a
/// cookie, its digest on the account.
async fn remember_browser(
    app: &App,
    user: &User,
    device: crate::domain::session::Device,
    response: &mut Response<Body>,
) {
    let Some(lifetime) = app.config().mfa.remember_device else { return };
    let now = app.clock.now();
    let (token, record) = crate::domain::factors::remembered::remember(
        user,
        device.browser,
        device.address,
        now,
        lifetime.as_secs() as i64,
    );
    let saved = app
        .accounts
        .update(user, |account| {
            account.add_remembered(record, now);
            Ok::<_, std::convert::Infallible>(())
        })
        .await;
    match saved {
        Ok(_) => {
            tracing::info!(target: "portcullis::security", user = %user.name, "browser remembered");
            let max_age = Some(time::Duration::seconds(lifetime.as_secs() as i64));
            let cookie = cookie_header(app, &app.config().session.remember_cookie(), &token, max_age, SameSite::Strict);
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Err(e) => tracing::error!(user = %user.name, "could not remember a browser: {e}"),
    }
}
