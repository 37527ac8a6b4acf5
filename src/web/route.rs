//! Routing: a pure function from a request's method, path and headers to a decision.
//!
//! Everything under `/.portcullis/` (on every host) is the proxy's own; it is never forwarded.
//! Everything else goes through the gate. The prefix is matched on the normalised path (percent
//! decoding, `.`/`..` segments and repeated slashes resolved) so that `/x/../.portcullis/login` is
//! not forwarded either; and own pages answer only at their normal spelling, so odd spellings of
//! our paths get a 404 rather than a second way in.

use http::{HeaderMap, Method, header};
use percent_encoding::percent_decode_str;

pub const PREFIX: &str = "/.portcullis";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnPage {
    Login,
    /// Sign in with a passkey alone (`webauthn.passwordless`): the form the login page's script
    /// posts the passkey's answer to.
    LoginPasskey,
    /// Ask for a sign-in link by email (`[login.email_link]`).
    LoginEmail,
    /// A sign-in link, opened.
    LoginEmailOpen,
    /// The code shown where a link was opened in another browser, typed into the asking one.
    LoginEmailCode,
    /// Sign in through the OpenID Connect provider with this id: off to the provider.
    OidcStart(String),
    /// The provider sends the browser back here.
    OidcCallback(String),
    Logout,
    Account,
    /// Prove the second factor (after the password, or again before a sensitive change).
    Challenge,
    /// Set up an authenticator.
    Enroll,
    /// Show freshly made recovery codes once, and confirm they were saved.
    RecoveryCodes,
    /// "Two-step verification becomes required on …": set it up now, or later.
    Reminder,
    /// Under `optional`: a suggestion to set up 2FA; "don't ask again" is a POST.
    Nudge,
    /// An action on the account page, at `/.portcullis/account/<action>`.
    AccountAction(AccountAction),
    /// "Email me a code" on the challenge page (POST).
    ChallengeEmail,
    /// Set up codes by email: the confirmation page (GET), or send a confirmation code (POST).
    EnrollEmail,
    /// The confirmation code (POST).
    EnrollEmailConfirm,
    /// Redeem an admin-issued recovery link (with the password).
    Recover,
    /// The operators' overview (members of `admin.group`).
    Admin,
    /// A POST from the admin page.
    AdminAction,
    /// Handing a session to another host: on the main host, make a code (`?to=URL`); on the other
    /// host, exchange it (`?code=…&rd=…`).
    Handoff,
    /// Forward-auth: a front proxy asks whether a request it holds may pass (answered on any
    /// host, since the subrequest's own `Host` is the front proxy's business).
    ForwardAuth,
    /// The public keys that verify identity assertions (a JWK Set, RFC 7517 §5).
    Jwks,
    /// Register a security key or passkey: the page (GET), the browser's answer (POST).
    SecurityKeyNew,
    /// Remove one security key (`?key=<handle>`): the confirmation (GET), the removal (POST).
    SecurityKeyRemove,
    /// A file under `static/`, by name.
    Static(String),
    NotFound,
}

impl OwnPage {
    /// Pages that involve no session at all, served whatever the store does: files (the error
    /// page's own stylesheet among them), the identity keys, not-found.
    pub fn needs_no_session(&self) -> bool {
        matches!(self, Self::Jwks | Self::Static(_) | Self::NotFound)
    }

    /// Pages served while the store cannot be reached, within `store.offline_grace`: those, and
    /// forward-auth, which checks sessions in memory as the gate does.
    pub fn works_offline(&self) -> bool {
        self.needs_no_session() || matches!(self, Self::ForwardAuth)
    }
}

/// What a signed-in person can do from the account page. The sensitive ones show a page on GET
/// (a confirmation or a form) and act on POST, each behind a fresh second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountAction {
    RemoveTotp,
    RemoveEmail,
    PrimaryTotp,
    PrimaryEmail,
    RegenerateCodes,
    ChangePassword,
    SignOutEverywhere,
    /// Sign out one of the user's other sessions.
    EndSession,
    /// Forget one remembered browser.
    ForgetBrowser,
    /// Unlink an OpenID Connect identity from the account.
    UnlinkIdentity,
}

