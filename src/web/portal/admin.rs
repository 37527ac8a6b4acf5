//! The admin pages under `/.portcullis/admin`: the operations of `portcullis admin` for members of
//! `admin.group`, behind a second factor proven within `mfa.step_up_window`.
//!
//! Destructive operations take two posts: the first answers with a page saying what will happen,
//! the second (with `confirmed=yes`) does it. Nothing changes on GET.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use serde::Deserialize;

use crate::base::text::format_utc;
use crate::domain::operator::{Reply, Request as Operation, Target};
use crate::domain::session::{FullSession, Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::error::WebError;
use crate::web::forms::{SessionForm, session_post};
use crate::web::pages::{self, AdminAdoptionRow, AdminBanRow, AdminPage, AdminProviderRow, AdminUserRow, Body};
use crate::web::respond::{Answer, go_to, login_redirect, send_to, with_user};
use crate::web::route::{Destination, done};
use crate::web::state::App;

const HOME: &str = Destination::Admin.path();

/// The session, if it may use the admin pages now: a full one, of a member of `admin.group`,
/// with a second factor proven within the step-up window. Otherwise the error to show, or
/// (`Ok(Err(..))`) where to send the browser first.
fn admit(app: &App, session: Option<Session>) -> Result<Result<FullSession, Response<Body>>, WebError> {
    let Some(group) = app.config().admin.group.clone() else { return Err(WebError::NotFound) };
    let full = match session {
        None => return Ok(Err(login_redirect(app, HOME))),
        Some(Session::Partial(_)) => return Ok(Err(send_to(app, Destination::Challenge, HOME))),
        Some(Session::Full(full)) => full,
    };
    if !full.user().groups.contains(&group) {
        tracing::warn!(target: "portcullis::security", user = %full.user().name, "admin pages refused: not in the admin group");
        return Err(WebError::NotAdministrator);
    }
    if !app.has_factor(full.user()) {
        return Err(WebError::AdminNeedsSecondFactor);
    }
    if !app.recently_proven(&full) {
        return Ok(Err(send_to(app, Destination::Challenge, HOME)));
    }
    Ok(Ok(full))
}

pub(super) async fn page(app: &Arc<App>, request: &Request<ClientBody>) -> Answer {
    let session = match app.session(request.headers()).await {
        Lookup::Found(session) => Some(session),
        _ => None,
    };
    let full = match admit(app, session)? {
        Ok(full) => full,
        Err(elsewhere) => return Ok(elsewhere),
    };
    let notice = request.uri().query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "done")
            .and_then(|(_, v)| notice(&v))
    });
    let admin = app.admin();
    let operator = full.user().name.to_string();
    let (users, bans, providers) = match (
        admin.execute(Operation::Users, &operator).await,
        admin.execute(Operation::Bans, &operator).await,
        admin.execute(Operation::Providers, &operator).await,
    ) {
        (Ok(Reply::Users { users }), Ok(Reply::Bans { bans }), Ok(Reply::Providers { providers })) => {
            (users, bans, providers)
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return Err(WebError::Unavailable(format!("the admin overview: {e}")));
        }
        _ => return Err(WebError::Internal("the admin overview got an unexpected reply".into())),
    };
    let when = |t: Option<i64>| t.map_or("never".to_string(), format_utc);
    let adoption = crate::domain::operator::adoption_by_group(&users)
        .into_iter()
        .map(|g| AdminAdoptionRow {
            share: format!(
                "{:.0}%",
                if g.accounts == 0 { 0.0 } else { 100.0 * g.with_second_factor as f64 / g.accounts as f64 }
            ),
            group: if g.group == "*" { "everyone".into() } else { g.group },
            accounts: g.accounts,
            with: g.with_second_factor,
            required: g.required,
            missing: if g.missing.is_empty() { "-".into() } else { g.missing.join(", ") },
        })
        .collect();
    let users = users
        .into_iter()
        .map(|u| AdminUserRow {
            can_reset: !u.factors.is_empty(),
            can_revoke: u.full_sessions + u.partial_sessions > 0,
            sessions: format!("{} full, {} partial", u.full_sessions, u.partial_sessions),
            policy: match (u.required_from, u.requirement.as_str()) {
                (Some(at), _) => format!("Required from {}", format_utc(at)),
                (None, "required") => "Required".into(),
                (None, "off") => "Off".into(),
                (None, _) if u.declined_2fa => "Optional (declined the suggestion)".into(),
                (None, _) => "Optional".into(),
            },
            factors: factors_in_words(&u.factors, &u.security_keys, u.recovery_codes_left),
            identities: if u.identities.is_empty() { None } else { Some(u.identities.join(", ")) },
            // Every factor it had points at a provider that no longer counts (`admin factors
            // --stranded`): the operator's cue to turn one back on or send a recovery link.
            stranded: u.factors.is_empty() && !u.turned_off.is_empty(),
            enrolled: u.enrolled_at.map(format_utc),
            last_sign_in: when(u.last_sign_in),
            groups: u.groups.join(", "),
            email: u.email,
            name: u.name,
        })
        .collect();
    let bans = bans
        .into_iter()
        .map(|b| AdminBanRow {
            until: b.banned_until.map_or("-".into(), format_utc),
            locked: if b.second_factor_locked { "yes, until lifted or reset" } else { "no" },
            who: subject_in_words(&b.subject),
            subject: b.subject,
        })
        .collect();
    let mut warnings: Vec<String> = app.clock_warnings.load().iter().map(|w| format!("Clock: {w}.")).collect();
    let drift = app.factors.drift.report();
    if drift.skew_likely() {
        warnings.push(format!(
            "Clock: of the last {} accepted codes, {:.0}% matched the previous and {:.0}% the next time step. This server's clock is probably off; run `portcullis doctor`.",
            drift.samples,
            drift.previous_step * 100.0,
            drift.next_step * 100.0
        ));
    }
    if crate::domain::clock_health::kernel_clock() == crate::domain::clock_health::KernelClock::Unsynchronised
        && warnings.iter().all(|w| !w.contains("not synchronised"))
    {
        warnings.push("Clock: the kernel reports the clock as not synchronised; run a time daemon.".into());
    }
    // The configured id is shown only where two providers share a name (a retiring app and its
    // successor): elsewhere the page speaks in the names users see.
    let shared = |name: &str| providers.iter().filter(|p| p.name == name).count() > 1;
    let providers: Vec<AdminProviderRow> = providers
        .iter()
        .cloned()
        .map(|p| AdminProviderRow {
            id: (p.name.is_empty() || shared(&p.name)).then(|| p.id.clone()),
            name: if p.name.is_empty() { "-".into() } else { p.name },
            kind: match p.kind.as_str() {
                "totp" => "Authenticator app".into(),
                "email" => "Codes by email".into(),
                "webauthn" => "Security keys and passkeys".into(),
                _ => "-".into(),
            },
            status: match p.status.as_str() {
                "deprecated" => "Retiring: works, nobody can add one".into(),
                "disabled" => "Off: its factors count no more".into(),
                "not configured" => "Not configured: its factors count no more".into(),
                other => capitalised(other),
            },
            users: p.users,
        })
        .collect();
    let page =
        AdminPage { admin: &operator, csrf: full.csrf_token(), notice, warnings, users, adoption, bans, providers };
    Ok(with_user(pages::html(StatusCode::OK, &page), full.user()))
}

