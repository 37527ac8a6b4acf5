//! Signing in with a link sent by email (`[login.email_link]`): the address form, the link
//! itself, and the code typed into the asking browser when the link was opened elsewhere. The
//! rules are the domain's (`domain/email_link.rs`); what a link earns is a first factor, and
//! from there the same way on as a password (`login::after_first_factor`): the account's second
//! factor follows.
//!
//! The asking browser is marked by a random nonce in its own cookie. That cookie is `SameSite=Lax`
//! where the login cookies are `Strict`: the link is opened from a mail client or webmail, a
//! navigation from another site, on which a `Strict` cookie would not be sent and the link would
//! never recognise the browser that asked for it. It carries no authority by itself: it only says
//! which browser asked.

use std::sync::Arc;

use cookie::SameSite;
use http::{HeaderMap, Request, Response, StatusCode, header};
use serde::Deserialize;

use super::login::after_first_factor;
use super::login_page::end_previous;
use crate::base::headers::cookie_values;
use crate::domain::email_link::{LIFETIME, LinkInvalid, LinkRefused, Opened, new_browser_nonce};
use crate::domain::notify::SecurityEvent;
use crate::domain::regulation::{Factor, Subject};
use crate::web::client_body::ClientBody;
use crate::web::cookies::cookie_header;
use crate::web::error::WebError;
use crate::web::forms::{LoginCsrf, read_form, return_to_from_query, same_origin};
use crate::web::link_pages::{LinkElsewherePage, LinkRequestPage, LinkSentPage};
use crate::web::pages::{self, Body};
use crate::web::respond::{Answer, client_ip, device, retry_after};
use crate::web::route::Destination;
use crate::web::state::{App, Connection};

/// The longest address accepted (RFC 5321 §4.5.3.1.3 paths are at most 256 octets).
const MAX_ADDRESS_BYTES: usize = 254;

fn enabled(app: &App) -> Result<(), WebError> {
    if app.config().login.email_link { Ok(()) } else { Err(WebError::NotFound) }
}

/// This browser's nonce, if it asked for a link (43 characters, as made).
fn nonce_of(app: &App, headers: &HeaderMap) -> Option<String> {
    let name = app.sessions.settings().link_cookie();
    cookie_values(headers, &name).find(|v| v.len() == 43).map(str::to_string)
}

fn set_nonce(app: &App, response: &mut Response<Body>, nonce: &str) {
    let name = app.sessions.settings().link_cookie();
    let cookie = cookie_header(app, &name, nonce, Some(time::Duration::seconds(LIFETIME)), SameSite::Lax);
    response.headers_mut().append(header::SET_COOKIE, cookie);
}

fn clear_nonce(app: &App, response: &mut Response<Body>) {
    let name = app.sessions.settings().link_cookie();
    let cookie = cookie_header(app, &name, "", Some(time::Duration::ZERO), SameSite::Lax);
    response.headers_mut().append(header::SET_COOKIE, cookie);
}

fn request_page(app: &App, headers: &HeaderMap, status: StatusCode, return_to: &str, error: Option<&str>) -> Answer {
    let csrf = LoginCsrf::of(app, headers);
    let password_url = Destination::Login.with_return(return_to, &[]);
    let page = LinkRequestPage { csrf: &csrf.token, return_to, error, password_url: &password_url };
    let mut response = pages::html(status, &page);
    csrf.set_cookie(app, &mut response);
    Ok(response)
}

fn sent_page(
    app: &App,
    headers: &HeaderMap,
    status: StatusCode,
    return_to: &str,
    error: Option<&str>,
) -> Response<Body> {
    let csrf = LoginCsrf::of(app, headers);
    let again_url = Destination::LoginEmail.with_return(return_to, &[]);
    let password_url = Destination::Login.with_return(return_to, &[]);
    let page = LinkSentPage { csrf: &csrf.token, return_to, error, again_url: &again_url, password_url: &password_url };
    let mut response = pages::html(status, &page);
    csrf.set_cookie(app, &mut response);
    response
}

pub(super) async fn form(app: &App, request: &Request<ClientBody>) -> Answer {
    enabled(app)?;
    let return_to = return_to_from_query(app, request);
    request_page(app, request.headers(), StatusCode::OK, &return_to, None)
}

#[derive(Deserialize)]
struct LinkForm {
    #[serde(default)]
    csrf: String,
    rd: Option<String>,
    #[serde(default)]
    email: String,
}

