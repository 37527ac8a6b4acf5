//! Staged rollout: the reminder before 2FA becomes required, and the opt-out suggestion to set it
//! up where it is optional (`mfa.nudge_every`).

use std::sync::Arc;

use http::{Request, StatusCode};

use crate::base::text::format_utc;
use crate::domain::policy::Requirement;
use crate::domain::session::{Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::forms::{RdCsrfForm, return_to_from_query, session_post};
use crate::web::pages;
use crate::web::respond::{Answer, go_to, login_redirect, send_to, with_user};
use crate::web::route::Destination;
use crate::web::state::App;

/// After sign-in, before `mfa.required_after`: a reminder with the date, and two plain links (the
/// session is already full, so neither choice changes anything on the server).
pub(super) async fn reminder(app: &App, request: &Request<ClientBody>) -> Answer {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(Session::Full(full)) = app.session(request.headers()).await else {
        return Ok(login_redirect(app, &return_to));
    };
    let has = app.has_factor(full.user());
    let (Requirement::Upcoming(deadline), false) = (app.requirement(full.user()), has) else {
        // Nothing to remind of (already enrolled, or the date has passed): carry on.
        return Ok(go_to(app, &return_to));
    };
    let deadline = format_utc(deadline);
    let enroll = Destination::Enroll.with_return(&return_to, &[]);
    let page = pages::ReminderPage { deadline: &deadline, enroll: &enroll, later: &return_to };
    Ok(with_user(pages::html(StatusCode::OK, &page), full.user()))
}

/// After sign-in, under `optional` with `mfa.nudge_every`: a suggestion to set up 2FA. Two links
/// change nothing; "don't ask me again" is a POST that records the choice.
pub(super) async fn nudge(app: &App, request: &Request<ClientBody>) -> Answer {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(Session::Full(full)) = app.session(request.headers()).await else {
        return Ok(login_redirect(app, &return_to));
    };
    if app.has_factor(full.user()) {
        return Ok(go_to(app, &return_to));
    }
    let enroll = Destination::Enroll.with_return(&return_to, &[]);
    let page = pages::NudgePage {
        enroll: &enroll,
        later: &return_to,
        csrf: full.csrf_token(),
        email_codes: app.config().mfa.providers.active(crate::config::ProviderKind::Email).is_some(),
    };
    Ok(with_user(pages::html(StatusCode::OK, &page), full.user()))
}

pub(super) async fn nudge_decline(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<RdCsrfForm>(app, request).await?;
    let return_to = posted.return_to;
    let full = match posted.session {
        None => return Ok(login_redirect(app, &return_to)),
        Some(Session::Partial(_)) => return Ok(send_to(app, Destination::Challenge, &return_to)),
        Some(Session::Full(full)) => full,
    };
    app.factors.accounts.decline_nudges(full.user()).await?;
    tracing::info!(target: "portcullis::security", user = %full.user().name, "declined 2FA suggestions");
    Ok(with_user(go_to(app, &return_to), full.user()))
}
