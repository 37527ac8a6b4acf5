//! Second-factor pages: the challenge after the password (and for step-up), enrollment of an
//! authenticator (inline at login when required, or from the account page), the one-time display
//! of recovery codes, and the account page's sensitive actions.

use std::sync::Arc;

use dashmap::DashMap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{CsrfForm, SessionForm, clear_cookie, return_to_from_query, session_cookie_header, session_post};
use crate::app::{App, Connection, RequestUser};
use crate::clock::UnixTime;
use crate::factors::email::{EmailCodeError, Purpose};
use crate::factors::{FactorKind, TotpRecord, recovery, totp};
use crate::pages::{self, Body, ChallengePage, CodeError, EmailNotice, EnrollPage, RecoveryCodesPage};
use crate::policy::{self, Requirement};
use crate::regulation::{Subject, Verdict};
use crate::secret::Secret;
use crate::session::{AuthMethod, FullSession, Lookup, PartialSession, Session, SessionKey};

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

    fn put_codes(&self, key: &SessionKey, codes: Vec<String>) {
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
    fn rekey(&self, from: &SessionKey, to: &SessionKey) {
        if let Some((_, state)) = self.0.remove(from) {
            self.0.insert(to.clone(), state);
        }
    }
}

pub(super) fn login_redirect(app: &App, return_to: &str) -> Response<Body> {
    let query = serde_urlencoded::to_string([("rd", return_to)]).unwrap_or_default();
    pages::see_other(&app.config().public_url.join_path(&format!("/.portcullis/login?{query}")))
}

pub fn page_with_rd(app: &App, page: &str, return_to: &str) -> Response<Body> {
    let query = serde_urlencoded::to_string([("rd", return_to)]).unwrap_or_default();
    pages::see_other(&app.config().public_url.join_path(&format!("/.portcullis/{page}?{query}")))
}

fn requirement(app: &App, session: &Session) -> Requirement {
    policy::requirement(&app.config().mfa, session.user(), app.clock.now())
}

fn with_user(mut response: Response<Body>, session: &Session) -> Response<Body> {
    response.extensions_mut().insert(RequestUser(Some(session.user().name.to_string())));
    response
}

// ----- challenge -------------------------------------------------------------------------------

/// The challenge page for `session`'s account: its primary factor first, the others offered.
pub(super) fn render_challenge(
    app: &App,
    session: &Session,
    return_to: &str,
    error: Option<CodeError>,
    email_notice: Option<EmailNotice>,
    status: StatusCode,
) -> Response<Body> {
    let record = app.accounts.get(session.user().name.as_str());
    // `mfa.email_otp` governs new setups; an address already confirmed keeps working, so
    // turning the option off never strands the accounts that chose it.
    let email = record.email.as_ref();
    let page = ChallengePage {
        step_up: matches!(session, Session::Full(_)),
        issuer: &app.config().mfa.issuer,
        error,
        csrf: session.csrf_token(),
        return_to,
        totp: record.totp.is_some(),
        email: email.map(|e| crate::factors::email::masked(&e.address)),
        email_first: email.is_some() && record.primary_factor() == Some(FactorKind::Email),
        email_notice,
    };
    with_user(pages::html(status, &page), session)
}

pub fn challenge_form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    match app.resolve_session(request.headers()) {
        Lookup::Found(session) => {
            if !app.accounts.get(session.user().name.as_str()).has_second_factor() {
                // Nothing to prove with: enroll instead (or go on, if not required).
                return page_with_rd(app, "enroll", &return_to);
            }
            render_challenge(app, &session, &return_to, None, super::email::sent_notice(request), StatusCode::OK)
        }
        _ => login_redirect(app, &return_to),
    }
}

/// A form carrying a code (challenge, enrollment, email confirmation).
#[derive(Deserialize)]
pub(super) struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pub(super) code: String,
    rd: Option<String>,
}

impl SessionForm for CodeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn return_to(&self) -> Option<&str> {
        self.rd.as_deref()
    }
}

