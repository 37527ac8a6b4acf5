//! Prometheus metrics, served on their own listener (`[metrics] listen`), never on the proxy's.
//!
//! When no listener is configured no recorder is installed, and every `metrics::` call below is
//! a no-op. The names:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `portcullis_requests_total` | counter | `status` |
//! | `portcullis_upstream_seconds` | histogram | (time to the upstream's response headers) |
//! | `portcullis_express_requests_total` | counter | (requests the express lane carried, `web::express`) |
//! | `portcullis_logins_total` | counter | `result`: ok, failed, locked |
//! | `portcullis_second_factor_total` | counter | `result`: ok, failed, locked |
//! | `portcullis_lockouts_total` | counter | |
//! | `portcullis_sessions` | gauge | (live sessions, at scrape time) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::domain::session::Sessions;
use crate::web::pages::{Body, full};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up metrics: {0}")]
    Recorder(String),
    #[error("cannot listen for metrics on {addr}: {source}. Fix: choose a free address in metrics.listen")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Upstream latency buckets, in seconds: loopback microseconds to slow-app seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The metrics listener, bound at start-up (so a taken port is a start-up error, not a surprise).
pub struct Telemetry {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl Telemetry {
    /// Installs the process-wide recorder and binds the metrics listener.
    pub async fn bind(addr: SocketAddr) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr, source })?;
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("portcullis_upstream_seconds".into()), &LATENCY_BUCKETS)
            .map_err(|e| TelemetryError::Recorder(e.to_string()))?
            .install_recorder()
            .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
        crate::base::metrics::enable();
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        Ok(Self { listener, handle })
    }

    pub fn spawn(self, sessions: Arc<Sessions>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(serve(self.listener, self.handle, sessions))
    }
}

async fn serve(listener: TcpListener, handle: PrometheusHandle, sessions: Arc<Sessions>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (handle, sessions) = (handle.clone(), sessions.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (handle, sessions) = (handle.clone(), sessions.clone());
                async move { Ok::<_, Infallible>(scrape(request.uri().path(), &handle, &sessions)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn scrape(path: &str, handle: &PrometheusHandle, sessions: &Sessions) -> Response<Body> {
    if path != "/metrics" {
        let mut response = Response::new(full("not found; metrics are at /metrics\n"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    metrics::gauge!("portcullis_sessions").set(sessions.len() as f64);
    let mut response = Response::new(full(handle.render()));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}
