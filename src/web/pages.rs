//! The proxy's own pages: one askama struct per page, and the response headers every one of them
//! carries.

use askama::Template;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

pub use crate::domain::regulation::Who;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy produces, own or forwarded.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Why a password form (sign-in, recovery link, new password) is shown again. Matched in
/// `password_error.html`, so each case has its own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    BadCredentials,
    /// Too many failures counted against `who`; the page says when to try again, and blames no
    /// one (nothing says whether the account exists either).
    Paused {
        minutes: i64,
        who: Who,
    },
    /// Too many attempts being checked at once.
    Crowded,
    Expired,
    Malformed,
    Busy,
    /// A passkey's answer did not sign in (unknown, removed, retired or refused): one message
    /// for every reason, which the log tells apart.
    PasskeyRefused,
    /// The passkey request ran out or was used already.
    PasskeyExpired,
    /// The directory that checks this name's password (`[login.ldap]`) cannot be reached.
    DirectoryUnavailable,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage<'a> {
    pub error: Option<LoginError>,
    pub csrf: &'a str,
    pub return_to: &'a str,
    pub username: &'a str,
    /// The WebAuthn request options (JSON) for a passkey sign-in, when `webauthn.passwordless` is
    /// on (the page then also runs `static/webauthn.js`).
    pub passkey_options: Option<&'a str>,
    /// "Email me a sign-in link" (`[login.email_link]`), keeping where the visitor was going.
    pub link_url: Option<&'a str>,
    /// One "Sign in with …" per OpenID provider: its name and where it starts.
    pub providers: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "logout.html")]
pub struct LogoutPage<'a> {
    pub username: &'a str,
    pub csrf: &'a str,
}

#[derive(Template)]
#[template(path = "signed_out.html")]
pub struct SignedOutPage;

/// Shown inside a frame instead of a sign-in page: a link that signs in at the top level.
#[derive(Template)]
#[template(path = "framed.html")]
pub struct FramedSignInPage<'a> {
    pub url: &'a str,
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage<'a> {
    /// Linked OpenID Connect identities, and the providers one could be linked at.
    pub identities: Vec<IdentityRow>,
    pub link_offers: Vec<(String, String)>,
    /// The password is the directory's (`[login.ldap]`): changed there, not here.
    pub password_elsewhere: bool,
    pub username: &'a str,
    pub display_name: &'a str,
    pub email: &'a str,
    pub groups: &'a [String],
    pub csrf: &'a str,
    pub notice: Option<&'a str>,
    pub mfa_enabled: bool,
    pub totp: Option<TotpSummary>,
    pub recovery_left: usize,
    /// Codes by email: on (to this address), or offered (to the account's address).
    pub email_codes: Option<EmailSummary>,
    pub email_offered: Option<String>,
    pub totp_offered: bool,
    /// With two factors: which one the challenge page offers first.
    pub primary_email: bool,
    /// Whether removing each factor is allowed (not the last one where 2FA is required).
    pub can_remove_totp: bool,
    pub can_remove_email: bool,
    /// Browsers that skip the second factor, when `mfa.remember_device` is on.
    pub remembered: Vec<RememberedRow>,
    /// Security keys and passkeys, and whether more may be added.
    pub security_keys: Vec<KeyRow>,
    pub keys_offered: bool,
    pub sessions: Vec<SessionRow>,
    /// Deprecated providers the account relies on (names), and what to set up instead.
    pub retiring: Option<Retiring>,
    /// Names of the account's factors whose provider was disabled (they no longer count).
    pub turned_off: Option<String>,
}

/// The banner for an account that relies on a provider being retired.
pub struct Retiring {
    pub names: String,
    pub instead: Option<String>,
}

pub struct EmailSummary {
    pub address: String,
    pub enrolled: String,
    pub last_used: Option<String>,
}

pub struct TotpSummary {
    pub enrolled: String,
    pub last_used: Option<String>,
}

/// One of the user's sessions on the account page.
pub struct SessionRow {
    pub handle: String,
    pub browser: String,
    pub address: String,
    pub signed_in: String,
    pub last_seen: String,
    pub this_one: bool,
    /// Half signed in (the password, not yet the second step).
    pub partial: bool,
    /// The other host it was handed to; `None` on the main host.
    pub host: Option<String>,
}

/// One key on the account page.
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub created: String,
    pub last_used: Option<String>,
    /// A passkey that may be synced between devices (the BE flag).
    pub synced: bool,
}

/// One remembered browser on the account page.
pub struct RememberedRow {
    pub id: String,
    pub browser: String,
    pub address: String,
    pub since: String,
    pub until: String,
}

/// "Are you sure?" before an account change that cannot be undone.
#[derive(Template)]
#[template(path = "account_confirm.html")]
pub struct AccountConfirmPage<'a> {
    pub title: &'a str,
    pub consequence: &'a str,
    pub button: &'a str,
    pub action: &'a str,
    pub csrf: &'a str,
}

