//! Forward-auth: `/.portcullis/auth`, for a front proxy that keeps the data path itself (nginx
//! `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`) and asks, before each request it
//! holds, whether it may pass. The answer is the inline gate's, for the request the front proxy
//! describes: the same session lookup, access rules, 2FA policy and identity.
//!
//! | the gate says            | the answer                                                        |
//! |--------------------------|-------------------------------------------------------------------|
//! | forward (full session)   | 200 with the identity headers and the assertion, to be copied     |
//! | bypass                   | 200 with no identity                                              |
//! | deny                     | 403                                                               |
//! | sign in / prove a factor | nginx: 401, with `Location` for a browser navigation (nginx turns |
//! |                          | any other status into a 500, so its sample config redirects);     |
//! |                          | others: 302 for a browser navigation, else 401                    |
//!
//! The description is believed only from `trusted_proxies`: from anyone else the endpoint answers
//! 401 and reads none of it, since whoever writes `X-Forwarded-Uri` could otherwise ask about a
//! bypassed path and present the answer as one for another.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};

use crate::base::forwarding::{self, ClientInfo};
use crate::base::headers;
use crate::config::access::request_host;
use crate::domain::access::{self as rules, Verdict};
use crate::domain::session::{Lookup, Session};
use crate::web::client_body::ClientBody;
use crate::web::error::{Undescribed, WebError};
use crate::web::gate::{Asked, api_refusal};
use crate::web::malformed::is_plain_host;
use crate::web::pages::{self, Body};
use crate::web::respond::{Answer, with_user};
use crate::web::route::{self, Destination};
use crate::web::state::{App, Connection, Target};

/// The request a front proxy asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub method: Method,
    /// The authority as the client wrote it (host and port).
    pub authority: String,
    /// Path and query, as the client wrote them.
    pub path_and_query: String,
    /// Described the nginx way (`X-Original-URL`): nginx's `auth_request` accepts only 2xx, 401
    /// and 403 from us, so a redirect has to travel as a 401 with `Location`.
    pub nginx: bool,
}

/// The one value of `name`, if it was sent once.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Undescribed> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Undescribed::Ambiguous);
    }
    first.to_str().map(|v| Some(v.trim())).map_err(|_| Undescribed::Ambiguous)
}

/// Reads the original request from the describing headers: nginx's `X-Original-URL` (an
/// absolute URL, `$scheme://$http_host$request_uri`) and `X-Original-Method`, or the
/// `X-Forwarded-Uri`/`-Host`/`-Method` that Traefik and Caddy send. Without a method header the
/// subrequest's own method is the original's (Caddy sends GET either way, with the header).
pub fn describe(headers: &HeaderMap, own_method: &Method) -> Result<Described, Undescribed> {
    let original_url = single(headers, "x-original-url")?;
    let original_method = single(headers, "x-original-method")?;
    let forwarded_uri = single(headers, "x-forwarded-uri")?;
    let forwarded_method = single(headers, "x-forwarded-method")?;
    // Front proxies copy the client's headers into their question and overwrite only the ones
    // they write themselves: Caddy passes a client's `X-Original-URL` along, nginx a client's
    // `X-Forwarded-Uri`. Preferring either family would let a client describe its own request
    // (a bypassed path for a denied one), so a description with both is refused.
    let nginx = original_url.is_some();
    let mixed = if nginx { forwarded_uri.is_some() || forwarded_method.is_some() } else { original_method.is_some() };
    if mixed {
        return Err(Undescribed::Mixed);
    }
    let uri_text = match original_url {
        Some(url) => url,
        None => forwarded_uri.ok_or(Undescribed::NoUri)?,
    };
    let method = match original_method.or(forwarded_method) {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| Undescribed::Unreadable)?,
        None => own_method.clone(),
    };
    let uri: http::Uri = uri_text.parse().map_err(|_| Undescribed::Unreadable)?;
    let authority = match uri.authority() {
        // nginx's sample writes the port it accepted on (`$host:$server_port`); the scheme's own
        // port adds nothing to the URLs built from it.
        Some(authority) => match (uri.scheme_str(), authority.port_u16()) {
            (Some("https"), Some(443)) | (Some("http"), Some(80)) => authority.host().to_string(),
            _ => authority.as_str().to_string(),
        },
        // nginx passes a client's X-Forwarded-Host along: its URL must name the host itself.
        None if nginx => return Err(Undescribed::NoHost),
        None => single(headers, "x-forwarded-host")?.ok_or(Undescribed::NoHost)?.to_string(),
    };
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    if !is_plain_host(authority.as_bytes())
        || !path_and_query.starts_with('/')
        || path_and_query.chars().any(char::is_control)
        || uri.scheme_str().is_some_and(|s| s != "http" && s != "https")
    {
        return Err(Undescribed::Unreadable);
    }
    Ok(Described { method, authority, path_and_query, nginx })
}