/// Sends a link if the address is an account's. The answer is the same page whether it is or
/// not, and whether the account's own limits let a link go or not: nothing tells a stranger
/// which addresses have accounts.
pub(super) async fn send(app: &Arc<App>, request: Request<ClientBody>, conn: &Connection) -> Answer {
    enabled(app)?;
    if !same_origin(app, request.headers()) {
        return Err(WebError::CrossOrigin);
    }
    let headers = request.headers().clone();
    let form: LinkForm = read_form(request).await?;
    let return_to = crate::web::return_url::or_root(form.rd.as_deref(), &app.config().public_url);
    if !LoginCsrf::admits(app, &headers, &form.csrf) {
        let expired = "This form had expired. Please enter your address again.";
        return request_page(app, &headers, StatusCode::FORBIDDEN, &return_to, Some(expired));
    }
    let address = form.email.trim();
    if address.is_empty() || address.len() > MAX_ADDRESS_BYTES || !address.contains('@') {
        return request_page(app, &headers, StatusCode::BAD_REQUEST, &return_to, Some("Enter your email address."));
    }
    let (client, now) = (client_ip(app, &headers, conn), app.clock.now());
    match app.email_links.note_request(client, now).await {
        Ok(()) => {}
        Err(LinkRefused::Unavailable(e)) => return Err(e.into()),
        Err(refused) => {
            tracing::warn!(target: "portcullis::security", %client, "sign-in link not sent: {refused}");
            let busy = "Too many sign-in links were asked for from your network in the last hour. Try again later, or sign in with your password.";
            let mut response = request_page(app, &headers, StatusCode::TOO_MANY_REQUESTS, &return_to, Some(busy))?;
            retry_after(&mut response, 3600);
            return Ok(response);
        }
    }
    let nonce = nonce_of(app, &headers).unwrap_or_else(new_browser_nonce);
    let owners: Vec<_> = app.users.all().into_iter().filter(|u| u.email.eq_ignore_ascii_case(address)).collect();
    let sent = match owners.as_slice() {
        [user] => match app.email_links.issue(user, &nonce, &return_to, now).await {
            Ok(issued) => {
                let query = serde_urlencoded::to_string([("token", &issued.token)]).unwrap_or_default();
                let url = app.config().public_url.join_path(&format!("{}?{query}", Destination::LoginEmailOpen.path()));
                // Built and queued off this request, so the answer takes as long as for an
                // address no account has.
                let (notifier, user) = (app.notifier.clone(), user.clone());
                tracing::info!(target: "portcullis::security", user = %user.name, %client, "sign-in link emailed");
                tokio::spawn(async move { notifier.send(&user, SecurityEvent::SignInLink { url }, now, true) });
                true
            }
            // Fails closed, and alike for every address: without the store, no decoy either.
            Err(LinkRefused::Unavailable(e)) => return Err(e.into()),
            Err(refused) => {
                tracing::info!(target: "portcullis::security", user = %user.name, %client, "sign-in link not sent: {refused}");
                false
            }
        },
        [] => {
            tracing::info!(target: "portcullis::security", %client, "sign-in link asked for an address no account has");
            false
        }
        // A link must name one account; which of several would be a guess.
        _ => {
            tracing::warn!(target: "portcullis::security", %client, accounts = owners.len(), "sign-in link not sent: several accounts share that address");
            false
        }
    };
    if !sent {
        // The same state as a real link leaves, so the code form answers alike (see `decoy`).
        app.email_links.decoy(&nonce, address, now).await?;
    }
    let mut response = sent_page(app, &headers, StatusCode::OK, &return_to, None);
    set_nonce(app, &mut response, &nonce);
    Ok(response)
}

#[derive(Deserialize, Default)]
struct OpenQuery {
    #[serde(default)]
    token: String,
}

/// A link, opened: signs in where it was asked for, shows the code anywhere else.
pub(super) async fn open(app: &App, request: &Request<ClientBody>, conn: &Connection) -> Answer {
    enabled(app)?;
    let query: OpenQuery = serde_urlencoded::from_str(request.uri().query().unwrap_or("")).unwrap_or_default();
    let headers = request.headers();
    let nonce = nonce_of(app, headers);
    match app.email_links.open(&app.users, &query.token, nonce.as_deref(), app.clock.now()).await {
        Ok(Opened::SignedIn { proof, return_to }) => {
            tracing::info!(target: "portcullis::security", user = %proof.user().name, "sign-in link used");
            signed_in(app, headers, conn, proof, &return_to).await
        }
        Ok(Opened::Elsewhere { code }) => {
            let grouped = format!("{} {}", &code[..3], &code[3..]);
            let mut response = pages::html(StatusCode::OK, &LinkElsewherePage { code: &grouped });
            // The page's URL holds a live token: no request from it may name it, not even to
            // this origin (where the upstream would log it).
            response.headers_mut().insert(header::REFERRER_POLICY, http::HeaderValue::from_static("no-referrer"));
            Ok(response)
        }
        Err(LinkInvalid::Unavailable(e)) => Err(e.into()),
        Err(why) => {
            tracing::info!(target: "portcullis::security", "sign-in link refused: {why}");
            Err(WebError::SignInLinkInvalid)
        }
    }
}

