//! Staged rollout: the reminder before 2FA becomes required, and the opt-out suggestion to set it
//! up where it is optional (`mfa.nudge_every`).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{RdCsrfForm, go_to, login_redirect, return_to_from_query, send_to, session_post, unavailable, with_user};
use crate::base::text::format_utc;
use crate::domain::policy::{self, Requirement};
use crate::domain::session::{Lookup, Session};
use crate::web::app::App;
use crate::web::pages;
use crate::web::pages::Body;
use crate::web::route::Destination;

fn enroll_link(return_to: &str) -> String {
    let query = serde_urlencoded::to_string([("rd", return_to)]).unwrap_or_default();
    format!("{}?{query}", Destination::Enroll.path())
}

/// After sign-in, before `mfa.required_after`: a reminder with the date, and two plain links (the
/// session is already full, so neither choice changes anything on the server).
pub(super) async fn reminder(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(Session::Full(full)) = app.session(request.headers()).await else {
        return login_redirect(app, &return_to);
    };
    let requirement = policy::requirement(&app.config().mfa, full.user(), app.clock.now());
    let has = app.accounts.get(full.user()).has_second_factor();
    let (Requirement::Upcoming(deadline), false) = (requirement, has) else {
        // Nothing to remind of (already enrolled, or the date has passed): carry on.
        return go_to(app, &return_to);
    };
    let deadline = format_utc(deadline);
    let enroll = enroll_link(&return_to);
    let page = pages::ReminderPage { deadline: &deadline, enroll: &enroll, later: &return_to };
    with_user(pages::html(StatusCode::OK, &page), full.user())
}

/// After sign-in, under `optional` with `mfa.nudge_every`: a suggestion to set up 2FA. Two links
/// change nothing; "don't ask me again" is a POST that records the choice.
pub(super) async fn nudge(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(Session::Full(full)) = app.session(request.headers()).await else {
        return login_redirect(app, &return_to);
    };
    if app.accounts.get(full.user()).has_second_factor() {
        return go_to(app, &return_to);
    }
    let enroll = enroll_link(&return_to);
    let page = pages::NudgePage {
        enroll: &enroll,
        later: &return_to,
        csrf: full.csrf_token(),
        email_codes: app.config().mfa.email_otp,
    };
    with_user(pages::html(StatusCode::OK, &page), full.user())
}

pub(super) async fn nudge_decline(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, _, return_to) = match session_post::<RdCsrfForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if !matches!(session, Session::Full(_)) {
        return send_to(app, Destination::Challenge, &return_to);
    }
    let user = session.user().name.to_string();
    let declined = app
        .accounts
        .update(session.user(), |record| {
            record.nudge_declined = true;
            Ok::<_, std::convert::Infallible>(())
        })
        .await;
    match declined {
        Ok(_) => {
            tracing::info!(target: "portcullis::security", %user, "declined 2FA suggestions");
            with_user(go_to(app, &return_to), session.user())
        }
        Err(e) => {
            tracing::error!("could not record a declined suggestion: {e}");
            unavailable()
        }
    }
}