impl App {
    /// Answers a front proxy's question about one request.
    pub(crate) async fn forward_auth(
        self: &Arc<Self>,
        request: &Request<ClientBody>,
        conn: &Connection,
        client: &ClientInfo,
    ) -> Answer {
        if !forwarding::is_trusted(conn.peer.ip(), &self.config().trusted_proxies) {
            tracing::info!(target: "portcullis::security", peer = %conn.peer.ip(), "forward-auth asked by a peer not in trusted_proxies; 401");
            return Err(WebError::ForwardAuthUntrusted);
        }
        let described = describe(request.headers(), request.method()).map_err(|why| {
            tracing::warn!(target: "portcullis::security", %why, "forward-auth request the proxy cannot read; check the front proxy's configuration");
            WebError::ForwardAuthUndescribed(why)
        })?;
        let host =
            request_host(&described.authority).ok_or(WebError::ForwardAuthUndescribed(Undescribed::Unreadable))?;
        let target = {
            let config = self.config();
            if !config.hosts.serves(&host) {
                tracing::info!(target: "portcullis::security", host = %crate::base::text::Escaped(&host), "forward-auth for a host the proxy does not serve; 403");
                return Err(WebError::Denied);
            }
            Target { main: config.hosts.is_main(&host), host, authority: described.authority.clone() }
        };

        let lookup = self.session_on(request.headers(), target.session_host()).await;
        let user = match &lookup {
            Lookup::Found(session) => Some(session.user().clone()),
            _ => None,
        };
        let asked = Asked {
            host: target.host.clone(),
            path: described.path_and_query.split('?').next().unwrap_or("/").to_string(),
            method: described.method.clone(),
            client: client.real_ip,
        };
        let decision = self.decide(&asked, user.as_deref()).ok_or(WebError::BadRequest)?;
        let verdict = rules::admit(&decision, self.standing(&lookup), self.clock.now());
        let response = match (verdict, &lookup) {
            (Verdict::Forward, Lookup::Found(Session::Full(full))) => {
                let identity = full.upstream_identity(&self.signer).map_err(|e| {
                    WebError::Internal(format!("cannot build the identity for {}: {e}", full.user().name))
                })?;
                let mut response = self.pass(request.headers());
                identity.apply(response.headers_mut(), &self.config().identity.headers);
                response
            }
            (Verdict::Bypass, _) => self.pass(request.headers()),
            (Verdict::Deny, _) => WebError::Denied.into_response(),
            (verdict, lookup) => self.not_yet(request.headers(), &described, verdict, lookup, &target),
        };
        Ok(match user {
            Some(user) => with_user(response, &user),
            None => response,
        })
    }

    /// A 200: the request may pass. It carries, as `Cookie`, the client's cookies as the
    /// application should get them: without the proxy's own (a session cookie is a credential the
    /// application has no use for, as the inline proxy makes sure). The samples copy it over the
    /// request's; an empty value means none are left, which nginx and Traefik turn into no
    /// `Cookie` at all. A `Cookie` in a response means nothing to anyone else, and only a 2xx
    /// carries it, which front proxies never pass to the client.
    fn pass(&self, subrequest: &HeaderMap) -> Response<Body> {
        let mut cookies = HeaderMap::new();
        for value in subrequest.get_all(header::COOKIE) {
            cookies.append(header::COOKIE, value.clone());
        }
        let own = self.config().session.own_cookies();
        headers::strip_cookies(&mut cookies, &own);
        let mut response = pages::plain(StatusCode::OK, "");
        let kept = cookies.remove(header::COOKIE).unwrap_or_else(|| HeaderValue::from_static(""));
        response.headers_mut().insert(header::COOKIE, kept);
        response
    }

