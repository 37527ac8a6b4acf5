//! The account page and what can be done from it: second factors (remove, choose the first one,
//! new recovery codes), remembered browsers, and sessions. The password form is in
//! `account_password.rs`.
//!
//! A sensitive change first shows what it will do (GET), then does it (POST); both need a second
//! factor proven within `mfa.step_up_window` when the account has one. Without a fresh one the
//! browser is sent to prove it and comes back to the same page, so the change it asked for is
//! carried through rather than dropped.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode};
use serde::Deserialize;

use super::login::signed_out;
use crate::base::text::format_utc;
use crate::config::{ProviderKind, Providers};
use crate::domain::factors::FactorKind;
use crate::domain::factors::email::masked;
use crate::domain::factors::providers::{self, counts};
use crate::domain::notify::SecurityEvent;
use crate::domain::policy::Requirement;
use crate::domain::session::{FullSession, Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::error::WebError;
use crate::web::forms::{SessionForm, session_post};
use crate::web::pages::{self, AccountConfirmPage, Body};
use crate::web::respond::{Answer, go_to, login_redirect, send_to, with_user};
use crate::web::route::{AccountAction, Destination, done};
use crate::web::state::App;

const HOME: &str = Destination::Account.path();

/// Where to send a browser first (to sign in, or to prove a factor), as the answer to give.
pub(super) type Elsewhere = Box<Response<Body>>;

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
        "key-on" => "Your security key is added. You will be asked for it when you sign in.",
        "key-removed" => "That security key was removed. Your other second steps and your recovery codes still work.",
        "identity-linked" => "That account now signs you in here too. Your second step still applies.",
        "identity-unlinked" => "That account no longer signs you in here.",
        _ => return None,
    })
}

/// The full session a request must have for the account pages, or the answer that sends it
/// where it must go first (and back to `here` afterwards).
pub(super) async fn full_session(app: &App, headers: &HeaderMap, here: &str) -> Result<FullSession, Elsewhere> {
    match app.session(headers).await {
        Lookup::Found(Session::Full(full)) => Ok(full),
        // Half logged in: finish the second factor first, then come back here.
        Lookup::Found(Session::Partial(_)) => Err(Box::new(send_to(app, Destination::Challenge, here))),
        _ => Err(Box::new(login_redirect(app, here))),
    }
}

pub(super) async fn page(app: &App, request: &Request<ClientBody>) -> Answer {
    let full = match full_session(app, request.headers(), HOME).await {
        Ok(full) => full,
        Err(elsewhere) => return Ok(*elsewhere),
    };
    let user = full.user();
    let record = app.account(user);
    let config = app.config();
    let now = app.clock.now();
    let requirement = app.requirement(user);
    let providers = &config.mfa.providers;
    let (app_counts, email_counts) =
        (counts(&record, providers, FactorKind::Totp), counts(&record, providers, FactorKind::Email));
    let keys_count = counts(&record, providers, FactorKind::SecurityKey);
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
            host: s.host,
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
    let identities: Vec<pages::IdentityRow> = record
        .identities
        .iter()
        .map(|i| pages::IdentityRow {
            name: config.login.oidc.iter().find(|p| p.id == i.provider).map_or(i.provider.clone(), |p| p.name.clone()),
            provider: i.provider.clone(),
            subject: i.subject.clone(),
            linked: format_utc(i.linked_at),
        })
        .collect();
    let link_offers: Vec<(String, String)> = config
        .login
        .oidc
        .iter()
        .filter(|p| !record.identities.iter().any(|i| i.provider == p.id))
        .map(|p| (p.name.clone(), format!("/.portcullis/login/oidc/{}?link=1", p.id)))
        .collect();
    let page = pages::AccountPage {
        identities,
        link_offers,
        password_elsewhere: app.users.is_from_directory(full.user()),
        username: user.name.as_str(),
        display_name: &user.display_name,
        email: &user.email,
        groups: &user.groups,
        csrf: full.csrf_token(),
        notice: notice(request.uri().query().unwrap_or("")),
        // Shown when something can be set up, or the account has factors (even ones that no
        // longer count: it says so).
        mfa_enabled: requirement != Requirement::Off
            && (providers.any_enrollable()
                || config.mfa.security_keys
                || providers::factors_of(&record).next().is_some()),
        totp: record.totp.as_ref().filter(|_| app_counts).map(|t| pages::TotpSummary {
            enrolled: format_utc(t.enrolled_at),
            last_used: t.last_used_at.map(format_utc),
        }),
        recovery_left: record.recovery_codes_left(),
        email_codes: record.email.as_ref().filter(|_| email_counts).map(|e| pages::EmailSummary {
            address: masked(&e.address),
            enrolled: format_utc(e.enrolled_at),
            last_used: e.last_used_at.map(format_utc),
        }),
        email_offered: (providers.active(ProviderKind::Email).is_some() && !email_counts).then(|| masked(&user.email)),
        totp_offered: providers.active(ProviderKind::Totp).is_some(),
        primary_email: (record.primary_factor() == Some(FactorKind::Email) && email_counts)
            || (!app_counts && !keys_count),
        can_remove_totp: requirement != Requirement::Required || email_counts || keys_count,
        can_remove_email: requirement != Requirement::Required || app_counts || keys_count,
        remembered,
        security_keys: record
            .security_keys
            .iter()
            .filter(|k| providers::standing(providers.get(&k.provider)).counts)
            .map(|k| pages::KeyRow {
                id: k.id.clone(),
                name: k.name.clone(),
                created: format_utc(k.created_at),
                last_used: k.last_used_at.map(format_utc),
                synced: k.backup_eligible,
            })
            .collect(),
        keys_offered: config.mfa.security_keys,
        sessions,
        retiring: retiring_banner(&record, providers),
        turned_off: app.is_stranded(user).then(|| app.turned_off_names(user)).or_else(|| {
            // Some factors still count, others were disabled: say which stopped working.
            let off = providers::not_counting(&record, providers);
            (!off.is_empty()).then(|| app.turned_off_names(user))
        }),
    };
    Ok(with_user(pages::html(StatusCode::OK, &page), user))
}

