//! Everything that can go wrong answering a request, as one type, and the one place it becomes a
//! page ([`WebError::into_response`]). What the person reads is written here; what the log gets
//! is the error's own detail, logged here too, so a handler only says what happened.

use http::{HeaderValue, Response, StatusCode, header};

use crate::base::text::whole_minutes;
use crate::domain::email_link::LinksUnavailable;
use crate::domain::factors::security_key::KeyError;
use crate::domain::factors::service::{CodeRefused, EnrollError, LinkError, RemoveError};
use crate::domain::regulation::Who;
use crate::domain::session::SessionError;
use crate::store::StoreError;
use crate::web::forward::ForwardError;
use crate::web::pages::{self, Body};
use crate::web::route::Destination;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("no such page")]
    NotFound,
    #[error("no such action")]
    NoSuchAction,
    #[error("two-step verification is off for this account")]
    TwoStepOff,
    #[error("a POST not from our origin")]
    CrossOrigin,
    #[error("the form's CSRF token does not match the session")]
    StaleForm,
    #[error("not a urlencoded form")]
    UnsupportedForm,
    #[error("the form is larger than any of ours")]
    FormTooLarge,
    #[error("the form body did not arrive in time")]
    FormTooSlow,
    #[error("the form could not be parsed")]
    MalformedForm,
    /// A change could not be stored; the detail is logged.
    #[error("could not save a change: {0}")]
    Unavailable(String),
    /// Something that should not happen; the detail is logged.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the right code could not be saved: {0}")]
    VerificationUnsaved(String),
    #[error("the right password could not start a session: {0}")]
    SignInUnavailable(String),
    #[error("a session could not be ended: {0}")]
    SignOutFailed(String),
    /// The shared store cannot be reached (logged once by the store, not per request).
    #[error("the shared store cannot be reached")]
    StoreOffline,
    /// Codes are not checked for `seconds` more, for the account or the address (`who`).
    #[error("codes are paused for {seconds} s ({who:?})")]
    CodesPaused { seconds: i64, who: Who },
    #[error("too many code checks at once")]
    CodesCrowded,
    #[error("the second factor is locked after 100 wrong codes in a row")]
    SecondFactorLocked,
    /// Too many wrong codes in one session: it was ended (and, when codes are paused, for how
    /// many seconds more).
    #[error("the session was ended after too many wrong codes")]
    TooManyCodes { paused_for: Option<i64> },
    #[error("no second factor can be set up, and one is required")]
    NoFactorPossible,
    /// Every factor of the account belongs to a disabled provider (`names`), 2FA is required, and
    /// nothing can be set up instead: no access, and what to do about it.
    #[error("the account's factors ({names}) were disabled and nothing else can be set up")]
    Stranded { names: String },
    /// A setup of a kind no active provider offers (a deprecated one, or a forged form).
    #[error("that kind of second step is not offered")]
    FactorNotOffered,
    /// An OpenID provider cannot be used now (unreachable, or its metadata or keys unusable).
    #[error("the OpenID provider {name} cannot be used")]
    ProviderUnavailable { name: String },
    /// The provider sent the browser back with an error code (`access_denied`, …).
    #[error("the OpenID provider {name} answered {code}")]
    ProviderRefused { name: String, code: String },
    /// A callback for a sign-in this browser did not start (or that ran out, or a forged state).
    #[error("no OpenID sign-in in progress for this browser")]
    ProviderSignInNotStarted,
    /// The code exchange or the ID token was refused.
    #[error("the answer of the OpenID provider {name} was refused")]
    ProviderAnswerRefused { name: String },
    /// Linking an identity another account has.
    #[error("an identity at {name} linked to another account")]
    IdentityLinkedElsewhere { name: String },
    /// The provider's identity is linked to no account (and no verified address links it).
    #[error("an identity at {name} linked to no account")]
    IdentityNotLinked { name: String },
    /// A directory account's password (`[login.ldap]`) is changed in the directory.
    #[error("the password is kept by the directory")]
    PasswordInDirectory,
    /// A sign-in link (or its code) that signs nobody in: used, replaced, run out, or unknown.
    #[error("the sign-in link is not valid")]
    SignInLinkInvalid,
    /// Signed in with a link, and the account's only second step is a code by email: the same
    /// mailbox twice is one factor, so the password way is the one left.
    #[error("the only second step is email, after a sign-in link")]
    LinkThenEmailOnly,
    #[error("the last factor of an account that requires 2FA")]
    LastFactorRequired,
    #[error("not in the admin group")]
    NotAdministrator,
    #[error("an admin without a second factor")]
    AdminNeedsSecondFactor,
    #[error("an operator action was refused: {0}")]
    ActionRefused(String),
    #[error("the recovery link is dead")]
    DeadRecoveryLink,
    #[error("recovered, but no session could be started: {0}")]
    RecoveredWithoutSession(String),
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("{0}")]
    UpstreamBroken(String),
    #[error("the request cannot be forwarded")]
    BadRequest,
    #[error("request body stalled: {0}")]
    ClientTooSlow(String),
    #[error("request body broke off: {0}")]
    ClientGone(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request's host is not one the proxy serves (`public_url`, `hosts`).
    #[error("a host the proxy does not serve")]
    MisdirectedHost,
    /// An access rule says `deny`.
    #[error("denied by an access rule")]
    Denied,
    /// Forward-auth asked by a peer that is not in `trusted_proxies`.
    #[error("forward-auth from an untrusted peer")]
    ForwardAuthUntrusted,
    /// Forward-auth from a trusted front proxy that did not describe the request readably.
    #[error("forward-auth request not understood: {0}")]
    ForwardAuthUndescribed(Undescribed),
    /// A handoff code that is unknown, used, expired or for another host.
    #[error("handoff refused: {0}")]
    HandoffRefused(String),
}

