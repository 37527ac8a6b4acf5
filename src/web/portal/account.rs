//! The account page and what can be done from it: second factors (remove, choose the first one,
//! new recovery codes), remembered browsers, the password, and sessions.
//!
//! A sensitive change first shows what it will do (GET), then does it (POST); both need a second
//! factor proven within `mfa.step_up_window` when the account has one. Without a fresh one the
//! browser is sent to prove it and comes back to the same page, so the change it asked for is
//! carried through rather than dropped.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::login::{check_password, signed_out, zeroizing};
use super::{
    SessionForm, clear_cookie, go_to, login_redirect, send_to, session_cookie_header, session_post, unavailable,
    with_user,
};
use crate::base::text::format_utc;
use crate::domain::factors::{FactorKind, recovery};
use crate::domain::notify::SecurityEvent;
use crate::domain::policy::{self, Requirement};
use crate::domain::session::{FullSession, Lookup, Session};
use crate::web::app::{App, Connection};
use crate::web::pages::{self, AccountConfirmPage, Body, LoginError, NewPasswordError, PasswordPage};
use crate::web::route::{AccountAction, Destination};

const HOME: &str = "/.portcullis/account";

/// The notices the account page shows after a change: fixed keys, never text from the URL.
fn notice(query: &str) -> Option<&'static str> {
    let done = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "done")
        .map(|(_, v)| v)?;
    Some(match done.as_str() {
        "totp-on" => "Two-step verification is on. You will be asked for a code from your app when you sign in.",
        "totp-replaced" => "Your new authenticator app is set up. The old one no longer works.",
        "email-on" => "Codes by email are on.",
        "removed" => "Two-step verification is off. You can turn it on again at any time.",
        "factor-removed" => "That second step was removed. Your other one and your recovery codes still work.",
        "codes" => "Your new recovery codes are saved. The old ones no longer work.",
        "password" => "Your password was changed. Your other sessions were signed out.",
        "session-ended" => "You signed out that session.",
        "forgotten" => "That browser will be asked for a code again.",
        _ => return None,
    })
}

/// Whether a request may go ahead on the account pages: with its full session, or else the
/// answer that sends it where it must go first.
enum Gate {
    Go(FullSession),
    Answer(Response<Body>),
}

/// The full session a request must have for the account pages, or where to send it instead.
async fn full_session(app: &App, headers: &HeaderMap, here: &str) -> Gate {
    match app.session(headers).await {
        Lookup::Found(Session::Full(full)) => Gate::Go(full),
        // Half logged in: finish the second factor first, then come back here.
        Lookup::Found(Session::Partial(_)) => Gate::Answer(send_to(app, Destination::Challenge, here)),
        _ => Gate::Answer(login_redirect(app, here)),
    }
}

pub(super) async fn page(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let full = match full_session(app, request.headers(), HOME).await {
        Gate::Go(full) => full,
        Gate::Answer(response) => return response,
    };
    let user = full.user();
    let record = app.accounts.get(user);
    let config = app.config();
    let now = app.clock.now();
    let requirement = policy::requirement(&config.mfa, user, now);
    let this = full.key().handle();
    let sessions = app
        .sessions
        .sessions_of(user.name.as_str())
        .into_iter()
        .map(|s| pages::SessionRow {
            this_one: s.handle == this,
            browser: s.device.browser,
            address: if s.device.address.is_empty() { "unknown address".into() } else { s.device.address },
            signed_in: format_utc(s.created_at),
            last_seen: format_utc(s.last_seen),
            partial: !s.full,
            handle: s.handle,
        })
        .collect();
    let remembered = record
        .remembered_at(now)
        .map(|b| pages::RememberedRow {
            id: b.id.clone(),
            browser: b.browser.clone(),
            address: b.address.clone(),
            since: format_utc(b.created_at),
            until: format_utc(b.expires_at),
        })
        .collect();
    let page = pages::AccountPage {
        username: user.name.as_str(),
        display_name: &user.display_name,
        email: &user.email,
        groups: &user.groups,
        csrf: full.csrf_token(),
        notice: notice(request.uri().query().unwrap_or("")),
        mfa_enabled: requirement != Requirement::Off && (config.mfa.totp || config.mfa.email_otp),
        required: requirement == Requirement::Required,
        totp: record.totp.as_ref().map(|t| pages::TotpSummary {
            enrolled: format_utc(t.enrolled_at),
            last_used: t.last_used_at.map(format_utc),
        }),
        recovery_left: record.recovery_codes_left(),
        email_codes: record.email.as_ref().map(|e| pages::EmailSummary {
            address: crate::domain::factors::email::masked(&e.address),
            enrolled: format_utc(e.enrolled_at),
            last_used: e.last_used_at.map(format_utc),
        }),
        email_offered: (config.mfa.email_otp && record.email.is_none())
            .then(|| crate::domain::factors::email::masked(&user.email)),
        totp_offered: config.mfa.totp,
        primary_email: record.primary_factor() == Some(FactorKind::Email),
        can_remove_totp: !(requirement == Requirement::Required && record.email.is_none()),
        can_remove_email: !(requirement == Requirement::Required && record.totp.is_none()),
        remembered,
        sessions,
    };
    with_user(pages::html(StatusCode::OK, &page), user)
}

