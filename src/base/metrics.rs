//! The events Portcullis counts, as Prometheus metrics (see `server::telemetry` for the names,
//! and for the listener that serves them). Without a listener no recorder is installed and every
//! call here is a no-op.

use http::StatusCode;

pub fn request(status: StatusCode) {
    metrics::counter!("portcullis_requests_total", "status" => status_label(status)).increment(1);
}

/// The status as a label without allocating for the codes a proxy mostly sends (this runs on
/// every request, recorder or not).
fn status_label(status: StatusCode) -> metrics::SharedString {
    const COMMON: [&str; 24] = [
        "101", "200", "201", "204", "206", "301", "302", "303", "304", "307", "308", "400", "401", "403", "404", "405",
        "413", "429", "431", "500", "502", "503", "504", "100",
    ];
    match COMMON.iter().find(|c| **c == status.as_str()) {
        Some(code) => metrics::SharedString::const_str(code),
        None => metrics::SharedString::from(status.as_str().to_owned()),
    }
}

pub fn upstream_latency(seconds: f64) {
    metrics::histogram!("portcullis_upstream_seconds").record(seconds);
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
