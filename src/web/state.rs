//! What every request handler shares: the services, composed once by the server, and the
//! request's session with the 2FA policy applied.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::base::clock::SharedClock;
use crate::base::fields::Fields;
use crate::base::headers;
use crate::config::{Config, SharedConfig};
use crate::domain::factors::{AccountRecord, FactorKind, SecondFactors, providers};
use crate::domain::handoff::HandoffCodes;
use crate::domain::identity::AssertionSigner;
use crate::domain::notify::Notifier;
use crate::domain::operator::Admin;
use crate::domain::policy::{self, Proven, Requirement, Setup};
use crate::domain::regulation::Regulator;
use crate::domain::session::{FullSession, Lookup, Session, SessionKey, Sessions};
use crate::domain::sign_in::SignIn;
use crate::domain::users::{User, UserDirectory};
use crate::web::pending::Pending;

/// Everything a request needs, shared by all connections.
pub struct App {
    pub config: SharedConfig,
    pub users: Arc<UserDirectory>,
    pub sessions: Arc<Sessions>,
    /// Password checks (the first factor), regulated.
    pub sign_in: SignIn,
    /// Second factors: verification, setup, removal, recovery codes, remembered browsers.
    pub factors: SecondFactors,
    /// Signs the identity assertion; shared with the control socket, which rotates its keys.
    pub signer: Arc<AssertionSigner>,
    /// Enrollment state between page loads, per session.
    pub pending: Pending,
    /// OpenID Connect sign-ins in progress, and the providers' metadata (`[[login.oidc]]`).
    pub oidc: crate::domain::oidc::OidcClients,
    /// OpenID Connect sign-ins in progress, per browser, bounded per client.
    pub oidc_pending: crate::web::pending_sign_ins::OidcLogins,
    /// Sign-in links sent and not yet used (`[login.email_link]`).
    pub email_links: crate::domain::email_link::EmailLinks,
    /// Passkey sign-ins in progress, per browser (`webauthn.passwordless`).
    pub passkey_logins: crate::web::pending_sign_ins::PasskeyLogins,
    /// Codes handing a session from the main host to another host.
    pub handoff: HandoffCodes,
    pub regulator: Arc<Regulator>,
    /// What the start-up clock check found, for the admin page.
    pub clock_warnings: arc_swap::ArcSwap<Vec<String>>,
    pub notifier: Arc<Notifier>,
    pub clock: SharedClock,
}

/// Where a request is going: the main host (`public_url`'s), or another host the proxy serves.
#[derive(Debug, Clone)]
pub struct Target {
    /// Lower case, no port.
    pub host: String,
    /// The authority as the client wrote it (with its port), for URLs back to this host.
    pub authority: String,
    pub main: bool,
}

impl Target {
    /// The session lookup's host: `None` on the main host.
    pub fn session_host(&self) -> Option<&str> {
        (!self.main).then_some(self.host.as_str())
    }
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Who a request was for, for the access log (never a cookie or a secret).
#[derive(Debug, Default, Clone)]
pub struct RequestUser(pub Option<String>);

impl App {
    /// The configuration in force (swapped whole on reload; lock-free to read).
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The operator's view of this proxy's state (shared, not copied).
    pub fn admin(&self) -> Admin {
        Admin {
            config: self.config.clone(),
            users: self.users.clone(),
            sessions: self.sessions.clone(),
            accounts: self.factors.accounts.clone(),
            regulator: self.regulator.clone(),
            notifier: self.notifier.clone(),
            identity: Some(self.signer.clone()),
            clock: self.clock.clone(),
        }
    }

    /// The account's factor record (memory only).
    pub fn account(&self, user: &User) -> Arc<AccountRecord> {
        self.factors.accounts.get(user)
    }

    /// Whether `user` has a second factor that counts under the providers in force (a factor of a
    /// disabled provider does not; see `domain::factors::providers`).
    pub fn has_factor(&self, user: &User) -> bool {
        providers::has_counting_factor(&self.account(user), &self.config().mfa.providers)
    }