/// The session for a sensitive action at `path`: full, and with a second factor proven within
/// the step-up window if the account has one (else sent to prove it, and back to `path`).
async fn sensitive(app: &App, headers: &HeaderMap, full: Option<FullSession>, path: &str) -> Gate {
    let full = match full {
        Some(full) => full,
        None => match full_session(app, headers, path).await {
            Gate::Go(full) => full,
            answer => return answer,
        },
    };
    let has_factor = app.accounts.get(full.user()).has_second_factor();
    let window = app.config().mfa.step_up_window.as_secs() as i64;
    if has_factor && !policy::recently_proven(full.second_factor_at(), app.clock.now(), window) {
        return Gate::Answer(send_to(app, Destination::Challenge, path));
    }
    Gate::Go(full)
}

/// The page a sensitive action shows on GET: what it will do, or the password form.
pub(super) async fn action_page(app: &App, action: AccountAction, request: &Request<Incoming>) -> Response<Body> {
    let path = action.path();
    let full = match sensitive(app, request.headers(), None, &path).await {
        Gate::Go(full) => full,
        Gate::Answer(response) => return response,
    };
    if action == AccountAction::ChangePassword {
        return password_page(&full, StatusCode::OK, None, None);
    }
    let record = app.accounts.get(full.user());
    let applies = match action {
        AccountAction::RemoveTotp => record.totp.is_some(),
        AccountAction::RemoveEmail => record.email.is_some(),
        _ => record.has_second_factor(),
    };
    if !applies {
        // A stale link: there is nothing to confirm.
        return go_to(app, HOME);
    }
    let last = record.totp.is_none() || record.email.is_none();
    let (title, consequence, button) = match action {
        AccountAction::RemoveTotp if last => (
            "Turn off two-step verification?",
            "Signing in will need only your password. Your authenticator app and your recovery codes stop working, and browsers you asked to be remembered are forgotten.",
            "Turn it off",
        ),
        AccountAction::RemoveTotp => (
            "Remove the authenticator app?",
            "Codes from your app stop working. Codes by email and your recovery codes still work.",
            "Remove the app",
        ),
        AccountAction::RemoveEmail if last => (
            "Turn off two-step verification?",
            "Signing in will need only your password. Codes by email and your recovery codes stop working, and browsers you asked to be remembered are forgotten.",
            "Turn it off",
        ),
        AccountAction::RemoveEmail => (
            "Stop codes by email?",
            "Emailed codes stop working. Your authenticator app and your recovery codes still work.",
            "Stop codes by email",
        ),
        _ => (
            "Make new recovery codes?",
            "Your current recovery codes stop working as soon as the new ones are made, including any you printed or saved. You will see the new ones once.",
            "Make new codes",
        ),
    };
    let page = AccountConfirmPage { title, consequence, button, action: &path, csrf: full.csrf_token() };
    with_user(pages::html(StatusCode::OK, &page), full.user())
}