/// Why a trusted front proxy's (forward-auth) description could not be read: its configuration is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undescribed {
    #[error("neither X-Original-URL (nginx) nor X-Forwarded-Uri (Caddy, Traefik) was sent")]
    NoUri,
    #[error(
        "the original URL is a path, and X-Forwarded-Host is missing (or, for nginx's X-Original-URL, not allowed)"
    )]
    NoHost,
    #[error("a describing header is sent twice or is not text")]
    Ambiguous,
    /// nginx's `X-Original-*` next to `X-Forwarded-Uri`/`-Method`: one family is the front
    /// proxy's, the other the client's, and nothing here can tell which.
    #[error(
        "the description mixes X-Original-URL/-Method (nginx) with X-Forwarded-Uri/-Method (Caddy, Traefik); the front proxy must clear the family it does not send"
    )]
    Mixed,
    #[error("the original URL, host or method cannot be read")]
    Unreadable,
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<LinksUnavailable> for WebError {
    /// Sign-in links are not sent, opened or counted without the store: the 503 that says the
    /// store cannot be reached (the cause is logged where it happened).
    fn from(_: LinksUnavailable) -> Self {
        Self::StoreOffline
    }
}

impl From<SessionError> for WebError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Store(e) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<ForwardError> for WebError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Timeout(_) => Self::UpstreamTimeout(e.to_string()),
            ForwardError::Unreachable(_) => Self::UpstreamUnreachable(e.to_string()),
            ForwardError::BadRequest(_) => Self::BadRequest,
            ForwardError::ClientTooSlow(_) => Self::ClientTooSlow(e.to_string()),
            ForwardError::ClientGone(_) | ForwardError::ClientLeft => Self::ClientGone(e.to_string()),
            ForwardError::BadResponse(_) => Self::UpstreamBroken(e.to_string()),
        }
    }
}

