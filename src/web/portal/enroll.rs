//! Setting up an authenticator app: inline at login when 2FA is required, from the account page,
//! or to move to a new phone; then the one-time display of recovery codes.

use std::sync::Arc;

use dashmap::DashMap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::challenge::CodeForm;
use super::{
    SessionForm, go_to, login_redirect, return_to_from_query, send_to, session_cookie_header, session_post,
    unavailable, with_user,
};
use crate::base::clock::UnixTime;
use crate::base::secret::Secret;
use crate::domain::factors::{FactorKind, TotpRecord, totp};
use crate::domain::policy::{self, Requirement};
use crate::domain::session::{AuthMethod, Lookup, PartialSession, Session, SessionKey};
use crate::web::app::App;
use crate::web::pages::{self, Body, CodeError, EnrollPage, RecoveryCodesPage};
use crate::web::route::Destination;

/// Enrollment state kept server side between page loads, per session (never in a cookie, and
/// never shared between two sessions of one user).
#[derive(Default)]
pub struct Pending(DashMap<SessionKey, PendingState>);

#[derive(Default)]
struct PendingState {
    /// The secret being set up, until a code from it is entered.
    totp_secret: Option<(Secret, UnixTime)>,
    /// Recovery codes just made, until the user confirms they saved them.
    codes: Option<Vec<String>>,
    /// The factor just enrolled, which the session is promoted with once the codes are saved.
    enrolled_with: Option<AuthMethod>,
}

impl Pending {
    fn secret(&self, key: &SessionKey, now: UnixTime, max_age: i64) -> Secret {
        let mut state = self.0.entry(key.clone()).or_default();
        match &state.totp_secret {
            // Reloading the page keeps the secret, so a code from an app that already scanned it
            // still works.
            Some((secret, made)) if now - made < max_age => secret.clone(),
            _ => {
                let secret = Secret::new(totp::new_secret());
                state.totp_secret = Some((secret.clone(), now));
                secret
            }
        }
    }

    fn take_secret(&self, key: &SessionKey, now: UnixTime, max_age: i64) -> Option<Secret> {
        let mut state = self.0.get_mut(key)?;
        match state.totp_secret.take() {
            Some((secret, made)) if now - made < max_age => Some(secret),
            _ => None,
        }
    }

    fn keep_secret(&self, key: &SessionKey, secret: Secret, made: UnixTime) {
        self.0.entry(key.clone()).or_default().totp_secret = Some((secret, made));
    }

    pub(super) fn put_codes(&self, key: &SessionKey, codes: Vec<String>) {
        self.0.entry(key.clone()).or_default().codes = Some(codes);
    }

    fn codes(&self, key: &SessionKey) -> Option<Vec<String>> {
        self.0.get(key).and_then(|s| s.codes.clone())
    }

    pub fn forget(&self, key: &SessionKey) {
        self.0.remove(key);
    }

    /// Drops state for sessions that no longer exist (abandoned enrollments).
    pub fn retain_live(&self, is_live: impl Fn(&SessionKey) -> bool) {
        self.0.retain(|key, _| is_live(key));
    }

    /// Moves state to a session's new id after rotation.
    pub(super) fn rekey(&self, from: &SessionKey, to: &SessionKey) {
        if let Some((_, state)) = self.0.remove(from) {
            self.0.insert(to.clone(), state);
        }
    }
}

/// Whether a session may set up a factor of some kind now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Setup {
    /// Add it: the account lacks it.
    Add,
    /// Replace the account's authenticator with a new one (a new phone).
    Replace,
    /// The account is protected already: prove a factor again first.
    StepUpFirst,
    No,
}

/// Whether this session may set up a factor of `kind`. 2FA must be on and the kind offered; then
/// either the account has no factor at all (inline enrollment, or after an operator reset or a
/// recovery link, where the password is what was proven), or this is a full session with a
/// recently proven second factor, so a stolen session cookie alone can neither add a factor to a
/// protected account nor swap its authenticator.
pub(super) fn may_set_up(app: &App, session: &Session, kind: FactorKind) -> Setup {
    let record = app.accounts.get(session.user());
    let config = app.config();
    let (offered, has) = match kind {
        FactorKind::Totp => (config.mfa.totp, record.totp.is_some()),
        FactorKind::Email => (config.mfa.email_otp, record.email.is_some()),
    };
    let requirement = policy::requirement(&config.mfa, session.user(), app.clock.now());
    // Only an app can be moved to a new device; an email address is proven anew by adding it.
    if !offered || requirement == Requirement::Off || (has && kind == FactorKind::Email) {
        return Setup::No;
    }
    if !record.has_second_factor() {
        return Setup::Add;
    }
    match session {
        Session::Partial(_) => Setup::No,
        Session::Full(full) => {
            let window = config.mfa.step_up_window.as_secs() as i64;
            match (policy::recently_proven(full.second_factor_at(), app.clock.now(), window), has) {
                (false, _) => Setup::StepUpFirst,
                (true, false) => Setup::Add,
                (true, true) => Setup::Replace,
            }
        }
    }
}

