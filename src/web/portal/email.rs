//! Codes by email (see `factors/email.rs`): sending a sign-in code from the challenge page, and
//! setting the factor up, which first proves the address with a code sent to it.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::challenge::{self, CodeForm, Extras};
use super::enroll::{Setup, factor_added, may_set_up};
use super::{RdCsrfForm, go_to, login_redirect, return_to_from_query, send_to, session_post, unavailable, with_user};
use crate::domain::factors::email::{EmailCodeError, Purpose, masked};
use crate::domain::factors::{EmailFactorRecord, FactorKind};
use crate::domain::notify::SecurityEvent;
use crate::domain::session::{AuthMethod, Lookup, Session};
use crate::domain::users::User;
use crate::web::app::App;
use crate::web::pages::{self, Body, CodeError, EmailNotice, EnrollEmailPage};
use crate::web::route::Destination;

/// Mails a sign-in code to the account's confirmed address, unless sending is throttled.
pub(super) fn send_sign_in_code(app: &App, user: &User) -> Result<(), EmailCodeError> {
    let name = user.name.as_str();
    let Some(factor) = app.accounts.get(user).email.clone() else { return Err(EmailCodeError::NoCode) };
    let now = app.clock.now();
    let digits = app.config().mfa.email_code_digits;
    let code = app.email_codes.issue(&user.account_key, Purpose::SignIn, digits, app.sealer.pepper(), now)?;
    // To the address that was proven, whatever the users file says now.
    let recipient = User { email: factor.address, ..user.clone() };
    app.notifier.send(&recipient, SecurityEvent::SignInCode { code }, now, true);
    tracing::info!(target: "portcullis::security", user = %name, "sign-in code emailed");
    Ok(())
}

/// "Email me a code" on the challenge page.
pub(super) async fn challenge_send(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, _, return_to) = match session_post::<RdCsrfForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    match send_sign_in_code(app, session.user()) {
        Ok(()) => {
            let query = serde_urlencoded::to_string([("rd", return_to.as_str()), ("sent", "1")]).unwrap_or_default();
            with_user(go_to(app, &format!("{}?{query}", Destination::Challenge.path())), session.user())
        }
        Err(EmailCodeError::Throttled { retry_after }) => {
            let extras = Extras {
                view: Some(pages::ChallengeView::Email),
                email_notice: Some(EmailNotice::Wait { seconds: retry_after }),
                ..Default::default()
            };
            challenge::render(app, &session, &return_to, extras, StatusCode::TOO_MANY_REQUESTS)
        }
        Err(_) => send_to(app, Destination::Challenge, &return_to),
    }
}

fn render_enroll_email(
    session: &Session,
    return_to: &str,
    error: Option<CodeError>,
    notice: Option<EmailNotice>,
    status: StatusCode,
) -> Response<Body> {
    let address = masked(&session.user().email);
    let page = EnrollEmailPage { address: &address, error, notice, csrf: session.csrf_token(), return_to };
    with_user(pages::html(status, &page), session.user())
}

/// Where a session that may not add email codes goes instead.
fn not_now(app: &App, session: &Session, return_to: &str) -> Response<Body> {
    match (may_set_up(app, session, FactorKind::Email), session) {
        (Setup::StepUpFirst, _) => send_to(app, Destination::Challenge, Destination::Account.path()),
        (_, Session::Partial(_)) => send_to(app, Destination::Challenge, return_to),
        (_, Session::Full(_)) => go_to(app, Destination::Account.path()),
    }
}

/// "Use codes by email": sends a confirmation code to the account's address.
pub(super) async fn enroll_send(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, _, return_to) = match session_post::<RdCsrfForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if may_set_up(app, &session, FactorKind::Email) != Setup::Add {
        return not_now(app, &session, &return_to);
    }
    let user = session.user();
    let now = app.clock.now();
    let purpose = Purpose::Confirm { address: user.email.clone() };
    let digits = app.config().mfa.email_code_digits;
    match app.email_codes.issue(&user.account_key, purpose, digits, app.sealer.pepper(), now) {
        Ok(code) => {
            app.notifier.send(user, SecurityEvent::ConfirmAddress { code }, now, true);
            let query = serde_urlencoded::to_string([("rd", return_to.as_str()), ("sent", "1")]).unwrap_or_default();
            go_to(app, &format!("/.portcullis/enroll/email?{query}"))
        }
        Err(EmailCodeError::Throttled { retry_after }) => render_enroll_email(
            &session,
            &return_to,
            None,
            Some(EmailNotice::Wait { seconds: retry_after }),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Err(_) => not_now(app, &session, &return_to),
    }
}

#[derive(Deserialize)]
struct SentQuery {
    sent: Option<String>,
}

/// "A code is on its way", after a redirect from sending one (`?sent=1`). Only ever this fixed
/// notice: nothing from the address is shown.
pub(super) fn sent_notice<B>(request: &Request<B>) -> Option<EmailNotice> {
    let query = serde_urlencoded::from_str::<SentQuery>(request.uri().query().unwrap_or("")).ok()?;
    (query.sent.as_deref() == Some("1")).then_some(EmailNotice::Sent)
}

/// The page that asks for the confirmation code.
pub(super) async fn enroll_form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.session(request.headers()).await else {
        return login_redirect(app, &return_to);
    };
    if may_set_up(app, &session, FactorKind::Email) != Setup::Add {
        return not_now(app, &session, &return_to);
    }
    render_enroll_email(&session, &return_to, None, sent_notice(request), StatusCode::OK)
}

/// The confirmation code: right, and the address becomes a second factor.
pub(super) async fn enroll_confirm(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, form, return_to) = match session_post::<CodeForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if may_set_up(app, &session, FactorKind::Email) != Setup::Add {
        return not_now(app, &session, &return_to);
    }
    let user = session.user().clone();
    let name = user.name.to_string();
    let now = app.clock.now();
    let purpose = Purpose::Confirm { address: user.email.clone() };
    let code: String = form.code.chars().filter(|c| !c.is_whitespace()).collect();
    if let Err(e) = app.email_codes.check(&user.account_key, &purpose, &code, app.sealer.pepper(), now) {
        tracing::warn!(target: "portcullis::security", user = %name, "email confirmation code refused: {e}");
        let error = if e == EmailCodeError::Wrong { CodeError::Wrong } else { CodeError::Expired };
        return render_enroll_email(&session, &return_to, Some(error), None, StatusCode::UNAUTHORIZED);
    }
    let pepper = app.sealer.pepper();
    let address = user.email.clone();
    let saved = app
        .accounts
        .update(&user, |record| {
            if record.email.is_some() {
                return Err(());
            }
            record.email = Some(EmailFactorRecord { address, enrolled_at: now, last_used_at: Some(now) });
            if record.primary.is_none() {
                record.primary = Some(if record.totp.is_some() { FactorKind::Totp } else { FactorKind::Email });
            }
            Ok(record.ensure_recovery_codes(pepper, now))
        })
        .await;
    let codes = match saved {
        Ok(Ok(codes)) => codes,
        Ok(Err(())) => return go_to(app, Destination::Account.path()),
        Err(e) => {
            tracing::error!("could not save a new factor: {e}");
            return unavailable();
        }
    };
    tracing::info!(target: "portcullis::security", user = %name, "email codes enrolled");
    app.notifier.send(&user, SecurityEvent::EmailEnrolled, now, true);
    factor_added(app, session, codes, AuthMethod::Email, &return_to).await
}