enum CodeRefused {
    Wrong,
    /// An emailed code that ran out.
    Expired,
    Replayed,
    Malformed,
    NoFactor,
    Internal(String),
}

/// Checks a TOTP code or a recovery code for `user`, consuming it on success.
async fn check_code(app: &App, user: &str, code: &str) -> Result<(AuthMethod, Option<usize>), CodeRefused> {
    let now = app.clock.now();
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let looks_totp = digits.len() == totp::DIGITS as usize && all_digits;
    let sealer = &app.sealer;
    let record = app.accounts.get(user);
    let sign_in = Purpose::SignIn;
    // An emailed code, if one is outstanding and this could be it. Both kinds may be six digits:
    // when an emailed code is pending and the account also has an app, a code that is not the
    // emailed one is tried as a TOTP code next.
    if all_digits
        && digits.len() == app.config().mfa.email_code_digits as usize
        && record.email.is_some()
        && app.email_codes.outstanding(user, &sign_in, now)
    {
        let could_be_totp = looks_totp && record.totp.is_some();
        match app.email_codes.check(user, &sign_in, &digits, sealer.pepper(), now) {
            Ok(()) => {
                let noted = app
                    .accounts
                    .update(user, |record| {
                        if let Some(email) = record.email.as_mut() {
                            email.last_used_at = Some(now);
                        }
                        Ok::<_, std::convert::Infallible>(())
                    })
                    .await;
                if let Err(e) = noted {
                    tracing::error!(%user, "could not record an emailed code's use: {e}");
                }
                return Ok((AuthMethod::Email, None));
            }
            Err(_) if could_be_totp => {}
            Err(EmailCodeError::Expired) => return Err(CodeRefused::Expired),
            Err(_) => return Err(CodeRefused::Wrong),
        }
    }
    if all_digits && record.totp.is_none() && record.email.is_some() {
        // Digits, no app, and no emailed code waiting: it was used, ran out or never sent.
        return Err(CodeRefused::Expired);
    }
    let outcome = if looks_totp {
        app.accounts
            .update(user, |record| {
                let factor = record.totp.as_mut().ok_or(CodeRefused::NoFactor)?;
                let secret = sealer.open(&factor.sealed_secret).map_err(|e| CodeRefused::Internal(e.to_string()))?;
                let step = totp::verify(secret.expose(), &digits, now, factor.last_step).map_err(|e| match e {
                    totp::TotpError::Replayed => CodeRefused::Replayed,
                    totp::TotpError::Wrong => CodeRefused::Wrong,
                    totp::TotpError::BadSecret(e) => CodeRefused::Internal(e),
                })?;
                factor.last_step = step;
                factor.last_used_at = Some(now);
                // Which step the code matched, relative to ours: the clock-skew telemetry.
                app.drift.record(step as i64 - now / totp::STEP_SECONDS as i64);
                Ok((AuthMethod::Otp, None))
            })
            .await
    } else if recovery::normalize(code).is_some() {
        app.accounts
            .update(user, |record| {
                if !record.has_second_factor() {
                    return Err(CodeRefused::NoFactor);
                }
                let index =
                    recovery::find_unused(sealer.pepper(), &record.recovery_codes, code).ok_or(CodeRefused::Wrong)?;
                record.recovery_codes[index].used_at = Some(now);
                Ok((AuthMethod::Rc, Some(record.recovery_codes_left())))
            })
            .await
    } else {
        return Err(CodeRefused::Malformed);
    };
    outcome.map_err(|e| CodeRefused::Internal(e.to_string()))?
}

