//! Signing in on another host the proxy serves. The session cookie lives on the main host only,
//! so a request on another host is sent here, to the main host, with where it was going
//! (`?to=URL`). Once the main host's session satisfies what the access rules ask for that URL,
//! a single-use, 30-second code bound to that host goes back in a top-level redirect, and the
//! other host exchanges it for a host-only session of its own.

use std::sync::Arc;

use http::Request;
use serde::Deserialize;

use crate::config::access::{request_host, rule_path};
use crate::domain::access::{self as rules, RequestFacts, Standing, Verdict};
use crate::domain::policy::{self, AfterPassword};
use crate::domain::session::{Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::cookies;
use crate::web::error::WebError;
use crate::web::pages;
use crate::web::respond::{Answer, client_ip, go_to, login_redirect, send_to, with_user};
use crate::web::route::Destination;
use crate::web::state::{App, Connection, Target};

#[derive(Deserialize, Default)]
struct StartQuery {
    to: Option<String>,
    /// The state the other host gave the browser: the code will only work with it.
    state: Option<String>,
}

/// A URL on one of the other hosts, with the same scheme and port as the public URL.
struct OtherHostUrl {
    host: String,
    authority: String,
    path_and_query: String,
}

fn other_host_url(app: &App, text: &str) -> Option<OtherHostUrl> {
    let url = url::Url::parse(text).ok()?;
    let config = app.config();
    let public = config.public_url.url();
    if url.scheme() != public.scheme()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.port_or_known_default() != public.port_or_known_default()
    {
        return None;
    }
    let host = request_host(url.host_str()?)?;
    if !config.hosts.serves(&host) || config.hosts.is_main(&host) {
        return None;
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let path_and_query = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    Some(OtherHostUrl { host, authority, path_and_query })
}

/// On the main host: hand the session to the host `to` names, once it may go there.
pub(super) async fn start(app: &Arc<App>, request: &Request<ClientBody>, conn: &Connection) -> Answer {
    let query: StartQuery = serde_urlencoded::from_str(request.uri().query().unwrap_or("")).unwrap_or_default();
    let Some((to, target)) = query.to.as_deref().and_then(|to| other_host_url(app, to).map(|t| (to.to_string(), t)))
    else {
        // Not one of ours: go to the front page, as with any return URL that is not ours.
        return Ok(go_to(app, "/"));
    };
    // Without the other host's state there is nothing to bind a code to: start there.
    let Some(state) = query.state.filter(|s| s.len() == 43) else {
        let scheme = app.config().public_url.url().scheme().to_string();
        let query = serde_urlencoded::to_string([("to", to.as_str())]).unwrap_or_default();
        return Ok(pages::see_other(&format!(
            "{scheme}://{}{}?{query}",
            target.authority,
            Destination::Handoff.path()
        )));
    };
    let here = format!(
        "{}?{}",
        Destination::Handoff.path(),
        serde_urlencoded::to_string([("to", to.as_str()), ("state", state.as_str())]).unwrap_or_default()
    );
    let full = match app.session(request.headers()).await {
        Lookup::Found(Session::Full(full)) => full,
        Lookup::Found(Session::Partial(partial)) => {
            let has_factor = app.has_factor(partial.user());
            let page = match policy::after_password(app.requirement(partial.user()), has_factor) {
                AfterPassword::Enroll => Destination::Enroll,
                _ => Destination::Challenge,
            };
            return Ok(with_user(send_to(app, page, &here), partial.user()));
        }
        _ => return Ok(login_redirect(app, &here)),
    };
    let Some(path) = rule_path(target.path_and_query.split('?').next().unwrap_or("/")) else {
        return Err(WebError::BadRequest);
    };
    let method = http::Method::GET;
    let verdict = {
        let config = app.config();
        let facts = RequestFacts {
            host: &target.host,
            path: &path,
            method: &method,
            client: client_ip(app, request.headers(), conn),
        };
        let decision = rules::decide(&config.rules, &facts, Some(full.user()));
        let standing = Standing::Full {
            proved_second_factor: app.proved_counting_factor(&full),
            second_factor_at: full.second_factor_at(),
            has_factor: app.has_factor(full.user()),
        };
        rules::admit(&decision, standing, app.clock.now())
    };
    let scheme = app.config().public_url.url().scheme().to_string();
    let response = match verdict {
        Verdict::Forward => {
            let code = app.handoff.issue(full.key(), &target.host, &state, app.clock.now()).await?;
            let query = serde_urlencoded::to_string([("code", code.as_str()), ("rd", target.path_and_query.as_str())])
                .unwrap_or_default();
            tracing::info!(target: "portcullis::security", user = %full.user().name, host = %target.host, "session handed to another host");
            pages::see_other(&format!("{scheme}://{}{}?{query}", target.authority, Destination::Handoff.path()))
        }
        // Nothing to hand over for a host that needs no session; and not a redirect to whatever
        // a bypassed host serves.
        Verdict::Bypass => go_to(app, "/"),
        Verdict::Deny => return Err(WebError::Denied),
        Verdict::Enroll => send_to(app, Destination::Enroll, &here),
        Verdict::ProveSecondFactor { .. } | Verdict::SignIn | Verdict::FinishSignIn => {
            send_to(app, Destination::Challenge, &here)
        }
    };
    Ok(with_user(response, full.user()))
}

#[derive(Deserialize, Default)]
struct ExchangeQuery {
    code: Option<String>,
    rd: Option<String>,
    /// With no code: where this browser is going on this host (the start of a handoff).
    to: Option<String>,
}

/// On another host with no code yet (where forward-auth sends a browser, and where the main host
/// sends one that came without state): give this browser the state its code will be bound to,
/// and send it to the main host for one. A front proxy cannot be relied on to pass our
/// `Set-Cookie` along with its own refusal (nginx drops it), hence this step on the host itself.
fn begin(app: &App, to: Option<&str>, target: &Target) -> Answer {
    let to = to
        .filter(|to| other_host_url(app, to).is_some_and(|t| t.host == target.host))
        .ok_or_else(|| WebError::HandoffRefused(format!("no code, and no address on {} to go to", target.host)))?;
    let state = crate::base::secret::random_token();
    let query = serde_urlencoded::to_string([("to", to), ("state", state.as_str())]).unwrap_or_default();
    let mut response = go_to(app, &format!("{}?{query}", Destination::Handoff.path()));
    cookies::set_handoff_state(&mut response, app, &state);
    Ok(response)
}

/// On another host: exchange a code from the main host for this host's own session.
pub async fn exchange(app: &App, request: &Request<ClientBody>, target: &Target) -> Answer {
    let query: ExchangeQuery = serde_urlencoded::from_str(request.uri().query().unwrap_or("")).unwrap_or_default();
    let Some(code) = query.code else { return begin(app, query.to.as_deref(), target) };
    // Back to a path on this host, and nowhere else.
    let rd = query
        .rd
        .filter(|rd| {
            rd.starts_with('/') && !rd.starts_with("//") && !rd.contains('\\') && !rd.chars().any(char::is_control)
        })
        .unwrap_or_else(|| "/".into());
    let state_cookie = app.config().session.handoff_cookie();
    let state = crate::base::headers::cookie_values(request.headers(), &state_cookie).next().unwrap_or("").to_string();
    let parent = app
        .handoff
        .redeem(&code, &target.host, &state, app.clock.now())
        .await
        .map_err(|e| WebError::HandoffRefused(format!("{e} (on {})", target.host)))?;
    // Made on another replica a moment ago, it may not be in this one's memory yet.
    if let Err(e) = app.sessions.fetch_key(&parent).await {
        tracing::warn!("could not look a session up in the shared store: {e}");
    }
    // Still a live full session that the 2FA policy lets in.
    if !app.tunnel_still_allowed(&parent) {
        return Err(WebError::HandoffRefused("the session it was made from ended or no longer qualifies".into()));
    }
    let parent = app
        .sessions
        .live_full(&parent, &app.users)
        .ok_or_else(|| WebError::HandoffRefused("the session it was made from ended".into()))?;
    // This browser's earlier session on this host, if any, is replaced.
    if let Lookup::Found(old) = app.resolve_session_on(request.headers(), Some(&target.host)) {
        app.sessions.end(old.key()).await?;
    }
    let (id, session) = app.sessions.for_host(&parent, &target.host).await?;
    let scheme = app.config().public_url.url().scheme().to_string();
    let mut response = pages::see_other(&format!("{scheme}://{}{rd}", target.authority));
    cookies::set_session(&mut response, app, &id, session.expires_at());
    cookies::clear_handoff_state(&mut response, app);
    tracing::info!(target: "portcullis::security", user = %session.user().name, host = %target.host, "session started on another host");
    Ok(with_user(response, session.user()))
}
