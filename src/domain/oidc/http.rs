//! The HTTP client OpenID Connect discovery, JWKS and token requests go through: our own hyper
//! client over rustls with the one crypto provider (no second TLS stack), which follows no
//! redirects (OAuth 2.0 Security BCP: a token endpoint that redirects must not be followed),
//! reads at most [`MAX_BODY`] of an answer, and gives up after [`TIMEOUT`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// More than any discovery document, key set or token answer needs.
pub const MAX_BODY: usize = 1 << 20;
/// For one request, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot set up TLS: {0}")]
    Setup(String),
    #[error("the request failed: {0}")]
    Request(String),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
    #[error("the answer is over {MAX_BODY} bytes or broken: {0}")]
    Body(String),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for the providers' endpoints.
#[derive(Clone)]
pub struct OidcHttp {
    client: HttpsClient,
}

impl OidcHttp {
    pub fn new() -> Result<Self, HttpError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(crate::base::tls::provider()) {
            Ok(builder) => builder,
            // No system trust store: https providers cannot be reached (each attempt says so),
            // a loopback http one still can.
            Err(e) => {
                tracing::warn!("no system certificates for OpenID Connect providers: {e}");
                let tls = rustls::ClientConfig::builder_with_provider(crate::base::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| HttpError::Setup(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(Self { client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// One request, as openidconnect hands it over; the answer as it wants it.
    pub async fn send(&self, request: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| HttpError::Request(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY).collect().await.map_err(|e| HttpError::Body(e.to_string()))?;
            Ok(http::Response::from_parts(parts, body.to_bytes().to_vec()))
        };
        tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| HttpError::Timeout)?
    }
}

/// What openidconnect calls for discovery, keys and tokens. A boxed `Send` future, so the
/// sign-in handlers that await it stay `Send` whatever lifetimes the borrow has.
impl<'c> openidconnect::AsyncHttpClient<'c> for OidcHttp {
    type Error = HttpError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<http::Response<Vec<u8>>, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: http::Request<Vec<u8>>) -> Self::Future {
        Box::pin(self.send(request))
    }
}