pub async fn challenge_submit(app: &Arc<App>, request: Request<Incoming>, conn: &Connection) -> Response<Body> {
    let client_ip = crate::headers::client_ip(request.headers(), conn.peer.ip(), &app.config().trusted_proxies);
    let (session, form, return_to) = match session_post::<CodeForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let user = session.user().name.to_string();
    let step_up = matches!(session, Session::Full(_));
    let subjects = [Subject::Account(user.clone()), Subject::Address(client_ip)];
    match app.regulator.check(&subjects) {
        Verdict::Allowed => {}
        Verdict::Banned(until) => {
            crate::telemetry::second_factor("locked");
            let minutes = super::minutes_until(app, until);
            let message = format!(
                "Too many wrong codes. For safety, codes are not being checked for about {minutes} minute(s); try again then."
            );
            let mut response = pages::error(StatusCode::TOO_MANY_REQUESTS, "Too many attempts", &message, None);
            if let Ok(value) = http::HeaderValue::from_str(&(until - app.clock.now()).max(1).to_string()) {
                response.headers_mut().insert(http::header::RETRY_AFTER, value);
            }
            return with_user(response, &session);
        }
        Verdict::SecondFactorLocked => {
            tracing::warn!(target: "portcullis::security", %user, "second factor locked; refused");
            let response = pages::error(
                StatusCode::FORBIDDEN,
                "Two-step verification locked",
                "After too many wrong codes in a row, two-step verification for this account is locked. Ask the administrator to reset it.",
                None,
            );
            return with_user(response, &session);
        }
    }
    match check_code(app, &user, &form.code).await {
        Ok((method, recovery_left)) => {
            crate::telemetry::second_factor("ok");
            if let Err(e) = app.regulator.succeeded(&user, true).await {
                tracing::error!("could not record a second factor: {e}");
            }
            if let Some(left) = recovery_left {
                tracing::warn!(target: "portcullis::security", %user, left, "recovery code used");
                let event = crate::notify::SecurityEvent::RecoveryCodeUsed { left };
                app.notifier.send(session.user(), event, app.clock.now(), true);
            }
            tracing::info!(target: "portcullis::security", %user, method = method.as_str(), step_up, "second factor ok");
            let old_key = session.key().clone();
            let upgraded = match session {
                Session::Partial(partial) => app.sessions.promote(partial, vec![AuthMethod::Pwd, method]).await,
                Session::Full(full) => app.sessions.step_up(full, method).await,
            };
            match upgraded {
                Ok((id, full)) => {
                    if !step_up {
                        app.accounts.record_sign_in(&user, app.clock.now()).await;
                    }
                    app.pending.rekey(&old_key, full.key());
                    let mut response = pages::see_other(&app.config().public_url.join_path(&return_to));
                    response
                        .headers_mut()
                        .append(http::header::SET_COOKIE, session_cookie_header(app, &id, full.expires_at()));
                    response.extensions_mut().insert(RequestUser(Some(user)));
                    response
                }
                Err(e) => {
                    tracing::error!("could not upgrade a session: {e}");
                    pages::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Verification unavailable",
                        "Your code was right, but the session could not be saved. Try again.",
                        None,
                    )
                }
            }
        }
        Err(CodeRefused::NoFactor) => page_with_rd(app, "enroll", &return_to),
        Err(CodeRefused::Internal(e)) => {
            tracing::error!(%user, "second factor check failed: {e}");
            pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Your code could not be checked. Try again; if it keeps failing, tell the administrator.",
                None,
            )
        }
        Err(refused) => {
            let failures = match &session {
                Session::Partial(p) => p.record_failure(),
                Session::Full(f) => f.record_failure(),
            };
            let error = match refused {
                CodeRefused::Replayed => CodeError::Replayed,
                CodeRefused::Malformed => CodeError::Malformed,
                CodeRefused::Expired => CodeError::Expired,
                _ => CodeError::Wrong,
            };
            tracing::warn!(target: "portcullis::security", %user, failures, step_up, "second factor failed");
            crate::telemetry::second_factor("failed");
            match app.regulator.failed(&subjects, true).await {
                Ok(true) => {
                    crate::telemetry::lockout();
                    tracing::warn!(target: "portcullis::security", %user, client = %client_ip, "locked out after repeated wrong codes");
                    app.notifier.send(session.user(), crate::notify::SecurityEvent::Locked, app.clock.now(), false);
                }
                Ok(false) => {}
                Err(e) => tracing::error!("could not record a failed code: {e}"),
            }
            if failures >= app.config().mfa.attempts {
                // Too many guesses in one session: end it. Starting over costs a password check.
                if let Err(e) = app.sessions.end(session.key()).await {
                    tracing::error!("could not end a session: {e}");
                }
                app.pending.forget(session.key());
                tracing::warn!(target: "portcullis::security", %user, "session ended after too many wrong codes");
                let mut response = pages::error(
                    StatusCode::UNAUTHORIZED,
                    "Too many wrong codes",
                    "For your safety you have been signed out. Sign in again, and use a recovery code if your authenticator is not available.",
                    Some(("/.portcullis/login", "Sign in again")),
                );
                clear_cookie(&mut response, app.session_cookie(), app.config().public_url.is_https());
                return response;
            }
            render_challenge(app, &session, &return_to, Some(error), None, StatusCode::UNAUTHORIZED)
        }
    }
}

