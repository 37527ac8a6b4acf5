//! Signing in through an OpenID Connect provider (`[[login.oidc]]`): off to the provider with a
//! sign-in kept for this browser, and back at the callback, where the provider's answer becomes
//! an identity (`domain/oidc`), the identity an account (`domain/identities.rs`), and the account
//! goes on as after a password, its second factor included (`login::after_first_factor`), unless
//! the operator trusts the provider's own MFA and its token says it did some.
//!
//! The browser is marked by a random nonce in its own cookie, `SameSite=Lax`: the provider sends
//! the browser back with a top-level navigation from its own site, on which a `Strict` cookie
//! would not come along.

use std::sync::Arc;

use cookie::SameSite;
use http::{HeaderMap, Request, Response, header};

use super::account::{fresh_enough, full_session};
use super::login::after_first_factor;
use super::login_page::end_previous;
use super::second_step::{Enough, complete_sign_in};
use crate::base::headers::cookie_values;
use crate::base::secret::random_token;
use crate::config::oidc::OidcProvider;
use crate::domain::identities::{self, Resolved};
use crate::domain::notify::SecurityEvent;
use crate::domain::oidc::{Callback, LIFETIME, OidcError};
use crate::web::client_body::ClientBody;
use crate::web::cookies::cookie_header;
use crate::web::error::WebError;
use crate::web::forms::return_to_from_query;
use crate::web::pages::Body;
use crate::web::respond::{Answer, client_ip, device, go_to};
use crate::web::state::{App, Connection};

fn provider(app: &App, id: &str) -> Result<Arc<OidcProvider>, WebError> {
    app.config().login.oidc.iter().find(|p| p.id == id).cloned().ok_or(WebError::NotFound)
}

/// Where the provider sends the browser back: to register with it as the redirect URI.
pub fn redirect_uri(app: &App, id: &str) -> String {
    app.config().public_url.join_path(&format!("/.portcullis/login/oidc/{id}/callback"))
}

fn nonce_of(app: &App, headers: &HeaderMap) -> Option<String> {
    let name = app.sessions.settings().oidc_cookie();
    cookie_values(headers, &name).find(|v| v.len() == 43).map(str::to_string)
}

fn set_nonce(app: &App, response: &mut Response<Body>, value: &str, max_age: time::Duration) {
    let name = app.sessions.settings().oidc_cookie();
    response.headers_mut().append(header::SET_COOKIE, cookie_header(app, &name, value, Some(max_age), SameSite::Lax));
}

/// Off to the provider.
pub(super) async fn start(app: &App, request: &Request<ClientBody>, conn: &Connection, id: &str) -> Answer {
    let provider = provider(app, id)?;
    let return_to = return_to_from_query(app, request);
    // From the account page: link this provider's identity to the signed-in account, after a
    // second step proven just now (like any change to how the account is reached).
    let linking = request.uri().query().is_some_and(|q| q.split('&').any(|pair| pair == "link=1"));
    let link_for = if linking {
        let here = format!("/.portcullis/login/oidc/{id}?link=1");
        match full_session(app, request.headers(), &here).await.and_then(|full| fresh_enough(app, full, &here)) {
            Ok(full) => Some(full.user().account_key.clone()),
            Err(elsewhere) => return Ok(*elsewhere),
        }
    } else {
        None
    };
    // A new nonce for every start: a sign-in never continues one someone else began.
    let nonce = random_token();
    let started = app.oidc.start(&provider, &redirect_uri(app, id), &return_to, app.clock.now()).await;
    match started {
        Ok((url, pending)) => {
            let pending = match &link_for {
                Some(account) => pending.linking_to(account),
                None => pending,
            };
            // Kept per browser, at most a few per client (a client starting sign-ins in a loop
            // churns its own share only, see `pending_sign_ins.rs`), and kept before the browser
            // is sent off: a provider that knows the person sends it straight back, maybe to
            // another replica. If it cannot be kept, nobody is sent to a sign-in that would fail
            // on return.
            if let Err(e) = app.oidc_pending.keep(&nonce, client_ip(app, request.headers(), conn), pending).await {
                tracing::error!(target: "portcullis::store", provider = %provider.id, "an OpenID Connect sign-in could not be kept: {e}");
                return Err(WebError::StoreOffline);
            }
            let mut response = crate::web::pages::see_other(&url);
            set_nonce(app, &mut response, &nonce, time::Duration::seconds(LIFETIME));
            Ok(response)
        }
        Err(e) => {
            tracing::error!(provider = %provider.id, "an OpenID Connect sign-in could not start: {e}");
            Err(WebError::ProviderUnavailable { name: provider.name.clone() })
        }
    }
}