/// Why a new password was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewPasswordError {
    TooShort,
    TooLong,
    Mismatch,
    SameAsOld,
    /// The users file cannot be written by the proxy.
    CannotSave,
}

#[derive(Template)]
#[template(path = "password.html")]
pub struct PasswordPage<'a> {
    pub username: &'a str,
    pub csrf: &'a str,
    pub error: Option<LoginError>,
    pub new_error: Option<NewPasswordError>,
}

/// Why a code was not accepted, as the person needs to hear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeError {
    Wrong,
    Replayed,
    Malformed,
    /// The emailed code ran out (ten minutes, or too many tries): ask for a new one.
    Expired,
    /// A security key's answer did not verify (wrong site, another key, a copied key).
    KeyRefused,
    /// The security key request ran out (5 minutes) or was already answered.
    KeyExpired,
    /// The browser sent no answer from a key (JavaScript off, or no WebAuthn).
    KeyMissing,
}

#[derive(Template)]
#[template(path = "challenge.html")]
pub struct ChallengePage<'a> {
    pub step_up: bool,
    pub issuer: &'a str,
    pub error: Option<CodeError>,
    pub csrf: &'a str,
    pub return_to: &'a str,
    /// Which code the page asks for.
    pub view: ChallengeView,
    /// The account has an authenticator app.
    pub totp: bool,
    /// The account gets codes by email, at this (masked) address.
    pub email: Option<String>,
    /// A code was just emailed, or could not be yet.
    pub email_notice: Option<EmailNotice>,
    /// Wrong codes left before this session ends or codes are paused, after a wrong one.
    pub tries_left: Option<usize>,
    /// Offer "remember this browser" for this many days (not on step-up).
    pub remember_days: Option<u64>,
    /// Links to the other views, with the return path kept.
    pub links: ChallengeLinks,
    /// The account has security keys.
    pub keys: bool,
    /// For the key view: the WebAuthn request options (JSON), for `static/webauthn.js`.
    pub key_options: Option<String>,
}

/// The challenge page asks for one kind of code at a time; the others are a link away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeView {
    App,
    Email,
    Recovery,
    /// A security key or passkey.
    Key,
}

impl ChallengeView {
    /// The value of `use=` that selects this view.
    pub fn key(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Email => "email",
            Self::Recovery => "recovery",
            Self::Key => "key",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        [Self::App, Self::Email, Self::Recovery, Self::Key].into_iter().find(|v| v.key() == key)
    }
}

pub struct ChallengeLinks {
    pub app: String,
    pub email: String,
    pub recovery: String,
    pub key: String,
}

/// What happened when an emailed code was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailNotice {
    Sent,
    Wait { seconds: i64 },
}

#[derive(Template)]
#[template(path = "enroll_email.html")]
pub struct EnrollEmailPage<'a> {
    pub address: &'a str,
    pub error: Option<CodeError>,
    pub notice: Option<EmailNotice>,
    pub csrf: &'a str,
    pub return_to: &'a str,
}

#[derive(Template)]
#[template(path = "enroll.html")]
pub struct EnrollPage<'a> {
    pub required: bool,
    /// Moving to a new authenticator: the old one works until a code from the new one is entered.
    pub replace: bool,
    /// Whether an authenticator app may be set up (else only codes by email are offered).
    pub totp: bool,
    pub issuer: &'a str,
    pub qr: &'a str,
    pub uri: &'a str,
    pub secret: &'a str,
    pub secret_grouped: &'a str,
    pub error: Option<CodeError>,
    pub csrf: &'a str,
    pub return_to: &'a str,
    /// Offer codes by email instead, to this (masked) address.
    pub email_option: Option<String>,
    /// The account's factors were all disabled: their providers' names, to say why it is here.
    pub turned_off: Option<String>,
    /// Offer a security key instead: the link to its setup page.
    pub key_option: Option<String>,
}

#[derive(Template)]
#[template(path = "recovery_codes.html")]
pub struct RecoveryCodesPage<'a> {
    pub codes: &'a [String],
    pub download: &'a str,
    pub file_name: &'a str,
    pub csrf: &'a str,
    pub return_to: &'a str,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub status: u16,
    pub title: &'a str,
    pub message: &'a str,
    pub action: Option<(&'a str, &'a str)>,
}

/// The referrer policy of every own page, as header and as `<meta name="referrer">`.
///
/// `same-origin`: requests to our own origin carry the referrer, requests anywhere else carry none
/// (so a return URL in our page's address never leaks to another site). It must not be
/// `no-referrer`: under that policy the Fetch standard ("serializing a request origin") sends
/// `Origin: null` on a form POST, and the same-origin check on every POST then refuses our own
/// forms. `strict-origin-when-cross-origin` would also send the real origin, but it gives other
/// sites our origin on every link and subresource; `same-origin` gives them nothing.
pub const REFERRER_POLICY: &str = "same-origin";

/// Headers for every page the proxy renders itself (never for forwarded responses, which stay as
/// the upstream sent them): no script at all, no framing (clickjacking), no sniffing, no
/// referrer to other sites, and no caching of pages that show account data or tokens.
pub fn harden(response: &mut Response<Body>) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static(REFERRER_POLICY));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
}