fn render(
    app: &App,
    session: &Session,
    return_to: &str,
    error: Option<CodeError>,
    status: StatusCode,
) -> Response<Body> {
    let email_option = (may_set_up(app, session, FactorKind::Email) == Setup::Add)
        .then(|| crate::domain::factors::email::masked(&session.user().email));
    let issuer = &app.config().mfa.issuer;
    let totp_setup = may_set_up(app, session, FactorKind::Totp);
    let required = matches!(session, Session::Partial(_));
    let csrf = session.csrf_token();
    if !matches!(totp_setup, Setup::Add | Setup::Replace) {
        let page = EnrollPage {
            required,
            replace: false,
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
        };
        return with_user(pages::html(status, &page), session.user());
    }
    let max_age = app.config().session.partial_timeout.as_secs() as i64;
    let secret = app.pending.secret(session.key(), app.clock.now(), max_age);
    let account = session.user().name.as_str();
    let (Ok(uri), encoded) = (totp::provisioning_uri(secret.expose(), issuer, account), totp::base32(secret.expose()))
    else {
        return pages::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The setup code could not be made.",
            None,
        );
    };
    let qr = crate::domain::factors::qr::png_data_url(&uri).unwrap_or_else(|e| {
        tracing::error!("QR code failed: {e}");
        String::new()
    });
    let page = EnrollPage {
        required,
        replace: totp_setup == Setup::Replace,
        totp: true,
        issuer,
        qr: &qr,
        uri: &uri,
        secret: &encoded,
        secret_grouped: &totp::grouped(&encoded),
        error,
        csrf,
        return_to,
        email_option,
    };
    with_user(pages::html(status, &page), session.user())
}

/// This page again, with the same place to go afterwards (for a detour through another page).
fn enroll_again(return_to: &str) -> String {
    let query = serde_urlencoded::to_string([("rd", return_to)]).unwrap_or_default();
    format!("{}?{query}", Destination::Enroll.path())
}

pub(super) async fn form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.session(request.headers()).await else {
        // Signed out: sign in, then set up, then go on.
        return login_redirect(app, &enroll_again(&return_to));
    };
    match (may_set_up(app, &session, FactorKind::Totp), may_set_up(app, &session, FactorKind::Email), &session) {
        (Setup::Add | Setup::Replace, _, _) => render(app, &session, &return_to, None, StatusCode::OK),
        (Setup::StepUpFirst, _, _) => send_to(app, Destination::Challenge, &enroll_again(&return_to)),
        // No app allowed here, but codes by email are: the same page, with only that choice.
        (_, Setup::Add, _) => render(app, &session, &return_to, None, StatusCode::OK),
        (_, _, Session::Partial(_)) if !app.accounts.get(session.user()).has_second_factor() => {
            // Nothing to prove and nothing that may be set up: say so rather than send the
            // browser back to the challenge page, which would send it here again.
            with_user(
                pages::error(
                    StatusCode::FORBIDDEN,
                    "Two-step verification cannot be set up",
                    "Your account needs a second step, but none can be set up here at the moment. Tell your administrator.",
                    Some(("/.portcullis/logout", "Sign out")),
                ),
                session.user(),
            )
        }
        (_, _, Session::Partial(_)) => send_to(app, Destination::Challenge, &return_to),
        (_, _, Session::Full(_)) => go_to(app, Destination::Account.path()),
    }
}

pub(super) async fn submit(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, form, return_to) = match session_post::<CodeForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let setup = may_set_up(app, &session, FactorKind::Totp);
    if !matches!(setup, Setup::Add | Setup::Replace) {
        return go_to(app, Destination::Account.path());
    }
    let now = app.clock.now();
    let max_age = app.config().session.partial_timeout.as_secs() as i64;
    let Some(secret) = app.pending.take_secret(session.key(), now, max_age) else {
        // The setup expired (or never started): show a fresh one.
        return render(app, &session, &return_to, None, StatusCode::OK);
    };
    let step = match totp::verify(secret.expose(), &form.code, now, 0) {
        Ok(step) => step,
        Err(e) => {
            // Keep the same secret so the user can simply try the next code.
            app.pending.keep_secret(session.key(), secret, now);
            let error = if e == totp::TotpError::Replayed { CodeError::Replayed } else { CodeError::Wrong };
            return render(app, &session, &return_to, Some(error), StatusCode::UNAUTHORIZED);
        }
    };
    let user = session.user().name.to_string();
    let sealed = match app.sealer.seal(secret.expose()) {
        Ok(sealed) => sealed,
        Err(e) => {
            tracing::error!("sealing failed: {e}");
            return unavailable();
        }
    };
    let pepper = app.sealer.pepper();
    let replace = setup == Setup::Replace;
    let saved = app
        .accounts
        .update(session.user(), |record| {
            if record.totp.is_some() != replace {
                return Err("the account changed meanwhile");
            }
            record.totp =
                Some(TotpRecord { sealed_secret: sealed, enrolled_at: now, last_used_at: Some(now), last_step: step });
            Ok(record.ensure_recovery_codes(pepper, now))
        })
        .await;
    let codes = match saved {
        Ok(Ok(codes)) => codes,
        Ok(Err(_)) => return go_to(app, Destination::Account.path()),
        Err(e) => {
            tracing::error!("could not save a new factor: {e}");
            return unavailable();
        }
    };
    let event = if replace {
        tracing::warn!(target: "portcullis::security", %user, "authenticator replaced");
        crate::domain::notify::SecurityEvent::AuthenticatorReplaced
    } else {
        tracing::info!(target: "portcullis::security", %user, "authenticator enrolled");
        crate::domain::notify::SecurityEvent::Enrolled
    };
    app.notifier.send(session.user(), event, now, true);
    factor_added(app, session, codes, AuthMethod::Otp, &return_to).await
}