// ----- enrollment ------------------------------------------------------------------------------

/// Whether a session may add a second factor of some kind now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MayAdd {
    Yes,
    /// The account is protected already: prove a factor again first.
    StepUpFirst,
    No,
}

/// Whether this session may add a factor of `kind`: 2FA is on, the kind is offered and the account
/// lacks it, and either the account has no factor at all (inline enrollment, or after an operator
/// reset or a recovery link, where the password is what was proven), or this is a full session
/// with a recently proven second factor, so a stolen session cookie alone cannot add a factor to a
/// protected account.
pub(super) fn may_add(app: &App, session: &Session, kind: FactorKind) -> MayAdd {
    let record = app.accounts.get(session.user().name.as_str());
    let config = app.config();
    let offered = match kind {
        FactorKind::Totp => config.mfa.totp && record.totp.is_none(),
        FactorKind::Email => config.mfa.email_otp && record.email.is_none(),
    };
    if !offered || requirement(app, session) == Requirement::Off {
        return MayAdd::No;
    }
    if !record.has_second_factor() {
        return MayAdd::Yes;
    }
    match session {
        Session::Partial(_) => MayAdd::No,
        Session::Full(full) => {
            let window = config.mfa.step_up_window.as_secs() as i64;
            if policy::recently_proven(full.second_factor_at(), app.clock.now(), window) {
                MayAdd::Yes
            } else {
                MayAdd::StepUpFirst
            }
        }
    }
}

