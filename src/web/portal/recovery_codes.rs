//! The one-time display of freshly made recovery codes, and the confirmation that they were
//! saved. For a session that set up its first factor at sign-in, confirming is what makes it full.

use std::sync::Arc;

use http::{Request, StatusCode};
use serde::Deserialize;

use super::second_step::{Enough, complete_sign_in};
use crate::domain::session::{Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::forms::{SessionForm, return_to_from_query, session_post};
use crate::web::pages::{self, RecoveryCodesPage};
use crate::web::respond::{Answer, go_to, login_redirect, send_to, with_user};
use crate::web::route::Destination;
use crate::web::state::App;

/// Codes waiting to be confirmed are shown to, and confirmed by, a full session, or a partial one
/// in the middle of enrolling its first factor. Never to a session that was full when they were
/// made and has since been sent back to the second step: it must prove a factor first.
async fn codes_belong_to(app: &App, session: &Session) -> bool {
    match session {
        Session::Full(_) => true,
        // Unknown (the store did not answer): not shown.
        Session::Partial(partial) => app.pending.is_enrolling(partial.key()).await.unwrap_or_else(|e| {
            tracing::warn!("setup state could not be read: {e}");
            false
        }),
    }
}

pub(super) async fn page(app: &App, request: &Request<ClientBody>) -> Answer {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.session(request.headers()).await else {
        return Ok(login_redirect(app, &return_to));
    };
    if !codes_belong_to(app, &session).await {
        return Ok(send_to(app, Destination::Challenge, &return_to));
    }
    let Some(codes) = app.pending.codes(session.key()).await? else {
        return Ok(go_to(app, Destination::Account.path()));
    };
    let issuer = &app.config().mfa.issuer;
    let text = format!(
        "Recovery codes for {} at {issuer}\nEach code works once. Keep them somewhere safe.\n\n{}\n",
        session.user().name,
        codes.join("\n")
    );
    let download = format!(
        "data:text/plain;charset=utf-8,{}",
        percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC)
    );
    let file_name =
        format!("{}-recovery-codes.txt", issuer.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "-"));
    let page = RecoveryCodesPage {
        codes: &codes,
        download: &download,
        file_name: &file_name,
        csrf: session.csrf_token(),
        return_to: &return_to,
    };
    Ok(with_user(pages::html(StatusCode::OK, &page), session.user()))
}

#[derive(Deserialize)]
struct SavedForm {
    #[serde(default)]
    csrf: String,
    saved: Option<String>,
    rd: Option<String>,
}

impl SessionForm for SavedForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn return_to(&self) -> Option<&str> {
        self.rd.as_deref()
    }
}

pub(super) async fn confirm(app: &Arc<App>, request: Request<ClientBody>) -> Answer {
    let posted = session_post::<SavedForm>(app, request).await?;
    let (form, return_to) = (posted.form, posted.return_to);
    let Some(session) = posted.session else { return Ok(login_redirect(app, &return_to)) };
    if !codes_belong_to(app, &session).await {
        return Ok(send_to(app, Destination::Challenge, &return_to));
    }
    if app.pending.codes(session.key()).await?.is_none() {
        return Ok(go_to(app, Destination::Account.path()));
    }
    if form.saved.as_deref() != Some("yes") {
        return Ok(send_to(app, Destination::RecoveryCodes, &return_to));
    }
    let enrolled_with = app.pending.finish(session.key()).await?;
    match (session, enrolled_with) {
        (Session::Partial(partial), Some(proof)) => {
            // Only an account that now has a factor gets here (setting it up proved a code).
            if !app.has_factor(partial.user()) {
                return Ok(send_to(app, Destination::Enroll, &return_to));
            }
            let then = go_to(app, &return_to);
            Ok(complete_sign_in(app, partial, Enough::SecondFactor(proof), then).await?.0)
        }
        (Session::Partial(_), None) => Ok(send_to(app, Destination::Challenge, &return_to)),
        (Session::Full(full), _) => Ok(with_user(go_to(app, &return_to), full.user())),
    }
}