/// The banner for deprecated providers the account relies on, with the active kind (if any) to
/// move to.
fn retiring_banner(record: &crate::domain::factors::AccountRecord, providers: &Providers) -> Option<pages::Retiring> {
    let retiring = providers::retiring(record, providers);
    if retiring.is_empty() {
        return None;
    }
    let names = retiring.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" and ");
    let instead = providers.first_enrollable().map(|p| p.name.clone());
    Some(pages::Retiring { names, instead })
}

/// Checks that `full` may make a sensitive change at `path` now: with a second factor proven
/// within the step-up window if the account has one; else the answer that sends it to prove one,
/// and back to `path`.
pub(super) fn fresh_enough(app: &App, full: FullSession, path: &str) -> Result<FullSession, Elsewhere> {
    let has_factor = app.has_factor(full.user());
    if has_factor && !app.recently_proven(&full) {
        return Err(Box::new(send_to(app, Destination::Challenge, path)));
    }
    Ok(full)
}

/// The page a sensitive action shows on GET: what it will do.
pub(super) async fn action_page(app: &App, action: AccountAction, request: &Request<ClientBody>) -> Answer {
    let path = action.path();
    let full = match full_session(app, request.headers(), &path).await.and_then(|f| fresh_enough(app, f, &path)) {
        Ok(full) => full,
        Err(elsewhere) => return Ok(*elsewhere),
    };
    let record = app.account(full.user());
    let providers = &app.config().mfa.providers;
    let (app_counts, email_counts) =
        (counts(&record, providers, FactorKind::Totp), counts(&record, providers, FactorKind::Email));
    let applies = match action {
        AccountAction::RemoveTotp => app_counts,
        AccountAction::RemoveEmail => email_counts,
        _ => app_counts || email_counts || counts(&record, providers, FactorKind::SecurityKey),
    };
    if !applies {
        // A stale link: there is nothing to confirm.
        return Ok(go_to(app, HOME));
    }
    let keys_count = counts(&record, providers, FactorKind::SecurityKey);
    let last = [app_counts, email_counts, keys_count].into_iter().filter(|c| *c).count() <= 1;
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
    Ok(with_user(pages::html(StatusCode::OK, &page), full.user()))
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
    /// For [`AccountAction::UnlinkIdentity`]: which one (provider id and subject).
    #[serde(default)]
    provider: String,
    #[serde(default)]
    subject: String,
}

