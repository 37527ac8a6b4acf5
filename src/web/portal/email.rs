//! Codes by email (see `factors/email.rs`): sending a sign-in code from the challenge page, and
//! setting the factor up, which first proves the address with a code sent to it.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::challenge::{self, Extras};
use super::enroll::factor_added;
use super::second_step::send_sign_in_code;
use crate::domain::factors::FactorKind;
use crate::domain::factors::email::{EmailCodeError, masked};
use crate::domain::factors::service::EnrollError;
use crate::domain::notify::SecurityEvent;
use crate::domain::policy::Setup;
use crate::domain::session::{Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::forms::{CodeForm, RdCsrfForm, return_to_from_query, session_post};
use crate::web::pages::{self, Body, ChallengeView, CodeError, EmailNotice, EnrollEmailPage};
use crate::web::respond::{Answer, go_to, login_redirect, send_to, with_user};
use crate::web::route::Destination;
use crate::web::state::App;

/// "Email me a code" on the challenge page.
pub(super) async fn challenge_send(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<RdCsrfForm>(app, request).await?;
    let return_to = posted.return_to;
    let Some(session) = posted.session else { return Ok(login_redirect(app, &return_to)) };
    if !session.first_factor().allows_email_codes_after() {
        // The same mailbox as the sign-in link: no code is sent (`allows_email_codes_after`).
        return Ok(send_to(app, Destination::Challenge, &return_to));
    }
    Ok(match send_sign_in_code(app, session.user()).await {
        Ok(()) => {
            with_user(go_to(app, &Destination::Challenge.with_return(&return_to, &[("sent", "1")])), session.user())
        }
        Err(EmailCodeError::Throttled { retry_after }) => {
            let extras = Extras {
                view: Some(ChallengeView::Email),
                email_notice: Some(EmailNotice::Wait { seconds: retry_after }),
                ..Default::default()
            };
            challenge::render(app, &session, &return_to, extras, StatusCode::TOO_MANY_REQUESTS).await
        }
        Err(_) => send_to(app, Destination::Challenge, &return_to),
    })
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
    match (app.may_set_up(session, FactorKind::Email), session) {
        (Setup::StepUpFirst, _) => send_to(app, Destination::Challenge, Destination::Account.path()),
        (_, Session::Partial(_)) => send_to(app, Destination::Challenge, return_to),
        (_, Session::Full(_)) => go_to(app, Destination::Account.path()),
    }
}

/// "Use codes by email": sends a confirmation code to the account's address.
pub(super) async fn enroll_send(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<RdCsrfForm>(app, request).await?;
    let return_to = posted.return_to;
    let Some(session) = posted.session else { return Ok(login_redirect(app, &return_to)) };
    super::enroll::offered(app, FactorKind::Email)?;
    if app.may_set_up(&session, FactorKind::Email) != Setup::Add {
        return Ok(not_now(app, &session, &return_to));
    }
    let user = session.user();
    let now = app.clock.now();
    let digits = app.config().mfa.email_code_digits;
    Ok(match app.factors.issue_confirmation_code(user, digits, now).await {
        Ok(code) => {
            app.notifier.send(user, SecurityEvent::ConfirmAddress { code }, now, true);
            go_to(app, &Destination::EnrollEmail.with_return(&return_to, &[("sent", "1")]))
        }
        Err(EmailCodeError::Throttled { retry_after }) => render_enroll_email(
            &session,
            &return_to,
            None,
            Some(EmailNotice::Wait { seconds: retry_after }),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Err(_) => not_now(app, &session, &return_to),
    })
}

#[derive(Deserialize)]
struct SentQuery {
    sent: Option<String>,
}

/// "A code is on its way", after a redirect from sending one (`?sent=1`). Only ever this fixed
/// notice: nothing from the address is shown.
fn sent_notice<B>(request: &Request<B>) -> Option<EmailNotice> {
    let query = serde_urlencoded::from_str::<SentQuery>(request.uri().query().unwrap_or("")).ok()?;
    (query.sent.as_deref() == Some("1")).then_some(EmailNotice::Sent)
}

/// The page that asks for the confirmation code.
pub(super) async fn enroll_form(app: &App, request: &Request<ClientBody>) -> Answer {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.session(request.headers()).await else {
        return Ok(login_redirect(app, &return_to));
    };
    if app.may_set_up(&session, FactorKind::Email) != Setup::Add {
        return Ok(not_now(app, &session, &return_to));
    }
    Ok(render_enroll_email(&session, &return_to, None, sent_notice(request), StatusCode::OK))
}

/// The confirmation code: right, and the address becomes a second factor.
pub(super) async fn enroll_confirm(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<CodeForm>(app, request).await?;
    let (form, return_to) = (posted.form, posted.return_to);
    let Some(session) = posted.session else { return Ok(login_redirect(app, &return_to)) };
    super::enroll::offered(app, FactorKind::Email)?;
    if app.may_set_up(&session, FactorKind::Email) != Setup::Add {
        return Ok(not_now(app, &session, &return_to));
    }
    let user = session.user().clone();
    let now = app.clock.now();
    let enrolled = match app.factors.confirm_email(&user, &form.code, &app.config().mfa.providers, now).await {
        Ok(enrolled) => enrolled,
        Err(e @ (EnrollError::Wrong | EnrollError::Expired | EnrollError::Replayed)) => {
            tracing::warn!(target: "portcullis::security", user = %user.name, "email confirmation code refused: {e}");
            let error = if matches!(e, EnrollError::Wrong) { CodeError::Wrong } else { CodeError::Expired };
            return Ok(render_enroll_email(&session, &return_to, Some(error), None, StatusCode::UNAUTHORIZED));
        }
        Err(EnrollError::Changed) => return Ok(go_to(app, Destination::Account.path())),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(target: "portcullis::security", user = %user.name, "email codes enrolled");
    app.notifier.send(&user, SecurityEvent::EmailEnrolled, now, true);
    factor_added(app, session, enrolled, &return_to).await
}