/// An account's factors as a person names them, never the internal names.
fn factors_in_words(factors: &[String], keys: &[String], codes_left: usize) -> String {
    let named: Vec<String> = factors
        .iter()
        .map(|f| match f.as_str() {
            "totp" => "Authenticator app".to_string(),
            "email" => "Codes by email".to_string(),
            "security_key" => format!("Security keys ({})", keys.join(", ")),
            "recovery_codes" => format!("recovery codes ({codes_left} left)"),
            other => other.to_string(),
        })
        .collect();
    if named.is_empty() { "Not set up".into() } else { named.join(", ") }
}

/// `account:alice` as "Account alice", `address:203.0.113.7` as "Address 203.0.113.7".
fn subject_in_words(subject: &str) -> String {
    match subject.split_once(':') {
        Some(("account", name)) => format!("Account {name}"),
        Some(("address", ip)) => format!("Address {ip}"),
        Some(("device", _)) => "A remembered browser".to_string(),
        _ => subject.to_string(),
    }
}

fn notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "reset" => "Two-step verification was reset; the user was emailed.",
        "revoked" => "The sessions were ended.",
        "downgraded" => "Every session must prove its second factor again (sessions without one were ended).",
        "unbanned" => "The ban was lifted.",
        "link" => "A one-time recovery link was emailed to the user.",
        _ => return None,
    })
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    op: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    confirmed: String,
}