impl SessionForm for ActionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn action(app: &Arc<App>, action: AccountAction, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<ActionForm>(app, request).await?;
    let form = posted.form;
    // Account changes need a full session; a half-logged-in one finishes signing in first.
    let full = match posted.session {
        None => return Ok(login_redirect(app, HOME)),
        Some(Session::Partial(_)) => return Ok(send_to(app, Destination::Challenge, HOME)),
        Some(Session::Full(full)) => full,
    };
    let user = full.user().name.to_string();
    match action {
        AccountAction::SignOutEverywhere => sign_out_everywhere(app, full).await,
        AccountAction::EndSession => match app.sessions.end_by_handle(&user, &form.session).await? {
            // Ending this very session from the list is signing out.
            true if form.session == full.key().handle() => Ok(signed_out(app)),
            true => {
                tracing::info!(target: "portcullis::security", %user, "signed out another session");
                Ok(go_to(app, &done(Destination::Account, "session-ended")))
            }
            // Not one of this user's sessions (any more): nothing happened, and nothing is said.
            false => Ok(go_to(app, HOME)),
        },
        AccountAction::ForgetBrowser => {
            app.factors.forget_browsers(full.user(), Some(&form.browser)).await?;
            Ok(go_to(app, &done(Destination::Account, "forgotten")))
        }
        AccountAction::PrimaryTotp | AccountAction::PrimaryEmail => {
            let kind = if action == AccountAction::PrimaryTotp { FactorKind::Totp } else { FactorKind::Email };
            app.factors.choose_primary(full.user(), kind).await?;
            Ok(go_to(app, HOME))
        }
        AccountAction::RemoveTotp | AccountAction::RemoveEmail | AccountAction::RegenerateCodes => {
            match fresh_enough(app, full, &action.path()) {
                Ok(full) => sensitive_action(app, action, full).await,
                Err(elsewhere) => Ok(*elsewhere),
            }
        }
        // Like a factor change: a second step proven just now first.
        AccountAction::UnlinkIdentity => {
            let full = match fresh_enough(app, full, HOME) {
                Ok(full) => full,
                Err(elsewhere) => return Ok(*elsewhere),
            };
            let accounts = &app.factors.accounts;
            if crate::domain::identities::unlink(accounts, full.user(), &form.provider, &form.subject).await? {
                let name = app
                    .config()
                    .login
                    .oidc
                    .iter()
                    .find(|p| p.id == form.provider)
                    .map_or(form.provider.clone(), |p| p.name.clone());
                tracing::warn!(target: "portcullis::security", %user, provider = %form.provider, "identity unlinked by its owner");
                app.notifier.send(
                    full.user(),
                    SecurityEvent::IdentityUnlinked { provider: name },
                    app.clock.now(),
                    true,
                );
            }
            Ok(go_to(app, &done(Destination::Account, "identity-unlinked")))
        }
        // Dispatched to `account_password.rs`; never here.
        AccountAction::ChangePassword => Err(WebError::NoSuchAction),
    }
}

/// Ends every session of the user, and forgets every remembered browser: whoever else had a way
/// in has none now.
async fn sign_out_everywhere(app: &App, full: FullSession) -> Answer {
    let user = full.user().name.to_string();
    app.factors.forget_browsers(full.user(), None).await?;
    let count = app.sessions.end_all_for(&user).await?;
    tracing::info!(target: "portcullis::security", %user, count, "signed out everywhere");
    Ok(with_user(signed_out(app), full.user()))
}

/// Removes a factor or makes new recovery codes, for a full session with a fresh second factor.
async fn sensitive_action(app: &App, action: AccountAction, full: FullSession) -> Answer {
    let user = full.user().name.to_string();
    let requirement = app.requirement(full.user());
    if requirement == Requirement::Off {
        return Err(WebError::TwoStepOff);
    }
    let now = app.clock.now();
    if action == AccountAction::RegenerateCodes {
        let Some(codes) = app.factors.regenerate_codes(full.user(), &app.config().mfa.providers, now).await? else {
            return Ok(go_to(app, HOME));
        };
        tracing::info!(target: "portcullis::security", %user, "recovery codes regenerated");
        app.notifier.send(full.user(), SecurityEvent::CodesRegenerated, now, true);
        app.pending.put_codes(full.key(), codes).await?;
        return Ok(send_to(app, Destination::RecoveryCodes, &done(Destination::Account, "codes")));
    }
    let kind = if action == AccountAction::RemoveTotp { FactorKind::Totp } else { FactorKind::Email };
    let other_remains = match app
        .factors
        .remove(full.user(), kind, requirement == Requirement::Required, &app.config().mfa.providers)
        .await
    {
        Ok(other_remains) => other_remains,
        Err(crate::domain::factors::service::RemoveError::NothingToRemove) => return Ok(go_to(app, HOME)),
        Err(e) => return Err(e.into()),
    };
    let name = if kind == FactorKind::Totp { "The authenticator app" } else { "Codes by email" };
    tracing::warn!(target: "portcullis::security", %user, factor = ?kind, "second factor removed");
    let event = if other_remains { SecurityEvent::FactorRemoved { factor: name } } else { SecurityEvent::Removed };
    app.notifier.send(full.user(), event, now, true);
    Ok(go_to(app, &done(Destination::Account, if other_remains { "factor-removed" } else { "removed" })))
}