    /// Whether `full` proved a second factor that still counts (its provider was not disabled
    /// since): what access rules asking for a second factor weigh.
    pub fn proved_counting_factor(&self, full: &FullSession) -> bool {
        self.proved_counting_factor_in(full, &self.account(full.user()), &self.config().mfa.providers)
    }

    /// [`App::proved_counting_factor`] with the account's record and the providers at hand.
    pub(crate) fn proved_counting_factor_in(
        &self,
        full: &FullSession,
        record: &AccountRecord,
        providers: &crate::config::providers::Providers,
    ) -> bool {
        self.provider_mfa_holds(full)
            || full.proved_second_factor()
                && providers::proof_counts(full.amr(), (full.proven_with(), full.keys_used()), record, providers)
    }

    /// An account whose every factor's provider was disabled: what the stranded page explains.
    pub fn is_stranded(&self, user: &User) -> bool {
        providers::is_stranded(&self.account(user), &self.config().mfa.providers)
    }

    /// The names of the providers of `user`'s factors that no longer count, for the pages that
    /// explain it ("Authenticator app and Codes by email").
    pub fn turned_off_names(&self, user: &User) -> String {
        let config = self.config();
        let record = self.account(user);
        let mut names: Vec<String> = providers::not_counting(&record, &config.mfa.providers)
            .into_iter()
            .map(|id| {
                config.mfa.providers.get(id).map_or_else(|| "your earlier second step".into(), |p| p.name.clone())
            })
            .collect();
        names.dedup();
        names.join(" and ")
    }

    /// What the 2FA policy asks of `user` now.
    pub fn requirement(&self, user: &User) -> Requirement {
        policy::requirement(&self.config().mfa, user, self.clock.now())
    }

    pub fn session_cookie(&self) -> &str {
        // Restart-only, so the value the sessions were opened with is the one in force.
        &self.sessions.settings().cookie_name
    }

    /// The session the request's cookies name, as stored (no policy applied).
    pub fn resolve_session(&self, request_headers: &http::HeaderMap) -> Lookup {
        self.resolve_session_on(request_headers, None)
    }

    /// [`App::resolve_session`] on another host (`None`: the main host).
    pub fn resolve_session_on<F: Fields + ?Sized>(&self, request_headers: &F, host: Option<&str>) -> Lookup {
        self.sessions.resolve_on(headers::cookie_values(request_headers, self.session_cookie()), &self.users, host)
    }

    /// The request's session, with the 2FA policy applied: a full session that no longer satisfies
    /// it (the policy or the user's groups changed, or a factor was enrolled elsewhere or reset
    /// since it was made) is turned back into a partial one here, for the gate and our own pages
    /// alike, so it can neither reach the upstream nor act on the account page.
    pub async fn session(&self, request_headers: &http::HeaderMap) -> Lookup {
        self.session_on(request_headers, None).await
    }