pub(super) async fn action(
    app: &Arc<App>,
    action: AccountAction,
    request: Request<Incoming>,
    conn: &Connection,
) -> Response<Body> {
    let headers = request.headers().clone();
    if action == AccountAction::ChangePassword {
        return change_password(app, request, conn).await;
    }
    let (session, form, _) = match session_post::<ActionForm>(app, request, |_| login_redirect(app, HOME)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    // Account changes need a full session; a half-logged-in one finishes signing in first.
    let Session::Full(full) = session else { return send_to(app, Destination::Challenge, HOME) };
    let user = full.user().name.to_string();
    match action {
        AccountAction::SignOutEverywhere => sign_out_everywhere(app, full).await,
        AccountAction::EndSession => match app.sessions.end_by_handle(&user, &form.session).await {
            // Ending this very session from the list is signing out.
            Ok(true) if form.session == full.key().handle() => signed_out(app),
            Ok(true) => {
                tracing::info!(target: "portcullis::security", %user, "signed out another session");
                go_to(app, &format!("{HOME}?done=session-ended"))
            }
            // Not one of this user's sessions (any more): nothing happened, and nothing is said.
            Ok(false) => go_to(app, HOME),
            Err(e) => {
                tracing::error!("could not end a session: {e}");
                unavailable()
            }
        },
        AccountAction::ForgetBrowser => {
            let forgotten = app
                .accounts
                .update(full.user(), |record| {
                    record.remembered.retain(|b| b.id != form.browser);
                    Ok::<_, std::convert::Infallible>(())
                })
                .await;
            match forgotten {
                Ok(_) => go_to(app, &format!("{HOME}?done=forgotten")),
                Err(e) => {
                    tracing::error!("could not forget a browser: {e}");
                    unavailable()
                }
            }
        }
        AccountAction::PrimaryTotp | AccountAction::PrimaryEmail => {
            let kind = if action == AccountAction::PrimaryTotp { FactorKind::Totp } else { FactorKind::Email };
            let chosen = app
                .accounts
                .update(full.user(), |record| {
                    record.primary = Some(kind);
                    // Only a factor the account has can come first.
                    record.primary_factor().filter(|p| *p == kind).map(|_| ()).ok_or(())
                })
                .await;
            if let Err(e) = chosen {
                tracing::error!("could not choose a primary factor: {e}");
            }
            go_to(app, HOME)
        }
        AccountAction::RemoveTotp | AccountAction::RemoveEmail | AccountAction::RegenerateCodes => {
            match sensitive(app, &headers, Some(full), &action.path()).await {
                Gate::Go(full) => sensitive_action(app, action, full).await,
                Gate::Answer(response) => response,
            }
        }
        AccountAction::ChangePassword => unreachable!("handled above"),
    }
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    /// For [`AccountAction::EndSession`]: which one.
    #[serde(default)]
    session: String,
    /// For [`AccountAction::ForgetBrowser`]: which one.
    #[serde(default)]
    browser: String,
}

impl SessionForm for ActionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Ends every session of the user, and forgets every remembered browser: whoever else had a way
/// in has none now.
async fn sign_out_everywhere(app: &App, full: FullSession) -> Response<Body> {
    let user = full.user().name.to_string();
    let forgotten = app
        .accounts
        .update(full.user(), |record| {
            record.remembered.clear();
            Ok::<_, std::convert::Infallible>(())
        })
        .await;
    match (forgotten, app.sessions.end_all_for(&user).await) {
        (Ok(_), Ok(count)) => {
            tracing::info!(target: "portcullis::security", %user, count, "signed out everywhere");
            with_user(signed_out(app), full.user())
        }
        (Err(e), _) => {
            tracing::error!("could not forget remembered browsers: {e}");
            unavailable()
        }
        (_, Err(e)) => {
            tracing::error!("could not end sessions: {e}");
            unavailable()
        }
    }
}

/// Removes a factor or makes new recovery codes, for a full session with a fresh second factor.
async fn sensitive_action(app: &App, action: AccountAction, full: FullSession) -> Response<Body> {
    let user = full.user().name.to_string();
    let req = policy::requirement(&app.config().mfa, full.user(), app.clock.now());
    if req == Requirement::Off {
        return pages::error(
            StatusCode::NOT_FOUND,
            "Page not found",
            "Two-step verification is switched off here.",
            None,
        );
    }
    let now = app.clock.now();
    if action == AccountAction::RegenerateCodes {
        let pepper = app.sealer.pepper();
        let made = app
            .accounts
            .update(full.user(), |record| {
                if !record.has_second_factor() {
                    return Err(());
                }
                let (codes, records) = recovery::new_set(pepper);
                record.recovery_codes = records;
                record.recovery_generated_at = Some(now);
                Ok(codes)
            })
            .await;
        return match made {
            Ok(Ok(codes)) => {
                tracing::info!(target: "portcullis::security", %user, "recovery codes regenerated");
                app.notifier.send(full.user(), SecurityEvent::CodesRegenerated, now, true);
                app.pending.put_codes(full.key(), codes);
                send_to(app, Destination::RecoveryCodes, &format!("{HOME}?done=codes"))
            }
            Ok(Err(())) => go_to(app, HOME),
            Err(e) => {
                tracing::error!("could not make recovery codes: {e}");
                unavailable()
            }
        };
    }
    let kind = if action == AccountAction::RemoveTotp { FactorKind::Totp } else { FactorKind::Email };
    let removed = app
        .accounts
        .update(full.user(), |record| {
            let (has, other) = match kind {
                FactorKind::Totp => (record.totp.is_some(), record.email.is_some()),
                FactorKind::Email => (record.email.is_some(), record.totp.is_some()),
            };
            if !has {
                return Err(Removal::NothingToRemove);
            }
            if req == Requirement::Required && !other {
                return Err(Removal::LastRequired);
            }
            match kind {
                FactorKind::Totp => record.totp = None,
                FactorKind::Email => record.email = None,
            }
            if !other {
                // The last factor: 2FA is off, and what stood in for it goes with it.
                record.recovery_codes.clear();
                record.recovery_generated_at = None;
                record.primary = None;
                record.remembered.clear();
            }
            Ok(other)
        })
        .await;
    match removed {
        Ok(Ok(other_remains)) => {
            let name = if kind == FactorKind::Totp { "The authenticator app" } else { "Codes by email" };
            tracing::warn!(target: "portcullis::security", %user, factor = ?kind, "second factor removed");
            let event =
                if other_remains { SecurityEvent::FactorRemoved { factor: name } } else { SecurityEvent::Removed };
            app.notifier.send(full.user(), event, now, true);
            go_to(app, &format!("{HOME}?done={}", if other_remains { "factor-removed" } else { "removed" }))
        }
        Ok(Err(Removal::NothingToRemove)) => go_to(app, HOME),
        Ok(Err(Removal::LastRequired)) => pages::error(
            StatusCode::FORBIDDEN,
            "Cannot turn off",
            "Your account requires two-step verification, so its last second step cannot be removed. To use a new phone, choose \"Move to a new phone\" on your account page.",
            Some((HOME, "Back to your account")),
        ),
        Err(e) => {
            tracing::error!("could not remove a factor: {e}");
            unavailable()
        }
    }
}

/// Why a factor was not removed.
enum Removal {
    /// The account does not have it (a stale page): nothing changes.
    NothingToRemove,
    /// It is the last one, and the account requires two-step verification.
    LastRequired,
}

fn password_page(
    full: &FullSession,
    status: StatusCode,
    error: Option<LoginError>,
    new_error: Option<NewPasswordError>,
) -> Response<Body> {
    let page = PasswordPage { username: full.user().name.as_str(), csrf: full.csrf_token(), error, new_error };
    with_user(pages::html(status, &page), full.user())
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default, deserialize_with = "zeroizing")]
    current: Zeroizing<String>,
    #[serde(default, deserialize_with = "zeroizing")]
    new: Zeroizing<String>,
    #[serde(default, deserialize_with = "zeroizing")]
    confirm: Zeroizing<String>,
}

