//! A real upstream on loopback that records what reaches it.
//!
//! * `/upload` streams the request body, answering with its length and SHA-256;
//! * `/download?bytes=N` streams N bytes of a known pattern;
//! * `/early` answers 401 without reading the request body, and holds it unread;
//! * `/slow` never answers;
//! * `/hold` answers when the test calls `release.notify_one()`;
//! * `/plant-cookie` tries to set the proxy's session cookie;
//! * `/ws` is a WebSocket echo;
//! * everything else answers with JSON describing the request it saw.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, Infallible>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Seen {
    /// The first value of `name`, in any case (the names are kept in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).and_then(|v| v.first()).map(String::as_str)
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Releases requests waiting on `/hold`.
    pub release: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// An upstream that speaks https with the given certificate chain and key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        use rustls_pki_types::pem::PemObject;
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(portcullis::base::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let release = Arc::new(tokio::sync::Notify::new());
        let (recorder, hold) = (seen.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (recorder, tls, hold) = (recorder.clone(), tls.clone(), hold.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (recorder, hold) = (recorder.clone(), hold.clone());
                        async move { Ok::<_, Infallible>(answer(req, recorder, hold).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match tls {
                        None => builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await
                        }
                    };
                });
            }
        });
        Self { addr, seen, release, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Stops accepting connections (the port is then closed: "upstream down").
    pub fn stop(self) {
        self.task.abort();
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// The byte at offset `i` of a download: a pattern, so corruption or truncation is detectable.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

async fn answer(
    req: Request<Incoming>,
    recorder: Arc<Mutex<Vec<Seen>>>,
    hold: Arc<tokio::sync::Notify>,
) -> Response<Body> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers.entry(k.to_string()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let seen = Seen { method: req.method().to_string(), path: req.uri().path().to_string(), headers };
    recorder.lock().unwrap().push(seen.clone());

    match req.uri().path() {
        "/upload" => {
            let mut body = req.into_body();
            let (mut hasher, mut bytes) = (Sha256::new(), 0u64);
            while let Some(frame) = body.frame().await {
                // A client that stops mid-upload (the proxy gave up on it): nothing to answer.
                let Ok(frame) = frame else { return Response::builder().status(400).body(full("incomplete")).unwrap() };
                if let Ok(data) = frame.into_data() {
                    bytes += data.len() as u64;
                    hasher.update(&data);
                }
            }
            let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
            Response::new(full(format!("{{\"bytes\":{bytes},\"sha256\":\"{digest}\"}}")))
        }
        "/download" => {
            let total: u64 = req.uri().query().and_then(|q| q.strip_prefix("bytes=")).unwrap().parse().unwrap();
            const CHUNK: u64 = 64 * 1024;
            let chunks = futures_util::stream::iter((0..total.div_ceil(CHUNK)).map(move |c| {
                let start = c * CHUNK;
                let end = (start + CHUNK).min(total);
                Ok::<_, Infallible>(Frame::data(Bytes::from((start..end).map(pattern_byte).collect::<Vec<u8>>())))
            }));
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        // Answers before reading the request body, as an app refusing an upload (401, 413) may,
        // and keeps the request open without reading it (as one whose handler still holds it).
        "/early" => {
            let unread = req.into_body();
            tokio::spawn(async move {
                let _held = unread;
                std::future::pending::<()>().await
            });
            Response::builder().status(401).body(full("no")).unwrap()
        }
        "/slow" => std::future::pending().await,
        "/hold" => {
            hold.notified().await;
            Response::new(full("released"))
        }
        "/plant-cookie" => Response::builder()
            .header("set-cookie", "portcullis=planted-by-upstream; Path=/")
            .header("set-cookie", "app_pref=dark; Path=/")
            .body(full("planted"))
            .unwrap(),
        "/ws" => websocket_echo(req),
        "/ws-deaf" => websocket_deaf(req),
        _ => {
            let json = serde_json::json!({ "method": seen.method, "path": seen.path, "headers": seen.headers });
            Response::builder().header("content-type", "application/json").body(full(json.to_string())).unwrap()
        }
    }
}

/// Accepts a WebSocket and then neither reads nor closes it for two minutes: an upstream that
/// ignores its client going away.
fn websocket_deaf(req: Request<Incoming>) -> Response<Body> {
    let (upgrade, response) = accept_websocket(req);
    tokio::spawn(async move {
        let _held = upgrade.await;
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
    response
}

/// The 101 that accepts a WebSocket handshake (RFC 6455 §4.2.2), and the upgrade to await.
fn accept_websocket(mut req: Request<Incoming>) -> (hyper::upgrade::OnUpgrade, Response<Body>) {
    let key = req.headers().get("sec-websocket-key").unwrap().as_bytes().to_vec();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let upgrade = hyper::upgrade::on(&mut req);
    let response = Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap();
    (upgrade, response)
}

fn websocket_echo(req: Request<Incoming>) -> Response<Body> {
    let (upgrade, response) = accept_websocket(req);
    tokio::spawn(async move {
        let upgraded = upgrade.await.unwrap();
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() || message.is_binary() {
                ws.send(message).await.unwrap();
            }
        }
    });
    response
}
