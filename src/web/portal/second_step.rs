//! What every page does once a session has proven enough: the session becomes full (or, in a
//! full session, records a fresh second factor), gets a new id, and the browser gets its cookies.
//! Also the sign-in code by email, which both the login and the challenge page send.

use http::Response;

use crate::domain::factors::email::EmailCodeError;
use crate::domain::factors::proof::SecondFactorProof;
use crate::domain::notify::SecurityEvent;
use crate::domain::policy::PasswordIsEnough;
use crate::domain::session::{FullSession, PartialSession};
use crate::domain::users::User;
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::pages::Body;
use crate::web::respond::with_user;
use crate::web::state::App;

/// What makes a half-logged-in session full.
pub enum Enough {
    /// A second factor, proven just now (or a remembered browser standing in for one).
    SecondFactor(SecondFactorProof),
    /// The policy's word that the password is all this account needs.
    Password(PasswordIsEnough),
}

/// Makes `partial` full and answers with `then` (a redirect), carrying the new session cookie
/// and the known-browser mark. The sign-in is recorded on the account.
pub async fn complete_sign_in(
    app: &App,
    partial: PartialSession,
    enough: Enough,
    mut then: Response<Body>,
) -> Result<(Response<Body>, FullSession), WebError> {
    let old_key = partial.key().clone();
    let (id, full) = match enough {
        Enough::SecondFactor(proof) => {
            app.sessions.promote(partial, proof).await.map_err(|e| WebError::VerificationUnsaved(e.to_string()))?
        }
        Enough::Password(enough) => app
            .sessions
            .promote_with_password(partial, enough)
            .await
            .map_err(|e| WebError::SignInUnavailable(e.to_string()))?,
    };
    app.pending.rekey(&old_key, full.key()).await?;
    app.factors.accounts.record_sign_in(full.user(), app.clock.now()).await;
    cookies::set_session(&mut then, app, &id, full.expires_at());
    cookies::set_known_browser(&mut then, app, full.user());
    Ok((with_user(then, full.user()), full))
}

/// Records a second factor proven again in a full session (step-up), and answers with `then`
/// carrying the new session cookie.
pub async fn complete_step_up(
    app: &App,
    full: FullSession,
    proof: SecondFactorProof,
    mut then: Response<Body>,
) -> Result<(Response<Body>, FullSession), WebError> {
    let old_key = full.key().clone();
    let (id, full) =
        app.sessions.step_up(full, proof).await.map_err(|e| WebError::VerificationUnsaved(e.to_string()))?;
    app.pending.rekey(&old_key, full.key()).await?;
    cookies::set_session(&mut then, app, &id, full.expires_at());
    Ok((with_user(then, full.user()), full))
}

/// Mails a sign-in code to the account's confirmed address (whatever the users file says now:
/// only that one was proven), unless sending is throttled.
pub async fn send_sign_in_code(app: &App, user: &User) -> Result<(), EmailCodeError> {
    let now = app.clock.now();
    let digits = app.config().mfa.email_code_digits;
    let (code, address) = app.factors.issue_sign_in_code(user, digits, &app.config().mfa.providers, now).await?;
    let recipient = User { email: address, ..user.clone() };
    app.notifier.send(&recipient, SecurityEvent::SignInCode { code }, now, true);
    tracing::info!(target: "portcullis::security", user = %user.name, "sign-in code emailed");
    Ok(())
}
