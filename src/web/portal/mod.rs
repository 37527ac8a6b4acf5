//! The proxy's own endpoints under `/.portcullis/`: sign in, sign out, second factors, account,
//! admin, static files. This module only dispatches; each page is in its own module.
//!
//! Every state-changing endpoint is a POST that must carry a CSRF token bound to the browser (the
//! session's token, or for the password forms a token in its own cookie) and come from our own
//! origin (`Origin`); see `web/forms.rs`. GET never changes anything.

mod account;
mod account_password;
mod admin;
mod challenge;
mod email;
mod email_link;
mod enroll;
pub mod handoff;
pub mod jwks;
mod login;
mod login_page;
mod oidc;
mod passkey_login;
mod recover;
mod recovery_codes;
mod rollout;
mod second_step;
mod security_keys;

use std::sync::Arc;

use http::{Method, Request};

use crate::config::MfaPolicy;
use crate::web::client_body::ClientBody;
use crate::web::error::WebError;
use crate::web::pages;
use crate::web::respond::Answer;
use crate::web::route::{AccountAction, OwnPage};
use crate::web::state::{App, Connection};

pub async fn handle(app: &Arc<App>, page: OwnPage, request: Request<ClientBody>, conn: &Connection) -> Answer {
    let method = request.method().clone();
    let is_read = method == Method::GET || method == Method::HEAD;
    let mfa_off = app.config().mfa.policy == MfaPolicy::Disabled;
    match (page, is_read, method == Method::POST) {
        // With 2FA disabled there are no second-factor pages at all.
        (
            OwnPage::Challenge
            | OwnPage::Enroll
            | OwnPage::RecoveryCodes
            | OwnPage::Reminder
            | OwnPage::Nudge
            | OwnPage::Recover
            | OwnPage::ChallengeEmail
            | OwnPage::EnrollEmail
            | OwnPage::EnrollEmailConfirm
            | OwnPage::SecurityKeyNew
            | OwnPage::SecurityKeyRemove
            | OwnPage::LoginPasskey,
            _,
            _,
        ) if mfa_off => Err(WebError::NotFound),
        (OwnPage::Static(name), true, _) => pages::static_file(&name).ok_or(WebError::NotFound),
        (OwnPage::Jwks, _, _) => jwks::serve(app, &method),
        (OwnPage::Challenge, true, _) => challenge::form(app, &request).await,
        (OwnPage::Challenge, _, true) => challenge::submit(app, request, conn).await,
        (OwnPage::Enroll, true, _) => enroll::form(app, &request).await,
        (OwnPage::Enroll, _, true) => enroll::submit(app, request).await,
        (OwnPage::RecoveryCodes, true, _) => recovery_codes::page(app, &request).await,
        (OwnPage::RecoveryCodes, _, true) => recovery_codes::confirm(app, request).await,
        (OwnPage::Reminder, true, _) => rollout::reminder(app, &request).await,
        (OwnPage::Nudge, true, _) => rollout::nudge(app, &request).await,
        (OwnPage::Nudge, _, true) => rollout::nudge_decline(app, request).await,
        (OwnPage::AccountAction(AccountAction::ChangePassword), true, _) => account_password::form(app, &request).await,
        (OwnPage::AccountAction(AccountAction::ChangePassword), _, true) => {
            account_password::submit(app, request, conn).await
        }
        (OwnPage::AccountAction(action), true, _) if action.has_page() => {
            account::action_page(app, action, &request).await
        }
        (OwnPage::AccountAction(action), _, true) => account::action(app, action, request).await,
        (OwnPage::Login, true, _) => login::form(app, &request, conn).await,
        (OwnPage::Login, _, true) => login::submit(app, request, conn).await,
        (OwnPage::LoginPasskey, _, true) => passkey_login::submit(app, request, conn).await,
        (OwnPage::OidcStart(id), true, _) => oidc::start(app, &request, conn, &id).await,
        (OwnPage::OidcCallback(id), true, _) => oidc::callback(app, &request, conn, &id).await,
        (OwnPage::LoginEmail, true, _) => email_link::form(app, &request).await,
        (OwnPage::LoginEmail, _, true) => email_link::send(app, request, conn).await,
        (OwnPage::LoginEmailOpen, true, _) => email_link::open(app, &request, conn).await,
        (OwnPage::LoginEmailCode, _, true) => email_link::code(app, request, conn).await,
        (OwnPage::Logout, true, _) => login::logout_form(app, &request).await,
        (OwnPage::Logout, _, true) => login::logout_submit(app, request).await,
        (OwnPage::Account, true, _) => account::page(app, &request).await,
        (OwnPage::ChallengeEmail, _, true) => email::challenge_send(app, request).await,
        (OwnPage::EnrollEmail, true, _) => email::enroll_form(app, &request).await,
        (OwnPage::EnrollEmail, _, true) => email::enroll_send(app, request).await,
        (OwnPage::EnrollEmailConfirm, _, true) => email::enroll_confirm(app, request).await,
        (OwnPage::Recover, true, _) => recover::form(app, &request),
        (OwnPage::Recover, _, true) => recover::submit(app, request, conn).await,
        (OwnPage::SecurityKeyNew, true, _) => security_keys::new_form(app, &request).await,
        (OwnPage::SecurityKeyNew, _, true) => security_keys::new_submit(app, request).await,
        (OwnPage::SecurityKeyRemove, true, _) => security_keys::remove_page(app, &request).await,
        (OwnPage::SecurityKeyRemove, _, true) => security_keys::remove_submit(app, request).await,
        (OwnPage::Admin, true, _) => admin::page(app, &request).await,
        (OwnPage::AdminAction, _, true) => admin::action(app, request).await,
        (OwnPage::Handoff, true, _) => handoff::start(app, &request, conn).await,
        (OwnPage::NotFound, _, _) => Err(WebError::NotFound),
        _ => Err(WebError::MethodNotAllowed),
    }
}