#[derive(Deserialize)]
struct CodeForm {
    #[serde(default)]
    csrf: String,
    rd: Option<String>,
    #[serde(default)]
    code: String,
}

/// The code from a link opened elsewhere, typed into the browser that asked.
pub(super) async fn code(app: &Arc<App>, request: Request<ClientBody>, conn: &Connection) -> Answer {
    enabled(app)?;
    if !same_origin(app, request.headers()) {
        return Err(WebError::CrossOrigin);
    }
    let headers = request.headers().clone();
    let form: CodeForm = read_form(request).await?;
    let return_to = crate::web::return_url::or_root(form.rd.as_deref(), &app.config().public_url);
    if !LoginCsrf::admits(app, &headers, &form.csrf) {
        let expired = "This form had expired. Type the code again.";
        return Ok(sent_page(app, &headers, StatusCode::FORBIDDEN, &return_to, Some(expired)));
    }
    let nonce = nonce_of(app, &headers).ok_or(WebError::SignInLinkInvalid)?;
    // Codes are guesses like passwords: counted per account and per address, and paused alike.
    let client = client_ip(app, &headers, conn);
    let mut subjects = vec![Subject::address(client)];
    // The address's stand-in, link or decoy alike, and a real link's account: see `regulated_as`.
    subjects.extend(app.email_links.regulated_as(&nonce).await?.into_iter().map(Subject::Account));
    let attempt = match app.regulator.reserve(&subjects, Factor::Password).await {
        Ok(attempt) => attempt,
        Err(refusal) => {
            tracing::warn!(target: "portcullis::security", %client, ?refusal, "sign-in link code not checked: paused");
            let paused = "Too many wrong codes or passwords: signing in is paused for a while. Try again later.";
            let mut response = sent_page(app, &headers, StatusCode::TOO_MANY_REQUESTS, &return_to, Some(paused));
            retry_after(&mut response, 60);
            return Ok(response);
        }
    };
    let entered = app.email_links.enter_code(&app.users, &nonce, &form.code, app.clock.now()).await;
    let recorded = match &entered {
        Ok(_) => attempt.succeeded().await,
        // No code was checked: the attempt is released, counting nothing.
        Err(LinkInvalid::Unavailable(_)) => {
            drop(attempt);
            Ok(())
        }
        Err(_) => attempt.failed().await.map(|_| ()),
    };
    if let Err(e) = recorded {
        tracing::error!("could not record a sign-in link code: {e}");
    }
    match entered {
        Ok((proof, return_to)) => {
            tracing::info!(target: "portcullis::security", user = %proof.user().name, "sign-in link used by its code");
            signed_in(app, &headers, conn, proof, &return_to).await
        }
        Err(LinkInvalid::WrongCode { tries_left }) if tries_left > 0 => {
            tracing::warn!(target: "portcullis::security", "wrong sign-in link code");
            let wrong = format!("That code is not right. {tries_left} tries left.");
            Ok(sent_page(app, &headers, StatusCode::UNAUTHORIZED, &return_to, Some(&wrong)))
        }
        Err(LinkInvalid::Unavailable(e)) => Err(e.into()),
        Err(why) => {
            tracing::warn!(target: "portcullis::security", "sign-in link code refused: {why}");
            Err(WebError::SignInLinkInvalid)
        }
    }
}

/// The link proved the mailbox: the same way on as after a password.
async fn signed_in(
    app: &App,
    headers: &HeaderMap,
    conn: &Connection,
    proof: crate::domain::email_link::EmailLinkProof,
    return_to: &str,
) -> Answer {
    crate::base::metrics::login("ok");
    let previous = end_previous(app, headers).await;
    let device = device(headers, client_ip(app, headers, conn));
    let mut response = after_first_factor(app, proof.into(), headers, device, return_to).await?;
    clear_nonce(app, &mut response);
    Ok(previous.clear_from(app, response))
}