/// Back from the provider.
pub(super) async fn callback(app: &Arc<App>, request: &Request<ClientBody>, conn: &Connection, id: &str) -> Answer {
    let provider = provider(app, id)?;
    let headers = request.headers();
    let query: Callback = serde_urlencoded::from_str(request.uri().query().unwrap_or("")).unwrap_or_default();
    let now = app.clock.now();
    let nonce = nonce_of(app, headers).ok_or(WebError::ProviderSignInNotStarted)?;
    let pending = app.oidc_pending.take(&nonce).await.ok_or(WebError::ProviderSignInNotStarted)?;
    let links_to = pending.links_to().map(str::to_string);
    let name = provider.name.clone();
    let (identity, return_to) = match app.oidc.finish(&provider, &redirect_uri(app, id), pending, query, now).await {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(target: "portcullis::security", provider = %provider.id, "OpenID Connect sign-in refused: {e}");
            return Err(match e {
                OidcError::Unavailable(_) => WebError::ProviderUnavailable { name },
                OidcError::ProviderSaid(code) => WebError::ProviderRefused { name, code },
                OidcError::NotStarted | OidcError::StateMismatch => WebError::ProviderSignInNotStarted,
                OidcError::Refused(_) => WebError::ProviderAnswerRefused { name },
            });
        }
    };
    if let Some(account) = links_to {
        return link_here(app, headers, &provider, &identity, &account).await;
    }
    let resolved = identities::resolve(&app.factors.accounts, &app.users, &provider, &identity, now)
        .await
        .map_err(|e| WebError::SignInUnavailable(e.to_string()))?;
    let Resolved::Account { proof, linked_now, provider_mfa } = resolved else {
        tracing::warn!(target: "portcullis::security", provider = %provider.id, "OpenID Connect identity linked to no account");
        return Err(WebError::IdentityNotLinked { name });
    };
    let user = proof.user().clone();
    if linked_now {
        tracing::warn!(target: "portcullis::security", user = %user.name, provider = %provider.id, "identity linked by its verified address");
        app.notifier.send(&user, SecurityEvent::IdentityLinked { provider: name.clone() }, now, true);
    }
    tracing::info!(target: "portcullis::security", user = %user.name, provider = %provider.id, "signed in through an OpenID provider");
    crate::base::metrics::login("ok");
    let previous = end_previous(app, headers).await;
    let device = device(headers, client_ip(app, headers, conn));
    let mut response = match provider_mfa {
        // The provider's own MFA, trusted for it: the second factor is done.
        Some(mfa) => {
            let (_, partial) =
                app.sessions.begin(proof, device).await.map_err(|e| WebError::SignInUnavailable(e.to_string()))?;
            complete_sign_in(app, partial, Enough::SecondFactor(mfa), go_to(app, &return_to)).await?.0
        }
        None => after_first_factor(app, proof.into(), headers, device, &return_to).await?,
    };
    set_nonce(app, &mut response, "", time::Duration::ZERO);
    Ok(previous.clear_from(app, response))
}

/// The end of a linking started from the account page: the identity joins the account of the
/// full session that started it (still this browser's, still that account's), and its owner is
/// told.
async fn link_here(
    app: &App,
    headers: &HeaderMap,
    provider: &OidcProvider,
    identity: &crate::domain::oidc::OidcIdentity,
    account: &str,
) -> Answer {
    let here = crate::web::route::Destination::Account.path();
    let full = match full_session(app, headers, here).await {
        Ok(full) if full.user().account_key == account => full,
        Ok(_) => return Err(WebError::ProviderSignInNotStarted),
        Err(elsewhere) => return Ok(*elsewhere),
    };
    let now = app.clock.now();
    let triple = (provider.id.as_str(), identity.issuer.as_str(), identity.subject.as_str());
    match identities::link(&app.factors.accounts, full.user(), triple, "user", now).await {
        Ok(changed) => {
            if changed {
                tracing::warn!(target: "portcullis::security", user = %full.user().name, provider = %provider.id, "identity linked by its owner");
                app.notifier.send(
                    full.user(),
                    SecurityEvent::IdentityLinked { provider: provider.name.clone() },
                    now,
                    true,
                );
            }
            Ok(go_to(app, &crate::web::route::done(crate::web::route::Destination::Account, "identity-linked")))
        }
        Err(identities::LinkError::OtherAccount) => {
            Err(WebError::IdentityLinkedElsewhere { name: provider.name.clone() })
        }
        Err(identities::LinkError::Store(e)) => Err(WebError::SignInUnavailable(e.to_string())),
    }
}
