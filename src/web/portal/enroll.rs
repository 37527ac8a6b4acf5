//! Setting up an authenticator app: inline at login when 2FA is required, from the account page,
//! or to move to a new phone. Whether a session may do so is the policy's call
//! (`policy::may_set_up`); checking the first code and saving the factor is the domain's.

use std::sync::Arc;

use http::{Request, StatusCode};

use super::second_step::{Enough, complete_sign_in, complete_step_up};
use crate::domain::factors::email::masked;
use crate::domain::factors::service::{EnrollError, Enrolled};
use crate::domain::factors::{FactorKind, providers, totp};
use crate::domain::notify::SecurityEvent;
use crate::domain::policy::Setup;
use crate::domain::session::{Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::error::WebError;
use crate::web::forms::{CodeForm, return_to_from_query, session_post};
use crate::web::pages::{self, CodeError, EnrollPage};
use crate::web::respond::{Answer, go_to, login_redirect, send_to, with_user};
use crate::web::route::Destination;
use crate::web::state::App;

async fn render(app: &App, session: &Session, return_to: &str, error: Option<CodeError>, status: StatusCode) -> Answer {
    let email_option =
        (app.may_set_up(session, FactorKind::Email) == Setup::Add).then(|| masked(&session.user().email));
    let issuer = &app.config().mfa.issuer;
    let totp_setup = app.may_set_up(session, FactorKind::Totp);
    let required = matches!(session, Session::Partial(_));
    let csrf = session.csrf_token();
    let mut page = EnrollPage {
        required,
        replace: totp_setup == Setup::Replace,
        totp: false,
        issuer,
        qr: "",
        uri: "",
        secret: "",
        secret_grouped: "",
        error,
        csrf,
        return_to,
        email_option,
        turned_off: app.is_stranded(session.user()).then(|| app.turned_off_names(session.user())),
        key_option: (app.may_set_up(session, FactorKind::SecurityKey) == Setup::Add)
            .then(|| Destination::SecurityKeyNew.with_return(return_to, &[])),
    };
    if !matches!(totp_setup, Setup::Add | Setup::Replace) {
        return Ok(with_user(pages::html(status, &page), session.user()));
    }
    let max_age = app.config().session.partial_timeout.as_secs() as i64;
    let secret = app.pending.secret(session.key(), app.clock.now(), max_age).await?;
    let account = session.user().name.as_str();
    let uri = totp::provisioning_uri(secret.expose(), issuer, account)
        .map_err(|e| WebError::Internal(format!("the setup code could not be made: {e}")))?;
    let encoded = totp::base32(secret.expose());
    let qr = crate::domain::factors::qr::png_data_url(&uri).unwrap_or_else(|e| {
        tracing::error!("QR code failed: {e}");
        String::new()
    });
    let grouped = totp::grouped(&encoded);
    page.totp = true;
    page.qr = &qr;
    page.uri = &uri;
    page.secret = &encoded;
    page.secret_grouped = &grouped;
    Ok(with_user(pages::html(status, &page), session.user()))
}

pub(super) async fn form(app: &App, request: &Request<ClientBody>) -> Answer {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.session(request.headers()).await else {
        // Signed out: sign in, then set up, then go on.
        return Ok(login_redirect(app, &Destination::Enroll.with_return(&return_to, &[])));
    };
    match (app.may_set_up(&session, FactorKind::Totp), app.may_set_up(&session, FactorKind::Email), &session) {
        (Setup::Add | Setup::Replace, _, _) => render(app, &session, &return_to, None, StatusCode::OK).await,
        (Setup::StepUpFirst, _, _) => {
            Ok(send_to(app, Destination::Challenge, &Destination::Enroll.with_return(&return_to, &[])))
        }
        // No app allowed here, but codes by email are: the same page, with only that choice.
        (_, Setup::Add, _) => render(app, &session, &return_to, None, StatusCode::OK).await,
        // Only a security key may be set up: its own page.
        _ if app.may_set_up(&session, FactorKind::SecurityKey) == Setup::Add => {
            Ok(send_to(app, Destination::SecurityKeyNew, &return_to))
        }
        // Nothing to prove and nothing that may be set up: say so rather than send the browser
        // back to the challenge page, which would send it here again.
        (_, _, Session::Partial(_)) if app.is_stranded(session.user()) => {
            Err(WebError::Stranded { names: app.turned_off_names(session.user()) })
        }
        (_, _, Session::Partial(_)) if !app.has_factor(session.user()) => Err(WebError::NoFactorPossible),
        (_, _, Session::Partial(_)) => Ok(send_to(app, Destination::Challenge, &return_to)),
        (_, _, Session::Full(_)) => Ok(go_to(app, Destination::Account.path())),
    }
}

pub(super) async fn submit(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<CodeForm>(app, request).await?;
    let (form, return_to) = (posted.form, posted.return_to);
    let Some(session) = posted.session else { return Ok(login_redirect(app, &return_to)) };
    let setup = app.may_set_up(&session, FactorKind::Totp);
    offered(app, FactorKind::Totp)?;
    if !matches!(setup, Setup::Add | Setup::Replace) {
        return Ok(go_to(app, Destination::Account.path()));
    }
    let now = app.clock.now();
    let max_age = app.config().session.partial_timeout.as_secs() as i64;
    let Some((secret, made)) = app.pending.take_secret(session.key(), now, max_age).await? else {
        // The setup expired (or never started): show a fresh one.
        return render(app, &session, &return_to, None, StatusCode::OK).await;
    };
    let replace = setup == Setup::Replace;
    let enrolled = match app
        .factors
        .enroll_totp(session.user(), &secret, &form.code, replace, &app.config().mfa.providers, now)
        .await
    {
        Ok(enrolled) => enrolled,
        Err(e @ (EnrollError::Wrong | EnrollError::Replayed | EnrollError::Expired)) => {
            // Keep the same secret, and its age (wrong codes never make a setup last longer), so
            // the user can simply try the next code.
            app.pending.keep_secret(session.key(), secret, made).await?;
            let error = if matches!(e, EnrollError::Replayed) { CodeError::Replayed } else { CodeError::Wrong };
            return render(app, &session, &return_to, Some(error), StatusCode::UNAUTHORIZED).await;
        }
        // Set up elsewhere or reset meanwhile: nothing was saved.
        Err(EnrollError::Changed) => return Ok(go_to(app, Destination::Account.path())),
        Err(e) => return Err(e.into()),
    };
    let user = session.user().name.to_string();
    let event = if replace {
        tracing::warn!(target: "portcullis::security", %user, "authenticator replaced");
        SecurityEvent::AuthenticatorReplaced
    } else {
        tracing::info!(target: "portcullis::security", %user, "authenticator enrolled");
        SecurityEvent::Enrolled
    };
    app.notifier.send(session.user(), event, now, true);
    factor_added(app, session, enrolled, &return_to).await
}

/// Refuses a setup of `kind` when no active provider offers it (deprecated, disabled, or never
/// configured): a forged or stale form must not add a factor nobody may add.
pub(super) fn offered(app: &App, kind: FactorKind) -> Result<(), WebError> {
    match app.config().mfa.providers.active(providers::kind_of(kind)) {
        Some(_) => Ok(()),
        None => Err(WebError::FactorNotOffered),
    }
}

/// After a new factor is saved. A half-logged-in session becomes full (through the recovery
/// codes page when new codes were made, so they are seen before anything else); a full session
/// records the code just entered as a fresh second factor.
pub(super) async fn factor_added(app: &App, session: Session, enrolled: Enrolled, return_to: &str) -> Answer {
    match (session, enrolled.new_codes) {
        (Session::Partial(partial), Some(codes)) => {
            app.pending.put_enrollment(partial.key(), codes, enrolled.proof).await?;
            Ok(with_user(send_to(app, Destination::RecoveryCodes, return_to), partial.user()))
        }
        (Session::Partial(partial), None) => {
            let then = go_to(app, return_to);
            Ok(complete_sign_in(app, partial, Enough::SecondFactor(enrolled.proof), then).await?.0)
        }
        (Session::Full(full), codes) => {
            let then = match &codes {
                Some(_) => send_to(app, Destination::RecoveryCodes, return_to),
                None => go_to(app, return_to),
            };
            let (response, full) = complete_step_up(app, full, enrolled.proof, then).await?;
            if let Some(codes) = codes {
                app.pending.put_codes(full.key(), codes).await?;
            }
            Ok(response)
        }
    }
}