impl AccountAction {
    const ALL: [Self; 10] = [
        Self::RemoveTotp,
        Self::RemoveEmail,
        Self::PrimaryTotp,
        Self::PrimaryEmail,
        Self::RegenerateCodes,
        Self::ChangePassword,
        Self::SignOutEverywhere,
        Self::EndSession,
        Self::ForgetBrowser,
        Self::UnlinkIdentity,
    ];

    /// The part of the path after `/.portcullis/account/`.
    pub fn slug(self) -> &'static str {
        match self {
            Self::RemoveTotp => "remove-totp",
            Self::RemoveEmail => "remove-email",
            Self::PrimaryTotp => "primary-totp",
            Self::PrimaryEmail => "primary-email",
            Self::RegenerateCodes => "regenerate-codes",
            Self::ChangePassword => "password",
            Self::SignOutEverywhere => "sign-out-everywhere",
            Self::EndSession => "sessions/end",
            Self::ForgetBrowser => "browsers/forget",
            Self::UnlinkIdentity => "identities/unlink",
        }
    }

    pub fn path(self) -> String {
        format!("{PREFIX}/account/{}", self.slug())
    }

    fn parse(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.slug() == slug)
    }

    /// Whether a GET shows a page for it (a confirmation, or the password form).
    pub fn has_page(self) -> bool {
        matches!(self, Self::RemoveTotp | Self::RemoveEmail | Self::RegenerateCodes | Self::ChangePassword)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Own(OwnPage),
    /// Needs a full session, then goes to the upstream.
    Gate,
}

/// The own pages a browser is sent to (most with a place to go afterwards, `?rd=`): every path
/// a handler names comes from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Login,
    LoginEmail,
    LoginEmailOpen,
    Logout,
    Challenge,
    Enroll,
    EnrollEmail,
    RecoveryCodes,
    Reminder,
    Nudge,
    Account,
    Admin,
    Handoff,
    /// Not a page: the JWK Set upstreams fetch (named here so every path is in this file).
    Jwks,
    SecurityKeyNew,
    SecurityKeyRemove,
}

impl Destination {
    pub const fn path(self) -> &'static str {
        match self {
            Self::Login => "/.portcullis/login",
            Self::LoginEmail => "/.portcullis/login/email",
            Self::LoginEmailOpen => "/.portcullis/login/email/open",
            Self::Logout => "/.portcullis/logout",
            Self::Challenge => "/.portcullis/challenge",
            Self::Enroll => "/.portcullis/enroll",
            Self::EnrollEmail => "/.portcullis/enroll/email",
            Self::RecoveryCodes => "/.portcullis/recovery-codes",
            Self::Reminder => "/.portcullis/reminder",
            Self::Nudge => "/.portcullis/nudge",
            Self::Account => "/.portcullis/account",
            Self::Admin => "/.portcullis/admin",
            Self::Handoff => "/.portcullis/handoff",
            Self::Jwks => "/.portcullis/jwks.json",
            Self::SecurityKeyNew => "/.portcullis/security-keys/new",
            Self::SecurityKeyRemove => "/.portcullis/security-keys/remove",
        }
    }

    /// The path with `?rd=` (and any further `extra` query pairs), relative to the public URL.
    pub fn with_return(self, return_to: &str, extra: &[(&str, &str)]) -> String {
        let mut pairs = vec![("rd", return_to)];
        pairs.extend_from_slice(extra);
        let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
        format!("{}?{query}", self.path())
    }
}

/// A notice on the account or admin page after a change (`?done=`): fixed keys, never text.
pub fn done(page: Destination, key: &str) -> String {
    let query = serde_urlencoded::to_string([("done", key)]).unwrap_or_default();
    format!("{}?{query}", page.path())
}

/// The path as a server would resolve it: percent-decoded, dot segments and empty segments
/// removed (RFC 3986 §5.2.4).
pub fn normalize(path: &str) -> String {
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !segments.is_empty();
    format!("/{}{}", segments.join("/"), if trailing { "/" } else { "" })
}