impl SessionForm for ActionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }

    fn return_to(&self) -> Option<&str> {
        Some(HOME)
    }
}

/// What an operation does, for the confirmation page; `None` for the harmless ones.
fn consequence(op: &str, target: &str) -> Option<(String, String, &'static str)> {
    Some(match op {
        "reset-2fa" => (
            format!("Reset two-step verification for {target}?"),
            format!("{target}'s second factors and recovery codes are removed and their sessions end. Do this only when you are sure who asked: they will set up a new factor with just their password. They are emailed."),
            "Reset",
        ),
        "recovery-link" => (
            format!("Email {target} a recovery link?"),
            format!("{target} gets a one-time link at their own email address. With it and their password, they replace their second factors; the old ones stop working. Send it only if they asked and you are sure it is them."),
            "Email the link",
        ),
        "revoke" => (format!("End every session of {target}?"), format!("{target} is signed out on every device."), "End sessions"),
        "revoke-all" => ("End every session?".into(), "Everyone is signed out on every device, you included.".into(), "End every session"),
        "downgrade-all" => (
            "Ask every session for its second factor again?".into(),
            "Every signed-in person, you included, must prove their second factor at their next request; people without one are signed out and sign in again.".into(),
            "Ask everyone",
        ),
        _ => return None,
    })
}

pub(super) async fn action(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<ActionForm>(app, request).await?;
    let form = posted.form;
    let Some(session) = posted.session else { return Ok(login_redirect(app, HOME)) };
    let full = match admit(app, Some(session))? {
        Ok(full) => full,
        Err(elsewhere) => return Ok(elsewhere),
    };
    let operation = match form.op.as_str() {
        "reset-2fa" => Operation::Reset2fa { user: form.target.clone() },
        "revoke" => Operation::Revoke { target: Target::User(form.target.clone()) },
        "revoke-all" => Operation::Revoke { target: Target::Everyone },
        "downgrade-all" => Operation::DowngradeAll,
        "unban" => Operation::Unban { subject: form.target.clone() },
        // From the page, a link is only ever emailed: it goes to the account's own address.
        "recovery-link" => Operation::RecoveryLink { user: form.target.clone(), valid_for: None, email: true },
        _ => return Err(WebError::NoSuchAction),
    };
    if form.confirmed != "yes"
        && let Some((title, consequence, button)) = consequence(&form.op, &form.target)
    {
        let page = pages::AdminConfirmPage {
            title: &title,
            consequence: &consequence,
            button,
            csrf: full.csrf_token(),
            op: &form.op,
            target: &form.target,
        };
        return Ok(with_user(pages::html(StatusCode::OK, &page), full.user()));
    }
    let operator = full.user().name.to_string();
    let reply = app
        .admin()
        .execute(operation, &operator)
        .await
        .map_err(|e| WebError::Unavailable(format!("an admin action failed: {e}")))?;
    let notice = match reply {
        Reply::Reset { .. } => "reset",
        Reply::Revoked { .. } => "revoked",
        Reply::Downgraded { .. } => "downgraded",
        Reply::Unbanned { .. } => "unbanned",
        Reply::RecoveryLink { .. } => "link",
        Reply::Refused { reason } => return Err(WebError::ActionRefused(reason)),
        _ => "",
    };
    Ok(with_user(go_to(app, &done(Destination::Admin, notice)), full.user()))
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}
