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
//! | `portcullis_connections_open` | gauge | (places of `limits.max_connections` held, at scrape time) |
//! | `portcullis_connections_gave_way_total` | counter | `rule`: idlest, own_share, crowd (`server::pressure`) |
//! | `portcullis_connections_turned_away_total` | counter | `reason`: all_busy, share_busy, not_given_in_time |

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

    /// Serves the metrics; `open_connections` tells the places of `limits.max_connections` held.
    pub fn spawn(
        self,
        sessions: Arc<Sessions>,
        open_connections: impl Fn() -> usize + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let gauges = Arc::new(Gauges { sessions, open_connections: Box::new(open_connections) });
        tokio::spawn(serve(self.listener, self.handle, gauges))
    }
}

/// What is measured at scrape time rather than counted as it happens.
struct Gauges {
    sessions: Arc<Sessions>,
    open_connections: Box<dyn Fn() -> usize + Send + Sync>,
}

async fn serve(listener: TcpListener, handle: PrometheusHandle, gauges: Arc<Gauges>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (handle, gauges) = (handle.clone(), gauges.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (handle, gauges) = (handle.clone(), gauges.clone());
                async move { Ok::<_, Infallible>(scrape(request.uri().path(), &handle, &gauges)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn scrape(path: &str, handle: &PrometheusHandle, gauges: &Gauges) -> Response<Body> {
    if path != "/metrics" {
        let mut response = Response::new(full("not found; metrics are at /metrics\n"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    metrics::gauge!("portcullis_sessions").set(gauges.sessions.len() as f64);
    metrics::gauge!("portcullis_connections_open").set((gauges.open_connections)() as f64);
    let mut response = Response::new(full(handle.render()));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}