fn render_enroll(
    app: &App,
    session: &Session,
    return_to: &str,
    error: Option<CodeError>,
    status: StatusCode,
) -> Response<Body> {
    let email_option = (may_add(app, session, FactorKind::Email) == MayAdd::Yes)
        .then(|| crate::factors::email::masked(&session.user().email));
    let issuer = &app.config().mfa.issuer;
    if may_add(app, session, FactorKind::Totp) != MayAdd::Yes {
        let page = EnrollPage {
            required: matches!(session, Session::Partial(_)),
            totp: false,
            issuer,
            qr: "",
            uri: "",
            secret: "",
            secret_grouped: "",
            error,
            csrf: session.csrf_token(),
            return_to,
            email_option,
        };
        return with_user(pages::html(status, &page), session);
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
    let qr = match crate::factors::qr::png_data_url(&uri) {
        Ok(qr) => qr,
        Err(e) => {
            tracing::error!("QR code failed: {e}");
            String::new()
        }
    };
    let page = EnrollPage {
        required: matches!(session, Session::Partial(_)),
        totp: true,
        issuer,
        qr: &qr,
        uri: &uri,
        secret: &encoded,
        secret_grouped: &totp::grouped(&encoded),
        error,
        csrf: session.csrf_token(),
        return_to,
        email_option,
    };
    with_user(pages::html(status, &page), session)
}

pub fn enroll_form(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    match app.resolve_session(request.headers()) {
        Lookup::Found(session) if may_add(app, &session, FactorKind::Totp) == MayAdd::Yes => {
            render_enroll(app, &session, &return_to, None, StatusCode::OK)
        }
        Lookup::Found(session) if may_add(app, &session, FactorKind::Totp) == MayAdd::StepUpFirst => {
            let query = serde_urlencoded::to_string([("rd", return_to.as_str())]).unwrap_or_default();
            page_with_rd(app, "challenge", &format!("/.portcullis/enroll?{query}"))
        }
        // No app allowed here, but codes by email are: the same page, with only that choice.
        Lookup::Found(session) if may_add(app, &session, FactorKind::Email) == MayAdd::Yes => {
            render_enroll(app, &session, &return_to, None, StatusCode::OK)
        }
        Lookup::Found(session @ Session::Partial(_))
            if !app.accounts.get(session.user().name.as_str()).has_second_factor() =>
        {
            // Nothing to prove and nothing that may be set up: say so rather than send the
            // browser back to the challenge page, which would send it here again.
            with_user(
                pages::error(
                    StatusCode::FORBIDDEN,
                    "Two-step verification cannot be set up",
                    "Your account needs a second step, but none can be set up here at the moment. Tell your administrator.",
                    Some(("/.portcullis/logout", "Sign out")),
                ),
                &session,
            )
        }
        Lookup::Found(Session::Partial(_)) => page_with_rd(app, "challenge", &return_to),
        Lookup::Found(Session::Full(_)) => pages::see_other(&app.config().public_url.join_path("/.portcullis/account")),
        _ => login_redirect(app, &return_to),
    }
}

pub async fn enroll_submit(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, form, return_to) = match session_post::<CodeForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if may_add(app, &session, FactorKind::Totp) != MayAdd::Yes {
        return pages::see_other(&app.config().public_url.join_path("/.portcullis/account"));
    }
    let now = app.clock.now();
    let max_age = app.config().session.partial_timeout.as_secs() as i64;
    let Some(secret) = app.pending.take_secret(session.key(), now, max_age) else {
        // The setup expired (or never started): show a fresh one.
        return render_enroll(app, &session, &return_to, None, StatusCode::OK);
    };
    let step = match totp::verify(secret.expose(), &form.code, now, 0) {
        Ok(step) => step,
        Err(e) => {
            // Keep the same secret so the user can simply try the next code.
            app.pending.0.entry(session.key().clone()).or_default().totp_secret = Some((secret, now));
            let error = if e == totp::TotpError::Replayed { CodeError::Replayed } else { CodeError::Wrong };
            return render_enroll(app, &session, &return_to, Some(error), StatusCode::UNAUTHORIZED);
        }
    };
    let user = session.user().name.to_string();
    let sealed = match app.sealer.seal(secret.expose()) {
        Ok(sealed) => sealed,
        Err(e) => {
            tracing::error!("sealing failed: {e}");
            return pages::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Your authenticator could not be saved.",
                None,
            );
        }
    };
    let pepper = app.sealer.pepper();
    let saved = app
        .accounts
        .update(&user, |record| {
            if record.totp.is_some() {
                return Err("already enrolled");
            }
            record.totp =
                Some(TotpRecord { sealed_secret: sealed, enrolled_at: now, last_used_at: Some(now), last_step: step });
            Ok(record.ensure_recovery_codes(pepper, now))
        })
        .await;
    let codes = match saved {
        Ok(Ok(codes)) => codes,
        Ok(Err(_)) => return pages::see_other(&app.config().public_url.join_path("/.portcullis/account")),
        Err(e) => {
            tracing::error!("could not save a new factor: {e}");
            return pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Something went wrong",
                "Your authenticator could not be saved. Try again.",
                None,
            );
        }
    };
    tracing::info!(target: "portcullis::security", %user, "authenticator enrolled");
    app.notifier.send(session.user(), crate::notify::SecurityEvent::Enrolled, now, true);
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
            return page_with_rd(app, "recovery-codes", return_to);
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
                    page_with_rd(app, "recovery-codes", return_to)
                }
                None => pages::see_other(&app.config().public_url.join_path(return_to)),
            };
            response.headers_mut().append(http::header::SET_COOKIE, session_cookie_header(app, &id, full.expires_at()));
            response
        }
        Err(e) => {
            tracing::error!("could not update a session: {e}");
            pages::error(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", "Try again.", None)
        }
    }
}