/// After a new factor is saved. A half-logged-in session becomes full (through the recovery
/// codes page when new codes were made); a full session records the code just entered as a
/// fresh second factor.
pub(super) async fn factor_added(
    app: &App,
    session: Session,
    codes: Option<Vec<String>>,
    method: AuthMethod,
    return_to: &str,
) -> Response<Body> {
    let full = match session {
        Session::Partial(partial) => {
            let Some(codes) = codes else { return finish_inline_enrollment(app, partial, method, return_to).await };
            app.pending.put_codes(partial.key(), codes);
            app.pending.0.entry(partial.key().clone()).or_default().enrolled_with = Some(method);
            return send_to(app, Destination::RecoveryCodes, return_to);
        }
        Session::Full(full) => full,
    };
    let old = full.key().clone();
    match app.sessions.step_up(full, method).await {
        Ok((id, full)) => {
            app.pending.rekey(&old, full.key());
            let mut response = match codes {
                Some(codes) => {
                    app.pending.put_codes(full.key(), codes);
                    send_to(app, Destination::RecoveryCodes, return_to)
                }
                None => go_to(app, return_to),
            };
            response.headers_mut().append(http::header::SET_COOKIE, session_cookie_header(app, &id, full.expires_at()));
            response
        }
        Err(e) => {
            tracing::error!("could not update a session: {e}");
            unavailable()
        }
    }
}

pub(super) async fn recovery_codes_page(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.session(request.headers()).await else { return login_redirect(app, &return_to) };
    if !codes_belong_to(app, &session) {
        return send_to(app, Destination::Challenge, &return_to);
    }
    let Some(codes) = app.pending.codes(session.key()) else { return go_to(app, Destination::Account.path()) };
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
    with_user(pages::html(StatusCode::OK, &page), session.user())
}

#[derive(Deserialize)]
pub(super) struct SavedForm {
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

pub(super) async fn recovery_codes_confirm(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, form, return_to) = match session_post::<SavedForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if !codes_belong_to(app, &session) {
        return send_to(app, Destination::Challenge, &return_to);
    }
    if app.pending.codes(session.key()).is_none() {
        return go_to(app, Destination::Account.path());
    }
    if form.saved.as_deref() != Some("yes") {
        return send_to(app, Destination::RecoveryCodes, &return_to);
    }
    let enrolled_with = app.pending.0.get(session.key()).and_then(|s| s.enrolled_with);
    app.pending.forget(session.key());
    match (session, enrolled_with) {
        (Session::Partial(partial), Some(method)) => finish_inline_enrollment(app, partial, method, &return_to).await,
        (Session::Partial(_), None) => send_to(app, Destination::Challenge, &return_to),
        (Session::Full(full), _) => with_user(go_to(app, &return_to), full.user()),
    }
}

/// Codes waiting to be confirmed are shown to, and confirmed by, a full session, or a partial one
/// in the middle of enrolling its first factor. Never to a session that was full when they were
/// made and has since been sent back to the second step: it must prove a factor first.
fn codes_belong_to(app: &App, session: &Session) -> bool {
    match session {
        Session::Full(_) => true,
        Session::Partial(p) => app.pending.0.get(p.key()).is_some_and(|s| s.enrolled_with.is_some()),
    }
}

async fn finish_inline_enrollment(
    app: &App,
    partial: PartialSession,
    method: AuthMethod,
    return_to: &str,
) -> Response<Body> {
    let user = partial.user().clone();
    // Only an account that now has a factor gets here (enrollment proved a code from it).
    if !app.accounts.get(&user).has_second_factor() {
        return send_to(app, Destination::Enroll, return_to);
    }
    match app.sessions.promote(partial, vec![AuthMethod::Pwd, method]).await {
        Ok((id, full)) => {
            app.accounts.record_sign_in(&user, app.clock.now()).await;
            let mut response = go_to(app, return_to);
            response.headers_mut().append(http::header::SET_COOKIE, session_cookie_header(app, &id, full.expires_at()));
            response.headers_mut().append(http::header::SET_COOKIE, super::login::known_browser_cookie(app, &user));
            with_user(response, &user)
        }
        Err(e) => {
            tracing::error!("could not promote a session: {e}");
            unavailable()
        }
    }
}