    /// Where a visitor who may not pass yet must go: the inline gate's answer (sign-in page,
    /// challenge, enrollment, or the handoff for another host), shaped for the front proxy.
    fn not_yet(
        &self,
        subrequest: &HeaderMap,
        described: &Described,
        verdict: Verdict,
        lookup: &Lookup,
        target: &Target,
    ) -> Response<Body> {
        // The front proxies copy the client's headers into the subrequest, so `Accept` and
        // `Sec-Fetch-*` are the browser's own.
        let navigation = route::is_browser_navigation(&described.method, subrequest);
        let frame = subrequest.get("sec-fetch-dest").is_some_and(|dest| {
            dest.as_bytes().eq_ignore_ascii_case(b"iframe") || dest.as_bytes().eq_ignore_ascii_case(b"frame")
        });
        if !navigation {
            return api_refusal(verdict);
        }
        let config = self.config();
        let scheme = if config.public_url.is_https() { "https" } else { "http" };
        let location = if target.main {
            config.public_url.join_path(&self.first_stop(verdict, lookup, &described.path_and_query))
        } else {
            // The session cookie is the main host's alone, so this host starts a handoff: its
            // own `/.portcullis/handoff` gives the browser the state the code will be bound to
            // (a Set-Cookie here would not survive nginx's 401) and sends it on to the main host.
            let to = format!("{scheme}://{}{}", target.authority, described.path_and_query);
            let query = serde_urlencoded::to_string([("to", to.as_str())]).unwrap_or_default();
            format!("{scheme}://{}{}?{query}", target.authority, Destination::Handoff.path())
        };
        if frame {
            // Never a sign-in page inside a frame, and never a 2xx, which would let the request
            // through: the small page with a top-level link, as a 401.
            return if described.nginx { api_refusal(verdict) } else { self.frame_page(&location) };
        }
        let mut response = if described.nginx { api_refusal(verdict) } else { pages::plain(StatusCode::FOUND, "") };
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn nginx_describes_with_an_absolute_url() {
        let h = headers(&[("x-original-url", "https://wiki.example.com/a/b?c=d"), ("x-original-method", "post")]);
        assert_eq!(
            describe(&h, &Method::GET),
            Ok(Described {
                method: Method::POST,
                authority: "wiki.example.com".into(),
                path_and_query: "/a/b?c=d".into(),
                nginx: true
            })
        );
    }

    #[test]
    fn traefik_and_caddy_describe_with_forwarded_headers() {
        let h = headers(&[
            ("x-forwarded-uri", "/x?y"),
            ("x-forwarded-host", "app.example.com:8443"),
            ("x-forwarded-method", "DELETE"),
        ]);
        let d = describe(&h, &Method::GET).unwrap();
        assert_eq!(
            (d.method, d.authority.as_str(), d.path_and_query.as_str(), d.nginx),
            (Method::DELETE, "app.example.com:8443", "/x?y", false)
        );
        // Without a method header, the subrequest's own method.
        let h = headers(&[("x-forwarded-uri", "/"), ("x-forwarded-host", "app.example.com")]);
        assert_eq!(describe(&h, &Method::PUT).unwrap().method, Method::PUT);
    }

    #[test]
    fn a_description_in_both_families_is_refused() {
        // Caddy's question with a client's X-Original-URL copied in, and nginx's with a client's
        // X-Forwarded-Uri or -Method: each names two requests.
        let caddy = [("x-forwarded-uri", "/admin"), ("x-forwarded-host", "a"), ("x-original-url", "http://a/public")];
        let caddy_method = [("x-forwarded-uri", "/api"), ("x-forwarded-host", "a"), ("x-original-method", "GET")];
        let nginx = [("x-original-url", "http://a/admin"), ("x-forwarded-uri", "/public")];
        let nginx_method = [("x-original-url", "http://a/admin"), ("x-forwarded-method", "GET")];
        for pairs in [&caddy[..], &caddy_method, &nginx, &nginx_method] {
            assert_eq!(describe(&headers(pairs), &Method::GET), Err(Undescribed::Mixed), "{pairs:?}");
        }
        // nginx's own X-Forwarded-Host next to X-Original-URL is no description: the URL's
        // authority is the host.
        let h = headers(&[("x-original-url", "https://a.example:443/x"), ("x-forwarded-host", "b.example")]);
        assert_eq!(describe(&h, &Method::GET).unwrap().authority, "a.example");
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        let table: [(&[(&str, &str)], Undescribed); 8] = [
            (&[("x-original-url", "/admin"), ("x-forwarded-host", "a")], Undescribed::NoHost),
            (&[], Undescribed::NoUri),
            (&[("x-forwarded-uri", "/")], Undescribed::NoHost),
            (
                &[("x-forwarded-uri", "/"), ("x-forwarded-uri", "/admin"), ("x-forwarded-host", "a")],
                Undescribed::Ambiguous,
            ),
            (&[("x-forwarded-uri", "/"), ("x-forwarded-host", "a"), ("x-forwarded-host", "b")], Undescribed::Ambiguous),
            (&[("x-forwarded-uri", "/"), ("x-forwarded-host", "a b")], Undescribed::Unreadable),
            (&[("x-forwarded-uri", "/"), ("x-forwarded-host", "user@a")], Undescribed::Unreadable),
            (&[("x-original-url", "ftp://a/x")], Undescribed::Unreadable),
        ];
        for (pairs, expected) in table {
            assert_eq!(describe(&headers(pairs), &Method::GET), Err(expected), "{pairs:?}");
        }
    }
}