// ----- recovery codes --------------------------------------------------------------------------

pub fn recovery_codes_page(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(session) = app.resolve_session(request.headers()) else { return login_redirect(app, &return_to) };
    if !codes_belong_to(app, &session) {
        return page_with_rd(app, "challenge", &return_to);
    }
    let Some(codes) = app.pending.codes(session.key()) else {
        return pages::see_other(&app.config().public_url.join_path("/.portcullis/account"));
    };
    let text = format!(
        "Recovery codes for {} at {}\nEach code works once. Keep them somewhere safe.\n\n{}\n",
        session.user().name,
        app.config().mfa.issuer,
        codes.join("\n")
    );
    let download = format!(
        "data:text/plain;charset=utf-8,{}",
        percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC)
    );
    let file_name = format!(
        "{}-recovery-codes.txt",
        app.config().mfa.issuer.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "-")
    );
    let page = RecoveryCodesPage {
        codes: &codes,
        download: &download,
        file_name: &file_name,
        csrf: session.csrf_token(),
        return_to: &return_to,
    };
    with_user(pages::html(StatusCode::OK, &page), &session)
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

pub async fn recovery_codes_confirm(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, form, return_to) = match session_post::<SavedForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if !codes_belong_to(app, &session) {
        return page_with_rd(app, "challenge", &return_to);
    }
    if app.pending.codes(session.key()).is_none() {
        return pages::see_other(&app.config().public_url.join_path("/.portcullis/account"));
    }
    if form.saved.as_deref() != Some("yes") {
        return page_with_rd(app, "recovery-codes", &return_to);
    }
    let enrolled_with = app.pending.0.get(session.key()).and_then(|s| s.enrolled_with);
    app.pending.forget(session.key());
    match (session, enrolled_with) {
        (Session::Partial(partial), Some(method)) => finish_inline_enrollment(app, partial, method, &return_to).await,
        (Session::Partial(_), None) => page_with_rd(app, "challenge", &return_to),
        (Session::Full(full), _) => {
            let response = pages::see_other(&app.config().public_url.join_path(&return_to));
            with_user(response, &Session::Full(full))
        }
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
    let user = partial.user().name.to_string();
    // Only an account that now has a factor gets here (enrollment proved a code from it).
    if !app.accounts.get(&user).has_second_factor() {
        return page_with_rd(app, "enroll", return_to);
    }
    match app.sessions.promote(partial, vec![AuthMethod::Pwd, method]).await {
        Ok((id, full)) => {
            app.accounts.record_sign_in(&user, app.clock.now()).await;
            let mut response = pages::see_other(&app.config().public_url.join_path(return_to));
            response.headers_mut().append(http::header::SET_COOKIE, session_cookie_header(app, &id, full.expires_at()));
            response.extensions_mut().insert(RequestUser(Some(user)));
            response
        }
        Err(e) => {
            tracing::error!("could not promote a session: {e}");
            pages::error(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", "Try again.", None)
        }
    }
}

// ----- account actions -------------------------------------------------------------------------

pub async fn account_action(app: &Arc<App>, action: &str, request: Request<Incoming>) -> Response<Body> {
    let account = "/.portcullis/account";
    let (session, _, _) = match session_post::<CsrfForm>(app, request, |_| login_redirect(app, account)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    // Account changes need a full session; a half-logged-in one finishes signing in first.
    let Session::Full(full) = session else { return page_with_rd(app, "challenge", account) };
    let user = full.user().name.to_string();
    match action {
        "sign-out-everywhere" => match app.sessions.end_all_for(&user).await {
            Ok(count) => {
                tracing::info!(target: "portcullis::security", %user, count, "signed out everywhere");
                let mut response = pages::html(StatusCode::OK, &pages::SignedOutPage);
                clear_cookie(&mut response, app.session_cookie(), app.config().public_url.is_https());
                response
            }
            Err(e) => {
                tracing::error!("could not end sessions: {e}");
                pages::error(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", "Try again.", None)
            }
        },
        "remove-totp" | "remove-email" | "regenerate-codes" => sensitive_action(app, action, full, &user).await,
        "primary-totp" | "primary-email" => {
            let kind = if action == "primary-totp" { FactorKind::Totp } else { FactorKind::Email };
            let chosen = app
                .accounts
                .update(&user, |record| {
                    record.primary = Some(kind);
                    // Only a factor the account has can come first.
                    record.primary_factor().filter(|p| *p == kind).map(|_| ()).ok_or(())
                })
                .await;
            if let Err(e) = chosen {
                tracing::error!("could not choose a primary factor: {e}");
            }
            pages::see_other(&app.config().public_url.join_path(account))
        }
        _ => pages::error(StatusCode::NOT_FOUND, "Page not found", "There is no such action.", None),
    }
}

async fn sensitive_action(app: &App, action: &str, full: FullSession, user: &str) -> Response<Body> {
    let req = policy::requirement(&app.config().mfa, full.user(), app.clock.now());
    if req == Requirement::Off {
        return pages::error(
            StatusCode::NOT_FOUND,
            "Page not found",
            "Two-step verification is switched off here.",
            None,
        );
    }
    let window = app.config().mfa.step_up_window.as_secs() as i64;
    if !policy::recently_proven(full.second_factor_at(), app.clock.now(), window) {
        // Re-prove the second factor first, then come back to the account page to do it.
        return page_with_rd(app, "challenge", "/.portcullis/account");
    }
    let now = app.clock.now();
    let pepper = app.sealer.pepper();
    match action {
        "remove-totp" | "remove-email" => {
            let kind = if action == "remove-totp" { FactorKind::Totp } else { FactorKind::Email };
            let removed = app
                .accounts
                .update(user, |record| {
                    let other = match kind {
                        FactorKind::Totp => record.email.is_some(),
                        FactorKind::Email => record.totp.is_some(),
                    };
                    if req == Requirement::Required && !other {
                        return Err(());
                    }
                    match kind {
                        FactorKind::Totp => record.totp = None,
                        FactorKind::Email => record.email = None,
                    }
                    if !other {
                        // The last factor: 2FA is off, and its backup codes go with it.
                        record.recovery_codes.clear();
                        record.recovery_generated_at = None;
                        record.primary = None;
                    }
                    Ok(other)
                })
                .await;
            match removed {
                Ok(Ok(other_remains)) => {
                    let name = if kind == FactorKind::Totp { "The authenticator app" } else { "Codes by email" };
                    tracing::warn!(target: "portcullis::security", %user, factor = ?kind, "second factor removed");
                    let event = if other_remains {
                        crate::notify::SecurityEvent::FactorRemoved { factor: name }
                    } else {
                        crate::notify::SecurityEvent::Removed
                    };
                    app.notifier.send(full.user(), event, now, true);
                    let done = if other_remains { "/.portcullis/account" } else { "/.portcullis/account?done=removed" };
                    pages::see_other(&app.config().public_url.join_path(done))
                }
                Ok(Err(())) => pages::error(
                    StatusCode::FORBIDDEN,
                    "Cannot turn off",
                    "Your account requires two-step verification, so its last second step cannot be removed. You can set up a new phone by asking the administrator to reset it.",
                    Some(("/.portcullis/account", "Back to your account")),
                ),
                Err(e) => {
                    tracing::error!("could not remove a factor: {e}");
                    pages::error(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", "Try again.", None)
                }
            }
        }
        _ => {
            let made = app
                .accounts
                .update(user, |record| {
                    if !record.has_second_factor() {
                        return Err(());
                    }
                    let (codes, records) = recovery::new_set(pepper);
                    record.recovery_codes = records;
                    record.recovery_generated_at = Some(now);
                    Ok(codes)
                })
                .await;
            match made {
                Ok(Ok(codes)) => {
                    tracing::info!(target: "portcullis::security", %user, "recovery codes regenerated");
                    app.notifier.send(full.user(), crate::notify::SecurityEvent::CodesRegenerated, now, true);
                    app.pending.put_codes(full.key(), codes);
                    page_with_rd(app, "recovery-codes", "/.portcullis/account")
                }
                Ok(Err(())) => pages::see_other(&app.config().public_url.join_path("/.portcullis/account")),
                Err(e) => {
                    tracing::error!("could not make recovery codes: {e}");
                    pages::error(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", "Try again.", None)
                }
            }
        }
    }
}

// ----- staged rollout --------------------------------------------------------------------------

/// After sign-in, before `mfa.required_after`: a reminder with the date, and two plain links (the
/// session is already full, so neither choice changes anything on the server).
pub fn reminder(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(Session::Full(full)) = app.resolve_session(request.headers()) else {
        return login_redirect(app, &return_to);
    };
    let requirement = policy::requirement(&app.config().mfa, full.user(), app.clock.now());
    let has = app.accounts.get(full.user().name.as_str()).has_second_factor();
    let (Requirement::Upcoming(deadline), false) = (requirement, has) else {
        // Nothing to remind of (already enrolled, or the date has passed): carry on.
        return pages::see_other(&app.config().public_url.join_path(&return_to));
    };
    let query = serde_urlencoded::to_string([("rd", return_to.as_str())]).unwrap_or_default();
    let enroll = format!("/.portcullis/enroll?{query}");
    let deadline = super::format_time(deadline);
    let page = pages::ReminderPage { deadline: &deadline, enroll: &enroll, later: &return_to };
    with_user(pages::html(StatusCode::OK, &page), &Session::Full(full))
}

/// After sign-in, under `optional` with `mfa.nudge_every`: a suggestion to set up 2FA. Two links
/// change nothing; "don't ask me again" is a POST that records the choice.
pub fn nudge(app: &App, request: &Request<Incoming>) -> Response<Body> {
    let return_to = return_to_from_query(app, request);
    let Lookup::Found(Session::Full(full)) = app.resolve_session(request.headers()) else {
        return login_redirect(app, &return_to);
    };
    if app.accounts.get(full.user().name.as_str()).has_second_factor() {
        return pages::see_other(&app.config().public_url.join_path(&return_to));
    }
    let query = serde_urlencoded::to_string([("rd", return_to.as_str())]).unwrap_or_default();
    let enroll = format!("/.portcullis/enroll?{query}");
    let page = pages::NudgePage {
        enroll: &enroll,
        later: &return_to,
        csrf: full.csrf_token(),
        email_codes: app.config().mfa.email_otp,
    };
    with_user(pages::html(StatusCode::OK, &page), &Session::Full(full))
}

pub async fn nudge_decline(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let (session, _, return_to) = match session_post::<RdCsrfForm>(app, request, |rd| login_redirect(app, rd)).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if !matches!(session, Session::Full(_)) {
        return page_with_rd(app, "challenge", &return_to);
    }
    let user = session.user().name.to_string();
    let declined = app
        .accounts
        .update(&user, |record| {
            record.nudge_declined = true;
            Ok::<_, std::convert::Infallible>(())
        })
        .await;
    match declined {
        Ok(_) => {
            tracing::info!(target: "portcullis::security", %user, "declined 2FA suggestions");
            with_user(pages::see_other(&app.config().public_url.join_path(&return_to)), &session)
        }
        Err(e) => {
            tracing::error!("could not record a declined suggestion: {e}");
            pages::error(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", "Try again.", None)
        }
    }
}

/// A form with nothing but its CSRF token and where to go next.
#[derive(Deserialize)]
pub(super) struct RdCsrfForm {
    #[serde(default)]
    csrf: String,
    rd: Option<String>,
}

impl SessionForm for RdCsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    fn return_to(&self) -> Option<&str> {
        self.rd.as_deref()
    }
}
