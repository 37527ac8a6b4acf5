//! The events Portcullis counts, as Prometheus metrics (see `server::telemetry` for the names,
//! and for the listener that serves them). Without a listener no recorder is installed and every
//! call here is a no-op.

use std::sync::OnceLock;

use http::StatusCode;
use metrics::{Counter, Histogram};

/// The statuses a proxy mostly sends, each with its counter made once: building a metric's key
/// and finding it in the registry costs an allocation and a lock on every call, and these two
/// metrics are counted for every request.
const COMMON: [&str; 24] = [
    "101", "200", "201", "204", "206", "301", "302", "303", "304", "307", "308", "400", "401", "403", "404", "405",
    "413", "429", "431", "500", "502", "503", "504", "100",
];

struct PerRequest {
    by_status: Vec<Counter>,
    upstream_seconds: Histogram,
    express: Counter,
}

static PER_REQUEST: OnceLock<PerRequest> = OnceLock::new();

/// Makes the per-request metrics' handles, once the recorder is installed (`server::telemetry`).
/// Until then (and without a metrics listener) counting a request costs nothing.
pub fn enable() {
    PER_REQUEST.get_or_init(|| PerRequest {
        by_status: COMMON
            .iter()
            .map(|code| metrics::counter!("portcullis_requests_total", "status" => *code))
            .collect(),
        upstream_seconds: metrics::histogram!("portcullis_upstream_seconds"),
        express: metrics::counter!("portcullis_express_requests_total"),
    });
    // Shown at 0 from the start, not from their first event: a rate over a series that appears
    // mid-attack misses the attack's start.
    for rule in GAVE_WAY_RULES {
        metrics::counter!("portcullis_connections_gave_way_total", "rule" => rule).absolute(0);
    }
    for reason in TURNED_AWAY_REASONS {
        metrics::counter!("portcullis_connections_turned_away_total", "reason" => reason).absolute(0);
    }
}

/// The label values of the connection budget's counters (`server::pressure`), all known in
/// advance: nothing a client sends becomes a label.
pub const GAVE_WAY_RULES: [&str; 3] = ["idlest", "own_share", "crowd"];
pub const TURNED_AWAY_REASONS: [&str; 3] = ["all_busy", "share_busy", "not_given_in_time"];

pub fn request(status: StatusCode) {
    let Some(metrics) = PER_REQUEST.get() else { return };
    match COMMON.iter().position(|c| *c == status.as_str()) {
        Some(at) => metrics.by_status[at].increment(1),
        None => metrics::counter!("portcullis_requests_total", "status" => status.as_str().to_owned()).increment(1),
    }
}

pub fn upstream_latency(seconds: f64) {
    if let Some(metrics) = PER_REQUEST.get() {
        metrics.upstream_seconds.record(seconds);
    }
}
/// A request carried by the express lane (`web::express`) rather than hyper: what share of the
/// traffic takes the short way.
pub fn express_request() {
    if let Some(metrics) = PER_REQUEST.get() {
        metrics.express.increment(1);
    }
}

/// A newcomer past `limits.max_connections` turned away with a 503, and why (`server::pressure`).
/// Not per request: only when the budget is spent.
pub fn connection_turned_away(reason: &'static str) {
    metrics::counter!("portcullis_connections_turned_away_total", "reason" => reason).increment(1);
}

/// A connection that gave its place to a newcomer, and by which rule (`server::pressure`).
pub fn connection_gave_way(rule: &'static str) {
    metrics::counter!("portcullis_connections_gave_way_total", "rule" => rule).increment(1);
}

pub fn login(result: &'static str) {
    metrics::counter!("portcullis_logins_total", "result" => result).increment(1);
}

pub fn second_factor(result: &'static str) {
    metrics::counter!("portcullis_second_factor_total", "result" => result).increment(1);
}

pub fn lockout() {
    metrics::counter!("portcullis_lockouts_total").increment(1);
}