/// `<id>` or `<id>/callback` under `/login/oidc/`: a provider id as `[[login.oidc]]` allows.
fn oidc_page(rest: &str) -> OwnPage {
    let (id, callback) = match rest.strip_suffix("/callback") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    let valid = !id.is_empty()
        && id.len() <= 27
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    match (valid, callback) {
        (false, _) => OwnPage::NotFound,
        (true, false) => OwnPage::OidcStart(id.to_string()),
        (true, true) => OwnPage::OidcCallback(id.to_string()),
    }
}

/// Whether `path` is already what [`normalize`] makes of it (nothing to decode, no dot or empty
/// segments): true of nearly every request, which then routes without an allocation.
fn is_normal(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(['%', '\\'])
        && !path.contains("//")
        && path.split('/').all(|segment| segment != "." && segment != "..")
}

pub fn route(path: &str) -> Route {
    let normal =
        if is_normal(path) { std::borrow::Cow::Borrowed(path) } else { std::borrow::Cow::Owned(normalize(path)) };
    let own = normal.strip_prefix(PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if !own {
        return Route::Gate;
    }
    if path != normal {
        return Route::Own(OwnPage::NotFound);
    }
    let page = match normal.strip_prefix(PREFIX).unwrap_or("") {
        "/login" => OwnPage::Login,
        "/login/passkey" => OwnPage::LoginPasskey,
        "/login/email" => OwnPage::LoginEmail,
        "/login/email/open" => OwnPage::LoginEmailOpen,
        "/login/email/code" => OwnPage::LoginEmailCode,
        "/logout" => OwnPage::Logout,
        "/account" | "" | "/" => OwnPage::Account,
        "/challenge" => OwnPage::Challenge,
        "/enroll" => OwnPage::Enroll,
        "/recovery-codes" => OwnPage::RecoveryCodes,
        "/reminder" => OwnPage::Reminder,
        "/nudge" => OwnPage::Nudge,
        "/challenge/email" => OwnPage::ChallengeEmail,
        "/enroll/email" => OwnPage::EnrollEmail,
        "/enroll/email/confirm" => OwnPage::EnrollEmailConfirm,
        "/admin" => OwnPage::Admin,
        "/recover" => OwnPage::Recover,
        "/admin/action" => OwnPage::AdminAction,
        "/handoff" => OwnPage::Handoff,
        "/auth" => OwnPage::ForwardAuth,
        "/jwks.json" => OwnPage::Jwks,
        "/security-keys/new" => OwnPage::SecurityKeyNew,
        "/security-keys/remove" => OwnPage::SecurityKeyRemove,
        rest if rest.starts_with("/login/oidc/") => oidc_page(&rest["/login/oidc/".len()..]),
        rest => match (rest.strip_prefix("/static/"), rest.strip_prefix("/account/").and_then(AccountAction::parse)) {
            (Some(name), _) if !name.is_empty() && !name.contains('/') => OwnPage::Static(name.to_string()),
            (_, Some(action)) => OwnPage::AccountAction(action),
            _ => OwnPage::NotFound,
        },
    };
    Route::Own(page)
}

/// A top-level browser navigation, which may be answered with a redirect to the login page.
/// Anything else (API calls, XHR, form posts) gets a 401: redirecting those would break clients
/// and, for non-GET, would silently drop the request body.
pub fn is_browser_navigation(method: &Method, headers: &HeaderMap) -> bool {
    let safe = method == Method::GET || method == Method::HEAD;
    let wants_html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().to_ascii_lowercase().starts_with("text/html")));
    let is_fetch =
        headers.get("x-requested-with").is_some() || headers.get("sec-fetch-mode").is_some_and(|m| m != "navigate");
    safe && wants_html && !is_fetch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pages_and_the_gate() {
        let table = [
            ("/", Route::Gate),
            ("/wiki/Main_Page", Route::Gate),
            ("/.portcullisx", Route::Gate),
            ("/.portcullis/login", Route::Own(OwnPage::Login)),
            ("/.portcullis/logout", Route::Own(OwnPage::Logout)),
            ("/.portcullis/account", Route::Own(OwnPage::Account)),
            ("/.portcullis/", Route::Own(OwnPage::Account)),
            ("/.portcullis/static/portcullis.css", Route::Own(OwnPage::Static("portcullis.css".into()))),
            ("/.portcullis/nope", Route::Own(OwnPage::NotFound)),
            ("/.portcullis/jwks.json", Route::Own(OwnPage::Jwks)),
            ("/.portcullis/jwks.json/", Route::Own(OwnPage::NotFound)),
            ("/.portcullis//jwks.json", Route::Own(OwnPage::NotFound)),
            ("/.portcullis/challenge", Route::Own(OwnPage::Challenge)),
            ("/.portcullis/enroll", Route::Own(OwnPage::Enroll)),
            ("/.portcullis/recovery-codes", Route::Own(OwnPage::RecoveryCodes)),
            ("/.portcullis/account/remove-totp", Route::Own(OwnPage::AccountAction(AccountAction::RemoveTotp))),
            ("/.portcullis/account/sessions/end", Route::Own(OwnPage::AccountAction(AccountAction::EndSession))),
            ("/.portcullis/account/password", Route::Own(OwnPage::AccountAction(AccountAction::ChangePassword))),
            ("/.portcullis/account/format-disk", Route::Own(OwnPage::NotFound)),
            // Resolves to /etc/passwd, which is what the upstream would see: an ordinary gated path.
            ("/.portcullis/static/../../etc/passwd", Route::Gate),
            ("/x/../.portcullis/login", Route::Own(OwnPage::NotFound)),
            ("//.portcullis/login", Route::Own(OwnPage::NotFound)),
            ("/%2eportcullis/login", Route::Own(OwnPage::NotFound)),
            ("/.portcullis%2Flogin", Route::Own(OwnPage::NotFound)),
        ];
        for (path, expected) in table {
            assert_eq!(route(path), expected, "{path}");
        }
        assert_eq!(route(Destination::Jwks.path()), Route::Own(OwnPage::Jwks));
    }

    #[test]
    fn only_html_gets_and_heads_are_navigations() {
        let html = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, accept.parse().unwrap());
            h
        };
        let browser = html("text/html,application/xhtml+xml,*/*;q=0.8");
        assert!(is_browser_navigation(&Method::GET, &browser));
        assert!(is_browser_navigation(&Method::HEAD, &browser));
        assert!(!is_browser_navigation(&Method::POST, &browser));
        assert!(!is_browser_navigation(&Method::GET, &html("application/json")));
        assert!(!is_browser_navigation(&Method::GET, &HeaderMap::new()));
        let mut xhr = browser.clone();
        xhr.insert("x-requested-with", "XMLHttpRequest".parse().unwrap());
        assert!(!is_browser_navigation(&Method::GET, &xhr));
    }

    proptest::proptest! {
        /// Normalisation never panics and leaves no dot segments or empty segments behind.
        #[test]
        fn normalized_paths_are_canonical(path in "(/|%2[eEfF]|%5[cC]|\\.|\\.\\.|;|[a-z]){0,40}") {
            let normal = normalize(&path);
            proptest::prop_assert!(normal.starts_with('/'));
            proptest::prop_assert!(!normal.contains("//"));
            for segment in normal.split('/') {
                proptest::prop_assert!(segment != "." && segment != "..");
            }
            // A path that normalises into our prefix is never routed to the gate.
            if normal.starts_with("/.portcullis/") {
                proptest::prop_assert!(matches!(route(&path), Route::Own(_)));
            }
        }

        #[test]
        fn routing_never_panics(path in ".{0,200}") {
            let _ = route(&path);
        }

        /// The shortcut that skips normalising is taken only where normalising changes nothing.
        #[test]
        fn paths_taken_as_normal_are(path in "(/|%2[eEfF]|%5[cC]|\\\\|\\.|\\.\\.|;|[a-z]){0,40}") {
            if is_normal(&path) {
                proptest::prop_assert_eq!(normalize(&path), path);
            }
        }
    }
}