impl From<CodeRefused> for WebError {
    /// Only the failures that are not the person's: a wrong code is answered on its page.
    fn from(e: CodeRefused) -> Self {
        match e {
            CodeRefused::Store(e) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<EnrollError> for WebError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Store(e) => Self::Unavailable(e.to_string()),
            EnrollError::NotOffered => Self::FactorNotOffered,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<KeyError> for WebError {
    /// Only the failures that are not the person's: a refused key is answered on its page.
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(e) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<RemoveError> for WebError {
    fn from(e: RemoveError) -> Self {
        match e {
            RemoveError::LastRequired => Self::LastFactorRequired,
            RemoveError::NothingToRemove => Self::Internal("nothing to remove".into()),
            RemoveError::Store(e) => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<LinkError> for WebError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Dead => Self::DeadRecoveryLink,
            LinkError::Store(e) => Self::Unavailable(e.to_string()),
        }
    }
}

/// A link on an error page: where, and its words.
type Action = Option<(String, &'static str)>;

fn sign_in() -> Action {
    Some((Destination::Login.path().into(), "Go to sign in"))
}

impl WebError {
    /// The page a person sees for this error. Failures that are ours are logged here, with their
    /// detail; the page never shows it.
    pub fn into_response(self) -> Response<Body> {
        match &self {
            Self::Unavailable(_)
            | Self::Internal(_)
            | Self::VerificationUnsaved(_)
            | Self::SignInUnavailable(_)
            | Self::SignOutFailed(_)
            | Self::RecoveredWithoutSession(_) => tracing::error!("{self}"),
            Self::UpstreamTimeout(_) | Self::UpstreamUnreachable(_) | Self::UpstreamBroken(_) => {
                tracing::warn!("{self}")
            }
            Self::HandoffRefused(_) => tracing::warn!(target: "portcullis::security", "{self}"),
            // Any client can do this at will: not an alert, and never the upstream's fault.
            Self::ClientGone(_) => tracing::debug!("{self}"),
            Self::ClientTooSlow(_) | Self::FormTooSlow => {
                tracing::warn!(target: "portcullis::security", "{self}; connection closed")
            }
            _ => {}
        }
        let (status, title, message, action): (StatusCode, &str, String, Action) = match &self {
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Page not found",
                "There is no Portcullis page at this address.".into(),
                Some(("/".into(), "Go to the start page")),
            ),
            Self::NoSuchAction => (StatusCode::BAD_REQUEST, "Unknown action", "There is no such action.".into(), None),
            Self::TwoStepOff => {
                (StatusCode::NOT_FOUND, "Page not found", "Two-step verification is switched off here.".into(), None)
            }
            Self::CrossOrigin => (
                StatusCode::FORBIDDEN,
                "Request refused",
                "This form was not sent from this site, so it was ignored. If you followed a link here, go to the site directly.".into(),
                sign_in(),
            ),
            Self::StaleForm => (
                StatusCode::FORBIDDEN,
                "Request refused",
                "This form had expired. Go back, reload the page and try again.".into(),
                None,
            ),
            Self::UnsupportedForm => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported form",
                "This page only accepts its own form.".into(),
                None,
            ),
            Self::FormTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "That form was larger than any Portcullis form can be.".into(),
                None,
            ),
            Self::FormTooSlow => (
                StatusCode::REQUEST_TIMEOUT,
                "The form took too long",
                "The form did not arrive in time. Check your connection and send it again.".into(),
                None,
            ),
            Self::MalformedForm => (
                StatusCode::BAD_REQUEST,
                "Malformed form",
                "The form could not be read. Go back and try again.".into(),
                None,
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Something went wrong",
                "Your change could not be saved. Try again; if it keeps failing, tell the administrator.".into(),
                None,
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Portcullis could not finish this. Try again; if it keeps failing, tell the administrator, who will find details in its log.".into(),
                None,
            ),
            Self::VerificationUnsaved(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Verification unavailable",
                "Your code was right, but the session could not be saved. Try again.".into(),
                None,
            ),
            Self::SignInUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable",
                "Your password was right, but a session could not be stored. Try again; if it keeps failing, tell the administrator.".into(),
                None,
            ),
            Self::StoreOffline => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable for a moment",
                "Portcullis cannot reach its data store just now, so it cannot sign anyone in or check who you are. Try again in a minute; if it keeps failing, tell the administrator.".into(),
                None,
            ),
            Self::SignOutFailed(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-out failed",
                "Your session could not be ended. Try again.".into(),
                None,
            ),
            Self::CodesPaused { seconds, who: Who::Address } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                format!("Too many wrong codes came from your network, which others may share, so codes from it are not checked for about {} minute(s). Try again then.", whole_minutes(*seconds)),
                None,
            ),
            Self::CodesPaused { seconds, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                format!("Too many wrong codes. For safety, codes for this account are not checked for about {} minute(s); try again then.", whole_minutes(*seconds)),
                None,
            ),
            Self::CodesCrowded => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts at once",
                "Several codes are being checked at once. Wait a moment and try again.".into(),
                None,
            ),
            Self::SecondFactorLocked => (
                StatusCode::FORBIDDEN,
                "Two-step verification locked",
                "After too many wrong codes in a row, two-step verification for this account is locked. Ask the administrator to reset it.".into(),
                None,
            ),
            Self::TooManyCodes { paused_for: Some(seconds) } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many wrong codes",
                format!("For your safety you have been signed out, and codes for this account are not checked for about {} minute(s). You can sign in again after that; use a recovery code if your authenticator is not available.", whole_minutes(*seconds)),
                None,
            ),
            Self::TooManyCodes { paused_for: None } => (
                StatusCode::UNAUTHORIZED,
                "Too many wrong codes",
                "For your safety you have been signed out. Sign in again, and use a recovery code if your authenticator is not available.".into(),
                Some((Destination::Login.path().into(), "Sign in again")),
            ),
            Self::NoFactorPossible => (
                StatusCode::FORBIDDEN,
                "Two-step verification cannot be set up",
                "Your account needs a second step, but none can be set up here at the moment. Tell your administrator.".into(),
                Some((Destination::Logout.path().into(), "Sign out")),
            ),
            Self::Stranded { names } => (
                StatusCode::FORBIDDEN,
                "Your second step was turned off",
                format!("Your password was right, but {names} can no longer be used to sign in here: your administrator turned it off, and no other kind of second step can be set up right now. Until that changes you cannot go on. Contact your administrator: they can turn it back on, or send you a recovery link with which you set up a new second step."),
                Some((Destination::Logout.path().into(), "Sign out")),
            ),
            Self::ProviderUnavailable { name } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing in with that is not possible right now",
                format!("{name} cannot be reached at the moment. Try again in a minute, or sign in another way."),
                Some((Destination::Login.path().into(), "Back to sign in")),
            ),
            Self::ProviderRefused { name, code } => (
                StatusCode::FORBIDDEN,
                "Not signed in",
                format!("{name} did not sign you in (it said \"{code}\"). You can try again, or sign in another way."),
                Some((Destination::Login.path().into(), "Back to sign in")),
            ),
            Self::ProviderSignInNotStarted => (
                StatusCode::BAD_REQUEST,
                "Start signing in again",
                "This sign-in was not started in this browser, or it took longer than 10 minutes. Start again from the sign-in page.".into(),
                Some((Destination::Login.path().into(), "Back to sign in")),
            ),
            Self::ProviderAnswerRefused { name } => (
                StatusCode::FORBIDDEN,
                "Not signed in",
                format!("The answer from {name} could not be accepted. Start again from the sign-in page; if it happens again, tell your administrator."),
                Some((Destination::Login.path().into(), "Back to sign in")),
            ),
            Self::IdentityLinkedElsewhere { name } => (
                StatusCode::CONFLICT,
                "Linked to another account",
                format!("That {name} account already signs in to another account here, so it was not linked to yours. Unlink it there first, or ask your administrator."),
                Some((Destination::Account.path().into(), "Back to your account")),
            ),
            Self::IdentityNotLinked { name } => (
                StatusCode::FORBIDDEN,
                "No account for this sign-in",
                format!("Your {name} account is not linked to an account here. Sign in another way, or ask your administrator to link it."),
                Some((Destination::Login.path().into(), "Back to sign in")),
            ),
            Self::PasswordInDirectory => (
                StatusCode::FORBIDDEN,
                "Change it in your directory",
                "Your account has no password here: you sign in through your organisation's directory or sign-in provider. Change your password there; the new one works here at once.".into(),
                Some((Destination::Account.path().into(), "Back to your account")),
            ),
            Self::SignInLinkInvalid => (
                StatusCode::GONE,
                "This sign-in link no longer works",
                "It was used already, replaced by a newer link, or is older than 15 minutes. Ask for a new one, in the browser you want to sign in with.".into(),
                Some((Destination::LoginEmail.path().into(), "Email me a new link")),
            ),
            Self::LinkThenEmailOnly => (
                StatusCode::FORBIDDEN,
                "Sign in with your password",
                "Your account's second step is a code sent by email. After a sign-in link, which came by email too, that would prove the same mailbox twice, which is one step, not two. Sign in with your user name and password instead, then use the emailed code.".into(),
                Some((Destination::Login.path().into(), "Sign in with your password")),
            ),
            Self::FactorNotOffered => (
                StatusCode::FORBIDDEN,
                "Not offered",
                "That kind of second step cannot be set up here any more. Your account page shows what can.".into(),
                Some((Destination::Account.path().into(), "Go to your account")),
            ),
            Self::LastFactorRequired => (
                StatusCode::FORBIDDEN,
                "Cannot turn off",
                "Your account requires two-step verification, so its last second step cannot be removed. To use a new phone, choose \"Move to a new phone\" on your account page.".into(),
                Some((Destination::Account.path().into(), "Back to your account")),
            ),
            Self::NotAdministrator => (
                StatusCode::FORBIDDEN,
                "Not an administrator",
                "Your account is not in the group that administers Portcullis.".into(),
                Some(("/".into(), "Continue to the application")),
            ),
            Self::AdminNeedsSecondFactor => (
                StatusCode::FORBIDDEN,
                "Two-step verification first",
                "The admin pages need a second factor. Set up two-step verification for your account, then come back.".into(),
                Some((Destination::Enroll.with_return(Destination::Admin.path(), &[]), "Set it up")),
            ),
            Self::ActionRefused(reason) => (
                StatusCode::BAD_REQUEST,
                "Not done",
                reason.clone(),
                Some((Destination::Admin.path().into(), "Back to administration")),
            ),
            Self::DeadRecoveryLink => (
                StatusCode::GONE,
                "This recovery link does not work",
                "It may have expired, been used already, or been replaced by a newer one. Ask your administrator for a new link.".into(),
                sign_in(),
            ),
            Self::RecoveredWithoutSession(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Almost there",
                "Your old factors were removed, but a session could not be started. Sign in with your password to set up a new authenticator.".into(),
                sign_in(),
            ),
            Self::UpstreamTimeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "The application is taking too long",
                "It did not answer in time. Try again in a moment; if it keeps happening, tell the administrator.".into(),
                None,
            ),
            Self::UpstreamUnreachable(_) => (
                StatusCode::BAD_GATEWAY,
                "The application is not answering",
                "Portcullis let you in, but the application behind it could not be reached. Try again in a moment; if it keeps happening, tell the administrator.".into(),
                None,
            ),
            Self::UpstreamBroken(_) => (
                StatusCode::BAD_GATEWAY,
                "The application gave an answer Portcullis cannot pass on",
                "Try again in a moment; if it keeps happening, tell the administrator, who will find details in the log.".into(),
                None,
            ),
            Self::BadRequest => {
                (StatusCode::BAD_REQUEST, "Bad request", "This request cannot be passed on.".into(), None)
            }
            Self::MisdirectedHost => {
                return pages::plain(
                    StatusCode::MISDIRECTED_REQUEST,
                    "421 Misdirected Request: this server does not answer for that host\n",
                );
            }
            Self::ForwardAuthUntrusted => {
                return pages::plain(
                    StatusCode::UNAUTHORIZED,
                    "401 Unauthorized: forward-auth answers only the front proxies in trusted_proxies\n",
                );
            }
            Self::ForwardAuthUndescribed(_) => {
                return pages::plain(
                    StatusCode::BAD_REQUEST,
                    "400 Bad Request: the front proxy did not describe the request (see the log)\n",
                );
            }
            Self::Denied => (
                StatusCode::FORBIDDEN,
                "Not available",
                "This address is closed to everyone here.".into(),
                None,
            ),
            Self::HandoffRefused(_) => (
                StatusCode::FORBIDDEN,
                "This sign-in link does not work",
                "It was used already, is too old, or belongs to another address. Go back to the page you wanted and try again.".into(),
                Some(("/".into(), "Go to the start page")),
            ),
            Self::MethodNotAllowed => {
                let mut response = pages::plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                return response;
            }
            Self::ClientGone(_) => {
                let mut response =
                    pages::plain(StatusCode::BAD_REQUEST, "400 Bad Request: the request body broke off\n");
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
            Self::ClientTooSlow(_) => {
                let mut response = pages::plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "408 Request Timeout: the request body stopped arriving\n",
                );
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
        };
        let mut response =
            pages::error(status, title, &message, action.as_ref().map(|(href, words)| (href.as_str(), *words)));
        match self {
            Self::FormTooSlow => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::CodesCrowded => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::CodesPaused { seconds, .. } | Self::TooManyCodes { paused_for: Some(seconds) } => {
                if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        response
    }
}