/// Renders a page as a hardened HTML response.
pub fn html(status: StatusCode, page: &impl Template) -> Response<Body> {
    match page.render() {
        Ok(body) => {
            let mut response = Response::new(full(body));
            *response.status_mut() = status;
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            harden(&mut response);
            response
        }
        Err(e) => {
            tracing::error!("a page failed to render: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error while rendering a page\n")
        }
    }
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    harden(&mut response);
    response
}

/// [`FramedSignInPage`], which may be framed by `ancestors` (a CSP source list of the proxy's own
/// origins: the application that frames it), unlike every other page of ours.
pub fn framed_sign_in(url: &str, ancestors: &str) -> Response<Body> {
    let mut response = html(StatusCode::UNAUTHORIZED, &FramedSignInPage { url });
    let policy = format!(
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors {ancestors}; base-uri 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response.headers_mut().remove(header::X_FRAME_OPTIONS);
    response
}

pub fn error(status: StatusCode, title: &str, message: &str, action: Option<(&str, &str)>) -> Response<Body> {
    html(status, &ErrorPage { status: status.as_u16(), title, message, action })
}

/// A `303 See Other` (the method becomes GET, which is what a form post should turn into).
pub fn see_other(location: &str) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    harden(&mut response);
    response
}

/// The stylesheet, compiled in so the binary is all an operator deploys.
pub fn static_file(name: &str) -> Option<Response<Body>> {
    let (body, content_type) = match name {
        "portcullis.css" => (include_str!("../../static/portcullis.css"), "text/css; charset=utf-8"),
        "webauthn.js" => (include_str!("../../static/webauthn.js"), "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(full(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    harden(&mut response);
    Some(response)
}

#[derive(Template)]
#[template(path = "reminder.html")]
pub struct ReminderPage<'a> {
    pub deadline: &'a str,
    pub enroll: &'a str,
    pub later: &'a str,
}

#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage<'a> {
    pub admin: &'a str,
    pub csrf: &'a str,
    pub notice: Option<&'a str>,
    pub warnings: Vec<String>,
    pub users: Vec<AdminUserRow>,
    pub adoption: Vec<AdminAdoptionRow>,
    pub bans: Vec<AdminBanRow>,
    pub providers: Vec<AdminProviderRow>,
}

/// A linked OpenID Connect identity on the account page.
pub struct IdentityRow {
    /// The provider's name, as the login page shows it.
    pub name: String,
    pub provider: String,
    pub subject: String,
    pub linked: String,
}

/// One factor provider on the admin page, in words (`portcullis admin providers`).
pub struct AdminProviderRow {
    /// Its id in the configuration, shown only to tell apart providers of the same name.
    pub id: Option<String>,
    pub kind: String,
    pub name: String,
    pub status: String,
    /// Accounts with a factor pointing at it.
    pub users: usize,
}

/// One account on the admin page, already in words.
pub struct AdminUserRow {
    pub name: String,
    pub email: String,
    pub groups: String,
    pub factors: String,
    pub enrolled: Option<String>,
    pub last_sign_in: String,
    pub policy: String,
    pub sessions: String,
    pub can_reset: bool,
    pub can_revoke: bool,
    /// Its every factor's provider was turned off.
    pub stranded: bool,
    /// Linked OpenID Connect identities (`provider:subject`), if any.
    pub identities: Option<String>,
}

pub struct AdminAdoptionRow {
    pub group: String,
    pub accounts: usize,
    pub with: usize,
    pub share: String,
    pub required: usize,
    pub missing: String,
}

pub struct AdminBanRow {
    /// The key the unban operation takes (`account:NAME`, `address:IP`).
    pub subject: String,
    /// The same, in words ("Account alice", "Address 203.0.113.7").
    pub who: String,
    pub until: String,
    pub locked: &'static str,
}

#[derive(Template)]
#[template(path = "admin_confirm.html")]
pub struct AdminConfirmPage<'a> {
    pub title: &'a str,
    pub consequence: &'a str,
    pub button: &'a str,
    pub csrf: &'a str,
    pub op: &'a str,
    pub target: &'a str,
}

#[derive(Template)]
#[template(path = "recover.html")]
pub struct RecoverPage<'a> {
    pub username: &'a str,
    pub expires: &'a str,
    pub token: &'a str,
    pub csrf: &'a str,
    pub error: Option<LoginError>,
}

#[derive(Template)]
#[template(path = "nudge.html")]
pub struct NudgePage<'a> {
    pub enroll: &'a str,
    pub later: &'a str,
    pub csrf: &'a str,
    pub email_codes: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped() {
        let page = LoginPage {
            error: Some(LoginError::BadCredentials),
            csrf: "t",
            return_to: "/\"><script>",
            username: "<b>",
            passkey_options: None,
            link_url: None,
            providers: Vec::new(),
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<b>"));
        assert!(html.contains("do not match"));
    }
}