    /// [`App::session`] on another host (`None`: the main host).
    pub async fn session_on<F: Fields + ?Sized>(&self, request_headers: &F, host: Option<&str>) -> Lookup {
        let mut lookup = self.resolve_session_on(request_headers, host);
        // With a store other replicas share, a session made on another one a moment ago may not
        // have reached this one's memory yet: looked up in the store once.
        // The rare ways on are boxed here and below: the express lane allocates every request's
        // future whole, and theirs would be most of its size.
        if matches!(lookup, Lookup::Rejected(crate::domain::session::Rejected::Unknown))
            && self.sessions.shared()
            && Box::pin(self.sessions.fetch(headers::cookie_values(request_headers, self.session_cookie())))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!("could not look a session up in the shared store: {e}");
                    false
                })
        {
            lookup = self.resolve_session_on(request_headers, host);
        }
        match lookup {
            Lookup::Found(Session::Full(full)) if !self.satisfies_policy(&full) => {
                let user = full.user().name.to_string();
                tracing::warn!(target: "portcullis::security", %user, "session downgraded: the 2FA policy asks for more than it proved");
                let key = full.key().clone();
                // Whatever it was in the middle of (new recovery codes, a setup) was for the full
                // session; the partial one proves a factor first.
                Box::pin(self.pending.forget(&key)).await;
                match Box::pin(self.sessions.downgrade(full)).await {
                    Some(partial) => Lookup::Found(Session::Partial(partial)),
                    // A passkey session is ended instead: sign in again.
                    None => Lookup::Rejected(crate::domain::session::Rejected::Unknown),
                }
            }
            other => other,
        }
    }

    /// Whether a full session still satisfies the 2FA policy. A second factor it proved with a
    /// provider disabled since proves nothing now, so a status change on reload downgrades such
    /// sessions just as a policy change does.
    ///
    /// A session a passkey signed in by itself stands on that key alone, whatever the policy: it
    /// lasts while the key is on the account, its provider counts and passkeys may still sign in
    /// by themselves (`webauthn.passwordless`). Under "optional" 2FA an account without factors
    /// may go on with a password, but such a session has no password to go on with.
    fn satisfies_policy(&self, full: &FullSession) -> bool {
        let record = self.account(full.user());
        let config = self.config();
        let providers = &config.mfa.providers;
        let proved = full.proved_second_factor()
            && providers::proof_counts(full.amr(), (full.proven_with(), full.keys_used()), &record, providers);
        if full.signed_in_by_passkey() {
            return proved && config.webauthn.passwordless && config.mfa.security_keys;
        }
        // An OpenID provider's own MFA, trusted for it: the second factor this session proved,
        // and one the account has, as long as the trust lasts.
        let provider_mfa = self.provider_mfa_holds(full);
        let has_factor = provider_mfa || providers::has_counting_factor(&record, providers);
        let requirement = policy::requirement(&config.mfa, full.user(), self.clock.now());
        policy::full_session_allowed(requirement, has_factor, proved || provider_mfa)
    }

    /// Whether `full` proved its second factor with an OpenID provider's MFA (`mfa` in its
    /// `amr`) and the operator still trusts that provider for it (`trust_provider_mfa`).
    fn provider_mfa_holds(&self, full: &FullSession) -> bool {
        full.amr().contains(&crate::domain::factors::proof::AuthMethod::Mfa)
            && self.config().login.oidc.iter().any(|p| {
                p.trust_provider_mfa && full.proven_with().iter().any(|id| id.as_str() == format!("oidc_{}", p.id))
            })
    }

    /// Whether the session behind an open tunnel (a WebSocket) may keep it: still a live full
    /// session of a current user, and still satisfying the 2FA policy. Checked every
    /// [`crate::web::forward::UPGRADE_RECHECK`]; memory only.
    pub fn tunnel_still_allowed(&self, key: &SessionKey) -> bool {
        self.sessions.live_full(key, &self.users).is_some_and(|full| self.satisfies_policy(&full))
    }

    /// Whether `session` may set up a factor of `kind` now (see [`policy::may_set_up`]).
    pub fn may_set_up(&self, session: &Session, kind: FactorKind) -> Setup {
        let proven = match session {
            Session::Partial(_) => Proven::Password,
            Session::Full(full) => Proven::Full { recently: self.recently_proven(full) },
        };
        // Codes by email are not set up in a session a link from that mailbox began: the mailbox
        // would be both factors (see `AuthMethod::allows_email_codes_after`).
        if kind == FactorKind::Email && !session.first_factor().allows_email_codes_after() {
            return Setup::No;
        }
        let requirement = self.requirement(session.user());
        policy::may_set_up(&self.config().mfa, requirement, &self.account(session.user()), kind, proven)
    }

    /// Whether `full` proved a second factor within `mfa.step_up_window` (for sensitive changes).
    pub fn recently_proven(&self, full: &FullSession) -> bool {
        let window = self.config().mfa.step_up_window.as_secs() as i64;
        policy::recently_proven(full.second_factor_at(), self.clock.now(), window)
    }
}
