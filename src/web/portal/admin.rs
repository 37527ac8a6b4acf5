//! The admin pages under `/.portcullis/admin`: the operations of `portcullis admin` for members of
//! `admin.group`, behind a second factor proven within `mfa.step_up_window`.
//!
//! Destructive operations take two posts: the first answers with a page saying what will happen,
//! the second (with `confirmed=yes`) does it. Nothing changes on GET.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{SessionForm, login_redirect, send_to, session_post, unavailable};
use crate::base::text::format_utc;
use crate::domain::operator::{Reply, Request as Operation, Target};
use crate::domain::policy;
use crate::domain::session::{FullSession, Lookup, Session};
use crate::web::app::{App, RequestUser};
use crate::web::pages::{self, AdminAdoptionRow, AdminBanRow, AdminPage, AdminUserRow, Body};
use crate::web::route::Destination;

const HOME: &str = "/.portcullis/admin";

/// The session, if it may use the admin pages now; otherwise where to send it instead.
fn admit(app: &App, session: Option<Session>) -> Result<FullSession, Box<Response<Body>>> {
    let Some(group) = app.config().admin.group.clone() else { return Err(Box::new(super::not_found())) };
    let full = match session {
        None => return Err(Box::new(login_redirect(app, HOME))),
        Some(Session::Partial(_)) => return Err(Box::new(send_to(app, Destination::Challenge, HOME))),
        Some(Session::Full(full)) => full,
    };
    let name = full.user().name.to_string();
    if !full.user().groups.contains(&group) {
        tracing::warn!(target: "portcullis::security", user = %name, "admin pages refused: not in the admin group");
        return Err(Box::new(pages::error(
            StatusCode::FORBIDDEN,
            "Not an administrator",
            "Your account is not in the group that administers Portcullis.",
            Some(("/", "Continue to the application")),
        )));
    }
    if !app.accounts.get(full.user()).has_second_factor() {
        return Err(Box::new(pages::error(
            StatusCode::FORBIDDEN,
            "Two-step verification first",
            "The admin pages need a second factor. Set up two-step verification for your account, then come back.",
            Some(("/.portcullis/enroll?rd=%2F.portcullis%2Fadmin", "Set it up")),
        )));
    }
    let window = app.config().mfa.step_up_window.as_secs() as i64;
    if !policy::recently_proven(full.second_factor_at(), app.clock.now(), window) {
        return Err(Box::new(send_to(app, Destination::Challenge, HOME)));
    }
    Ok(full)
}

fn with_admin(mut response: Response<Body>, full: &FullSession) -> Response<Body> {
    response.extensions_mut().insert(RequestUser(Some(full.user().name.to_string())));
    response
}

pub(super) async fn page(app: &Arc<App>, request: &Request<Incoming>) -> Response<Body> {
    let session = match app.session(request.headers()).await {
        Lookup::Found(session) => Some(session),
        _ => None,
    };
    let full = match admit(app, session) {
        Ok(full) => full,
        Err(response) => return *response,
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
    let (users, bans) =
        match (admin.execute(Operation::Users, &operator).await, admin.execute(Operation::Bans, &operator).await) {
            (Ok(Reply::Users { users }), Ok(Reply::Bans { bans })) => (users, bans),
            _ => {
                return pages::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    "The overview could not be made.",
                    None,
                );
            }
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
            factors: factors_in_words(&u.factors, u.recovery_codes_left),
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
    let drift = app.drift.report();
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
    let page = AdminPage { admin: &operator, csrf: full.csrf_token(), notice, warnings, users, adoption, bans };
    with_admin(pages::html(StatusCode::OK, &page), &full)
}

/// An account's factors as a person names them, never the internal names.
fn factors_in_words(factors: &[String], codes_left: usize) -> String {
    let named: Vec<String> = factors
        .iter()
        .map(|f| match f.as_str() {
            "totp" => "Authenticator app".to_string(),
            "email" => "Codes by email".to_string(),
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

pub(super) async fn action(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, form, _) = match session_post::<ActionForm>(app, request, |_| login_redirect(app, HOME)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let full = match admit(app, Some(session)) {
        Ok(full) => full,
        Err(response) => return *response,
    };
    let operation = match form.op.as_str() {
        "reset-2fa" => Operation::Reset2fa { user: form.target.clone() },
        "revoke" => Operation::Revoke { target: Target::User(form.target.clone()) },
        "revoke-all" => Operation::Revoke { target: Target::Everyone },
        "downgrade-all" => Operation::DowngradeAll,
        "unban" => Operation::Unban { subject: form.target.clone() },
        // From the page, a link is only ever emailed: it goes to the account's own address.
        "recovery-link" => Operation::RecoveryLink { user: form.target.clone(), valid_for: None, email: true },
        _ => return pages::error(StatusCode::BAD_REQUEST, "Unknown action", "There is no such action.", None),
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
        return with_admin(pages::html(StatusCode::OK, &page), &full);
    }
    let operator = full.user().name.to_string();
    let done = match app.admin().execute(operation, &operator).await {
        Ok(Reply::Reset { .. }) => "reset",
        Ok(Reply::Revoked { .. }) => "revoked",
        Ok(Reply::Downgraded { .. }) => "downgraded",
        Ok(Reply::Unbanned { .. }) => "unbanned",
        Ok(Reply::RecoveryLink { .. }) => "link",
        Ok(Reply::Refused { reason }) => {
            return with_admin(
                pages::error(StatusCode::BAD_REQUEST, "Not done", &reason, Some((HOME, "Back to administration"))),
                &full,
            );
        }
        Ok(_) => "",
        Err(e) => {
            tracing::error!("an admin action failed: {e}");
            return unavailable();
        }
    };
    with_admin(pages::see_other(&app.config().public_url.join_path(&format!("{HOME}?done={done}"))), &full)
}