impl SessionForm for PasswordForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A new password: the current one proven (regulated like a sign-in), the new one meeting the
/// rule, written to the users file. Every other session ends and remembered browsers are
/// forgotten; this session carries on under the new password.
async fn change_password(app: &Arc<App>, request: Request<Incoming>, conn: &Connection) -> Response<Body> {
    let path = AccountAction::ChangePassword.path();
    let headers = request.headers().clone();
    let (session, form, _) = match session_post::<PasswordForm>(app, request, |_| login_redirect(app, &path)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let Session::Full(full) = session else { return send_to(app, Destination::Challenge, &path) };
    let full = match sensitive(app, &headers, Some(full), &path).await {
        Gate::Go(full) => full,
        Gate::Answer(response) => return response,
    };
    let name = full.user().name.to_string();
    let fix = |problem| password_page(&full, StatusCode::BAD_REQUEST, None, Some(problem));
    if *form.new != *form.confirm {
        return fix(NewPasswordError::Mismatch);
    }
    match crate::domain::password::check_new_password(&form.new) {
        Err(crate::domain::password::WeakPassword::TooShort) => return fix(NewPasswordError::TooShort),
        Err(crate::domain::password::WeakPassword::TooLong) => return fix(NewPasswordError::TooLong),
        Ok(()) => {}
    }
    if *form.new == *form.current {
        return fix(NewPasswordError::SameAsOld);
    }
    if form.current.is_empty() || form.current.len() > crate::domain::password::MAX_PASSWORD_BYTES {
        return password_page(&full, StatusCode::BAD_REQUEST, Some(LoginError::Malformed), None);
    }
    let again = |status, error| password_page(&full, status, Some(error), None);
    if let Err(response) = check_password(app, &headers, conn, &name, form.current, again).await {
        return response;
    }
    let hash = match app.passwords.hash(form.new).await {
        Ok(hash) => hash,
        Err(e) => {
            tracing::error!("could not hash a new password: {e}");
            return unavailable();
        }
    };
    let users_file = app.config().users_file.clone();
    let written = tokio::task::spawn_blocking(move || {
        crate::domain::users::edit::set_password_hash(&users_file, &name, &hash)?;
        Ok::<_, crate::domain::users::UsersError>(())
    })
    .await;
    let name = full.user().name.to_string();
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(user = %name, "could not write a new password to the users file: {e}");
            return password_page(&full, StatusCode::SERVICE_UNAVAILABLE, None, Some(NewPasswordError::CannotSave));
        }
        Err(e) => {
            tracing::error!("password change task failed: {e}");
            return unavailable();
        }
    }
    if let Err(e) = app.users.reload() {
        tracing::error!("the users file was written but could not be reloaded: {e}");
    }
    let Some(user) = app.users.get(&name) else { return unavailable() };
    tracing::warn!(target: "portcullis::security", user = %name, "password changed by its owner");
    let now = app.clock.now();
    let forgotten = app
        .accounts
        .update(&user, |record| {
            record.remembered.clear();
            Ok::<_, std::convert::Infallible>(())
        })
        .await;
    if let Err(e) = forgotten {
        tracing::error!("could not forget remembered browsers: {e}");
    }
    app.notifier.send(&user, SecurityEvent::PasswordChanged, now, true);
    let this = full.key().clone();
    let renewed = app.sessions.renew_credentials(full, user.clone()).await;
    let (id, full) = match renewed {
        Ok(renewed) => renewed,
        Err(e) => {
            tracing::error!("could not keep the session after a password change: {e}");
            let mut response = go_to(app, Destination::Login.path());
            clear_cookie(&mut response, app.session_cookie(), app.config().public_url.is_https());
            return response;
        }
    };
    app.pending.rekey(&this, full.key());
    // The others were made under the old password and would end at their next request anyway;
    // ending them now also takes them off the list.
    if let Err(e) = app.sessions.end_all_but(&name, full.key()).await {
        tracing::error!("could not end the other sessions: {e}");
    }
    let mut response = go_to(app, &format!("{HOME}?done=password"));
    response.headers_mut().append(header::SET_COOKIE, session_cookie_header(app, &id, full.expires_at()));
    with_user(response, &user)
}
