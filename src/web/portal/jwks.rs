//! `/.portcullis/jwks.json`: the public keys that verify identity assertions, as a JWK Set
//! (RFC 7517 §5). Public by nature: no session, no cookie.

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::web::error::WebError;
use crate::web::pages;
use crate::web::respond::Answer;
use crate::web::state::App;

/// Five minutes. Verifiers refetch on their own schedule anyway (PyJWKClient keeps a set for
/// 300 s, jose's `createRemoteJWKSet` for 10 minutes), so this mostly bounds how stale a copy in
/// an HTTP cache between us and them can be. Any copy already lists the next key, so a single
/// rotation never leaves a verifier without the key that signs; only two rotations within
/// max-age could, which is why the README asks for rotations at least this far apart.
const CACHE_CONTROL: &str = "public, max-age=300";

pub fn serve(app: &App, method: &Method) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        return Err(WebError::MethodNotAllowed);
    }
    let Some(body) = app.signer.jwks() else {
        // Never publish a shared secret: with HS256 there is no public key.
        return Ok(pages::plain(
            StatusCode::NOT_FOUND,
            "No public keys: identity.algorithm is \"HS256\", a shared secret, which is never published.\n",
        ));
    };
    let mut response = Response::new(pages::full(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    pages::harden(&mut response);
    Ok(response)
}
